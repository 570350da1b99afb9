//! The client address, honouring `X-Forwarded-For` only from trusted proxies.
//!
//! With `--proxy-headers`, the gateway walks `X-Forwarded-For` from the right and takes the first
//! address that is not a trusted proxy (`forwarded_allow_ips`), as nginx's `real_ip_recursive`
//! does. Without it, or when the peer itself is not trusted, the socket peer is the client.

use crate::config::Config;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use std::net::IpAddr;

pub fn client_ip(session: &Session, config: &Config) -> Option<IpAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    if !config.proxy_headers || !trusted(peer, config) {
        return Some(peer);
    }
    let chain: Vec<IpAddr> = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect();
    Some(pick(peer, &chain, config))
}

/// The TCP peer of a connection whose request was not read (or not yet): the only address
/// there is. Behind a trusted proxy that is the proxy.
pub fn peer_ip(session: &ServerSession) -> Option<IpAddr> {
    Some(session.client_addr()?.as_inet()?.ip())
}

/// The peer address whose open connections are capped: `None` for a trusted proxy (with
/// `--proxy-headers`: its connections carry every client's requests) or a peer without one.
pub fn capped_peer(session: &ServerSession, config: &Config) -> Option<IpAddr> {
    peer_ip(session).filter(|ip| !(config.proxy_headers && trusted(*ip, config)))
}

fn trusted(ip: IpAddr, config: &Config) -> bool {
    config.forwarded_allow_ips.iter().any(|n| n.contains(&ip))
}

fn pick(peer: IpAddr, chain: &[IpAddr], config: &Config) -> IpAddr {
    let mut client = peer;
    for ip in chain.iter().rev() {
        client = *ip;
        if !trusted(*ip, config) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, CliOverrides};
    use std::collections::BTreeMap;

    #[test]
    fn rightmost_untrusted_wins() {
        let env: BTreeMap<String, String> = [
            ("LAP_API_KEYS_JSON".to_string(), "{}".to_string()),
            (
                "LAP_FORWARDED_ALLOW_IPS".to_string(),
                "127.0.0.1,10.0.0.0/8".to_string(),
            ),
        ]
        .into();
        let c = load(
            None,
            &env,
            &CliOverrides {
                proxy_headers: true,
                forwarded_allow_ips: None,
            },
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let peer = ip("127.0.0.1");
        // A spoofed left-most entry is ignored; the first untrusted from the right is taken.
        assert_eq!(
            pick(
                peer,
                &[ip("6.6.6.6"), ip("203.0.113.9"), ip("10.1.2.3")],
                &c
            ),
            ip("203.0.113.9")
        );
        assert_eq!(pick(peer, &[], &c), peer);
        assert!(!trusted(ip("192.0.2.1"), &c));
    }
}
