//! The `stompline` command line.
//!
//! ```text
//! stompline [serve] [OPTIONS]     run the server (the default)
//! stompline migrate [OPTIONS]     apply database migrations and exit
//! stompline config [--example]    print the effective (or an example) config
//! ```
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigErrors, Overrides};

/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage or an invalid configuration.
pub const EXIT_USAGE: u8 = 2;

/// Realtime chat server speaking STOMP over WebSocket and TCP.
#[derive(Debug, Parser)]
#[command(name = "stompline", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration sources, accepted before or after the subcommand.
    #[command(flatten)]
    pub options: ConfigArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations, then exit.
    Migrate,
    /// Print the effective configuration (file, environment and flags
    /// applied) as TOML.
    Config {
        /// Print a commented example configuration instead.
        #[arg(long)]
        example: bool,
    },
}

/// Where the configuration comes from. Every flag can also be given as an
/// environment variable (`STOMPLINE_HTTP_ADDR`, …), which the configuration
/// loader reads; a flag wins over the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE", env = "STOMPLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP + WebSocket listen address, ip:port [default: 127.0.0.1:8080].
    #[arg(long, global = true, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// STOMP TCP listen address, ip:port; "" disables [default: 127.0.0.1:61613].
    #[arg(long, global = true, value_name = "ADDR")]
    pub stomp_addr: Option<String>,
    /// Data directory (SQLite database, generated secret) [default: ./data].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: empty = SQLite in the data directory, postgres://… = PostgreSQL.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log format [default: human].
    #[arg(long, global = true, value_name = "human|json")]
    pub log_format: Option<String>,
}

impl ConfigArgs {
    /// The flag layer of the configuration.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            http_addr: self.http_addr.clone(),
            stomp_addr: self.stomp_addr.clone(),
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            log_format: self.log_format.clone(),
        }
    }

    /// Loads and validates the configuration these arguments describe.
    ///
    /// # Errors
    ///
    /// Every configuration problem found.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        Config::load(self.config.as_deref(), &self.overrides())
    }
}

/// Entry point of the `stompline` binary: parses `std::env::args`, runs the
/// command and returns the process exit code.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs the command line `args` (program name first).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version also come through here, with exit code 0.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };

    if let Some(Command::Config { example: true }) = cli.command {
        print!("{}", config::EXAMPLE_TOML);
        return ExitCode::SUCCESS;
    }

    let config = match cli.options.load() {
        Ok(config) => config,
        Err(errors) => {
            eprintln!(
                "stompline: invalid configuration ({} problem(s)):",
                errors.errors().len()
            );
            eprintln!("{errors}");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    match cli.command.unwrap_or(Command::Serve) {
        Command::Config { .. } => match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("stompline: cannot print the configuration: {error}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Serve => {
            if let Err(code) = start_telemetry(&config) {
                return code;
            }
            raise_open_file_limit();
            finish(crate::server::serve(config))
        }
        Command::Migrate => {
            if let Err(code) = start_telemetry(&config) {
                return code;
            }
            finish(crate::server::migrate(&config))
        }
    }
}

fn start_telemetry(config: &Config) -> Result<(), ExitCode> {
    if let Err(error) = crate::telemetry::init(config.log_format) {
        eprintln!("stompline: {error}");
        return Err(ExitCode::from(EXIT_USAGE));
    }
    for name in config::ignored_env_vars(std::env::vars_os()) {
        tracing::warn!(variable = %name, "ignoring environment variable: it names no configuration key");
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit: every connection is a
/// file descriptor, and distributions default the soft limit to 1024.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open file limit"),
    }
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "stompline failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
