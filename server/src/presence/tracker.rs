//! The node's presence bookkeeping, sans-IO: counts the local connections of each user and
//! contact, holds a short grace period before declaring someone offline (a quick reconnect
//! does not flap), throttles last-seen writes, schedules heartbeats, and debounces the
//! changes announced to account rooms. Time is an input; actions come out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::auth::PrincipalId;

/// Timings of presence.
#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    /// Offline only after the last connection has been gone this long.
    pub grace: Duration,
    /// How often the node refreshes its entries (and reaps dead nodes' ones).
    pub heartbeat: Duration,
    /// Changes are gathered this long before one event per account is published.
    pub debounce: Duration,
    /// Least time between two last-seen writes for activity.
    pub seen_throttle: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            grace: Duration::from_secs(5),
            heartbeat: Duration::from_secs(5),
            debounce: Duration::from_millis(500),
            seen_throttle: Duration::from_secs(60),
        }
    }
}

/// What the tracker asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record this node as a holder of the principal; tell the tracker if they became online.
    MarkOnline(PrincipalId),
    /// This node no longer holds the principal; tell the tracker if they became offline.
    MarkOffline(PrincipalId),
    /// Record last seen at unix ms.
    TouchSeen(PrincipalId, u64),
    /// Heartbeat: refresh this node's entries.
    Refresh(Vec<PrincipalId>),
    /// Expire the entries of dead nodes in these accounts, and in every account no node
    /// has refreshed lately; report who went offline.
    Reap(Vec<u64>),
    /// Announce these changes (true: online) to the account room.
    Publish {
        /// The account.
        account: u64,
        /// Who changed, and to what.
        changes: Vec<(PrincipalId, bool)>,
    },
}

/// The tracker.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    started: Instant,
    unix_ms_at_start: u64,
    local: HashMap<PrincipalId, usize>,
    offline_at: HashMap<PrincipalId, Instant>,
    seen_at: HashMap<PrincipalId, Instant>,
    pending: BTreeMap<u64, (Instant, BTreeMap<PrincipalId, bool>)>,
    next_heartbeat: Instant,
    actions: VecDeque<Action>,
}

impl Tracker {
    /// A tracker started at `now`, when the wall clock read `unix_ms`.
    pub fn new(config: TrackerConfig, now: Instant, unix_ms: u64) -> Self {
        Tracker {
            config,
            started: now,
            unix_ms_at_start: unix_ms,
            local: HashMap::new(),
            offline_at: HashMap::new(),
            seen_at: HashMap::new(),
            pending: BTreeMap::new(),
            next_heartbeat: now + config.heartbeat,
            actions: VecDeque::new(),
        }
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_ms_at_start + now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Local connections of `who`.
    pub fn local_connections(&self, who: &PrincipalId) -> usize {
        self.local.get(who).copied().unwrap_or(0)
    }

    /// A connection of `who` opened.
    pub fn connected(&mut self, who: PrincipalId, now: Instant) {
        let n = self.local.entry(who).or_insert(0);
        *n += 1;
        if *n == 1 && self.offline_at.remove(&who).is_none() {
            self.actions.push_back(Action::MarkOnline(who));
        }
        self.seen_at.insert(who, now);
        self.actions.push_back(Action::TouchSeen(who, self.unix_ms(now)));
    }

    /// A connection of `who` closed.
    pub fn disconnected(&mut self, who: PrincipalId, now: Instant) {
        let at = self.unix_ms(now);
        let Some(n) = self.local.get_mut(&who) else { return };
        *n -= 1;
        self.actions.push_back(Action::TouchSeen(who, at));
        if *n == 0 {
            self.local.remove(&who);
            self.seen_at.remove(&who);
            self.offline_at.insert(who, now + self.config.grace);
        }
    }

    /// `who` did something (sent a frame): last seen, throttled.
    pub fn activity(&mut self, who: PrincipalId, now: Instant) {
        let due = self
            .seen_at
            .get(&who)
            .is_none_or(|at| now.saturating_duration_since(*at) >= self.config.seen_throttle);
        if due && self.local.contains_key(&who) {
            self.seen_at.insert(who, now);
            self.actions.push_back(Action::TouchSeen(who, self.unix_ms(now)));
        }
    }

    /// The store says `who` became online (or offline) in the whole gateway.
    pub fn became(&mut self, who: PrincipalId, online: bool, now: Instant) {
        let due = now + self.config.debounce;
        self.pending
            .entry(who.account)
            .or_insert_with(|| (due, BTreeMap::new()))
            .1
            .insert(who, online);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_heartbeat;
        for at in self.offline_at.values() {
            next = next.min(*at);
        }
        for (at, _) in self.pending.values() {
            next = next.min(*at);
        }
        next
    }

    /// Fires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PrincipalId> = self
            .offline_at
            .iter()
            .filter(|(_, at)| now >= **at)
            .map(|(w, _)| *w)
            .collect();
        for who in due {
            self.offline_at.remove(&who);
            self.actions.push_back(Action::MarkOffline(who));
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat;
            let mut held: Vec<PrincipalId> =
                self.local.keys().chain(self.offline_at.keys()).copied().collect();
            held.sort_unstable();
            let mut accounts: Vec<u64> = held.iter().map(|w| w.account).collect();
            accounts.dedup();
            if !held.is_empty() {
                self.actions.push_back(Action::Refresh(held));
            }
            // Every node reaps, holding connections or not: entries of a node that died
            // expire whoever else is (or is not) online in its accounts.
            self.actions.push_back(Action::Reap(accounts));
        }
        let ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (at, _))| now >= *at)
            .map(|(a, _)| *a)
            .collect();
        for account in ready {
            let (_, changes) = self.pending.remove(&account).expect("listed");
            self.actions.push_back(Action::Publish {
                account,
                changes: changes.into_iter().collect(),
            });
        }
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: PrincipalId = PrincipalId {
        account: 1,
        contact: false,
        id: 7,
    };

    fn tracker(t0: Instant) -> Tracker {
        Tracker::new(
            TrackerConfig {
                grace: Duration::from_secs(5),
                heartbeat: Duration::from_secs(10),
                debounce: Duration::from_millis(500),
                seen_throttle: Duration::from_secs(60),
            },
            t0,
            1_000_000,
        )
    }

    fn actions(t: &mut Tracker) -> Vec<Action> {
        std::iter::from_fn(|| t.poll_action()).collect()
    }

    #[test]
    fn online_with_the_first_connection_offline_after_the_last_plus_grace() {
        let t0 = Instant::now();
        let mut t = tracker(t0);
        t.connected(AGENT, t0);
        t.connected(AGENT, t0);
        let e = actions(&mut t);
        assert_eq!(
            e.iter().filter(|e| **e == Action::MarkOnline(AGENT)).count(),
            1,
            "{e:?}"
        );
        t.disconnected(AGENT, t0 + Duration::from_secs(1));
        t.disconnected(AGENT, t0 + Duration::from_secs(2));
        assert_eq!(
            actions(&mut t),
            vec![
                Action::TouchSeen(AGENT, 1_001_000),
                Action::TouchSeen(AGENT, 1_002_000)
            ]
        );
        assert_eq!(t.poll_timeout(), t0 + Duration::from_secs(7));
        t.handle_timeout(t0 + Duration::from_millis(6_999));
        assert!(actions(&mut t).is_empty());
        t.handle_timeout(t0 + Duration::from_secs(7));
        assert_eq!(actions(&mut t), vec![Action::MarkOffline(AGENT)]);
    }

    #[test]
    fn a_quick_reconnect_does_not_flap() {
        let t0 = Instant::now();
        let mut t = tracker(t0);
        t.connected(AGENT, t0);
        actions(&mut t);
        t.disconnected(AGENT, t0 + Duration::from_secs(1));
        t.connected(AGENT, t0 + Duration::from_secs(3));
        t.handle_timeout(t0 + Duration::from_secs(9));
        let e = actions(&mut t);
        assert!(
            !e.iter()
                .any(|e| matches!(e, Action::MarkOnline(_) | Action::MarkOffline(_))),
            "{e:?}"
        );
    }

    #[test]
    fn heartbeats_refresh_local_and_grace_entries_and_reap_their_accounts() {
        let t0 = Instant::now();
        let mut t = tracker(t0);
        let contact = PrincipalId {
            account: 2,
            contact: true,
            id: 3,
        };
        t.connected(AGENT, t0);
        t.connected(contact, t0);
        t.disconnected(contact, t0 + Duration::from_secs(8));
        actions(&mut t);
        t.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(
            actions(&mut t),
            vec![Action::Refresh(vec![AGENT, contact]), Action::Reap(vec![1, 2])]
        );
    }

    #[test]
    fn a_node_without_connections_still_reaps() {
        let t0 = Instant::now();
        let mut t = tracker(t0);
        t.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(actions(&mut t), vec![Action::Reap(vec![])]);
    }

    #[test]
    fn changes_are_debounced_per_account_and_coalesced() {
        let t0 = Instant::now();
        let mut t = tracker(t0);
        let other = PrincipalId { id: 8, ..AGENT };
        t.became(AGENT, true, t0);
        t.became(other, true, t0 + Duration::from_millis(200));
        t.became(AGENT, false, t0 + Duration::from_millis(300));
        assert_eq!(t.poll_timeout(), t0 + Duration::from_millis(500));
        t.handle_timeout(t0 + Duration::from_millis(499));
        assert!(actions(&mut t).is_empty());
        t.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(
            actions(&mut t),
            vec![Action::Publish {
                account: 1,
                changes: vec![(AGENT, false), (other, true)]
            }]
        );
    }

    #[test]
    fn activity_updates_last_seen_at_most_once_a_minute() {
        let t0 = Instant::now();
        let mut t = tracker(t0);
        t.connected(AGENT, t0);
        actions(&mut t);
        t.activity(AGENT, t0 + Duration::from_secs(30));
        assert!(actions(&mut t).is_empty());
        t.activity(AGENT, t0 + Duration::from_secs(60));
        assert_eq!(actions(&mut t), vec![Action::TouchSeen(AGENT, 1_060_000)]);
        t.activity(AGENT, t0 + Duration::from_secs(61));
        assert!(actions(&mut t).is_empty());
    }

    #[test]
    fn members_round_trip() {
        let c = PrincipalId {
            account: 4,
            contact: true,
            id: 9,
        };
        assert_eq!(PrincipalId::from_member(4, &c.member()), Some(c));
        assert_eq!(PrincipalId::from_member(4, "x:1"), None);
    }
}
