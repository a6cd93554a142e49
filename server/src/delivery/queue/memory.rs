//! The queue of a single node, in memory (lost with the process, like the embedded
//! engine's rooms).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rtgate_protocol::pb;

use super::{Claimed, DeliveryQueue, Depth, MAX_DEAD, revived};
use crate::engine::EngineError;

#[derive(Debug, Default)]
struct State {
    /// (due or claim expiry, id) of every queued delivery.
    due: BTreeSet<(i64, String)>,
    /// Each queued delivery's key in `due`, and its record.
    queued: HashMap<String, (i64, pb::Delivery)>,
    /// Ids queued within the window, with when they are forgotten, oldest first.
    seen: HashMap<String, i64>,
    seen_order: VecDeque<(i64, String)>,
    dead: HashMap<String, pb::Delivery>,
    dead_order: BTreeSet<(i64, String)>,
}

impl State {
    fn schedule(&mut self, delivery: pb::Delivery, at: i64) {
        if let Some((old, _)) = self.queued.remove(&delivery.id) {
            self.due.remove(&(old, delivery.id.clone()));
        }
        self.due.insert((at, delivery.id.clone()));
        self.queued.insert(delivery.id.clone(), (at, delivery));
    }

    fn remove(&mut self, id: &str) -> Option<pb::Delivery> {
        let (at, d) = self.queued.remove(id)?;
        self.due.remove(&(at, id.to_string()));
        Some(d)
    }

    fn forget_expired(&mut self, now_ms: i64) {
        while let Some((until, _)) = self.seen_order.front() {
            if *until > now_ms {
                break;
            }
            let (until, id) = self.seen_order.pop_front().expect("front");
            if self.seen.get(&id) == Some(&until) {
                self.seen.remove(&id);
            }
        }
    }
}

/// An in-memory delivery queue.
#[derive(Debug)]
pub struct MemoryDeliveryQueue {
    state: Mutex<State>,
    lease_ms: i64,
    window_ms: i64,
}

impl MemoryDeliveryQueue {
    /// A queue whose claims last `lease` and which remembers ids for `window`.
    pub fn new(lease: Duration, window: Duration) -> Self {
        MemoryDeliveryQueue {
            state: Mutex::new(State::default()),
            lease_ms: lease.as_millis() as i64,
            window_ms: window.as_millis() as i64,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("delivery queue lock")
    }
}

#[async_trait]
impl DeliveryQueue for MemoryDeliveryQueue {
    fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    async fn enqueue(&self, deliveries: Vec<pb::Delivery>, now_ms: i64) -> Result<Vec<Claimed>, EngineError> {
        let mut state = self.state();
        state.forget_expired(now_ms);
        let lease_until_ms = now_ms + self.lease_ms;
        let mut out = Vec::new();
        for mut delivery in deliveries {
            if state.seen.contains_key(&delivery.id) {
                continue;
            }
            let until = now_ms + self.window_ms;
            state.seen.insert(delivery.id.clone(), until);
            state.seen_order.push_back((until, delivery.id.clone()));
            delivery.queued_at_ms = now_ms;
            state.schedule(delivery.clone(), lease_until_ms);
            out.push(Claimed {
                delivery,
                lease_until_ms,
            });
        }
        Ok(out)
    }

    async fn claim(&self, max: usize, now_ms: i64) -> Result<Vec<Claimed>, EngineError> {
        let mut state = self.state();
        let ids: Vec<String> = state
            .due
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect();
        let lease_until_ms = now_ms + self.lease_ms;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let delivery = state.remove(&id).expect("queued");
            state.schedule(delivery.clone(), lease_until_ms);
            out.push(Claimed {
                delivery,
                lease_until_ms,
            });
        }
        Ok(out)
    }

    async fn extend(&self, claimed: &mut Claimed, now_ms: i64) -> Result<bool, EngineError> {
        let mut state = self.state();
        match state.queued.get(&claimed.delivery.id) {
            Some((at, _)) if *at == claimed.lease_until_ms => {
                let until = now_ms + self.lease_ms;
                state.schedule(claimed.delivery.clone(), until);
                claimed.lease_until_ms = until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn done(&self, id: &str) -> Result<(), EngineError> {
        self.state().remove(id);
        Ok(())
    }

    async fn retry(&self, delivery: &pb::Delivery, due_ms: i64) -> Result<(), EngineError> {
        self.state().schedule(delivery.clone(), due_ms);
        Ok(())
    }

    async fn dead(&self, delivery: &pb::Delivery) -> Result<(), EngineError> {
        let mut state = self.state();
        state.remove(&delivery.id);
        if let Some(old) = state.dead.insert(delivery.id.clone(), delivery.clone()) {
            state.dead_order.remove(&(old.failed_at_ms, old.id));
        }
        state
            .dead_order
            .insert((delivery.failed_at_ms, delivery.id.clone()));
        while state.dead.len() > MAX_DEAD {
            let oldest = state.dead_order.pop_first().expect("non-empty");
            state.dead.remove(&oldest.1);
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<pb::Delivery>, EngineError> {
        let state = self.state();
        Ok(state
            .dead_order
            .iter()
            .rev()
            .take(limit)
            .filter_map(|(_, id)| state.dead.get(id).cloned())
            .collect())
    }

    async fn replay(&self, id: &str, now_ms: i64) -> Result<bool, EngineError> {
        let mut state = self.state();
        let Some(delivery) = state.dead.remove(id) else {
            return Ok(false);
        };
        state
            .dead_order
            .remove(&(delivery.failed_at_ms, delivery.id.clone()));
        state.schedule(revived(delivery, now_ms), now_ms);
        Ok(true)
    }

    async fn discard(&self, id: &str) -> Result<bool, EngineError> {
        let mut state = self.state();
        let Some(delivery) = state.dead.remove(id) else {
            return Ok(false);
        };
        state.dead_order.remove(&(delivery.failed_at_ms, delivery.id));
        Ok(true)
    }

    async fn depth(&self) -> Result<Depth, EngineError> {
        let state = self.state();
        Ok(Depth {
            queued: state.queued.len() as u64,
            dead: state.dead.len() as u64,
        })
    }
}
