//! The command line both relay binaries take, and how it finds its configuration.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::setup::{LogFormat, Settings};
use porter_config::{self as config, Config, ConfigErrors};

/// The example configuration (`config.yaml` at the top of the repository), built into
/// the binaries: used when no `--config` is given and there is no `config.yaml` in the
/// working directory. It needs no Redis and no Agones.
pub const EXAMPLE_CONFIG: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.yaml"));

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
    /// Parses the process's arguments for the binary `name` (shown by `--version` and
    /// `--help`; the derive alone would show this crate's name); exits on an error, as
    /// [`Parser::parse`] does.
    pub fn parse_as(name: &'static str) -> Self {
        let matches = <Self as clap::CommandFactory>::command()
            .name(name)
            .get_matches();
        <Self as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

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

    /// The file [`Self::load_config`] reads, if it reads one (not the built-in example).
    pub fn config_file(&self) -> Option<PathBuf> {
        match &self.config {
            Some(path) => Some(path.clone()),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => Some(DEFAULT_CONFIG_FILE.into()),
            None => None,
        }
    }

    /// What both binaries do before their runtime starts. Loads the configuration; for
    /// `check`, prints the warnings and the verdict and returns the exit code (0, or 2
    /// for a problem); for `run`, resolves the settings (a problem: exit code 2), starts
    /// logging ([`init_logging`]), logs the configuration's warnings, and raises the soft
    /// file-descriptor limit to the hard one ([`porter_host::raise_fd_limit`]: every
    /// client path holds a socket).
    pub fn prepare(&self) -> Result<Settings, ExitCode> {
        let (config, origin) = match self.load_config() {
            Ok(loaded) => loaded,
            Err(errors) => {
                eprintln!("{errors}");
                return Err(ExitCode::from(2));
            }
        };
        if matches!(self.command, Some(Command::Check)) {
            for warning in &config.warnings {
                println!("warning: {warning}");
            }
            return Err(match Settings::from_config(&config) {
                Ok(_) => {
                    println!("{origin}: OK");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{origin}: {e:#}");
                    ExitCode::from(2)
                }
            });
        }
        let mut settings = match Settings::from_config(&config) {
            Ok(settings) => settings,
            Err(e) => {
                eprintln!("{origin}: {e:#}");
                return Err(ExitCode::from(2));
            }
        };
        settings.config_file = self.config_file();
        init_logging(&settings);
        install_panic_hook();
        tracing::info!(config = %origin, "configuration loaded");
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        raise_fd_limit();
        Ok(settings)
    }
}

/// Raises the soft `NOFILE` limit to the hard one, and says so (or why not).
fn raise_fd_limit() {
    let shown = |l: Option<u64>| l.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
    match porter_host::raise_fd_limit() {
        (limit, None) if limit.now != limit.before => tracing::info!(
            from = %shown(limit.before),
            to = %shown(limit.now),
            "file-descriptor limit raised"
        ),
        (_, None) => {}
        (limit, Some(e)) => tracing::warn!(
            limit = %shown(limit.now),
            "cannot raise the file-descriptor limit: {e}"
        ),
    }
}

/// Logs to stderr with the configured filter (`RUST_LOG` overrides it) and format.
pub fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// The exit code of a process that ends because a thread or task panicked
/// ([`install_panic_hook`]): `EX_SOFTWARE` of sysexits(3).
pub const PANIC_EXIT_CODE: i32 = 70;

/// Makes a panic anywhere in the process (any thread, any task of any runtime) end the
/// process with [`PANIC_EXIT_CODE`] after logging one `error` line ([`panic_line`]).
/// Without it a panicking relay task would end silently: tokio's runtime catches task
/// panics, and the relay would go on without, say, a listener. Called by
/// [`Cli::prepare`] once logging is set up; a panic before that gets Rust's default hook.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let backtrace = std::backtrace::Backtrace::capture();
        let line = panic_line(
            thread.name(),
            location.as_deref(),
            panic_payload(info.payload()),
        );
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(exit_code = PANIC_EXIT_CODE, "{line}\n{backtrace}");
        } else {
            tracing::error!(exit_code = PANIC_EXIT_CODE, "{line}");
        }
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// The text of a panic's payload (`panic!("..")` gives a `&str` or a `String`).
fn panic_payload(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a payload that is not text)"
    }
}

/// The log line of a panic: the thread, where, and the message.
#[must_use]
pub fn panic_line(thread: Option<&str>, location: Option<&str>, message: &str) -> String {
    format!(
        "panic in thread {} at {}: {message}; the process exits with code {PANIC_EXIT_CODE}",
        thread.unwrap_or("(unnamed)"),
        location.unwrap_or("(unknown location)"),
    )
}

/// The exit code of a binary named `binary` whose relay returned `result`: 0, or 1 with
/// the error (and its causes, with `{:#}`) logged and printed to stderr.
pub fn finish<E: fmt::Display>(binary: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{binary}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panic_line_names_thread_place_and_message() {
        assert_eq!(
            panic_line(Some("porter"), Some("src/engine.rs:10:5"), "boom"),
            "panic in thread porter at src/engine.rs:10:5: boom; the process exits with code 70"
        );
        assert_eq!(
            panic_line(None, None, "x"),
            "panic in thread (unnamed) at (unknown location): x; the process exits with code 70"
        );
    }

    #[test]
    fn payloads_of_both_text_kinds_are_read() {
        let s: Box<dyn std::any::Any + Send> = Box::new("static");
        assert_eq!(panic_payload(&*s), "static");
        let s: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_payload(&*s), "owned");
        let s: Box<dyn std::any::Any + Send> = Box::new(7_u8);
        assert_eq!(panic_payload(&*s), "(a payload that is not text)");
    }
}
