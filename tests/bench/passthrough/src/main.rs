//! Benchmark baseline: the smallest useful Pingora reverse proxy (no auth, no policy).
//!
//! Environment: `LISTEN` (default 127.0.0.1:6188), `UPSTREAM` (default 127.0.0.1:8080),
//! `THREADS` (default 1). Same allocator and pool settings as `lap-gateway`, so the benchmark
//! compares the gateway's work, not its tuning.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct PassThrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let listen = var("LISTEN", "127.0.0.1:6188");
    let upstream = var("UPSTREAM", "127.0.0.1:8080");
    let threads = var("THREADS", "1").parse().unwrap_or(1);
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
    let mut svc = http_proxy_service(&server.configuration, PassThrough { upstream });
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
