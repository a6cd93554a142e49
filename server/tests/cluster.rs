//! Several nodes on a Redis Cluster of three masters act as one gateway: rooms spread over
//! every master by slot (sharded pub/sub), history and recovery, presence, gap repair when
//! one master's pub/sub connection drops or goes quiet, and a master restarted under load
//! with nothing lost silently. Each test starts a cluster of its own on loopback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::PrivateCluster;
use common::proxy::QuietingProxy;
use common::redis::{free_tcp_port, unique_prefix};
use common::*;
use rtgate_client::{ClientEvent, TransportPreference};
use rtgate_protocol::pb;
use serde_json::json;

fn cluster_config(cluster: &PrivateCluster, prefix: &str) -> rtgate_server::Config {
    let mut c = redis_config(&cluster.url(), prefix);
    c.redis_cluster = true;
    c
}

async fn node(cluster: &PrivateCluster, prefix: &str) -> TestGateway {
    TestGateway::start_with(cluster_config(cluster, prefix))
        .await
        .ready()
        .await
}

/// The room's channel key, whose slot decides its master.
fn channel(prefix: &str, room: &str) -> String {
    format!("{prefix}:{{{room}}}:c")
}

/// `per_master` rooms `public:1:<stem><n>` on each master, by index of master.
async fn rooms_on_every_master(
    cluster: &PrivateCluster,
    prefix: &str,
    stem: &str,
    per_master: usize,
) -> Vec<Vec<String>> {
    let mut by_master = vec![Vec::new(); cluster.len()];
    let mut n = 0;
    while by_master.iter().any(|r: &Vec<String>| r.len() < per_master) {
        let room = format!("public:1:{stem}{n}");
        let m = cluster.master_of(&channel(prefix, &room)).await;
        if by_master[m].len() < per_master {
            by_master[m].push(room);
        }
        n += 1;
    }
    by_master
}

/// A cluster of three masters and two gateway nodes on it, under a prefix of their own.
async fn two_nodes(test: &str) -> (PrivateCluster, String, TestGateway, TestGateway) {
    let cluster = PrivateCluster::start(3).await;
    let prefix = unique_prefix(test);
    let a = node(&cluster, &prefix).await;
    let b = node(&cluster, &prefix).await;
    (cluster, prefix, a, b)
}

/// Publishes through the API at `publish_url`; the offset, or `None` when the gateway
/// refused (503) or did not answer.
async fn try_publish(
    http: &reqwest::Client,
    publish_url: &str,
    room: &str,
    json_payload: &str,
) -> Option<u64> {
    let resp = http
        .post(publish_url)
        .bearer_auth(API_KEY)
        .json(&json!({
            "rooms": [room],
            "event": { "name": "client.n", "accountId": "1", "json": json_payload },
        }))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let body: serde_json::Value = resp.json().await.ok()?;
    let offset = &body["positions"][0]["position"]["offset"];
    offset.as_str().and_then(|s| s.parse().ok()).or(offset.as_u64())
}

#[tokio::test]
async fn rooms_on_every_master_reach_clients_on_other_nodes_in_order_with_presence() {
    let (cluster, prefix, a, b) = two_nodes("cluster").await;
    let rooms: Vec<String> = rooms_on_every_master(&cluster, &prefix, "spread", 2)
        .await
        .concat();
    let (client_a, mut events_a) = a
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    let (client_b, mut events_b) = b
        .client(TransportPreference::WebTransport, &token("agent", 8, 1, &[]))
        .await;
    for room in &rooms {
        client_a.subscribe(room, None).await.unwrap();
        client_b.subscribe(room, None).await.unwrap();
    }
    // Each master carries the channels of its rooms, sharded.
    for m in 0..cluster.len() {
        let channels = cluster
            .cmd(m, &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}:*")])
            .await;
        let ::redis::Value::Array(channels) = channels else {
            panic!("PUBSUB SHARDCHANNELS: {channels:?}")
        };
        let spread = channels
            .iter()
            .filter(|c| matches!(c, ::redis::Value::BulkString(b) if b.windows(6).any(|w| w == b"spread")))
            .count();
        assert_eq!(spread, 2, "master {m} holds its two rooms' channels");
    }
    let mut published: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for n in 0..60 {
        let room = &rooms[n % rooms.len()];
        let via = if n % 2 == 0 { &a } else { &b };
        let offset = via.publish(&[room], "client.n", &n.to_string()).await[0];
        published
            .entry(room.clone())
            .or_default()
            .push((offset, n.to_string()));
    }
    for events in [&mut events_a, &mut events_b] {
        let mut got: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        while got.values().map(Vec::len).sum::<usize>() < 60 {
            let (room, offset, json) = next_room_event(events).await;
            if room.starts_with("public:1:spread") {
                got.entry(room).or_default().push((offset, json));
            }
        }
        assert_eq!(got, published, "every room's events, in order, once");
    }
    // Presence written through one node is read through the other.
    let presence: pb::Presence = serde_json::from_value(b.get_json("/api/v1/presence/1").await).unwrap();
    let online: BTreeSet<u64> = presence.users.iter().filter(|u| u.online).map(|u| u.id).collect();
    assert_eq!(online, BTreeSet::from([7, 8]));
    client_a.close();
    client_b.close();
}

#[tokio::test]
async fn a_client_moving_to_another_node_recovers_from_history_on_the_cluster() {
    let (cluster, prefix, a, b) = two_nodes("cluster-move").await;
    for rooms in rooms_on_every_master(&cluster, &prefix, "moving", 1).await {
        let room = rooms[0].as_str();
        let (client, mut events) = a
            .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
            .await;
        client.subscribe(room, None).await.unwrap();
        let first = b.publish(&[room], "client.n", "first").await[0];
        assert_eq!(next_room_event(&mut events).await.1, first);
        let info = b.get_json(&format!("/api/v1/rooms/{room}")).await;
        let epoch = info["epoch"].as_str().unwrap().to_string();
        client.close();
        for n in 0..20 {
            a.publish(&[room], "client.n", &n.to_string()).await;
        }
        let (client, mut events) = b
            .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
            .await;
        let since = pb::StreamPosition { epoch, offset: first };
        assert_eq!(client.subscribe_from(room, None, since).await, Ok((true, 20)));
        for n in 0..20 {
            assert_eq!(
                next_room_event(&mut events).await,
                (room.to_string(), first + 1 + n, n.to_string())
            );
        }
        client.close();
    }
}

#[tokio::test]
async fn a_lost_pubsub_connection_to_one_master_is_repaired_from_history() {
    let (cluster, prefix, a, b) = two_nodes("cluster-gap").await;
    let rooms = rooms_on_every_master(&cluster, &prefix, "gap", 1).await;
    let (client, mut events) = a
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    for r in &rooms {
        client.subscribe(&r[0], None).await.unwrap();
    }
    let cut = 1;
    let room = rooms[cut][0].as_str();
    b.publish(&[room], "client.n", "0").await;
    next_room_event(&mut events).await;
    // Cut the pub/sub connections on one master only, and publish while they come back.
    cluster.cmd(cut, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    for n in 1..=40 {
        b.publish(&[room], "client.n", &n.to_string()).await;
    }
    for n in 1..=40u64 {
        let (r, offset, _) = next_room_event(&mut events).await;
        assert_eq!(
            (r.as_str(), offset),
            (room, n + 1),
            "in order, none missing, none twice"
        );
    }
    // The other masters' rooms still deliver.
    for r in &rooms {
        let offset = b.publish(&[&r[0]], "client.n", "after").await[0];
        assert_eq!(
            next_room_event(&mut events).await,
            (r[0].clone(), offset, "after".into())
        );
    }
    client.close();
}

#[tokio::test]
async fn a_pubsub_connection_quiet_on_one_master_is_found_by_its_probe_and_repaired() {
    // Master 2 is reached through a proxy that can silence its pub/sub connections: it
    // announces the proxy's port to clients.
    let ports: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let proxy = QuietingProxy::start(&format!("127.0.0.1:{}", ports[2])).await;
    let cluster = PrivateCluster::start_with_ports(&ports, &[None, None, Some(proxy.port)]).await;
    let prefix = unique_prefix("cluster-quiet");
    let a = node(&cluster, &prefix).await;
    let b = node(&cluster, &prefix).await;
    let rooms = rooms_on_every_master(&cluster, &prefix, "quiet", 1).await;
    let room = rooms[2][0].as_str();
    let (client, mut events) = a
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    client.subscribe(room, None).await.unwrap();
    b.publish(&[room], "client.n", "1").await;
    assert_eq!(next_room_event(&mut events).await.1, 1);
    // Open, but delivering nothing, like a connection left on an old primary.
    assert!(proxy.silence_subscribers() >= 1);
    b.publish(&[room], "client.n", "2").await;
    let (r, offset, json) = tokio::time::timeout(Duration::from_secs(15), next_room_event(&mut events))
        .await
        .expect("the quiet connection is found and the gap repaired");
    assert_eq!((r.as_str(), offset, json.as_str()), (room, 2, "2"));
    let failures = metric_value(&a.metrics_text().await, "rtgate_engine_probe_failures_total");
    assert!(failures >= Some(1.0), "counted: {failures:?}");
    client.close();
}

/// What a client saw of one room: events (their payloads), and resets.
#[derive(Debug, PartialEq)]
enum Seen {
    Event(u64),
    Reset,
}

#[tokio::test]
async fn a_master_restarted_under_load_loses_nothing_silently() {
    let (mut cluster, prefix, a, b) = two_nodes("cluster-restart").await;
    let by_master = rooms_on_every_master(&cluster, &prefix, "load", 2).await;
    let restarted = 0;
    let rooms: Vec<String> = by_master.concat();
    let (client, mut events) = a
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    for room in &rooms {
        client.subscribe(room, None).await.unwrap();
    }

    // Publishing through node b, round robin over the rooms, while master 0 is killed and
    // started again (empty).
    let publishing = {
        let b_url = b.api("/api/v1/publish");
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut accepted: Vec<(String, u64)> = Vec::new();
            let mut refused = 0;
            for n in 0..600u64 {
                let room = &rooms[n as usize % rooms.len()];
                match try_publish(&http, &b_url, room, &n.to_string()).await {
                    Some(_) => accepted.push((room.clone(), n)),
                    None => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (accepted, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.kill(restarted);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.restart(restarted).await;
    let (accepted, refused) = publishing.await.unwrap();
    assert!(
        refused > 0,
        "publishes to the stopped master were refused, not taken"
    );

    // After the load: one more event per room, to know when everything has arrived.
    for room in &rooms {
        let mut tries = 0;
        while try_publish(&b.http, &b.api("/api/v1/publish"), room, "1000000")
            .await
            .is_none()
        {
            tries += 1;
            assert!(tries < 100, "{room} takes events again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut seen: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let mut done = BTreeSet::new();
    while done.len() < rooms.len() {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("every room's last event arrives")
            .expect("client open");
        match event {
            ClientEvent::Event { room, event, .. } if rooms.contains(&room.to_string()) => {
                let n: u64 = event.json.parse().unwrap();
                if n == 1_000_000 {
                    done.insert(room.to_string());
                } else {
                    seen.entry(room.to_string()).or_default().push(Seen::Event(n));
                }
            }
            ClientEvent::RecoveryFailed { room } => {
                seen.entry(room.to_string()).or_default().push(Seen::Reset);
            }
            ClientEvent::Disconnected { .. } => panic!("the client's connection was kept"),
            _ => {}
        }
    }
    for (m, rooms) in by_master.iter().enumerate() {
        for room in rooms {
            let seen = seen.remove(room).unwrap_or_default();
            let got: Vec<u64> = seen
                .iter()
                .filter_map(|s| match s {
                    Seen::Event(n) => Some(*n),
                    Seen::Reset => None,
                })
                .collect();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{room}: in order, none twice: {got:?}"
            );
            let missing: Vec<u64> = accepted
                .iter()
                .filter(|(r, n)| r == room && !got.contains(n))
                .map(|(_, n)| *n)
                .collect();
            if m == restarted {
                // Its history went with the master: lost events are announced by a reset.
                if !missing.is_empty() {
                    assert!(
                        seen.contains(&Seen::Reset),
                        "{room}: {missing:?} lost without a reset"
                    );
                }
            } else {
                assert_eq!(
                    missing,
                    Vec::<u64>::new(),
                    "{room}: its master stayed: nothing lost"
                );
                assert!(
                    !seen.contains(&Seen::Reset),
                    "{room}: its master stayed: no reset"
                );
            }
        }
    }
    client.close();
}

#[tokio::test]
async fn domain_events_through_the_stream_and_http_are_routed_on_a_cluster() {
    let cluster = PrivateCluster::start(3).await;
    let prefix = unique_prefix("cluster-events");
    let t = node(&cluster, &prefix).await;
    let (agent, mut events) = t
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[3]))
        .await;
    agent.subscribe("inbox:3", None).await.unwrap();
    let message = |id: &str, content: &str| message_created_event(id, false, content);
    async fn next_in_inbox(events: &mut tokio::sync::mpsc::UnboundedReceiver<ClientEvent>) -> String {
        loop {
            let (room, _, json) = next_room_event(events).await;
            if room == "inbox:3" {
                return json;
            }
        }
    }
    // What a Rails after-commit hook writes, on the master of the stream's slot.
    let stream = format!("{{{prefix}:events}}");
    let master = cluster.master_of(&stream).await;
    let body = message("s-1", "from the stream").to_string();
    cluster.cmd(master, &["XADD", &stream, "*", "json", &body]).await;
    let json = next_in_inbox(&mut events).await;
    assert!(json.contains("from the stream"), "{json}");
    // HTTP ingest goes through the same stream and the same deduplication.
    let outcomes = t
        .post_events(vec![message("s-1", "dup"), message("h-1", "over http")])
        .await;
    assert_eq!(outcomes[0].0, "STATUS_DUPLICATE");
    assert_eq!(outcomes[1].0, "STATUS_ACCEPTED");
    let json = next_in_inbox(&mut events).await;
    assert!(json.contains("over http"), "{json}");
    agent.close();
}
