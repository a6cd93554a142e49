//! The durable delivery queue: every accepted delivery waits here until it is delivered
//! or given up, across restarts and crashes, and is attempted by one node at a time.
//!
//! Deliveries wait in one line per destination (its URL), and the queue keeps, per
//! destination, a hint of when its next delivery is due: claims look only at
//! destinations with something due, take a bounded number from each, and skip those the
//! caller names (busy here). A destination whose breaker is open is *parked*: its hint is
//! moved to when the breaker lets a probe through, so no node takes its deliveries (or
//! spends anything on them) until then — a dead endpoint costs its own line only.
//!
//! A delivery is *claimed* before each attempt: a claim is a lease (the queue's `lease`,
//! far longer than an attempt's timeout) during which no other node takes it. A node that
//! dies mid-attempt leaves the claim to lapse, and another node attempts the delivery
//! again with the same id: at least once, deduplicated by receivers through
//! `X-Chatwoot-Delivery`. Queued deliveries are remembered by id for a window, so that an
//! event handled twice (after a crash) does not queue its deliveries twice.

mod memory;
mod redis;

use std::collections::HashSet;

use async_trait::async_trait;
use rtgate_protocol::pb;
use sha2::{Digest, Sha256};

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

/// A delivery to queue, and when it may be attempted.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The delivery.
    pub delivery: pb::Delivery,
    /// `None`: claimed by this node at once (it attempts it now); else due then, for
    /// whichever node claims it (its destination is busy or its breaker open here).
    pub not_before_ms: Option<i64>,
}

/// Queued and dead-lettered deliveries, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Waiting or being attempted.
    pub queued: u64,
    /// Given up.
    pub dead: u64,
}

/// The key of a delivery's destination line: a digest of its URL.
pub fn destination_key(url: &str) -> String {
    hex::encode(&Sha256::digest(url.as_bytes())[..12])
}

/// What a claim takes.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits<'a> {
    /// Most deliveries in all.
    pub total: usize,
    /// Most deliveries of one destination.
    pub per_destination: usize,
    /// Destination keys to leave alone (busy on this node).
    pub skip: &'a HashSet<String>,
}

/// The queue.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// How long a claim lasts.
    fn lease_ms(&self) -> i64;
    /// Queues deliveries whose ids were not queued within the window and are neither
    /// queued nor dead-lettered now; of those newly queued, the ones without
    /// `not_before_ms` come back claimed by this node (attempt them now). Also returns how
    /// many were newly queued.
    async fn enqueue(&self, items: Vec<Queued>, now_ms: i64) -> Result<(Vec<Claimed>, usize), EngineError>;
    /// Claims deliveries due by `now_ms`, within `limits`.
    async fn claim(&self, limits: ClaimLimits<'_>, now_ms: i64) -> Result<Vec<Claimed>, EngineError>;
    /// Renews a claim this node still holds; false when it lapsed and was taken.
    async fn extend(&self, claimed: &mut Claimed, now_ms: i64) -> Result<bool, EngineError>;
    /// Delivered: gone from the queue. Like [`retry`](Self::retry) and
    /// [`dead`](Self::dead), done only while the claim is still this node's (false when
    /// it lapsed and another node took the delivery: its outcome is that node's to
    /// record).
    async fn done(&self, claimed: &Claimed) -> Result<bool, EngineError>;
    /// Back in the queue, due at `due_ms`, its record (attempts, last error) updated.
    async fn retry(&self, claimed: &Claimed, due_ms: i64) -> Result<bool, EngineError>;
    /// Leaves a destination's line alone until `until_ms` (its breaker is open).
    async fn park(&self, url: &str, until_ms: i64) -> Result<(), EngineError>;
    /// Given up: moved to the dead letters.
    async fn dead(&self, claimed: &Claimed) -> Result<bool, EngineError>;
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
