//! Per-connection send queues with one shared byte budget.
//!
//! Every frame bound for a client goes through a [`Lane`]: the control lane, or one lane per
//! room stream (WebTransport) — on WebSocket all lanes feed the one socket. Lanes never block
//! the sender (fan-out runs on the publisher's task), so a slow client cannot slow anyone
//! else. Instead each connection has a byte budget: when the bytes queued on all its lanes
//! exceed it, the connection is marked overflowed and its driver disconnects it with
//! `slow_consumer`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

/// The byte budget shared by all lanes of one connection.
#[derive(Debug)]
pub struct Outbox {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    notify: Notify,
}

impl Outbox {
    /// A budget of `limit` queued bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Outbox {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            notify: Notify::new(),
        })
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

/// The sending end of one queue of frame bodies.
#[derive(Debug, Clone)]
pub struct Lane {
    tx: mpsc::UnboundedSender<Queued>,
    outbox: Arc<Outbox>,
}

/// The receiving end, owned by a transport writer.
#[derive(Debug)]
pub struct LaneReceiver {
    rx: mpsc::UnboundedReceiver<Queued>,
    outbox: Arc<Outbox>,
}

impl Lane {
    /// A new lane drawing on `outbox`'s budget.
    pub fn new(outbox: &Arc<Outbox>) -> (Lane, LaneReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Lane {
                tx,
                outbox: outbox.clone(),
            },
            LaneReceiver {
                rx,
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

    fn queue(&self, item: Queued) -> Result<(), LaneError> {
        let n = item.frame.len();
        if !self.outbox.reserve(n) {
            return Err(LaneError::Overflow);
        }
        self.tx.send(item).map_err(|_| {
            self.outbox.queued.fetch_sub(n, Ordering::Relaxed);
            LaneError::Closed
        })
    }

    /// Queues a frame outside the budget: only for the final `Disconnect`.
    pub fn send_final(&self, frame: Bytes) -> Result<(), LaneError> {
        self.outbox.queued.fetch_add(frame.len(), Ordering::Relaxed);
        self.tx
            .send(Queued { frame, at: None })
            .map_err(|_| LaneError::Closed)
    }

    /// The budget this lane draws on.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

impl LaneReceiver {
    /// The next frame to write; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await.map(|q| q.frame)
    }

    /// A frame if one is queued right now.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.rx.try_recv().ok().map(|q| q.frame)
    }

    /// The next queued item, with its timing.
    pub async fn recv_queued(&mut self) -> Option<Queued> {
        self.rx.recv().await
    }

    /// A queued item if one is there right now.
    pub fn try_recv_queued(&mut self) -> Option<Queued> {
        self.rx.try_recv().ok()
    }

    /// Returns `n` written bytes to the budget.
    pub fn written(&self, n: usize) {
        self.outbox.queued.fetch_sub(n, Ordering::Relaxed);
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
}
