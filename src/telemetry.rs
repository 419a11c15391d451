//! Logging: one `tracing` subscriber writing to stderr, readable lines or
//! JSON, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info,stompline=info";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` is set but is not a valid filter.
    #[error("RUST_LOG={value:?} is not a valid filter: {source}")]
    Filter {
        /// The offending value.
        value: String,
        /// The parser's complaint.
        source: tracing_subscriber::filter::ParseError,
    },
}

/// The filter from `RUST_LOG`, or [`DEFAULT_FILTER`] when it is unset/empty.
///
/// # Errors
///
/// When `RUST_LOG` is set but does not parse.
pub fn filter_from_env() -> Result<EnvFilter, TelemetryError> {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).map_err(|source| TelemetryError::Filter { value, source })
        }
        _ => Ok(EnvFilter::new(DEFAULT_FILTER)),
    }
}

/// Installs the global subscriber. Calling it again (several servers in one
/// test process) is harmless: the first subscriber stays.
///
/// Human output is coloured only when stderr is a terminal and `NO_COLOR` is
/// unset.
///
/// # Errors
///
/// When `RUST_LOG` is set but does not parse.
pub fn init(format: LogFormat) -> Result<(), TelemetryError> {
    let filter = filter_from_env()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already set, which is fine.
    let _ = match format {
        LogFormat::Human => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).try_init()
        }
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    Ok(())
}
