//! The queue of a single node, in memory (lost with the process, like the embedded
//! engine's rooms).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rtgate_protocol::pb;

use super::{ClaimLimits, Claimed, DeliveryQueue, Depth, MAX_DEAD, Queued, destination_key, revived};
use crate::engine::EngineError;

#[derive(Debug, Default)]
struct State {
    /// id → (destination key, score: due or claim end, record).
    queued: HashMap<String, (String, i64, pb::Delivery)>,
    /// Each destination's line: (score, id).
    lines: HashMap<String, BTreeSet<(i64, String)>>,
    /// (hint, destination): no delivery of the destination is due before its hint.
    hints: BTreeSet<(i64, String)>,
    hint_of: HashMap<String, i64>,
    /// Ids queued within the window, with when they are forgotten, oldest first.
    seen: HashMap<String, i64>,
    seen_order: VecDeque<(i64, String)>,
    dead: HashMap<String, pb::Delivery>,
    dead_order: BTreeSet<(i64, String)>,
}

impl State {
    fn set_hint(&mut self, dest: &str, score: i64, lower_only: bool) {
        if let Some(old) = self.hint_of.get(dest).copied() {
            if lower_only && old <= score {
                return;
            }
            self.hints.remove(&(old, dest.to_string()));
        }
        self.hints.insert((score, dest.to_string()));
        self.hint_of.insert(dest.to_string(), score);
    }

    /// The hint of a destination after its line changed: its first score, or gone.
    fn refresh_hint(&mut self, dest: &str) {
        match self.lines.get(dest).and_then(|l| l.first()).map(|(s, _)| *s) {
            Some(first) => self.set_hint(dest, first, false),
            None => {
                self.lines.remove(dest);
                if let Some(old) = self.hint_of.remove(dest) {
                    self.hints.remove(&(old, dest.to_string()));
                }
            }
        }
    }

    fn schedule(&mut self, delivery: pb::Delivery, at: i64) {
        let dest = destination_key(&delivery.url);
        self.unschedule(&delivery.id);
        self.lines
            .entry(dest.clone())
            .or_default()
            .insert((at, delivery.id.clone()));
        self.set_hint(&dest, at, true);
        self.queued.insert(delivery.id.clone(), (dest, at, delivery));
    }

    fn unschedule(&mut self, id: &str) -> Option<pb::Delivery> {
        let (dest, at, d) = self.queued.remove(id)?;
        if let Some(line) = self.lines.get_mut(&dest) {
            line.remove(&(at, id.to_string()));
        }
        Some(d)
    }

    /// Whether `claimed`'s claim is still the delivery's.
    fn holds(&self, claimed: &Claimed) -> bool {
        self.queued
            .get(&claimed.delivery.id)
            .is_some_and(|(_, at, _)| *at == claimed.lease_until_ms)
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

    async fn enqueue(&self, items: Vec<Queued>, now_ms: i64) -> Result<(Vec<Claimed>, usize), EngineError> {
        let mut state = self.state();
        state.forget_expired(now_ms);
        let lease_until_ms = now_ms + self.lease_ms;
        let mut claimed = Vec::new();
        let mut new = 0;
        for Queued {
            mut delivery,
            not_before_ms,
        } in items
        {
            if state.seen.contains_key(&delivery.id)
                || state.queued.contains_key(&delivery.id)
                || state.dead.contains_key(&delivery.id)
            {
                continue;
            }
            new += 1;
            let until = now_ms + self.window_ms;
            state.seen.insert(delivery.id.clone(), until);
            state.seen_order.push_back((until, delivery.id.clone()));
            delivery.queued_at_ms = now_ms;
            match not_before_ms {
                Some(at) => state.schedule(delivery, at),
                None => {
                    state.schedule(delivery.clone(), lease_until_ms);
                    claimed.push(Claimed {
                        delivery,
                        lease_until_ms,
                    });
                }
            }
        }
        Ok((claimed, new))
    }

    async fn claim(&self, limits: ClaimLimits<'_>, now_ms: i64) -> Result<Vec<Claimed>, EngineError> {
        let mut state = self.state();
        let dests: Vec<String> = state
            .hints
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .filter(|(_, d)| !limits.skip.contains(d))
            .map(|(_, d)| d.clone())
            .collect();
        let lease_until_ms = now_ms + self.lease_ms;
        let mut out = Vec::new();
        for dest in dests {
            if out.len() >= limits.total {
                break;
            }
            let room = limits.per_destination.min(limits.total - out.len());
            let ids: Vec<String> = state
                .lines
                .get(&dest)
                .map(|line| {
                    line.iter()
                        .take_while(|(at, _)| *at <= now_ms)
                        .take(room)
                        .map(|(_, id)| id.clone())
                        .collect()
                })
                .unwrap_or_default();
            for id in ids {
                let delivery = state.unschedule(&id).expect("queued");
                state.schedule(delivery.clone(), lease_until_ms);
                out.push(Claimed {
                    delivery,
                    lease_until_ms,
                });
            }
            state.refresh_hint(&dest);
        }
        Ok(out)
    }

    async fn extend(&self, claimed: &mut Claimed, now_ms: i64) -> Result<bool, EngineError> {
        let mut state = self.state();
        match state.queued.get(&claimed.delivery.id) {
            Some((_, at, _)) if *at == claimed.lease_until_ms => {
                let until = now_ms + self.lease_ms;
                state.schedule(claimed.delivery.clone(), until);
                claimed.lease_until_ms = until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn done(&self, claimed: &Claimed) -> Result<bool, EngineError> {
        let mut state = self.state();
        if !state.holds(claimed) {
            return Ok(false);
        }
        state.unschedule(&claimed.delivery.id);
        Ok(true)
    }

    async fn retry(&self, claimed: &Claimed, due_ms: i64) -> Result<bool, EngineError> {
        let mut state = self.state();
        if !state.holds(claimed) {
            return Ok(false);
        }
        state.schedule(claimed.delivery.clone(), due_ms);
        Ok(true)
    }

    async fn park(&self, url: &str, until_ms: i64) -> Result<(), EngineError> {
        let mut state = self.state();
        let dest = destination_key(url);
        if state.hint_of.contains_key(&dest) {
            state.set_hint(&dest, until_ms, false);
        }
        Ok(())
    }

    async fn dead(&self, claimed: &Claimed) -> Result<bool, EngineError> {
        let mut state = self.state();
        if !state.holds(claimed) {
            return Ok(false);
        }
        let delivery = &claimed.delivery;
        state.unschedule(&delivery.id);
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
        Ok(true)
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
