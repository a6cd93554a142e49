//! Parsing the answers of the history scripts ([`READ`](super::scripts::READ) and
//! [`PAGE`](super::scripts::PAGE)) into positions and events.

use bytes::Bytes;

use crate::ids::{Epoch, StreamPos};

/// What the read script found.
#[derive(Debug)]
pub(super) enum Read {
    /// No position was given: the room's position only.
    Fresh,
    /// Events after the position, and the stream id to read on from when they are only
    /// a first page.
    Replay(Vec<(u64, Bytes)>, Option<String>),
    /// History does not cover the gap, or the position is of another epoch.
    Lost,
}

/// A reply value as text (bulk or simple strings, integers).
pub(crate) fn value_str(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A reply value's bytes (bulk or simple strings).
pub(crate) fn value_bytes(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Reads `offset, event` pairs until the end of a script's answer.
fn parse_entries(it: &mut impl Iterator<Item = redis::Value>) -> Option<Vec<(u64, Bytes)>> {
    let mut entries = Vec::new();
    while let Some(offset) = it.next() {
        let offset: u64 = value_str(&offset)?.parse().ok()?;
        let data = match it.next()? {
            redis::Value::BulkString(b) => Bytes::from(b),
            _ => return None,
        };
        entries.push((offset, data));
    }
    Some(entries)
}

/// Events of a page and the stream id to read on from (`None`: the replay is complete).
pub(super) type PageEntries = (Vec<(u64, Bytes)>, Option<String>);

/// The PAGE script's answer: `Some(None)` when history lost the rest.
pub(super) fn parse_page(values: Vec<redis::Value>) -> Option<Option<PageEntries>> {
    let mut it = values.into_iter();
    match value_str(&it.next()?)?.as_str() {
        "lost" => Some(None),
        "ok" => {
            let next = value_str(&it.next()?)?;
            let entries = parse_entries(&mut it)?;
            Some(Some((entries, (!next.is_empty()).then_some(next))))
        }
        _ => None,
    }
}

/// The READ script's answer: the room's position and what was found after the one given.
pub(super) fn parse_read(values: Vec<redis::Value>) -> Option<(StreamPos, Read)> {
    let mut it = values.into_iter();
    let epoch = value_str(&it.next()?)?;
    let top: u64 = value_str(&it.next()?)?.parse().ok()?;
    let status = value_str(&it.next()?)?;
    let next = value_str(&it.next()?)?;
    let pos = StreamPos {
        epoch: Epoch::from_wire(&epoch),
        offset: top,
    };
    let read = match status.as_str() {
        "fresh" => Read::Fresh,
        "lost" => Read::Lost,
        "ok" => Read::Replay(parse_entries(&mut it)?, (!next.is_empty()).then_some(next)),
        _ => return None,
    };
    Some((pos, read))
}
