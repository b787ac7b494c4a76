//! Porter configuration: the YAML file, its validation, and defaults. Shared by both
//! binaries (`porter`, `porter-smol`) and by `porter check --config FILE`.
//!
//! The format is the original Go project's `config.yaml` (sections `udp`, `api`, `redis`,
//! `agones`, `routes`), which loads unchanged, plus optional extensions (`relay`, `log`,
//! more keys in each section). `docs/configuration.md` describes every key.
//!
//! Reading never stops at the first problem: [`load`] and [`from_str`] return every problem
//! in the file ([`ConfigErrors`]), each with its key path (`routes[1].target`) and the line
//! and column of the offending key or value. Unknown keys are errors. Target addresses are
//! only checked for syntax here; [`Target::resolve`] looks them up at start-up.
//!
//! Inside: `yaml` (the document tree with a position per scalar, the only code that knows
//! serde_yaml), [`keys`] (one table of keys per section: known keys, kinds, defaults),
//! `check` (tree to [`Config`], every problem collected), `route` (the text form of a
//! route shared with the REST API and Redis: [`RouteText`], [`RouteSpec::from_text`],
//! [`RouteSpec::resolve`]), `names`, `target`, `units` (value parsers), `types`, `error`.
//!
//! ```
//! let config = porter_config::from_str(
//!     "udp: {port: 4433}\nroutes:\n  - {fqdn: a.test, type: simple, target: \"127.0.0.1:4434\"}\n",
//!     "example.yaml",
//! )
//! .unwrap();
//! assert_eq!(config.udp.port, 4433);
//! assert_eq!(config.routes[0].name.to_string(), "a.test");
//! ```

mod check;
mod error;
pub mod keys;
mod names;
mod route;
mod target;
mod types;
mod units;
mod yaml;

use std::path::Path;

pub use self::check::percent_decode;
pub use self::error::{ConfigErrors, InvalidValue, Problem};
pub use self::names::{check_kubernetes_name, parse_route_name, RouteName};
pub use self::route::{ResolveError, RouteText, RouteTextError, RouteType, TargetText};
pub use self::target::{Host, Target};
pub use self::types::{
    AgonesConfig, ApiConfig, Config, HealthConfig, LogConfig, LogFormat, QuicLbSpec, RedisConfig,
    Refusal, RelayConfig, ReloadConfig, RemovedSessions, RouteKind, RouteSpec, Secret, Shards,
    UdpConfig, DEFAULT_TOKEN_ENV,
};
pub use self::units::{parse_byte_size, parse_duration};

/// Reads and validates the configuration file at `path`. The API token may come from the
/// process environment (`api.token_env`).
///
/// # Errors
/// Every problem in the file, or that it cannot be read.
pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
    load_with_env(path, &process_env)
}

/// Like [`load`], with environment variables looked up through `env` instead of the process
/// environment (for tests, or to inject secrets from elsewhere).
///
/// # Errors
/// As [`load`].
pub fn load_with_env(
    path: impl AsRef<Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => from_str_with_env(&text, &origin, env),
        Err(error) => {
            let message = match error.kind() {
                std::io::ErrorKind::NotFound => {
                    "cannot read the configuration file: no such file".to_owned()
                }
                _ => format!("cannot read the configuration file: {error}"),
            };
            Err(ConfigErrors::new(
                &origin,
                vec![Problem::new("", None, message)],
            ))
        }
    }
}

/// Parses and validates configuration text. `origin` names it in messages (a file name).
/// The API token may come from the process environment (`api.token_env`).
///
/// # Errors
/// Every problem in the text.
pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    from_str_with_env(text, origin, &process_env)
}

/// Like [`from_str`], with environment variables looked up through `env`.
///
/// # Errors
/// As [`from_str`].
pub fn from_str_with_env(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let root = yaml::parse(text).map_err(|fatal| {
        ConfigErrors::new(origin, vec![Problem::new("", fatal.span, fatal.message)])
    })?;
    check::check(&root, env).map_err(|problems| ConfigErrors::new(origin, problems))
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
