//! Layering (defaults < file < environment < flags) and per-key error
//! reporting.
//!
//! serde stops at the first bad field, so the merged tree is checked one leaf
//! at a time against the defaults: a leaf that does not deserialize is
//! reported and replaced by its default, which lets the semantic checks still
//! run on everything else. The user sees every problem in one go.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;

use super::{Config, ConfigError, ConfigErrors};

/// Prefix of every environment variable the configuration reads.
pub const ENV_PREFIX: &str = "STOMPLINE_";

/// `STOMPLINE_*` variables that are not configuration keys: the config file
/// path (read by the command line) and test-harness switches.
const NON_CONFIG_ENV: &[&str] = &["CONFIG", "REQUIRE_SERVICES"];
const NON_CONFIG_ENV_PREFIXES: &[&str] = &["TEST_"];

const ENV_PROVIDER: &str = "environment variable";
const FLAG_PROVIDER: &str = "command-line flag";

/// Values given on the command line; `None` leaves the key to the lower
/// layers. These win over environment, file and defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overrides {
    /// `--http-addr`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    /// `--stomp-addr` (`""` disables the TCP listener)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stomp_addr: Option<String>,
    /// `--data-dir`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--database-url`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// `--log-format` (checked like any other value, so a bad one is listed
    /// with the other problems)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

/// A provider over an already built tree, named so that errors can say where
/// a value came from.
struct Layer {
    name: &'static str,
    dict: Dict,
    interpolate: fn(&[&str]) -> String,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let interpolate = self.interpolate;
        Metadata::named(self.name).interpolater(move |_: &Profile, keys: &[&str]| interpolate(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn env_name(keys: &[&str]) -> String {
    format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
}

fn flag_name(keys: &[&str]) -> String {
    format!("--{}", keys.join(".").replace('_', "-"))
}

fn default_dict() -> Dict {
    match Value::serialize(Config::default()) {
        Ok(Value::Dict(_, dict)) => dict,
        other => unreachable!("the default config serializes to a table, got {other:?}"),
    }
}

/// What an environment variable name means for the configuration.
enum EnvKey {
    /// A configuration key path (`stomp.max_frame_bytes`).
    Config(String),
    /// Known not to be configuration.
    Other,
    /// Has the prefix but names no key.
    Unknown,
}

fn classify_env(name: &str, defaults: &Dict) -> Option<EnvKey> {
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
    if rest.contains("__") {
        // Section keys are always configuration: a typo here is reported as
        // an unknown key rather than ignored.
        return Some(EnvKey::Config(
            rest.split("__").collect::<Vec<_>>().join("."),
        ));
    }
    if defaults.contains_key(&rest) {
        return Some(EnvKey::Config(rest));
    }
    let upper = rest.to_ascii_uppercase();
    if NON_CONFIG_ENV.contains(&upper.as_str())
        || NON_CONFIG_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
    {
        Some(EnvKey::Other)
    } else {
        Some(EnvKey::Unknown)
    }
}

/// `STOMPLINE_*` variables in `env` that name no configuration key and are
/// not otherwise known; they are ignored, and worth a warning (likely typos).
pub fn ignored_env_vars<I, K, V>(env: I) -> Vec<String>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let defaults = default_dict();
    let mut names: Vec<String> = env
        .into_iter()
        .filter_map(|(k, _)| {
            let name = k.into().to_string_lossy().into_owned();
            matches!(classify_env(&name, &defaults), Some(EnvKey::Unknown)).then_some(name)
        })
        .collect();
    names.sort();
    names
}

fn find<'a>(dict: &'a Dict, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = dict.get(parts.next()?)?;
    for part in parts {
        value = value.as_dict()?.get(part)?;
    }
    Some(value)
}

/// Builds the environment layer. Keys whose default is a string keep the raw
/// text (so `STOMPLINE_STOMP_ADDR=""` is the empty string and a numeric
/// secret stays a string); everything else is parsed (`"1024"` → integer,
/// `"true"` → bool, `[…]` → array).
fn env_dict(env: impl Iterator<Item = (OsString, OsString)>, defaults: &Dict) -> Dict {
    let mut dict = Dict::new();
    for (name, value) in env {
        let name = name.to_string_lossy();
        let Some(EnvKey::Config(path)) = classify_env(&name, defaults) else {
            continue;
        };
        let value = value.to_string_lossy();
        let value = match find(defaults, &path) {
            Some(Value::String(..)) => Value::from(value.trim().to_string()),
            _ => value
                .parse::<Value>()
                .unwrap_or_else(|never| match never {}),
        };
        if let Some(nested) = figment::util::nest(&path, value).into_dict() {
            dict = merge(dict, nested);
        }
    }
    dict
}

fn merge(mut into: Dict, from: Dict) -> Dict {
    for (key, value) in from {
        let merged = match (into.remove(&key), value) {
            (Some(Value::Dict(tag, a)), Value::Dict(_, b)) => Value::Dict(tag, merge(a, b)),
            (_, value) => value,
        };
        into.insert(key, merged);
    }
    into
}

fn flag_dict(overrides: &Overrides) -> Dict {
    match Value::serialize(overrides) {
        Ok(Value::Dict(_, dict)) => dict,
        _ => Dict::new(),
    }
}

/// Where the value at `path` came from, for error messages; `None` for the
/// built-in defaults.
fn origin(figment: &Figment, path: &str) -> Option<String> {
    let metadata = figment.find_metadata(path)?;
    let keys: Vec<&str> = path.split('.').collect();
    if let Some(source) = &metadata.source {
        if matches!(source, figment::Source::File(_)) {
            return Some(format!("in {source}"));
        }
    }
    match metadata.name.as_ref() {
        ENV_PROVIDER => Some(format!(
            "from {ENV_PROVIDER} {}",
            metadata.interpolate(&Profile::Default, &keys)
        )),
        FLAG_PROVIDER => Some(format!(
            "from {FLAG_PROVIDER} {}",
            metadata.interpolate(&Profile::Default, &keys)
        )),
        _ => None,
    }
}

fn with_origin(figment: &Figment, mut error: ConfigError) -> ConfigError {
    let path = error.key.split('[').next().unwrap_or_default().to_string();
    if let Some(origin) = origin(figment, &path) {
        error.message = format!("{} ({origin})", error.message);
    }
    error
}

fn toml_problem(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let position = error.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!(" at line {line}, column {column}")
    });
    ConfigError::new(
        path.display().to_string(),
        format!(
            "invalid TOML{}: {}",
            position.unwrap_or_default(),
            error.message().trim().replace('\n', " ")
        ),
    )
}

fn slot_mut<'a>(dict: &'a mut Dict, path: &str) -> Option<&'a mut Value> {
    match path.split_once('.') {
        None => dict.get_mut(path),
        Some((section, key)) => match dict.get_mut(section)? {
            Value::Dict(_, inner) => inner.get_mut(key),
            _ => None,
        },
    }
}

/// Checks `value` at `path` by deserializing the known-good tree with just
/// this leaf replaced. Returns the key path and error text when it does not
/// fit, and then leaves the known-good value in place so later leaves are
/// checked against a tree that is otherwise valid.
fn leaf_problem(good: &mut Dict, path: &str, value: &Value) -> Option<(String, String)> {
    let previous = std::mem::replace(slot_mut(good, path)?, value.clone());
    let error = Value::from(good.clone()).deserialize::<Config>().err()?;
    if let Some(slot) = slot_mut(good, path) {
        *slot = previous;
    }
    let key_path = if error.path.len() > path.split('.').count() {
        error_path(&error.path)
    } else {
        path.to_string()
    };
    Some((key_path, tidy(error.kind.to_string())))
}

/// figment quotes serde's already quoted lists again (``a` or `b``).
fn tidy(message: String) -> String {
    message.replace("`one of ", "one of ").replace("``", "`")
}

/// `["acl", "rules", "0", "send"]` → `acl.rules[0].send`.
fn error_path(parts: &[String]) -> String {
    let mut out = String::new();
    for part in parts {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

pub(super) fn load(
    file: Option<&Path>,
    overrides: &Overrides,
    env: impl Iterator<Item = (OsString, OsString)>,
) -> Result<Config, ConfigErrors> {
    let defaults = default_dict();
    let mut errors = Vec::new();

    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Err(error) => errors.push(ConfigError::new(
                path.display().to_string(),
                format!("cannot read config file: {error}"),
            )),
            Ok(text) => match text.parse::<toml::Table>() {
                Err(error) => errors.push(toml_problem(path, &text, &error)),
                Ok(_) => figment = figment.merge(Toml::file_exact(path)),
            },
        }
    }
    figment = figment
        .merge(Layer {
            name: ENV_PROVIDER,
            dict: env_dict(env, &defaults),
            interpolate: env_name,
        })
        .merge(Layer {
            name: FLAG_PROVIDER,
            dict: flag_dict(overrides),
            interpolate: flag_name,
        });

    let merged: Dict = match figment.extract() {
        Ok(dict) => dict,
        Err(error) => {
            errors.extend(error.into_iter().map(|e| {
                let key = if e.path.is_empty() {
                    "config".to_string()
                } else {
                    error_path(&e.path)
                };
                ConfigError::new(key, tidy(e.kind.to_string()))
            }));
            return Err(ConfigErrors(errors));
        }
    };

    let mut good = defaults.clone();
    let mut leaf_errors = Vec::new();
    for (key, value) in &merged {
        match (defaults.get(key), value) {
            (None, _) => leaf_errors.push(ConfigError::new(key.clone(), "unknown key")),
            (Some(Value::Dict(_, known)), Value::Dict(_, given)) => {
                for (inner, value) in given {
                    let path = format!("{key}.{inner}");
                    if !known.contains_key(inner) {
                        leaf_errors.push(ConfigError::new(path, "unknown key"));
                    } else if let Some((path, message)) = leaf_problem(&mut good, &path, value) {
                        leaf_errors.push(ConfigError::new(path, message));
                    }
                }
            }
            (Some(Value::Dict(..)), _) => {
                leaf_errors.push(ConfigError::new(
                    key.clone(),
                    "expected a table ([section])",
                ));
            }
            (Some(_), value) => {
                if let Some((path, message)) = leaf_problem(&mut good, key, value) {
                    leaf_errors.push(ConfigError::new(path, message));
                }
            }
        }
    }
    errors.extend(leaf_errors.into_iter().map(|e| with_origin(&figment, e)));

    match Value::from(good).deserialize::<Config>() {
        Ok(config) => {
            if let Err(ConfigErrors(semantic)) = config.validate() {
                errors.extend(semantic.into_iter().map(|e| with_origin(&figment, e)));
            }
            if errors.is_empty() {
                Ok(config)
            } else {
                Err(ConfigErrors(errors))
            }
        }
        Err(error) => {
            errors.push(ConfigError::new(
                error_path(&error.path),
                tidy(error.kind.to_string()),
            ));
            Err(ConfigErrors(errors))
        }
    }
}
