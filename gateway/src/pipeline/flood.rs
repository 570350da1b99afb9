//! Flood: what traffic without a verified identity may cost, per client address.
//!
//! Sending a request without a valid API key costs the sender nothing, and every refusal used
//! to cost the gateway a denial receipt: a place in the evidence queue in front of authenticated
//! calls, a share of a signature and a durable entry in the log, forever. So an unauthenticated
//! flood could grow the log without bound and delay the evidence of real calls. The refusals
//! of requests that reach no verified identity — a missing or invalid key, an unknown route, a
//! disallowed Origin, oversized headers, a request the HTTP parser refused, a connection past
//! the header deadline or over its address's cap — are admitted here, per client address,
//! before their receipt is drafted (the only work before this point is parsing the header and
//! one SHA-256 of the presented key):
//!
//! 1. **Allowance** ([`Flood::refusal`]): a GCRA per address (`governor`),
//!    `[admission] unauthenticated_per_minute` with a burst of `unauthenticated_burst`. Within
//!    it a refusal keeps its own denial receipt. Beyond it the request is answered
//!    `429 UNAUTHENTICATED_RATE_LIMITED` with `Retry-After`, no receipt of its own.
//! 2. **Queue**: at most `max_unauthenticated_receipts` unauthenticated receipts (denials and
//!    aggregates) are waiting for the log at once ([`ReceiptSlot`]). A refusal within its
//!    allowance that finds the queue full is answered with its own code, without a receipt, so
//!    unauthenticated traffic never queues more than that in front of authenticated calls'
//!    evidence, and never waits for it either.
//! 3. **Tallies**: every refusal without a receipt of its own is counted per address (first and
//!    last arrival, count, how many were rate limited, per code); every
//!    `aggregate_interval_ms` the tallies become one `denial_aggregate` receipt per address
//!    ([`Flood::take_tallies`], issued by `AggregateService`).
//!
//! The client address is the one `client_ip` derives (behind trusted proxies, from
//! `X-Forwarded-For`); a request Pingora refused before its header was read has only its TCP
//! peer. IPv6 addresses count by their /64, the block one host commonly holds: otherwise one
//! host would have 2^64 allowances.
//!
//! Memory is bounded: the rate table and the tallies each hold at most `max_addresses`
//! addresses plus one shared entry, `other`, for every address beyond (its refusals share one
//! allowance and one aggregate). Every interval the rate table drops the addresses whose state
//! is indistinguishable from a fresh one (`RateLimiter::retain_recent`: no refusal for as long
//! as a full burst takes to refill), and the tallies are emptied into receipts.
//!
//! [`Connections`] caps the connections open at once per TCP peer address
//! (`max_connections_per_address`).

use super::error::ApiError;
use crate::config::Admission;
use crate::metrics::Metrics;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Whom refusals are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// An IPv4 address, or the first 64 bits of an IPv6 one.
    Addr(IpAddr),
    /// Every address beyond the table (and a peer without an IP address).
    Other,
}

impl Client {
    /// The key of a client address: IPv4 as it is (also when mapped into IPv6), IPv6 by /64.
    pub fn of(ip: Option<IpAddr>) -> Self {
        match ip {
            None => Client::Other,
            Some(IpAddr::V4(v4)) => Client::Addr(IpAddr::V4(v4)),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::Addr(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                    Client::Addr(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Addr(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Client::Addr(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Client::Other => f.write_str("other"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a consistent map (every update is one
    // insert or remove), so the data is still good.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The rate table: governor's state (each address's theoretical arrival time) in a map this
/// module can also read, to send addresses beyond `max_addresses` to [`Client::Other`].
#[derive(Clone, Default)]
struct Buckets(Arc<Mutex<HashMap<Client, Nanos>>>);

impl StateStore for Buckets {
    type Key = Client;

    fn measure_and_replace<T, F, E>(&self, key: &Client, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = lock(&self.0);
        let (out, tat) = f(map.get(key).copied())?;
        map.insert(*key, tat);
        Ok(out)
    }
}

impl ShrinkableKeyedStateStore<Client> for Buckets {
    fn retain_recent(&self, drop_below: Nanos) {
        lock(&self.0).retain(|_, tat| *tat > drop_below);
    }

    fn shrink_to_fit(&self) {
        lock(&self.0).shrink_to_fit();
    }

    fn len(&self) -> usize {
        lock(&self.0).len()
    }

    fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }
}

/// What the refusals of one address without a receipt of their own were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
    pub count: u64,
    pub rate_limited: u64,
    pub codes: BTreeMap<&'static str, u64>,
}

/// A place in the queue of unauthenticated receipts, held until the receipt is issued.
pub struct ReceiptSlot {
    _permit: OwnedSemaphorePermit,
}

/// What a refusal without a verified identity gets.
pub enum Verdict {
    /// Its own denial receipt (hold the slot until it is issued).
    Receipt(ReceiptSlot),
    /// Its own code, no receipt: counted (the queue of unauthenticated receipts is full).
    Counted,
    /// 429 after this wait, no receipt: counted (the address is over its allowance).
    Limited(Duration),
}

/// Per-address admission of refusals without a verified identity (see the module docs).
pub struct Flood<C: Clock = MonotonicClock> {
    limiter: RateLimiter<Client, Buckets, C, NoOpMiddleware<C::Instant>>,
    buckets: Buckets,
    clock: C,
    tallies: Mutex<HashMap<Client, Tally>>,
    receipts: Arc<Semaphore>,
    max_addresses: usize,
    interval: Duration,
    metrics: Arc<Metrics>,
}

impl Flood<MonotonicClock> {
    pub fn new(settings: &Admission, metrics: Arc<Metrics>) -> Self {
        Self::with_clock(settings, metrics, MonotonicClock)
    }
}

impl<C: Clock + Clone> Flood<C> {
    pub fn with_clock(settings: &Admission, metrics: Arc<Metrics>, clock: C) -> Self {
        let one = NonZeroU32::MIN;
        let quota =
            Quota::per_minute(NonZeroU32::new(settings.unauthenticated_per_minute).unwrap_or(one))
                .allow_burst(NonZeroU32::new(settings.unauthenticated_burst).unwrap_or(one));
        let buckets = Buckets::default();
        Self {
            limiter: RateLimiter::new(quota, buckets.clone(), clock.clone()),
            buckets,
            clock,
            tallies: Mutex::new(HashMap::new()),
            receipts: Arc::new(Semaphore::new(settings.max_unauthenticated_receipts)),
            max_addresses: settings.max_addresses,
            interval: settings.aggregate_interval,
            metrics,
        }
    }

    /// How often the tallies become aggregate receipts.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// [`Flood::refusal`] for a refusal about to be answered with `error`: its place in the
    /// queue of unauthenticated receipts when it gets its own receipt, `None` when it is only
    /// counted — and `error` becomes the 429 when the address is over its allowance.
    pub fn admit_refusal(
        &self,
        ip: Option<IpAddr>,
        error: &mut ApiError,
        evidence_on: bool,
    ) -> Option<ReceiptSlot> {
        match self.refusal(ip, error.code, evidence_on) {
            Verdict::Receipt(slot) => Some(slot),
            Verdict::Counted => None,
            Verdict::Limited(wait) => {
                *error = ApiError::unauthenticated_rate_limited(wait);
                None
            }
        }
    }

    /// Admits a refusal with stable `code` of a request from `ip` that reached no verified
    /// identity. `evidence_on`: whether a receipt could be issued at all.
    pub fn refusal(&self, ip: Option<IpAddr>, code: &'static str, evidence_on: bool) -> Verdict {
        let client = self.tracked(Client::of(ip));
        let outcome = match self.limiter.check_key(&client) {
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                self.metrics
                    .admission_rejections
                    .with_label_values(&["rate_limited"])
                    .inc();
                Verdict::Limited(wait)
            }
            Ok(()) if !evidence_on => Verdict::Counted,
            Ok(()) => match self.receipts.clone().try_acquire_owned() {
                Ok(permit) => Verdict::Receipt(ReceiptSlot { _permit: permit }),
                Err(_) => Verdict::Counted,
            },
        };
        let label = match &outcome {
            Verdict::Receipt(_) => "receipted",
            Verdict::Counted => "aggregated",
            Verdict::Limited(_) => "rate_limited",
        };
        self.metrics
            .unauthenticated_refusals
            .with_label_values(&[label])
            .inc();
        if evidence_on {
            match outcome {
                Verdict::Receipt(_) => {}
                Verdict::Counted => self.count(client, code, false),
                Verdict::Limited(_) => self.count(client, code, true),
            }
        }
        outcome
    }

    /// `client`, or [`Client::Other`] when the rate table is full and does not hold it.
    fn tracked(&self, client: Client) -> Client {
        let map = lock(&self.buckets.0);
        if map.contains_key(&client) || map.len() < self.max_addresses {
            client
        } else {
            Client::Other
        }
    }

    /// Counts a refusal that gets no receipt of its own.
    fn count(&self, client: Client, code: &'static str, rate_limited: bool) {
        let now = OffsetDateTime::now_utc();
        let mut tallies = lock(&self.tallies);
        let key = if tallies.contains_key(&client) || tallies.len() < self.max_addresses {
            client
        } else {
            Client::Other
        };
        let t = tallies.entry(key).or_insert_with(|| Tally {
            first: now,
            last: now,
            count: 0,
            rate_limited: 0,
            codes: BTreeMap::new(),
        });
        t.last = now;
        t.count += 1;
        t.rate_limited += u64::from(rate_limited);
        *t.codes.entry(code).or_insert(0) += 1;
        let len = tallies.len();
        drop(tallies);
        self.metrics
            .admission_addresses
            .with_label_values(&["tallied"])
            .set(len as i64);
    }

    /// Everything counted since the last call, and the rate table's housekeeping: the
    /// addresses whose state is that of a fresh one are dropped.
    pub fn take_tallies(&self) -> Vec<(Client, Tally)> {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let taken = std::mem::take(&mut *lock(&self.tallies));
        let gauge = &self.metrics.admission_addresses;
        gauge
            .with_label_values(&["rate"])
            .set(self.limiter.len() as i64);
        gauge.with_label_values(&["tallied"]).set(0);
        let mut out: Vec<_> = taken.into_iter().collect();
        out.sort_by_key(|(_, t)| t.first);
        out
    }

    /// A place in the queue of unauthenticated receipts, waiting for one (aggregate receipts:
    /// they may wait, the requests they count were answered long ago).
    pub async fn receipt_slot(&self) -> Option<ReceiptSlot> {
        self.receipts
            .clone()
            .acquire_owned()
            .await
            .ok()
            .map(|permit| ReceiptSlot { _permit: permit })
    }
}

/// Issues the aggregate receipts: every interval, and once more at shutdown, one per address
/// with refusals counted. Each waits for a place in the queue of unauthenticated receipts, so
/// aggregates too never queue more than `max_unauthenticated_receipts` in front of
/// authenticated calls' evidence; they are issued concurrently, and the next interval starts
/// once all are done.
pub struct AggregateService {
    pub flood: Arc<Flood>,
    /// `None` with evidence off: the tallies are emptied, nothing is issued.
    pub evidence: Option<Arc<crate::evidence::Evidence>>,
    pub live: Arc<crate::live::LiveState>,
}

impl AggregateService {
    async fn flush(&self) {
        let tallies = self.flood.take_tallies();
        let Some(evidence) = &self.evidence else {
            return;
        };
        if tallies.is_empty() {
            return;
        }
        let policy_digest: Arc<str> = self.live.policy.load().digest_hex().into();
        let mut issuing = tokio::task::JoinSet::new();
        for (client, tally) in tallies {
            let Some(slot) = self.flood.receipt_slot().await else {
                return;
            };
            let (evidence, digest) = (evidence.clone(), policy_digest.clone());
            issuing.spawn(async move {
                super::evidence::issue_aggregate(&evidence, client, tally, &digest).await;
                drop(slot);
            });
        }
        while issuing.join_next().await.is_some() {}
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for AggregateService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let interval = self.flood.interval();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.flush().await,
                _ = shutdown.changed() => {
                    // What was counted since the last interval is not lost with the process.
                    self.flush().await;
                    return;
                }
            }
        }
    }
}

/// The connections open per TCP peer address (see the module docs). A peer that is a trusted
/// proxy is not capped: behind nginx every client's connection is nginx's, and nginx's own
/// limits govern there.
pub struct Connections {
    open: Mutex<HashMap<Client, usize>>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// One open connection, counted until dropped (`None`: not counted, no cap applies).
pub struct ConnectionSlot(Option<(Arc<Connections>, Client)>);

impl Connections {
    /// `max` connections per address; 0 = no cap.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            max,
            metrics,
        })
    }

    /// A slot for a connection from `peer` (`None`: a trusted proxy, or no IP address: not
    /// capped), or `None` when its address already has `max` open. `kept`: the connection
    /// already served a request (keep-alive) and is counted again for its next one, never
    /// refused (it held its slot a moment ago).
    pub fn open(self: &Arc<Self>, peer: Option<IpAddr>, kept: bool) -> Option<ConnectionSlot> {
        let Some(peer) = peer.filter(|_| self.max > 0) else {
            return Some(ConnectionSlot(None));
        };
        let client = Client::of(Some(peer));
        let mut open = lock(&self.open);
        let n = open.entry(client).or_insert(0);
        if *n >= self.max && !kept {
            drop(open);
            self.metrics
                .admission_rejections
                .with_label_values(&["connection_cap"])
                .inc();
            return None;
        }
        *n += 1;
        let len = open.len();
        drop(open);
        self.gauge(len);
        Some(ConnectionSlot(Some((self.clone(), client))))
    }

    fn gauge(&self, len: usize) {
        self.metrics
            .admission_addresses
            .with_label_values(&["connections"])
            .set(len as i64);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some((connections, client)) = self.0.take() else {
            return;
        };
        let mut open = lock(&connections.open);
        if let Some(n) = open.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&client);
            }
        }
        let len = open.len();
        drop(open);
        connections.gauge(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn settings(burst: u32, max_addresses: usize, receipts: usize) -> Admission {
        Admission {
            unauthenticated_per_minute: 60,
            unauthenticated_burst: burst,
            max_addresses,
            aggregate_interval: Duration::from_secs(10),
            max_unauthenticated_receipts: receipts,
            max_connections_per_address: 2,
        }
    }

    fn flood(s: &Admission) -> (Flood<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let metrics = Arc::new(Metrics::new().unwrap());
        (Flood::with_clock(s, metrics, clock.clone()), clock)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn name(v: &Verdict) -> &'static str {
        match v {
            Verdict::Receipt(_) => "receipt",
            Verdict::Counted => "counted",
            Verdict::Limited(_) => "limited",
        }
    }

    #[test]
    fn an_address_gets_its_burst_then_429s_then_its_rate() {
        let (f, clock) = flood(&settings(3, 100, 100));
        let a = ip("203.0.113.9");
        for _ in 0..3 {
            assert_eq!(name(&f.refusal(a, "UNAUTHENTICATED", true)), "receipt");
        }
        match f.refusal(a, "UNAUTHENTICATED", true) {
            Verdict::Limited(wait) => assert!(wait <= Duration::from_secs(1), "{wait:?}"),
            other => panic!("{}", name(&other)),
        }
        // Another address has its own allowance.
        assert_eq!(name(&f.refusal(ip("203.0.113.10"), "X", true)), "receipt");
        // One per second comes back.
        clock.advance(Duration::from_secs(1));
        assert_eq!(name(&f.refusal(a, "UNAUTHENTICATED", true)), "receipt");
        assert_eq!(name(&f.refusal(a, "BAD_HOST", true)), "limited");
        let tallies = f.take_tallies();
        assert_eq!(tallies.len(), 1);
        let (client, t) = &tallies[0];
        assert_eq!(client.to_string(), "203.0.113.9");
        assert_eq!((t.count, t.rate_limited), (2, 2));
        let want: BTreeMap<_, _> = [("UNAUTHENTICATED", 1), ("BAD_HOST", 1)].into();
        assert_eq!(t.codes, want);
        assert!(t.first <= t.last);
        assert!(f.take_tallies().is_empty(), "taken once");
    }

    #[test]
    fn a_full_receipt_queue_counts_instead_and_frees_with_the_slot() {
        let (f, _) = flood(&settings(10, 100, 2));
        let a = ip("198.51.100.1");
        let one = f.refusal(a, "UNAUTHENTICATED", true);
        let two = f.refusal(a, "UNAUTHENTICATED", true);
        assert_eq!((name(&one), name(&two)), ("receipt", "receipt"));
        assert_eq!(name(&f.refusal(a, "ROUTE_NOT_FOUND", true)), "counted");
        drop(one);
        assert_eq!(name(&f.refusal(a, "UNAUTHENTICATED", true)), "receipt");
        let t = f.take_tallies();
        assert_eq!((t[0].1.count, t[0].1.rate_limited), (1, 0));
        // With evidence off nothing is receipted or counted, but the allowance still holds.
        drop(two);
        let (off, _) = flood(&settings(1, 100, 2));
        assert_eq!(name(&off.refusal(a, "X", false)), "counted");
        assert_eq!(name(&off.refusal(a, "X", false)), "limited");
        assert!(off.take_tallies().is_empty());
    }

    #[test]
    fn addresses_beyond_the_table_share_one_entry_and_fresh_ones_are_dropped() {
        let (f, clock) = flood(&settings(1, 2, 100));
        assert_eq!(name(&f.refusal(ip("192.0.2.1"), "A", true)), "receipt");
        assert_eq!(name(&f.refusal(ip("192.0.2.2"), "A", true)), "receipt");
        // The table is full: the third and fourth address share `other` and its allowance.
        assert_eq!(name(&f.refusal(ip("192.0.2.3"), "A", true)), "receipt");
        assert_eq!(name(&f.refusal(ip("192.0.2.4"), "A", true)), "limited");
        assert_eq!(name(&f.refusal(ip("192.0.2.1"), "A", true)), "limited");
        assert_eq!(name(&f.refusal(ip("192.0.2.2"), "A", true)), "limited");
        // The tallies are bounded the same way: `other` (192.0.2.4) and 192.0.2.1 fill them,
        // 192.0.2.2 joins `other`.
        let tallies = f.take_tallies();
        let counted: Vec<(String, u64)> = tallies
            .iter()
            .map(|(c, t)| (c.to_string(), t.count))
            .collect();
        assert_eq!(
            counted,
            [("other".to_string(), 2), ("192.0.2.1".to_string(), 1)]
        );
        assert_eq!(f.limiter.len(), 3, "two addresses and other");
        // Once a burst has refilled, the addresses are indistinguishable from new: dropped.
        clock.advance(Duration::from_secs(2));
        f.take_tallies();
        assert_eq!(f.limiter.len(), 0);
        assert_eq!(name(&f.refusal(ip("192.0.2.4"), "A", true)), "receipt");
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let a = Client::of(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, Client::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(a, Client::of(ip("2001:db8:1:3::1")));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            Client::of(ip("::ffff:192.0.2.7")),
            Client::of(ip("192.0.2.7"))
        );
        assert_eq!(Client::of(None).to_string(), "other");
    }

    #[test]
    fn connections_are_capped_per_address_and_released_on_drop() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let c = Connections::new(2, metrics.clone());
        let a = ip("192.0.2.1");
        let one = c.open(a, false).unwrap();
        let two = c.open(a, false).unwrap();
        assert!(c.open(a, false).is_none(), "the third is refused");
        assert!(c.open(ip("192.0.2.2"), false).is_some(), "another address");
        // A kept-alive connection is counted again, never refused.
        let kept = c.open(a, true).unwrap();
        drop((one, kept));
        let three = c.open(a, false).unwrap();
        assert!(c.open(a, false).is_none());
        drop((two, three));
        assert!(lock(&c.open).is_empty(), "nothing left behind");
        // Trusted proxies (no capped address) and a cap of 0 count nothing.
        for _ in 0..5 {
            assert!(c.open(None, false).is_some());
        }
        let off = Connections::new(0, metrics);
        let all: Vec<_> = (0..5).map(|_| off.open(a, false).unwrap()).collect();
        assert!(lock(&off.open).is_empty());
        drop(all);
    }
}
