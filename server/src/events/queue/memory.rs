//! The queue of a single node without Redis: in memory, deduplicating by id over a window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rtgate_protocol::pb;
use tokio::sync::Notify;

use super::{Appended, DeadLetter, Entry, EventQueue};
use crate::engine::EngineError;

/// Most dead letters kept.
const MAX_DEAD_LETTERS: usize = 1000;

/// Most events waiting to be read: beyond, appends are refused (503) until the bus
/// catches up.
pub const MAX_WAITING: usize = 100_000;

#[derive(Debug, Default)]
struct State {
    next: u64,
    ready: VecDeque<Entry>,
    /// Ids seen, with when: forgotten after the window, or beyond the capacity.
    seen: HashMap<String, Instant>,
    seen_order: VecDeque<(Instant, String)>,
    dead: VecDeque<DeadLetter>,
}

/// An in-memory queue.
#[derive(Debug)]
pub struct MemoryQueue {
    window: Duration,
    capacity: usize,
    state: Mutex<State>,
    notify: Notify,
}

impl MemoryQueue {
    /// A queue remembering ids for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        MemoryQueue {
            window,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }
}

#[async_trait]
impl EventQueue for MemoryQueue {
    async fn append(&self, events: &[pb::DomainEvent]) -> Result<Vec<Appended>, EngineError> {
        let now = Instant::now();
        let mut s = self.state.lock().expect("queue lock");
        while let Some((at, _)) = s.seen_order.front()
            && (now.duration_since(*at) > self.window || s.seen_order.len() > self.capacity)
        {
            let (_, id) = s.seen_order.pop_front().expect("front");
            s.seen.remove(&id);
        }
        if s.ready.len() + events.len() > MAX_WAITING {
            return Err(EngineError::Unavailable("the event queue is full".into()));
        }
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if s.seen.contains_key(&event.id) {
                out.push(Appended::Duplicate);
                continue;
            }
            s.seen.insert(event.id.clone(), now);
            s.seen_order.push_back((now, event.id.clone()));
            s.next += 1;
            let id = s.next.to_string();
            s.ready.push_back(Entry {
                id,
                event: Ok(event.clone()),
                attempts: 0,
            });
            out.push(Appended::Accepted);
        }
        drop(s);
        self.notify.notify_one();
        Ok(out)
    }

    async fn read(&self, max: usize, wait: Duration) -> Result<Vec<Entry>, EngineError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if !s.ready.is_empty() {
                    let n = max.min(s.ready.len());
                    return Ok(s.ready.drain(..n).collect());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, _entries: &[String]) -> Result<(), EngineError> {
        Ok(())
    }

    async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<(), EngineError> {
        let mut s = self.state.lock().expect("queue lock");
        if s.dead.len() >= MAX_DEAD_LETTERS {
            s.dead.pop_front();
        }
        s.dead.push_back(DeadLetter {
            entry: entry.id.clone(),
            event_id: entry.event.as_ref().map(|e| e.id.clone()).unwrap_or_default(),
            reason: reason.to_string(),
        });
        Ok(())
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, EngineError> {
        let s = self.state.lock().expect("queue lock");
        let skip = s.dead.len().saturating_sub(max);
        Ok(s.dead.iter().skip(skip).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> pb::DomainEvent {
        pb::DomainEvent {
            id: id.into(),
            name: "contact.created".into(),
            account_id: 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_appends_until_read_and_ids_are_remembered() {
        let q = MemoryQueue::new(Duration::from_secs(60), 2 * MAX_WAITING);
        let batch: Vec<_> = (0..MAX_WAITING).map(|n| event(&n.to_string())).collect();
        assert!(
            q.append(&batch)
                .await
                .unwrap()
                .iter()
                .all(|a| *a == Appended::Accepted)
        );
        assert!(matches!(
            q.append(&[event("one-more")]).await,
            Err(EngineError::Unavailable(_))
        ));
        assert_eq!(q.read(10, Duration::ZERO).await.unwrap().len(), 10);
        assert_eq!(
            q.append(&[event("one-more"), event("0")]).await.unwrap(),
            [Appended::Accepted, Appended::Duplicate]
        );
    }
}
