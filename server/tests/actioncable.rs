//! `/cable` at the wire, over real sockets: the handshake and its subprotocol, pings,
//! what is refused or ignored, and what needs several nodes on one Redis — a token
//! dropped on one node closing connections on another, and Rails' broadcasts taken in
//! once however many nodes listen.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn cable_url(gw: &TestGateway) -> String {
    gw.ws_url().replace("/ws", "/cable")
}

/// Connects as `@rails/actioncable` does; the socket and the subprotocol picked.
async fn connect(gw: &TestGateway) -> (Socket, Option<String>) {
    let mut request = cable_url(gw).into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "actioncable-v1-json, actioncable-unsupported".parse().unwrap(),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    (socket, protocol)
}

/// The next JSON message (pings skipped unless `pings`), or `None` once the socket ends.
async fn next(socket: &mut Socket, pings: bool) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")?;
        match msg {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if pings || v["type"] != "ping" {
                    return Some(v);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(socket: &mut Socket, command: Value) {
    socket
        .send(Message::Text(command.to_string().into()))
        .await
        .unwrap();
}

fn subscribe(identifier: &Value) -> Value {
    json!({"command": "subscribe", "identifier": identifier.to_string()})
}

/// Mirrors agent 7 of account 1 with `token`.
async fn mirror_agent(gw: &TestGateway, token: &str) {
    assert_eq!(
        gw.put_json(
            "/api/v1/mirror/pubsub-tokens",
            json!({"token": token, "userId": 7})
        )
        .await
        .0,
        200
    );
    let user = json!({"id": 7, "accountId": 1, "userId": 7});
    assert_eq!(gw.put_json("/api/v1/mirror/account-users/7", user).await.0, 200);
}

fn agent_identifier(token: &str) -> Value {
    json!({"channel": "RoomChannel", "pubsub_token": token, "account_id": 1, "user_id": 7})
}

#[tokio::test]
async fn the_handshake_speaks_actioncable_and_pings_every_three_seconds() {
    let gw = TestGateway::start().await;
    let (mut socket, protocol) = connect(&gw).await;
    assert_eq!(protocol.as_deref(), Some("actioncable-v1-json"));
    assert_eq!(next(&mut socket, true).await, Some(json!({"type": "welcome"})));
    let ping = next(&mut socket, true).await.unwrap();
    assert_eq!(ping["type"], "ping");
    assert!(ping["message"].as_u64().unwrap() > 1_700_000_000, "{ping}");
}

#[tokio::test]
async fn strays_are_ignored_and_other_channels_and_bad_tokens_rejected_the_connection_stays() {
    let gw = TestGateway::start().await;
    mirror_agent(&gw, "tok-strays").await;
    let (mut socket, _) = connect(&gw).await;
    next(&mut socket, false).await;
    for stray in ["not json", "{}", r#"{"command":"dance","identifier":"{}"}"#] {
        socket.send(Message::Text(stray.into())).await.unwrap();
    }
    socket.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let other = json!({"channel": "ChatChannel"});
    send(&mut socket, subscribe(&other)).await;
    assert_eq!(
        next(&mut socket, false).await,
        Some(json!({"identifier": other.to_string(), "type": "reject_subscription"}))
    );
    let wrong = agent_identifier("no-such-token");
    send(&mut socket, subscribe(&wrong)).await;
    assert_eq!(
        next(&mut socket, false).await.unwrap()["type"],
        "reject_subscription"
    );
    // Still open: a good subscription is confirmed on the same connection.
    let good = agent_identifier("tok-strays");
    send(&mut socket, subscribe(&good)).await;
    assert_eq!(
        next(&mut socket, false).await,
        Some(json!({"identifier": good.to_string(), "type": "confirm_subscription"}))
    );
    let metrics = gw
        .http
        .get(gw.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("rtgate_cable_ignored_total"), "counted");
}

#[tokio::test]
async fn a_token_dropped_on_one_node_closes_its_connections_on_another() {
    let prefix = common::redis::unique_prefix("cable-drop");
    let a = TestGateway::start_with(redis_config(common::redis::SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    let b = TestGateway::start_with(redis_config(common::redis::SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    mirror_agent(&a, "tok-drop").await;
    let (mut socket, _) = connect(&b).await;
    next(&mut socket, false).await;
    send(&mut socket, subscribe(&agent_identifier("tok-drop"))).await;
    assert_eq!(
        next(&mut socket, false).await.unwrap()["type"],
        "confirm_subscription"
    );
    let resp: Value = a
        .http
        .delete(a.api("/api/v1/mirror/pubsub-tokens"))
        .bearer_auth(API_KEY)
        .json(&json!({"token": "tok-drop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // None of them here (zero is left out of JSON answers), one other node told.
    assert_eq!(
        (resp["connections"].as_u64(), resp["nodes"].as_u64()),
        (None, Some(1)),
        "{resp}"
    );
    assert_eq!(
        next(&mut socket, false).await,
        Some(json!({"type": "disconnect", "reason": "remote", "reconnect": false}))
    );
    assert_eq!(next(&mut socket, false).await, None, "then closed");
}

#[tokio::test]
async fn rails_broadcasts_are_taken_in_once_however_many_nodes_listen() {
    let prefix = common::redis::unique_prefix("cable-relay");
    let channel_prefix = format!("{prefix}_action_cable");
    let node = || {
        let mut c = redis_config(common::redis::SHARED_REDIS, &prefix);
        c.cable_redis = Some(common::redis::SHARED_REDIS.to_string());
        c.cable_channel_prefix = channel_prefix.clone();
        TestGateway::start_with(c)
    };
    let a = node().await.ready().await;
    let b = node().await.ready().await;
    mirror_agent(&a, "tok-relay").await;
    let client = ::redis::Client::open(common::redis::SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Both nodes listen once one of them holds the lease.
    let mut listening = 0;
    for _ in 0..200 {
        listening = ::redis::cmd("PUBSUB")
            .arg("NUMPAT")
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
        let holder: Option<String> = ::redis::cmd("GET")
            .arg(format!("{{{prefix}:cable}}:relay"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if holder.is_some() && listening >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(listening >= 1, "a relay listens");
    for n in 0..5 {
        let receivers: i64 = ::redis::cmd("PUBLISH")
            .arg(format!("{channel_prefix}:tok-relay"))
            .arg(json!({"event": "message.created", "data": {"id": n, "account_id": 1}}).to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(receivers >= 1);
    }
    let offset = |room: &Value| room["offset"].as_str().and_then(|o| o.parse::<u64>().ok());
    let mut seen = None;
    for _ in 0..200 {
        seen = offset(&b.get_json("/api/v1/rooms/user:7").await);
        if seen >= Some(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let room = b.get_json("/api/v1/rooms/user:7").await;
    assert_eq!(
        offset(&room),
        Some(5),
        "each broadcast once: {room} (was {seen:?})"
    );
}

#[tokio::test]
async fn a_cable_subscriber_is_present_in_chatwoots_own_presence_keys() {
    let prefix = common::redis::unique_prefix("cable-presence");
    let namespace = format!("{prefix}-alfred");
    let mut config = redis_config(common::redis::SHARED_REDIS, &prefix);
    config.chatwoot_presence_keys = true;
    config.chatwoot_namespace = namespace.clone();
    let gw = TestGateway::start_with(config).await.ready().await;
    mirror_agent(&gw, "tok-presence").await;
    let (mut socket, _) = connect(&gw).await;
    next(&mut socket, false).await;
    let identifier = agent_identifier("tok-presence");
    send(&mut socket, subscribe(&identifier)).await;
    assert_eq!(
        next(&mut socket, false).await.unwrap()["type"],
        "confirm_subscription"
    );
    let perform = json!({"command": "message", "identifier": identifier.to_string(),
                         "data": json!({"action": "update_presence"}).to_string()});
    send(&mut socket, perform).await;
    let update = next(&mut socket, false).await.unwrap();
    assert_eq!(update["message"]["event"], "presence.update", "{update}");
    assert_eq!(update["message"]["data"]["account_id"], 1);
    let client = ::redis::Client::open(common::redis::SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut score = None;
    for _ in 0..200 {
        score = ::redis::cmd("ZSCORE")
            .arg(format!("{namespace}:ONLINE_PRESENCE::1::USERS"))
            .arg("7")
            .query_async::<Option<f64>>(&mut conn)
            .await
            .unwrap();
        if score.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = now_unix() as f64;
    assert!(score.is_some_and(|s| (now - s).abs() < 10.0), "{score:?}");
}

#[tokio::test]
async fn a_token_whose_removal_was_missed_is_found_and_its_connections_closed() {
    let prefix = common::redis::unique_prefix("cable-check");
    let mut config = redis_config(common::redis::SHARED_REDIS, &prefix);
    config.cable_token_check = Duration::from_millis(200);
    let gw = TestGateway::start_with(config).await.ready().await;
    mirror_agent(&gw, "tok-missed").await;
    let (mut socket, _) = connect(&gw).await;
    next(&mut socket, false).await;
    send(&mut socket, subscribe(&agent_identifier("tok-missed"))).await;
    assert_eq!(
        next(&mut socket, false).await.unwrap()["type"],
        "confirm_subscription"
    );
    // Removed behind the gateway's back: no control message reaches the nodes.
    let key = rtgate_server::actioncable::tokens::token_key("tok-missed");
    let client = ::redis::Client::open(common::redis::SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let removed: i64 = ::redis::cmd("DEL")
        .arg(format!("{{{prefix}:cable:{key}}}:t"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the token's key is where the docs say");
    assert_eq!(
        next(&mut socket, false).await,
        Some(json!({"type": "disconnect", "reason": "remote", "reconnect": false}))
    );
}
