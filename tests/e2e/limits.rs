//! Limits against the real binary: rate limits, budgets, sessions, nonces and counters, on the
//! embedded store and on three replicas sharing a real `redis-server` — including a gateway
//! SIGKILLed under load and Redis dying under load.
//!
//! What each test holds the gateway to is what `docs/limits.md` promises: a refusal has its
//! stable code and a denial receipt and reaches no upstream; a budget admits exactly its limit
//! however many calls race for it, on one gateway or several; a nonce is accepted once, across
//! replicas and restarts; malformed input is refused and consumes nothing; a store that fails
//! refuses calls (503) and the gateway serves again when it returns.

use lap_e2e::*;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const KEYS: &str = r#"{"key-a": "agent-a", "key-b": "agent-b"}"#;
const PERMIT: &str = "permit(principal, action, resource);";

/// A gateway in front of `upstreams` (tool name, upstream, extra tool TOML), with `extra`
/// appended (limits, sessions) and `env` set. The store's deadline is 2 s rather than 50 ms:
/// these tests run many gateways at once on a small machine, where an fsync can wait that
/// long (the deadline itself is tested with Redis gone).
async fn gateway(
    upstreams: &[(&str, &Upstream, &str)],
    extra: &str,
    env: &[(&str, &str)],
) -> Gateway {
    let mut b = GatewayBuilder::new()
        .keys_file(KEYS)
        .policy(PERMIT)
        .env("LAP_STATE_DEADLINE_MS", "2000");
    for (name, up, toml) in upstreams {
        b = b.tool_toml(name, &up.url(), toml);
    }
    if !extra.is_empty() {
        b = b.extra_toml(extra);
    }
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start().await
}

/// The receipt a response carries (batched mode).
fn receipt_of(r: &HttpResponse) -> Value {
    let (entry, _) = batched_receipt(r).expect("a receipt on the response");
    receipt_payload(&entry)
}

/// A new session for `key`, its id.
async fn new_session(gw: &Gateway, key: &str) -> String {
    let r = gw
        .post("/v1/session/new")
        .api_key(key)
        .json(r#"{"ttl_seconds": 600}"#)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    assert!(id.starts_with("sess_") && id.len() == 37, "{id}");
    id
}

/// The completion receipt of the call whose decision receipt is `decision_id` (issued in the
/// background after the response: waited for).
async fn completion_of(gw: &Gateway, decision_id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let size = gw.log_size().await;
        for i in 0..size {
            let e = gw.log_entry(i).await;
            if e.status != 200 {
                continue;
            }
            let r = receipt_payload(&e.body);
            if r["kind"] == "completion" && r["completion"]["decision_receipt_id"] == decision_id {
                return r;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completion receipt for {decision_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_refuse_with_retry_after_and_a_denial_receipt() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway(
        &[("pay", &up, "")],
        "[[limits.rate]]\nscope = \"principal_tool\"\ncount = 2\nper = \"1m\"\n",
        &[],
    )
    .await;
    for _ in 0..2 {
        let r = gw.get("/tools/pay/x").api_key("key-a").send().await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = gw.get("/tools/pay/x").api_key("key-a").send().await;
    r.assert_error(429, "RATE_LIMITED");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let receipt = receipt_of(&r);
    assert_eq!(receipt["kind"], "denial");
    assert_eq!(receipt["decision"]["code"], "RATE_LIMITED");
    assert_eq!(receipt["call"]["tool"], "pay");
    assert_eq!(up.hits(), 2, "the refused call reached no upstream");
    // Per principal and tool: another agent has its own allowance.
    let r = gw.get("/tools/pay/x").api_key("key-b").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.metric("lap_limit_refusals_total", &[("code", "RATE_LIMITED")])
            .await,
        Some(1.0)
    );
    let m = gw.metrics().await;
    assert!(
        metric_sum(
            &m,
            "lap_state_op_duration_seconds_count",
            &[("backend", "embedded"), ("op", "check_rate")]
        ) >= 4.0,
        "store latency is measured"
    );
    let health = gw.get("/v1/health").send().await.json();
    assert_eq!(health["state"]["backend"], "embedded");
    assert_eq!(health["state"]["status"], "ok");
    assert_eq!(health["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_ends_exactly_at_its_limit_under_concurrency() {
    let up = Upstream::start(Behavior::Delay(Duration::from_millis(20))).await;
    let gw = Arc::new(
        gateway(
            &[("pay", &up, "")],
            "[[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"\ncalls = 10\n",
            &[],
        )
        .await,
    );
    let mut tasks = Vec::new();
    for i in 0..30 {
        let gw = gw.clone();
        let key = if i % 2 == 0 { "key-a" } else { "key-b" };
        tasks.push(tokio::spawn(async move {
            gw.get("/tools/pay/x").api_key(key).send().await
        }));
    }
    let mut ok = 0;
    let mut decision = None;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            200 => {
                ok += 1;
                decision = r.header("x-lap-receipt-id").map(str::to_string);
            }
            _ => r.assert_error(429, "BUDGET_EXCEEDED"),
        }
    }
    assert_eq!(ok, 10, "exactly the budget's calls pass");
    assert_eq!(up.hits(), 10, "and exactly those reach the upstream");
    let r = gw.get("/tools/pay/x").api_key("key-a").send().await;
    r.assert_error(429, "BUDGET_EXCEEDED");
    assert_eq!(r.json()["error"]["code"], "BUDGET_EXCEEDED");
    // The completion receipt reports the reservation and what is left.
    let c = completion_of(&gw, &decision.expect("an allowed call")).await;
    let b = &c["completion"]["budgets"][0];
    assert_eq!(b["budget"], "limits.budget[0]");
    assert_eq!(b["window"], "day");
    assert_eq!(b["reserved"]["calls"], 1);
    assert_eq!(b["actual"]["calls"], 1);
    assert!(b["remaining"]["calls"].as_u64().is_some(), "{b}");
    // Receipts with budgets and denials of limits verify offline like any other.
    let dir = tempfile::tempdir().expect("tempdir");
    let trust = save(dir.path(), "keys.json", &gw.trust_doc().await);
    let pack = save(dir.path(), "pack.tar", &gw.audit_pack("").await);
    let v = verify_pack(
        &pack,
        &[std::ffi::OsStr::new("--trusted-keys"), trust.as_os_str()],
    );
    assert!(v.ok, "{}", v.report);
}

#[tokio::test(flavor = "multi_thread")]
async fn spend_budgets_read_the_arguments_and_bad_spends_consume_nothing() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway(
        &[("pay", &up, "")],
        "[[limits.budget]]\nscope = \"principal\"\nwindow = \"month\"\nspend = 100\n\
         spend_field = \"/amount_cents\"\n",
        &[],
    )
    .await;
    let pay = |body: &'static str| {
        gw.post("/tools/pay/charge")
            .api_key("key-a")
            .json(body)
            .send()
    };
    assert_eq!(pay(r#"{"amount_cents": 60}"#).await.status, 200);
    let r = pay(r#"{"amount_cents": 60}"#).await;
    r.assert_error(429, "BUDGET_EXCEEDED");
    assert_eq!(
        r.json()["error"]["message"],
        "budget exhausted: spend limit 100, 40 left"
    );
    for bad in [
        r#"{"amount_cents": -1}"#,
        r#"{"amount_cents": 1.5}"#,
        r#"{"amount_cents": "40"}"#,
        r#"{"amount": 40}"#,
        r#"{"amount_cents": 9007199254740992}"#,
    ] {
        let r = pay(bad).await;
        r.assert_error(400, "SPEND_INVALID");
        assert_eq!(receipt_of(&r)["decision"]["code"], "SPEND_INVALID");
    }
    // Nothing was consumed by the refusals: exactly the 40 left still pass.
    assert_eq!(pay(r#"{"amount_cents": 40}"#).await.status, 200);
    pay(r#"{"amount_cents": 1}"#)
        .await
        .assert_error(429, "BUDGET_EXCEEDED");
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn response_bytes_budgets_cut_off_what_is_over() {
    let up = Upstream::start(Behavior::Large(3000)).await;
    let gw = gateway(
        &[("big", &up, "")],
        "[[limits.budget]]\nscope = \"principal_tool\"\nwindow = \"hour\"\nresponse_bytes = 5000\n",
        &[],
    )
    .await;
    let r = gw.get("/tools/big/x").api_key("key-a").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3000);
    // Settled (with its actual 3000 bytes) before its completion receipt is issued.
    let first = completion_of(&gw, r.header("x-lap-receipt-id").expect("receipt")).await;
    assert_eq!(
        first["completion"]["budgets"][0]["remaining"]["response_bytes"],
        2000
    );
    // 2000 bytes left: the next 3000-byte answer is over what its reservation holds.
    let r = gw.get("/tools/big/x").api_key("key-a").send().await;
    r.assert_error(502, "BUDGET_RESPONSE_CUT");
    let decision = r
        .header("x-lap-receipt-id")
        .expect("decision receipt")
        .to_string();
    let c = completion_of(&gw, &decision).await;
    assert_eq!(c["completion"]["error_code"], "BUDGET_RESPONSE_CUT");
    assert_eq!(
        c["completion"]["budgets"][0]["reserved"]["response_bytes"],
        2000
    );
    // Nothing of the cut response was counted: the 2000 bytes are still there.
    let c_remaining = &c["completion"]["budgets"][0]["remaining"]["response_bytes"];
    assert_eq!(c_remaining, 2000, "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_nonces_and_counters() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway(
        &[
            ("pay", &up, "require_nonce = true\nrequire_counter = true"),
            ("open", &up, ""),
        ],
        "[sessions]\nmax_per_agent = 3\n",
        &[],
    )
    .await;
    let call = |sid: &str, nonce: &str, counter: &str| {
        let mut r = gw.post("/tools/pay/x").api_key("key-a").json("{}");
        if !sid.is_empty() {
            r = r.header("X-Session-Id", sid);
        }
        if !nonce.is_empty() {
            r = r.header("X-Nonce", nonce);
        }
        if !counter.is_empty() {
            r = r.header("X-Counter", counter);
        }
        r.send()
    };
    call("", "n1", "1")
        .await
        .assert_error(400, "SESSION_ID_REQUIRED");
    // Session requests are checked strictly.
    for (body, code) in [
        (r#"{"ttl_seconds": 10}"#, "SESSION_TTL_INVALID"),
        (r#"{"ttl_seconds": 100000}"#, "SESSION_TTL_INVALID"),
        (r#"{"ttl": 600}"#, "SESSION_REQUEST_INVALID"),
    ] {
        let r = gw
            .post("/v1/session/new")
            .api_key("key-a")
            .json(body)
            .send()
            .await;
        r.assert_error(400, code);
    }
    gw.post("/v1/session/new")
        .send()
        .await
        .assert_error(401, "API_KEY_REQUIRED");
    let r = gw.post("/v1/session/new").api_key("key-a").send().await;
    assert_eq!(r.status, 201, "an empty body takes the default TTL");
    assert!(r.json()["expires_at_utc"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let sid = new_session(&gw, "key-a").await;

    let r = call(&sid, "n1", "1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let receipt = receipt_of(&r);
    let digest = receipt["call"]["session"].as_str().expect("call.session");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 23,
        "{digest}"
    );
    assert!(
        !receipt.to_string().contains(&sid),
        "the id itself is never in a receipt"
    );

    let seen = up.last().expect("the call reached the tool");
    assert_eq!(
        seen.header("x-nonce"),
        Some("n1"),
        "nonce and counter go to the tool"
    );
    assert_eq!(seen.header("x-counter"), Some("1"));
    assert_eq!(seen.header("x-session-id"), None, "the session id does not");
    call(&sid, "n1", "2")
        .await
        .assert_error(409, "NONCE_REUSED");
    call(&sid, "n2", "1")
        .await
        .assert_error(409, "COUNTER_NOT_MONOTONIC");
    // Malformed input: 400, and nothing consumed (n3 and counter 3 still work after).
    let long = "n".repeat(129);
    for (nonce, counter, code) in [
        ("", "3", "NONCE_REQUIRED"),
        ("a b", "3", "NONCE_MALFORMED"),
        (long.as_str(), "3", "NONCE_MALFORMED"),
        ("n3", "", "COUNTER_REQUIRED"),
        ("n3", "x", "COUNTER_MALFORMED"),
        ("n3", "-3", "COUNTER_MALFORMED"),
        ("n3", "9007199254740992", "COUNTER_OUT_OF_RANGE"),
    ] {
        let r = call(&sid, nonce, counter).await;
        r.assert_error(400, code);
        assert_eq!(receipt_of(&r)["kind"], "denial");
    }
    call("sess_short", "n3", "3")
        .await
        .assert_error(400, "SESSION_ID_MALFORMED");
    assert_eq!(call(&sid, "n3", "3").await.status, 200);
    assert_eq!(up.hits(), 2);

    // Another agent cannot use the session.
    let r = gw
        .post("/tools/pay/x")
        .api_key("key-b")
        .json("{}")
        .headers(&[
            ("X-Session-Id", &sid),
            ("X-Nonce", "n4"),
            ("X-Counter", "4"),
        ])
        .send()
        .await;
    r.assert_error(403, "SESSION_INVALID");
    // A tool without requirements still checks a session it is given.
    let r = gw
        .get("/tools/open/x")
        .api_key("key-b")
        .header("X-Session-Id", &sid)
        .send()
        .await;
    r.assert_error(403, "SESSION_INVALID");

    // Revoked on the admin plane: refused from then on.
    let revoke =
        |id: String| Request::new(gw.admin, "POST", &format!("/v1/sessions/{id}/revoke")).send();
    let r = revoke(sid.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"], true);
    call(&sid, "n5", "5")
        .await
        .assert_error(403, "SESSION_INVALID");
    revoke(sid.clone())
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
    revoke("nope".into())
        .await
        .assert_error(400, "SESSION_ID_MALFORMED");
    assert_eq!(up.hits(), 2, "only the two allowed calls reached the tool");

    // Caps: three live sessions per agent (one was revoked: two more fit).
    new_session(&gw, "key-a").await;
    new_session(&gw, "key-a").await;
    let r = gw.post("/v1/session/new").api_key("key-a").send().await;
    r.assert_error(429, "SESSION_LIMIT");
    assert_eq!(
        new_session(&gw, "key-b").await.len(),
        37,
        "caps are per agent"
    );
    assert!(
        !gw.log_text().contains(&sid),
        "session ids are never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_under_load_neither_overspends_nor_accepts_a_nonce_twice() {
    let up = Upstream::start(Behavior::Echo).await;
    let mut gw = gateway(
        &[("pay", &up, "require_nonce = true")],
        "[[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"\ncalls = 60\n",
        &[],
    )
    .await;
    let sid = new_session(&gw, "key-a").await;
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load = |gw_addr: std::net::SocketAddr, from: usize| {
        let (sid, accepted) = (sid.clone(), accepted.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let nonce = format!("w{from}-{i}");
                let r = Request::new(gw_addr, "POST", "/tools/pay/x")
                    .api_key("key-a")
                    .json("{}")
                    .headers(&[("X-Session-Id", &sid), ("X-Nonce", &nonce)])
                    .try_send(Duration::from_secs(5))
                    .await;
                match r {
                    Some(r) if r.status == 200 => accepted.lock().expect("lock").push(nonce),
                    Some(r) if r.status == 429 => {}
                    _ => return true, // the gateway is gone
                }
            }
            false
        })
    };
    let workers: Vec<_> = (0..4).map(|w| load(gw.data, w)).collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.kill();
    let mut interrupted = 0;
    for w in workers {
        interrupted += usize::from(w.await.expect("worker"));
    }
    assert!(interrupted > 0, "the gateway was killed under load");
    let before = accepted.lock().expect("lock").clone();
    assert!(gw.restart().await, "the gateway restarts on its state");

    // No nonce accepted before the crash is accepted again.
    for nonce in &before {
        let r = gw
            .post("/tools/pay/x")
            .api_key("key-a")
            .json("{}")
            .headers(&[("X-Session-Id", &sid), ("X-Nonce", nonce)])
            .send()
            .await;
        r.assert_error(409, "NONCE_REUSED");
    }
    // Spend the rest of the budget: never more than its 60 calls reach the tool.
    let workers: Vec<_> = (10..14).map(|w| load(gw.data, w)).collect();
    for w in workers {
        assert!(!w.await.expect("worker"), "the restarted gateway serves");
    }
    let total = accepted.lock().expect("lock").len();
    assert!(total <= 60, "{total} calls passed a budget of 60");
    assert!(up.hits() <= 60, "{} calls reached the tool", up.hits());
    assert!(
        up.hits() >= total,
        "every accepted call reached the tool ({} < {total})",
        up.hits()
    );
    let mut unique = accepted.lock().expect("lock").clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), total, "no nonce was accepted twice");
}

/// The replicas' shared configuration: a budget on `budgeted`, a rate limit on `limited`,
/// nonces on `replayed`, a budget too large to run out on `counted`.
const SHARED: &str = "[[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"\ncalls = 30\n\
    tools = [\"budgeted\"]\n\n\
    [[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"\ncalls = 1000000\n\
    tools = [\"counted\"]\n\n\
    [[limits.rate]]\nscope = \"tool\"\ncount = 10\nper = \"1m\"\ntools = [\"limited\"]\n";

async fn replicas(redis: &RedisServer, ups: [&Upstream; 4]) -> Vec<Gateway> {
    let url = redis.url();
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(
            gateway(
                &[
                    ("budgeted", ups[0], ""),
                    ("limited", ups[1], ""),
                    ("replayed", ups[2], "require_nonce = true"),
                    ("counted", ups[3], ""),
                ],
                SHARED,
                &[
                    ("LAP_STATE_BACKEND", "redis"),
                    ("LAP_STATE_REDIS_URL", &url),
                    ("LAP_STATE_DEADLINE_MS", "1000"),
                ],
            )
            .await,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_sharing_redis_hold_every_limit_together() {
    let redis = RedisServer::start().await;
    let (a, b, c) = (
        Upstream::start(Behavior::Echo).await,
        Upstream::start(Behavior::Echo).await,
        Upstream::start(Behavior::Echo).await,
    );
    let d = Upstream::start(Behavior::Echo).await;
    let gws = Arc::new(replicas(&redis, [&a, &b, &c, &d]).await);

    // A budget of 30 calls, 90 racing for it across the replicas.
    let mut tasks = Vec::new();
    for i in 0..90 {
        let gws = gws.clone();
        tasks.push(tokio::spawn(async move {
            gws[i % 3]
                .get("/tools/budgeted/x")
                .api_key("key-a")
                .send()
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            200 => ok += 1,
            _ => r.assert_error(429, "BUDGET_EXCEEDED"),
        }
    }
    assert_eq!(ok, 30, "exactly the budget passes across replicas");
    assert_eq!(a.hits(), 30);

    // A rate limit of 10 a minute (burst 10), shared: exact, or one more when a unit becomes due
    // during the test (T = 6 s). Racing calls reach Redis slightly out of the order their
    // replicas stamped them; each is judged at the latest instant its key has seen, so a call
    // stamped a few milliseconds "early" is not refused while a unit is left.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let gws = gws.clone();
        tasks.push(tokio::spawn(async move {
            gws[i % 3]
                .get("/tools/limited/x")
                .api_key("key-a")
                .send()
                .await
        }));
    }
    let mut passed = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            200 => passed += 1,
            _ => r.assert_error(429, "RATE_LIMITED"),
        }
    }
    assert!(
        (10..=11).contains(&passed),
        "{passed} passed a shared limit of 10"
    );
    assert_eq!(b.hits(), passed);

    // A session made on one replica is good on the others; a nonce is accepted once.
    let sid = new_session(&gws[0], "key-a").await;
    let mut tasks = Vec::new();
    for i in 0..9 {
        let (gws, sid) = (gws.clone(), sid.clone());
        tasks.push(tokio::spawn(async move {
            gws[i % 3]
                .post("/tools/replayed/x")
                .api_key("key-a")
                .json("{}")
                .headers(&[("X-Session-Id", &sid), ("X-Nonce", "only-once")])
                .send()
                .await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            200 => fresh += 1,
            _ => r.assert_error(409, "NONCE_REUSED"),
        }
    }
    assert_eq!(fresh, 1, "one nonce, one call, across replicas");
    for (i, gw) in gws.iter().enumerate() {
        let r = gw
            .post("/tools/replayed/x")
            .api_key("key-a")
            .json("{}")
            .headers(&[("X-Session-Id", &sid), ("X-Nonce", &format!("r{i}"))])
            .send()
            .await;
        assert_eq!(r.status, 200, "replica {i}: {}", r.text());
    }
    // Revoked through one replica's admin plane: refused on all.
    let r = Request::new(gws[1].admin, "POST", &format!("/v1/sessions/{sid}/revoke"))
        .send()
        .await;
    assert_eq!(r.status, 200);
    for gw in gws.iter() {
        let r = gw
            .post("/tools/replayed/x")
            .api_key("key-a")
            .json("{}")
            .headers(&[("X-Session-Id", &sid), ("X-Nonce", "after")])
            .send()
            .await;
        r.assert_error(403, "SESSION_INVALID");
    }
    assert_eq!(c.hits(), 4);

    let health = gws[2].get("/v1/health").send().await;
    assert_eq!(health.json()["state"]["backend"], "redis");
    for gw in gws.iter() {
        let log = gw.log_text();
        assert!(
            !log.contains(REDIS_PASSWORD),
            "the Redis password is never logged"
        );
        assert!(!health.text().contains(REDIS_PASSWORD));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_dying_under_load_refuses_calls_and_the_replicas_recover_without_restart() {
    let mut redis = RedisServer::start().await;
    let ups = [
        Upstream::start(Behavior::Echo).await,
        Upstream::start(Behavior::Echo).await,
        Upstream::start(Behavior::Echo).await,
        Upstream::start(Behavior::Echo).await,
    ];
    let gws = Arc::new(replicas(&redis, [&ups[0], &ups[1], &ups[2], &ups[3]]).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four agents' worth of load across the replicas while Redis dies and returns; every
    // answer is kept.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (gws, stop) = (gws.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = w;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = gws[i % 3]
                        .get("/tools/counted/x")
                        .api_key("key-a")
                        .send()
                        .await;
                    answers.push(r);
                    i += 1;
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    let degraded = wait_until(Duration::from_secs(5), || async {
        gws[0].get("/v1/health").send().await.json()["status"] == "degraded"
    })
    .await;
    assert!(degraded, "/v1/health shows the store down");
    let health = gws[0].get("/v1/health").send().await;
    assert_ne!(health.json()["state"]["status"], "ok");
    assert!(!health.text().contains(REDIS_PASSWORD));
    // Load goes on against the dead store for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.restart().await;
    for (i, gw) in gws.iter().enumerate() {
        let back = wait_until(Duration::from_secs(10), || async {
            gw.get("/tools/counted/x")
                .api_key("key-a")
                .send()
                .await
                .status
                == 200
        })
        .await;
        assert!(back, "replica {i} serves again once Redis is back");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut ok = 0;
    let mut refused = 0;
    for w in workers {
        for r in w.await.expect("worker") {
            match r.status {
                200 => ok += 1,
                503 => {
                    let code = r.error_code().expect("a code");
                    assert!(
                        code == "STATE_UNAVAILABLE" || code == "STATE_TIMEOUT",
                        "{code}"
                    );
                    assert_eq!(receipt_of(&r)["decision"]["code"], code.as_str());
                    assert!(!r.text().contains(REDIS_PASSWORD));
                    refused += 1;
                }
                other => panic!("unexpected {other}: {}", r.text()),
            }
        }
    }
    assert!(refused > 0, "the outage was seen under load");
    assert!(ok > 0);
    // Every call that reached the tool was answered 200, so none of the refused ones was
    // forwarded, and none went through uncounted. (The recovery probes above are 200s too.)
    // Calls counted just before the kill may reach the tool during the outage: they were
    // counted.
    assert_eq!(ups[3].hits(), ok + gws.len(), "{refused} refused");
    let healthy = wait_until(Duration::from_secs(5), || async {
        gws[0].get("/v1/health").send().await.json()["status"] == "healthy"
    })
    .await;
    assert!(healthy);
    let m = gws[0].metrics().await;
    assert!(
        metric_sum(&m, "lap_state_errors_total", &[("backend", "redis")]) >= 1.0,
        "store errors are counted"
    );
    for gw in gws.iter() {
        assert!(!gw.log_text().contains(REDIS_PASSWORD));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_tool_calls_are_limited_per_tool_with_json_rpc_errors() {
    let up = McpUpstream::start(McpUpstreamOptions::new().name("fx")).await;
    let root = repo_root().join("crates/lap-policy/src");
    let schema = format!(
        "{}\n{}",
        std::fs::read_to_string(root.join("default.cedarschema")).expect("schema"),
        std::fs::read_to_string(root.join("mcp.cedarschema")).expect("MCP schema")
    );
    let gw = GatewayBuilder::new()
        .keys_file(KEYS)
        .schema(&schema)
        .policy(
            "permit (principal, action == Action::\"tools/call\", resource == McpTool::\"fx/add\");\n\
             @require(\"nonce\")\n\
             permit (principal, action == Action::\"tools/call\", resource == McpTool::\"fx/whoami\");",
        )
        .extra_toml(&format!(
            "[mcp.servers.fx]\nupstream = \"{}\"\n\n\
             [[limits.rate]]\nscope = \"principal_tool\"\ncount = 1\nper = \"1m\"\n\
             tools = [\"fx/add\"]\n",
            up.url()
        ))
        .start()
        .await;
    let call = |id: &str| {
        gw.post("/mcp/fx")
            .api_key("key-a")
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "tools/call")
            .header("Mcp-Name", "add")
            .json(format!(
                r#"{{"jsonrpc":"2.0","id":"{id}","method":"tools/call","params":{{"name":"add","arguments":{{"a":1,"b":2}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{{"name":"t","version":"1"}},"io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
            ))
            .send()
    };
    let first = call("m1").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let r = call("m2").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let body = r.json();
    assert_eq!(body["id"], "m2");
    assert_eq!(body["error"]["code"], -32010);
    assert_eq!(body["error"]["data"]["code"], "RATE_LIMITED");
    assert!(body["error"]["data"]["retry_after_seconds"]
        .as_u64()
        .is_some());
    assert!(body["error"]["data"]["receipt_id"].as_str().is_some());
    assert_eq!(up.hit_count("tools/call:add").await, 1);

    // A policy's @require applies to the MCP tool it allows.
    let r = gw
        .post("/mcp/fx")
        .api_key("key-a")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "tools/call")
        .header("Mcp-Name", "whoami")
        .json(r#"{"jsonrpc":"2.0","id":"w1","method":"tools/call","params":{"name":"whoami","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#)
        .send()
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["code"], "SESSION_ID_REQUIRED");
    assert_eq!(r.json()["id"], "w1");
    assert_eq!(up.hit_count("tools/call:whoami").await, 0);
}

#[test]
fn check_config_validates_the_state_store_without_showing_its_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("keys.json"), KEYS).expect("keys");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[admin]\nallow_unauthenticated_loopback = true\n[auth]\napi_keys_file = \"keys.json\"\n\
         [state]\nbackend = \"redis\"\n\
         url_file = \"redis.url\"\n\n[[limits.rate]]\nscope = \"global\"\ncount = 5\nper = \"1s\"\n",
    )
    .expect("config");
    let out = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let o = check_config(&config);
    assert!(!o.status.success());
    assert!(
        out(&o).contains("cannot read the Redis URL file"),
        "{}",
        out(&o)
    );

    std::fs::write(
        dir.path().join("redis.url"),
        "http://lapgw:topsecret@10.0.0.1/\n",
    )
    .expect("url");
    let o = check_config(&config);
    assert!(!o.status.success());
    assert!(out(&o).contains("must start with redis://"), "{}", out(&o));
    assert!(!out(&o).contains("topsecret"), "{}", out(&o));

    std::fs::write(
        dir.path().join("redis.url"),
        "redis://lapgw:topsecret@10.0.0.1:6379/\n",
    )
    .expect("url");
    let o = check_config(&config);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("state: Redis (redis://…"), "{}", out(&o));
    assert!(
        out(&o).contains("1 rate limit(s), 0 budget(s)"),
        "{}",
        out(&o)
    );
    assert!(!out(&o).contains("topsecret"), "{}", out(&o));

    // A reservation that could expire while its call runs is pointed out, for the tools and
    // MCP servers a budget may count only.
    let selective = |tools: &str| {
        format!(
            "[admin]\nallow_unauthenticated_loopback = true\n\
             [auth]\napi_keys_file = \"keys.json\"\n[state]\nreservation_ttl_seconds = 5\n\
             [tools.slow]\nupstream = \"http://127.0.0.1:9\"\n\
             [tools.quick]\nupstream = \"http://127.0.0.1:9\"\nconnect_timeout_ms = 100\n\
             read_timeout_ms = 1000\nwrite_timeout_ms = 1000\n\
             [mcp.servers.shop]\nupstream = \"http://127.0.0.1:9/mcp\"\n\n\
             [[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"\ncalls = 5\ntools = {tools}\n"
        )
    };
    std::fs::write(&config, selective("[\"quick\"]")).expect("config");
    let o = check_config(&config);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("0 rate limit(s), 1 budget(s)"),
        "{}",
        out(&o)
    );
    assert!(!out(&o).contains("warning: "), "{}", out(&o));
    std::fs::write(&config, selective("[\"quick\", \"shop/refund\"]")).expect("config");
    let o = check_config(&config);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(
            "warning: mcp.servers.shop may take 334 s, longer than state.reservation_ttl_seconds (5 s)"
        ),
        "{}",
        out(&o)
    );
    std::fs::write(
        &config,
        "[admin]\nallow_unauthenticated_loopback = true\n\
         [auth]\napi_keys_file = \"keys.json\"\n[state]\nreservation_ttl_seconds = 5\n\
         [tools.slow]\nupstream = \"http://127.0.0.1:9\"\n\n\
         [[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"\ncalls = 5\n",
    )
    .expect("config");
    let o = check_config(&config);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("state: embedded store"), "{}", out(&o));
    assert!(
        out(&o).contains(
            "warning: tools.slow may take 64 s, longer than state.reservation_ttl_seconds (5 s)"
        ),
        "{}",
        out(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_whose_redis_does_not_answer_refuses_to_start_without_showing_the_url() {
    let closed = PortLease::new();
    let url = format!(
        "redis://lapgw:{REDIS_PASSWORD}@127.0.0.1:{}/",
        closed.port()
    );
    let mut gw = GatewayBuilder::new()
        .keys_file(KEYS)
        .env("LAP_STATE_BACKEND", "redis")
        .env("LAP_STATE_REDIS_URL", &url)
        .spawn();
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", gw.log_text());
    let log = gw.log_text();
    assert!(
        log.contains("state store (redis) could not be opened: STATE_UNAVAILABLE"),
        "{log}"
    );
    assert!(!log.contains(REDIS_PASSWORD), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_is_refused_like_an_unknown_one() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway(
        &[("pay", &up, "require_session = true")],
        "[sessions]\nmin_ttl_seconds = 1\n",
        &[],
    )
    .await;
    let r = gw
        .post("/v1/session/new")
        .api_key("key-a")
        .json(r#"{"ttl_seconds": 1}"#)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let sid = r.json()["session_id"].as_str().expect("id").to_string();
    let call = || {
        gw.get("/tools/pay/x")
            .api_key("key-a")
            .header("X-Session-Id", &sid)
            .send()
    };
    assert_eq!(call().await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    call().await.assert_error(403, "SESSION_INVALID");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permit_policy_can_require_a_nonce() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = GatewayBuilder::new()
        .keys_file(KEYS)
        .policy(
            "@id(\"pay\") @require(\"nonce\")\n\
             permit (principal, action == Action::\"POST\", resource == Tool::\"pay\");\n\
             @id(\"read\")\n\
             permit (principal, action == Action::\"GET\", resource == Tool::\"pay\");\n",
        )
        .tool("pay", &up.url())
        .env("LAP_STATE_DEADLINE_MS", "2000")
        .start()
        .await;
    // What the allowing policy does not require is not asked for.
    assert_eq!(
        gw.get("/tools/pay/x").api_key("key-a").send().await.status,
        200
    );
    let post = |headers: &[(&str, &str)]| {
        gw.post("/tools/pay/x")
            .api_key("key-a")
            .json("{}")
            .headers(headers)
            .send()
    };
    let r = post(&[]).await;
    r.assert_error(400, "SESSION_ID_REQUIRED");
    assert_eq!(receipt_of(&r)["decision"]["policy_ids"][0], "pay");
    let sid = new_session(&gw, "key-a").await;
    post(&[("X-Session-Id", &sid)])
        .await
        .assert_error(400, "NONCE_REQUIRED");
    let ok = post(&[("X-Session-Id", &sid), ("X-Nonce", "p1")]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    post(&[("X-Session-Id", &sid), ("X-Nonce", "p1")])
        .await
        .assert_error(409, "NONCE_REUSED");
    assert_eq!(up.hits(), 2);
}
