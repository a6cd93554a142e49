//! Scenarios on the hand-clocked in-memory harness (`common/harness.rs`): real client
//! cores against the gateway's real conductor and engine, time stepped by hand. Each one
//! is deterministic and runs in milliseconds; none waits for real time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::harness::{Harness, Network, Setup};
use prost::Message as _;
use rtgate_client::{ClientEvent, TransportKind};
use rtgate_protocol::{DisconnectCode, RoomName, pb};
use rtgate_server::engine::{
    Engine, EngineError, HistoryLimits, MemoryEngine, Published, RoomInfo, SubscribeOutcome,
};
use rtgate_server::hub::{Hub, ReplayCursor, ReplayPage, Subscriber};
use rtgate_server::ids::{ConnectionId, StreamPos};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

fn offsets(events: &[(String, u64, String)], room: &str) -> Vec<u64> {
    events.iter().filter(|e| e.0 == room).map(|e| e.1).collect()
}

fn payloads(events: &[(String, u64, String)], room: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.0 == room)
        .map(|e| e.2.clone())
        .collect()
}

/// Whether the events include `Subscribed` for `room` with these flags.
fn subscribed(events: &[ClientEvent], room: &str) -> Option<(bool, bool, u32)> {
    events.iter().find_map(|e| match e {
        ClientEvent::Subscribed {
            room: r,
            resumed,
            recovered,
            replayed,
        } if r.as_str() == room => Some((*resumed, *recovered, *replayed)),
        _ => None,
    })
}

/// An agent (user 1 of account 7, inbox 3) joined to conversation 5 by subscription token.
async fn agent_in_conversation(h: &mut Harness) -> usize {
    let token = h.token_with("agent", 1, 7, HOUR, json!({ "inboxes": [3] }));
    let a = h.peer(&token).await;
    let sub = h.sub_token("user:1", "conversation:5", HOUR);
    h.client(a).subscribe("conversation:5", Some(&sub)).unwrap();
    h.settle().await;
    assert!(h.client(a).is_live("conversation:5"));
    h.events(a);
    a
}

#[tokio::test]
async fn an_agent_is_welcomed_with_its_rooms_and_receives_their_events_in_order() {
    let mut h = Harness::new();
    let token = h.token("agent", 1, 7, HOUR);
    let a = h.peer(&token).await;
    assert!(h.client(a).is_ready());
    let events = h.events(a);
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Connected(_))),
        "{events:?}"
    );
    assert_eq!(subscribed(&events, "account:7"), Some((false, false, 0)));
    assert_eq!(subscribed(&events, "user:1"), Some((false, false, 0)));
    h.publish("account:7", "1").await;
    h.publish("account:7", "2").await;
    assert_eq!(
        h.room_events(a),
        vec![
            ("account:7".into(), 1, "1".into()),
            ("account:7".into(), 2, "2".into())
        ]
    );
}

#[tokio::test]
async fn events_missed_while_the_link_was_down_arrive_once_and_in_order_after_the_reconnect() {
    let mut h = Harness::new();
    let a = agent_in_conversation(&mut h).await;
    for n in 1..=3 {
        h.publish("conversation:5", &n.to_string()).await;
    }
    h.drop_link(a).await;
    assert!(!h.is_linked(a));
    for n in 4..=6 {
        h.publish("conversation:5", &n.to_string()).await;
    }
    // The connector waits its backoff (at most the base delay for a first retry), then
    // the session joins every room again from its position.
    h.advance(Duration::from_millis(300)).await;
    assert!(h.client(a).is_ready(), "reconnected within the first backoff");
    h.publish("conversation:5", "7").await;
    let events = h.events(a);
    assert_eq!(subscribed(&events, "conversation:5"), Some((true, true, 3)));
    let room_events: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Event { room, offset, event } if event.name != "presence.update" => {
                Some((room.to_string(), *offset, event.json.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(offsets(&room_events, "conversation:5"), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(
        payloads(&room_events, "conversation:5"),
        ["1", "2", "3", "4", "5", "6", "7"]
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::RecoveryFailed { .. })),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_client_that_was_away_longer_than_the_history_is_told_it_cannot_recover() {
    let setup = Setup {
        history: HistoryLimits {
            max_events: 5,
            max_age: HOUR,
        },
        ..Setup::default()
    };
    let mut h = Harness::with(setup);
    let a = agent_in_conversation(&mut h).await;
    h.publish("conversation:5", "1").await;
    h.drop_link(a).await;
    for n in 2..=12 {
        h.publish("conversation:5", &n.to_string()).await;
    }
    h.advance(Duration::from_millis(300)).await;
    assert!(h.client(a).is_ready());
    let events = h.events(a);
    assert_eq!(subscribed(&events, "conversation:5"), Some((true, false, 0)));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::RecoveryFailed { room } if room.as_str() == "conversation:5")),
        "{events:?}"
    );
    // Live delivery goes on from the top, and the next reconnect resumes from there.
    h.publish("conversation:5", "13").await;
    let live = h.room_events(a);
    assert_eq!(offsets(&live, "conversation:5"), vec![13]);
    h.drop_link(a).await;
    h.publish("conversation:5", "14").await;
    h.advance(Duration::from_millis(300)).await;
    let events = h.events(a);
    assert_eq!(subscribed(&events, "conversation:5"), Some((true, true, 1)));
}

/// The embedded engine, with events published by "someone else" at the moment a join is
/// most fragile: right before and right after the subscriber is registered, before it is
/// activated.
struct Interleaving {
    inner: MemoryEngine,
    room: RoomName,
    /// Events to publish on each side of the next subscribe to `room`.
    on_subscribe: AtomicUsize,
    published: AtomicUsize,
}

impl Interleaving {
    async fn publish_some(&self, n: usize) {
        for _ in 0..n {
            let k = self.published.fetch_add(1, Ordering::Relaxed) + 1;
            let event = pb::Event {
                name: "message.created".into(),
                json: format!("racing-{k}"),
                ..Default::default()
            };
            self.inner
                .publish(&self.room, &event.encode_to_vec(), None)
                .await
                .unwrap();
        }
    }
}

#[async_trait]
impl Engine for Interleaving {
    async fn publish(
        &self,
        room: &RoomName,
        event: &[u8],
        key: Option<&str>,
    ) -> Result<Published, EngineError> {
        self.inner.publish(room, event, key).await
    }

    async fn subscribe(
        &self,
        sub: Arc<Subscriber>,
        since: Option<StreamPos>,
    ) -> Result<SubscribeOutcome, EngineError> {
        let n = if sub.room() == &self.room {
            self.on_subscribe.swap(0, Ordering::Relaxed)
        } else {
            0
        };
        self.publish_some(n).await;
        let outcome = self.inner.subscribe(sub, since).await;
        // Registered but not yet activated: these must wait and follow the replay.
        self.publish_some(n).await;
        outcome
    }

    async fn replay_page(
        &self,
        room: &RoomName,
        cursor: &ReplayCursor,
        max_bytes: usize,
    ) -> Result<ReplayPage, EngineError> {
        self.inner.replay_page(room, cursor, max_bytes).await
    }

    async fn unsubscribe(&self, room: &RoomName, conn: ConnectionId) {
        self.inner.unsubscribe(room, conn).await
    }

    async fn publish_ephemeral(
        &self,
        room: &RoomName,
        frame: Bytes,
        exclude: Option<&str>,
        private: bool,
    ) -> Result<(), EngineError> {
        self.inner.publish_ephemeral(room, frame, exclude, private).await
    }

    async fn room_info(&self, room: &RoomName) -> Result<RoomInfo, EngineError> {
        self.inner.room_info(room).await
    }

    fn hub(&self) -> &Arc<Hub> {
        self.inner.hub()
    }
}

#[tokio::test]
async fn events_published_while_a_reconnecting_client_joins_are_delivered_once_in_order() {
    let setup = Setup {
        // A small send budget: the replay goes out at the client's pace, in steps.
        limits: rtgate_server::node::ConnectionLimits {
            send_queue_bytes: 4096,
            ..Default::default()
        },
        session: rtgate_server::session::SessionConfig {
            max_event_size: 1024,
            ..Default::default()
        },
        ..Setup::default()
    };
    let engine = Arc::new(Interleaving {
        inner: MemoryEngine::new(Arc::new(Hub::new()), setup.history),
        room: RoomName::parse("conversation:5").unwrap(),
        on_subscribe: AtomicUsize::new(0),
        published: AtomicUsize::new(0),
    });
    let mut h = Harness::on(setup, engine.clone());
    let a = agent_in_conversation(&mut h).await;
    h.publish("conversation:5", "first").await;
    h.drop_link(a).await;
    // Missed events enough for a replay several times the replay mark (2 KiB).
    let big = "x".repeat(200);
    for _ in 0..60 {
        h.publish("conversation:5", &big).await;
    }
    // Events race the join itself, and more arrive while the replay waits for the client
    // to read (it stops reading a few events into the replay until they are in).
    engine.on_subscribe.store(5, Ordering::Relaxed);
    h.read_only(a, 10);
    h.advance(Duration::from_millis(300)).await;
    assert!(h.queued(a) > 0, "the replay waits for the client");
    for n in 0..5 {
        h.publish("conversation:5", &format!("live-{n}")).await;
    }
    let mut got = h.room_events(a);
    assert!(
        got.len() > 1 && got.len() < 20,
        "mid-replay: {} events so far",
        got.len()
    );
    h.set_reading(a, true);
    h.settle().await;
    assert!(h.client(a).is_ready());
    h.publish("conversation:5", "last").await;
    got.extend(h.room_events(a));
    let racing = engine.published.load(Ordering::Relaxed) as u64;
    assert_eq!(racing, 10);
    let top = 1 + 60 + racing + 5 + 1;
    assert_eq!(
        offsets(&got, "conversation:5"),
        (1..=top).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    let texts = payloads(&got, "conversation:5");
    assert_eq!(texts[0], "first");
    assert_eq!(
        texts[61..71],
        (1..=10).map(|k| format!("racing-{k}")).collect::<Vec<_>>()
    );
    assert_eq!(
        texts[71..76],
        (0..5).map(|n| format!("live-{n}")).collect::<Vec<_>>()
    );
    assert_eq!(texts.last().unwrap(), "last");
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_after_the_grace_unless_refreshed() {
    let mut h = Harness::new();
    let token = h.token("agent", 1, 7, Duration::from_secs(60));
    let a = h.peer(&token).await;
    // exp (60 s) + leeway (5 s) + grace (30 s): still open just before, closed at it.
    h.set_reading(a, true);
    h.advance(Duration::from_secs(94)).await;
    assert!(h.is_linked(a), "open until the grace has passed");
    h.advance(Duration::from_secs(2)).await;
    assert_eq!(h.closes(a).first(), Some(&DisconnectCode::TokenExpired));

    // Refreshed in time, the connection outlives the first token.
    let mut h = Harness::new();
    let token = h.token("agent", 1, 7, Duration::from_secs(60));
    let b = h.peer(&token).await;
    h.advance(Duration::from_secs(50)).await;
    let fresh = h.token("agent", 1, 7, Duration::from_secs(600));
    let id = h.client(b).refresh(&fresh).unwrap();
    h.settle().await;
    let replied = h.events(b).into_iter().any(
        |e| matches!(e, ClientEvent::Reply { id: i, result: Ok(ref r) } if i == id && r.refreshed.is_some()),
    );
    assert!(replied, "refresh answered");
    h.advance(Duration::from_secs(120)).await;
    assert!(h.is_linked(b) && h.closes(b).is_empty(), "{:?}", h.closes(b));
}

#[tokio::test]
async fn the_client_refreshes_its_token_by_itself_before_it_expires() {
    let mut h = Harness::new();
    let token = h.token("agent", 1, 7, Duration::from_secs(120));
    let a = h.peer(&token).await;
    h.events(a);
    // The provider hands out a longer token from now on.
    let fresh = h.token("agent", 1, 7, Duration::from_secs(3600));
    h.set_token(a, &fresh);
    // Asked for a margin (60 s) before expiry, and refreshed on the live connection.
    h.advance(Duration::from_secs(59)).await;
    assert!(!h.events(a).contains(&ClientEvent::TokenNeeded));
    h.advance(Duration::from_secs(2)).await;
    let events = h.events(a);
    assert!(events.contains(&ClientEvent::TokenNeeded), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Reply { result: Ok(r), .. } if r.refreshed.is_some()))
    );
    // Long past the first token's deadline, the same connection lives on.
    h.advance(Duration::from_secs(600)).await;
    assert!(h.is_linked(a) && h.closes(a).is_empty(), "{:?}", h.closes(a));
    assert_eq!(h.opened(a).len(), 1, "never reconnected");
}

#[tokio::test]
async fn a_refresh_with_narrower_claims_ends_the_rooms_it_no_longer_grants() {
    let mut h = Harness::new();
    let token = h.token_with("agent", 1, 7, HOUR, json!({ "inboxes": [3, 4] }));
    let a = h.peer(&token).await;
    for room in ["inbox:3", "inbox:4"] {
        h.client(a).subscribe(room, None).unwrap();
    }
    h.settle().await;
    assert!(h.client(a).is_live("inbox:3") && h.client(a).is_live("inbox:4"));
    h.events(a);
    let narrower = h.token_with("agent", 1, 7, HOUR, json!({ "inboxes": [4] }));
    h.client(a).refresh(&narrower).unwrap();
    h.settle().await;
    let events = h.events(a);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::SubscribeFailed { room, .. } if room.as_str() == "inbox:3")),
        "{events:?}"
    );
    assert!(!h.client(a).is_live("inbox:3") && h.client(a).is_live("inbox:4"));
    h.publish("inbox:3", "hidden").await;
    h.publish("inbox:4", "seen").await;
    let got = h.room_events(a);
    assert_eq!(payloads(&got, "inbox:4"), ["seen"]);
    assert!(payloads(&got, "inbox:3").is_empty());
    // A token for someone else is refused, and the connection keeps its first identity.
    let other = h.token("agent", 2, 7, HOUR);
    let id = h.client(a).refresh(&other).unwrap();
    h.settle().await;
    let refused = h
        .events(a)
        .into_iter()
        .any(|e| matches!(e, ClientEvent::Reply { id: i, result: Err(_) } if i == id));
    assert!(refused);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_as_slow_and_recovers_after() {
    let setup = Setup {
        limits: rtgate_server::node::ConnectionLimits {
            send_queue_bytes: 16 * 1024,
            ..Default::default()
        },
        session: rtgate_server::session::SessionConfig {
            max_event_size: 4096,
            ..Default::default()
        },
        ..Setup::default()
    };
    let mut h = Harness::with(setup);
    let a = agent_in_conversation(&mut h).await;
    h.set_reading(a, false);
    let big = "y".repeat(1000);
    for _ in 0..20 {
        h.publish("conversation:5", &big).await;
    }
    assert_eq!(h.closes(a), [DisconnectCode::SlowConsumer]);
    assert!(!h.is_linked(a));
    // Reading again, it reconnects and gets every event from history.
    h.set_reading(a, true);
    h.advance(Duration::from_millis(300)).await;
    assert!(h.client(a).is_ready());
    let got = h.room_events(a);
    assert_eq!(offsets(&got, "conversation:5"), (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_typing_indicator_left_on_is_turned_off_by_the_gateway() {
    let mut h = Harness::new();
    let a = agent_in_conversation(&mut h).await;
    let token = h.token("agent", 2, 7, HOUR);
    let b = h.peer(&token).await;
    let sub = h.sub_token("user:2", "conversation:5", HOUR);
    h.client(b).subscribe("conversation:5", Some(&sub)).unwrap();
    h.settle().await;
    h.events(b);
    let on = h.client(a).typing_frame("conversation:5", true, false).unwrap();
    h.send(a, on).await;
    let typing = |events: Vec<ClientEvent>| -> Vec<String> {
        events
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Ephemeral { event, .. } => Some(event.name),
                _ => None,
            })
            .collect()
    };
    assert_eq!(typing(h.events(b)), ["conversation.typing_on"]);
    // Not refreshed: off at the typing timeout (6 s), not before.
    h.advance(Duration::from_millis(5900)).await;
    assert!(typing(h.events(b)).is_empty());
    h.advance(Duration::from_millis(200)).await;
    assert_eq!(typing(h.events(b)), ["conversation.typing_off"]);
    // The typer never hears its own indicator.
    assert!(typing(h.events(a)).is_empty());
}

#[tokio::test]
async fn a_network_without_udp_falls_back_to_websocket_and_stays_there_on_reconnects() {
    let mut h = Harness::new();
    let token = h.token("agent", 1, 7, HOUR);
    let network = Network {
        webtransport: false,
        websocket: true,
        http: true,
    };
    let a = h.peer_on(&token, network, 11).await;
    assert!(!h.client(a).is_ready(), "WebTransport stalls first");
    h.advance(Duration::from_millis(1999)).await;
    assert!(!h.client(a).is_ready());
    h.advance(Duration::from_millis(1)).await;
    assert!(h.client(a).is_ready(), "WebSocket after the connect timeout");
    assert_eq!(h.opened(a), [TransportKind::WebSocket]);
    h.drop_link(a).await;
    h.advance(Duration::from_millis(300)).await;
    assert!(h.client(a).is_ready());
    let transports: Vec<_> = h.attempts(a).iter().map(|(_, t)| *t).collect();
    assert_eq!(
        transports,
        [
            TransportKind::WebTransport,
            TransportKind::WebSocket,
            TransportKind::WebSocket
        ],
        "the reconnect goes straight to WebSocket"
    );
}

/// The connector and the session over the harness's in-memory links (the HTTP transport
/// itself is exercised in httpstream.rs and in Chromium).
#[tokio::test]
async fn the_connector_falls_back_to_http_where_nothing_else_gets_through_and_moves_back_up() {
    let mut setup = Setup::default();
    setup.connector.enabled = [true, true, true];
    setup.connector.fallback_cooldown = Duration::from_secs(60);
    let mut h = Harness::with(setup);
    let token = h.token("agent", 1, 7, HOUR);
    let http_only = Network {
        webtransport: false,
        websocket: false,
        http: true,
    };
    let a = h.peer_on(&token, http_only, 5).await;
    // WebTransport stalls for the connect timeout, then WebSocket, then HTTP at once.
    h.advance(Duration::from_secs(4)).await;
    assert!(h.client(a).is_ready(), "on HTTP after two connect timeouts");
    assert_eq!(h.opened(a), [TransportKind::Http]);
    h.client(a).subscribe("user:1", None).unwrap();
    h.settle().await;
    let first = h.publish("user:1", "\"one\"").await;
    assert_eq!(
        h.room_events(a),
        [("user:1".to_string(), first, "\"one\"".to_string())]
    );

    // WebSocket gets through again: once its cooldown has passed it is probed beside the
    // HTTP connection, which the session leaves for it, recovering what it missed.
    h.set_network(
        a,
        Network {
            webtransport: false,
            websocket: true,
            http: true,
        },
    );
    h.advance(Duration::from_secs(58)).await;
    assert_eq!(h.opened(a), [TransportKind::Http], "nothing before the cooldown");
    let second = h.publish("user:1", "\"two\"").await;
    // WebTransport's cooldown ends first: its probe stalls, then WebSocket's connects.
    h.advance(Duration::from_secs(6)).await;
    assert_eq!(h.opened(a), [TransportKind::Http, TransportKind::WebSocket]);
    assert!(h.client(a).is_ready());
    let third = h.publish("user:1", "\"three\"").await;
    let offsets: Vec<u64> = h.room_events(a).into_iter().map(|(_, o, _)| o).collect();
    assert_eq!(offsets, [second, third], "each event once, none lost in the move");
    assert_eq!(h.node.connection_count(), 1, "the HTTP connection is gone");
}

#[tokio::test]
async fn reconnects_back_off_exponentially_and_honour_the_gateways_advice() {
    let mut h = Harness::new();
    let token = h.token("agent", 1, 7, HOUR);
    let a = h.peer(&token).await;
    // The network goes away entirely: every attempt stalls and fails.
    h.set_network(
        a,
        Network {
            webtransport: false,
            websocket: false,
            http: false,
        },
    );
    h.drop_link(a).await;
    h.advance(Duration::from_secs(120)).await;
    let attempts: Vec<_> = h.attempts(a)[1..].to_vec();
    // WebTransport first, then WebSocket only (WebTransport just failed on this network);
    // each attempt stalls for the connect timeout (2 s), then the client waits at most
    // min(20 s, 250 ms·2ⁿ) before the n-th retry.
    assert_eq!(attempts[0].1, TransportKind::WebTransport);
    assert!(attempts[1..].iter().all(|(_, t)| *t == TransportKind::WebSocket));
    let delays: Vec<Duration> = attempts
        .windows(2)
        .skip(1)
        .map(|w| w[1].0 - w[0].0 - Duration::from_secs(2))
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    for (n, delay) in delays.iter().enumerate() {
        let ceiling = Duration::from_millis(250 << (n + 1)).min(Duration::from_secs(20));
        assert!(*delay <= ceiling, "retry {n}: {delay:?} > {ceiling:?}");
    }
    // Without backoff, 120 s of 2 s stalls would be 60 attempts.
    assert!(attempts.len() < 20, "{} attempts", attempts.len());
    // Back online: the next attempt connects; then a shutdown's advice (500 ms) is the
    // least wait before the next one.
    h.set_network(a, Network::OPEN);
    h.advance(Duration::from_secs(30)).await;
    assert!(h.client(a).is_ready());
    let before = h.attempts(a).len();
    h.shutdown().await;
    assert_eq!(h.closes(a).last(), Some(&DisconnectCode::Shutdown));
    h.advance(Duration::from_millis(499)).await;
    assert_eq!(h.attempts(a).len(), before, "not before the advice");
    // Within the advice plus half its jitter ceiling: the next attempt comes.
    h.advance(Duration::from_millis(500)).await;
    assert!(h.attempts(a).len() > before, "attempts after the advice");
}

#[tokio::test]
async fn a_kicked_client_is_told_why_and_does_not_come_back() {
    let mut h = Harness::new();
    let token = h.token("agent", 1, 7, HOUR);
    let a = h.peer(&token).await;
    let other = h.token("agent", 2, 7, HOUR);
    let b = h.peer(&other).await;
    h.events(a);
    assert_eq!(h.kick(false, 1, "suspended").await, 1);
    assert_eq!(h.closes(a), [DisconnectCode::Kicked]);
    let events = h.events(a);
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Disconnected { code: Some(c), reconnect: None, .. } if *c == DisconnectCode::Kicked.code())),
        "{events:?}"
    );
    h.advance(Duration::from_secs(60)).await;
    assert_eq!(h.opened(a).len(), 1, "no reconnect after a kick");
    assert!(h.is_linked(b) && h.closes(b).is_empty(), "the other user stays");
}
