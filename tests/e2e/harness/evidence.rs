//! The gateway's evidence as an auditor meets it: checkpoints and audit packs, read from the
//! admin plane. Every wait for background work (checkpoints) is bounded.

use crate::Gateway;
use std::time::Duration;

impl Gateway {
    /// The admin plane's audit pack for `query` (e.g. `from=3&agent=a`); panics unless the
    /// answer is 200 with a tar archive.
    pub async fn audit_pack(&self, query: &str) -> Vec<u8> {
        let path = format!("/v1/audit-pack?{query}");
        let r = self.admin_get(&path).send().await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/x-tar"));
        r.body
    }

    /// Waits (up to 5 s) until the latest signed checkpoint covers the whole receipt log;
    /// returns the checkpoint note and the log size. Panics if it does not happen.
    pub async fn settled_checkpoint(&self) -> (String, u64) {
        for _ in 0..100 {
            let ready = self.admin_get("/readyz").send().await;
            let size = ready.json()["log_size"].as_u64().unwrap_or(0);
            let cp = self.admin_get("/v1/log/checkpoint").send().await;
            let cp_size: u64 = cp
                .text()
                .lines()
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if cp.status == 200 && cp_size == size && size > 0 {
                return (cp.text(), size);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no checkpoint covering the log within 5 s");
    }
}
