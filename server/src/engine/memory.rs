//! The embedded engine: history in process memory, fan-out to this node's hub only.
//! The default when no Redis is configured.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use rtgate_protocol::RoomName;

use super::{
    Engine, EngineError, HistoryLimits, Published, Recovery, RoomInfo, SubscribeOutcome, encode_publication,
    plan_recovery,
};
use crate::hub::{Hub, Publication, ReplayCursor, ReplayPage, Subscriber};
use crate::ids::{ConnectionId, Epoch, StreamPos};

/// One room's numbered history, trimmed by count and age. Sans-IO: time is an argument.
#[derive(Debug)]
pub(crate) struct RoomLog {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<(Instant, Arc<Publication>)>,
    /// Idempotency keys of the events in `entries`, with their offsets.
    keys: HashMap<Box<str>, u64>,
    /// The key of each entry that has one, oldest first (to forget keys as entries go).
    keyed: VecDeque<(u64, Box<str>)>,
    last_used: Instant,
}

impl RoomLog {
    pub(crate) fn new(now: Instant) -> Self {
        RoomLog {
            epoch: Epoch::random(),
            top: 0,
            entries: VecDeque::new(),
            keys: HashMap::new(),
            keyed: VecDeque::new(),
            last_used: now,
        }
    }

    fn top(&self) -> StreamPos {
        StreamPos {
            epoch: self.epoch.clone(),
            offset: self.top,
        }
    }

    fn trim(&mut self, limits: HistoryLimits, now: Instant) {
        while self.entries.len() > limits.max_events {
            self.entries.pop_front();
        }
        while let Some((at, _)) = self.entries.front() {
            if now.saturating_duration_since(*at) > limits.max_age {
                self.entries.pop_front();
            } else {
                break;
            }
        }
        let oldest = self.oldest();
        while let Some((offset, _)) = self.keyed.front() {
            if *offset >= oldest {
                break;
            }
            let (_, key) = self.keyed.pop_front().expect("checked");
            self.keys.remove(&key);
        }
    }

    /// The position of the event holding idempotency `key`, if it is still in history.
    pub(crate) fn find_key(&self, key: &str) -> Option<StreamPos> {
        self.keys.get(key).map(|offset| StreamPos {
            epoch: self.epoch.clone(),
            offset: *offset,
        })
    }

    pub(crate) fn append(
        &mut self,
        room: &RoomName,
        event: &[u8],
        key: Option<&str>,
        limits: HistoryLimits,
        now: Instant,
    ) -> Arc<Publication> {
        self.top += 1;
        self.last_used = now;
        let p = encode_publication(room, self.top(), event);
        self.entries.push_back((now, p.clone()));
        if let Some(key) = key {
            self.keys.insert(key.into(), self.top);
            self.keyed.push_back((self.top, key.into()));
        }
        self.trim(limits, now);
        p
    }

    fn oldest(&self) -> u64 {
        self.entries.front().map_or(self.top + 1, |(_, p)| p.pos.offset)
    }

    /// The events from `cursor.next` up to `cursor.until`, about `max_bytes` of them.
    pub(crate) fn page(&self, cursor: &ReplayCursor, max_bytes: usize) -> ReplayPage {
        if cursor.epoch != self.epoch || cursor.next < self.oldest() {
            return ReplayPage::Lost(self.top());
        }
        let start = (cursor.next - self.oldest()) as usize;
        let mut events = Vec::new();
        let mut bytes = 0;
        for (_, p) in self.entries.iter().skip(start) {
            if p.pos.offset > cursor.until || bytes >= max_bytes {
                break;
            }
            bytes += p.frame.len();
            events.push(p.clone());
        }
        let last = events.last().map_or(cursor.next - 1, |p| p.pos.offset);
        let next = (last < cursor.until).then(|| ReplayCursor {
            next: last + 1,
            ..cursor.clone()
        });
        ReplayPage::Events(events, next)
    }

    /// The replay for a subscription from `since`, and whether it recovers.
    pub(crate) fn recover(
        &mut self,
        since: Option<&StreamPos>,
        limits: HistoryLimits,
        now: Instant,
    ) -> (Vec<Arc<Publication>>, bool) {
        self.trim(limits, now);
        self.last_used = now;
        match plan_recovery(since, &self.top(), self.oldest()) {
            Recovery::Fresh => (Vec::new(), false),
            Recovery::Lost => (Vec::new(), false),
            Recovery::ReplayAfter(after) => (
                self.entries
                    .iter()
                    .filter(|(_, p)| p.pos.offset > after)
                    .map(|(_, p)| p.clone())
                    .collect(),
                true,
            ),
        }
    }
}

/// The embedded engine.
#[derive(Debug)]
pub struct MemoryEngine {
    hub: Arc<Hub>,
    limits: HistoryLimits,
    rooms: Mutex<HashMap<RoomName, Arc<Mutex<RoomLog>>>>,
}

impl MemoryEngine {
    /// An engine delivering to `hub` and keeping `limits` of history per room.
    pub fn new(hub: Arc<Hub>, limits: HistoryLimits) -> Self {
        MemoryEngine {
            hub,
            limits,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn log(&self, room: &RoomName) -> Arc<Mutex<RoomLog>> {
        self.rooms
            .lock()
            .expect("rooms lock")
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Mutex::new(RoomLog::new(Instant::now()))))
            .clone()
    }

    /// Drops the logs of rooms that have no subscriber and nothing left in history.
    /// A dropped room starts over in a new epoch.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        let before = rooms.len();
        rooms.retain(|room, log| {
            let mut log = log.lock().expect("room lock");
            log.trim(self.limits, now);
            let idle = now.saturating_duration_since(log.last_used) > self.limits.max_age;
            !(log.entries.is_empty() && idle && !self.hub.has_subscribers(room))
        });
        before - rooms.len()
    }

    /// Rooms with a history log.
    pub fn logged_rooms(&self) -> usize {
        self.rooms.lock().expect("rooms lock").len()
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn publish(
        &self,
        room: &RoomName,
        event: &[u8],
        key: Option<&str>,
    ) -> Result<Published, EngineError> {
        let log = self.log(room);
        let mut log = log.lock().expect("room lock");
        let now = Instant::now();
        log.trim(self.limits, now);
        if let Some(pos) = key.and_then(|k| log.find_key(k)) {
            return Ok(Published { pos, duplicate: true });
        }
        let p = log.append(room, event, key, self.limits, now);
        // Broadcast under the room lock: offsets reach every subscriber in order.
        self.hub.broadcast(&p);
        Ok(Published {
            pos: p.pos.clone(),
            duplicate: false,
        })
    }

    async fn subscribe(
        &self,
        sub: Arc<Subscriber>,
        since: Option<StreamPos>,
    ) -> Result<SubscribeOutcome, EngineError> {
        let room = sub.room().clone();
        // Register first: anything published from now on is buffered by the subscriber, and
        // anything published before is in the history read below.
        self.hub.add(sub.clone());
        // Joining creates nothing: a room nobody published to has no log, and the
        // subscription starts from the position before anything (epoch "", offset 0).
        let existing = self.rooms.lock().expect("rooms lock").get(&room).cloned();
        let Some(log) = existing else {
            let top = StreamPos {
                epoch: Epoch::from_wire(""),
                offset: 0,
            };
            let recovered = since.is_some_and(|s| s.offset == 0 && s.epoch.as_str().is_empty());
            sub.prepare(Vec::new(), top.clone(), None);
            return Ok(SubscribeOutcome {
                pos: top,
                recovered,
                replayed: 0,
            });
        };
        let mut log = log.lock().expect("room lock");
        let (replay, recovered) = log.recover(since.as_ref(), self.limits, Instant::now());
        let outcome = SubscribeOutcome {
            pos: log.top(),
            recovered,
            replayed: replay.len() as u32,
        };
        // The replay shares the history's publications: handed over whole, it costs this
        // subscriber nothing but pointers, and goes out at the client's pace.
        sub.prepare(replay, log.top(), None);
        Ok(outcome)
    }

    async fn replay_page(
        &self,
        room: &RoomName,
        cursor: &ReplayCursor,
        max_bytes: usize,
    ) -> Result<ReplayPage, EngineError> {
        let existing = self.rooms.lock().expect("rooms lock").get(room).cloned();
        let Some(log) = existing else {
            return Ok(ReplayPage::Lost(StreamPos {
                epoch: Epoch::from_wire(""),
                offset: 0,
            }));
        };
        let mut log = log.lock().expect("room lock");
        log.trim(self.limits, Instant::now());
        Ok(log.page(cursor, max_bytes))
    }

    async fn unsubscribe(&self, room: &RoomName, conn: ConnectionId) {
        self.hub.remove(room, conn);
    }

    async fn publish_ephemeral(
        &self,
        room: &RoomName,
        frame: Bytes,
        exclude: Option<&str>,
        private: bool,
    ) -> Result<(), EngineError> {
        self.hub.broadcast_ephemeral(room, &frame, exclude, private);
        Ok(())
    }

    async fn room_info(&self, room: &RoomName) -> Result<RoomInfo, EngineError> {
        let pos = {
            let rooms = self.rooms.lock().expect("rooms lock");
            rooms.get(room).map(|log| log.lock().expect("room lock").top())
        };
        Ok(RoomInfo {
            subscribers: self.hub.subscribers(room) as u32,
            pos: pos.unwrap_or(StreamPos {
                epoch: Epoch::from_wire(""),
                offset: 0,
            }),
        })
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn maintain(&self) {
        self.sweep(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use rtgate_protocol::pb;

    fn event(n: u32) -> pb::Event {
        pb::Event {
            name: format!("test.{n}"),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn joining_rooms_creates_nothing_and_retried_ids_are_found() {
        use crate::outbox::{Lane, Outbox};
        let engine = MemoryEngine::new(Arc::new(Hub::new()), HistoryLimits::default());
        let outbox = Outbox::new(1 << 20);
        for n in 0..50u64 {
            let (lane, _rx) = Lane::new(&outbox);
            let room = RoomName::parse(&format!("public:1:r{n}")).unwrap();
            let sub = Subscriber::new(ConnectionId(n), room, RoomName::user(7), false, lane, None);
            let outcome = engine.subscribe(sub, None).await.unwrap();
            assert_eq!((outcome.pos.epoch.as_str(), outcome.pos.offset), ("", 0));
        }
        assert_eq!(engine.logged_rooms(), 0, "subscribing created room logs");
        let room = RoomName::parse("inbox:1").unwrap();
        let bytes = prost::Message::encode_to_vec(&event(1));
        let first = engine.publish(&room, &bytes, Some("id-1")).await.unwrap();
        let again = engine.publish(&room, &bytes, Some("id-1")).await.unwrap();
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(first.pos, again.pos);
        let other = engine.publish(&room, &bytes, Some("id-2")).await.unwrap();
        assert_eq!(other.pos.offset, 2);
    }

    #[test]
    fn idempotency_keys_are_forgotten_with_their_events() {
        let t0 = Instant::now();
        let limits = HistoryLimits {
            max_events: 2,
            max_age: Duration::from_secs(10),
        };
        let room = RoomName::parse("inbox:1").unwrap();
        let mut log = RoomLog::new(t0);
        let bytes = prost::Message::encode_to_vec(&event(1));
        log.append(&room, &bytes, Some("a"), limits, t0);
        assert!(log.find_key("a").is_some());
        log.append(&room, &bytes, Some("b"), limits, t0);
        log.append(&room, &bytes, Some("c"), limits, t0);
        assert!(log.find_key("a").is_none(), "trimmed with its event");
        assert_eq!(log.find_key("c").map(|p| p.offset), Some(3));
    }

    #[test]
    fn history_trims_by_count_and_age() {
        let t0 = Instant::now();
        let limits = HistoryLimits {
            max_events: 3,
            max_age: Duration::from_secs(10),
        };
        let room = RoomName::parse("public:1:x").unwrap();
        let mut log = RoomLog::new(t0);
        for i in 0..5 {
            log.append(
                &room,
                &prost::Message::encode_to_vec(&event(i)),
                None,
                limits,
                t0 + Duration::from_secs(i as u64),
            );
        }
        let offsets: Vec<u64> = log.entries.iter().map(|(_, p)| p.pos.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);

        let since = StreamPos {
            epoch: log.epoch.clone(),
            offset: 3,
        };
        let (replay, ok) = log.recover(Some(&since), limits, t0 + Duration::from_secs(5));
        assert!(ok);
        assert_eq!(
            replay.iter().map(|p| p.pos.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );

        let since = StreamPos {
            epoch: log.epoch.clone(),
            offset: 1,
        };
        assert!(!log.recover(Some(&since), limits, t0 + Duration::from_secs(5)).1);

        // At t=13.5 s the events of t=2 and t=3 are older than 10 s.
        let since = StreamPos {
            epoch: log.epoch.clone(),
            offset: 4,
        };
        let (replay, ok) = log.recover(Some(&since), limits, t0 + Duration::from_millis(13_500));
        assert!(ok);
        assert_eq!(replay.len(), 1);
        let since = StreamPos {
            epoch: log.epoch.clone(),
            offset: 3,
        };
        assert!(
            !log.recover(Some(&since), limits, t0 + Duration::from_millis(13_500))
                .1
        );
    }
}
