//! Readiness: `/readyz` is 200 only once the data port answers `/v1/health` with this
//! process's random instance id. "Something answers on the port" is not enough: Pingora keeps
//! retrying a port another process holds, and a stale or foreign listener must never make this
//! process look ready.

use crate::pipeline::route::HEALTH_PATH;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one probe of the data port may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether the data listener has been seen serving this process. Checked by a request to the
/// data port's health route until it succeeds once; after that the answer is cached (a data
/// listener does not go away while the process lives).
pub struct Readiness {
    probe: SocketAddr,
    instance: String,
    confirmed: AtomicBool,
    /// Probe over TLS (`[tls] plain_listener = false`): the material in force, and whether
    /// the listener requires client certificates (see `tls::probe`).
    tls: Option<(std::sync::Arc<crate::tls::reload::TlsMaterial>, bool)>,
}

impl Readiness {
    pub fn new(data_listen: SocketAddr, instance: String) -> Self {
        // A wildcard listen address is probed on loopback of the same family.
        let ip = match data_listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Readiness {
            probe: SocketAddr::new(ip, data_listen.port()),
            instance,
            confirmed: AtomicBool::new(false),
            tls: None,
        }
    }

    /// Probes the HTTPS data listener at `listen` instead (there is no plain one).
    pub fn over_tls(
        self,
        listen: SocketAddr,
        material: std::sync::Arc<crate::tls::reload::TlsMaterial>,
        client_cert_required: bool,
    ) -> Self {
        Readiness {
            tls: Some((material, client_cert_required)),
            ..Readiness::new(listen, self.instance)
        }
    }

    pub async fn data_plane_ready(&self) -> bool {
        if self.confirmed.load(Ordering::Relaxed) {
            return true;
        }
        let seen = tokio::time::timeout(PROBE_TIMEOUT, self.ask_data_port())
            .await
            .unwrap_or(false);
        if seen {
            self.confirmed.store(true, Ordering::Relaxed);
        }
        seen
    }

    async fn ask_data_port(&self) -> bool {
        let Ok(conn) = TcpStream::connect(self.probe).await else {
            return false;
        };
        match &self.tls {
            None => self.ask_health(conn).await,
            Some((material, required)) => match crate::tls::probe::connect(conn, material).await {
                None => false,
                // The handshake proved our key; no health answer without a client certificate.
                Some(_) if *required => true,
                Some(tls) => self.ask_health(tls).await,
            },
        }
    }

    async fn ask_health<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        mut conn: S,
    ) -> bool {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            HEALTH_PATH, self.probe
        );
        if conn.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        // The health body is small; a bounded read keeps a hostile squatter from feeding us.
        let mut answer = Vec::with_capacity(1024);
        let mut limited = conn.take(16 * 1024);
        if limited.read_to_end(&mut answer).await.is_err() {
            return false;
        }
        let quoted = format!("\"instance\":\"{}\"", self.instance);
        answer.starts_with(b"HTTP/1.1 200")
            && answer.windows(quoted.len()).any(|w| w == quoted.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A stand-in for whatever holds the data port: answers every connection with `body`.
    async fn squatter(body: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn ready_only_when_the_data_port_answers_with_our_instance() {
        let ours = squatter(r#"{"status":"healthy","instance":"abc123"}"#).await;
        let other = squatter(r#"{"status":"healthy","instance":"zzz999"}"#).await;
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();

        assert!(
            !Readiness::new(other, "abc123".into())
                .data_plane_ready()
                .await
        );
        assert!(
            !Readiness::new(closed, "abc123".into())
                .data_plane_ready()
                .await
        );
        let r = Readiness::new(ours, "abc123".into());
        assert!(r.data_plane_ready().await);
        assert!(r.confirmed.load(Ordering::Relaxed), "success is cached");
    }

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        let r = Readiness::new("0.0.0.0:8080".parse().unwrap(), "x".into());
        assert_eq!(r.probe, "127.0.0.1:8080".parse().unwrap());
        let r = Readiness::new("[::]:8080".parse().unwrap(), "x".into());
        assert_eq!(r.probe, "[::1]:8080".parse().unwrap());
    }
}
