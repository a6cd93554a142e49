//! The node-local room registry and fan-out.
//!
//! Engines hand every publication of a room to [`Hub::broadcast`], which passes the same
//! encoded bytes to each local [`Subscriber`]. A subscriber joins in two steps so that
//! recovery is gap-free and duplicate-free: it is registered first (live events are buffered
//! from then on), then prepared with the history replay and the room's position, and
//! finally activated once the client has been told the subscription result: replay first,
//! then buffered live events newer than the replay, then live events as they come.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use rtgate_protocol::RoomName;

use crate::ids::{ConnectionId, Epoch, StreamPos};

/// Encodes `ServerFrame { reset }` for a room.
pub fn encode_reset(room: &RoomName, pos: &StreamPos) -> Bytes {
    use prost::Message;
    use rtgate_protocol::pb;
    Bytes::from(
        pb::ServerFrame {
            kind: Some(pb::server_frame::Kind::Reset(pb::RoomReset {
                room: room.to_string(),
                position: Some(pos.to_pb()),
            })),
        }
        .encode_to_vec(),
    )
}
use crate::outbox::{DatagramSink, Lane};

/// One event of a room, encoded once as a `ServerFrame` and shared by every subscriber.
#[derive(Debug)]
pub struct Publication {
    /// The room.
    pub room: RoomName,
    /// Its position.
    pub pos: StreamPos,
    /// The encoded `ServerFrame { event }` body (no length prefix).
    pub frame: Bytes,
    /// When this node got it (for the delivery latency metric).
    pub at: std::time::Instant,
}

/// Most live events buffered while a subscription is being set up.
const MAX_PENDING: usize = 10_000;

/// How a publication follows the last position a subscriber delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Newer in the same epoch (or the first event after "before anything"): deliver.
    Next,
    /// Already delivered: drop.
    Old,
    /// Another epoch: the history was reset; say so, then deliver.
    Reset,
}

fn follow(epoch: &Epoch, last: u64, p: &Publication) -> Follow {
    if p.pos.epoch == *epoch {
        if p.pos.offset > last {
            Follow::Next
        } else {
            Follow::Old
        }
    } else if epoch.as_str().is_empty() && last == 0 && p.pos.offset == 1 {
        // Joined before the room existed: its first event starts its first epoch.
        Follow::Next
    } else {
        Follow::Reset
    }
}

/// Where to read the next page of a replay: the room's epoch, the next offset wanted,
/// the last offset of the replay (the room's top when the subscription was made), and for
/// engines that page by their own ids (Redis stream ids) the id to read after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCursor {
    /// The epoch being replayed.
    pub epoch: Epoch,
    /// The next offset wanted.
    pub next: u64,
    /// The replay ends with this offset.
    pub until: u64,
    /// The engine's own position of the last entry read, if it pages by one.
    pub after_id: Option<Arc<str>>,
}

/// A page of a replay.
#[derive(Debug, Clone)]
pub enum ReplayPage {
    /// Events in order, and where to read on (`None`: the replay is complete).
    Events(Vec<Arc<Publication>>, Option<ReplayCursor>),
    /// History no longer covers the rest: the room's current top.
    Lost(StreamPos),
}

/// What a subscriber's replay needs after [`Subscriber::pump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pumped {
    /// Live (or closed): nothing more to do.
    Done,
    /// Events are held for the client; pump again once its queue has room.
    Waiting,
    /// The held events are sent; read the next page from here and hand it over with
    /// [`Subscriber::add_page`].
    NeedPage(ReplayCursor),
}

#[derive(Debug)]
struct Prepared {
    replay: Vec<Arc<Publication>>,
    pos: StreamPos,
    next: Option<ReplayCursor>,
}

/// The state of a room subscription.
#[derive(Debug)]
enum SubscriptionState {
    /// Registered: live events are buffered until the subscriber is prepared (replay and
    /// starting position) and activated.
    Pending {
        buffered: Vec<Arc<Publication>>,
        prepared: Option<Prepared>,
    },
    /// Replaying at the client's pace: `held` events go out while the connection's queue
    /// is below its replay mark; live events wait in `buffered`.
    Replaying {
        epoch: Epoch,
        last: u64,
        until: u64,
        held: std::collections::VecDeque<Arc<Publication>>,
        next: Option<ReplayCursor>,
        fetching: bool,
        buffered: Vec<Arc<Publication>>,
    },
    /// Following live events; `last` is the newest offset sent.
    Live {
        epoch: Epoch,
        last: u64,
    },
    /// Nothing more is sent.
    Closed,
}

/// One connection's membership of one room.
#[derive(Debug)]
pub struct Subscriber {
    conn: ConnectionId,
    room: RoomName,
    /// The principal's own room (`user:7`): typing is never echoed to its sender.
    principal: RoomName,
    contact: bool,
    lane: Lane,
    datagrams: Option<Arc<dyn DatagramSink>>,
    state: Mutex<SubscriptionState>,
}

impl Subscriber {
    /// A subscriber of `room` for `conn` of `principal` (its own room), writing to `lane`;
    /// `contact` marks contact connections (they never get private typing).
    pub fn new(
        conn: ConnectionId,
        room: RoomName,
        principal: RoomName,
        contact: bool,
        lane: Lane,
        datagrams: Option<Arc<dyn DatagramSink>>,
    ) -> Arc<Self> {
        Arc::new(Subscriber {
            conn,
            room,
            principal,
            contact,
            lane,
            datagrams,
            state: Mutex::new(SubscriptionState::Pending {
                buffered: Vec::new(),
                prepared: None,
            }),
        })
    }

    /// The connection.
    pub fn conn(&self) -> ConnectionId {
        self.conn
    }

    /// The room.
    pub fn room(&self) -> &RoomName {
        &self.room
    }

    fn send(&self, p: &Publication) {
        // An overflow is noticed by the connection's driver through its outbox.
        let _ = self.lane.send_event(p.frame.clone(), p.at);
    }

    fn send_reset(&self, pos: &StreamPos) {
        let _ = self.lane.send(encode_reset(&self.room, pos));
    }

    /// Hands over a live publication.
    pub fn deliver(&self, p: &Arc<Publication>) {
        let mut state = self.state.lock().expect("subscriber lock");
        match &mut *state {
            SubscriptionState::Pending { buffered, .. } | SubscriptionState::Replaying { buffered, .. } => {
                if buffered.len() >= MAX_PENDING {
                    // Cannot keep up even before going live: treat as a slow consumer.
                    self.lane.outbox().trip();
                    *state = SubscriptionState::Closed;
                    return;
                }
                buffered.push(p.clone());
            }
            SubscriptionState::Live { epoch, last } => match follow(epoch, *last, p) {
                Follow::Old => {}
                Follow::Next => {
                    *epoch = p.pos.epoch.clone();
                    *last = p.pos.offset;
                    self.send(p);
                }
                Follow::Reset => {
                    // The room's history was reset: say so, then follow the new epoch.
                    self.send_reset(&StreamPos {
                        epoch: p.pos.epoch.clone(),
                        offset: p.pos.offset - 1,
                    });
                    *epoch = p.pos.epoch.clone();
                    *last = p.pos.offset;
                    self.send(p);
                }
            },
            SubscriptionState::Closed => {}
        }
    }

    /// Records what to replay (its first page, and where to read on) and the position
    /// the subscription starts from.
    pub fn prepare(&self, replay: Vec<Arc<Publication>>, pos: StreamPos, next: Option<ReplayCursor>) {
        let mut state = self.state.lock().expect("subscriber lock");
        if let SubscriptionState::Pending { prepared, .. } = &mut *state {
            *prepared = Some(Prepared { replay, pos, next });
        }
    }

    /// Starts delivery once the client has been told the subscription result: the replay
    /// first, at the pace the client reads, then buffered live events newer than it, then
    /// live ones.
    pub fn activate(&self) -> Pumped {
        let mut state = self.state.lock().expect("subscriber lock");
        let SubscriptionState::Pending { buffered, prepared } = &mut *state else {
            return Pumped::Done;
        };
        let Some(Prepared { replay, pos, next }) = prepared.take() else {
            return Pumped::Done;
        };
        let last = replay.first().map_or(pos.offset, |p| p.pos.offset - 1);
        *state = SubscriptionState::Replaying {
            epoch: pos.epoch,
            last,
            until: pos.offset,
            held: replay.into(),
            next,
            fetching: false,
            buffered: std::mem::take(buffered),
        };
        self.pump_locked(&mut state)
    }

    /// Sends held replay events while the connection's queue has room for them.
    pub fn pump(&self) -> Pumped {
        let mut state = self.state.lock().expect("subscriber lock");
        self.pump_locked(&mut state)
    }

    /// Hands over the next page of the replay (asked for by [`Pumped::NeedPage`]).
    pub fn add_page(&self, page: ReplayPage) -> Pumped {
        let mut state = self.state.lock().expect("subscriber lock");
        let SubscriptionState::Replaying {
            held, next, fetching, ..
        } = &mut *state
        else {
            return Pumped::Done;
        };
        *fetching = false;
        match page {
            ReplayPage::Events(events, cursor) => {
                held.extend(events);
                *next = cursor;
                self.pump_locked(&mut state)
            }
            ReplayPage::Lost(top) => {
                self.lose_replay(&mut state, &top);
                Pumped::Done
            }
        }
    }

    fn pump_locked(&self, state: &mut SubscriptionState) -> Pumped {
        let SubscriptionState::Replaying {
            epoch,
            last,
            until,
            held,
            next,
            fetching,
            ..
        } = state
        else {
            return Pumped::Done;
        };
        while self.lane.outbox().has_replay_room() {
            let Some(p) = held.pop_front() else { break };
            if p.pos.epoch == *epoch && p.pos.offset > *last {
                *last = p.pos.offset;
                self.send(&p);
            }
        }
        if !held.is_empty() {
            return Pumped::Waiting;
        }
        if *last < *until
            && let Some(cursor) = next.clone()
        {
            if *fetching {
                return Pumped::Waiting;
            }
            if !self.lane.outbox().has_replay_room() {
                return Pumped::Waiting;
            }
            *fetching = true;
            return Pumped::NeedPage(cursor);
        }
        let (epoch, last) = (epoch.clone(), *last);
        self.go_live(state, epoch, last);
        Pumped::Done
    }

    /// The rest of a replay cannot be had: say so, continue from `top`.
    fn lose_replay(&self, state: &mut SubscriptionState, top: &StreamPos) {
        if !matches!(state, SubscriptionState::Replaying { .. }) {
            return;
        }
        self.send_reset(top);
        self.go_live(state, top.epoch.clone(), top.offset);
    }

    /// Flushes buffered live events newer than (`epoch`, `last`) and goes live.
    fn go_live(&self, state: &mut SubscriptionState, mut epoch: Epoch, mut last: u64) {
        let buffered = match state {
            SubscriptionState::Replaying { buffered, .. } | SubscriptionState::Pending { buffered, .. } => {
                std::mem::take(buffered)
            }
            _ => Vec::new(),
        };
        for p in buffered {
            match follow(&epoch, last, &p) {
                Follow::Old => continue,
                Follow::Reset => self.send_reset(&StreamPos {
                    epoch: p.pos.epoch.clone(),
                    offset: p.pos.offset - 1,
                }),
                Follow::Next => {}
            }
            epoch = p.pos.epoch.clone();
            last = p.pos.offset;
            self.send(&p);
        }
        *state = SubscriptionState::Live { epoch, last };
    }

    /// The position this subscriber has reached (or will have reached once its replay is
    /// sent).
    pub fn position(&self) -> Option<StreamPos> {
        match &*self.state.lock().expect("subscriber lock") {
            SubscriptionState::Live { epoch, last } => Some(StreamPos {
                epoch: epoch.clone(),
                offset: *last,
            }),
            SubscriptionState::Replaying { epoch, until, .. } => Some(StreamPos {
                epoch: epoch.clone(),
                offset: *until,
            }),
            SubscriptionState::Pending {
                prepared: Some(Prepared { pos, .. }),
                ..
            } => Some(pos.clone()),
            SubscriptionState::Pending { .. } | SubscriptionState::Closed => None,
        }
    }

    /// Events were lost: tell the client, and continue after `pos`.
    pub fn reset(&self, pos: &StreamPos) {
        let mut state = self.state.lock().expect("subscriber lock");
        match &mut *state {
            SubscriptionState::Live { epoch, last } => {
                if *epoch == pos.epoch && *last >= pos.offset {
                    return;
                }
                self.send_reset(pos);
                *epoch = pos.epoch.clone();
                *last = pos.offset;
            }
            SubscriptionState::Pending {
                prepared: Some(prepared),
                ..
            } => {
                // Not live yet: the client will hear of it as recovered = false.
                prepared.replay.clear();
                prepared.next = None;
                prepared.pos = pos.clone();
            }
            SubscriptionState::Replaying { .. } => self.lose_replay(&mut state, pos),
            SubscriptionState::Pending { .. } | SubscriptionState::Closed => {}
        }
    }

    /// Hands over an ephemeral frame (typing); `private` ones skip contacts.
    pub fn deliver_ephemeral(&self, frame: &Bytes, private: bool) {
        if private && self.contact {
            return;
        }
        if !matches!(
            *self.state.lock().expect("subscriber lock"),
            SubscriptionState::Live { .. }
        ) {
            return;
        }
        if let Some(d) = &self.datagrams
            && d.send_datagram(frame.clone())
        {
            return;
        }
        let _ = self.lane.send(frame.clone());
    }

    /// Stops all further delivery.
    pub fn close(&self) {
        *self.state.lock().expect("subscriber lock") = SubscriptionState::Closed;
    }
}

type Shard = RwLock<HashMap<RoomName, Vec<Arc<Subscriber>>>>;

/// The rooms with subscribers on this node.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        let shards = (0..64).map(|_| RwLock::new(HashMap::new())).collect();
        Hub {
            shards,
            hasher: Default::default(),
        }
    }

    fn shard(&self, room: &RoomName) -> &Shard {
        let mut h = self.hasher.build_hasher();
        room.hash(&mut h);
        let i = std::hash::Hasher::finish(&h) as usize % self.shards.len();
        &self.shards[i]
    }

    /// Registers a subscriber, replacing one of the same connection. Returns true when it
    /// is the room's first subscriber on this node.
    pub fn add(&self, sub: Arc<Subscriber>) -> bool {
        let mut shard = self.shard(&sub.room).write().expect("hub lock");
        let subs = shard.entry(sub.room.clone()).or_default();
        let first = subs.is_empty();
        if let Some(old) = subs.iter_mut().find(|s| s.conn == sub.conn) {
            old.close();
            *old = sub;
        } else {
            subs.push(sub);
        }
        first
    }

    /// Removes a connection from a room. Returns true when the room has no subscriber
    /// left on this node.
    pub fn remove(&self, room: &RoomName, conn: ConnectionId) -> bool {
        let mut shard = self.shard(room).write().expect("hub lock");
        let Some(subs) = shard.get_mut(room) else {
            return false;
        };
        let Some(i) = subs.iter().position(|s| s.conn == conn) else {
            return false;
        };
        subs.swap_remove(i).close();
        if subs.is_empty() {
            shard.remove(room);
            true
        } else {
            false
        }
    }

    /// Delivers a publication to every local subscriber of its room.
    pub fn broadcast(&self, p: &Arc<Publication>) -> usize {
        let shard = self.shard(&p.room).read().expect("hub lock");
        let Some(subs) = shard.get(&p.room) else {
            return 0;
        };
        for s in subs {
            s.deliver(p);
        }
        metrics::counter!("rtgate_events_delivered_total").increment(subs.len() as u64);
        subs.len()
    }

    /// Tells every local subscriber of `room` that events were lost up to `pos`.
    pub fn reset(&self, room: &RoomName, pos: &StreamPos) {
        let shard = self.shard(room).read().expect("hub lock");
        for s in shard.get(room).into_iter().flatten() {
            s.reset(pos);
        }
    }

    /// Delivers an ephemeral frame to every local subscriber except the connections of
    /// the principal `exclude` (e.g. `user:7`).
    pub fn broadcast_ephemeral(
        &self,
        room: &RoomName,
        frame: &Bytes,
        exclude: Option<&str>,
        private: bool,
    ) -> usize {
        let shard = self.shard(room).read().expect("hub lock");
        let Some(subs) = shard.get(room) else {
            return 0;
        };
        let mut n = 0;
        for s in subs.iter().filter(|s| Some(s.principal.as_str()) != exclude) {
            s.deliver_ephemeral(frame, private);
            n += 1;
        }
        metrics::counter!("rtgate_ephemeral_delivered_total").increment(n as u64);
        n
    }

    /// The oldest position reached by a local subscriber of a room.
    pub fn oldest_position(&self, room: &RoomName) -> Option<StreamPos> {
        let shard = self.shard(room).read().expect("hub lock");
        shard
            .get(room)?
            .iter()
            .filter_map(|s| s.position())
            .min_by_key(|p| p.offset)
    }

    /// Local subscribers of a room.
    pub fn subscribers(&self, room: &RoomName) -> usize {
        self.shard(room)
            .read()
            .expect("hub lock")
            .get(room)
            .map_or(0, Vec::len)
    }

    /// Whether a room has local subscribers.
    pub fn has_subscribers(&self, room: &RoomName) -> bool {
        self.subscribers(room) > 0
    }

    /// Subscriptions on this node (all rooms).
    pub fn subscriptions(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("hub lock").values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Rooms with local subscribers.
    pub fn rooms(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("hub lock").len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    //! Subscribers driven by hand: replay pacing against the connection's queue, live
    //! events held during a replay, rooms before their first event.
    use super::*;
    use crate::outbox::{LaneReceiver, Outbox};
    use rtgate_protocol::pb;

    fn room() -> RoomName {
        RoomName::parse("inbox:3").unwrap()
    }

    fn publication(epoch: &str, offset: u64, bytes: usize) -> Arc<Publication> {
        let event = pb::Event {
            name: "m".into(),
            json: "x".repeat(bytes),
            ..Default::default()
        };
        crate::engine::encode_publication(
            &room(),
            StreamPos {
                epoch: Epoch::from_wire(epoch),
                offset,
            },
            &prost::Message::encode_to_vec(&event),
        )
    }

    fn subscriber(budget: usize) -> (Arc<Subscriber>, LaneReceiver) {
        let outbox = Outbox::new(budget);
        let (lane, rx) = Lane::new(&outbox);
        let sub = Subscriber::new(ConnectionId(1), room(), RoomName::user(7), false, lane, None);
        (sub, rx)
    }

    /// Offsets of the room events (and resets, as `None`) queued, each written at once.
    fn drain(rx: &mut LaneReceiver) -> Vec<Option<u64>> {
        let mut out = Vec::new();
        while let Some(frame) = rx.try_recv() {
            rx.written(frame.len());
            let decoded = <pb::ServerFrame as prost::Message>::decode(&frame[..]).unwrap();
            out.push(match decoded.kind {
                Some(pb::server_frame::Kind::Event(e)) => Some(e.offset),
                _ => None,
            });
        }
        out
    }

    #[test]
    fn a_replay_goes_out_at_the_pace_the_queue_drains_and_live_events_wait_for_it() {
        // A budget of 10 KB; events of about 1 KB: the replay mark lets ~5 through a time.
        let (sub, mut rx) = subscriber(10_000);
        let replay: Vec<_> = (1..=30).map(|o| publication("e", o, 1000)).collect();
        sub.prepare(
            replay,
            StreamPos {
                epoch: Epoch::from_wire("e"),
                offset: 30,
            },
            None,
        );
        // A live event arrives while the subscription is set up.
        sub.deliver(&publication("e", 31, 1000));
        assert_eq!(sub.activate(), Pumped::Waiting);
        let mut got = drain(&mut rx);
        assert!(
            got.len() <= 6,
            "the replay filled only up to the mark: {}",
            got.len()
        );
        assert!(!sub.lane.outbox().is_overflowed());
        // Another live event while replaying: held, not sent ahead of the replay.
        sub.deliver(&publication("e", 32, 1000));
        let mut rounds = 0;
        loop {
            let state = sub.pump();
            got.extend(drain(&mut rx));
            rounds += 1;
            if state == Pumped::Done {
                break;
            }
            assert!(rounds < 100);
        }
        assert_eq!(got, (1..=32).map(Some).collect::<Vec<_>>());
        assert!(
            !sub.lane.outbox().is_overflowed(),
            "a replay never trips the budget"
        );
        // Live now.
        sub.deliver(&publication("e", 33, 10));
        assert_eq!(drain(&mut rx), vec![Some(33)]);
    }

    #[test]
    fn a_paged_replay_asks_for_the_next_page_and_a_lost_one_resets() {
        let (sub, mut rx) = subscriber(1 << 20);
        let cursor = ReplayCursor {
            epoch: Epoch::from_wire("e"),
            next: 3,
            until: 5,
            after_id: Some(Arc::from("1-2")),
        };
        let first = vec![publication("e", 1, 10), publication("e", 2, 10)];
        sub.prepare(
            first,
            StreamPos {
                epoch: Epoch::from_wire("e"),
                offset: 5,
            },
            Some(cursor.clone()),
        );
        assert_eq!(sub.activate(), Pumped::NeedPage(cursor.clone()));
        assert_eq!(drain(&mut rx), vec![Some(1), Some(2)]);
        let page = ReplayPage::Events(
            vec![publication("e", 3, 10), publication("e", 4, 10)],
            Some(ReplayCursor {
                next: 5,
                ..cursor.clone()
            }),
        );
        assert!(matches!(sub.add_page(page), Pumped::NeedPage(c) if c.next == 5));
        assert_eq!(drain(&mut rx), vec![Some(3), Some(4)]);
        // History lost the rest: a reset, then live from the room's top.
        let top = StreamPos {
            epoch: Epoch::from_wire("e"),
            offset: 9,
        };
        assert_eq!(sub.add_page(ReplayPage::Lost(top)), Pumped::Done);
        assert_eq!(drain(&mut rx), vec![None]);
        sub.deliver(&publication("e", 9, 10));
        sub.deliver(&publication("e", 10, 10));
        assert_eq!(drain(&mut rx), vec![Some(10)]);
    }

    #[test]
    fn a_room_joined_before_its_first_event_follows_on_without_a_reset() {
        let (sub, mut rx) = subscriber(1 << 20);
        sub.prepare(
            Vec::new(),
            StreamPos {
                epoch: Epoch::from_wire(""),
                offset: 0,
            },
            None,
        );
        assert_eq!(sub.activate(), Pumped::Done);
        sub.deliver(&publication("new", 1, 10));
        assert_eq!(drain(&mut rx), vec![Some(1)]);
        // Whereas a later event of another epoch is a reset.
        sub.deliver(&publication("other", 7, 10));
        assert_eq!(drain(&mut rx), vec![None, Some(7)]);
        // And "before anything" that sees a later first event missed some: a reset.
        let (late, mut rx) = subscriber(1 << 20);
        late.prepare(
            Vec::new(),
            StreamPos {
                epoch: Epoch::from_wire(""),
                offset: 0,
            },
            None,
        );
        late.activate();
        late.deliver(&publication("new", 3, 10));
        assert_eq!(drain(&mut rx), vec![None, Some(3)]);
    }
}
