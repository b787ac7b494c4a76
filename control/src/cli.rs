//! The command line both relay binaries take, and how it finds its configuration.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigErrors};

/// The example configuration (`config.yaml` at the top of the repository), built into
/// the binaries: used when no `--config` is given and there is no `config.yaml` in the
/// working directory. It needs no Redis and no Agones.
pub const EXAMPLE_CONFIG: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.yaml"));

/// The file looked for when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "config.yaml";

/// Porter: a transparent UDP relay for QUIC that routes each connection by the server
/// name (SNI) in its ClientHello, without terminating QUIC.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Porter: a transparent UDP relay for QUIC that routes each connection by the \
             server name (SNI) in its ClientHello, without terminating QUIC.",
    after_help = "Run with the example configuration (no Redis, no Agones):  porter\n\
                  Validate a file:                                          porter check --config FILE\n\
                  Configuration reference: docs/configuration.md; API: docs/openapi.yaml.\n\
                  Log filter: log.level in the file, or the RUST_LOG environment variable."
)]
pub struct Cli {
    /// Configuration file (YAML; see docs/configuration.md). Without it, ./config.yaml
    /// if present, else the built-in example configuration.
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the relay (the default).
    Run,
    /// Validate the configuration, print every problem with its location, and exit
    /// non-zero if there is any.
    Check,
}

impl Cli {
    /// Loads the configuration the command line names; also returns where it came from
    /// (a path, or `built-in example`).
    pub fn load_config(&self) -> Result<(Config, String), ConfigErrors> {
        match &self.config {
            Some(path) => config::load(path).map(|c| (c, path.display().to_string())),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                config::load(DEFAULT_CONFIG_FILE).map(|c| (c, DEFAULT_CONFIG_FILE.to_owned()))
            }
            None => {
                let origin = "built-in example";
                config::from_str(EXAMPLE_CONFIG, origin).map(|c| (c, origin.to_owned()))
            }
        }
    }
}
