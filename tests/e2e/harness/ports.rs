//! Loopback ports for servers under test, leased so that parallel tests (and parallel test
//! binaries) are never handed the same port. The rule is documented on [`PortLease`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A loopback port reserved for this test process.
///
/// Probing with `bind(127.0.0.1:0)` and releasing races with every other process doing the
/// same (parallel test binaries, several `cargo test` runs): two gateways can be handed the same
/// port. Ports therefore come from outside the kernel's ephemeral range (so no `bind(0)` or
/// outgoing connection takes them) and each is leased through an exclusive lock file in
/// `$TMPDIR/lap-e2e-ports` that other harness processes respect. The lease ends when it is
/// dropped (or the process exits).
pub struct PortLease {
    port: u16,
    _lock: std::fs::File,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// A fresh lease on a port that is free right now.
    pub fn new() -> PortLease {
        let dir = std::env::temp_dir().join("lap-e2e-ports");
        std::fs::create_dir_all(&dir).expect("port lock dir");
        let (lo, hi) = lease_range(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .ok()
                .as_deref(),
        );
        let mut x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32)
            ^ NEXT_LEASE.fetch_add(1, Ordering::Relaxed) as u64;
        for _ in 0..4096 {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = lo + (x % u64::from(hi - lo)) as u16;
            let Ok(lock) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{port}.lock")))
            else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return PortLease { port, _lock: lock };
            }
        }
        panic!("no free loopback port in {lo}..{hi}");
    }
}

impl Default for PortLease {
    fn default() -> Self {
        Self::new()
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

static NEXT_LEASE: AtomicUsize = AtomicUsize::new(0);

/// Ports below the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, given as its
/// text), or above it.
fn lease_range(ephemeral: Option<&str>) -> (u16, u16) {
    let (lo, hi) = ephemeral
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if lo >= 12_000 {
        (10_000, lo)
    } else if hi <= 63_000 {
        (hi + 1, 65_535)
    } else {
        (10_000, 30_000)
    }
}

/// Leases kept until the process exits (for [`free_port`]).
static LEAKED: Mutex<Vec<PortLease>> = Mutex::new(Vec::new());

/// A free loopback port, reserved for the rest of this test process (see [`PortLease`]): no
/// other harness user is handed it, so it can be given to a server, or left closed.
pub fn free_port() -> u16 {
    let lease = PortLease::new();
    let port = lease.port();
    LEAKED.lock().expect("leases").push(lease);
    port
}

/// `N` distinct free loopback ports, reserved like [`free_port`].
pub fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| free_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_stay_out_of_the_ephemeral_range() {
        assert_eq!(lease_range(Some("32768\t60999\n")), (10_000, 32768));
        assert_eq!(lease_range(Some("1024 40000")), (40_001, 65_535));
        assert_eq!(lease_range(Some("1024 65000")), (10_000, 30_000));
        assert_eq!(lease_range(Some("garbage")), (10_000, 32768));
        assert_eq!(lease_range(None), (10_000, 32768));
    }

    #[test]
    fn leased_ports_are_distinct_and_bindable() {
        let leases: Vec<PortLease> = (0..8).map(|_| PortLease::new()).collect();
        let mut ports: Vec<u16> = leases.iter().map(PortLease::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), leases.len());
        for l in &leases {
            assert_eq!(l.addr(), loopback(l.port()));
            std::net::TcpListener::bind(l.addr()).expect("a leased port is free");
        }
    }
}
