//! Limits: after policy allowed a call and before its decision receipt, what is counted across
//! calls — its session, rate limits, budgets, nonce and counter — in the state store
//! (`crate::state`, `docs/limits.md`).
//!
//! Order, and why:
//!
//! 1. **Input** — `X-Session-Id`, `X-Nonce`, `X-Counter` and the spend a budget reads from
//!    the arguments are checked before the store is touched: a malformed value is refused
//!    (400) and consumes nothing.
//! 2. **Session** — looked up (a read): it must be live and the caller's.
//! 3. **Rate limits** — a refused call is not counted; an allowed one is, even if a later
//!    check refuses it (it was an attempt).
//! 4. **Budgets** — reserved, each in one atomic step; if any refuses, those reserved for the
//!    call are released.
//! 5. **Nonce**, then **counter** — last, because they cannot be given back: a call refused by
//!    a budget keeps its nonce unspent and may be retried with it. A counter refused after its
//!    nonce was accepted leaves the nonce spent (a replayed message is refused either way).
//!
//! A refusal after budgets were reserved releases them. The store failing at any point
//! refuses the call with 503 (`STATE_UNAVAILABLE`, `STATE_TIMEOUT`): nothing is forwarded that
//! was not counted. An admitted call carries what it holds ([`Held`]) to the end of the
//! exchange, where its reservations are settled with the actual figures ([`Limiter::settle`])
//! and reported in the completion receipt.

use super::error::ApiError;
use crate::config::{BudgetRule, BudgetWindow, LimitRules, Replay, Scope, SessionsConfig};
use crate::metrics::Metrics;
use crate::state::StateService;
use lap_auth::Principal;
use lap_receipt::sha256_hex;
use lap_state::{
    Amounts, CounterOutcome, Dimension, NonceOutcome, RateOutcome, Reservation, ReserveOutcome,
    SettleOutcome, StateError, Timestamp, Window,
};
use std::sync::Arc;
use std::time::Duration;

pub const SESSION_HEADER: &str = "x-session-id";
pub const NONCE_HEADER: &str = "x-nonce";
pub const COUNTER_HEADER: &str = "x-counter";

/// How often a reservation is retried with a smaller response-byte share when the budget's
/// response bytes are what ran short (see [`Limiter::reserve_one`]).
const RESERVE_ATTEMPTS: usize = 3;

/// The limits in force and the store that counts them.
pub struct Limiter {
    pub state: Arc<StateService>,
    pub rules: LimitRules,
    pub sessions: SessionsConfig,
    metrics: Arc<Metrics>,
}

/// What one call asks of the limits.
pub struct Ask<'a> {
    pub principal: &'a Principal,
    /// The name limits select on: the tool, or `<server>/<tool>` for an MCP tool.
    pub tool: &'a str,
    pub replay: Replay,
    /// Whether rate limits and budgets count the call (tool calls); otherwise only its
    /// session, nonce and counter are checked (an MCP request other than `tools/call` that a
    /// `@require` policy allowed).
    pub counted: bool,
    pub headers: &'a http::HeaderMap,
    pub request_bytes: u64,
    /// The call's JSON arguments (a budget's `spend_field` points into them).
    pub args: Option<&'a serde_json::Value>,
    /// The tool's response cap: the most response bytes a budget reserves for one call.
    pub max_response_bytes: u64,
}

/// What an admitted call holds until it ends.
#[derive(Debug, Default)]
pub struct Held {
    /// `sha256:` + 16 hex of the session id, for receipts.
    pub session: Option<String>,
    pub budgets: Vec<HeldBudget>,
    /// The spend the budgets reserved (the actual spend: it is known before the call).
    spend: u64,
}

#[derive(Debug)]
pub struct HeldBudget {
    rule: String,
    window: BudgetWindow,
    reservation: Reservation,
    limits_response: bool,
}

impl Held {
    /// The fewest response bytes any budget left for the call, when a budget limits them.
    pub fn response_cap(&self) -> Option<u64> {
        self.budgets
            .iter()
            .filter(|b| b.limits_response)
            .map(|b| b.reservation.reserved.response_bytes)
            .min()
    }
}

/// The actual figures of a forwarded call, at its end.
pub struct Actual {
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration: Duration,
}

/// The input of one call, checked before the store is touched.
struct Input<'a> {
    session: Option<&'a str>,
    nonce: Option<&'a str>,
    counter: Option<u64>,
    spend: u64,
    budgets: Vec<&'a BudgetRule>,
}

impl Limiter {
    pub fn new(
        state: Arc<StateService>,
        rules: LimitRules,
        sessions: SessionsConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            state,
            rules,
            sessions,
            metrics,
        }
    }

    /// Whether anything could apply to a call of `tool` with `replay` (so that calls nothing
    /// limits skip the stage, and the store, entirely — unless they name a session).
    fn applies(&self, ask: &Ask<'_>) -> bool {
        ask.replay.session
            || ask.headers.contains_key(SESSION_HEADER)
            || (ask.counted && self.counts(ask))
    }

    /// Whether a rate limit or a budget selects the call.
    fn counts(&self, ask: &Ask<'_>) -> bool {
        self.rules
            .rate
            .iter()
            .any(|r| r.select.selects(ask.tool, &ask.principal.groups))
            || self
                .rules
                .budget
                .iter()
                .any(|r| r.select.selects(ask.tool, &ask.principal.groups))
    }

    /// Whether a budget on `tool` reads the call's arguments (so they must be parsed).
    pub fn needs_args(&self, tool: &str, principal: &Principal) -> bool {
        self.rules
            .budget
            .iter()
            .any(|r| r.spend_field.is_some() && r.select.selects(tool, &principal.groups))
    }

    /// Checks and counts one call (see the module docs for the order).
    pub async fn admit(&self, ask: Ask<'_>) -> Result<Held, ApiError> {
        if !self.applies(&ask) {
            return Ok(Held::default());
        }
        let result = self.admit_inner(&ask).await;
        if let Err(e) = &result {
            self.metrics
                .limit_refusals
                .with_label_values(&[e.code])
                .inc();
        }
        result
    }

    async fn admit_inner(&self, ask: &Ask<'_>) -> Result<Held, ApiError> {
        let input = self.input(ask)?;
        let now = Timestamp::now();
        let agent = ask.principal.agent_id.as_str();
        let mut held = Held {
            session: input.session.map(session_digest),
            budgets: Vec::new(),
            spend: input.spend,
        };
        let mut session_end = None;
        if let Some(id) = input.session {
            let owned = id.to_string();
            let session = self
                .state
                .run(move |s| async move { s.get_session(&owned, now).await })
                .await
                .map_err(|e| ApiError::state(&e))?;
            match session {
                Some(s) if s.principal == agent => session_end = Some(s.expires_at),
                _ => return Err(ApiError::session_invalid()),
            }
        }
        for rule in &self.rules.rate {
            if !ask.counted || !rule.select.selects(ask.tool, &ask.principal.groups) {
                continue;
            }
            let key = key(&rule.id, rule.scope, agent, ask.tool);
            let limit = rule.limit;
            let outcome = self
                .state
                .run(move |s| async move { s.check_rate(&key, limit, now).await })
                .await
                .map_err(|e| ApiError::state(&e))?;
            if let RateOutcome::Limited { retry_after } = outcome {
                let secs = retry_after.as_micros().div_ceil(1_000_000).max(1);
                return Err(ApiError::rate_limited(
                    u64::try_from(secs).unwrap_or(u64::MAX),
                ));
            }
        }
        for rule in &input.budgets {
            let window = match rule.window {
                BudgetWindow::Hour => Window::Hour,
                BudgetWindow::Day => Window::Day,
                BudgetWindow::Month => Window::Month,
                BudgetWindow::Session => match (session_end, input.session) {
                    (Some(end), Some(_)) => Window::Until(end),
                    _ => {
                        self.release(&mut held).await;
                        return Err(ApiError::session_id_required());
                    }
                },
            };
            let scope_key = key(&rule.id, rule.scope, agent, ask.tool);
            let key = match (rule.window, input.session) {
                (BudgetWindow::Session, Some(id)) => format!("{scope_key}:{id}"),
                _ => scope_key,
            };
            let want = Amounts {
                calls: 1,
                request_bytes: ask.request_bytes,
                response_bytes: rule
                    .limits
                    .response_bytes
                    .map_or(0, |l| l.min(ask.max_response_bytes)),
                // Known only afterwards: one millisecond holds the place, so a budget with
                // nothing left refuses; the actual duration is settled.
                duration_ms: u64::from(rule.limits.duration_ms.is_some()),
                spend: input.spend,
            };
            match self.reserve_one(rule, &key, window, want, now).await {
                Ok(reservation) => held.budgets.push(HeldBudget {
                    rule: rule.name.clone(),
                    window: rule.window,
                    reservation,
                    limits_response: rule.limits.response_bytes.is_some(),
                }),
                Err(e) => {
                    self.release(&mut held).await;
                    return Err(e);
                }
            }
        }
        if let (Some(id), Some(nonce)) = (input.session, input.nonce) {
            let (id, nonce) = (id.to_string(), nonce.to_string());
            let outcome = self
                .state
                .run(move |s| async move { s.use_nonce(&id, &nonce, now).await })
                .await;
            match outcome {
                Ok(NonceOutcome::Fresh) => {}
                Ok(NonceOutcome::Reused) => {
                    self.release(&mut held).await;
                    return Err(ApiError::nonce_reused());
                }
                Err(e) => {
                    self.release(&mut held).await;
                    return Err(ApiError::state(&e));
                }
            }
        }
        if let (Some(id), Some(value)) = (input.session, input.counter) {
            let id = id.to_string();
            let outcome = self
                .state
                .run(move |s| async move { s.advance_counter(&id, value, now).await })
                .await;
            match outcome {
                Ok(CounterOutcome::Advanced) => {}
                Ok(CounterOutcome::NotMonotonic { last }) => {
                    self.release(&mut held).await;
                    return Err(ApiError::counter_not_monotonic(last));
                }
                Err(e) => {
                    self.release(&mut held).await;
                    return Err(ApiError::state(&e));
                }
            }
        }
        Ok(held)
    }

    /// Reserves `want` in one budget. When the budget limits response bytes and those are what
    /// ran short, the call is still let through with what is left (its response is cut off
    /// there): the reservation is retried with the remainder the store reported, a few times
    /// (others may take it meanwhile).
    async fn reserve_one(
        &self,
        rule: &BudgetRule,
        key: &str,
        window: Window,
        mut want: Amounts,
        now: Timestamp,
    ) -> Result<Reservation, ApiError> {
        for _ in 0..RESERVE_ATTEMPTS {
            let (key, limits) = (key.to_string(), rule.limits);
            let outcome = self
                .state
                .run(move |s| async move { s.reserve(&key, window, &limits, &want, now).await })
                .await
                .map_err(|e| ApiError::state(&e))?;
            match outcome {
                ReserveOutcome::Reserved(r) => return Ok(r),
                ReserveOutcome::Exceeded {
                    dimension: Dimension::ResponseBytes,
                    remaining,
                    ..
                } if remaining > 0 && remaining < want.response_bytes => {
                    want.response_bytes = remaining;
                }
                ReserveOutcome::Exceeded {
                    dimension,
                    limit,
                    remaining,
                    ..
                } => {
                    return Err(ApiError::budget_exceeded(
                        dimension.name(),
                        limit,
                        remaining,
                    ))
                }
            }
        }
        Err(ApiError::budget_exceeded(
            Dimension::ResponseBytes.name(),
            rule.limits.response_bytes.unwrap_or(0),
            0,
        ))
    }

    /// Gives back every reservation a call holds (it is not forwarded). A failure leaves the
    /// reservation to expire (`reservation_ttl`).
    pub async fn release(&self, held: &mut Held) {
        let now = Timestamp::now();
        for b in held.budgets.drain(..) {
            let r = b.reservation;
            if let Err(e) = self
                .state
                .run(move |s| async move { s.release(&r, now).await })
                .await
            {
                tracing::warn!(code = e.code(), budget = %b.rule,
                    "a budget reservation could not be released; it expires by itself");
            }
        }
    }

    /// Settles a forwarded call's reservations with its actual figures, for its completion
    /// receipt.
    pub async fn settle(&self, held: Held, actual: &Actual) -> Vec<lap_receipt::BudgetUse> {
        let now = Timestamp::now();
        let mut out = Vec::with_capacity(held.budgets.len());
        for b in held.budgets {
            let figures = Amounts {
                calls: 1,
                request_bytes: actual.request_bytes,
                response_bytes: actual.response_bytes,
                duration_ms: u64::try_from(actual.duration.as_millis()).unwrap_or(u64::MAX),
                spend: held.spend,
            };
            let r = b.reservation.clone();
            let settled = self
                .state
                .run(move |s| async move { s.settle(&r, &figures, now).await })
                .await;
            let (remaining, overrun) = match settled {
                Ok(SettleOutcome::Settled {
                    remaining, overrun, ..
                }) => (
                    Some(remaining_of(&remaining)),
                    overrun.map(|o| figures_of(&o)),
                ),
                Ok(SettleOutcome::Unknown) => (None, None),
                Err(e) => {
                    tracing::warn!(code = e.code(), budget = %b.rule,
                        "a budget reservation could not be settled; it is released at its expiry");
                    (None, None)
                }
            };
            out.push(lap_receipt::BudgetUse {
                budget: b.rule,
                window: b.window.name().to_string(),
                reserved: figures_of(&b.reservation.reserved),
                actual: figures_of(&figures),
                remaining,
                overrun,
            });
        }
        out
    }

    /// Reads and checks the call's limit headers and spend, touching nothing.
    fn input<'a>(&'a self, ask: &'a Ask<'a>) -> Result<Input<'a>, ApiError> {
        let budgets: Vec<&BudgetRule> = self
            .rules
            .budget
            .iter()
            .filter(|r| ask.counted && r.select.selects(ask.tool, &ask.principal.groups))
            .collect();
        let session = single_header(ask.headers, SESSION_HEADER)
            .map_err(|()| ApiError::state(&StateError::SessionIdMalformed))?;
        if let Some(id) = session {
            lap_state::validate_session_id(id).map_err(|e| ApiError::state(&e))?;
        }
        let needs_session =
            ask.replay.session || budgets.iter().any(|b| b.window == BudgetWindow::Session);
        if needs_session && session.is_none() {
            return Err(ApiError::session_id_required());
        }
        let nonce = if ask.replay.nonce {
            let n = single_header(ask.headers, NONCE_HEADER)
                .map_err(|()| ApiError::state(&StateError::NonceMalformed))?
                .ok_or_else(ApiError::nonce_required)?;
            lap_state::validate_nonce(n).map_err(|e| ApiError::state(&e))?;
            Some(n)
        } else {
            None
        };
        let counter = if ask.replay.counter {
            let text = single_header(ask.headers, COUNTER_HEADER)
                .map_err(|()| ApiError::counter_malformed())?
                .ok_or_else(ApiError::counter_required)?;
            Some(parse_counter(text)?)
        } else {
            None
        };
        let mut spend = None;
        for b in &budgets {
            if let Some(pointer) = &b.spend_field {
                let value = spend_at(ask.args, pointer)?;
                // Two budgets reading different fields must agree on what the call spends.
                if spend.is_some_and(|s| s != value) {
                    return Err(ApiError::spend_invalid(
                        "budgets on this call read different spends from its arguments",
                    ));
                }
                spend = Some(value);
            }
        }
        Ok(Input {
            session,
            nonce,
            counter,
            spend: spend.unwrap_or(0),
            budgets,
        })
    }
}

/// The header's value if it is there once and is text; `Err` for a repeated or non-text one.
fn single_header<'a>(headers: &'a http::HeaderMap, name: &str) -> Result<Option<&'a str>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(Some).map_err(drop),
        (Some(_), Some(_)) => Err(()),
    }
}

/// `X-Counter`: 1 to 16 decimal digits, at most 2^53 − 1.
fn parse_counter(text: &str) -> Result<u64, ApiError> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::counter_malformed());
    }
    let value: u64 = text.parse().map_err(|_| ApiError::counter_malformed())?;
    if value > lap_state::MAX_COUNTER {
        return Err(ApiError::state(&StateError::CounterOutOfRange(value)));
    }
    Ok(value)
}

/// The spend at `pointer` in the arguments: a whole number 0..=2^53 − 1.
fn spend_at(args: Option<&serde_json::Value>, pointer: &str) -> Result<u64, ApiError> {
    let value = args
        .and_then(|a| a.pointer(pointer))
        .ok_or(ApiError::spend_invalid(
            "the call's JSON arguments have no spend where the budget reads it",
        ))?;
    value
        .as_u64()
        .filter(|v| *v <= lap_state::MAX_AMOUNT)
        .ok_or(ApiError::spend_invalid(
            "the spend must be a whole number from 0 to 2^53 - 1",
        ))
}

/// The store key of a limit's counter for this call. Plain agent ids and tool names are kept
/// readable; anything else (an MCP tool's free-form name) is hashed.
fn key(rule: &str, scope: Scope, agent: &str, tool: &str) -> String {
    let k = match scope {
        Scope::PrincipalTool => format!("{rule}:pt:{agent}:{tool}"),
        Scope::Principal => format!("{rule}:p:{agent}"),
        Scope::Tool => format!("{rule}:t:{tool}"),
        Scope::Global => format!("{rule}:g"),
    };
    let plain = k.len() <= 300
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b));
    if plain {
        k
    } else {
        format!("{rule}:h:{}", sha256_hex(k.as_bytes()))
    }
}

/// How receipts name a session: never the id itself (a bearer token).
pub fn session_digest(id: &str) -> String {
    format!("sha256:{}", &sha256_hex(id.as_bytes())[..16])
}

fn figures_of(a: &Amounts) -> lap_receipt::Figures {
    lap_receipt::Figures {
        calls: a.calls,
        request_bytes: a.request_bytes,
        response_bytes: a.response_bytes,
        duration_ms: a.duration_ms,
        spend: a.spend,
    }
}

fn remaining_of(l: &lap_state::Limits) -> lap_receipt::Remaining {
    lap_receipt::Remaining {
        calls: l.calls,
        request_bytes: l.request_bytes,
        response_bytes: l.response_bytes,
        duration_ms: l.duration_ms,
        spend: l.spend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_and_bounded() {
        assert_eq!(parse_counter("0").unwrap(), 0);
        assert_eq!(parse_counter("9007199254740991").unwrap(), (1 << 53) - 1);
        for bad in ["", "-1", "+1", "1.0", "0x10", " 1", "12345678901234567"] {
            assert_eq!(
                parse_counter(bad).unwrap_err().code,
                "COUNTER_MALFORMED",
                "{bad}"
            );
        }
        assert_eq!(
            parse_counter("9007199254740992").unwrap_err().code,
            "COUNTER_OUT_OF_RANGE"
        );
    }

    #[test]
    fn spends_are_whole_non_negative_numbers() {
        let args =
            serde_json::json!({"amount_cents": 250, "neg": -1, "f": 1.5, "s": "3", "o": {"x": 7}});
        assert_eq!(spend_at(Some(&args), "/amount_cents").unwrap(), 250);
        assert_eq!(spend_at(Some(&args), "/o/x").unwrap(), 7);
        for p in ["/neg", "/f", "/s", "/missing", "/o"] {
            assert_eq!(
                spend_at(Some(&args), p).unwrap_err().code,
                "SPEND_INVALID",
                "{p}"
            );
        }
        assert_eq!(spend_at(None, "/a").unwrap_err().code, "SPEND_INVALID");
    }

    #[test]
    fn keys_are_plain_or_hashed() {
        assert_eq!(
            key("r1", Scope::PrincipalTool, "agent-a", "pay"),
            "r1:pt:agent-a:pay"
        );
        assert_eq!(key("r1", Scope::Global, "a", "t"), "r1:g");
        let odd = key("r1", Scope::Tool, "a", "shop/ré fund\n");
        assert!(odd.starts_with("r1:h:") && odd.len() == 5 + 64, "{odd}");
    }

    #[test]
    fn headers_once_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(single_header(&h, NONCE_HEADER), Ok(None));
        h.append(NONCE_HEADER, "a".parse().unwrap());
        assert_eq!(single_header(&h, NONCE_HEADER), Ok(Some("a")));
        h.append(NONCE_HEADER, "b".parse().unwrap());
        assert_eq!(single_header(&h, NONCE_HEADER), Err(()));
    }

    #[test]
    fn session_digests_do_not_show_the_id() {
        let id = "sess_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let d = session_digest(id);
        assert!(d.starts_with("sha256:") && d.len() == 7 + 16);
        assert!(!d.contains("AAAA"));
    }
}
