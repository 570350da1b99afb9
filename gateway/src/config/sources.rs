//! Where each value comes from: the environment variable first, then the file key, then the
//! default. Paths from the file are relative to the file's directory; paths from the
//! environment are taken as given. Every value keeps its [`Origin`], so a refusal names the
//! variable or key the operator wrote.

use super::{ConfigError, Env, Origin, Problem};
use lap_keys::Setting;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where values come from: the environment, and the directory file paths are relative to.
pub(super) struct Sources<'a> {
    pub env: &'a dyn Env,
    pub base: Option<&'a Path>,
}

/// A value and where it came from.
pub(super) struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    pub fn refuse(&self, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            problem,
        }
    }
}

impl Sources<'_> {
    /// A file path relative to the configuration file's directory.
    pub fn rel(&self, p: PathBuf) -> PathBuf {
        match self.base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    }

    /// Text from `var`, else from the file's `key`.
    pub fn text(
        &self,
        var: &'static str,
        key: &'static str,
        file: Option<String>,
    ) -> Option<Sourced<String>> {
        match self.env.var(var) {
            Some(value) => Some(Sourced {
                value,
                origin: Origin::Env(var),
            }),
            None => file.map(|value| Sourced {
                value,
                origin: Origin::key(key),
            }),
        }
    }

    /// A path from `var` (as given), else from the file's `key` (relative to the file).
    pub fn path(&self, var: &'static str, file: Option<PathBuf>) -> Option<PathBuf> {
        self.env
            .var(var)
            .map(PathBuf::from)
            .or_else(|| file.map(|p| self.rel(p)))
    }

    /// A number from `var` (when there is one), else from the file's `key`.
    pub fn number<T: FromStr>(
        &self,
        var: Option<&'static str>,
        key: &'static str,
        file: Option<T>,
    ) -> Result<Option<Sourced<T>>, ConfigError> {
        match var.and_then(|var| Some((var, self.env.var(var)?))) {
            Some((var, text)) => match text.parse() {
                Ok(value) => Ok(Some(Sourced {
                    value,
                    origin: Origin::Env(var),
                })),
                Err(_) => Err(ConfigError::Invalid {
                    origin: Origin::Env(var),
                    problem: Problem::NotANumber(text),
                }),
            },
            None => Ok(file.map(|value| Sourced {
                value,
                origin: Origin::key(key),
            })),
        }
    }

    /// A yes/no from `var` (`1/0/true/false/yes/no/on/off`), else from the file.
    pub fn flag(&self, var: &'static str, file: Option<bool>) -> Result<Option<bool>, ConfigError> {
        match self.env.var(var).as_deref() {
            None => Ok(file),
            Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
            Some("0" | "false" | "no" | "off") => Ok(Some(false)),
            Some(v) => Err(ConfigError::Invalid {
                origin: Origin::Env(var),
                problem: Problem::NotABool(v.to_string()),
            }),
        }
    }

    /// A number of seconds from the environment only (the seed's signer timeouts).
    pub fn seconds(&self, var: &'static str) -> Result<Option<Setting<f64>>, ConfigError> {
        Ok(self
            .number::<f64>(Some(var), "", None)?
            .map(|s| Setting::env(var, s.value)))
    }
}
