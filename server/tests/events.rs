//! Domain events end to end: a backend publishes each event once, over HTTP or by writing
//! to the Redis Stream, and the routing listener brings it to exactly the right clients,
//! over both transports.

mod common;

use std::time::Duration;

use common::redis::{SHARED_REDIS, unique_prefix};
use common::*;
use rtgate_client::{ClientEvent, TransportPreference};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

/// A domain event in the JSON mapping, as a Rails backend writes it.
fn message_created(id: &str, private: bool, content: &str) -> Value {
    message_created_event(id, private, content)
}

/// The next room event's (room, name, content), presence left out.
async fn next_message(events: &mut UnboundedReceiver<ClientEvent>) -> (String, String, String) {
    loop {
        if let ClientEvent::Event { room, event, .. } = next(events).await
            && event.name != "presence.update"
        {
            let data: Value = serde_json::from_str(&event.json).unwrap();
            assert_eq!(data["account_id"], 1, "account_id is always in the payload");
            return (
                room.to_string(),
                event.name,
                data["content"].as_str().unwrap_or("").to_string(),
            );
        }
    }
}

async fn nothing_more(events: &mut UnboundedReceiver<ClientEvent>) {
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(ClientEvent::Event { event, .. }) = events.recv().await
                && event.name != "presence.update"
            {
                return event;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "unexpected {quiet:?}");
}

#[tokio::test]
async fn events_posted_once_reach_the_inbox_agents_and_the_contact_but_notes_only_the_agents() {
    let t = TestGateway::start().await;
    for (n, prefer) in TRANSPORTS.into_iter().enumerate() {
        let (agent, mut agent_events) = t.client(prefer, &token("agent", 7, 1, &[3])).await;
        let (outsider, mut outsider_events) = t.client(prefer, &token("agent", 8, 1, &[4])).await;
        let (contact, mut contact_events) = t.client(prefer, &token("contact", 501, 1, &[])).await;
        agent.subscribe("inbox:3", None).await.unwrap();
        outsider.subscribe("inbox:4", None).await.unwrap();
        let outcomes = t
            .post_events(vec![
                message_created(&format!("m-{n}"), false, "hello"),
                message_created(&format!("m-{n}"), false, "hello again"),
                message_created(&format!("note-{n}"), true, "internal"),
                json!({ "id": format!("x-{n}"), "name": "message.create", "accountId": "1" }),
                json!({ "id": format!("y-{n}"), "name": "message.created", "accountId": "1" }),
            ])
            .await;
        assert_eq!(outcomes[0].0, "STATUS_ACCEPTED");
        assert_eq!(outcomes[1].0, "STATUS_DUPLICATE", "the same id again");
        assert_eq!(outcomes[2].0, "STATUS_ACCEPTED");
        assert_eq!(outcomes[3].0, "STATUS_REJECTED");
        assert!(outcomes[3].1.contains("unknown event name"), "{outcomes:?}");
        assert_eq!(outcomes[4].0, "STATUS_REJECTED");
        assert!(outcomes[4].1.contains("needs"), "{outcomes:?}");

        assert_eq!(
            next_message(&mut agent_events).await,
            ("inbox:3".into(), "message.created".into(), "hello".into())
        );
        assert_eq!(next_message(&mut agent_events).await.2, "internal");
        assert_eq!(
            next_message(&mut contact_events).await,
            ("contact:501".into(), "message.created".into(), "hello".into())
        );
        nothing_more(&mut contact_events).await;
        nothing_more(&mut outsider_events).await;
        nothing_more(&mut agent_events).await;
        for c in [agent, outsider, contact] {
            c.close();
        }
    }
}

#[tokio::test]
async fn conversation_updates_older_than_the_last_routed_are_dropped() {
    let t = TestGateway::start().await;
    let (agent, mut events) = t
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[3]))
        .await;
    agent.subscribe("inbox:3", None).await.unwrap();
    let update = |id: &str, at: f64, content: &str| {
        json!({
            "id": id, "name": "conversation.updated", "accountId": "1",
            "conversation": { "displayId": "42", "inboxId": "3", "updatedAt": at },
            "payload": json!({ "content": content }).to_string(),
        })
    };
    let outcomes = t
        .post_events(vec![
            update("u1", 100.5, "new"),
            update("u0", 100.25, "old"),
            update("u2", 101.0, "newer"),
        ])
        .await;
    assert!(outcomes.iter().all(|o| o.0 == "STATUS_ACCEPTED"), "{outcomes:?}");
    assert_eq!(next_message(&mut events).await.2, "new");
    assert_eq!(next_message(&mut events).await.2, "newer");
    nothing_more(&mut events).await;
    agent.close();
}

async fn redis_gateway(prefix: &str) -> TestGateway {
    TestGateway::start_with(redis_config(SHARED_REDIS, prefix))
        .await
        .ready()
        .await
}

async fn xadd(stream: &str, field: &str, value: &[u8]) {
    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = ::redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(field)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn events_written_to_the_redis_stream_are_routed_and_a_poisonous_one_is_dead_lettered() {
    let prefix = unique_prefix("events-stream");
    let t = redis_gateway(&prefix).await;
    let stream = format!("{{{prefix}:events}}");
    let (agent, mut events) = t
        .client(TransportPreference::WebTransport, &token("agent", 7, 1, &[3]))
        .await;
    agent.subscribe("inbox:3", None).await.unwrap();

    // What a Rails after-commit hook would write: the JSON mapping in field `json`.
    let first = serde_json::to_vec(&message_created("s-1", false, "from the stream")).unwrap();
    xadd(&stream, "json", &first).await;
    assert_eq!(next_message(&mut events).await.2, "from the stream");

    // Garbage, then a good event: the garbage is dead-lettered, the stream keeps flowing.
    xadd(&stream, "json", b"{not json").await;
    xadd(
        &stream,
        "json",
        &serde_json::to_vec(&message_created("s-2", false, "still flowing")).unwrap(),
    )
    .await;
    // A retry of the first (same id) is dropped.
    xadd(&stream, "json", &first).await;
    xadd(
        &stream,
        "json",
        &serde_json::to_vec(&message_created("s-3", false, "last")).unwrap(),
    )
    .await;
    assert_eq!(next_message(&mut events).await.2, "still flowing");
    assert_eq!(next_message(&mut events).await.2, "last");
    nothing_more(&mut events).await;

    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let dead: ::redis::Value = ::redis::cmd("XRANGE")
        .arg(format!("{stream}:dead"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let text = format!("{dead:?}");
    assert!(text.contains("undecodable json"), "{text}");
    let ::redis::Value::Array(entries) = dead else {
        panic!("{text}")
    };
    assert_eq!(entries.len(), 1);
    // Everything was acknowledged: nothing pending in the group.
    let pending: ::redis::Value = ::redis::cmd("XPENDING")
        .arg(&stream)
        .arg("rtgate")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ::redis::Value::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(summary[0], ::redis::Value::Int(0), "{summary:?}");

    // HTTP ingest goes through the same stream and the same deduplication.
    let outcomes = t
        .post_events(vec![
            message_created("s-3", false, "dup"),
            message_created("h-1", false, "http"),
        ])
        .await;
    assert_eq!(outcomes[0].0, "STATUS_DUPLICATE");
    assert_eq!(outcomes[1].0, "STATUS_ACCEPTED");
    assert_eq!(next_message(&mut events).await.2, "http");
    agent.close();
}

#[tokio::test]
async fn a_node_restarted_under_the_same_name_handles_what_it_had_read_and_not_finished() {
    use rtgate_server::engine::RedisEngine;
    use rtgate_server::events::queue::{EventQueue, RedisQueue, RedisQueueConfig};
    let prefix = unique_prefix("events-restart");
    let engine = ready_engine(&prefix).await;
    let queue = |engine: &RedisEngine| {
        RedisQueue::new(
            engine.commands(),
            RedisQueueConfig {
                stream: format!("{{{prefix}:events}}"),
                consumer: "same-name".into(),
                dedup_window: Duration::from_secs(60),
                max_len: 10_000,
                lease: Duration::from_secs(10),
                max_event_size: 128 * 1024,
            },
        )
    };
    let event = |id: &str| rtgate_protocol::pb::DomainEvent {
        id: id.into(),
        name: "contact.created".into(),
        account_id: 1,
        ..Default::default()
    };
    let first = queue(&engine);
    first.append(&[event("r-1"), event("r-2")]).await.unwrap();
    let read = first.read(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(read.len(), 2);
    first.ack(std::slice::from_ref(&read[0].id)).await.unwrap();
    // The process dies here; the same node comes back within its lease.
    drop(first);
    let again = queue(&engine);
    let read = again.read(10, Duration::from_millis(100)).await.unwrap();
    let ids: Vec<_> = read
        .iter()
        .map(|e| e.event.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["r-2"], "the entry read and not acknowledged comes back");
    again.ack(std::slice::from_ref(&read[0].id)).await.unwrap();
    assert!(
        again
            .read(10, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_event_stream_without_a_hash_tag_is_refused_at_start() {
    let mut config = redis_config(SHARED_REDIS, &unique_prefix("events-tag"));
    config.events_stream = Some("plain-events".into());
    let certs = tempfile::tempdir().unwrap();
    config.cert_dir = certs.path().to_path_buf();
    let err = rtgate_server::Gateway::start(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("hash tag"), "{err}");
}

fn queue_on(
    engine: &rtgate_server::engine::RedisEngine,
    prefix: &str,
    consumer: &str,
    lease: Duration,
) -> rtgate_server::events::queue::RedisQueue {
    rtgate_server::events::queue::RedisQueue::new(
        engine.commands(),
        rtgate_server::events::queue::RedisQueueConfig {
            stream: format!("{{{prefix}:events}}"),
            consumer: consumer.into(),
            dedup_window: Duration::from_secs(60),
            max_len: 10_000,
            lease,
            max_event_size: 128 * 1024,
        },
    )
}

async fn ready_engine(prefix: &str) -> rtgate_server::engine::RedisEngine {
    use rtgate_server::engine::{Engine, RedisConfig, RedisEngine};
    let engine = RedisEngine::new(
        std::sync::Arc::new(rtgate_server::hub::Hub::new()),
        RedisConfig {
            prefix: prefix.into(),
            ..RedisConfig::new(SHARED_REDIS)
        },
    )
    .unwrap();
    for _ in 0..200 {
        engine.maintain().await;
        if engine.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine
}

fn contact_event(id: &str) -> rtgate_protocol::pb::DomainEvent {
    rtgate_protocol::pb::DomainEvent {
        id: id.into(),
        name: "contact.created".into(),
        account_id: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_reader_that_lost_its_lease_lets_go_and_the_new_one_claims_its_entries() {
    use rtgate_server::events::queue::EventQueue;
    let prefix = unique_prefix("events-lease");
    let engine = ready_engine(&prefix).await;
    let lease = Duration::from_millis(300);
    let a = queue_on(&engine, &prefix, "a", lease);
    let b = queue_on(&engine, &prefix, "b", lease);
    a.append(&[contact_event("l-1")]).await.unwrap();
    let read = a.read(10, Duration::from_millis(50)).await.unwrap();
    assert_eq!(read.len(), 1);
    assert!(a.holds());
    assert!(
        b.read(10, Duration::from_millis(50)).await.unwrap().is_empty(),
        "a holds the stream"
    );
    assert!(!b.holds());
    // a stalls past its lease; b takes over and claims what a left unacknowledged.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let claimed = b.read(10, Duration::from_millis(50)).await.unwrap();
    let ids: Vec<_> = claimed
        .iter()
        .map(|e| e.event.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["l-1"]);
    assert!(b.holds());
    // a finds out at its next renewal and stops handling.
    tokio::time::sleep(lease / 3 + Duration::from_millis(20)).await;
    a.ack(&[read[0].id.clone()]).await.unwrap();
    assert!(!a.holds(), "a let go");
}

#[tokio::test]
async fn a_stream_whose_group_vanished_is_read_again_once_recreated() {
    use rtgate_server::events::queue::EventQueue;
    let prefix = unique_prefix("events-nogroup");
    let engine = ready_engine(&prefix).await;
    let q = queue_on(&engine, &prefix, "n", Duration::from_secs(10));
    q.append(&[contact_event("g-1")]).await.unwrap();
    let first = q.read(10, Duration::from_millis(50)).await.unwrap();
    q.ack(&[first[0].id.clone()]).await.unwrap();
    // Redis loses the stream (a flush, a restart without persistence).
    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = ::redis::cmd("DEL")
        .arg(format!("{{{prefix}:events}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    q.append(&[contact_event("g-2")]).await.unwrap();
    // The first read finds no group and says so; the next recreates it and reads.
    let mut got = Vec::new();
    for _ in 0..5 {
        if let Ok(entries) = q.read(10, Duration::from_millis(50)).await {
            got.extend(entries);
        }
        if !got.is_empty() {
            break;
        }
    }
    let ids: Vec<_> = got
        .iter()
        .map(|e| e.event.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["g-2"]);
}
