//! A real `redis-server` for gateways that share their state, started by the test.
//!
//! As the state layer's own tests run it: on a leased loopback port, in its own temporary
//! directory, with persistence (AOF, `appendfsync always`, so a restarted server still knows
//! every nonce) and a password, so every gateway authenticates — and the tests can check that
//! the password never shows in a gateway's logs, health or error bodies. It can be killed
//! (SIGKILL: a crash) and restarted on the same port and data, as a Redis outage is. Killed
//! when dropped.

use crate::ports::PortLease;
use crate::process::{wait_until, ChildGuard};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The password of the default user (what the URL carries).
pub const REDIS_PASSWORD: &str = "e2e-redis-s3cret-password";

pub struct RedisServer {
    child: Option<ChildGuard>,
    lease: PortLease,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` (or `$LAP_REDIS_SERVER`) and waits until it answers `PING`.
    pub async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let lease = PortLease::new();
        let conf = format!(
            "bind 127.0.0.1\nport {port}\ndir {dir}\nsave \"\"\nappendonly yes\n\
             appendfsync always\ndaemonize no\nloglevel warning\nlogfile {dir}/redis.log\n\
             requirepass {REDIS_PASSWORD}\n",
            port = lease.port(),
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("redis.conf"), conf).expect("redis.conf");
        let mut s = RedisServer {
            child: None,
            lease,
            dir,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let bin = std::env::var("LAP_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.arg(self.dir.path().join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(ChildGuard::spawn(&mut cmd));
        let port = self.lease.port();
        let up = wait_until(Duration::from_secs(20), || async move { ping(port) }).await;
        assert!(
            up,
            "redis-server did not answer on port {port}:\n{}",
            std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
        );
    }

    /// `redis://:<password>@127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/", self.lease.port())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL (a crash, not a shutdown), reaped.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Starts it again on the same port and data (the AOF replays).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

/// `AUTH` + `PING` over a raw socket, within a second.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let cmd = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{REDIS_PASSWORD}\r\n*1\r\n$4\r\nPING\r\n",
        REDIS_PASSWORD.len()
    );
    if s.write_all(cmd.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                got.extend_from_slice(&buf[..k]);
                if got.ends_with(b"+PONG\r\n") {
                    return true;
                }
            }
        }
    }
    false
}
