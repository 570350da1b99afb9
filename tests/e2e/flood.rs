//! Unauthenticated floods and slow clients against the real binary: refusals without a verified
//! identity beyond their address's allowance are answered 429 and counted into aggregate denial
//! receipts (the log grows by the allowance plus one entry per interval, and `lap-verify`
//! checks those entries), authenticated calls go through during the flood, a request header
//! that is not complete by its deadline gets 408 and the connection closes, and an address gets
//! only its share of open connections. Everything on 127.0.0.1, every wait bounded.

use lap_e2e::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const KEY: &str = "key-agent-a-0123456789";

fn builder(up: &Upstream) -> GatewayBuilder {
    GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&format!(r#"{{"{KEY}": "agent-a"}}"#))
        .policy("permit(principal, action, resource);")
}

/// Every receipt the admin plane serves (batched: those under the latest checkpoint), as
/// payload JSON.
async fn receipts(gw: &Gateway) -> Vec<serde_json::Value> {
    let size = gw.log_size().await;
    let mut out = Vec::new();
    for i in 0..size {
        let r = gw.log_entry(i).await;
        if r.status == 200 {
            out.push(receipt_payload(&r.body));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_key_flood_is_rate_limited_aggregated_and_does_not_hold_up_real_calls() {
    const BURST: u64 = 5;
    const FLOOD: u64 = 240;
    let up = Upstream::start(Behavior::Echo).await;
    let gw = builder(&up)
        .extra_toml(
            "[admission]\nunauthenticated_burst = 5\nunauthenticated_per_minute = 1\n\
             aggregate_interval_ms = 500\n",
        )
        .start()
        .await;
    assert_eq!(gw.log_size().await, 0);

    // The allowance: each refusal has its own denial receipt.
    for _ in 0..BURST {
        let r = gw.get("/tools/echo/x").api_key("wrong-key").send().await;
        r.assert_error(401, "API_KEY_INVALID");
        assert!(r.header("x-lap-receipt-id").is_some(), "{:?}", r.headers);
    }

    // The flood, from eight connections at once, with an authenticated call in the middle.
    let started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let data = gw.data;
        flood.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..FLOOD / 8 {
                let r = Request::get(data, "/tools/echo/x")
                    .api_key("wrong-key")
                    .send()
                    .await;
                answers.push(r);
            }
            answers
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let ok = gw.get("/tools/echo/x").api_key(KEY).send().await;
    let took = t.elapsed();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(
        ok.header("x-lap-receipt-id").is_some(),
        "a decision receipt"
    );
    assert!(
        took < Duration::from_secs(2),
        "an authenticated call took {took:?}"
    );

    let mut limited = 0;
    while let Some(answers) = flood.join_next().await {
        for r in answers.unwrap() {
            r.assert_error(429, "UNAUTHENTICATED_RATE_LIMITED");
            let id = r.header("x-request-id").expect("a request id");
            assert_eq!(r.json()["error"]["request_id"], id);
            let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&wait), "Retry-After: {wait}");
            assert!(
                r.header("x-lap-receipt-id").is_none(),
                "no receipt of its own"
            );
            limited += 1;
        }
    }
    assert_eq!(limited, FLOOD);
    let flood_time = started.elapsed();
    assert_eq!(up.hits(), 1, "only the authenticated call reached the tool");

    // The flood's refusals arrive in the log as aggregates, one per interval at most.
    let counted = || async {
        let rs = receipts(&gw).await;
        let n: u64 = rs
            .iter()
            .filter(|p| p["kind"] == "denial_aggregate")
            .map(|p| p["aggregate"]["count"].as_u64().unwrap())
            .sum();
        (n == FLOOD).then_some(rs)
    };
    let rs = wait_for(Duration::from_secs(10), counted)
        .await
        .expect("every flooded refusal counted in an aggregate receipt");
    let aggregates: Vec<_> = rs
        .iter()
        .filter(|p| p["kind"] == "denial_aggregate")
        .collect();
    for p in &aggregates {
        let a = &p["aggregate"];
        assert_eq!(a["client"], "127.0.0.1");
        assert_eq!(a["count"], a["rate_limited"]);
        assert_eq!(a["codes"]["API_KEY_INVALID"], a["count"], "{a}");
        assert!(a["first_at"].as_str() <= a["last_at"].as_str());
        assert_eq!(p["principal"], serde_json::Value::Null);
        assert_eq!(p["request_id"], "");
        assert_eq!(p["decision"]["outcome"], "deny");
        assert_eq!(p["decision"]["code"], "UNAUTHENTICATED_RATE_LIMITED");
    }
    let intervals = flood_time.as_millis() as u64 / 500 + 2;
    assert!(
        (aggregates.len() as u64) <= intervals,
        "{} aggregates for {flood_time:?}",
        aggregates.len()
    );
    // The log: the allowance, the call's decision and completion, the aggregates. Nothing else.
    let (_, size) = gw.settled_checkpoint().await;
    let denials = rs.iter().filter(|p| p["kind"] == "denial").count() as u64;
    assert_eq!(denials, BURST);
    assert_eq!(size, BURST + 2 + aggregates.len() as u64, "log size");
    assert!(size < FLOOD / 10, "the flood did not grow the log ({size})");

    let m = gw
        .settled_metrics("the refusals counted", |m| {
            metric_value(
                m,
                "lap_unauthenticated_refusals_total",
                &[("outcome", "rate_limited")],
            ) == Some(FLOOD as f64)
        })
        .await;
    let count = |name, labels: &[(&str, &str)]| metric_value(&m, name, labels);
    assert_eq!(
        count(
            "lap_unauthenticated_refusals_total",
            &[("outcome", "receipted")]
        ),
        Some(BURST as f64)
    );
    assert_eq!(
        count(
            "lap_admission_rejections_total",
            &[("reason", "rate_limited")]
        ),
        Some(FLOOD as f64)
    );
    assert_eq!(
        count(
            "lap_receipts_total",
            &[("kind", "denial_aggregate"), ("result", "ok")]
        ),
        Some(aggregates.len() as f64)
    );

    // The aggregates verify offline like every other entry, from an audit pack.
    let dir = tempfile::tempdir().unwrap();
    let trust = save(dir.path(), "keys.json", &gw.trust_doc().await);
    let pack = save(dir.path(), "all.tar", &gw.audit_pack("").await);
    let v = verify_pack(&pack, &["--trusted-keys".as_ref(), trust.as_os_str()]);
    assert!(v.ok, "{}", v.summary());
    assert_eq!(v.report["report"]["entries"].as_u64(), Some(size));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_of_unauthenticated_receipts_counts_instead_of_waiting() {
    // One unauthenticated receipt may wait for the log at a time; a generous allowance.
    let up = Upstream::start(Behavior::Echo).await;
    let gw = builder(&up)
        .extra_toml(
            "[admission]\nunauthenticated_burst = 1000\nmax_unauthenticated_receipts = 1\n\
             aggregate_interval_ms = 300\n",
        )
        .start()
        .await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let data = gw.data;
        set.spawn(async move { Request::get(data, "/nowhere").send().await });
    }
    let (mut own, mut counted) = (0u64, 0u64);
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        // Within the allowance every refusal keeps its own code.
        r.assert_error(404, "ROUTE_NOT_FOUND");
        match r.header("x-lap-receipt-id") {
            Some(_) => own += 1,
            None => counted += 1,
        }
    }
    assert_eq!(own + counted, 40);
    // Forty refusals at once against a queue of one: some wait their turn in no queue at all.
    assert!(
        own >= 1 && counted >= 1,
        "{own} receipted, {counted} counted"
    );
    let aggregated = wait_for(Duration::from_secs(10), || async {
        let n: u64 = receipts(&gw)
            .await
            .iter()
            .filter(|p| p["kind"] == "denial_aggregate")
            .map(|p| {
                assert_eq!(p["aggregate"]["rate_limited"], 0);
                assert_eq!(p["decision"]["code"], "UNAUTHENTICATED_RECEIPTS_AGGREGATED");
                p["aggregate"]["codes"]["ROUTE_NOT_FOUND"].as_u64().unwrap()
            })
            .sum();
        (n == counted).then_some(n)
    })
    .await;
    assert_eq!(
        aggregated,
        Some(counted),
        "every refusal without a receipt is counted"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "lap_unauthenticated_refusals_total",
            &[("outcome", "aggregated")]
        )
        .unwrap_or(0.0),
        counted as f64
    );
}

/// Writes `head` one byte at a time every `gap` until the connection fails.
async fn trickle(mut w: tokio::net::tcp::OwnedWriteHalf, head: Vec<u8>, gap: Duration) {
    for b in head {
        if w.write_all(&[b]).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_header_is_cut_off_at_its_deadline() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = builder(&up)
        .server_toml("header_timeout_ms = 1000")
        .start()
        .await;

    // Slowloris: a header at five bytes a second that would take a minute.
    let head = format!(
        "GET /tools/echo/x HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {KEY}\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(300)
    );
    let started = Instant::now();
    let (mut r, w) = TcpStream::connect(gw.data).await.unwrap().into_split();
    let writer = tokio::spawn(trickle(w, head.into_bytes(), Duration::from_millis(200)));
    let answer = tokio::time::timeout(Duration::from_secs(3), read_response(&mut r))
        .await
        .expect("answered and closed within 3 s");
    let took = started.elapsed();
    answer.assert_error(408, "REQUEST_HEADER_TIMEOUT");
    assert_eq!(answer.header("connection"), Some("close"));
    let id = answer.header("x-request-id").expect("a request id");
    assert_eq!(answer.json()["error"]["request_id"], id);
    assert!(
        answer.header("x-lap-receipt-id").is_some(),
        "a denial receipt"
    );
    assert!(
        took >= Duration::from_millis(900),
        "cut off early: {took:?}"
    );
    // The connection is closed: the trickle fails soon.
    tokio::time::timeout(Duration::from_secs(3), writer)
        .await
        .expect("the writer sees the connection closed")
        .unwrap();

    // A connection that sends nothing is closed by the same deadline.
    let started = Instant::now();
    let mut idle = TcpStream::connect(gw.data).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(3), read_response(&mut idle))
        .await
        .expect("an idle connection is closed within 3 s");
    answer.assert_error(408, "REQUEST_HEADER_TIMEOUT");
    assert!(started.elapsed() >= Duration::from_millis(900));

    assert_eq!(up.hits(), 0);
    let m = gw
        .settled_metrics("the timeouts counted", |m| {
            metric_value(m, "lap_requests_total", &[("tool", "-"), ("status", "408")]) == Some(2.0)
        })
        .await;
    assert_eq!(
        metric_value(
            &m,
            "lap_admission_rejections_total",
            &[("reason", "header_timeout")]
        ),
        Some(2.0)
    );
    // The gateway keeps serving, and a prompt client is not affected.
    let r = gw.get("/tools/echo/x").api_key(KEY).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_gets_its_share_of_connections() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = builder(&up)
        .extra_toml("[admission]\nmax_connections_per_address = 3\n")
        .start()
        .await;
    // Four idle connections: whichever the gateway takes up last is refused at once, the
    // other three wait for their request header (10 s by default).
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(gw.data).await.unwrap();
        waiting.spawn(async move {
            let started = Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(3), read_response(&mut s))
                .await
                .ok();
            (answer, started.elapsed(), s)
        });
    }
    let mut held = Vec::new();
    let mut refused = Vec::new();
    while let Some(done) = waiting.join_next().await {
        let (answer, took, s) = done.unwrap();
        match answer {
            Some(answer) => refused.push((answer, took)),
            None => held.push(s),
        }
    }
    assert_eq!((held.len(), refused.len()), (3, 1), "{refused:?}");
    let (answer, took) = &refused[0];
    answer.assert_error(429, "TOO_MANY_CONNECTIONS");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(*took < Duration::from_secs(2), "refused after {took:?}");
    // Also a complete request from that address: refused before it is read.
    let r = gw.get("/tools/echo/x").api_key(KEY).send().await;
    r.assert_error(429, "TOO_MANY_CONNECTIONS");
    assert_eq!(up.hits(), 0);

    // One closes: there is room again (once the gateway has seen it go).
    drop(held.pop());
    let room = wait_until(Duration::from_secs(3), || async {
        gw.get("/tools/echo/x").api_key(KEY).send().await.status == 200
    })
    .await;
    assert!(room, "a slot freed by a closed connection is taken again");
    assert_eq!(up.hits(), 1);
    let m = gw.metrics().await;
    let rejected = metric_value(
        &m,
        "lap_admission_rejections_total",
        &[("reason", "connection_cap")],
    );
    assert!(rejected >= Some(2.0), "{rejected:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = builder(&up)
        .server_toml("proxy_headers = true")
        .extra_toml(
            "[admission]\nunauthenticated_burst = 2\nunauthenticated_per_minute = 1\n\
             aggregate_interval_ms = 300\nmax_connections_per_address = 1\n",
        )
        .start()
        .await;
    let from = |client: &'static str| {
        gw.get("/tools/echo/x")
            .api_key("wrong-key")
            .header("X-Forwarded-For", client)
    };
    // 127.0.0.1 is a trusted proxy: the client is the forwarded address.
    for _ in 0..2 {
        from("203.0.113.1")
            .send()
            .await
            .assert_error(401, "API_KEY_INVALID");
    }
    let r = from("203.0.113.1").send().await;
    r.assert_error(429, "UNAUTHENTICATED_RATE_LIMITED");
    // A spoofed left-most entry changes nothing: the right-most untrusted address counts.
    let r = from("198.51.100.7, 203.0.113.1").send().await;
    r.assert_error(429, "UNAUTHENTICATED_RATE_LIMITED");
    // Another client behind the same proxy has its own allowance.
    let r = from("203.0.113.2").send().await;
    r.assert_error(401, "API_KEY_INVALID");
    assert!(r.header("x-lap-receipt-id").is_some());

    // Aggregated under the forwarded address (in one interval or two), and no other.
    let counted = wait_until(Duration::from_secs(10), || async {
        let aggregates: Vec<_> = receipts(&gw)
            .await
            .into_iter()
            .filter(|p| p["kind"] == "denial_aggregate")
            .collect();
        assert!(aggregates
            .iter()
            .all(|p| p["aggregate"]["client"] == "203.0.113.1"));
        let n: u64 = aggregates
            .iter()
            .map(|p| p["aggregate"]["count"].as_u64().unwrap())
            .sum();
        n == 2
    })
    .await;
    assert!(counted, "both 429s counted for 203.0.113.1");

    // The proxy's own connections are not capped (a cap of one would refuse the second).
    let idle = TcpStream::connect(gw.data).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = gw.get("/tools/echo/x").api_key(KEY).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_may_idle_past_the_header_deadline() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = builder(&up)
        .server_toml("header_timeout_ms = 500")
        .start()
        .await;
    let request = format!("GET /tools/echo/x HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {KEY}\r\n\r\n");
    let mut s = TcpStream::connect(gw.data).await.unwrap();
    for round in 0..2 {
        s.write_all(request.as_bytes()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
            .await
            .expect("answered");
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_ne!(r.header("connection"), Some("close"));
        // Idle between requests for three header deadlines: keep-alive, not a slow header
        // (a proxy in front keeps such connections for reuse).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_eq!(up.hits(), 2);
}
