//! Malformed: requests Pingora refuses before any phase runs, answered like every other
//! refusal.
//!
//! Pingora reads and validates the request header itself (`read_request()`): a header it
//! cannot parse, or whose framing or authority is ambiguous, never becomes a request the
//! gateway sees, and a CONNECT request is refused right after. Those are the requests a
//! smuggling attempt or a probe sends, so they must not be the ones that leave no trace. The
//! vendored proxy (`LAP-PATCH.md`, patch 2) hands each such refusal to
//! `ProxyHttp::early_request_error`, and the gateway answers it as a refusal on arrival: the
//! JSON error with a stable code and a fresh request id, `Connection: close`, a denial receipt
//! that names no method and no path (as for a header flood), a count in `lap_requests_total`
//! (tool `-`, decision `deny`) and an access-log line.
//!
//! Nothing of the request is read. After a parse error there is no request header, or one that
//! failed validation; the code comes from Pingora's error alone: its type, the `httparse`
//! error behind it, and the wording of Pingora's own checks — fixed strings compared whole, or
//! for the messages Pingora formats, their fixed prefix (and for an invalid target, only its
//! length): the request bytes some of them quote are never matched or repeated.
//!
//! | Pingora refuses | answer |
//! |---|---|
//! | more than 256 header lines; a header block still incomplete after 1 MiB; a request target over 65,534 bytes | 431 `HEADERS_TOO_LARGE` |
//! | a `Content-Length` that is not a decimal number (`+12`, `0x10`, `-1`), or several that differ | 400 `BAD_CONTENT_LENGTH` |
//! | a `Transfer-Encoding` whose last coding is not `chunked` (`xchunked`), or any on HTTP/1.0 | 400 `BAD_TRANSFER_ENCODING` |
//! | two `Host` headers, userinfo in `Host` or the target, a `Host` that differs from the target's authority | 400 `BAD_HOST` |
//! | any other syntax error: obs-fold, NUL or other control bytes in a header, a bad request line or version, bytes that are not HTTP (TLS on the plain port) | 400 `MALFORMED_REQUEST` |
//! | CONNECT | 405 `METHOD_NOT_ALLOWED` |
//! | a request header still incomplete when its deadline passed (patch 3, `[server] header_timeout_ms`) | 408 `REQUEST_HEADER_TIMEOUT` |
//! | a connection whose address already has its share open (patch 3, refused before anything is read, `[admission] max_connections_per_address`) | 429 `TOO_MANY_CONNECTIONS` |
//!
//! Counts and headers under Pingora's caps (the gateway's own `max_header_count` and
//! `max_header_bytes` are lower) reach admission and get the same 431 there (`bounds`).

use super::client_ip;
use super::error::ApiError;
use super::evidence::{self, Record};
use super::observe;
use super::request::{Dialect, Reached, Refused, RequestCtx, RequestState};
use super::respond;
use super::Gateway;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType, ImmutStr};

impl Gateway {
    /// `early_request_error`: the denial receipt, then the JSON error, then the count and the
    /// access line (no `logging` phase follows).
    ///
    /// Nothing verified the sender: the refusal is admitted per TCP peer address first
    /// (`flood`), and may become a 429 or be counted into an aggregate receipt.
    pub(super) async fn refuse_unread(&self, session: &mut ServerSession, status: u16, e: &Error) {
        let mut ctx = RequestCtx::new(self.ids.next_id());
        let mut error = classify(status, e);
        if error.code == "REQUEST_HEADER_TIMEOUT" {
            self.metrics
                .admission_rejections
                .with_label_values(&["header_timeout"])
                .inc();
        }
        let reached = Reached::Arrival;
        let slot = self.flood.admit_refusal(
            client_ip::peer_ip(session),
            &mut error,
            self.evidence.is_some(),
        );
        let receipt = match (&self.evidence, slot) {
            (Some(ev), Some(_slot)) => {
                evidence::issue_denial(
                    ev,
                    &ctx.id,
                    Record::unread(true),
                    &reached,
                    error.code,
                    || self.policy_digest(),
                )
                .await
            }
            _ => None,
        };
        respond::unread_error(session, &ctx.id, &error, receipt.as_ref()).await;
        let written = session.response_written().map_or(0, |r| r.status.as_u16());
        ctx.state = RequestState::Refused(Box::new(Refused {
            error,
            reached,
            dialect: Dialect::Rest,
            receipt,
        }));
        observe::finished(&self.metrics, &self.tool_metrics, &ctx, None, written, None);
    }
}

/// The refusal for what Pingora refused: `status` is what Pingora would have answered (400
/// after a parse error, 405 for CONNECT).
pub fn classify(status: u16, e: &Error) -> ApiError {
    match (status, e.etype()) {
        (405, _) | (_, ErrorType::HTTPStatus(405)) => ApiError::method_not_allowed(),
        // Patch 3: the header deadline, and the gateway's own refusal of a connection.
        (408, ErrorType::ReadTimedout) => ApiError::header_timeout(),
        (429, ErrorType::HTTPStatus(429)) => ApiError::too_many_connections(),
        (400, ErrorType::InvalidHTTPHeader) => invalid_header(e),
        // Not produced by Pingora 0.9.1; kept honest should a later one pass another status.
        (status, _) => ApiError::new(
            status,
            "REQUEST_REJECTED",
            "the HTTP layer refused the request",
        ),
    }
}

/// The longest request target `http::Uri` holds; Pingora refuses a longer one.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// Which of Pingora's header checks failed.
fn invalid_header(e: &Error) -> ApiError {
    let cause = e.root_cause();
    if let Some(p) = cause.downcast_ref::<httparse::Error>() {
        return match p {
            httparse::Error::TooManyHeaders => ApiError::headers_too_large(),
            // A continuation line (obs-fold), a space before the colon, a control byte.
            httparse::Error::HeaderName => ApiError::malformed("invalid header name"),
            // NUL and other control bytes.
            httparse::Error::HeaderValue => ApiError::malformed("invalid header value"),
            httparse::Error::NewLine => ApiError::malformed("invalid line ending"),
            // The method or target (also what TLS bytes on the plain port look like).
            httparse::Error::Token => ApiError::malformed("invalid request line"),
            httparse::Error::Version => ApiError::malformed("invalid HTTP version"),
            httparse::Error::Status => ApiError::malformed("invalid request"),
        };
    }
    match &e.context {
        Some(ImmutStr::Static(why)) => checked(why),
        // Formatted by Pingora: only its fixed prefixes are looked at (the rest quotes request
        // bytes or numbers).
        Some(ImmutStr::Owned(why)) if why.starts_with("Request header larger than ") => {
            ApiError::headers_too_large()
        }
        Some(ImmutStr::Owned(why)) if why.starts_with("Content-Length ") => {
            ApiError::bad_content_length()
        }
        // "invalid uri <target>": only the target's length is looked at, against the longest
        // URI the `http` crate holds (the cause is not kept).
        Some(ImmutStr::Owned(why)) => match why.strip_prefix("invalid uri ") {
            Some(target) if target.len() > MAX_URI_LEN => ApiError::target_too_long(),
            Some(_) => ApiError::malformed("invalid request target"),
            None => ApiError::malformed("invalid request header"),
        },
        _ => ApiError::malformed("invalid request header"),
    }
}

/// One of Pingora's own (static) validation messages.
fn checked(why: &str) -> ApiError {
    match why {
        "invalid Content-Length header" => ApiError::bad_content_length(),
        "non-chunked final Transfer-Encoding"
        | "HTTP/1.0 requests cannot include Transfer-Encoding header"
        | "invalid Transfer-Encoding header" => ApiError::bad_transfer_encoding(),
        "invalid method" => ApiError::malformed("invalid method"),
        // `authority.rs`: duplicate or conflicting Host, userinfo, ambiguous targets.
        why if why.contains("Host header")
            || why.contains("authority")
            || why.contains("request target")
            || why.contains("userinfo") =>
        {
            ApiError::bad_host()
        }
        _ => ApiError::malformed("invalid request header"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// What Pingora's own HTTP/1 parser makes of these bytes, as the gateway classifies it.
    async fn refused(raw: &[u8]) -> (u16, &'static str) {
        let mut s = ServerSession::new_http1(Box::new(Cursor::new(raw.to_vec())));
        let e = match s.read_request().await {
            Ok(read) => panic!("Pingora accepted it ({read})"),
            Err(e) => e,
        };
        assert_eq!(e.etype(), &ErrorType::InvalidHTTPHeader, "{e}");
        let a = classify(400, &e);
        (a.status, a.code)
    }

    fn request(head: &str) -> Vec<u8> {
        format!("GET /tools/echo/x HTTP/1.1\r\nHost: gw\r\n{head}\r\n").into_bytes()
    }

    #[tokio::test]
    async fn every_parser_refusal_gets_its_stable_code() {
        let bad = |code| (400, code);
        for (head, want) in [
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                bad("BAD_CONTENT_LENGTH"),
            ),
            ("Content-Length: +12\r\n", bad("BAD_CONTENT_LENGTH")),
            ("Content-Length: 1, 2\r\n", bad("BAD_CONTENT_LENGTH")),
            (
                "Content-Length: 99999999999999999999999\r\n",
                bad("BAD_CONTENT_LENGTH"),
            ),
            (
                "Transfer-Encoding: xchunked\r\n",
                bad("BAD_TRANSFER_ENCODING"),
            ),
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                bad("BAD_TRANSFER_ENCODING"),
            ),
            ("X-A: 1\r\n folded\r\n", bad("MALFORMED_REQUEST")),
            ("X-A: a\0b\r\n", bad("MALFORMED_REQUEST")),
            ("X A: 1\r\n", bad("MALFORMED_REQUEST")),
            ("Host: other\r\n", bad("BAD_HOST")),
        ] {
            assert_eq!(refused(&request(head)).await, want, "{head:?}");
        }
        let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
        assert_eq!(refused(&request(&many)).await, (431, "HEADERS_TOO_LARGE"));
        let long = format!("GET /{} HTTP/1.1\r\nHost: gw\r\n\r\n", "a".repeat(100_000));
        assert_eq!(refused(long.as_bytes()).await, (431, "HEADERS_TOO_LARGE"));
        let endless = format!("GET / HTTP/1.1\r\nX-Big: {}", "v".repeat(1_100_000));
        assert_eq!(
            refused(endless.as_bytes()).await,
            (431, "HEADERS_TOO_LARGE")
        );
        for (raw, want) in [
            (
                &b"GET http://user@gw/ HTTP/1.1\r\nHost: gw\r\n\r\n"[..],
                bad("BAD_HOST"),
            ),
            (
                b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                bad("BAD_TRANSFER_ENCODING"),
            ),
            (b"GET / HTTP/9.9\r\n\r\n", bad("MALFORMED_REQUEST")),
            // The start of a TLS ClientHello.
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                bad("MALFORMED_REQUEST"),
            ),
        ] {
            assert_eq!(refused(raw).await, want, "{raw:?}");
        }
    }

    #[test]
    fn connect_is_method_not_allowed_and_other_statuses_keep_theirs() {
        let e = Error::explain(ErrorType::HTTPStatus(405), "CONNECT");
        let a = classify(405, &e);
        assert_eq!((a.status, a.code), (405, "METHOD_NOT_ALLOWED"));
        assert!(a.allow.is_some());
        let e = Error::explain(ErrorType::ReadTimedout, "request header deadline passed");
        let a = classify(408, &e);
        assert_eq!((a.status, a.code), (408, "REQUEST_HEADER_TIMEOUT"));
        let e = Error::explain(ErrorType::HTTPStatus(429), "too many connections");
        let a = classify(429, &e);
        assert_eq!((a.status, a.code), (429, "TOO_MANY_CONNECTIONS"));
        assert_eq!(a.retry_after, Some(1));
        let e = Error::explain(ErrorType::InvalidHTTPHeader, "x");
        assert_eq!(classify(418, &e).code, "REQUEST_REJECTED");
        assert_eq!(classify(400, &e).code, "MALFORMED_REQUEST");
    }

    #[test]
    fn messages_never_quote_the_request() {
        let e = Error::because(
            ErrorType::InvalidHTTPHeader,
            "buf: GET /secret-token HTTP/1.1",
            httparse::Error::HeaderValue,
        );
        let a = classify(400, &e);
        assert_eq!(a.message, "malformed request: invalid header value");
        // A formatted message is never matched beyond Pingora's own prefix.
        let e = Error::explain(
            ErrorType::InvalidHTTPHeader,
            format!("buf: {}", "Host header"),
        );
        assert_eq!(classify(400, &e).code, "MALFORMED_REQUEST");
        // Pingora formats this one (an owned string), so only its prefix is looked at.
        let e = Error::explain(
            ErrorType::InvalidHTTPHeader,
            "invalid uri /Host header".to_string(),
        );
        let a = classify(400, &e);
        assert_eq!(a.message, "malformed request: invalid request target");
    }
}
