//! The durable delivery queue: every accepted delivery waits here until it is delivered
//! or given up, across restarts and crashes, and is attempted by one node at a time.
//!
//! A delivery is *claimed* before each attempt: a claim is a lease (the queue's `lease`,
//! far longer than an attempt's timeout) during which no other node takes it. A node that
//! dies mid-attempt leaves the claim to lapse, and another node attempts the delivery
//! again with the same id: at least once, deduplicated by receivers through
//! `X-Chatwoot-Delivery`. Queued deliveries are remembered by id for a window, so that an
//! event handled twice (after a crash) does not queue its deliveries twice.

mod memory;
mod redis;

use async_trait::async_trait;
use rtgate_protocol::pb;

pub use memory::MemoryDeliveryQueue;
pub use redis::RedisDeliveryQueue;

use crate::engine::EngineError;

/// Most dead letters kept: beyond, the oldest go.
pub const MAX_DEAD: usize = 100_000;

/// A delivery this node holds the claim of, until `lease_until_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The delivery as stored.
    pub delivery: pb::Delivery,
    /// When the claim lapses (unix ms).
    pub lease_until_ms: i64,
}

/// Queued and dead-lettered deliveries, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Waiting or being attempted.
    pub queued: u64,
    /// Given up.
    pub dead: u64,
}

/// The queue.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// How long a claim lasts.
    fn lease_ms(&self) -> i64;
    /// Queues deliveries whose ids were not queued within the window; those newly queued
    /// come back claimed by this node (attempt them now).
    async fn enqueue(&self, deliveries: Vec<pb::Delivery>, now_ms: i64) -> Result<Vec<Claimed>, EngineError>;
    /// Claims up to `max` deliveries due by `now_ms`.
    async fn claim(&self, max: usize, now_ms: i64) -> Result<Vec<Claimed>, EngineError>;
    /// Renews a claim this node still holds; false when it lapsed and was taken.
    async fn extend(&self, claimed: &mut Claimed, now_ms: i64) -> Result<bool, EngineError>;
    /// Delivered: gone from the queue.
    async fn done(&self, id: &str) -> Result<(), EngineError>;
    /// Back in the queue, due at `due_ms`, its record (attempts, last error) updated.
    async fn retry(&self, delivery: &pb::Delivery, due_ms: i64) -> Result<(), EngineError>;
    /// Given up: moved to the dead letters.
    async fn dead(&self, delivery: &pb::Delivery) -> Result<(), EngineError>;
    /// Dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<pb::Delivery>, EngineError>;
    /// A dead letter back in the queue, attempts reset, due now; false when there is none
    /// of that id.
    async fn replay(&self, id: &str, now_ms: i64) -> Result<bool, EngineError>;
    /// A dead letter deleted; false when there is none of that id.
    async fn discard(&self, id: &str) -> Result<bool, EngineError>;
    /// How many are queued and dead.
    async fn depth(&self) -> Result<Depth, EngineError>;
}

/// A dead letter made ready to be attempted again.
fn revived(mut delivery: pb::Delivery, now_ms: i64) -> pb::Delivery {
    delivery.attempts = 0;
    delivery.failed_at_ms = 0;
    delivery.queued_at_ms = now_ms;
    delivery
}
