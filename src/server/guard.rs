//! Every message a client sends is checked here, whole, before anything
//! decodes it: its length against the server's limit (so an oversized
//! message is refused before its body is buffered), its structure field by
//! field (counts, lengths and terminators that add up to exactly the body),
//! and its text as UTF-8. pgwire's decoders trust the framing (a 12-byte
//! Bind with body `\0\0\0` made them panic), so nothing malformed may reach
//! them: a message that fails here ends the connection with an
//! ErrorResponse naming what was wrong.
//!
//! Pure functions over bytes, so the protocol fuzz test and the unit tests
//! below drive them directly.

use std::fmt;

/// Messages other than the ones that carry statements, data or auth
/// exchanges are small; PostgreSQL and pgwire cap them at this length.
const SMALL_MESSAGE_BYTES: usize = 10_000;
/// A startup packet's length limit (PostgreSQL's).
const STARTUP_PACKET_BYTES: usize = 10_000;
/// The protocol codes a connection's first packet may carry instead of a
/// version.
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The length field says more than the server takes (54000).
    TooLarge { declared: usize, limit: usize },
    /// Text that is not UTF-8 (22021).
    NotUtf8(&'static str),
    /// Anything else wrong with the framing or structure (08P01).
    Malformed(String),
    /// A startup packet asking for a protocol this server does not speak
    /// (0A000).
    UnsupportedProtocol { major: u16, minor: u16 },
}

impl Violation {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Violation::TooLarge { .. } => "54000",
            Violation::NotUtf8(_) => "22021",
            Violation::Malformed(_) => "08P01",
            Violation::UnsupportedProtocol { .. } => "0A000",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::TooLarge { declared, limit } => write!(
                f,
                "message of {declared} bytes exceeds the server's limit of {limit} bytes \
                 (--max-message-size)"
            ),
            Violation::NotUtf8(what) => {
                write!(
                    f,
                    "invalid byte sequence for encoding \"UTF8\" in the {what}"
                )
            }
            Violation::Malformed(what) => write!(f, "invalid message format: {what}"),
            Violation::UnsupportedProtocol { major, minor } => write!(
                f,
                "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2"
            ),
        }
    }
}

fn malformed(what: impl Into<String>) -> Violation {
    Violation::Malformed(what.into())
}

/// A connection's first packet (it has no type byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    /// The whole packet, to be handed on to pgwire as it came.
    Startup {
        packet: Vec<u8>,
    },
}

/// Reads a connection's first packet from the start of `buf`: `None` while
/// it is incomplete, else the packet and the bytes it took.
pub fn first_packet(buf: &[u8]) -> Result<Option<(FirstPacket, usize)>, Violation> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let length = usize::try_from(length)
        .ok()
        .filter(|l| (8..=STARTUP_PACKET_BYTES).contains(l))
        .ok_or_else(|| malformed(format!("invalid startup packet length {length}")))?;
    if buf.len() < length {
        return Ok(None);
    }
    let packet = &buf[..length];
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    let first = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !body.is_empty() => {
            return Err(malformed("an SSL or GSS encryption request with a body"))
        }
        SSL_REQUEST_CODE => FirstPacket::SslRequest,
        GSSENC_REQUEST_CODE => FirstPacket::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            // Protocol 3.0 sends a 4-byte key; 3.2 up to 256 bytes.
            if body.len() < 8 || body.len() > 4 + 256 {
                return Err(malformed("a cancel request of the wrong length"));
            }
            FirstPacket::Cancel {
                pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                secret: body[4..].to_vec(),
            }
        }
        version => {
            let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
            if major != 3 {
                return Err(Violation::UnsupportedProtocol { major, minor });
            }
            check_startup_parameters(body)?;
            FirstPacket::Startup {
                packet: packet.to_vec(),
            }
        }
    };
    Ok(Some((first, length)))
}

/// `name\0value\0 ... \0`: pairs of UTF-8 strings, then an empty name.
fn check_startup_parameters(body: &[u8]) -> Result<(), Violation> {
    let mut fields = Fields::new(body);
    loop {
        let name = fields.cstring("startup parameter name")?;
        if name.is_empty() {
            break;
        }
        fields.cstring("startup parameter value")?;
    }
    fields.end("startup packet")
}

/// Checks the typed messages after startup (see the module docs).
#[derive(Debug, Clone)]
pub struct MessageGuard {
    max_message_bytes: usize,
    /// The next `p` message is a SASLInitialResponse (SCRAM's first step).
    sasl_initial_pending: bool,
}

impl MessageGuard {
    /// A guard taking messages up to `max_message_bytes` long; `sasl` when
    /// the connection authenticates with SASL (its first `p` message is a
    /// SASLInitialResponse).
    pub fn new(max_message_bytes: usize, sasl: bool) -> Self {
        Self {
            max_message_bytes,
            sasl_initial_pending: sasl,
        }
    }

    /// The length of the next whole message at the start of `buf` once it
    /// is all there and checked out (`None`: not all there yet). A length
    /// over the limit is refused as soon as the length field arrives.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<usize>, Violation> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind = buf[0];
        let length = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l >= 4)
            .ok_or_else(|| malformed(format!("message length {length} is below 4")))?;
        let limit = match kind {
            b'Q' | b'P' | b'B' | b'd' | b'p' | b'f' => self.max_message_bytes,
            _ => SMALL_MESSAGE_BYTES.min(self.max_message_bytes),
        };
        if length > limit {
            return Err(Violation::TooLarge {
                declared: length,
                limit,
            });
        }
        if buf.len() < 1 + length {
            return Ok(None);
        }
        self.check(kind, &buf[5..1 + length])?;
        Ok(Some(1 + length))
    }

    fn check(&mut self, kind: u8, body: &[u8]) -> Result<(), Violation> {
        let mut fields = Fields::new(body);
        match kind {
            b'Q' => {
                fields.text("query")?;
                fields.end("Query (a NUL ends the query string)")
            }
            b'P' => {
                fields.text("statement name")?;
                fields.text("query")?;
                let types = fields.count("parameter type count")?;
                for _ in 0..types {
                    fields.i32("parameter type")?;
                }
                fields.end("Parse (a NUL ends the query string)")
            }
            b'B' => {
                fields.text("portal name")?;
                fields.text("statement name")?;
                let formats = fields.count("parameter format count")?;
                for _ in 0..formats {
                    fields.format_code()?;
                }
                let parameters = fields.count("parameter count")?;
                if formats > 1 && formats != parameters {
                    return Err(malformed(format!(
                        "Bind has {formats} parameter formats for {parameters} parameters"
                    )));
                }
                for _ in 0..parameters {
                    let length = fields.i32("parameter length")?;
                    match usize::try_from(length) {
                        Ok(length) => {
                            fields.bytes(length, "parameter value")?;
                        }
                        Err(_) if length == -1 => {} // NULL
                        Err(_) => return Err(malformed(format!("parameter length {length}"))),
                    }
                }
                let results = fields.count("result format count")?;
                for _ in 0..results {
                    fields.format_code()?;
                }
                fields.end("Bind")
            }
            b'D' | b'C' => {
                match fields.u8("object kind")? {
                    b'S' | b'P' => {}
                    other => {
                        return Err(malformed(format!(
                            "{} of object kind {:?}: expected 'S' or 'P'",
                            if kind == b'D' { "Describe" } else { "Close" },
                            other as char
                        )))
                    }
                }
                fields.text("statement or portal name")?;
                fields.end(if kind == b'D' { "Describe" } else { "Close" })
            }
            b'E' => {
                fields.text("portal name")?;
                let rows = fields.i32("row limit")?;
                if rows < 0 {
                    return Err(malformed(format!("Execute row limit {rows}")));
                }
                fields.end("Execute")
            }
            b'H' | b'S' | b'X' | b'c' => fields.end(match kind {
                b'H' => "Flush",
                b'S' => "Sync",
                b'X' => "Terminate",
                _ => "CopyDone",
            }),
            b'd' => Ok(()),
            b'f' => {
                fields.text("COPY failure message")?;
                fields.end("CopyFail")
            }
            b'p' if self.sasl_initial_pending => {
                self.sasl_initial_pending = false;
                fields.text("SASL mechanism")?;
                let length = fields.i32("SASL data length")?;
                match usize::try_from(length) {
                    Ok(length) => {
                        fields.bytes(length, "SASL data")?;
                    }
                    Err(_) if length == -1 => {}
                    Err(_) => return Err(malformed(format!("SASL data length {length}"))),
                }
                fields.end("SASLInitialResponse")
            }
            b'p' => Ok(()),
            other => Err(malformed(format!(
                "unknown message type {:?} (0x{other:02x})",
                other as char
            ))),
        }
    }
}

/// Reads the fields of one message body, refusing anything that runs past
/// its end.
struct Fields<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self { body, at: 0 }
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], Violation> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.body.len())
            .ok_or_else(|| malformed(format!("the message ends inside its {what}")))?;
        let bytes = &self.body[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Violation> {
        Ok(self.bytes(1, what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, Violation> {
        let b = self.bytes(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, Violation> {
        let b = self.bytes(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative 16-bit count.
    fn count(&mut self, what: &str) -> Result<usize, Violation> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| malformed(format!("{what} {n}")))
    }

    /// A format code: 0 (text) or 1 (binary).
    fn format_code(&mut self) -> Result<(), Violation> {
        match self.i16("format code")? {
            0 | 1 => Ok(()),
            other => Err(malformed(format!("format code {other}: expected 0 or 1"))),
        }
    }

    /// A NUL-terminated string (not checked as text).
    fn cstring(&mut self, what: &str) -> Result<&'a [u8], Violation> {
        let rest = &self.body[self.at..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| malformed(format!("the {what} has no terminating NUL")))?;
        self.at += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| {
            Violation::NotUtf8(if what.starts_with("startup") {
                "startup packet"
            } else {
                "message"
            })
        })?;
        Ok(&rest[..end])
    }

    /// A NUL-terminated UTF-8 string.
    fn text(&mut self, what: &'static str) -> Result<&'a str, Violation> {
        let rest = &self.body[self.at..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| malformed(format!("the {what} has no terminating NUL")))?;
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| Violation::NotUtf8(what))?;
        self.at += end + 1;
        Ok(text)
    }

    /// The body must end here.
    fn end(&self, message: &str) -> Result<(), Violation> {
        if self.at == self.body.len() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} bytes after the end of {message}",
                self.body.len() - self.at
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn guard() -> MessageGuard {
        MessageGuard::new(1 << 20, false)
    }

    fn check(kind: u8, body: &[u8]) -> Result<Option<usize>, Violation> {
        guard().next(&message(kind, body))
    }

    #[test]
    fn well_formed_messages_pass_whole() {
        let bind = [
            b"p\0s\0".as_slice(),
            &1i16.to_be_bytes(),
            &0i16.to_be_bytes(),
            &2i16.to_be_bytes(),
            &3i32.to_be_bytes(),
            b"abc",
            &(-1i32).to_be_bytes(),
            &0i16.to_be_bytes(),
        ]
        .concat();
        for (kind, body) in [
            (b'Q', b"SELECT 1\0".to_vec()),
            (
                b'P',
                [
                    b"s\0SELECT $1\0".as_slice(),
                    &1i16.to_be_bytes(),
                    &23i32.to_be_bytes(),
                ]
                .concat(),
            ),
            (b'B', bind),
            (b'D', b"S\0".to_vec()),
            (b'E', [b"\0".as_slice(), &0i32.to_be_bytes()].concat()),
            (b'C', b"P\0".to_vec()),
            (b'S', vec![]),
            (b'H', vec![]),
            (b'X', vec![]),
        ] {
            let m = message(kind, &body);
            // Incomplete: wait for more.
            assert_eq!(
                guard().next(&m[..m.len() - 1]),
                Ok(None),
                "{}",
                kind as char
            );
            assert_eq!(guard().next(&m), Ok(Some(m.len())), "{}", kind as char);
        }
    }

    #[test]
    fn malformed_messages_are_refused_with_their_sqlstate() {
        for (kind, body, sqlstate) in [
            // The fuzz test's smallest panic: a 12-byte Bind of `\0\0\0`.
            (b'B', b"\0\0\0".to_vec(), "08P01"),
            (
                b'B',
                [b"\0\0".as_slice(), &(-1i16).to_be_bytes()].concat(),
                "08P01",
            ),
            (
                b'B',
                [
                    b"\0\0".as_slice(),
                    &0i16.to_be_bytes(),
                    &1i16.to_be_bytes(),
                    &100i32.to_be_bytes(),
                ]
                .concat(),
                "08P01",
            ),
            (b'Q', b"SELECT 1\0; DROP TABLE t\0".to_vec(), "08P01"),
            (b'Q', b"SELECT 1".to_vec(), "08P01"),
            (b'Q', b"SELECT '\xff'\0".to_vec(), "22021"),
            (b'P', b"\0SELECT 1\0".to_vec(), "08P01"),
            (b'D', b"X\0".to_vec(), "08P01"),
            (
                b'E',
                [b"\0".as_slice(), &(-5i32).to_be_bytes()].concat(),
                "08P01",
            ),
            (b'S', b"x".to_vec(), "08P01"),
            (b'?', vec![], "08P01"),
        ] {
            let e = check(kind, &body).unwrap_err();
            assert_eq!(e.sqlstate(), sqlstate, "{} {body:?}: {e}", kind as char);
        }
        // A length below 4, and one over the limit (refused before its body).
        let e = guard().next(&[b'Q', 0, 0, 0, 3]).unwrap_err();
        assert_eq!(e.sqlstate(), "08P01");
        let mut huge = vec![b'Q'];
        huge.extend_from_slice(&((1 << 20) + 5i32).to_be_bytes());
        assert_eq!(guard().next(&huge).unwrap_err().sqlstate(), "54000");
        let mut describe = vec![b'D'];
        describe.extend_from_slice(&20_000i32.to_be_bytes());
        assert_eq!(guard().next(&describe).unwrap_err().sqlstate(), "54000");
    }

    #[test]
    fn the_first_sasl_message_is_checked_as_an_initial_response() {
        let mut sasl = MessageGuard::new(1 << 20, true);
        let initial = [b"SCRAM-SHA-256\0".as_slice(), &3i32.to_be_bytes(), b"abc"].concat();
        assert!(sasl.next(&message(b'p', &initial)).unwrap().is_some());
        // Later ones are opaque SASL data.
        assert!(sasl.next(&message(b'p', b"anything")).unwrap().is_some());
        let mut sasl = MessageGuard::new(1 << 20, true);
        let short = [b"SCRAM-SHA-256\0".as_slice(), &30i32.to_be_bytes(), b"abc"].concat();
        assert_eq!(
            sasl.next(&message(b'p', &short)).unwrap_err().sqlstate(),
            "08P01"
        );
    }

    #[test]
    fn first_packets_are_told_apart_and_checked() {
        let packet = |code: i32, body: &[u8]| {
            let mut p = ((body.len() + 8) as i32).to_be_bytes().to_vec();
            p.extend_from_slice(&code.to_be_bytes());
            p.extend_from_slice(body);
            p
        };
        let ssl = packet(SSL_REQUEST_CODE, b"");
        assert_eq!(first_packet(&ssl), Ok(Some((FirstPacket::SslRequest, 8))));
        assert_eq!(first_packet(&ssl[..7]), Ok(None));
        let cancel = packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4]);
        assert_eq!(
            first_packet(&cancel),
            Ok(Some((
                FirstPacket::Cancel {
                    pid: 7,
                    secret: vec![1, 2, 3, 4]
                },
                16
            )))
        );
        let startup = packet(3 << 16, b"user\0eddy\0database\0eddy\0\0");
        assert!(matches!(
            first_packet(&startup),
            Ok(Some((FirstPacket::Startup { .. }, _)))
        ));
        for (bad, sqlstate) in [
            (packet(4 << 16, b"user\0eddy\0\0"), "0A000"),
            (packet(3 << 16, b"user\0eddy\0"), "08P01"),
            (packet(3 << 16, b"user\0e\xffy\0\0"), "22021"),
            (packet(3 << 16, b"user\0eddy\0\0junk"), "08P01"),
            (packet(SSL_REQUEST_CODE, b"x"), "08P01"),
            (vec![0, 0, 0, 4, 0, 0, 0, 0], "08P01"),
            (vec![0x7f, 0, 0, 0, 0, 0, 0, 0], "08P01"),
        ] {
            let e = first_packet(&bad).unwrap_err();
            assert_eq!(e.sqlstate(), sqlstate, "{bad:?}: {e}");
        }
        let e = first_packet(&packet(4 << 16, b"\0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported frontend protocol 4.0: server supports 3.0 to 3.2"
        );
    }
}
