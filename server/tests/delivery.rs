//! End to end over both transports: connect, join, receive what the backend publishes,
//! in order, to many subscribers; recover missed events from history.

mod common;

use common::*;
use rtgate_client::ClientEvent;

#[tokio::test]
async fn published_events_reach_subscribers_over_both_transports() {
    let t = TestGateway::start().await;
    for prefer in TRANSPORTS {
        let (client, mut events) = t.client(prefer, &token("agent", 7, 1, &[3])).await;
        assert_eq!(client.subscribe("inbox:3", None).await, Ok((false, 0)));
        let offsets = t
            .publish(
                &["inbox:3", "account:1", "user:7"],
                "message.created",
                r#"{"n":1}"#,
            )
            .await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let (room, offset, json) = next_room_event(&mut events).await;
            assert_eq!(json, r#"{"n":1}"#);
            got.push((room, offset));
        }
        got.sort();
        let mut want = vec![
            ("account:1".to_string(), offsets[1]),
            ("inbox:3".to_string(), offsets[0]),
            ("user:7".to_string(), offsets[2]),
        ];
        want.sort();
        assert_eq!(got, want, "{prefer:?}");
        client.close();
    }
}

#[tokio::test]
async fn fan_out_keeps_order_for_every_subscriber() {
    let t = TestGateway::start().await;
    let mut clients = Vec::new();
    for i in 0..40u64 {
        let prefer = TRANSPORTS[(i % 2) as usize];
        let (client, events) = t.client(prefer, &token("agent", 100 + i, 1, &[])).await;
        client.subscribe("public:1:fanout", None).await.unwrap();
        clients.push((client, events));
    }
    for n in 1..=100 {
        t.publish(&["public:1:fanout"], "client.tick", &n.to_string())
            .await;
    }
    for (client, events) in &mut clients {
        for n in 1..=100u64 {
            let (room, offset, json) = next_room_event(events).await;
            assert_eq!(
                (room.as_str(), offset, json),
                ("public:1:fanout", n, n.to_string())
            );
        }
        client.close();
    }
}

#[tokio::test]
async fn resubscribing_from_a_position_replays_missed_events_or_says_it_cannot() {
    let mut config = config();
    config.history_size = 5;
    let t = TestGateway::start_with(config).await;
    for prefer in TRANSPORTS {
        let room = format!("public:1:replay-{prefer:?}").to_lowercase();
        let (client, mut events) = t.client(prefer, &token("agent", 7, 1, &[])).await;
        client.subscribe(&room, None).await.unwrap();
        t.publish(&[&room], "client.a", "1").await;
        let (_, first, _) = next_room_event(&mut events).await;
        let epoch = {
            let info: serde_json::Value = t.get_json(&format!("/api/v1/rooms/{room}")).await;
            info["epoch"].as_str().unwrap().to_string()
        };
        client.close();

        // Three events while away: all still in history.
        for n in 2..=4 {
            t.publish(&[&room], "client.a", &n.to_string()).await;
        }
        let (client, mut events) = t.client(prefer, &token("agent", 7, 1, &[])).await;
        let since = rtgate_protocol::pb::StreamPosition {
            epoch: epoch.clone(),
            offset: first,
        };
        assert_eq!(client.subscribe_from(&room, None, since).await, Ok((true, 3)));
        t.publish(&[&room], "client.a", "5").await;
        for n in 2..=5u64 {
            assert_eq!(
                next_room_event(&mut events).await,
                (room.clone(), n, n.to_string())
            );
        }
        client.close();

        // Ten more while away: history (5 events) no longer covers the gap.
        for n in 6..=15 {
            t.publish(&[&room], "client.a", &n.to_string()).await;
        }
        let (client, mut events) = t.client(prefer, &token("agent", 7, 1, &[])).await;
        let since = rtgate_protocol::pb::StreamPosition {
            epoch: epoch.clone(),
            offset: 5,
        };
        assert_eq!(client.subscribe_from(&room, None, since).await, Ok((false, 0)));
        loop {
            match next(&mut events).await {
                ClientEvent::RecoveryFailed { room: r } => {
                    assert_eq!(r.as_str(), room);
                    break;
                }
                ClientEvent::Event { .. } => panic!("no replay when recovery fails"),
                _ => {}
            }
        }
        // A stale epoch is never recovered either.
        client.unsubscribe(&room);
        let since = rtgate_protocol::pb::StreamPosition {
            epoch: "other".into(),
            offset: 14,
        };
        assert_eq!(client.subscribe_from(&room, None, since).await, Ok((false, 0)));
        client.close();
    }
}

#[tokio::test]
async fn webtransport_clients_can_share_one_quic_endpoint() {
    let t = TestGateway::start().await;
    let endpoint = rtgate_client::webtransport_endpoint(Some(t.cert_hash())).unwrap();
    let mut clients = Vec::new();
    for id in [7, 8] {
        let mut config = t.client_config(TRANSPORTS[0], &token("agent", id, 1, &[]));
        config.wt_endpoint = Some(endpoint.clone());
        let (client, events) = rtgate_client::Client::connect(config);
        assert_eq!(
            client.connected().await,
            Ok(rtgate_client::TransportKind::WebTransport)
        );
        client.subscribe("public:1:shared", None).await.unwrap();
        clients.push((client, events));
    }
    t.publish(&["public:1:shared"], "client.n", "1").await;
    for (client, events) in &mut clients {
        assert_eq!(next_room_event(events).await.2, "1");
        client.close();
    }
}
