//! Where presence lives: in process memory for a single node, in Redis for many. Both
//! keep, per account, which nodes hold each user or contact (entries expire unless the
//! node refreshes them, so a dead node's entries age out), the online set, agents'
//! availability and last seen.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use rtgate_protocol::pb;

use crate::auth::PrincipalId;
use crate::engine::EngineError;

/// Presence storage.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// `node` holds `who`; true when `who` was not online before.
    async fn mark_online(&self, who: PrincipalId, node: &str, now_ms: u64) -> Result<bool, EngineError>;
    /// `node` no longer holds `who`; true when nobody holds `who` any more.
    async fn mark_offline(&self, who: PrincipalId, node: &str, now_ms: u64) -> Result<bool, EngineError>;
    /// `node` still holds these.
    async fn refresh(&self, node: &str, held: &[PrincipalId], now_ms: u64) -> Result<(), EngineError>;
    /// Drops entries not refreshed in time (dead nodes); returns who went offline.
    async fn reap(&self, accounts: &[u64], now_ms: u64) -> Result<Vec<PrincipalId>, EngineError>;
    /// Records last seen.
    async fn touch_seen(&self, who: PrincipalId, at_ms: u64) -> Result<(), EngineError>;
    /// Sets an agent's availability; true when it changed.
    async fn set_availability(
        &self,
        account: u64,
        user: u64,
        availability: pb::Availability,
    ) -> Result<bool, EngineError>;
    /// The entries of these people, with effective availability.
    async fn entries(
        &self,
        account: u64,
        who: &[PrincipalId],
        now_ms: u64,
    ) -> Result<Vec<(PrincipalId, pb::PresenceEntry)>, EngineError>;
    /// Everyone of the account who is online or has a last seen.
    async fn snapshot(&self, account: u64, now_ms: u64) -> Result<pb::Presence, EngineError>;
}

/// Splits entries into a `Presence` message.
pub fn presence_of(entries: Vec<(PrincipalId, pb::PresenceEntry)>) -> pb::Presence {
    let mut p = pb::Presence::default();
    for (who, entry) in entries {
        if who.contact {
            p.contacts.push(entry);
        } else {
            p.users.push(entry);
        }
    }
    p
}

/// Effective availability: the stored one while online, offline otherwise. Contacts are
/// simply online or offline.
pub fn effective(stored: Option<i32>, online: bool, contact: bool) -> i32 {
    match (online, contact) {
        (false, _) => pb::Availability::Offline as i32,
        (true, true) => pb::Availability::Online as i32,
        (true, false) => stored.unwrap_or(pb::Availability::Online as i32),
    }
}

#[derive(Debug, Default)]
struct State {
    holders: HashMap<PrincipalId, HashMap<String, u64>>,
    online: HashSet<PrincipalId>,
    availability: HashMap<(u64, u64), i32>,
    seen: HashMap<PrincipalId, u64>,
}

/// Presence in process memory (single node).
#[derive(Debug)]
pub struct MemoryPresence {
    ttl_ms: u64,
    state: Mutex<State>,
}

impl MemoryPresence {
    /// Entries expire `ttl_ms` after their last refresh.
    pub fn new(ttl_ms: u64) -> Self {
        MemoryPresence {
            ttl_ms,
            state: Mutex::new(State::default()),
        }
    }
}

impl State {
    fn prune(&mut self, who: &PrincipalId, now_ms: u64, ttl_ms: u64) -> bool {
        let empty = match self.holders.get_mut(who) {
            Some(nodes) => {
                nodes.retain(|_, at| *at + ttl_ms > now_ms);
                nodes.is_empty()
            }
            None => true,
        };
        if empty {
            self.holders.remove(who);
        }
        empty
    }

    fn entry(&self, who: &PrincipalId) -> pb::PresenceEntry {
        let online = self.online.contains(who);
        pb::PresenceEntry {
            id: who.id,
            availability: effective(
                self.availability.get(&(who.account, who.id)).copied(),
                online,
                who.contact,
            ),
            online,
            last_seen_at_ms: self.seen.get(who).copied().unwrap_or(0) as i64,
        }
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn mark_online(&self, who: PrincipalId, node: &str, now_ms: u64) -> Result<bool, EngineError> {
        let mut s = self.state.lock().expect("presence lock");
        s.holders.entry(who).or_default().insert(node.to_string(), now_ms);
        Ok(s.online.insert(who))
    }

    async fn mark_offline(&self, who: PrincipalId, node: &str, now_ms: u64) -> Result<bool, EngineError> {
        let mut s = self.state.lock().expect("presence lock");
        if let Some(nodes) = s.holders.get_mut(&who) {
            nodes.remove(node);
        }
        Ok(s.prune(&who, now_ms, self.ttl_ms) && s.online.remove(&who))
    }

    async fn refresh(&self, node: &str, held: &[PrincipalId], now_ms: u64) -> Result<(), EngineError> {
        let mut s = self.state.lock().expect("presence lock");
        for who in held {
            s.holders
                .entry(*who)
                .or_default()
                .insert(node.to_string(), now_ms);
            s.online.insert(*who);
        }
        Ok(())
    }

    async fn reap(&self, accounts: &[u64], now_ms: u64) -> Result<Vec<PrincipalId>, EngineError> {
        let mut s = self.state.lock().expect("presence lock");
        let candidates: Vec<PrincipalId> = s
            .online
            .iter()
            .filter(|w| accounts.contains(&w.account))
            .copied()
            .collect();
        let mut gone = Vec::new();
        for who in candidates {
            if s.prune(&who, now_ms, self.ttl_ms) {
                s.online.remove(&who);
                gone.push(who);
            }
        }
        Ok(gone)
    }

    async fn touch_seen(&self, who: PrincipalId, at_ms: u64) -> Result<(), EngineError> {
        self.state.lock().expect("presence lock").seen.insert(who, at_ms);
        Ok(())
    }

    async fn set_availability(
        &self,
        account: u64,
        user: u64,
        availability: pb::Availability,
    ) -> Result<bool, EngineError> {
        let mut s = self.state.lock().expect("presence lock");
        Ok(s.availability.insert((account, user), availability as i32) != Some(availability as i32))
    }

    async fn entries(
        &self,
        _account: u64,
        who: &[PrincipalId],
        _now_ms: u64,
    ) -> Result<Vec<(PrincipalId, pb::PresenceEntry)>, EngineError> {
        let s = self.state.lock().expect("presence lock");
        Ok(who.iter().map(|w| (*w, s.entry(w))).collect())
    }

    async fn snapshot(&self, account: u64, now_ms: u64) -> Result<pb::Presence, EngineError> {
        let mut everyone: Vec<PrincipalId> = {
            let s = self.state.lock().expect("presence lock");
            s.online
                .iter()
                .chain(s.seen.keys())
                .filter(|w| w.account == account)
                .copied()
                .collect()
        };
        everyone.sort_unstable();
        everyone.dedup();
        Ok(presence_of(self.entries(account, &everyone, now_ms).await?))
    }
}
