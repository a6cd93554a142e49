//! Several nodes on one Redis act as one gateway: cross-node delivery in order, moving
//! between nodes without loss, Redis restarts and outages never causing silent gaps.

mod common;

use std::time::Duration;

use common::raw::{RawWs, hello};
use common::redis::{PrivateRedis, SHARED_REDIS, free_tcp_port, free_udp_port, unique_prefix};
use common::*;
use rtgate_client::{Client, ClientEvent, TransportPreference};
use rtgate_protocol::{DisconnectCode, pb};

async fn node(url: &str, prefix: &str) -> TestGateway {
    TestGateway::start_with(redis_config(url, prefix))
        .await
        .ready()
        .await
}

#[tokio::test]
async fn events_published_on_one_node_reach_clients_on_another_in_order() {
    let prefix = unique_prefix("cross");
    let a = node(SHARED_REDIS, &prefix).await;
    let b = node(SHARED_REDIS, &prefix).await;
    for prefer in TRANSPORTS {
        let (client, mut events) = a.client(prefer, &token("agent", 7, 1, &[3])).await;
        client.subscribe("inbox:3", None).await.unwrap();
        let (client_b, mut events_b) = b.client(prefer, &token("agent", 8, 1, &[3])).await;
        client_b.subscribe("inbox:3", None).await.unwrap();
        let mut offsets = Vec::new();
        for n in 0..50 {
            let via = if n % 2 == 0 { &b } else { &a };
            offsets.push(via.publish(&["inbox:3"], "message.created", &n.to_string()).await[0]);
        }
        for events in [&mut events, &mut events_b] {
            for (n, offset) in offsets.iter().enumerate() {
                assert_eq!(
                    next_room_event(events).await,
                    ("inbox:3".into(), *offset, n.to_string())
                );
            }
        }
        client.close();
        client_b.close();
    }
}

#[tokio::test]
async fn a_client_moving_to_another_node_recovers_everything_published_meanwhile() {
    let prefix = unique_prefix("move");
    let a = node(SHARED_REDIS, &prefix).await;
    let b = node(SHARED_REDIS, &prefix).await;
    for prefer in TRANSPORTS {
        let room = "public:1:moving";
        let (client, mut events) = a.client(prefer, &token("agent", 7, 1, &[])).await;
        client.subscribe(room, None).await.unwrap();
        let first = b.publish(&[room], "client.n", "first").await[0];
        let (_, offset, _) = next_room_event(&mut events).await;
        assert_eq!(offset, first);
        let info: serde_json::Value = b.get_json(&format!("/api/v1/rooms/{room}")).await;
        let epoch = info["epoch"].as_str().unwrap().to_string();
        client.close();

        for n in 0..30 {
            a.publish(&[room], "client.n", &n.to_string()).await;
        }
        let (client, mut events) = b.client(prefer, &token("agent", 7, 1, &[])).await;
        let since = pb::StreamPosition { epoch, offset };
        assert_eq!(client.subscribe_from(room, None, since).await, Ok((true, 30)));
        b.publish(&[room], "client.n", "live").await;
        for n in 0..30 {
            assert_eq!(
                next_room_event(&mut events).await,
                (room.into(), offset + 1 + n, n.to_string())
            );
        }
        assert_eq!(next_room_event(&mut events).await.2, "live");
        client.close();
    }
}

#[tokio::test]
async fn a_restarted_node_is_rejoined_automatically_with_nothing_lost() {
    let prefix = unique_prefix("restart");
    let other = node(SHARED_REDIS, &prefix).await;
    for prefer in TRANSPORTS {
        let (wt_port, http_port) = (free_udp_port(), free_tcp_port());
        let mut config = redis_config(SHARED_REDIS, &prefix);
        config.wt_listen = Some(format!("127.0.0.1:{wt_port}").parse().unwrap());
        config.http_listen = Some(format!("127.0.0.1:{http_port}").parse().unwrap());
        let cert_dir = tempfile::tempdir().unwrap();
        config.cert_dir = cert_dir.path().to_path_buf();
        let first = rtgate_server::Gateway::start(config.clone()).await.unwrap();
        let mut cc = rtgate_client::ClientConfig::new(
            format!("https://127.0.0.1:{wt_port}/wt"),
            format!("ws://127.0.0.1:{http_port}/ws"),
            rtgate_client::fixed_token(token("agent", 7, 1, &[])),
        );
        cc.cert_sha256 = Some(hex::decode(&first.cert_sha256).unwrap().try_into().unwrap());
        cc.prefer = prefer;
        cc.backoff.base = Duration::from_millis(50);
        cc.backoff.max = Duration::from_millis(300);
        let (client, mut events) = Client::connect(cc);
        client.connected().await.unwrap();
        client.subscribe("public:1:restart", None).await.unwrap();
        other.publish(&["public:1:restart"], "client.n", "0").await;
        assert_eq!(next_room_event(&mut events).await.2, "0");

        first.shutdown(Duration::from_secs(5)).await;
        for n in 1..=20 {
            other
                .publish(&["public:1:restart"], "client.n", &n.to_string())
                .await;
        }
        // The same node comes back on the same ports (and the same certificate).
        let second = rtgate_server::Gateway::start(config).await.unwrap();
        for n in 1..=20 {
            let (room, _, json) = next_room_event(&mut events).await;
            assert_eq!(
                (room.as_str(), json),
                ("public:1:restart", n.to_string()),
                "{prefer:?}"
            );
        }
        other.publish(&["public:1:restart"], "client.n", "21").await;
        assert_eq!(next_room_event(&mut events).await.2, "21");
        client.close();
        second.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn a_lost_pubsub_connection_is_repaired_from_history() {
    let redis = PrivateRedis::start().await;
    let prefix = unique_prefix("gap");
    let a = node(&redis.url(), &prefix).await;
    let b = node(&redis.url(), &prefix).await;
    let (client, mut events) = a
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    client.subscribe("public:1:gap", None).await.unwrap();
    b.publish(&["public:1:gap"], "client.n", "0").await;
    next_room_event(&mut events).await;
    // Cut every pub/sub connection, and publish while they come back.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    for n in 1..=40 {
        b.publish(&["public:1:gap"], "client.n", &n.to_string()).await;
    }
    for n in 1..=40u64 {
        assert_eq!(
            next_room_event(&mut events).await.1,
            n + 1,
            "in order, none missing, none twice"
        );
    }
    client.close();
}

#[tokio::test]
async fn a_redis_restart_that_loses_history_is_reported_never_silent() {
    let mut redis = PrivateRedis::start().await;
    let prefix = unique_prefix("wipe");
    let a = node(&redis.url(), &prefix).await;
    let (client, mut events) = a
        .client(TransportPreference::WebTransport, &token("agent", 7, 1, &[]))
        .await;
    client.subscribe("public:1:wipe", None).await.unwrap();
    // The account room has had its first event (the user's presence) before Redis goes.
    loop {
        if let ClientEvent::Event { room, .. } = next(&mut events).await
            && room.as_str() == "account:1"
        {
            break;
        }
    }
    a.publish(&["public:1:wipe"], "client.n", "before").await;
    assert_eq!(next_room_event(&mut events).await.2, "before");

    redis.kill();
    redis.resume().await;
    a.wait_ready(true).await;
    // The node noticed that the rooms' history is gone and told the client, for every
    // room that had events (user:7 never had one: nothing of it was lost).
    let mut reset = std::collections::BTreeSet::new();
    while reset.len() < 2 {
        match next(&mut events).await {
            ClientEvent::RecoveryFailed { room } => {
                reset.insert(room);
            }
            ClientEvent::Event { room, .. } => {
                assert!(reset.contains(&room), "an event of {room} before its reset")
            }
            _ => {}
        }
    }
    assert_eq!(
        reset.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        ["account:1", "public:1:wipe"]
    );
    a.publish(&["public:1:wipe"], "client.n", "after").await;
    assert_eq!(
        next_room_event(&mut events).await,
        ("public:1:wipe".into(), 1, "after".into())
    );
    client.close();
}

#[tokio::test]
async fn while_redis_is_down_publishes_fail_fast_and_everything_resumes_after() {
    let mut redis = PrivateRedis::start().await;
    let prefix = unique_prefix("down");
    let a = node(&redis.url(), &prefix).await;
    let (client, mut events) = a
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    client.subscribe("public:1:down", None).await.unwrap();

    redis.kill();
    a.wait_ready(false).await;
    let started = std::time::Instant::now();
    let resp = a
        .http
        .post(a.api("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({ "rooms": ["public:1:down"], "event": { "name": "x" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    // The node keeps its connections meanwhile.
    assert!(matches!(
        client.state(),
        rtgate_client::ConnectionState::Connected(_)
    ));

    redis.resume().await;
    a.wait_ready(true).await;
    // Redis came back empty: the room was reset, then delivery resumes.
    a.publish(&["public:1:down"], "client.n", "back").await;
    loop {
        match next(&mut events).await {
            ClientEvent::Event { event, .. } => {
                assert_eq!(event.json, "back");
                break;
            }
            ClientEvent::Disconnected { .. } => panic!("the connection was kept"),
            _ => {}
        }
    }
    client.close();
}

#[tokio::test]
async fn subscribers_joining_while_events_flow_never_make_others_miss_events() {
    let prefix = unique_prefix("joinflow");
    let a = node(SHARED_REDIS, &prefix).await;
    let b = node(SHARED_REDIS, &prefix).await;
    let room = "public:1:joinflow";
    let (live, mut live_events) = a
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    live.subscribe(room, None).await.unwrap();
    let total = 300u64;
    let publisher = {
        let url = b.api("/api/v1/publish");
        let http = b.http.clone();
        tokio::spawn(async move {
            for n in 1..=total {
                let resp = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&serde_json::json!({ "rooms": [room], "event": { "name": "client.n", "json": n.to_string() } }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        })
    };
    // Other connections of the same node join (each join reads the room's history) while
    // events flow through pub/sub.
    let mut joiners = Vec::new();
    for i in 0..15u64 {
        let (c, e) = a
            .client(TransportPreference::WebSocket, &token("agent", 100 + i, 1, &[]))
            .await;
        for _ in 0..3 {
            c.subscribe(room, None).await.unwrap();
            c.unsubscribe(room);
        }
        c.subscribe(room, None).await.unwrap();
        joiners.push((c, e));
    }
    publisher.await.unwrap();
    for n in 1..=total {
        assert_eq!(
            next_room_event(&mut live_events).await.1,
            n,
            "the live subscriber missed nothing"
        );
    }
    live.close();
    for (c, _) in joiners {
        c.close();
    }
}

#[tokio::test]
async fn a_node_that_cannot_load_revocations_takes_no_token_until_it_can() {
    // Redis is down: the node starts, but cannot know what other nodes revoked.
    let mut redis = PrivateRedis::start().await;
    redis.kill();
    let gw = TestGateway::start_with(redis_config(&redis.url(), "unknown")).await;
    gw.wait_ready(false).await;
    let mut ws = RawWs::connect(&gw.ws_url()).await;
    ws.send(&hello(&token("agent", 7, 1, &[]))).await;
    let d = ws.until_end().await.0.expect("told why");
    assert_eq!(d.code, DisconnectCode::ServerError.code());
    assert!(d.reconnect, "{d:?}");
    // Once Redis answers, the revocations load and tokens are taken.
    redis.resume().await;
    gw.wait_ready(true).await;
    let (_ws, welcome) = RawWs::handshake(&gw.ws_url(), &token("agent", 7, 1, &[])).await;
    assert_eq!(welcome.user_id, "7");
}

#[tokio::test]
async fn a_pubsub_connection_that_goes_quiet_is_found_by_its_probe_and_repaired() {
    let prefix = unique_prefix("quiet");
    let target = SHARED_REDIS.trim_start_matches("redis://").trim_end_matches('/');
    let proxy = common::proxy::QuietingProxy::start(target).await;
    let a = node(&proxy.url(), &prefix).await;
    let b = node(SHARED_REDIS, &prefix).await;
    let (client, mut events) = a
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[3]))
        .await;
    client.subscribe("inbox:3", None).await.unwrap();
    b.publish(&["inbox:3"], "m", "\"1\"").await;
    assert_eq!(next_room_event(&mut events).await.1, 1);
    // Open, but delivering nothing, like a connection left on an old primary.
    assert!(proxy.silence_subscribers() >= 1);
    b.publish(&["inbox:3"], "m", "\"2\"").await;
    // Without the probe this would never come; with it, the connection is replaced and the
    // gap repaired from history.
    let (room, offset, json) = tokio::time::timeout(Duration::from_secs(15), next_room_event(&mut events))
        .await
        .expect("the quiet connection is found and the gap repaired");
    assert_eq!((room.as_str(), offset, json.as_str()), ("inbox:3", 2, "\"2\""));
    let failures = metric_value(&a.metrics_text().await, "rtgate_engine_probe_failures_total");
    assert!(failures >= Some(1.0), "counted: {failures:?}");
}
