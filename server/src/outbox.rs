//! Per-connection send queues with one shared byte budget.
//!
//! Every frame bound for a client goes through a [`Lane`]: the control lane, or one lane per
//! room stream (WebTransport) — on WebSocket all lanes feed the one socket. Lanes never block
//! the sender (fan-out runs on the publisher's task), so a slow client cannot slow anyone
//! else. Instead each connection has a byte budget: when the bytes queued on all its lanes
//! exceed it, the connection is marked overflowed and its driver disconnects it with
//! `slow_consumer`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

/// The byte budget shared by all lanes of one connection.
#[derive(Debug)]
pub struct Outbox {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    notify: Notify,
    /// Someone waits for the queue to fall below the replay mark.
    drain_wanted: AtomicBool,
    drained: Notify,
}

impl Outbox {
    /// A budget of `limit` queued bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Outbox {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            notify: Notify::new(),
            drain_wanted: AtomicBool::new(false),
            drained: Notify::new(),
        })
    }

    /// Replays fill the queue only up to this mark (half the budget), so that a client
    /// reading a long replay is never taken for a slow consumer, and live events still
    /// have room.
    pub fn replay_mark(&self) -> usize {
        self.limit / 2
    }

    /// Whether a replay may queue more now.
    pub fn has_replay_room(&self) -> bool {
        self.queued() < self.replay_mark()
    }

    /// Completes once the queue is below [`replay_mark`](Self::replay_mark).
    pub async fn below_replay_mark(&self) {
        loop {
            let notified = self.drained.notified();
            self.drain_wanted.store(true, Ordering::Release);
            if self.has_replay_room() {
                return;
            }
            notified.await;
        }
    }

    fn release(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        if before.saturating_sub(n) < self.replay_mark() && self.drain_wanted.swap(false, Ordering::AcqRel) {
            self.drained.notify_waiters();
        }
    }

    fn reserve(&self, n: usize) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.limit {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.trip();
            return false;
        }
        true
    }

    /// Marks the connection as unable to keep up.
    pub fn trip(&self) {
        if !self.overflowed.swap(true, Ordering::Relaxed) {
            metrics::counter!("rtgate_send_queue_overflows_total").increment(1);
        }
        self.notify.notify_one();
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether the budget has been exceeded.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Completes once the budget has been exceeded.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_overflowed() {
                return;
            }
            notified.await;
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneError {
    /// The connection's budget is exhausted.
    Overflow,
    /// The writer is gone (the connection is closing).
    Closed,
}

/// A frame waiting to be written.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The frame body.
    pub frame: Bytes,
    /// For room events: when the event reached this node's fan-out.
    pub at: Option<Instant>,
}

impl Queued {
    /// Records the delivery latency of a room event once it has been written.
    pub fn record_written(&self) {
        if let Some(at) = self.at {
            metrics::histogram!("rtgate_delivery_seconds").record(at.elapsed().as_secs_f64());
        }
    }
}

/// The queue behind a lane. It allocates nothing until a frame is queued and gives its
/// memory back once drained (an idle connection holds no buffer).
#[derive(Debug, Default)]
struct LaneQueue {
    items: Mutex<VecDeque<Queued>>,
    ready: Notify,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
}

/// Queue capacity kept after draining; beyond, the buffer is released.
const KEEP_CAPACITY: usize = 16;

/// The sending end of one queue of frame bodies. Cloning adds a sender; the receiver sees
/// the end of the queue once every sender is dropped.
#[derive(Debug)]
pub struct Lane {
    queue: Arc<LaneQueue>,
    outbox: Arc<Outbox>,
}

impl Clone for Lane {
    fn clone(&self) -> Self {
        self.queue.senders.fetch_add(1, Ordering::Relaxed);
        Lane {
            queue: self.queue.clone(),
            outbox: self.outbox.clone(),
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if self.queue.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.queue.ready.notify_one();
        }
    }
}

/// The receiving end, owned by a transport writer.
#[derive(Debug)]
pub struct LaneReceiver {
    queue: Arc<LaneQueue>,
    outbox: Arc<Outbox>,
}

impl Drop for LaneReceiver {
    fn drop(&mut self) {
        self.queue.receiver_gone.store(true, Ordering::Release);
        let drained: usize = std::mem::take(&mut *self.queue.items.lock().expect("lane lock"))
            .iter()
            .map(|q| q.frame.len())
            .sum();
        self.outbox.release(drained);
    }
}

impl Lane {
    /// A new lane drawing on `outbox`'s budget.
    pub fn new(outbox: &Arc<Outbox>) -> (Lane, LaneReceiver) {
        let queue = Arc::new(LaneQueue::default());
        queue.senders.store(1, Ordering::Relaxed);
        (
            Lane {
                queue: queue.clone(),
                outbox: outbox.clone(),
            },
            LaneReceiver {
                queue,
                outbox: outbox.clone(),
            },
        )
    }

    /// Queues a frame body, charging it to the budget.
    pub fn send(&self, frame: Bytes) -> Result<(), LaneError> {
        self.queue(Queued { frame, at: None })
    }

    /// Queues a room event that reached the fan-out at `at`.
    pub fn send_event(&self, frame: Bytes, at: Instant) -> Result<(), LaneError> {
        self.queue(Queued { frame, at: Some(at) })
    }

    fn push(&self, item: Queued) -> Result<(), LaneError> {
        if self.queue.receiver_gone.load(Ordering::Acquire) {
            return Err(LaneError::Closed);
        }
        self.queue.items.lock().expect("lane lock").push_back(item);
        self.queue.ready.notify_one();
        Ok(())
    }

    fn queue(&self, item: Queued) -> Result<(), LaneError> {
        let n = item.frame.len();
        if !self.outbox.reserve(n) {
            return Err(LaneError::Overflow);
        }
        self.push(item).inspect_err(|_| {
            self.outbox.release(n);
        })
    }

    /// Queues a frame outside the budget: only for the final `Disconnect`.
    pub fn send_final(&self, frame: Bytes) -> Result<(), LaneError> {
        self.outbox.queued.fetch_add(frame.len(), Ordering::Relaxed);
        self.push(Queued { frame, at: None })
    }

    /// The budget this lane draws on.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

impl LaneReceiver {
    fn pop(&self) -> Option<Queued> {
        let mut items = self.queue.items.lock().expect("lane lock");
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > KEEP_CAPACITY {
            *items = VecDeque::new();
        }
        item
    }

    /// The next queued item, with its timing; `None` once every sender is gone and the
    /// queue is empty.
    pub async fn recv_queued(&mut self) -> Option<Queued> {
        loop {
            if let Some(item) = self.pop() {
                return Some(item);
            }
            if self.queue.senders.load(Ordering::Acquire) == 0 {
                return self.pop();
            }
            self.queue.ready.notified().await;
        }
    }

    /// A queued item if one is there right now.
    pub fn try_recv_queued(&mut self) -> Option<Queued> {
        self.pop()
    }

    /// Adds what is queued right now to `batch`, up to `max` items in all.
    pub fn fill_batch(&mut self, batch: &mut Vec<Queued>, max: usize) {
        while batch.len() < max {
            match self.pop() {
                Some(q) => batch.push(q),
                None => break,
            }
        }
    }

    /// The next frame to write; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.recv_queued().await.map(|q| q.frame)
    }

    /// A frame if one is queued right now.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.pop().map(|q| q.frame)
    }

    /// Returns `n` written bytes to the budget.
    pub fn written(&self, n: usize) {
        self.outbox.release(n);
    }
}

/// Where ephemeral frames go when the transport has unreliable datagrams.
pub trait DatagramSink: Send + Sync + std::fmt::Debug {
    /// Sends one frame as a datagram; false if it could not be (too large, closed).
    fn send_datagram(&self, frame: Bytes) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_trips_once_budget_is_exceeded_and_written_bytes_return() {
        let outbox = Outbox::new(10);
        let (lane, mut rx) = Lane::new(&outbox);
        lane.send(Bytes::from_static(b"123456")).unwrap();
        let got = rx.recv().await.unwrap();
        rx.written(got.len());
        lane.send(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(outbox.queued(), 6);
        assert_eq!(lane.send(Bytes::from_static(b"123456")), Err(LaneError::Overflow));
        assert!(outbox.is_overflowed());
        outbox.overflowed().await;
        // Once overflowed, nothing more is queued.
        assert_eq!(lane.send(Bytes::from_static(b"1")), Err(LaneError::Overflow));
    }

    #[tokio::test]
    async fn the_queue_ends_when_every_sender_is_gone_and_frees_its_memory() {
        let outbox = Outbox::new(1 << 20);
        let (lane, mut rx) = Lane::new(&outbox);
        let other = lane.clone();
        for _ in 0..100 {
            other.send(Bytes::from_static(b"x")).unwrap();
        }
        drop(other);
        for _ in 0..100 {
            assert!(rx.recv().await.is_some());
        }
        assert_eq!(
            rx.queue.items.lock().unwrap().capacity(),
            0,
            "released once drained"
        );
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        drop(lane);
        assert_eq!(waiter.await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_replay_mark_is_signalled_when_the_writer_catches_up() {
        let outbox = Outbox::new(100);
        let (lane, mut rx) = Lane::new(&outbox);
        lane.send(Bytes::from(vec![0u8; 60])).unwrap();
        assert!(!outbox.has_replay_room());
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.below_replay_mark().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let frame = rx.recv().await.unwrap();
        rx.written(frame.len());
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_gone_receiver_refuses_frames_and_returns_their_budget() {
        let outbox = Outbox::new(100);
        let (lane, rx) = Lane::new(&outbox);
        lane.send(Bytes::from_static(b"12345")).unwrap();
        drop(rx);
        assert_eq!(outbox.queued(), 0);
        assert_eq!(lane.send(Bytes::from_static(b"1")), Err(LaneError::Closed));
        assert_eq!(outbox.queued(), 0);
    }
}
