//! Bounds: how much of a request the gateway will hold before deciding on it.
//!
//! Headers are counted and measured before anything else looks at them (`HEADERS_TOO_LARGE`,
//! 431). The body is read whole — the policy decides on the arguments, so it must see all of
//! them before a byte reaches the tool — and never more than the tool's cap: a declared
//! `Content-Length` over the cap is refused before reading, and a chunked body is counted as
//! it arrives and refused the moment it passes the cap (`REQUEST_TOO_LARGE`, 413), so chunked
//! encoding cannot bypass it. A body that stalls between reads is refused
//! (`REQUEST_BODY_TIMEOUT`, 408). After a refusal with unread body bytes the connection is not
//! reused.

use super::error::ApiError;
use crate::config::Limits;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::ErrorType;
use std::time::Duration;

/// Refuses a request with too many headers or too many header bytes (names, values and the
/// request target).
pub fn check_headers(req: &RequestHeader, limits: &Limits) -> Result<(), ApiError> {
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if req.headers.len() > limits.max_header_count || header_bytes > limits.max_header_bytes {
        return Err(ApiError::headers_too_large());
    }
    Ok(())
}

/// The declared `Content-Length`, if any; unparsable → `BAD_CONTENT_LENGTH`.
fn declared_length(req: &RequestHeader) -> Result<Option<u64>, ApiError> {
    match req.headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(ApiError::bad_content_length),
    }
}

/// Reads the whole request body, never more than `cap` bytes, waiting at most `idle` between
/// reads. `None` when the request has no body.
pub async fn read_body(
    session: &mut Session,
    cap: u64,
    idle: Duration,
) -> Result<Option<Bytes>, ApiError> {
    if declared_length(session.req_header())?.is_some_and(|n| n > cap) {
        session.set_keepalive(None);
        return Err(ApiError::too_large(cap));
    }
    if session.is_body_empty() {
        return Ok(None);
    }
    // Usually the whole body arrives in one read; keep that chunk as is (no copy).
    let mut chunks: Vec<Bytes> = Vec::with_capacity(1);
    let mut total: u64 = 0;
    // Inactivity timeout between body reads (as nginx's client_body_timeout).
    session.set_read_timeout(Some(idle));
    loop {
        let chunk = match session.read_request_body().await {
            Ok(None) => break,
            Ok(Some(c)) => c,
            Err(e) => {
                session.set_keepalive(None);
                if matches!(e.etype(), ErrorType::ReadTimedout) {
                    return Err(ApiError::body_timeout());
                }
                tracing::debug!(error = %e, "request body read failed");
                return Err(ApiError::bad_request(
                    "BAD_REQUEST_BODY",
                    "the request body could not be read",
                ));
            }
        };
        total += chunk.len() as u64;
        if total > cap {
            // The rest of the body is unread: the connection cannot be reused.
            session.set_keepalive(None);
            return Err(ApiError::too_large(cap));
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
    }
    Ok(join(chunks, total))
}

/// One buffer from the chunks read (the single-chunk case without a copy).
fn join(mut chunks: Vec<Bytes>, total: u64) -> Option<Bytes> {
    match chunks.len() {
        0 => None,
        1 => chunks.pop(),
        _ => {
            let mut buf = BytesMut::with_capacity(total as usize);
            for c in &chunks {
                buf.extend_from_slice(c);
            }
            Some(buf.freeze())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(count: usize, bytes: usize) -> Limits {
        Limits {
            max_request_bytes: 1,
            max_response_bytes: 1,
            max_header_count: count,
            max_header_bytes: bytes,
            body_read_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn header_caps_count_names_values_and_target() {
        let mut r = RequestHeader::build("GET", b"/tools/t/abcdef", None).unwrap();
        r.append_header("a", "12345").unwrap();
        // "a" + "12345" + 4 = 10, plus the 15-byte target.
        assert!(check_headers(&r, &limits(1, 25)).is_ok());
        assert_eq!(
            check_headers(&r, &limits(1, 24)).unwrap_err().code,
            "HEADERS_TOO_LARGE"
        );
        r.append_header("b", "1").unwrap();
        assert_eq!(check_headers(&r, &limits(1, 100)).unwrap_err().status, 431);
    }

    #[test]
    fn content_length_must_be_a_number() {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        assert_eq!(declared_length(&r).unwrap(), None);
        r.insert_header("content-length", " 42 ").unwrap();
        assert_eq!(declared_length(&r).unwrap(), Some(42));
        r.insert_header("content-length", "-1").unwrap();
        assert_eq!(declared_length(&r).unwrap_err().code, "BAD_CONTENT_LENGTH");
    }

    #[test]
    fn chunks_are_joined_without_copying_a_single_one() {
        assert_eq!(join(vec![], 0), None);
        let one = Bytes::from_static(b"abc");
        let joined = join(vec![one.clone()], 3).unwrap();
        assert_eq!(joined.as_ptr(), one.as_ptr());
        let joined = join(vec![one, Bytes::from_static(b"de")], 5).unwrap();
        assert_eq!(joined, "abcde");
    }
}
