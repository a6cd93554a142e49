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
    Live { epoch: Epoch, last: u64 },
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

    /// Every room with local subscribers, and who they are (each subscriber's own room,
    /// `user:7` or `contact:9`, once per connection), sorted by room.
    pub fn members(&self) -> Vec<(RoomName, Vec<RoomName>)> {
        let mut rooms: Vec<(RoomName, Vec<RoomName>)> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .expect("hub lock")
                    .iter()
                    .map(|(room, subs)| (room.clone(), subs.iter().map(|s| s.principal.clone()).collect()))
                    .collect::<Vec<_>>()
            })
            .collect();
        rooms.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        rooms
    }
}

#[cfg(test)]
mod tests {
    //! Subscribers driven by hand through a real outbox and lane, their frames read back:
    //! the `follow` rule, each subscription state, replay pacing and paging against the
    //! connection's queue, live events arriving during a replay, duplicates, events older
    //! than the replay, resets, rooms before their first event.
    use std::sync::Mutex;

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

    fn pos(epoch: &str, offset: u64) -> StreamPos {
        StreamPos {
            epoch: Epoch::from_wire(epoch),
            offset,
        }
    }

    /// A small event.
    fn p(epoch: &str, offset: u64) -> Arc<Publication> {
        publication(epoch, offset, 10)
    }

    /// A frame read back from a lane.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Event(String, u64),
        Reset(String, u64),
        Other,
    }

    fn ev(epoch: &str, offset: u64) -> Seen {
        Seen::Event(epoch.into(), offset)
    }

    fn reset(epoch: &str, offset: u64) -> Seen {
        Seen::Reset(epoch.into(), offset)
    }

    /// The frames queued, each written at once.
    fn frames(rx: &mut LaneReceiver) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Some(frame) = rx.try_recv() {
            rx.written(frame.len());
            let decoded = <pb::ServerFrame as prost::Message>::decode(&frame[..]).unwrap();
            out.push(match decoded.kind {
                Some(pb::server_frame::Kind::Event(e)) => Seen::Event(e.epoch, e.offset),
                Some(pb::server_frame::Kind::Reset(r)) => {
                    assert_eq!(r.room, room().to_string());
                    let at = r.position.unwrap();
                    Seen::Reset(at.epoch, at.offset)
                }
                _ => Seen::Other,
            });
        }
        out
    }

    /// Prepares `sub` with no replay at (`epoch`, `offset`) and activates it.
    fn go_live(sub: &Subscriber, epoch: &str, offset: u64) {
        sub.prepare(Vec::new(), pos(epoch, offset), None);
        assert_eq!(sub.activate(), Pumped::Done);
    }

    /// Pumps until the replay is done (no pages), collecting the frames.
    fn pump_out(sub: &Subscriber, rx: &mut LaneReceiver, mut got: Vec<Seen>) -> Vec<Seen> {
        for _ in 0..100 {
            let state = sub.pump();
            got.extend(frames(rx));
            if state == Pumped::Done {
                return got;
            }
        }
        panic!("the replay never ended");
    }

    #[test]
    fn the_follow_rule() {
        let e = Epoch::from_wire("e");
        // Same epoch: newer is next, the same or older was delivered already.
        assert_eq!(follow(&e, 4, &p("e", 5)), Follow::Next);
        assert_eq!(follow(&e, 4, &p("e", 9)), Follow::Next, "gaps are the engine's");
        assert_eq!(follow(&e, 4, &p("e", 4)), Follow::Old);
        assert_eq!(follow(&e, 4, &p("e", 1)), Follow::Old);
        // Another epoch, whatever its offset: a reset.
        assert_eq!(follow(&e, 4, &p("f", 1)), Follow::Reset);
        assert_eq!(follow(&e, 4, &p("f", 5)), Follow::Reset);
        // Before anything: the room's first event follows on; a later one means some were
        // missed.
        let before = Epoch::from_wire("");
        assert_eq!(follow(&before, 0, &p("f", 1)), Follow::Next);
        assert_eq!(follow(&before, 0, &p("f", 2)), Follow::Reset);
        assert_eq!(follow(&before, 3, &p("f", 1)), Follow::Reset);
    }

    #[test]
    fn a_pending_subscriber_sends_nothing_until_prepared_and_activated() {
        let (sub, mut rx) = subscriber(1 << 20);
        sub.deliver(&p("e", 11));
        // Not prepared yet: activating does nothing, and the subscriber stays pending.
        assert_eq!(sub.activate(), Pumped::Done);
        assert_eq!(sub.position(), None);
        sub.prepare(Vec::new(), pos("e", 10), None);
        sub.deliver(&p("e", 12));
        assert_eq!(frames(&mut rx), vec![]);
        assert_eq!(sub.position(), Some(pos("e", 10)));
        assert_eq!(sub.activate(), Pumped::Done);
        assert_eq!(frames(&mut rx), vec![ev("e", 11), ev("e", 12)]);
        // Activating again sends nothing twice.
        assert_eq!(sub.activate(), Pumped::Done);
        assert_eq!(frames(&mut rx), vec![]);
        assert_eq!(sub.position(), Some(pos("e", 12)));
    }

    #[test]
    fn buffered_live_events_older_than_the_replay_or_repeated_are_dropped() {
        let (sub, mut rx) = subscriber(1 << 20);
        // Registered, then the history read: events published in between arrive both ways.
        for offset in [3, 5, 6, 7, 7, 8] {
            sub.deliver(&p("e", offset));
        }
        let replay = (4..=6).map(|o| p("e", o)).collect();
        sub.prepare(replay, pos("e", 6), None);
        assert_eq!(sub.activate(), Pumped::Done);
        assert_eq!(
            frames(&mut rx),
            vec![ev("e", 4), ev("e", 5), ev("e", 6), ev("e", 7), ev("e", 8)]
        );
    }

    #[test]
    fn without_a_replay_buffered_events_after_the_position_go_out_on_activation() {
        let (sub, mut rx) = subscriber(1 << 20);
        for offset in [9, 10, 11, 12] {
            sub.deliver(&p("e", offset));
        }
        go_live(&sub, "e", 10);
        assert_eq!(frames(&mut rx), vec![ev("e", 11), ev("e", 12)]);
    }

    #[test]
    fn live_duplicates_and_older_events_are_dropped() {
        let (sub, mut rx) = subscriber(1 << 20);
        go_live(&sub, "e", 5);
        for offset in [6, 6, 5, 7, 9, 8] {
            sub.deliver(&p("e", offset));
        }
        assert_eq!(frames(&mut rx), vec![ev("e", 6), ev("e", 7), ev("e", 9)]);
        assert_eq!(sub.position(), Some(pos("e", 9)));
    }

    #[test]
    fn a_live_event_of_another_epoch_comes_after_a_reset() {
        let (sub, mut rx) = subscriber(1 << 20);
        go_live(&sub, "e", 5);
        sub.deliver(&p("f", 1));
        sub.deliver(&p("f", 2));
        // An epoch seen before is another epoch all the same.
        sub.deliver(&p("e", 6));
        assert_eq!(
            frames(&mut rx),
            vec![reset("f", 0), ev("f", 1), ev("f", 2), reset("e", 5), ev("e", 6)]
        );
    }

    #[test]
    fn live_events_during_a_replay_wait_for_it_and_keep_their_order() {
        // Events of about 1 KB against a 4 KB budget: the replay goes out two at a time.
        let (sub, mut rx) = subscriber(4_000);
        let replay = (1..=6).map(|o| publication("e", o, 1000)).collect();
        sub.prepare(replay, pos("e", 6), None);
        assert_eq!(sub.activate(), Pumped::Waiting);
        let got = frames(&mut rx);
        assert!(got.len() < 6, "held back: {got:?}");
        assert_eq!(sub.position(), Some(pos("e", 6)), "where the replay ends");
        // Live meanwhile: one the replay holds, a newer one, then a new epoch.
        for live in [p("e", 2), p("e", 7), p("f", 1)] {
            sub.deliver(&live);
        }
        let got = pump_out(&sub, &mut rx, got);
        let mut expected: Vec<_> = (1..=7).map(|o| ev("e", o)).collect();
        expected.extend([reset("f", 0), ev("f", 1)]);
        assert_eq!(got, expected);
        assert_eq!(sub.position(), Some(pos("f", 1)));
    }

    #[test]
    fn a_page_is_asked_for_once_and_only_when_the_queue_has_room() {
        // Two events of about 1 KB fill a 4 KB budget to its replay mark.
        let (sub, mut rx) = subscriber(4_000);
        let cursor = ReplayCursor {
            epoch: Epoch::from_wire("e"),
            next: 3,
            until: 4,
            after_id: None,
        };
        let first = vec![publication("e", 1, 1000), publication("e", 2, 1000)];
        sub.prepare(first, pos("e", 4), Some(cursor.clone()));
        assert_eq!(sub.activate(), Pumped::Waiting, "no room for the next page yet");
        assert_eq!(frames(&mut rx), vec![ev("e", 1), ev("e", 2)]);
        assert_eq!(sub.pump(), Pumped::NeedPage(cursor.clone()));
        // Asked for: pumping again does not ask twice.
        sub.deliver(&p("e", 5));
        assert_eq!(sub.pump(), Pumped::Waiting);
        assert_eq!(sub.pump(), Pumped::Waiting);
        assert_eq!(frames(&mut rx), vec![]);
        // The page repeats an event already sent and carries one of another epoch: both
        // are dropped.
        let page = ReplayPage::Events(vec![p("e", 2), p("e", 3), p("x", 3), p("e", 4)], None);
        assert_eq!(sub.add_page(page), Pumped::Done);
        assert_eq!(frames(&mut rx), vec![ev("e", 3), ev("e", 4), ev("e", 5)]);
        // Live: further pages are ignored.
        assert_eq!(
            sub.add_page(ReplayPage::Events(vec![p("e", 6)], None)),
            Pumped::Done
        );
        assert_eq!(frames(&mut rx), vec![]);
    }

    #[test]
    fn a_reset_during_a_replay_drops_the_rest_and_continues_from_the_top() {
        let (sub, mut rx) = subscriber(4_000);
        let replay = (1..=6).map(|o| publication("e", o, 1000)).collect();
        sub.prepare(replay, pos("e", 6), None);
        assert_eq!(sub.activate(), Pumped::Waiting);
        let mut got = frames(&mut rx);
        let sent = got.len() as u64;
        for live in [p("e", 9), p("e", 10), p("e", 11)] {
            sub.deliver(&live);
        }
        sub.reset(&pos("e", 10));
        got.extend(frames(&mut rx));
        let mut expected: Vec<_> = (1..=sent).map(|o| ev("e", o)).collect();
        expected.extend([reset("e", 10), ev("e", 11)]);
        assert_eq!(got, expected);
        assert_eq!(sub.pump(), Pumped::Done);
        assert_eq!(frames(&mut rx), vec![]);
    }

    #[test]
    fn a_reset_before_activation_drops_the_replay_without_a_reset_frame() {
        let (sub, mut rx) = subscriber(1 << 20);
        sub.deliver(&p("e", 8));
        sub.prepare((1..=3).map(|o| p("e", o)).collect(), pos("e", 3), None);
        sub.deliver(&p("e", 10));
        // The client is told recovered = false instead.
        sub.reset(&pos("e", 9));
        assert_eq!(sub.position(), Some(pos("e", 9)));
        assert_eq!(sub.activate(), Pumped::Done);
        assert_eq!(frames(&mut rx), vec![ev("e", 10)]);
    }

    #[test]
    fn resets_while_live_move_the_position_and_stale_ones_are_ignored() {
        let (sub, mut rx) = subscriber(1 << 20);
        go_live(&sub, "e", 5);
        sub.reset(&pos("e", 3));
        sub.reset(&pos("e", 5));
        assert_eq!(frames(&mut rx), vec![], "already past them");
        sub.reset(&pos("e", 8));
        sub.deliver(&p("e", 8));
        sub.deliver(&p("e", 9));
        sub.reset(&pos("f", 2));
        sub.deliver(&p("f", 3));
        assert_eq!(
            frames(&mut rx),
            vec![reset("e", 8), ev("e", 9), reset("f", 2), ev("f", 3)]
        );
    }

    #[test]
    fn a_closed_subscriber_sends_nothing_more() {
        let (sub, mut rx) = subscriber(4_000);
        sub.prepare(
            (1..=6).map(|o| publication("e", o, 1000)).collect(),
            pos("e", 6),
            None,
        );
        assert_eq!(sub.activate(), Pumped::Waiting);
        let sent = frames(&mut rx).len();
        assert!(sent < 6);
        sub.close();
        assert_eq!(sub.pump(), Pumped::Done);
        sub.deliver(&p("e", 7));
        sub.reset(&pos("e", 9));
        sub.deliver_ephemeral(&Bytes::from_static(b"typing"), false);
        assert_eq!(
            sub.add_page(ReplayPage::Events(vec![p("e", 8)], None)),
            Pumped::Done
        );
        assert_eq!(sub.activate(), Pumped::Done);
        assert_eq!(frames(&mut rx), vec![]);
        assert_eq!(sub.position(), None);
    }

    #[test]
    fn too_many_live_events_before_going_live_make_a_slow_consumer() {
        let (sub, mut rx) = subscriber(1 << 20);
        sub.prepare(Vec::new(), pos("e", 0), None);
        let one = p("e", 1);
        for _ in 0..MAX_PENDING {
            sub.deliver(&one);
        }
        assert!(!sub.lane.outbox().is_overflowed());
        sub.deliver(&one);
        assert!(sub.lane.outbox().is_overflowed());
        assert_eq!(sub.position(), None, "closed");
        assert_eq!(sub.activate(), Pumped::Done);
        assert_eq!(frames(&mut rx), vec![]);
    }

    #[derive(Debug)]
    struct Datagrams {
        accept: bool,
        sent: Mutex<Vec<Bytes>>,
    }

    impl DatagramSink for Datagrams {
        fn send_datagram(&self, frame: Bytes) -> bool {
            if self.accept {
                self.sent.lock().unwrap().push(frame);
            }
            self.accept
        }
    }

    #[test]
    fn ephemeral_frames_reach_live_subscribers_only_and_private_ones_skip_contacts() {
        let typing = Bytes::from_static(b"typing");
        let subscriber_of = |contact: bool, datagrams: Option<Arc<dyn DatagramSink>>| {
            let outbox = Outbox::new(1 << 20);
            let (lane, rx) = Lane::new(&outbox);
            let sub = Subscriber::new(
                ConnectionId(2),
                room(),
                RoomName::user(8),
                contact,
                lane,
                datagrams,
            );
            (sub, rx)
        };
        let (agent, mut rx) = subscriber_of(false, None);
        agent.deliver_ephemeral(&typing, false);
        assert!(rx.try_recv().is_none(), "not live yet");
        go_live(&agent, "e", 0);
        agent.deliver_ephemeral(&typing, true);
        assert_eq!(rx.try_recv(), Some(typing.clone()));
        let (contact, mut rx) = subscriber_of(true, None);
        go_live(&contact, "e", 0);
        contact.deliver_ephemeral(&typing, true);
        assert!(rx.try_recv().is_none(), "private");
        contact.deliver_ephemeral(&typing, false);
        assert_eq!(rx.try_recv(), Some(typing.clone()));
        // Datagrams first, the lane when a datagram cannot be sent.
        for accept in [true, false] {
            let sink = Arc::new(Datagrams {
                accept,
                sent: Mutex::new(Vec::new()),
            });
            let (sub, mut rx) = subscriber_of(false, Some(sink.clone()));
            go_live(&sub, "e", 0);
            sub.deliver_ephemeral(&typing, false);
            assert_eq!(sink.sent.lock().unwrap().len(), usize::from(accept));
            assert_eq!(rx.try_recv().is_some(), !accept);
        }
    }

    #[test]
    fn the_hub_replaces_a_connection_s_subscriber_and_knows_the_oldest_position() {
        let hub = Hub::new();
        let (first, mut first_rx) = subscriber(1 << 20);
        assert!(hub.add(first.clone()), "the room's first subscriber");
        go_live(&first, "e", 5);
        // The same connection subscribes again: the old subscriber is closed.
        let (again, mut again_rx) = subscriber(1 << 20);
        assert!(!hub.add(again.clone()));
        go_live(&again, "e", 3);
        let outbox = Outbox::new(1 << 20);
        let (lane, mut other_rx) = Lane::new(&outbox);
        let other = Subscriber::new(ConnectionId(2), room(), RoomName::user(8), false, lane, None);
        hub.add(other.clone());
        go_live(&other, "e", 4);
        assert_eq!(hub.subscribers(&room()), 2);
        assert_eq!(hub.oldest_position(&room()), Some(pos("e", 3)));
        assert_eq!(hub.broadcast(&p("e", 5)), 2);
        assert_eq!(frames(&mut first_rx), vec![]);
        assert_eq!(frames(&mut again_rx), vec![ev("e", 5)]);
        assert_eq!(frames(&mut other_rx), vec![ev("e", 5)]);
        assert!(!hub.remove(&room(), ConnectionId(1)));
        assert!(hub.remove(&room(), ConnectionId(2)), "the last one");
        assert_eq!(hub.rooms(), 0);
    }
}
