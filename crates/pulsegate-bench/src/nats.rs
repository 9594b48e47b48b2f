//! A minimal parser for the NATS client protocol as the server speaks it.
//!
//! Over WebSocket, nats-server packs several protocol lines — and several
//! `MSG`s — into one frame, and a `MSG` may in principle be split across
//! frames, so the parser keeps a byte buffer across [`NatsParser::push`] calls
//! and only hands out complete operations. It understands what a benchmark
//! client sees: `INFO`, `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`.

use std::fmt;

/// One complete server operation. Slices borrow the parser's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum NatsEvent<'a> {
    /// `INFO {…}`; the JSON is not interpreted.
    Info,
    /// `MSG <subject> <sid> [reply-to] <#bytes>` followed by the payload
    /// (for `HMSG`, the payload after the headers).
    Msg {
        subject: &'a str,
        sid: &'a str,
        payload: &'a [u8],
    },
    /// The server asks for a `PONG`.
    Ping,
    /// The answer to our `PING`; with `verbose:false` this is the only ack.
    Pong,
    /// `+OK` (only in verbose mode).
    Ok,
    /// `-ERR '<message>'`.
    Err(&'a str),
}

/// Why the byte stream could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum NatsParseError {
    /// A control line that is not UTF-8 or does not have the expected fields.
    BadLine(String),
    /// A `MSG` payload was not followed by `\r\n`.
    BadPayloadTerminator,
    /// More than the configured number of bytes without a complete operation.
    BufferLimit(usize),
}

impl fmt::Display for NatsParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLine(l) => write!(f, "malformed NATS protocol line: {l:?}"),
            Self::BadPayloadTerminator => write!(f, "NATS MSG payload not followed by CRLF"),
            Self::BufferLimit(n) => {
                write!(
                    f,
                    "more than {n} bytes buffered without a complete NATS operation"
                )
            }
        }
    }
}

impl std::error::Error for NatsParseError {}

/// Incremental parser; feed it every WebSocket frame's payload in order.
#[derive(Debug)]
pub struct NatsParser {
    buf: Vec<u8>,
    max_buffered: usize,
}

impl Default for NatsParser {
    fn default() -> Self {
        Self::new(8 * 1024 * 1024)
    }
}

impl NatsParser {
    /// A parser that gives up when more than `max_buffered` bytes are pending.
    pub fn new(max_buffered: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_buffered,
        }
    }

    /// Appends `data` and calls `on_event` for every complete operation.
    pub fn push(
        &mut self,
        data: &[u8],
        mut on_event: impl FnMut(NatsEvent<'_>),
    ) -> Result<(), NatsParseError> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        let result = loop {
            match parse_one(&self.buf[pos..]) {
                Ok(Some((used, event))) => {
                    on_event(event);
                    pos += used;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..pos);
        if self.buf.len() > self.max_buffered {
            return Err(NatsParseError::BufferLimit(self.max_buffered));
        }
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            // A burst grew the buffer; an idle connection should not keep it.
            self.buf = Vec::new();
        }
        result
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn bad(line: &[u8]) -> NatsParseError {
    NatsParseError::BadLine(String::from_utf8_lossy(line).into_owned())
}

/// Parses one operation from the front of `b`: `Ok(None)` if incomplete.
fn parse_one(b: &[u8]) -> Result<Option<(usize, NatsEvent<'_>)>, NatsParseError> {
    let Some(eol) = find_crlf(b) else {
        return Ok(None);
    };
    let line_bytes = &b[..eol];
    let line = std::str::from_utf8(line_bytes).map_err(|_| bad(line_bytes))?;
    let (verb, args) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    };
    let after_line = eol + 2;
    let event = if verb.eq_ignore_ascii_case("MSG") || verb.eq_ignore_ascii_case("HMSG") {
        let fields: Vec<&str> = args.split_ascii_whitespace().collect();
        let headers = verb.eq_ignore_ascii_case("HMSG");
        // MSG: subject sid [reply] total; HMSG: subject sid [reply] hdr total
        let (min, max) = if headers { (4, 5) } else { (3, 4) };
        if fields.len() < min || fields.len() > max {
            return Err(bad(line_bytes));
        }
        let total: usize = fields[fields.len() - 1]
            .parse()
            .map_err(|_| bad(line_bytes))?;
        let hdr: usize = if headers {
            fields[fields.len() - 2]
                .parse()
                .map_err(|_| bad(line_bytes))?
        } else {
            0
        };
        if hdr > total {
            return Err(bad(line_bytes));
        }
        let end = after_line + total;
        if b.len() < end + 2 {
            return Ok(None);
        }
        if &b[end..end + 2] != b"\r\n" {
            return Err(NatsParseError::BadPayloadTerminator);
        }
        return Ok(Some((
            end + 2,
            NatsEvent::Msg {
                subject: fields[0],
                sid: fields[1],
                payload: &b[after_line + hdr..end],
            },
        )));
    } else if verb.eq_ignore_ascii_case("PING") {
        NatsEvent::Ping
    } else if verb.eq_ignore_ascii_case("PONG") {
        NatsEvent::Pong
    } else if verb.eq_ignore_ascii_case("+OK") {
        NatsEvent::Ok
    } else if verb.eq_ignore_ascii_case("-ERR") {
        NatsEvent::Err(args.trim_matches('\''))
    } else if verb.eq_ignore_ascii_case("INFO") {
        NatsEvent::Info
    } else {
        return Err(bad(line_bytes));
    };
    Ok(Some((after_line, event)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Info,
        Msg(String, String, Vec<u8>),
        Ping,
        Pong,
        Ok,
        Err(String),
    }

    fn collect(p: &mut NatsParser, data: &[u8]) -> Vec<Owned> {
        let mut out = Vec::new();
        p.push(data, |e| {
            out.push(match e {
                NatsEvent::Info => Owned::Info,
                NatsEvent::Msg {
                    subject,
                    sid,
                    payload,
                } => Owned::Msg(subject.into(), sid.into(), payload.to_vec()),
                NatsEvent::Ping => Owned::Ping,
                NatsEvent::Pong => Owned::Pong,
                NatsEvent::Ok => Owned::Ok,
                NatsEvent::Err(m) => Owned::Err(m.into()),
            })
        })
        .unwrap();
        out
    }

    #[test]
    fn several_operations_in_one_frame() {
        let mut p = NatsParser::default();
        let frame = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG bench.0 1 5\r\nhello\r\nMSG bench.0 1 reply.to 2\r\nhi\r\nPING\r\n";
        assert_eq!(
            collect(&mut p, frame),
            vec![
                Owned::Info,
                Owned::Pong,
                Owned::Msg("bench.0".into(), "1".into(), b"hello".to_vec()),
                Owned::Msg("bench.0".into(), "1".into(), b"hi".to_vec()),
                Owned::Ping,
            ]
        );
    }

    #[test]
    fn a_message_split_across_frames_is_reassembled() {
        let mut p = NatsParser::default();
        assert!(collect(&mut p, b"MSG bench.1 7 1").is_empty());
        assert!(collect(&mut p, b"0\r\n01234").is_empty());
        assert!(collect(&mut p, b"56789\r").is_empty());
        assert_eq!(
            collect(&mut p, b"\nPONG\r\n"),
            vec![
                Owned::Msg("bench.1".into(), "7".into(), b"0123456789".to_vec()),
                Owned::Pong
            ]
        );
    }

    #[test]
    fn payload_may_contain_crlf() {
        let mut p = NatsParser::default();
        assert_eq!(
            collect(&mut p, b"MSG a 1 4\r\n\r\n\r\n\r\n"),
            vec![Owned::Msg("a".into(), "1".into(), b"\r\n\r\n".to_vec())]
        );
    }

    #[test]
    fn hmsg_yields_the_payload_after_headers() {
        let mut p = NatsParser::default();
        let hdr = b"NATS/1.0\r\nX: y\r\n\r\n";
        let mut frame = format!("HMSG s 2 {} {}\r\n", hdr.len(), hdr.len() + 3).into_bytes();
        frame.extend_from_slice(hdr);
        frame.extend_from_slice(b"abc\r\n");
        assert_eq!(
            collect(&mut p, &frame),
            vec![Owned::Msg("s".into(), "2".into(), b"abc".to_vec())]
        );
    }

    #[test]
    fn errors_and_acks() {
        let mut p = NatsParser::default();
        assert_eq!(
            collect(&mut p, b"+OK\r\n-ERR 'Authorization Violation'\r\n"),
            vec![Owned::Ok, Owned::Err("Authorization Violation".into())]
        );
    }

    #[test]
    fn malformed_input_is_reported() {
        let mut p = NatsParser::default();
        assert!(matches!(
            p.push(b"MSG only-subject\r\n", |_| {}),
            Err(NatsParseError::BadLine(_))
        ));
        let mut p = NatsParser::default();
        assert_eq!(
            p.push(b"MSG a 1 2\r\nabXY", |_| {}),
            Err(NatsParseError::BadPayloadTerminator)
        );
        let mut p = NatsParser::new(16);
        assert_eq!(
            p.push(b"MSG a 1 100\r\n0123456789", |_| {}),
            Err(NatsParseError::BufferLimit(16))
        );
    }
}
