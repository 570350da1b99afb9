//! Closed-loop HTTP/1.1 load over TLS, optionally presenting a client certificate.
//!
//! The benchmark harness drives plain HTTP with `wrk`, which cannot present a client
//! certificate; this tool measures the mTLS path the same way: `--connections` keep-alive
//! connections (one TLS handshake each, outside the measured window), each sending the next
//! request as soon as the previous answer is read, for `--seconds`. It prints one JSON object:
//! `{"requests","rps","p50_ms","p99_ms","non_2xx","errors"}`.
//!
//! ```text
//! tls-load --url https://127.0.0.1:8443/tools/echo/x --ca ca.crt [--cert c.crt --key c.key]
//!          [--header 'K: V']... [--method POST --body-file body.json]
//!          [--connections 32] [--seconds 10]
//! ```

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    host: String,
    port: u16,
    path: String,
    ca: String,
    cert: Option<(String, String)>,
    headers: Vec<String>,
    method: String,
    body: Vec<u8>,
    connections: usize,
    seconds: u64,
}

fn parse_args() -> Result<Args, Error> {
    let mut it = std::env::args().skip(1);
    let (mut url, mut ca, mut cert, mut key) = (None, None, None, None);
    let mut a = Args {
        host: String::new(),
        port: 443,
        path: "/".into(),
        ca: String::new(),
        cert: None,
        headers: vec![],
        method: "GET".into(),
        body: vec![],
        connections: 32,
        seconds: 10,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--ca" => ca = Some(value()?),
            "--cert" => cert = Some(value()?),
            "--key" => key = Some(value()?),
            "--header" => a.headers.push(value()?),
            "--method" => a.method = value()?,
            "--body-file" => a.body = std::fs::read(value()?)?,
            "--connections" => a.connections = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("https://")
        .ok_or("--url must be https://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority.rsplit_once(':').ok_or("--url needs a port")?;
    a.host = host.to_string();
    a.port = port.parse()?;
    a.path = if path.is_empty() {
        "/".into()
    } else {
        path.into()
    };
    a.ca = ca.ok_or("--ca is required")?;
    a.cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    if a.connections == 0 || a.seconds == 0 || a.seconds > 600 {
        return Err("--connections must be positive and --seconds in 1..=600".into());
    }
    Ok(a)
}

fn tls_config(a: &Args) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&a.ca)? {
        roots.add(c?)?;
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    Ok(match &a.cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    non_2xx: u64,
    errors: u64,
}

/// Reads one response: the status and the body (Content-Length framing only, which is what
/// the gateway and the benchmark upstream send).
async fn read_response<S: AsyncReadExt + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<u16, Error> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status: u16 = head.split(' ').nth(1).ok_or("no status")?.parse()?;
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse())
                .transpose()?
                .ok_or("no content-length")?;
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 16384];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err("connection closed mid-body".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return Ok(status);
        }
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(
    a: Arc<Args>,
    connector: TlsConnector,
    request: Arc<Vec<u8>>,
    start: Arc<tokio::sync::Barrier>,
    deadline: Arc<std::sync::OnceLock<Instant>>,
) -> Tally {
    let mut tally = Tally::default();
    let stream = async {
        let tcp = TcpStream::connect((a.host.as_str(), a.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(a.host.clone())?;
        Ok::<_, Error>(connector.connect(name, tcp).await?)
    }
    .await;
    // Two rendezvous: every handshake done, then the clock set.
    start.wait().await;
    start.wait().await;
    let Ok(mut s) = stream else {
        tally.errors += 1;
        return tally;
    };
    let Some(&end) = deadline.get() else {
        return tally;
    };
    let mut buf = Vec::with_capacity(32768);
    while Instant::now() < end {
        let t = Instant::now();
        if s.write_all(&request).await.is_err() {
            tally.errors += 1;
            return tally;
        }
        match read_response(&mut s, &mut buf).await {
            Ok(status) => {
                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                tally.latencies_us.push(us);
                if !(200..300).contains(&status) {
                    tally.non_2xx += 1;
                }
            }
            Err(_) => {
                tally.errors += 1;
                return tally;
            }
        }
    }
    tally
}

fn main() -> Result<(), Error> {
    let a = Arc::new(parse_args()?);
    let connector = TlsConnector::from(Arc::new(tls_config(&a)?));
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Length: {}\r\n",
        a.method,
        a.path,
        a.host,
        a.port,
        a.body.len()
    );
    for h in &a.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(&a.body);
    let request = Arc::new(request);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tallies, elapsed) = rt.block_on(async {
        // Every connection finishes its handshake before the clock starts.
        let start = Arc::new(tokio::sync::Barrier::new(a.connections + 1));
        let deadline = Arc::new(std::sync::OnceLock::new());
        let tasks: Vec<_> = (0..a.connections)
            .map(|_| {
                tokio::spawn(connection(
                    a.clone(),
                    connector.clone(),
                    request.clone(),
                    start.clone(),
                    deadline.clone(),
                ))
            })
            .collect();
        start.wait().await;
        let began = Instant::now();
        let _ = deadline.set(began + Duration::from_secs(a.seconds));
        start.wait().await;
        let mut tallies = Vec::new();
        for t in tasks {
            tallies.push(t.await.unwrap_or_default());
        }
        (tallies, began.elapsed())
    });
    let mut all: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    let requests = all.len();
    println!(
        "{}",
        serde_json::json!({
            "requests": requests,
            "rps": requests as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "non_2xx": tallies.iter().map(|t| t.non_2xx).sum::<u64>(),
            "errors": tallies.iter().map(|t| t.errors).sum::<u64>(),
        })
    );
    Ok(())
}
