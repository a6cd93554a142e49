//! The engine: room offsets, history and delivery of publications to subscribers,
//! wherever they are connected.
//!
//! [`Engine`] is the seam between the session layer and the storage/fan-out layer. The
//! embedded [`MemoryEngine`] serves a single node with no external service.

pub mod bus;
mod memory;
pub mod redis;

pub use memory::MemoryEngine;
pub use redis::{RedisCommands, RedisConfig, RedisConnection, RedisEngine, ShardedPubSub};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use rtgate_protocol::{RoomName, pb};

use crate::hub::{Hub, Publication, ReplayCursor, ReplayPage, Subscriber};
use crate::ids::{ConnectionId, StreamPos};

/// Why the engine could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backing store is unreachable; the caller may retry later.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("engine failure: {0}")]
    Internal(String),
}

/// The outcome of a subscription, once the subscriber is registered and prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// The room's newest position when the subscription became live.
    pub pos: StreamPos,
    /// A position was given and every event after it is being replayed.
    pub recovered: bool,
    /// Events replayed ahead of live ones.
    pub replayed: u32,
}

/// How much history each room keeps, in either engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most events kept per room.
    pub max_events: usize,
    /// Oldest event kept.
    pub max_age: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_events: 1_000,
            max_age: Duration::from_secs(300),
        }
    }
}

/// Most events in one replay page read from a shared store.
pub const REPLAY_PAGE_EVENTS: usize = 100;

/// About the most bytes in the first page of a replay read from a shared store.
pub const REPLAY_PAGE_BYTES: usize = 256 * 1024;

/// How long the gateway waits for one engine call before calling the engine unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs an engine call with [`CALL_TIMEOUT`]; a timeout counts as `Unavailable`.
pub async fn with_timeout<T>(
    call: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(EngineError::Unavailable("engine call timed out".into())))
}

/// Where a publish landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's position.
    pub pos: StreamPos,
    /// The room already held an event with the same idempotency key: nothing was
    /// published and `pos` is that event's.
    pub duplicate: bool,
}

/// Counters of an engine's health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineHealth {
    /// Failed or timed-out calls to the backing store.
    pub errors: u64,
    /// Reconnections of the fan-out (pub/sub) connection.
    pub reconnects: u64,
}

/// What the gateway knows of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// Subscribers (in the whole gateway for engines that can tell, else on this node).
    pub subscribers: u32,
    /// The room's newest position.
    pub pos: StreamPos,
}

/// Storage and fan-out of room events.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Assigns the next offset of `room` to `event` (an encoded `Event`), stores it in the
    /// room's history and delivers it to every subscriber of the room. The caller encodes
    /// an event once, whatever the number of rooms it goes to. With an idempotency `key`
    /// (the event's id), a key the room already holds among its recent events (its
    /// history) publishes nothing and answers that event's position as a duplicate.
    async fn publish(
        &self,
        room: &RoomName,
        event: &[u8],
        key: Option<&str>,
    ) -> Result<Published, EngineError>;

    /// Registers `sub` for live events of its room and prepares it with the events missed
    /// since `since` (if given and still in history). The caller activates it once the
    /// client has been told the outcome.
    async fn subscribe(
        &self,
        sub: Arc<Subscriber>,
        since: Option<StreamPos>,
    ) -> Result<SubscribeOutcome, EngineError>;

    /// The next page of a replay that [`subscribe`](Self::subscribe) did not hand over
    /// whole, of at most about `max_bytes`.
    async fn replay_page(
        &self,
        room: &RoomName,
        cursor: &ReplayCursor,
        max_bytes: usize,
    ) -> Result<ReplayPage, EngineError>;

    /// Removes a connection from a room.
    async fn unsubscribe(&self, room: &RoomName, conn: ConnectionId);

    /// Delivers an ephemeral frame (not stored, not numbered) to the room's subscribers,
    /// except the connections of the principal `exclude` (e.g. `user:7`); `private` frames
    /// skip contact connections.
    async fn publish_ephemeral(
        &self,
        room: &RoomName,
        frame: Bytes,
        exclude: Option<&str>,
        private: bool,
    ) -> Result<(), EngineError>;

    /// Subscribers and position of a room.
    async fn room_info(&self, room: &RoomName) -> Result<RoomInfo, EngineError>;

    /// Passes a control message to every other node; answers how many got it. A single
    /// node has no others.
    async fn broadcast_control(&self, _message: &bus::ControlMessage) -> Result<u32, EngineError> {
        Ok(0)
    }

    /// Control messages from the nodes (this one's own included); taken once, by the node.
    fn take_control(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<bus::ControlMessage>> {
        None
    }

    /// Records that a user's (or contact's) tokens issued before `before` (unix seconds)
    /// are refused until `until`, where every node, present or future, finds it.
    async fn store_revocation(
        &self,
        _contact: bool,
        _id: u64,
        _before: u64,
        _until: u64,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// The revocations in force at `now` (unix seconds): (contact, id, before, until).
    async fn load_revocations(&self, _now: u64) -> Result<Vec<(bool, u64, u64, u64)>, EngineError> {
        Ok(Vec::new())
    }

    /// The node-local registry this engine delivers to.
    fn hub(&self) -> &Arc<Hub>;

    /// Whether the engine can serve requests now.
    fn is_ready(&self) -> bool {
        true
    }

    /// Error and reconnection counts, for metrics.
    fn health(&self) -> EngineHealth {
        EngineHealth::default()
    }

    /// Periodic housekeeping (expiring history, …).
    async fn maintain(&self) {}
}

/// Builds the `ServerFrame { event: RoomEvent }` every subscriber receives, around an
/// already encoded `Event`, without decoding it: the frame is encoded once per node and
/// its bytes shared by every local subscriber.
pub fn encode_publication(room: &RoomName, pos: StreamPos, event: &[u8]) -> Arc<Publication> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let head = pb::RoomEvent {
        room: room.to_string(),
        epoch: pos.epoch.to_string(),
        offset: pos.offset,
        event: None,
    };
    // RoomEvent.event is field 4; ServerFrame.event is field 3.
    let inner_len = head.encoded_len() + 1 + prost::length_delimiter_len(event.len()) + event.len();
    let mut buf = bytes::BytesMut::with_capacity(inner_len + 1 + prost::length_delimiter_len(inner_len));
    encode_key(3, WireType::LengthDelimited, &mut buf);
    encode_varint(inner_len as u64, &mut buf);
    head.encode_raw(&mut buf);
    encode_key(4, WireType::LengthDelimited, &mut buf);
    encode_varint(event.len() as u64, &mut buf);
    buf.extend_from_slice(event);
    Arc::new(Publication {
        room: room.clone(),
        pos,
        frame: buf.freeze(),
        at: std::time::Instant::now(),
    })
}

/// How a subscription from `since` can be served given the room's newest position `top`
/// and the oldest offset still in history (`oldest`, or `top + 1` when history is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// No position given: start live.
    Fresh,
    /// Replay the events after this offset (possibly none).
    ReplayAfter(u64),
    /// The gap cannot be filled: start live and say `recovered = false`.
    Lost,
}

/// Decides whether a subscription can recover from `since`.
pub fn plan_recovery(since: Option<&StreamPos>, top: &StreamPos, oldest: u64) -> Recovery {
    let Some(since) = since else {
        return Recovery::Fresh;
    };
    // Epoch "" offset 0 is the position before anything: a client that joined a room
    // before its first event follows on from there in whatever epoch it got.
    let before_anything = since.epoch.as_str().is_empty() && since.offset == 0;
    if (since.epoch != top.epoch && !before_anything) || since.offset > top.offset {
        return Recovery::Lost;
    }
    if since.offset + 1 >= oldest {
        Recovery::ReplayAfter(since.offset)
    } else {
        Recovery::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Epoch;

    fn pos(epoch: &str, offset: u64) -> StreamPos {
        StreamPos {
            epoch: Epoch::from_wire(epoch),
            offset,
        }
    }

    #[test]
    fn publication_frames_decode_as_server_frames() {
        let event = pb::Event {
            id: "x".into(),
            name: "message.created".into(),
            json: "{}".into(),
            ..Default::default()
        };
        let room = RoomName::parse("inbox:3").unwrap();
        let p = encode_publication(&room, pos("ep", 300), &event.encode_to_vec());
        let frame = pb::ServerFrame::decode(&p.frame[..]).unwrap();
        assert_eq!(
            frame.kind,
            Some(pb::server_frame::Kind::Event(pb::RoomEvent {
                room: "inbox:3".into(),
                epoch: "ep".into(),
                offset: 300,
                event: Some(event),
            }))
        );
    }

    #[test]
    fn recovery_plans() {
        let top = pos("e1", 10);
        assert_eq!(plan_recovery(None, &top, 1), Recovery::Fresh);
        assert_eq!(
            plan_recovery(Some(&pos("e1", 10)), &top, 5),
            Recovery::ReplayAfter(10)
        );
        assert_eq!(
            plan_recovery(Some(&pos("e1", 4)), &top, 5),
            Recovery::ReplayAfter(4)
        );
        assert_eq!(plan_recovery(Some(&pos("e1", 3)), &top, 5), Recovery::Lost);
        assert_eq!(plan_recovery(Some(&pos("e0", 9)), &top, 1), Recovery::Lost);
        assert_eq!(plan_recovery(Some(&pos("e1", 11)), &top, 1), Recovery::Lost);
        // Empty history (everything expired): only a client that saw the top recovers.
        assert_eq!(
            plan_recovery(Some(&pos("e1", 10)), &top, 11),
            Recovery::ReplayAfter(10)
        );
        assert_eq!(plan_recovery(Some(&pos("e1", 9)), &top, 11), Recovery::Lost);
        // Joined before the room's first event: everything after offset 0, if kept.
        assert_eq!(
            plan_recovery(Some(&pos("", 0)), &top, 1),
            Recovery::ReplayAfter(0)
        );
        assert_eq!(plan_recovery(Some(&pos("", 0)), &top, 2), Recovery::Lost);
        assert_eq!(
            plan_recovery(Some(&pos("", 0)), &pos("", 0), 1),
            Recovery::ReplayAfter(0)
        );
        assert_eq!(plan_recovery(Some(&pos("", 3)), &top, 1), Recovery::Lost);
    }
}
