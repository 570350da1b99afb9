//! One suite, both backends: every test here runs once against the embedded store (a SQLite
//! file) and once against a real redis-server, and must pass unchanged on both.
// A panic is the failure report of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{options, Env, Kind};
use lap_state::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Embedded).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Redis).await
                }
            )*
        }
    };
}

both_backends!(
    rate_limit_burst_then_steady_rate,
    rate_limit_follows_the_reference_gcra,
    rate_limit_keys_and_prefixes_are_independent,
    rate_limit_holds_under_concurrency_across_replicas,
    budget_reserve_and_settle,
    budget_exceeded_names_the_dimension_and_reserves_nothing,
    budget_never_exceeded_under_concurrency_across_replicas,
    budget_with_amounts_never_exceeded_under_concurrency,
    budget_calendar_windows_roll_over,
    budget_unsettled_reservations_expire_and_late_settles_count,
    sessions_create_get_revoke_expire,
    session_caps_hold_under_concurrency,
    sessions_are_shared_by_replicas,
    nonce_is_fresh_once_per_session,
    nonce_fresh_exactly_once_under_concurrency_across_replicas,
    counter_strictly_increasing,
    counter_under_concurrency_never_goes_back,
    bad_input_is_refused_before_the_store_and_consumes_nothing,
    state_survives_reopening,
);

/// A fixed, realistic instant: 2025-11-29T10:00:00Z.
fn t0() -> Timestamp {
    Timestamp::from_unix_micros(1_764_410_400_000_000)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn rate_limit_burst_then_steady_rate(kind: Kind) {
    let env = Env::new(kind).await;
    let s = &env.state;
    let limit = Limit::per_second(10).with_burst(3);
    let now = t0();
    for remaining in [2, 1, 0] {
        assert_eq!(
            s.check_rate("agent×echo", limit, now).await.unwrap(),
            RateOutcome::Allowed { remaining }
        );
    }
    assert_eq!(
        s.check_rate("agent×echo", limit, now).await.unwrap(),
        RateOutcome::Limited {
            retry_after: ms(100)
        }
    );
    // 50 ms later: still 50 ms to wait.
    assert_eq!(
        s.check_rate("agent×echo", limit, now + ms(50))
            .await
            .unwrap(),
        RateOutcome::Limited {
            retry_after: ms(50)
        }
    );
    // After retry_after exactly one more.
    assert!(matches!(
        s.check_rate("agent×echo", limit, now + ms(100))
            .await
            .unwrap(),
        RateOutcome::Allowed { remaining: 0 }
    ));
    assert!(matches!(
        s.check_rate("agent×echo", limit, now + ms(100))
            .await
            .unwrap(),
        RateOutcome::Limited { .. }
    ));
    // After a quiet period the full burst is back.
    assert_eq!(
        s.check_rate("agent×echo", limit, now + Duration::from_secs(10))
            .await
            .unwrap(),
        RateOutcome::Allowed { remaining: 2 }
    );
}

/// A plain GCRA in the test, against which the stores' answers are compared step by step.
async fn rate_limit_follows_the_reference_gcra(kind: Kind) {
    let env = Env::new(kind).await;
    let limit = Limit::new(7, Duration::from_secs(2)).with_burst(4);
    let t = 2_000_000u64.div_ceil(7);
    let tau = t * 3;
    let mut tat: Option<u64> = None;
    let mut now = t0().as_unix_micros();
    // A fixed pseudo-random walk of gaps (xorshift), some shorter and some longer than T.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        now += x % (t * 2);
        let base = tat.unwrap_or(now).max(now);
        let expected = if base - now > tau {
            RateOutcome::Limited {
                retry_after: Duration::from_micros(base - now - tau),
            }
        } else {
            tat = Some(base + t);
            let ahead = base + t - now;
            let remaining = if ahead <= tau {
                (tau - ahead) / t + 1
            } else {
                0
            };
            RateOutcome::Allowed {
                remaining: u32::try_from(remaining).unwrap(),
            }
        };
        let got = env
            .state
            .check_rate("k", limit, Timestamp::from_unix_micros(now))
            .await
            .unwrap();
        assert_eq!(got, expected);
    }
}

async fn rate_limit_keys_and_prefixes_are_independent(kind: Kind) {
    let env = Env::new(kind).await;
    let other = env.replica(options("lapt-other:")).await;
    let limit = Limit::per_minute(1);
    let now = t0();
    assert!(matches!(
        env.state.check_rate("a", limit, now).await.unwrap(),
        RateOutcome::Allowed { .. }
    ));
    assert!(matches!(
        env.state.check_rate("a", limit, now).await.unwrap(),
        RateOutcome::Limited { .. }
    ));
    assert!(matches!(
        env.state.check_rate("b", limit, now).await.unwrap(),
        RateOutcome::Allowed { .. }
    ));
    assert!(matches!(
        other.check_rate("a", limit, now).await.unwrap(),
        RateOutcome::Allowed { .. }
    ));
}

/// Many tasks over three independent clients, on the real clock, for a bounded time. Stated
/// tolerance: the count allowed is at most `burst + span / T + 1` (GCRA's exact bound over the
/// span of the `now`s seen; out-of-order arrivals can only refuse more) and at least 75 % of it.
async fn rate_limit_holds_under_concurrency_across_replicas(kind: Kind) {
    let env = Env::new(kind).await;
    let mut replicas = vec![env.state.clone()];
    for _ in 0..2 {
        replicas.push(env.replica(options("lapt:")).await);
    }
    let limit = Limit::per_second(200).with_burst(20);
    let run_for = Duration::from_millis(1500);
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = replicas[i % replicas.len()].clone();
        tasks.push(tokio::spawn(async move {
            let (mut allowed, mut first, mut last) = (0u64, u64::MAX, 0u64);
            let mut calls = 0;
            while start.elapsed() < run_for && calls < 20_000 {
                calls += 1;
                let now = Timestamp::now();
                first = first.min(now.as_unix_micros());
                last = last.max(now.as_unix_micros());
                match s.check_rate("global", limit, now).await.unwrap() {
                    RateOutcome::Allowed { .. } => allowed += 1,
                    RateOutcome::Limited { retry_after } => {
                        tokio::time::sleep(retry_after.min(ms(2))).await
                    }
                }
            }
            (allowed, first, last)
        }));
    }
    let (mut allowed, mut first, mut last) = (0, u64::MAX, 0);
    for t in tasks {
        let (a, f, l) = t.await.unwrap();
        allowed += a;
        first = first.min(f);
        last = last.max(l);
    }
    let span = last - first;
    let bound = 20 + span / 5_000 + 1;
    assert!(allowed <= bound, "{allowed} allowed, bound {bound}");
    assert!(
        allowed * 4 >= bound * 3,
        "{allowed} allowed, expected about {bound}"
    );
}

fn limits(calls: u64, spend: u64) -> Limits {
    Limits {
        calls: Some(calls),
        spend: Some(spend),
        ..Limits::default()
    }
}

fn reserved(o: ReserveOutcome) -> Reservation {
    match o {
        ReserveOutcome::Reserved(r) => r,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

async fn budget_reserve_and_settle(kind: Kind) {
    let env = Env::new(kind).await;
    let s = &env.state;
    let now = t0();
    let lim = Limits {
        response_bytes: Some(1000),
        ..limits(10, 500)
    };
    let want = Amounts {
        calls: 1,
        response_bytes: 400,
        spend: 100,
        ..Amounts::ZERO
    };
    let r = reserved(
        s.reserve("p×t", Window::Day, &lim, &want, now)
            .await
            .unwrap(),
    );
    assert_eq!(r.remaining.calls, Some(9));
    assert_eq!(r.remaining.response_bytes, Some(600));
    assert_eq!(r.remaining.spend, Some(400));
    assert_eq!(r.remaining.request_bytes, None);
    assert_eq!(r.reserved, want);
    assert_eq!(r.id.len(), 26);

    // The call used less: the difference comes back.
    let actual = Amounts {
        calls: 1,
        request_bytes: 77,
        response_bytes: 150,
        duration_ms: 12,
        spend: 40,
    };
    match s.settle(&r, &actual, now + ms(5)).await.unwrap() {
        SettleOutcome::Settled {
            used,
            remaining,
            overrun,
            late,
        } => {
            assert_eq!(used, actual);
            assert_eq!(remaining.response_bytes, Some(850));
            assert_eq!(remaining.spend, Some(460));
            assert_eq!(overrun, None);
            assert!(!late);
        }
        o => panic!("{o:?}"),
    }
    // A second settle changes nothing.
    assert_eq!(
        s.settle(&r, &actual, now + ms(6)).await.unwrap(),
        SettleOutcome::Unknown
    );

    // The call used more than reserved and more than the limit: recorded and reported.
    let r2 = reserved(
        s.reserve("p×t", Window::Day, &lim, &want, now)
            .await
            .unwrap(),
    );
    let big = Amounts {
        calls: 1,
        response_bytes: 900,
        spend: 10,
        ..Amounts::ZERO
    };
    match s.settle(&r2, &big, now + ms(7)).await.unwrap() {
        SettleOutcome::Settled { used, overrun, .. } => {
            assert_eq!(used.response_bytes, 1050);
            assert_eq!(used.spend, 50);
            assert_eq!(
                overrun,
                Some(Amounts {
                    response_bytes: 50,
                    ..Amounts::ZERO
                })
            );
        }
        o => panic!("{o:?}"),
    }
    // The window is past its response-byte limit: nothing more is reserved, not even a call
    // that asks for no response bytes.
    assert_eq!(
        s.reserve("p×t", Window::Day, &lim, &Amounts::ONE_CALL, now)
            .await
            .unwrap(),
        ReserveOutcome::Exceeded {
            dimension: Dimension::ResponseBytes,
            limit: 1000,
            used: 1050,
            remaining: 0
        }
    );

    // release() gives a reservation back whole.
    let r3 = reserved(
        s.reserve("other", Window::Day, &lim, &want, now)
            .await
            .unwrap(),
    );
    match s.release(&r3, now).await.unwrap() {
        SettleOutcome::Settled { used, .. } => assert_eq!(used, Amounts::ZERO),
        o => panic!("{o:?}"),
    }
}

async fn budget_exceeded_names_the_dimension_and_reserves_nothing(kind: Kind) {
    let env = Env::new(kind).await;
    let s = &env.state;
    let now = t0();
    let lim = Limits {
        calls: Some(5),
        request_bytes: Some(100),
        duration_ms: Some(1000),
        ..Limits::default()
    };
    let want = Amounts {
        calls: 1,
        request_bytes: 60,
        ..Amounts::ZERO
    };
    reserved(
        s.reserve("k", Window::Hour, &lim, &want, now)
            .await
            .unwrap(),
    );
    assert_eq!(
        s.reserve("k", Window::Hour, &lim, &want, now)
            .await
            .unwrap(),
        ReserveOutcome::Exceeded {
            dimension: Dimension::RequestBytes,
            limit: 100,
            used: 60,
            remaining: 40
        }
    );
    // Nothing was reserved by the refusal: 40 bytes still fit.
    let fits = Amounts {
        calls: 1,
        request_bytes: 40,
        spend: u64::from(u32::MAX), // unlimited dimension: counted, never refused
        ..Amounts::ZERO
    };
    let r = reserved(
        s.reserve("k", Window::Hour, &lim, &fits, now)
            .await
            .unwrap(),
    );
    assert_eq!(r.remaining.request_bytes, Some(0));
    assert_eq!(r.remaining.calls, Some(3));
    assert_eq!(r.remaining.spend, None);
    // The first dimension in order is reported when several would pass their limits.
    let lim2 = Limits {
        calls: Some(2),
        ..lim
    };
    assert!(matches!(
        s.reserve("k", Window::Hour, &lim2, &want, now)
            .await
            .unwrap(),
        ReserveOutcome::Exceeded {
            dimension: Dimension::Calls,
            limit: 2,
            used: 2,
            remaining: 0
        }
    ));
}

/// 300 tasks over four independent clients reserve one call each against a limit of 50: exactly
/// 50 succeed and the window's count is exactly 50.
async fn budget_never_exceeded_under_concurrency_across_replicas(kind: Kind) {
    let env = Env::new(kind).await;
    let mut replicas = vec![env.state.clone()];
    for _ in 0..3 {
        replicas.push(env.replica(options("lapt:")).await);
    }
    let now = t0();
    let lim = Limits {
        calls: Some(50),
        ..Limits::default()
    };
    let mut tasks = Vec::new();
    for i in 0..300 {
        let s = replicas[i % replicas.len()].clone();
        tasks.push(tokio::spawn(async move {
            s.reserve("shared", Window::Month, &lim, &Amounts::ONE_CALL, now)
                .await
                .unwrap()
        }));
    }
    let mut ok = Vec::new();
    for t in tasks {
        if let ReserveOutcome::Reserved(r) = t.await.unwrap() {
            ok.push(r);
        }
    }
    assert_eq!(ok.len(), 50);
    let ids: HashSet<_> = ok.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 50);
    assert!(ok.iter().any(|r| r.remaining.calls == Some(0)));
    // Settling them all with their reserved figures keeps the count at exactly 50.
    let mut last = None;
    for r in &ok {
        last = Some(env.state.settle(r, &Amounts::ONE_CALL, now).await.unwrap());
    }
    match last.unwrap() {
        SettleOutcome::Settled { used, overrun, .. } => {
            assert_eq!(used.calls, 50);
            assert_eq!(overrun, None);
        }
        o => panic!("{o:?}"),
    }
}

/// Reservations of different sizes racing for a spend limit: the sum granted never passes it.
async fn budget_with_amounts_never_exceeded_under_concurrency(kind: Kind) {
    let env = Env::new(kind).await;
    let other = env.replica(options("lapt:")).await;
    let now = t0();
    let lim = limits(1_000_000, 10_000);
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let s = if i % 2 == 0 {
            env.state.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let want = Amounts {
                calls: 1,
                spend: 37 + (i * 7919) % 300,
                ..Amounts::ZERO
            };
            match s
                .reserve("spend", Window::Day, &lim, &want, now)
                .await
                .unwrap()
            {
                ReserveOutcome::Reserved(r) => r.reserved.spend,
                ReserveOutcome::Exceeded { .. } => 0,
            }
        }));
    }
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap();
    }
    assert!(granted <= 10_000, "granted {granted}");
    assert!(granted > 9_000, "granted only {granted}");
    // The store agrees: the smallest possible request is refused iff it does not fit.
    let probe = Amounts {
        calls: 1,
        spend: 10_000 - granted + 1,
        ..Amounts::ZERO
    };
    assert!(matches!(
        env.state
            .reserve("spend", Window::Day, &lim, &probe, now)
            .await
            .unwrap(),
        ReserveOutcome::Exceeded {
            dimension: Dimension::Spend,
            ..
        }
    ));
}

fn at(rfc3339: &str) -> Timestamp {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    Timestamp::from_unix_micros(u64::try_from(t.unix_timestamp_nanos() / 1000).unwrap())
}

async fn budget_calendar_windows_roll_over(kind: Kind) {
    let env = Env::new(kind).await;
    let s = &env.state;
    let one = Limits {
        calls: Some(1),
        ..Limits::default()
    };
    for (window, before, after) in [
        (
            Window::Hour,
            "2025-11-29T10:59:59.999Z",
            "2025-11-29T11:00:00Z",
        ),
        (
            Window::Day,
            "2025-11-29T23:59:59.999Z",
            "2025-11-30T00:00:00Z",
        ),
        (
            Window::Month,
            "2025-12-31T23:59:59.999Z",
            "2026-01-01T00:00:00Z",
        ),
        (
            Window::Month,
            "2024-02-29T12:00:00Z",
            "2024-03-01T00:00:00Z",
        ),
    ] {
        let key = format!("{window:?}{before}");
        let r = reserved(
            s.reserve(&key, window, &one, &Amounts::ONE_CALL, at(before))
                .await
                .unwrap(),
        );
        assert_eq!(r.window_end, at(after), "{window:?}");
        assert!(matches!(
            s.reserve(&key, window, &one, &Amounts::ONE_CALL, at(before))
                .await
                .unwrap(),
            ReserveOutcome::Exceeded { .. }
        ));
        reserved(
            s.reserve(&key, window, &one, &Amounts::ONE_CALL, at(after))
                .await
                .unwrap(),
        );
        // A settle after the boundary counts in the reservation's own window.
        match s.settle(&r, &Amounts::ONE_CALL, at(after)).await.unwrap() {
            SettleOutcome::Settled { used, .. } => assert_eq!(used.calls, 1),
            o => panic!("{o:?}"),
        }
    }
    // A fixed-end window: counts until its end, then refuses to open.
    let end = t0() + Duration::from_secs(60);
    let r = reserved(
        s.reserve("sess", Window::Until(end), &one, &Amounts::ONE_CALL, t0())
            .await
            .unwrap(),
    );
    assert_eq!(r.window_end, end);
    assert!(matches!(
        s.reserve("sess", Window::Until(end), &one, &Amounts::ONE_CALL, t0())
            .await
            .unwrap(),
        ReserveOutcome::Exceeded { .. }
    ));
    let e = s
        .reserve("sess", Window::Until(end), &one, &Amounts::ONE_CALL, end)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BUDGET_WINDOW_CLOSED");
}

async fn budget_unsettled_reservations_expire_and_late_settles_count(kind: Kind) {
    let ttl = Duration::from_secs(10);
    let env = Env::with_options(
        kind,
        Options {
            reservation_ttl: ttl,
            ..options("lapt:")
        },
    )
    .await;
    let s = &env.state;
    let now = t0();
    let lim = limits(2, 100);
    let want = Amounts {
        calls: 1,
        spend: 50,
        ..Amounts::ZERO
    };
    // Two reservations fill the window, and stay unsettled (the gateway "crashed").
    let lost = reserved(s.reserve("k", Window::Day, &lim, &want, now).await.unwrap());
    let slow = reserved(s.reserve("k", Window::Day, &lim, &want, now).await.unwrap());
    assert_eq!(lost.expires_at, (now + ttl));
    assert!(matches!(
        s.reserve("k", Window::Day, &lim, &want, now + (ttl - ms(1)))
            .await
            .unwrap(),
        ReserveOutcome::Exceeded { .. }
    ));
    // At their expiry both are released: the window is empty again.
    let fresh = reserved(
        s.reserve("k", Window::Day, &lim, &want, now + ttl)
            .await
            .unwrap(),
    );
    assert_eq!(fresh.remaining.calls, Some(1));
    // The slow call finishes after its reservation expired: its actual figures are added
    // afresh, and the overrun is reported.
    let actual = Amounts {
        calls: 1,
        spend: 80,
        ..Amounts::ZERO
    };
    match s.settle(&slow, &actual, now + ttl + ms(10)).await.unwrap() {
        SettleOutcome::Settled {
            used,
            overrun,
            late,
            ..
        } => {
            assert!(late);
            assert_eq!(used.calls, 2);
            assert_eq!(used.spend, 130);
            assert_eq!(
                overrun,
                Some(Amounts {
                    spend: 30,
                    ..Amounts::ZERO
                })
            );
        }
        o => panic!("{o:?}"),
    }
    // The lost one is forgotten one more TTL after its release: its settle then changes
    // nothing.
    assert_eq!(
        s.settle(&lost, &actual, now + ttl * 2 + ms(1))
            .await
            .unwrap(),
        SettleOutcome::Unknown
    );
    match s
        .settle(&fresh, &want, now + ttl * 2 + ms(2))
        .await
        .unwrap()
    {
        SettleOutcome::Settled { used, .. } => {
            assert_eq!(used.calls, 2);
            assert_eq!(used.spend, 130);
        }
        o => panic!("{o:?}"),
    }
}

async fn sessions_create_get_revoke_expire(kind: Kind) {
    let env = Env::new(kind).await;
    let s = &env.state;
    let now = t0();
    let ttl = Duration::from_secs(60);
    let a = s
        .create_session("agent-a", ttl, 10, 100, now)
        .await
        .unwrap();
    validate_session_id(&a.id).unwrap();
    assert!(a.id.starts_with("sess_"));
    assert_eq!(a.expires_at, (now + ttl));
    assert_eq!(s.get_session(&a.id, now).await.unwrap(), Some(a.clone()));
    // Expiry: gone at expires_at.
    assert_eq!(
        s.get_session(&a.id, now + (ttl - ms(1))).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(s.get_session(&a.id, now + ttl).await.unwrap(), None);
    // Revocation, with its nonces.
    let b = s
        .create_session("agent-a", ttl, 10, 100, now)
        .await
        .unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(
        s.use_nonce(&b.id, "n1", now).await.unwrap(),
        NonceOutcome::Fresh
    );
    assert!(s.revoke_session(&b.id, now).await.unwrap());
    assert!(!s.revoke_session(&b.id, now).await.unwrap());
    assert_eq!(s.get_session(&b.id, now).await.unwrap(), None);
    assert_eq!(
        s.use_nonce(&b.id, "n2", now).await.unwrap_err().code(),
        "SESSION_NOT_FOUND"
    );
    assert_eq!(
        s.advance_counter(&b.id, 1, now).await.unwrap_err().code(),
        "SESSION_NOT_FOUND"
    );
    // A well-formed id nobody issued.
    let unknown = format!("sess_{}", "A".repeat(32));
    assert_eq!(s.get_session(&unknown, now).await.unwrap(), None);
    assert!(!s.revoke_session(&unknown, now).await.unwrap());
}

/// Caps count live sessions only; 40 concurrent creations for one agent with a cap of 5 (over
/// two clients) yield exactly 5.
async fn session_caps_hold_under_concurrency(kind: Kind) {
    let env = Env::new(kind).await;
    let other = env.replica(options("lapt:")).await;
    let now = t0();
    let ttl = Duration::from_secs(60);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 {
            env.state.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.create_session("busy", ttl, 5, 1000, now).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => created += 1,
            Err(e) => {
                assert_eq!(e.code(), "SESSION_LIMIT");
                assert!(matches!(
                    e,
                    StateError::SessionLimit {
                        scope: SessionScope::PerAgent,
                        cap: 5
                    }
                ));
            }
        }
    }
    assert_eq!(created, 5);
    // The global cap counts everyone.
    let s = &env.state;
    s.create_session("x", ttl, 5, 7, now).await.unwrap();
    s.create_session("y", ttl, 5, 7, now).await.unwrap();
    let e = s.create_session("z", ttl, 5, 7, now).await.unwrap_err();
    assert!(matches!(
        e,
        StateError::SessionLimit {
            scope: SessionScope::Global,
            ..
        }
    ));
    // Revoked and expired sessions free their places.
    let later = now + ttl;
    let a = s.create_session("busy", ttl, 5, 1000, later).await.unwrap();
    for _ in 0..4 {
        s.create_session("busy", ttl, 5, 1000, later).await.unwrap();
    }
    assert!(s.create_session("busy", ttl, 5, 1000, later).await.is_err());
    assert!(s.revoke_session(&a.id, later).await.unwrap());
    s.create_session("busy", ttl, 5, 1000, later).await.unwrap();
}

async fn sessions_are_shared_by_replicas(kind: Kind) {
    let env = Env::new(kind).await;
    let other = env.replica(options("lapt:")).await;
    let now = t0();
    let sess = env
        .state
        .create_session("agent", Duration::from_secs(30), 3, 10, now)
        .await
        .unwrap();
    assert_eq!(
        other.get_session(&sess.id, now).await.unwrap(),
        Some(sess.clone())
    );
    assert_eq!(
        other.use_nonce(&sess.id, "n", now).await.unwrap(),
        NonceOutcome::Fresh
    );
    assert_eq!(
        env.state.use_nonce(&sess.id, "n", now).await.unwrap(),
        NonceOutcome::Reused
    );
    assert!(other.revoke_session(&sess.id, now).await.unwrap());
    assert_eq!(env.state.get_session(&sess.id, now).await.unwrap(), None);
}

async fn nonce_is_fresh_once_per_session(kind: Kind) {
    let env = Env::new(kind).await;
    let s = &env.state;
    let now = t0();
    let ttl = Duration::from_secs(30);
    let a = s.create_session("agent", ttl, 10, 100, now).await.unwrap();
    let b = s.create_session("agent", ttl, 10, 100, now).await.unwrap();
    assert_eq!(
        s.use_nonce(&a.id, "n-1", now).await.unwrap(),
        NonceOutcome::Fresh
    );
    assert_eq!(
        s.use_nonce(&a.id, "n-1", now).await.unwrap(),
        NonceOutcome::Reused
    );
    assert_eq!(
        s.use_nonce(&a.id, "n-1", now + ms(100)).await.unwrap(),
        NonceOutcome::Reused
    );
    assert_eq!(
        s.use_nonce(&a.id, "n-2", now).await.unwrap(),
        NonceOutcome::Fresh
    );
    // Per session.
    assert_eq!(
        s.use_nonce(&b.id, "n-1", now).await.unwrap(),
        NonceOutcome::Fresh
    );
    let longest = "x".repeat(MAX_NONCE_LEN);
    assert_eq!(
        s.use_nonce(&a.id, &longest, now).await.unwrap(),
        NonceOutcome::Fresh
    );
    // The session's end ends its nonces.
    assert_eq!(
        s.use_nonce(&a.id, "n-3", now + ttl)
            .await
            .unwrap_err()
            .code(),
        "SESSION_NOT_FOUND"
    );
}

/// 100 nonces, each tried by 4 tasks on 4 independent clients at once: every nonce is fresh
/// exactly once.
async fn nonce_fresh_exactly_once_under_concurrency_across_replicas(kind: Kind) {
    let env = Env::new(kind).await;
    let mut replicas = vec![env.state.clone()];
    for _ in 0..3 {
        replicas.push(env.replica(options("lapt:")).await);
    }
    let now = t0();
    let sess = env
        .state
        .create_session("agent", Duration::from_secs(60), 10, 100, now)
        .await
        .unwrap();
    let sid = Arc::new(sess.id);
    let mut tasks = Vec::new();
    for copy in 0..4 {
        for n in 0..100 {
            let s = replicas[(copy + n) % replicas.len()].clone();
            let sid = sid.clone();
            tasks.push(tokio::spawn(async move {
                let nonce = format!("nonce-{n}");
                (n, s.use_nonce(&sid, &nonce, now).await.unwrap())
            }));
        }
    }
    let mut fresh = vec![0; 100];
    for t in tasks {
        let (n, o) = t.await.unwrap();
        if o == NonceOutcome::Fresh {
            fresh[n] += 1;
        }
    }
    assert!(fresh.iter().all(|&f| f == 1), "{fresh:?}");
}

async fn counter_strictly_increasing(kind: Kind) {
    let env = Env::new(kind).await;
    let s = &env.state;
    let now = t0();
    let sess = s
        .create_session("agent", Duration::from_secs(30), 10, 100, now)
        .await
        .unwrap();
    let id = &sess.id;
    assert_eq!(
        s.advance_counter(id, 0, now).await.unwrap(),
        CounterOutcome::Advanced
    );
    assert_eq!(
        s.advance_counter(id, 0, now).await.unwrap(),
        CounterOutcome::NotMonotonic { last: 0 }
    );
    assert_eq!(
        s.advance_counter(id, 5, now).await.unwrap(),
        CounterOutcome::Advanced
    );
    assert_eq!(
        s.advance_counter(id, 5, now).await.unwrap(),
        CounterOutcome::NotMonotonic { last: 5 }
    );
    assert_eq!(
        s.advance_counter(id, 3, now).await.unwrap(),
        CounterOutcome::NotMonotonic { last: 5 }
    );
    assert_eq!(
        s.advance_counter(id, 6, now).await.unwrap(),
        CounterOutcome::Advanced
    );
    assert_eq!(
        s.advance_counter(id, MAX_COUNTER, now).await.unwrap(),
        CounterOutcome::Advanced
    );
    assert_eq!(
        s.advance_counter(id, MAX_COUNTER, now).await.unwrap(),
        CounterOutcome::NotMonotonic { last: MAX_COUNTER }
    );
    // Counters are per session.
    let other = s
        .create_session("agent", Duration::from_secs(30), 10, 100, now)
        .await
        .unwrap();
    assert_eq!(
        s.advance_counter(&other.id, 1, now).await.unwrap(),
        CounterOutcome::Advanced
    );
}

/// Values 1..=200 offered at once from two clients: whatever order they land in, the values
/// accepted are distinct, and the counter ends at 200 (the largest, never refused by a
/// smaller one).
async fn counter_under_concurrency_never_goes_back(kind: Kind) {
    let env = Env::new(kind).await;
    let other = env.replica(options("lapt:")).await;
    let now = t0();
    let sess = env
        .state
        .create_session("agent", Duration::from_secs(30), 10, 100, now)
        .await
        .unwrap();
    let sid = Arc::new(sess.id);
    let mut tasks = Vec::new();
    for v in 1..=200u64 {
        let s = if v % 2 == 0 {
            env.state.clone()
        } else {
            other.clone()
        };
        let sid = sid.clone();
        tasks.push(tokio::spawn(async move {
            (v, s.advance_counter(&sid, v, now).await.unwrap())
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        let (v, o) = t.await.unwrap();
        match o {
            CounterOutcome::Advanced => accepted += 1,
            CounterOutcome::NotMonotonic { last } => assert!(last >= v),
        }
    }
    assert!(accepted >= 1);
    assert_eq!(
        env.state.advance_counter(&sid, 200, now).await.unwrap(),
        CounterOutcome::NotMonotonic { last: 200 }
    );
}

async fn bad_input_is_refused_before_the_store_and_consumes_nothing(kind: Kind) {
    let env = Env::new(kind).await;
    let s = &env.state;
    let now = t0();
    let sess = s
        .create_session("agent", Duration::from_secs(30), 10, 100, now)
        .await
        .unwrap();
    let huge = "n".repeat(1 << 20);
    for bad in [
        "",
        "sess_",
        "sess_short",
        &format!("{}x", sess.id),
        &sess.id.replace("sess_", "SESS_"),
        &format!("sess_{}", "a/".repeat(16)),
        &format!("sess_{}", "a".repeat(31) + "\u{0}"),
        &huge,
    ] {
        assert_eq!(
            s.get_session(bad, now).await.unwrap_err().code(),
            "SESSION_ID_MALFORMED"
        );
        assert_eq!(
            s.use_nonce(bad, "n", now).await.unwrap_err().code(),
            "SESSION_ID_MALFORMED"
        );
        assert_eq!(
            s.advance_counter(bad, 1, now).await.unwrap_err().code(),
            "SESSION_ID_MALFORMED"
        );
        assert_eq!(
            s.revoke_session(bad, now).await.unwrap_err().code(),
            "SESSION_ID_MALFORMED"
        );
    }
    for bad in [
        "",
        huge.as_str(),
        &"n".repeat(MAX_NONCE_LEN + 1),
        "two words",
        "semi;colon",
        "new\nline",
        "ünï",
    ] {
        assert_eq!(
            s.use_nonce(&sess.id, bad, now).await.unwrap_err().code(),
            "NONCE_MALFORMED"
        );
    }
    assert_eq!(
        s.advance_counter(&sess.id, MAX_COUNTER + 1, now)
            .await
            .unwrap_err()
            .code(),
        "COUNTER_OUT_OF_RANGE"
    );
    assert_eq!(
        s.advance_counter(&sess.id, u64::MAX, now)
            .await
            .unwrap_err()
            .code(),
        "COUNTER_OUT_OF_RANGE"
    );
    // Nothing consumed: the counter still accepts its first value, a valid nonce is fresh.
    assert_eq!(
        s.advance_counter(&sess.id, 1, now).await.unwrap(),
        CounterOutcome::Advanced
    );
    assert_eq!(
        s.use_nonce(&sess.id, "n", now).await.unwrap(),
        NonceOutcome::Fresh
    );

    let lim = limits(1, 100);
    let over = Amounts {
        calls: 1,
        spend: MAX_AMOUNT + 1,
        ..Amounts::ZERO
    };
    let e = s
        .reserve("b", Window::Day, &lim, &over, now)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AMOUNT_OUT_OF_RANGE");
    let bad_lim = Limits {
        spend: Some(u64::MAX),
        ..lim
    };
    assert_eq!(
        s.reserve("b", Window::Day, &bad_lim, &Amounts::ONE_CALL, now)
            .await
            .unwrap_err()
            .code(),
        "AMOUNT_OUT_OF_RANGE"
    );
    for key in ["", &"k".repeat(MAX_KEY_LEN + 1), "tab\there"] {
        assert_eq!(
            s.reserve(key, Window::Day, &lim, &Amounts::ONE_CALL, now)
                .await
                .unwrap_err()
                .code(),
            "STATE_KEY_INVALID"
        );
        assert_eq!(
            s.check_rate(key, Limit::per_second(1), now)
                .await
                .unwrap_err()
                .code(),
            "STATE_KEY_INVALID"
        );
    }
    // Nothing consumed: the one call of the budget is still there.
    let r = reserved(
        s.reserve("b", Window::Day, &lim, &Amounts::ONE_CALL, now)
            .await
            .unwrap(),
    );
    assert_eq!(
        s.settle(&r, &over, now).await.unwrap_err().code(),
        "AMOUNT_OUT_OF_RANGE"
    );
    for bad in [
        Limit::per_second(0),
        Limit::per_second(5).with_burst(0),
        Limit::new(5, Duration::ZERO),
    ] {
        assert_eq!(
            s.check_rate("r", bad, now).await.unwrap_err().code(),
            "RATE_LIMIT_INVALID"
        );
    }
    assert!(matches!(
        s.check_rate("r", Limit::per_minute(1), now).await.unwrap(),
        RateOutcome::Allowed { remaining: 0 }
    ));
    for ttl in [Duration::ZERO, ms(999), MAX_SESSION_TTL + ms(1)] {
        assert_eq!(
            s.create_session("agent", ttl, 10, 100, now)
                .await
                .unwrap_err()
                .code(),
            "SESSION_TTL_INVALID"
        );
    }
    for principal in ["", &"p".repeat(MAX_PRINCIPAL_LEN + 1), "a\u{7}b"] {
        assert_eq!(
            s.create_session(principal, Duration::from_secs(5), 10, 100, now)
                .await
                .unwrap_err()
                .code(),
            "STATE_KEY_INVALID"
        );
    }
}

/// A new client of the same store (a restarted gateway) sees everything: spent budget, used
/// nonces, counters, sessions, rate-limit state.
async fn state_survives_reopening(kind: Kind) {
    let env = Env::new(kind).await;
    let now = t0();
    let lim = Limits {
        calls: Some(1),
        ..Limits::default()
    };
    let sess = {
        let s = env.replica(options("lapt:")).await;
        let sess = s
            .create_session("agent", Duration::from_secs(60), 10, 100, now)
            .await
            .unwrap();
        s.use_nonce(&sess.id, "once", now).await.unwrap();
        s.advance_counter(&sess.id, 41, now).await.unwrap();
        reserved(
            s.reserve("b", Window::Day, &lim, &Amounts::ONE_CALL, now)
                .await
                .unwrap(),
        );
        s.check_rate("r", Limit::per_minute(1), now).await.unwrap();
        sess
    };
    let s = env.replica(options("lapt:")).await;
    assert_eq!(
        s.get_session(&sess.id, now).await.unwrap(),
        Some(sess.clone())
    );
    assert_eq!(
        s.use_nonce(&sess.id, "once", now).await.unwrap(),
        NonceOutcome::Reused
    );
    assert_eq!(
        s.advance_counter(&sess.id, 41, now).await.unwrap(),
        CounterOutcome::NotMonotonic { last: 41 }
    );
    assert!(matches!(
        s.reserve("b", Window::Day, &lim, &Amounts::ONE_CALL, now)
            .await
            .unwrap(),
        ReserveOutcome::Exceeded { .. }
    ));
    assert!(matches!(
        s.check_rate("r", Limit::per_minute(1), now).await.unwrap(),
        RateOutcome::Limited { .. }
    ));
}
