//! The messages nodes exchange over Redis pub/sub, one per room channel. Publications are
//! written by the publish script inside Redis (so the format is one Lua can build):
//!
//! - `P<epoch>:<offset>:<Event protobuf bytes>`: a numbered room event;
//! - `E<0|1><principal>|<ServerFrame bytes>`: an ephemeral frame (typing), `1` when
//!   private, not to be delivered to `principal`'s own connections.
//!
//! and on the node control channel:
//!
//! - `K<origin node>|<u|c>:<id>|<revoke before, unix s, 0: none>|<reason>`: close the
//!   connections of a user (`u`) or contact (`c`), and refuse their tokens issued before
//!   the given time;
//! - `T<origin node>|<token key>`: close the `/cable` connections that subscribed with a
//!   `pubsub_token` (by its SHA-256, hex) that was rotated or deleted.

/// A decoded bus message, borrowing from the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage<'a> {
    /// A numbered room event.
    Publication {
        /// The room's epoch.
        epoch: &'a str,
        /// Its offset.
        offset: u64,
        /// The encoded `Event`.
        event: &'a [u8],
    },
    /// An ephemeral frame.
    Ephemeral {
        /// Hidden from contacts.
        private: bool,
        /// The sender's own room (`user:7`), never echoed to.
        exclude: &'a str,
        /// The encoded `ServerFrame`.
        frame: &'a [u8],
    },
}

/// A request from one node to all others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Close a user's or contact's connections.
    Kick {
        /// The node that asked (it acted on its own connections already).
        origin: String,
        /// A contact (else a user).
        contact: bool,
        /// The user or contact id.
        id: u64,
        /// Refuse their connection tokens issued before this (unix seconds; 0: none).
        revoke_before: u64,
        /// Shown to the client.
        reason: String,
    },
    /// Close the `/cable` connections that subscribed with a token.
    DropCableToken {
        /// The node that asked (it acted on its own connections already).
        origin: String,
        /// The token's key (hex SHA-256).
        key: String,
    },
    /// A console watches on node `origin`: publish figures to the console room for a while.
    ConsoleWatched {
        /// The node holding the console's connection.
        origin: String,
    },
    /// A batch of client frames for an HTTP fallback session held by `target`.
    HttpFrames {
        /// The node holding the session's stream.
        target: String,
        /// The session id.
        session: String,
        /// The batch's number.
        seq: u64,
        /// The frames, each length-prefixed, as the client sent them.
        frames: Vec<u8>,
    },
}

/// Encodes a control message.
pub fn encode_control(message: &ControlMessage) -> Vec<u8> {
    match message {
        ControlMessage::Kick {
            origin,
            contact,
            id,
            revoke_before,
            reason,
        } => format!(
            "K{origin}|{}:{id}|{revoke_before}|{reason}",
            if *contact { 'c' } else { 'u' }
        )
        .into_bytes(),
        ControlMessage::DropCableToken { origin, key } => format!("T{origin}|{key}").into_bytes(),
        ControlMessage::ConsoleWatched { origin } => format!("C{origin}").into_bytes(),
        ControlMessage::HttpFrames {
            target,
            session,
            seq,
            frames,
        } => {
            let mut out = format!("H{target}|{session}|{seq}|").into_bytes();
            out.extend_from_slice(frames);
            out
        }
    }
}

/// Decodes a control message; `None` for anything malformed.
pub fn decode_control(bytes: &[u8]) -> Option<ControlMessage> {
    let (&kind, rest) = bytes.split_first()?;
    if kind == b'H' {
        let (target, rest) = split_once(rest, b'|')?;
        let (session, rest) = split_once(rest, b'|')?;
        let (seq, frames) = split_once(rest, b'|')?;
        return Some(ControlMessage::HttpFrames {
            target: std::str::from_utf8(target).ok()?.to_string(),
            session: std::str::from_utf8(session).ok()?.to_string(),
            seq: std::str::from_utf8(seq).ok()?.parse().ok()?,
            frames: frames.to_vec(),
        });
    }
    let text = std::str::from_utf8(rest).ok()?;
    if kind == b'C' && !text.is_empty() {
        return Some(ControlMessage::ConsoleWatched {
            origin: text.to_string(),
        });
    }
    if kind == b'T' {
        let (origin, key) = text.split_once('|')?;
        return Some(ControlMessage::DropCableToken {
            origin: origin.to_string(),
            key: key.to_string(),
        });
    }
    if kind != b'K' {
        return None;
    }
    let mut parts = text.splitn(4, '|');
    let origin = parts.next()?.to_string();
    let (who, id) = parts.next()?.split_once(':')?;
    let contact = match who {
        "u" => false,
        "c" => true,
        _ => return None,
    };
    Some(ControlMessage::Kick {
        origin,
        contact,
        id: id.parse().ok()?,
        revoke_before: parts.next()?.parse().ok()?,
        reason: parts.next()?.to_string(),
    })
}

fn split_once(bytes: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|b| *b == sep)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

/// Decodes a bus message; `None` for anything malformed.
pub fn decode(bytes: &[u8]) -> Option<BusMessage<'_>> {
    let (&kind, rest) = bytes.split_first()?;
    match kind {
        b'P' => {
            let (epoch, rest) = split_once(rest, b':')?;
            let (offset, event) = split_once(rest, b':')?;
            Some(BusMessage::Publication {
                epoch: std::str::from_utf8(epoch).ok()?,
                offset: std::str::from_utf8(offset).ok()?.parse().ok()?,
                event,
            })
        }
        b'E' => {
            let (&flag, rest) = rest.split_first()?;
            let (exclude, frame) = split_once(rest, b'|')?;
            Some(BusMessage::Ephemeral {
                private: flag == b'1',
                exclude: std::str::from_utf8(exclude).ok()?,
                frame,
            })
        }
        _ => None,
    }
}

/// Encodes an ephemeral message.
pub fn encode_ephemeral(private: bool, exclude: &str, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + exclude.len() + frame.len());
    out.push(b'E');
    out.push(if private { b'1' } else { b'0' });
    out.extend_from_slice(exclude.as_bytes());
    out.push(b'|');
    out.extend_from_slice(frame);
    out
}

/// Encodes a publication (the publish script builds the same bytes).
pub fn encode_publication(epoch: &str, offset: u64, event: &[u8]) -> Vec<u8> {
    let mut out = format!("P{epoch}:{offset}:").into_bytes();
    out.extend_from_slice(event);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(epoch in "[0-9a-f]{1,16}", offset in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
                       private in any::<bool>(), exclude in "[a-z]{1,8}:[0-9]{1,5}") {
            let p = encode_publication(&epoch, offset, &payload);
            prop_assert_eq!(decode(&p), Some(BusMessage::Publication { epoch: &epoch, offset, event: &payload }));
            let e = encode_ephemeral(private, &exclude, &payload);
            prop_assert_eq!(decode(&e), Some(BusMessage::Ephemeral { private, exclude: &exclude, frame: &payload }));
        }

        #[test]
        fn garbage_is_refused_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn control_messages_round_trip() {
        let kick = ControlMessage::Kick {
            origin: "n1".into(),
            contact: true,
            id: 42,
            revoke_before: 1_900_000_000,
            reason: "account | suspended".into(),
        };
        assert_eq!(decode_control(&encode_control(&kick)), Some(kick));
        let drop = ControlMessage::DropCableToken {
            origin: "n1".into(),
            key: "ab12".into(),
        };
        assert_eq!(decode_control(&encode_control(&drop)), Some(drop));
        let frames = ControlMessage::HttpFrames {
            target: "n1".into(),
            session: "ab-n1".into(),
            seq: 7,
            frames: vec![3, b'|', 0, 255],
        };
        assert_eq!(decode_control(&encode_control(&frames)), Some(frames));
        let watched = ControlMessage::ConsoleWatched { origin: "n1".into() };
        assert_eq!(decode_control(&encode_control(&watched)), Some(watched));
        for bad in [
            b"Tn1",
            &b""[..],
            b"K",
            b"Kn1|x:1|0|r",
            b"Kn1|u:a|0|r",
            b"Kn1|u:1|r",
            b"Xn1|u:1|0|r",
            b"Hn1|s|x|ab",
            b"Hn1|s",
            b"C",
        ] {
            assert_eq!(decode_control(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"X",
            b"P",
            b"Pe",
            b"Pe:",
            b"Pe:x:",
            b"Pe:-1:",
            b"E",
            b"E1",
            b"E1user:7",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
