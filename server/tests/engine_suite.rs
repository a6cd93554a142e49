//! One behaviour suite for both engines: each behaviour is written once, against the
//! `Engine` seam, and run on the embedded engine, on Redis (the shared server, a key
//! prefix per test) and on a Redis Cluster of three masters (the test's own). Subscribers
//! are driven directly, their frames read from their lane.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::PrivateCluster;
use prost::Message as _;
use rtgate_protocol::{RoomName, pb};
use rtgate_server::engine::{Engine, HistoryLimits, MemoryEngine, RedisConfig, RedisEngine};
use rtgate_server::hub::{Hub, Pumped, Subscriber};
use rtgate_server::ids::{ConnectionId, Epoch, StreamPos};
use rtgate_server::outbox::{Lane, LaneReceiver, Outbox};

const LIMITS: HistoryLimits = HistoryLimits {
    max_events: 5,
    max_age: Duration::from_secs(300),
};

/// A Redis engine on `config`, ready.
async fn ready_engine(config: RedisConfig) -> RedisEngine {
    let redis = RedisEngine::new(Arc::new(Hub::new()), config).expect("redis engine");
    for _ in 0..500 {
        // Readiness needs one successful command and the pub/sub connection.
        redis.maintain().await;
        if redis.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(redis.is_ready(), "redis engine ready");
    redis
}

/// The engines under test, each with a fresh hub, and the cluster the last one runs on
/// (stopped when dropped).
async fn engines(test: &str) -> (Vec<(&'static str, Arc<dyn Engine>)>, PrivateCluster) {
    let memory: Arc<dyn Engine> = Arc::new(MemoryEngine::new(Arc::new(Hub::new()), LIMITS));
    let redis = ready_engine(RedisConfig {
        prefix: common::redis::unique_prefix(test),
        history: LIMITS,
        ..RedisConfig::new(common::redis::SHARED_REDIS)
    })
    .await;
    let cluster = PrivateCluster::start(3).await;
    let on_cluster = ready_engine(RedisConfig {
        prefix: common::redis::unique_prefix(test),
        history: LIMITS,
        cluster: true,
        ..RedisConfig::new(&cluster.url())
    })
    .await;
    (
        vec![
            ("memory", memory),
            ("redis", Arc::new(redis)),
            ("redis cluster", Arc::new(on_cluster)),
        ],
        cluster,
    )
}

fn event(n: u64) -> Vec<u8> {
    pb::Event {
        name: "test.n".into(),
        json: n.to_string(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A subscriber of `room` with a budget of 1 MiB, and the receiving end of its lane.
fn subscriber(room: &RoomName, conn: u64) -> (Arc<Subscriber>, LaneReceiver) {
    let outbox = Outbox::new(1 << 20);
    let (lane, rx) = Lane::new(&outbox);
    (
        Subscriber::new(
            ConnectionId(conn),
            room.clone(),
            RoomName::user(conn),
            false,
            lane,
            None,
        ),
        rx,
    )
}

/// What a subscriber was sent: `Some(offset)` per event, `None` per reset.
async fn received(rx: &mut LaneReceiver, n: usize) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a frame in time")
            .expect("lane open");
        rx.written(frame.len());
        out.push(match pb::ServerFrame::decode(&frame[..]).unwrap().kind {
            Some(pb::server_frame::Kind::Event(e)) => Some(e.offset),
            _ => None,
        });
    }
    out
}

async fn publish_n(engine: &dyn Engine, room: &RoomName, n: u64) -> StreamPos {
    let mut last = None;
    for i in 0..n {
        last = Some(engine.publish(room, &event(i), None).await.unwrap().pos);
    }
    last.expect("at least one")
}

#[tokio::test]
async fn offsets_start_at_one_and_grow_by_one_in_one_epoch() {
    let (all, _cluster) = engines("offsets").await;
    for (name, engine) in all {
        let room = RoomName::parse("inbox:1").unwrap();
        let a = engine.publish(&room, &event(1), None).await.unwrap().pos;
        let b = engine.publish(&room, &event(2), None).await.unwrap().pos;
        assert_eq!((a.offset, b.offset), (1, 2), "{name}");
        assert_eq!(a.epoch, b.epoch, "{name}");
        assert!(!a.epoch.as_str().is_empty(), "{name}");
        let info = engine.room_info(&room).await.unwrap();
        assert_eq!(info.pos, b, "{name}");
    }
}

#[tokio::test]
async fn a_subscriber_from_a_position_gets_exactly_what_it_missed_then_live_events() {
    let (all, _cluster) = engines("recover").await;
    for (name, engine) in all {
        let room = RoomName::parse("inbox:2").unwrap();
        let top = publish_n(&*engine, &room, 4).await;
        let (sub, mut rx) = subscriber(&room, 1);
        let since = StreamPos {
            epoch: top.epoch.clone(),
            offset: 2,
        };
        let outcome = engine.subscribe(sub.clone(), Some(since)).await.unwrap();
        assert!(outcome.recovered, "{name}");
        assert_eq!((outcome.replayed, outcome.pos.offset), (2, 4), "{name}");
        // Published between the subscription and its activation: after the replay.
        engine.publish(&room, &event(5), None).await.unwrap();
        assert_eq!(sub.activate(), Pumped::Done, "{name}");
        engine.publish(&room, &event(6), None).await.unwrap();
        assert_eq!(
            received(&mut rx, 4).await,
            vec![Some(3), Some(4), Some(5), Some(6)],
            "{name}"
        );
    }
}

#[tokio::test]
async fn positions_that_cannot_be_served_say_recovered_false() {
    let (all, _cluster) = engines("lost").await;
    for (name, engine) in all {
        let room = RoomName::parse("inbox:3").unwrap();
        // History keeps 5: after 8 events, offsets 4..8.
        let top = publish_n(&*engine, &room, 8).await;
        let cases = [
            (
                StreamPos {
                    epoch: top.epoch.clone(),
                    offset: 2,
                },
                false,
                "trimmed",
            ),
            (
                StreamPos {
                    epoch: top.epoch.clone(),
                    offset: 3,
                },
                true,
                "just kept",
            ),
            (
                StreamPos {
                    epoch: Epoch::from_wire("other"),
                    offset: 3,
                },
                false,
                "another epoch",
            ),
            (
                StreamPos {
                    epoch: top.epoch.clone(),
                    offset: 9,
                },
                false,
                "beyond the top",
            ),
        ];
        for (i, (since, recovered, what)) in cases.into_iter().enumerate() {
            let (sub, _rx) = subscriber(&room, 10 + i as u64);
            let outcome = engine.subscribe(sub, Some(since)).await.unwrap();
            assert_eq!(outcome.recovered, recovered, "{name}: {what}");
            assert_eq!(outcome.pos, top, "{name}: {what}");
            if !recovered {
                assert_eq!(outcome.replayed, 0, "{name}: {what}");
            }
            engine.unsubscribe(&room, ConnectionId(10 + i as u64)).await;
        }
    }
}

#[tokio::test]
async fn a_room_joined_before_its_first_event_exists_only_once_published() {
    let (all, _cluster) = engines("fresh").await;
    for (name, engine) in all {
        let room = RoomName::parse("public:1:fresh").unwrap();
        let (sub, mut rx) = subscriber(&room, 1);
        let outcome = engine.subscribe(sub.clone(), None).await.unwrap();
        assert_eq!(
            (outcome.pos.epoch.as_str(), outcome.pos.offset),
            ("", 0),
            "{name}"
        );
        assert_eq!(engine.room_info(&room).await.unwrap().pos.offset, 0, "{name}");
        sub.activate();
        engine.publish(&room, &event(1), None).await.unwrap();
        assert_eq!(received(&mut rx, 1).await, vec![Some(1)], "{name}: no reset");
        // From "before anything", a later subscriber recovers everything.
        let (late, mut late_rx) = subscriber(&room, 2);
        let since = StreamPos {
            epoch: Epoch::from_wire(""),
            offset: 0,
        };
        let outcome = engine.subscribe(late.clone(), Some(since)).await.unwrap();
        assert!(outcome.recovered && outcome.replayed == 1, "{name}: {outcome:?}");
        late.activate();
        assert_eq!(received(&mut late_rx, 1).await, vec![Some(1)], "{name}");
    }
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_per_room() {
    let (all, _cluster) = engines("idem").await;
    for (name, engine) in all {
        let room = RoomName::parse("inbox:4").unwrap();
        let other = RoomName::parse("inbox:5").unwrap();
        let first = engine.publish(&room, &event(1), Some("evt-1")).await.unwrap();
        let again = engine.publish(&room, &event(1), Some("evt-1")).await.unwrap();
        assert!(!first.duplicate && again.duplicate, "{name}");
        assert_eq!(first.pos, again.pos, "{name}");
        // Per room: the same key in another room is another event.
        assert!(
            !engine
                .publish(&other, &event(1), Some("evt-1"))
                .await
                .unwrap()
                .duplicate,
            "{name}"
        );
        // Without a key, never a duplicate.
        let a = engine.publish(&room, &event(2), None).await.unwrap();
        let b = engine.publish(&room, &event(2), None).await.unwrap();
        assert_eq!(
            (a.duplicate, b.duplicate, b.pos.offset),
            (false, false, 3),
            "{name}"
        );
        // Once its event left the history (5 events), a key is new again.
        publish_n(&*engine, &room, 5).await;
        assert!(
            !engine
                .publish(&room, &event(1), Some("evt-1"))
                .await
                .unwrap()
                .duplicate,
            "{name}"
        );
    }
}

mod presence {
    //! The presence stores, memory and Redis, held to the same behaviour.
    use super::*;
    use rtgate_server::auth::PrincipalId;
    use rtgate_server::presence::{MemoryPresence, PresenceStore, RedisPresence};

    const TTL_MS: u64 = 1_000;

    async fn stores(test: &str) -> (Vec<(&'static str, Arc<dyn PresenceStore>)>, PrivateCluster) {
        let config = RedisConfig {
            prefix: common::redis::unique_prefix(test),
            ..RedisConfig::new(common::redis::SHARED_REDIS)
        };
        let engine = RedisEngine::new(Arc::new(Hub::new()), config).expect("redis engine");
        let redis: Arc<dyn PresenceStore> = Arc::new(RedisPresence::new(engine.commands(), TTL_MS, None));
        let cluster = PrivateCluster::start(3).await;
        let config = RedisConfig {
            prefix: common::redis::unique_prefix(test),
            cluster: true,
            ..RedisConfig::new(&cluster.url())
        };
        let engine = RedisEngine::new(Arc::new(Hub::new()), config).expect("redis engine");
        // Chatwoot's keys too: they live in slots of their own.
        let on_cluster: Arc<dyn PresenceStore> = Arc::new(RedisPresence::new(
            engine.commands(),
            TTL_MS,
            Some(common::redis::unique_prefix(test)),
        ));
        (
            vec![
                ("memory", Arc::new(MemoryPresence::new(TTL_MS))),
                ("redis", redis),
                ("redis cluster", on_cluster),
            ],
            cluster,
        )
    }

    const AGENT: PrincipalId = PrincipalId {
        account: 1,
        contact: false,
        id: 7,
    };

    #[tokio::test]
    async fn online_with_the_first_node_offline_when_the_last_leaves() {
        let (all, _cluster) = stores("presence-nodes").await;
        for (name, store) in all {
            let t = 1_000_000;
            assert!(store.mark_online(AGENT, "n1", t).await.unwrap(), "{name}");
            assert!(
                !store.mark_online(AGENT, "n2", t).await.unwrap(),
                "{name}: already online"
            );
            assert!(
                !store.mark_offline(AGENT, "n1", t + 10).await.unwrap(),
                "{name}: n2 still holds"
            );
            assert!(store.mark_offline(AGENT, "n2", t + 20).await.unwrap(), "{name}");
            let entries = store.entries(1, &[AGENT], t + 30).await.unwrap();
            assert!(!entries[0].1.online, "{name}");
        }
    }

    #[tokio::test]
    async fn entries_of_a_node_that_stops_refreshing_are_reaped_after_the_ttl() {
        let (all, _cluster) = stores("presence-reap").await;
        for (name, store) in all {
            // Real clocks: Redis compares with the times given, so use now.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            store.mark_online(AGENT, "dead", t).await.unwrap();
            assert!(
                store.reap(&[1], t + TTL_MS / 2).await.unwrap().is_empty(),
                "{name}: not yet"
            );
            assert_eq!(
                store.reap(&[1], t + TTL_MS + 1).await.unwrap(),
                vec![AGENT],
                "{name}"
            );
            assert!(
                store.reap(&[1], t + TTL_MS + 2).await.unwrap().is_empty(),
                "{name}: once"
            );
        }
    }

    #[tokio::test]
    async fn availability_is_stored_and_effective_only_while_online() {
        let (all, _cluster) = stores("presence-avail").await;
        for (name, store) in all {
            let t = 1_000_000;
            assert!(
                store
                    .set_availability(1, 7, pb::Availability::Busy)
                    .await
                    .unwrap(),
                "{name}"
            );
            assert!(
                !store
                    .set_availability(1, 7, pb::Availability::Busy)
                    .await
                    .unwrap(),
                "{name}: unchanged"
            );
            let offline = store.entries(1, &[AGENT], t).await.unwrap();
            assert_eq!(
                offline[0].1.availability,
                pb::Availability::Offline as i32,
                "{name}"
            );
            store.mark_online(AGENT, "n1", t).await.unwrap();
            store.touch_seen(AGENT, t + 5).await.unwrap();
            let online = store.entries(1, &[AGENT], t).await.unwrap();
            assert_eq!(online[0].1.availability, pb::Availability::Busy as i32, "{name}");
            assert_eq!(online[0].1.last_seen_at_ms, (t + 5) as i64, "{name}");
            let snapshot = store.snapshot(1, t).await.unwrap();
            assert_eq!(snapshot.users.len(), 1, "{name}");
        }
    }
}
