//! Shared set-up of the audit-pack tests: two agents in one group, a read-only policy, and a
//! gateway with some history in its receipt log.

use crate::{key_hash, Behavior, Gateway, GatewayBuilder, Upstream};

pub const KEY_A: &str = "audit-test-key-a-0123456789";
pub const KEY_B: &str = "audit-test-key-b-0123456789";

/// `agent-a` and `agent-b`, both in group `g`.
pub fn keys() -> String {
    format!(
        r#"{{"keys": [
            {{"id": "a", "hash": "{}", "agent_id": "agent-a", "groups": ["g"]}},
            {{"id": "b", "hash": "{}", "agent_id": "agent-b", "groups": ["g"]}}]}}"#,
        key_hash(KEY_A),
        key_hash(KEY_B)
    )
}

pub const POLICY: &str =
    r#"@id("g-read") permit(principal in Group::"g", action in Action::"read", resource);"#;

/// The `[log]` section of most gateways here (default origin, frequent checkpoints).
pub const LOG_TOML: &str = "[log]\ncheckpoint_every = 8\ncheckpoint_interval_ms = 50";

/// Appended to a gateway's TOML: one DSSE envelope per receipt instead of the default batched
/// evidence (the mode the tests of envelope-level tampering need).
pub const PER_RECEIPT: &str = "\n[evidence]\nmode = \"per_receipt\"\n";

/// A gateway with two tools, after `rounds` rounds of calls by both agents to both tools, then
/// a denied write and an unauthenticated call (denial receipts). Each allowed call logs two
/// receipts (decision, completion): `6 * rounds + 2` entries in all.
pub async fn busy_gateway(rounds: usize, log_toml: &str) -> (Upstream, Gateway) {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = GatewayBuilder::new()
        .tool("alpha", &up.url())
        .tool("beta", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .extra_toml(log_toml)
        .start()
        .await;
    for i in 0..rounds {
        for (key, tool) in [(KEY_A, "alpha"), (KEY_B, "beta"), (KEY_A, "beta")] {
            get_ok(&gw, &format!("/tools/{tool}/{i}"), key).await;
        }
    }
    gw.request("DELETE", "/tools/alpha/x")
        .api_key(KEY_B)
        .send()
        .await;
    gw.get("/tools/alpha/x").api_key("nope").send().await;
    (up, gw)
}

/// `GET path` on the data plane with this API key; asserts that it is allowed (200).
pub async fn get_ok(gw: &Gateway, path: &str, key: &str) {
    let r = gw.get(path).api_key(key).send().await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
}
