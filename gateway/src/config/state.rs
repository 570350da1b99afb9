//! `[state]`, `[sessions]`, `[[limits.rate]]` and `[[limits.budget]]`: where what is counted
//! across calls is kept, and the limits counted there (`docs/limits.md`).
//!
//! Kept apart from `resolve.rs` because these settings form one feature with its own rules:
//! the Redis URL is a secret (it carries the password), so it is read from the environment or
//! a file and never shown, and every limit gets a fingerprint of its own definition, which
//! names its counters in the store — replicas with the same configuration share them, and a
//! changed limit starts afresh instead of inheriting the counts of an older one.

use super::file::{BudgetFile, RateFile, SessionsFile, StateFile};
use super::sources::{Sourced, Sources};
use super::{ConfigError, Origin, Problem, ToolConfig};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the state layer keeps its records, and how long it may take.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// Past it an operation fails with `STATE_TIMEOUT` (and the call is refused).
    pub deadline: Duration,
    /// Every key in the store starts with it.
    pub prefix: String,
    /// How long a budget reservation holds without a settle.
    pub reservation_ttl: Duration,
}

#[derive(Debug, Clone)]
pub enum StateBackend {
    /// One SQLite file.
    Embedded { path: PathBuf },
    /// A Redis server shared by replicas.
    Redis {
        url: RedisUrlSource,
        /// PEM certificates to trust for `rediss://` instead of the system's roots.
        ca_file: Option<PathBuf>,
    },
}

impl StateBackend {
    pub fn name(&self) -> &'static str {
        match self {
            StateBackend::Embedded { .. } => "embedded",
            StateBackend::Redis { .. } => "redis",
        }
    }
}

/// Where the Redis URL is. The URL itself is only read at start-up ([`RedisUrl`]).
#[derive(Debug, Clone)]
pub enum RedisUrlSource {
    /// `LAP_STATE_REDIS_URL`.
    Env,
    /// `[state] url_file` / `LAP_STATE_REDIS_URL_FILE`.
    File(PathBuf),
}

/// A Redis URL. It carries the password, so it has no `Display` and its `Debug` shows only
/// the scheme: the URL is handed to the client and nowhere else.
#[derive(Clone)]
pub struct RedisUrl(String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({}://…)", self.scheme())
    }
}

/// Why the Redis URL could not be had. Never includes the URL or the file's content.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error("LAP_STATE_REDIS_URL is not set")]
    Missing,
    #[error("cannot read the Redis URL file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: the Redis URL must start with redis:// or rediss:// (value not shown)")]
    Scheme(String),
}

impl RedisUrl {
    /// Reads the URL from its source (one line; surrounding white space dropped).
    pub fn load(source: &RedisUrlSource, env: &dyn super::Env) -> Result<RedisUrl, RedisUrlError> {
        let (text, from) = match source {
            RedisUrlSource::Env => (
                env.var("LAP_STATE_REDIS_URL")
                    .ok_or(RedisUrlError::Missing)?,
                "LAP_STATE_REDIS_URL".to_string(),
            ),
            RedisUrlSource::File(path) => (
                std::fs::read_to_string(path).map_err(|source| RedisUrlError::Read {
                    path: path.clone(),
                    source,
                })?,
                path.display().to_string(),
            ),
        };
        let url = text.trim().to_string();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(RedisUrlError::Scheme(from));
        }
        Ok(RedisUrl(url))
    }

    /// The URL, for the Redis client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn scheme(&self) -> &'static str {
        if self.0.starts_with("rediss://") {
            "rediss"
        } else {
            "redis"
        }
    }
}

/// `[sessions]`: what `POST /v1/session/new` grants.
#[derive(Debug, Clone, Copy)]
pub struct SessionsConfig {
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Live sessions one agent may hold.
    pub max_per_agent: u32,
    /// Live sessions all agents together may hold.
    pub max_total: u32,
}

/// Whose calls share one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each agent on each tool.
    PrincipalTool,
    /// Each agent, all tools together.
    Principal,
    /// Each tool, all agents together.
    Tool,
    /// Everyone, everything (rate limits only).
    Global,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::PrincipalTool => "principal_tool",
            Scope::Principal => "principal",
            Scope::Tool => "tool",
            Scope::Global => "global",
        }
    }
}

/// Which calls a limit applies to: tools named (empty: all), agents in one of the groups
/// named (empty: all).
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Tool names, or `<server>/<tool>` for an MCP server's tool, or `<server>` for every
    /// tool of that server.
    pub tools: Vec<String>,
    pub groups: Vec<String>,
}

impl Selector {
    /// Whether a call of `tool` (`name` or `server/name`) by an agent in `groups` is selected.
    pub fn selects(&self, tool: &str, groups: &[String]) -> bool {
        let server = tool.split_once('/').map(|(s, _)| s);
        (self.tools.is_empty()
            || self
                .tools
                .iter()
                .any(|t| t == tool || Some(t.as_str()) == server))
            && (self.groups.is_empty() || self.groups.iter().any(|g| groups.contains(g)))
    }
}

/// One `[[limits.rate]]`.
#[derive(Debug, Clone)]
pub struct RateRule {
    /// Fingerprint of the definition: names its counters in the store.
    pub id: String,
    /// Its place in the file (`limits.rate[0]`), for messages and metrics.
    pub name: String,
    pub scope: Scope,
    pub limit: lap_state::Limit,
    pub select: Selector,
}

/// The window a budget counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetWindow {
    Hour,
    Day,
    Month,
    /// The call's session, until it ends: such a budget needs calls made in a session.
    Session,
}

impl BudgetWindow {
    pub fn name(self) -> &'static str {
        match self {
            BudgetWindow::Hour => "hour",
            BudgetWindow::Day => "day",
            BudgetWindow::Month => "month",
            BudgetWindow::Session => "session",
        }
    }
}

/// One `[[limits.budget]]`.
#[derive(Debug, Clone)]
pub struct BudgetRule {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub window: BudgetWindow,
    pub limits: lap_state::Limits,
    /// JSON pointer into the call's JSON arguments giving its spend.
    pub spend_field: Option<String>,
    pub select: Selector,
}

/// Rate limits and budgets, in file order.
#[derive(Debug, Clone, Default)]
pub struct LimitRules {
    pub rate: Vec<RateRule>,
    pub budget: Vec<BudgetRule>,
}

/// `[state]` with its `LAP_STATE_*` variables. The embedded store's default file is
/// `state.db` in the log directory (as the MCP session key's): the gateway's data in one
/// place.
pub(super) fn state(
    s: &Sources<'_>,
    f: StateFile,
    log_dir: &Path,
) -> Result<StateConfig, ConfigError> {
    let backend_choice = s.text("LAP_STATE_BACKEND", "state.backend", f.backend);
    if let Some(b) = &backend_choice {
        if !matches!(b.value.as_str(), "embedded" | "redis") {
            return Err(b.refuse(Problem::NotAChoice {
                value: b.value.clone(),
                choices: &["embedded", "redis"],
            }));
        }
    }
    let backend = match backend_choice.as_ref().map(|b| b.value.as_str()) {
        Some("redis") => {
            let url = if s.env.var("LAP_STATE_REDIS_URL").is_some() {
                RedisUrlSource::Env
            } else {
                match s.path("LAP_STATE_REDIS_URL_FILE", f.url_file) {
                    Some(p) => RedisUrlSource::File(p),
                    None => {
                        return Err(ConfigError::Invalid {
                            origin: Origin::key("state.backend"),
                            problem: Problem::RedisUrlRequired,
                        })
                    }
                }
            };
            StateBackend::Redis {
                url,
                ca_file: s.path("LAP_STATE_CA_FILE", f.ca_file),
            }
        }
        _ => StateBackend::Embedded {
            path: s
                .path("LAP_STATE_PATH", f.path)
                .unwrap_or_else(|| log_dir.join("state.db")),
        },
    };
    let ranged = |var, key, file: Option<u64>, (default, min, max): (u64, u64, u64)| match s
        .number(Some(var), key, file)?
    {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n.value) => Ok(n.value),
        Some(n) => Err(n.refuse(Problem::OutOfRange { min, max })),
    };
    let deadline_ms = ranged(
        "LAP_STATE_DEADLINE_MS",
        "state.deadline_ms",
        f.deadline_ms,
        (50, 1, 60_000),
    )?;
    let ttl = ranged(
        "LAP_STATE_RESERVATION_TTL_SECONDS",
        "state.reservation_ttl_seconds",
        f.reservation_ttl_seconds,
        (300, 1, 86_400),
    )?;
    let prefix = match s.text("LAP_STATE_PREFIX", "state.prefix", f.prefix) {
        None => "lap:".to_string(),
        Some(p)
            if p.value.len() <= lap_state::MAX_PREFIX_LEN
                && !p.value.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            p.value
        }
        Some(p) => return Err(p.refuse(Problem::StatePrefix)),
    };
    Ok(StateConfig {
        backend,
        deadline: Duration::from_millis(deadline_ms),
        prefix,
        reservation_ttl: Duration::from_secs(ttl),
    })
}

/// `[sessions]` with its `LAP_SESSIONS_*` variables. A refusal names where the value came
/// from; a default that does not fit the values set names its key (set it too).
pub(super) fn sessions(s: &Sources<'_>, f: SessionsFile) -> Result<SessionsConfig, ConfigError> {
    const MAX_TTL: u64 = 31_622_400;
    // A number of seconds and whether it was set.
    let secs = |var: &'static str,
                key: &'static str,
                file: Option<u64>,
                default: u64|
     -> Result<(Sourced<u64>, bool), ConfigError> {
        let found = s.number(Some(var), key, file)?;
        let given = found.is_some();
        let v = found.unwrap_or_else(|| Sourced {
            value: default,
            origin: Origin::key(key),
        });
        if (1..=MAX_TTL).contains(&v.value) {
            Ok((v, given))
        } else {
            Err(v.refuse(Problem::OutOfRange {
                min: 1,
                max: MAX_TTL,
            }))
        }
    };
    let (min, min_given) = secs(
        "LAP_SESSIONS_MIN_TTL_SECONDS",
        "sessions.min_ttl_seconds",
        f.min_ttl_seconds,
        60,
    )?;
    let (max, max_given) = secs(
        "LAP_SESSIONS_MAX_TTL_SECONDS",
        "sessions.max_ttl_seconds",
        f.max_ttl_seconds,
        86_400,
    )?;
    if min.value > max.value {
        return Err(if max_given && !min_given {
            max.refuse(Problem::OutOfRange {
                min: min.value,
                max: MAX_TTL,
            })
        } else {
            min.refuse(Problem::OutOfRange {
                min: 1,
                max: max.value,
            })
        });
    }
    let (default, _) = secs(
        "LAP_SESSIONS_DEFAULT_TTL_SECONDS",
        "sessions.default_ttl_seconds",
        f.default_ttl_seconds,
        3600,
    )?;
    if !(min.value..=max.value).contains(&default.value) {
        return Err(default.refuse(Problem::OutOfRange {
            min: min.value,
            max: max.value,
        }));
    }
    let cap = |var: &'static str,
               key: &'static str,
               file: Option<u32>,
               default: u32|
     -> Result<u32, ConfigError> {
        match s.number(Some(var), key, file)? {
            None => Ok(default),
            Some(n) if n.value == 0 => Err(n.refuse(Problem::NotPositive)),
            Some(n) => Ok(n.value),
        }
    };
    Ok(SessionsConfig {
        default_ttl: Duration::from_secs(default.value),
        min_ttl: Duration::from_secs(min.value),
        max_ttl: Duration::from_secs(max.value),
        max_per_agent: cap(
            "LAP_SESSIONS_MAX_PER_AGENT",
            "sessions.max_per_agent",
            f.max_per_agent,
            100,
        )?,
        max_total: cap(
            "LAP_SESSIONS_MAX_TOTAL",
            "sessions.max_total",
            f.max_total,
            100_000,
        )?,
    })
}

/// `[[limits.rate]]` and `[[limits.budget]]`, checked against the configured tools and MCP
/// servers.
pub(super) fn rules(
    rate: Vec<RateFile>,
    budget: Vec<BudgetFile>,
    tools: &BTreeMap<String, ToolConfig>,
    servers: &BTreeMap<String, ToolConfig>,
) -> Result<LimitRules, ConfigError> {
    let mut out = LimitRules::default();
    for (i, r) in rate.into_iter().enumerate() {
        let name = format!("limits.rate[{i}]");
        let at = |key: &str, problem| ConfigError::Invalid {
            origin: Origin::Key(format!("{name}.{key}")),
            problem,
        };
        let scope = scope(&r.scope, true).ok_or_else(|| {
            at(
                "scope",
                Problem::NotAChoice {
                    value: r.scope.clone(),
                    choices: &["principal_tool", "principal", "tool", "global"],
                },
            )
        })?;
        let per = period(&r.per).ok_or_else(|| at("per", Problem::Period(r.per.clone())))?;
        let limit = lap_state::Limit {
            per,
            count: r.count,
            burst: r.burst.unwrap_or(r.count),
        };
        if lap_state::gcra::validate(limit).is_err() {
            return Err(at("count", Problem::RateLimit));
        }
        let select = selector(r.tools, r.groups, tools, servers, &|key, p| at(key, p))?;
        let id = fingerprint(&format!(
            "rate|{}|{}|{}|{}|{:?}|{:?}",
            scope.name(),
            limit.count,
            limit.per.as_micros(),
            limit.burst,
            select.tools,
            select.groups
        ));
        out.rate.push(RateRule {
            id,
            name,
            scope,
            limit,
            select,
        });
    }
    for (i, b) in budget.into_iter().enumerate() {
        let name = format!("limits.budget[{i}]");
        let at = |key: &str, problem| ConfigError::Invalid {
            origin: Origin::Key(format!("{name}.{key}")),
            problem,
        };
        let scope = scope(&b.scope, false).ok_or_else(|| {
            at(
                "scope",
                Problem::NotAChoice {
                    value: b.scope.clone(),
                    choices: &["principal_tool", "principal", "tool"],
                },
            )
        })?;
        let window = match b.window.as_str() {
            "hour" => BudgetWindow::Hour,
            "day" => BudgetWindow::Day,
            "month" => BudgetWindow::Month,
            "session" => BudgetWindow::Session,
            _ => {
                return Err(at(
                    "window",
                    Problem::NotAChoice {
                        value: b.window.clone(),
                        choices: &["hour", "day", "month", "session"],
                    },
                ))
            }
        };
        let limits = lap_state::Limits {
            calls: b.calls,
            request_bytes: b.request_bytes,
            response_bytes: b.response_bytes,
            duration_ms: b.duration_ms,
            spend: b.spend,
        };
        for d in lap_state::Dimension::ALL {
            if limits.get(d).is_some_and(|l| l > lap_state::MAX_AMOUNT) {
                return Err(at(
                    d.name(),
                    Problem::OutOfRange {
                        min: 0,
                        max: lap_state::MAX_AMOUNT,
                    },
                ));
            }
        }
        if lap_state::Dimension::ALL
            .iter()
            .all(|d| limits.get(*d).is_none())
        {
            return Err(at("calls", Problem::BudgetWithoutLimit));
        }
        match (&b.spend_field, limits.spend) {
            (Some(p), Some(_)) if p.starts_with('/') => {}
            (Some(p), Some(_)) => return Err(at("spend_field", Problem::JsonPointer(p.clone()))),
            (None, Some(_)) => return Err(at("spend", Problem::SpendField)),
            (Some(_), None) => return Err(at("spend_field", Problem::SpendField)),
            (None, None) => {}
        }
        let select = selector(b.tools, b.groups, tools, servers, &|key, p| at(key, p))?;
        let id = fingerprint(&format!(
            "budget|{}|{}|{:?}|{:?}|{:?}|{:?}",
            scope.name(),
            window.name(),
            limits,
            b.spend_field,
            select.tools,
            select.groups
        ));
        out.budget.push(BudgetRule {
            id,
            name,
            scope,
            window,
            limits,
            spend_field: b.spend_field,
            select,
        });
    }
    Ok(out)
}

fn scope(text: &str, global: bool) -> Option<Scope> {
    match text {
        "principal_tool" => Some(Scope::PrincipalTool),
        "principal" => Some(Scope::Principal),
        "tool" => Some(Scope::Tool),
        "global" if global => Some(Scope::Global),
        _ => None,
    }
}

/// `500ms`, `1s`, `1m`, `1h`, `1d` (a whole number and a unit).
pub fn period(text: &str) -> Option<Duration> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = text.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn selector(
    tools_list: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    tools: &BTreeMap<String, ToolConfig>,
    servers: &BTreeMap<String, ToolConfig>,
    at: &dyn Fn(&str, Problem) -> ConfigError,
) -> Result<Selector, ConfigError> {
    let tools_list = tools_list.unwrap_or_default();
    for t in &tools_list {
        let known = match t.split_once('/') {
            Some((server, name)) => servers.contains_key(server) && !name.is_empty(),
            None => tools.contains_key(t) || servers.contains_key(t),
        };
        if !known {
            return Err(at("tools", Problem::UnknownTool(t.clone())));
        }
    }
    Ok(Selector {
        tools: tools_list,
        groups: groups.unwrap_or_default(),
    })
}

/// 16 hex digits of SHA-256 over a limit's definition.
fn fingerprint(definition: &str) -> String {
    hex::encode(&Sha256::digest(definition.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(period("1s"), Some(Duration::from_secs(1)));
        assert_eq!(period("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(period("2m"), Some(Duration::from_secs(120)));
        assert_eq!(period("1d"), Some(Duration::from_secs(86_400)));
        for bad in ["", "s", "0s", "1", "1 s", "1w", "-1s", "1.5s"] {
            assert_eq!(period(bad), None, "{bad}");
        }
    }

    #[test]
    fn selectors() {
        let s = Selector {
            tools: vec!["pay".into(), "shop".into()],
            groups: vec!["finance".into()],
        };
        let fin = vec!["finance".to_string()];
        assert!(s.selects("pay", &fin));
        assert!(s.selects("shop/refund", &fin), "a server selects its tools");
        assert!(!s.selects("pay", &[]));
        assert!(!s.selects("weather", &fin));
        assert!(Selector::default().selects("anything", &[]));
    }

    #[test]
    fn redis_urls_are_never_shown() {
        let mut env = BTreeMap::new();
        env.insert(
            "LAP_STATE_REDIS_URL".to_string(),
            "http://user:hunter2@host/".to_string(),
        );
        let err = RedisUrl::load(&RedisUrlSource::Env, &env).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        env.insert(
            "LAP_STATE_REDIS_URL".to_string(),
            " redis://user:hunter2@host:6379/ \n".to_string(),
        );
        let url = RedisUrl::load(&RedisUrlSource::Env, &env).unwrap();
        assert_eq!(url.expose(), "redis://user:hunter2@host:6379/");
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
