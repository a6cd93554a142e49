//! The durable queue domain events wait in until every listener is done with them. Two
//! implementations behind one seam: [`MemoryQueue`] (a single node, no Redis) and
//! [`RedisQueue`] (a Redis Stream with a consumer group; the backend may `XADD` to it
//! directly).
//!
//! Every event is appended once per id within the deduplication window, whichever way it
//! came in; the bus acknowledges an entry only when every listener has finished with it.

mod memory;
mod redis;

pub use memory::MemoryQueue;
pub(crate) use redis::{RELEASE as LEASE_RELEASE, RENEW as LEASE_RENEW};
pub use redis::{RedisQueue, RedisQueueConfig};

use std::time::Duration;

use async_trait::async_trait;
use rtgate_protocol::pb;

use crate::engine::EngineError;

/// What became of an appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Queued durably.
    Accepted,
    /// Its id was seen within the deduplication window: not queued again.
    Duplicate,
}

/// An entry read from the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The queue's id of the entry (a stream id on Redis).
    pub id: String,
    /// The event, or why the entry is poisonous (undecodable, refused, a duplicate that
    /// came in by the stream).
    pub event: Result<pb::DomainEvent, Poison>,
    /// Times the entry was handed out before this one (by this node or a dead one).
    pub attempts: u32,
}

/// Why an entry cannot be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poison {
    /// A duplicate of an event already queued (it came in by the stream): dropped.
    Duplicate,
    /// Cannot be decoded or is refused: dead-lettered with this reason.
    Refused(String),
}

/// A dead-lettered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The original entry's id.
    pub entry: String,
    /// The event's id, when it could be read.
    pub event_id: String,
    /// Why.
    pub reason: String,
}

/// The queue seam.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Appends checked events, answering for each whether it was queued or is a duplicate.
    async fn append(&self, events: &[pb::DomainEvent]) -> Result<Vec<Appended>, EngineError>;

    /// Entries to handle, at most `max`, waiting up to `wait` for the first. Only one node
    /// at a time reads (the one holding the queue's lease), so that events of one
    /// conversation are handled in order; an empty answer is normal.
    async fn read(&self, max: usize, wait: Duration) -> Result<Vec<Entry>, EngineError>;

    /// Every listener is done with these entries.
    async fn ack(&self, entries: &[String]) -> Result<(), EngineError>;

    /// Gives up on an entry (for one listener, or for all when it cannot be read): kept
    /// in the dead letters with `reason`. It is acknowledged as usual, once every listener
    /// is done with it.
    async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<(), EngineError>;

    /// The most recent dead letters, oldest first.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, EngineError>;

    /// Whether this node still reads the queue (holds its lease). When it stops, the
    /// entries it holds are left to the next reader.
    fn holds(&self) -> bool {
        true
    }

    /// This node stops reading (shutdown): the next reader may take over at once.
    async fn release(&self) {}
}
