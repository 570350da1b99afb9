//! Benchmark baseline: the smallest useful Pingora reverse proxy (no auth, no policy).
//!
//! Environment: `LISTEN` (default 127.0.0.1:6188), `UPSTREAM` (default 127.0.0.1:8080),
//! `THREADS` (default 1). Same allocator and pool settings as `lap-gateway`, so the benchmark
//! compares the gateway's work, not its tuning.
//!
//! `LIKE_GATEWAY=1` configures it as the gateway configures a tool's upstream leg, without the
//! gateway's decisions: the same per-peer timeouts (connect, total connect, read, write, idle)
//! and verification flags, and the same headers inserted (`Host`, `X-Request-Id` both ways,
//! `X-Forwarded-For`, the agent header, `X-Lap-Decision-Policies`). The ratio against this
//! one isolates what authentication, routing and policy cost from what any proxy set up like
//! the gateway pays.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct PassThrough {
    upstream: String,
    like_gateway: bool,
    seq: std::sync::atomic::AtomicU64,
}

/// Per request: the id sent both ways when configured like the gateway.
struct Ctx(String);

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = Ctx;
    fn new_ctx(&self) -> Ctx {
        if !self.like_gateway {
            return Ctx(String::new());
        }
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ctx(format!("a1b2c3d4e5f6-{n:x}"))
    }

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream.as_str(), false, String::new());
        if self.like_gateway {
            let o = &mut peer.options;
            o.connection_timeout = Some(std::time::Duration::from_secs(2));
            o.total_connection_timeout = Some(std::time::Duration::from_secs(4));
            o.read_timeout = Some(std::time::Duration::from_secs(30));
            o.write_timeout = Some(std::time::Duration::from_secs(30));
            o.idle_timeout = Some(std::time::Duration::from_secs(60));
            o.verify_cert = true;
            o.verify_hostname = true;
            peer.group_key = 1;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.like_gateway {
            up.insert_header("host", self.upstream.as_str())?;
            up.insert_header("x-lap-agent-id", "bench-agent")?;
            up.insert_header("x-request-id", ctx.0.as_str())?;
            if let Some(ip) = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
            {
                up.insert_header("x-forwarded-for", ip.to_string())?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.like_gateway {
            resp.insert_header("x-request-id", ctx.0.as_str())?;
            resp.insert_header("x-lap-decision-policies", "bench")?;
        }
        Ok(())
    }
}

fn main() {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let listen = var("LISTEN", "127.0.0.1:6188");
    let upstream = var("UPSTREAM", "127.0.0.1:8080");
    let threads = var("THREADS", "1").parse().unwrap_or(1);
    let like_gateway = var("LIKE_GATEWAY", "0") == "1";
    let tmp = std::env::temp_dir();
    let port = listen.rsplit(':').next().unwrap_or("0").to_string();
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 1024,
        pid_file: tmp
            .join(format!("pingora-passthrough-{port}.pid"))
            .display()
            .to_string(),
        upgrade_sock: tmp
            .join(format!("pingora-passthrough-{port}.sock"))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(
        &server.configuration,
        PassThrough {
            upstream,
            like_gateway,
            seq: std::sync::atomic::AtomicU64::new(0),
        },
    );
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
