//! Test harness: real stores. The embedded backend on a file in a temporary directory; Redis
//! as a real `redis-server` started by the test on a free loopback port, in its own temporary
//! directory, with persistence (AOF, fsync always) and an ACL user — the default user has a
//! password, so every connection authenticates, with `redis://lapgw:<password>@127.0.0.1:<port>/`,
//! and the user has the rights `docs/limits.md` recommends for the gateway — keys under `lapt*`
//! only, `+@read +@write +@scripting +ping` — which checks that every key a script touches is
//! under the configured prefix and that nothing more is needed.
#![allow(dead_code)]

use lap_state::{Options, RedisOptions, State};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "lapgw";
pub const PASSWORD: &str = "s3cret-test-password";
/// The default user keeps a password rather than being turned off: Redis 7.0 replays the
/// MULTI/EXEC blocks of its AOF as the default user, and refuses them when it is off (the
/// data written by scripts would be lost at restart).
pub const ADMIN_PASSWORD: &str = "admin-test-password";

/// Generous for functional tests on a loaded 2-core machine; the deadline tests use their own.
pub const TEST_DEADLINE: Duration = Duration::from_secs(3);

pub fn options(prefix: &str) -> Options {
    Options {
        prefix: prefix.to_string(),
        deadline: TEST_DEADLINE,
        ..Options::default()
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// TLS material for a `rediss://` server: CA certificate, server certificate and key (PEM).
pub struct Tls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Tls {
    pub fn generate() -> Tls {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "lap-state test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        leaf.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        Tls {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    tls: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    pub fn start_tls(tls: &Tls) -> RedisServer {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&Tls>) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "bind 127.0.0.1\n\
             dir {dir}\n\
             save \"\"\n\
             appendonly yes\n\
             appendfsync always\n\
             daemonize no\n\
             loglevel warning\n\
             logfile {dir}/redis.log\n\
             user default on >{ADMIN_PASSWORD} ~* &* +@all\n\
             user {USER} on >{PASSWORD} ~lapt* +@read +@write +@scripting +ping\n",
            dir = dir.path().display()
        );
        if let Some(tls) = tls {
            let write = |name: &str, pem: &str| {
                let p = dir.path().join(name);
                std::fs::write(&p, pem).unwrap();
                p.display().to_string()
            };
            conf += &format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n",
                write("server.pem", &tls.cert_pem),
                write("server.key", &tls.key_pem),
                write("ca.pem", &tls.ca_pem),
            );
        } else {
            conf += &format!("port {port}\n");
        }
        std::fs::write(dir.path().join("redis.conf"), conf).unwrap();
        let mut s = RedisServer {
            child: None,
            port,
            dir,
            tls: tls.is_some(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = std::env::var("LAP_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .arg(self.dir.path().join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} (tests/run.sh installs redis-server): {e}")
            });
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait().unwrap() {
                    let log = std::fs::read_to_string(self.dir.path().join("redis.log"))
                        .unwrap_or_default();
                    panic!("redis-server exited: {status}\n{log}");
                }
            }
            if self.tls {
                // A TCP connection is all that can be checked without a TLS client here.
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            } else if ping(self.port) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server did not come up on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{USER}:{PASSWORD}@127.0.0.1:{}/", self.port)
    }

    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and directory (its AOF replays).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// PING with AUTH over a raw socket.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let cmd = format!(
        "*3\r\n$4\r\nAUTH\r\n${}\r\n{USER}\r\n${}\r\n{PASSWORD}\r\n*1\r\n$4\r\nPING\r\n",
        USER.len(),
        PASSWORD.len()
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

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Redis,
}

/// A store for one test, and the ability to open more independent clients of it ("replicas":
/// another SQLite connection with its own worker on the same file, or another Redis client).
pub struct Env {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub redis: Option<RedisServer>,
    pub state: State,
}

impl Env {
    pub async fn new(kind: Kind) -> Env {
        Env::with_options(kind, options("lapt:")).await
    }

    pub async fn with_options(kind: Kind, options: Options) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let redis = (kind == Kind::Redis).then(RedisServer::start);
        let state = open(kind, dir.path(), redis.as_ref(), options).await;
        Env {
            kind,
            dir,
            redis,
            state,
        }
    }

    /// Another independent client of the same store.
    pub async fn replica(&self, options: Options) -> State {
        open(self.kind, self.dir.path(), self.redis.as_ref(), options).await
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }
}

pub async fn open(kind: Kind, dir: &Path, redis: Option<&RedisServer>, options: Options) -> State {
    match kind {
        Kind::Embedded => State::open_embedded(dir.join("state.db"), options).unwrap(),
        Kind::Redis => {
            State::connect_redis(&redis.unwrap().url(), RedisOptions::default(), options)
                .await
                .unwrap()
        }
    }
}
