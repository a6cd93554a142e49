//! Length-delimited framing for byte streams (QUIC streams), sans-IO.
//!
//! A frame on a stream is `varint(length) ‖ protobuf message`, the standard protobuf
//! "delimited" form (`writeDelimitedTo` in Java, `encodeDelimited` in protobuf.js). A
//! WebSocket message or a datagram carries one frame without the prefix.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// Why bytes could not be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced (or actual) length exceeds the limit.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the offending frame.
        size: u64,
        /// The limit in force.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("invalid length prefix")]
    BadLength,
    /// The bytes are not a valid protobuf message of the expected type.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The message decoded but carries no frame kind this side understands.
    #[error("frame carries no known kind")]
    Empty,
}

/// Appends `varint(len) ‖ msg` to `buf`.
pub fn encode_frame_into<M: Message>(msg: &M, buf: &mut BytesMut) {
    let len = msg.encoded_len();
    buf.reserve(len + prost::length_delimiter_len(len));
    msg.encode_length_delimited(buf)
        .expect("BytesMut grows on demand");
}

/// Encodes `msg` as one length-delimited frame.
pub fn encode_frame<M: Message>(msg: &M) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame_into(msg, &mut buf);
    buf.freeze()
}

/// Decodes one unprefixed frame (a WebSocket message, a datagram, or the body returned by
/// [`FrameDecoder::next_frame`]), enforcing `max` bytes.
pub fn decode_frame<M: Message + Default>(bytes: &[u8], max: usize) -> Result<M, FrameError> {
    if bytes.len() > max {
        return Err(FrameError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    M::decode(bytes).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Splits a byte stream into frame bodies. Feed it whatever the stream yields with
/// [`push`](Self::push), then take complete frames with [`next_frame`](Self::next_frame).
/// A frame whose announced length exceeds the limit is refused before its body is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some((len, prefix)) = read_varint(&self.buf)? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(FrameError::TooLarge {
                size: len,
                max: self.max,
            });
        }
        let len = len as usize;
        if self.buf.len() < prefix + len {
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        let body = self.buf.split_to(len).freeze();
        if self.buf.is_empty() {
            // Release the allocation of an idle connection.
            self.buf = BytesMut::new();
        }
        Ok(Some(body))
    }
}

/// Reads a varint at the start of `buf`: `Ok(None)` when incomplete, else the value and
/// the number of bytes it took.
fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().take(10).enumerate() {
        let part = u64::from(byte & 0x7f);
        if i == 9 && *byte > 1 {
            return Err(FrameError::BadLength);
        }
        value |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        Err(FrameError::BadLength)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use proptest::prelude::*;

    fn ping(nonce: u64) -> pb::ClientFrame {
        pb::ClientFrame {
            id: 0,
            kind: Some(pb::client_frame::Kind::Ping(pb::Ping { nonce })),
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0x80, 0x01]); // 128
        assert_eq!(dec.next_frame(), Err(FrameError::TooLarge { size: 128, max: 16 }));
    }

    #[test]
    fn overlong_varint_is_refused() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0xff; 11]);
        assert_eq!(dec.next_frame(), Err(FrameError::BadLength));
    }

    #[test]
    fn unprefixed_frame_over_limit_is_refused() {
        let err = decode_frame::<pb::ClientFrame>(&[0u8; 17], 16).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { size: 17, .. }));
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(nonces in proptest::collection::vec(any::<u64>(), 1..20), cut in 1usize..7) {
            let mut wire = BytesMut::new();
            for n in &nonces {
                encode_frame_into(&ping(*n), &mut wire);
            }
            let mut dec = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                dec.push(chunk);
                while let Some(body) = dec.next_frame().unwrap() {
                    let frame: pb::ClientFrame = decode_frame(&body, 1024).unwrap();
                    got.push(frame);
                }
            }
            let want: Vec<_> = nonces.iter().map(|n| ping(*n)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(dec.buffered(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut dec = FrameDecoder::new(64);
            dec.push(&bytes);
            while let Ok(Some(body)) = dec.next_frame() {
                let _ = decode_frame::<pb::ClientFrame>(&body, 64);
            }
            let _ = decode_frame::<pb::ServerFrame>(&bytes, 64);
        }
    }
}
