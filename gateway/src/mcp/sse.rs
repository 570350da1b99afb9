//! Server-sent events, one event at a time.
//!
//! MCP responses may be `text/event-stream`: progress notifications, log messages and (legacy)
//! server-to-client requests, then the response. The gateway relays each event as soon as its
//! terminating blank line arrives — never waiting for the stream to end — and rewrites only
//! the event that carries the response to the decided request (to add the receipt to its
//! `_meta`, or to filter a list). Everything else passes byte for byte.
//!
//! Framing follows the HTML living standard: lines end with CRLF, LF or CR; an event ends at
//! an empty line; `data:` lines are joined with LF; lines starting with `:` are comments
//! (keep-alives). A CR at the end of a chunk is held back until the next byte shows whether an
//! LF follows. One event may not grow beyond a bound (the server's response cap), so a stream
//! that never ends an event cannot make the gateway buffer without limit.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into complete events.
#[derive(Debug)]
pub struct Splitter {
    buf: BytesMut,
    /// Where to resume the search for the end of the current event.
    scanned: usize,
    max_event: usize,
}

/// An event grew beyond the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a server-sent event exceeds {0} bytes")]
pub struct EventTooLarge(pub usize);

impl Splitter {
    pub fn new(max_event: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            max_event,
        }
    }

    /// Adds bytes; returns the events they complete (each with its terminating blank line).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, EventTooLarge> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.event_end() {
            events.push(self.buf.split_to(end).freeze());
            self.scanned = 0;
        }
        if self.buf.len() > self.max_event {
            return Err(EventTooLarge(self.max_event));
        }
        Ok(events)
    }

    /// Bytes of an event the stream ended before finishing (passed on as they are).
    pub fn rest(&mut self) -> Bytes {
        self.scanned = 0;
        self.buf.split().freeze()
    }

    /// The end (exclusive) of the first complete event in the buffer, if there is one.
    fn event_end(&mut self) -> Option<usize> {
        let b = &self.buf[..];
        let mut i = self.scanned;
        // `scanned` always sits at the start of a line.
        let mut line_start = i;
        while i < b.len() {
            let terminator = match b[i] {
                b'\n' => 1,
                b'\r' if i + 1 < b.len() => {
                    if b[i + 1] == b'\n' {
                        2
                    } else {
                        1
                    }
                }
                // A CR at the end of what has arrived: wait for the next byte.
                b'\r' => break,
                _ => {
                    i += 1;
                    continue;
                }
            };
            let empty = i == line_start;
            i += terminator;
            if empty {
                return Some(i);
            }
            line_start = i;
        }
        self.scanned = line_start;
        None
    }
}

/// The data of an event (its `data:` lines joined with LF); `None` without any.
pub fn data(event: &[u8]) -> Option<String> {
    let mut out: Option<String> = None;
    for line in lines(event) {
        let value = match line.strip_prefix(b"data") {
            Some([]) => &b""[..],
            Some(rest) if rest[0] == b':' => {
                let v = &rest[1..];
                v.strip_prefix(b" ").unwrap_or(v)
            }
            _ => continue,
        };
        let text = String::from_utf8_lossy(value);
        match &mut out {
            None => out = Some(text.into_owned()),
            Some(d) => {
                d.push('\n');
                d.push_str(&text);
            }
        }
    }
    out
}

/// The event with its data replaced by `new_data` (one line, so JSON without raw newlines):
/// every other line (`event:`, `id:`, `retry:`, comments) is kept in place; the data goes where
/// the first `data:` line was.
pub fn with_data(event: &[u8], new_data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.len() + new_data.len());
    let mut written = false;
    for line in lines(event) {
        let is_data = line
            .strip_prefix(b"data")
            .is_some_and(|r| r.is_empty() || r[0] == b':');
        if is_data {
            if !written {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(new_data.as_bytes());
                out.push(b'\n');
                written = true;
            }
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    if !written {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(new_data.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The non-empty lines of one event, without their terminators.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&c| c == b'\n' || c == b'\r');
        let (line, next) = match end {
            None => (rest, &rest[rest.len()..]),
            Some(e) => {
                let skip = if rest[e] == b'\r' && rest.get(e + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (&rest[..e], &rest[e + skip..])
            }
        };
        rest = next;
        if !line.is_empty() {
            return Some(line);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &mut Splitter, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        chunks
            .iter()
            .flat_map(|c| s.push(c).unwrap())
            .map(|b| b.to_vec())
            .collect()
    }

    #[test]
    fn events_complete_at_their_blank_line_whatever_the_chunks() {
        let stream = b"event: message\ndata: {\"a\":1}\n\n: keep-alive\n\nid: 7\r\ndata: x\r\ndata: y\r\n\r\ndata: z\r\rdata: w\n\n";
        let expected: Vec<Vec<u8>> = vec![
            b"event: message\ndata: {\"a\":1}\n\n".to_vec(),
            b": keep-alive\n\n".to_vec(),
            b"id: 7\r\ndata: x\r\ndata: y\r\n\r\n".to_vec(),
            b"data: z\r\r".to_vec(),
            b"data: w\n\n".to_vec(),
        ];
        // Whole, then byte by byte: the same events, each as soon as it is complete.
        assert_eq!(all(&mut Splitter::new(1024), &[stream]), expected);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(all(&mut Splitter::new(1024), &bytes), expected);
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                all(&mut Splitter::new(1024), &[a, b]),
                expected,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_trailing_cr_waits_for_the_next_byte() {
        let mut s = Splitter::new(64);
        assert!(s.push(b"data: a\r\n\r").unwrap().is_empty());
        assert_eq!(s.push(b"\n").unwrap()[0].as_ref(), b"data: a\r\n\r\n");
        assert!(s.push(b"data: partial").unwrap().is_empty());
        assert_eq!(s.rest().as_ref(), b"data: partial");
    }

    #[test]
    fn an_endless_event_is_bounded() {
        let mut s = Splitter::new(16);
        assert!(s.push(b"data: 0123456789").is_ok());
        assert_eq!(s.push(b"abcdef").unwrap_err(), EventTooLarge(16));
        // Complete events never count against the bound.
        let mut s = Splitter::new(16);
        for _ in 0..100 {
            assert_eq!(s.push(b"data: 12345\n\n").unwrap().len(), 1);
        }
    }

    #[test]
    fn data_is_read_and_replaced_in_place() {
        let ev = b"event: message\r\nid: 3\r\ndata: {\"a\":\r\ndata:1}\r\n: note\r\n\r\n";
        assert_eq!(data(ev).as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(
            with_data(ev, "{\"b\":2}"),
            b"event: message\nid: 3\ndata: {\"b\":2}\n: note\n\n".to_vec()
        );
        assert_eq!(data(b": only a comment\n\n"), None);
        assert_eq!(data(b"data\n\n").as_deref(), Some(""));
        assert_eq!(data(b"dataset: x\n\n"), None);
    }
}
