//! Frame headers and the message decoder.

use bytes::{Buf, Bytes, BytesMut};

use crate::deflate::{InflateError, Inflater};

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Binary.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0,
            Self::Text => 1,
            Self::Binary => 2,
            Self::Close => 8,
            Self::Ping => 9,
            Self::Pong => 10,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// The encoded header of one server frame (unmasked): 2 to 10 bytes.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    buf: [u8; 10],
    len: u8,
}

impl Header {
    /// The header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// Encodes the header of a server frame carrying `payload_len` bytes.
/// `rsv1` marks the first frame of a compressed message.
pub fn header(opcode: OpCode, fin: bool, rsv1: bool, payload_len: usize) -> Header {
    let mut buf = [0u8; 10];
    buf[0] = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode.as_u8();
    let len = if payload_len < 126 {
        buf[1] = payload_len as u8;
        2
    } else if payload_len <= u16::MAX as usize {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    Header { buf, len }
}

/// One complete message (or control frame) from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its payload (at most 125 bytes).
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame: its code and reason, if it carried any.
    Close(Option<(u16, String)>),
}

/// A violation of RFC 6455 (or of our size limit) by the client. Each maps
/// to the close code the server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A client frame without the mask bit.
    #[error("client frame is not masked")]
    Unmasked,
    /// A server frame with the mask bit (client-side decoding).
    #[error("server frame is masked")]
    Masked,
    /// RSV2/RSV3 set, or RSV1 without a negotiated extension or on a frame
    /// that may not carry it.
    #[error("reserved bits set")]
    ReservedBits,
    /// Opcode 3–7 or 11–15.
    #[error("reserved opcode {0}")]
    ReservedOpcode(u8),
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame payload longer than 125 bytes")]
    ControlTooLong,
    /// A continuation frame with no message in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is in progress.
    #[error("new data frame while a fragmented message is incomplete")]
    ExpectedContinuation,
    /// Text (or a close reason) that is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame with a one-byte payload.
    #[error("close frame payload of one byte")]
    CloseTooShort,
    /// A close code that may not be sent (RFC 6455 §7.4).
    #[error("close code {0} may not be sent")]
    BadCloseCode(u16),
    /// A 64-bit length with the most significant bit set.
    #[error("frame length has the most significant bit set")]
    BadLength,
    /// A length in a longer form than it needs: RFC 6455 §5.2 requires the
    /// shortest (7 bits up to 125, 16 bits up to 65,535).
    #[error("frame length not in its shortest form")]
    NonMinimalLength,
    /// The message (inflated, when compressed) exceeds the limit.
    #[error("message larger than {limit} bytes")]
    MessageTooBig {
        /// The limit in bytes.
        limit: usize,
    },
    /// The compressed payload could not be inflated.
    #[error("compressed payload is invalid: {0}")]
    BadCompression(String),
}

impl ProtocolError {
    /// The close code the server sends for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 | Self::BadCompression(_) => 1007,
            Self::MessageTooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

/// A fragmented data message being assembled.
struct Partial {
    text: bool,
    compressed: bool,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (uncompressed text only).
    utf8_valid: usize,
}

/// Decodes the frames a client sends into messages.
///
/// Holds no buffer between messages unless a fragmented message is in
/// progress, or an inflate context the client asked to keep (context
/// takeover).
pub struct Decoder {
    max_message: usize,
    inflater: Option<Inflater>,
    partial: Option<Partial>,
    need: usize,
    /// Of the frame at the front of the buffer (incomplete): payload bytes
    /// already unmasked in place, and how many of them are known valid
    /// UTF-8 (uncompressed text only; lets invalid text fail before the
    /// whole frame has arrived).
    peek_unmasked: usize,
    peek_valid: usize,
    /// Frames arrive masked: true on the server side.
    masked: bool,
}

impl Decoder {
    /// A decoder refusing messages above `max_message` bytes; `inflater`
    /// when permessage-deflate was negotiated.
    pub fn new(max_message: usize, inflater: Option<Inflater>) -> Self {
        Self {
            max_message,
            inflater,
            partial: None,
            need: 0,
            peek_unmasked: 0,
            peek_valid: 0,
            masked: true,
        }
    }

    /// The client side's decoder: the server's frames are not masked (used
    /// by load generators and tests that read what the server sends).
    pub fn client(max_message: usize, inflater: Option<Inflater>) -> Self {
        Self {
            masked: false,
            ..Self::new(max_message, inflater)
        }
    }

    /// True between messages: no fragmented message is being assembled.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// After [`Decoder::decode`] returned `Ok(None)`: how many bytes the
    /// buffer must hold before the next frame can be decoded (at least the
    /// bytes it holds plus one).
    pub fn need(&self) -> usize {
        self.need
    }

    /// Heap bytes this decoder holds (for memory accounting).
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.buf.capacity())
            + self.inflater.as_ref().map_or(0, Inflater::footprint)
    }

    /// Decodes the next message from the start of `src`, consuming the
    /// frames it used. `Ok(None)` means more bytes are needed (see
    /// [`Decoder::need`]). After an error the connection must be closed
    /// with [`ProtocolError::close_code`]; the decoder is not usable.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        loop {
            if src.len() < 2 {
                self.need = 2;
                return Ok(None);
            }
            let (b0, b1) = (src[0], src[1]);
            let fin = b0 & 0x80 != 0;
            let rsv1 = b0 & 0x40 != 0;
            if b0 & 0x30 != 0 {
                return Err(ProtocolError::ReservedBits);
            }
            let opcode =
                OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0f))?;
            match (b1 & 0x80 != 0, self.masked) {
                (false, true) => return Err(ProtocolError::Unmasked),
                (true, false) => return Err(ProtocolError::Masked),
                _ => {}
            }
            if opcode.is_control() {
                if !fin {
                    return Err(ProtocolError::FragmentedControl);
                }
                if rsv1 {
                    return Err(ProtocolError::ReservedBits);
                }
            }
            let (len, len_bytes) = match b1 & 0x7f {
                126 => {
                    if src.len() < 4 {
                        self.need = 4;
                        return Ok(None);
                    }
                    let n = u16::from_be_bytes([src[2], src[3]]);
                    if n < 126 {
                        return Err(ProtocolError::NonMinimalLength);
                    }
                    (u64::from(n), 2)
                }
                127 => {
                    if src.len() < 10 {
                        self.need = 10;
                        return Ok(None);
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&src[2..10]);
                    let n = u64::from_be_bytes(b);
                    if n >> 63 != 0 {
                        return Err(ProtocolError::BadLength);
                    }
                    if n <= 0xffff {
                        return Err(ProtocolError::NonMinimalLength);
                    }
                    (n, 8)
                }
                n => (n as u64, 0),
            };
            if opcode.is_control() && len > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
            // Fragmentation order is checked before waiting for the
            // payload, so a broken stream fails at its first bad header.
            match (opcode, &self.partial) {
                (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(ProtocolError::ExpectedContinuation)
                }
                _ => {}
            }
            if rsv1 && (self.inflater.is_none() || opcode == OpCode::Continuation) {
                return Err(ProtocolError::ReservedBits);
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.buf.len()) as u64;
            if !opcode.is_control() && so_far + len > self.max_message as u64 {
                return Err(ProtocolError::MessageTooBig {
                    limit: self.max_message,
                });
            }
            let head = 2 + len_bytes + if self.masked { 4 } else { 0 };
            let total = head + len as usize;
            let mask = (self.masked && src.len() >= head)
                .then(|| [src[head - 4], src[head - 3], src[head - 2], src[head - 1]]);
            if src.len() < total {
                self.need = total;
                if src.len() > head {
                    self.check_text_early(opcode, rsv1, &mut src[head..], mask)?;
                }
                return Ok(None);
            }
            let done = std::mem::take(&mut self.peek_unmasked);
            self.peek_valid = 0;
            src.advance(head);
            let mut payload = src.split_to(len as usize);
            if let Some(mask) = mask {
                unmask(&mut payload[done..], rotate(mask, done));
            }
            self.need = 0;
            match opcode {
                OpCode::Ping => return Ok(Some(Message::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Message::Pong(payload.freeze()))),
                OpCode::Close => return close_frame(&payload).map(|c| Some(Message::Close(c))),
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    if let Some(m) = self.data(opcode, fin, rsv1, payload)? {
                        return Ok(Some(m));
                    }
                }
            }
        }
    }

    /// Validates the UTF-8 of the part of an uncompressed text frame that
    /// has arrived, unmasking it in place, so a client sending invalid text
    /// in one large frame is refused at the first bad byte (Autobahn 6.4.3).
    /// Done only when no earlier fragment ends inside a character.
    fn check_text_early(
        &mut self,
        opcode: OpCode,
        rsv1: bool,
        arrived: &mut [u8],
        mask: Option<[u8; 4]>,
    ) -> Result<(), ProtocolError> {
        let text = match (opcode, &self.partial) {
            (OpCode::Text, _) => !rsv1,
            (OpCode::Continuation, Some(p)) => {
                p.text && !p.compressed && p.utf8_valid == p.buf.len()
            }
            _ => false,
        };
        if !text {
            return Ok(());
        }
        let from = self.peek_unmasked;
        if let Some(mask) = mask {
            unmask(&mut arrived[from..], rotate(mask, from));
        }
        self.peek_unmasked = arrived.len();
        match std::str::from_utf8(&arrived[self.peek_valid..]) {
            Ok(_) => self.peek_valid = arrived.len(),
            Err(e) if e.error_len().is_some() => return Err(ProtocolError::InvalidUtf8),
            Err(e) => self.peek_valid += e.valid_up_to(),
        }
        Ok(())
    }

    fn data(
        &mut self,
        opcode: OpCode,
        fin: bool,
        rsv1: bool,
        payload: BytesMut,
    ) -> Result<Option<Message>, ProtocolError> {
        if opcode != OpCode::Continuation {
            let text = opcode == OpCode::Text;
            if fin && !rsv1 {
                return finish(text, payload.freeze()).map(Some);
            }
            self.partial = Some(Partial {
                text,
                compressed: rsv1,
                buf: BytesMut::new(),
                utf8_valid: 0,
            });
        }
        let p = self
            .partial
            .as_mut()
            .expect("a message is in progress (checked in decode)");
        if p.buf.is_empty() {
            p.buf = payload;
        } else {
            p.buf.extend_from_slice(&payload);
        }
        if p.text && !p.compressed {
            // Fail fast on invalid UTF-8 instead of at the last fragment.
            match std::str::from_utf8(&p.buf[p.utf8_valid..]) {
                Ok(_) => p.utf8_valid = p.buf.len(),
                Err(e) if e.error_len().is_some() => return Err(ProtocolError::InvalidUtf8),
                Err(e) => p.utf8_valid += e.valid_up_to(),
            }
        }
        if !fin {
            return Ok(None);
        }
        let p = self.partial.take().expect("checked above");
        let body = if p.compressed {
            let inflater = self
                .inflater
                .as_mut()
                .expect("RSV1 is refused without an inflater");
            inflater
                .inflate(&p.buf, self.max_message)
                .map_err(|e| match e {
                    InflateError::TooBig => ProtocolError::MessageTooBig {
                        limit: self.max_message,
                    },
                    InflateError::Corrupt(m) => ProtocolError::BadCompression(m),
                })?
        } else {
            p.buf.freeze()
        };
        finish(p.text, body).map(Some)
    }
}

fn finish(text: bool, body: Bytes) -> Result<Message, ProtocolError> {
    if text {
        if std::str::from_utf8(&body).is_err() {
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(Message::Text(body))
    } else {
        Ok(Message::Binary(body))
    }
}

fn close_frame(payload: &[u8]) -> Result<Option<(u16, String)>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::CloseTooShort),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !crate::close_code_valid(code) {
                return Err(ProtocolError::BadCloseCode(code));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

/// The masking key as seen from payload offset `offset`.
fn rotate(mask: [u8; 4], offset: usize) -> [u8; 4] {
    std::array::from_fn(|i| mask[(offset + i) & 3])
}

/// XORs the payload with the client's masking key (RFC 6455 §5.3).
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests;
