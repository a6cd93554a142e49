//! Attacks on the gateway before and after authentication, each reproduced: slow or
//! silent sockets, oversized and unauthenticated bodies, connection budgets, replays
//! larger than a connection's send budget, state left by subscribing, forged client
//! events, retried publishes and narrowed tokens.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw::{RawWs, hello, subscribe};
use common::*;
use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, ErrorCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x), so that a
/// test can play several clients.
async fn tcp_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("binds a loopback address");
    socket.connect(addr).await.unwrap()
}

/// Reads until the peer closes; true when it did within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A WebSocket handshake over an existing TCP stream.
async fn ws_over(
    tcp: TcpStream,
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (ws, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .expect("upgrade");
    ws
}

#[tokio::test]
async fn half_open_requests_are_dropped_at_the_header_deadline_and_health_stays_up() {
    let mut config = config();
    config.handshake_timeout = Duration::from_millis(400);
    let t = TestGateway::start_with(config).await;
    let mut slow = Vec::new();
    for n in 0..100 {
        let mut tcp = TcpStream::connect(t.gw.http_addr).await.unwrap();
        match n % 3 {
            // One byte of a request line, then nothing.
            0 => tcp.write_all(b"G").await.unwrap(),
            // Most of the headers.
            1 => tcp
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap(),
            // Nothing at all.
            _ => {}
        }
        slow.push(tcp);
    }
    // A keep-alive connection left idle after its request is closed too.
    let mut idle = TcpStream::connect(t.gw.http_addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    slow.push(idle);
    // Meanwhile the listener serves everyone else.
    let health = t.http.get(t.api("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let started = Instant::now();
    for tcp in &mut slow {
        assert!(
            closed_within(tcp, Duration::from_secs(3)).await,
            "a half-open request outlived the header deadline"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn the_api_key_is_checked_before_the_body_is_read() {
    let t = TestGateway::start().await;
    let mut tcp = TcpStream::connect(t.gw.http_addr).await.unwrap();
    // Announces a 1 MB body, sends none of it, has no key: answered at once.
    tcp.write_all(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("\"code\":401"), "an ApiError: {answer}");
}

#[tokio::test]
async fn oversized_slow_and_misdirected_api_requests_answer_api_errors() {
    let mut config = config();
    config.http_body_timeout = Duration::from_millis(300);
    let t = TestGateway::start_with(config).await;
    // Over the body limit.
    let resp = t
        .http
        .post(t.api("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(vec![b' '; (1 << 20) + 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["code"], 400);
    // An event over the event size limit.
    let big = "x".repeat(200 * 1024);
    let resp = t
        .http
        .post(t.api("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"rooms": ["inbox:1"], "event": {"name": "m", "json": format!("\"{big}\"")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(
        resp.json::<serde_json::Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("events are limited")
    );
    // Unknown endpoint and wrong method.
    for (method, path, status) in [
        (reqwest::Method::GET, "/api/v1/nope", 404),
        (reqwest::Method::GET, "/api/v1/publish", 405),
    ] {
        let resp = t
            .http
            .request(method, t.api(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
        assert!(resp.json::<serde_json::Value>().await.unwrap()["code"].is_number());
    }
    // A body that stops arriving.
    let mut tcp = TcpStream::connect(t.gw.http_addr).await.unwrap();
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut answer))
        .await
        .expect("answered at the body deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let mut config = config();
    config.max_connections_per_ip = 5;
    let t = TestGateway::start_with(config).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tcp_from([127, 0, 0, 2], t.gw.http_addr).await);
    }
    let mut sixth = tcp_from([127, 0, 0, 2], t.gw.http_addr).await;
    assert!(closed_within(&mut sixth, Duration::from_secs(2)).await, "refused");
    // Another address is served.
    let health = t.http.get(t.api("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // Freed slots come back.
    held.clear();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = tcp_from([127, 0, 0, 2], t.gw.http_addr).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = again.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn silent_sockets_never_take_the_slots_of_authenticated_users() {
    let mut config = config();
    config.max_connections = 2;
    config.max_pending_per_ip = 3;
    config.hello_timeout = Duration::from_secs(2);
    let t = TestGateway::start_with(config).await;
    // An attacker at 127.0.0.2 opens WebSockets and never says Hello.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(ws_over(tcp_from([127, 0, 0, 2], t.gw.http_addr).await, &t.ws_url()).await);
    }
    // Beyond its pending budget it is refused with `overloaded`.
    let mut extra = RawWs {
        ws: ws_over(tcp_from([127, 0, 0, 2], t.gw.http_addr).await, &t.ws_url()).await,
    };
    assert_eq!(
        extra.until_end().await.0.map(|d| d.code),
        Some(DisconnectCode::Overloaded.code())
    );
    // Real users (127.0.0.1) are let in up to the authenticated limit.
    let (_a, _) = RawWs::handshake(&t.ws_url(), &token("agent", 7, 1, &[])).await;
    let (_b, _) = RawWs::handshake(&t.ws_url(), &token("agent", 8, 1, &[])).await;
    let mut third = RawWs::connect(&t.ws_url()).await;
    third.send(&hello(&token("agent", 9, 1, &[]))).await;
    assert_eq!(
        third.until_end().await.0.map(|d| d.code),
        Some(DisconnectCode::Overloaded.code())
    );
    // The silent ones are closed at the Hello deadline.
    for ws in silent {
        let mut ws = RawWs { ws };
        assert_eq!(
            ws.until_end().await.0.map(|d| d.code),
            Some(DisconnectCode::HelloTimeout.code())
        );
    }
}

#[tokio::test]
async fn a_user_holds_at_most_their_share_of_connections() {
    let mut config = config();
    config.max_connections_per_user = 2;
    let t = TestGateway::start_with(config).await;
    let tok = token("agent", 7, 1, &[]);
    let (_a, _) = RawWs::handshake(&t.ws_url(), &tok).await;
    let (_b, _) = RawWs::handshake(&t.ws_url(), &tok).await;
    let mut third = RawWs::connect(&t.ws_url()).await;
    third.send(&hello(&tok)).await;
    let d = third.until_end().await.0.unwrap();
    assert_eq!(d.code, DisconnectCode::Overloaded.code());
    assert!(d.reason.contains("this user"), "{}", d.reason);
    // Someone else is let in.
    let (_c, welcome) = RawWs::handshake(&t.ws_url(), &token("agent", 8, 1, &[])).await;
    assert_eq!(welcome.user_id, "8");
}

fn payload(bytes: usize) -> String {
    format!("\"{}\"", "y".repeat(bytes))
}

/// Publishes `n` events of about `bytes` each to `room`.
async fn fill(t: &TestGateway, room: &str, n: usize, bytes: usize) {
    let body = payload(bytes);
    for _ in 0..n {
        t.publish(&[room], "message.created", &body).await;
    }
}

/// A reconnecting client whose missed events are several times its send budget gets them
/// all, in order, at its own pace, and is never cut as a slow consumer.
async fn replay_larger_than_the_budget(t: &TestGateway) {
    let room = "inbox:3";
    let tok = token("agent", 7, 1, &[3]);
    let (mut ws, _) = RawWs::handshake(&t.ws_url(), &tok).await;
    ws.send(&subscribe(1, room, "")).await;
    let Some(S::Reply(reply)) = ws.recv().await.unwrap().kind else {
        panic!("a reply")
    };
    let epoch = reply.subscribed.unwrap().epoch;
    drop(ws);
    // 60 events of 60 KB: about 3.6 MB against a budget of 1 MiB.
    fill(t, room, 60, 60 * 1024).await;
    let (mut ws, _) = RawWs::handshake(&t.ws_url(), &tok).await;
    ws.send(&pb::ClientFrame {
        id: 2,
        kind: Some(C::Subscribe(pb::Subscribe {
            room: room.into(),
            since: Some(pb::StreamPosition { epoch, offset: 0 }),
            token: String::new(),
        })),
    })
    .await;
    let mut offsets = Vec::new();
    let mut recovered = None;
    while offsets.len() < 60 {
        // Read slowly: the gateway must wait for us.
        tokio::time::sleep(Duration::from_millis(5)).await;
        match ws.recv().await.expect("still connected").kind {
            Some(S::Reply(r)) => recovered = r.subscribed.map(|s| (s.recovered, s.replayed)),
            Some(S::Event(e)) if e.room == room => offsets.push(e.offset),
            Some(S::Disconnect(d)) => panic!("disconnected during the replay: {d:?}"),
            _ => {}
        }
    }
    assert_eq!(recovered, Some((true, 60)));
    assert_eq!(offsets, (1..=60).collect::<Vec<u64>>());
    // Live events follow.
    t.publish(&[room], "message.created", "\"live\"").await;
    loop {
        if let Some(S::Event(e)) = ws.recv().await.unwrap().kind
            && e.room == room
        {
            assert_eq!(e.offset, 61);
            break;
        }
    }
}

#[tokio::test]
async fn a_replay_larger_than_the_send_budget_is_delivered_at_the_clients_pace() {
    let t = TestGateway::start().await;
    replay_larger_than_the_budget(&t).await;
}

#[tokio::test]
async fn a_replay_larger_than_the_send_budget_is_paged_from_redis() {
    let redis = common::redis::SHARED_REDIS.to_string();
    let t = TestGateway::start_with(redis_config(&redis, &common::redis::unique_prefix("replay")))
        .await
        .ready()
        .await;
    replay_larger_than_the_budget(&t).await;
}

#[tokio::test]
async fn subscribing_leaves_no_state_in_redis() {
    let redis = common::redis::SHARED_REDIS.to_string();
    let prefix = common::redis::unique_prefix("nostate");
    let t = TestGateway::start_with(redis_config(&redis, &prefix))
        .await
        .ready()
        .await;
    let (mut ws, _) = RawWs::handshake(&t.ws_url(), &token("contact", 3, 1, &[])).await;
    for n in 1..=40u32 {
        ws.send(&subscribe(n, &format!("public:1:r{n}"), "")).await;
    }
    let mut replies = 0;
    while replies < 40 {
        if let Some(S::Reply(r)) = ws.recv().await.unwrap().kind {
            assert!(r.error.is_none(), "{r:?}");
            let s = r.subscribed.unwrap();
            assert_eq!(
                (s.epoch.as_str(), s.offset),
                ("", 0),
                "no room before its first event"
            );
            replies += 1;
        }
    }
    let client = ::redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:{{public:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "subscribing created {keys:?}");
    // The first event of such a room reaches its subscriber as offset 1, no reset.
    t.publish(&["public:1:r7"], "client.x", "1").await;
    loop {
        match ws.recv().await.unwrap().kind {
            Some(S::Event(e)) => {
                assert_eq!((e.room.as_str(), e.offset), ("public:1:r7", 1));
                break;
            }
            Some(S::Reset(r)) => panic!("a reset for a room that only began: {r:?}"),
            _ => {}
        }
    }
}

fn publish_frame(id: u32, room: &str, event: pb::Event) -> pb::ClientFrame {
    pb::ClientFrame {
        id,
        kind: Some(C::Publish(pb::Publish {
            room: room.into(),
            event: Some(event),
        })),
    }
}

async fn reply_to(ws: &mut RawWs, id: u32) -> pb::Reply {
    loop {
        if let Some(S::Reply(r)) = ws.recv().await.expect("connected").kind
            && r.id == id
        {
            return r;
        }
    }
}

#[tokio::test]
async fn clients_publish_only_where_allowed_with_server_made_ids_and_no_typed_payloads() {
    let t = TestGateway::start().await;
    let (mut ws, _) = RawWs::handshake(&t.ws_url(), &token("agent", 7, 1, &[])).await;
    // Account rooms take no client events.
    let ev = pb::Event {
        name: "client.hi".into(),
        id: "forged-id".into(),
        json: "{}".into(),
        ..Default::default()
    };
    ws.send(&publish_frame(1, "account:1", ev.clone())).await;
    assert_eq!(
        reply_to(&mut ws, 1).await.error.unwrap().code,
        ErrorCode::PermissionDenied.code()
    );
    // Public rooms stay inside their tenant.
    ws.send(&subscribe(2, "public:2:lobby", "")).await;
    assert_eq!(
        reply_to(&mut ws, 2).await.error.unwrap().code,
        ErrorCode::PermissionDenied.code()
    );
    ws.send(&subscribe(3, "public:1:lobby", "")).await;
    assert!(reply_to(&mut ws, 3).await.error.is_none());
    // A typed payload (a forged sender) is refused.
    let forged = pb::Event {
        payload: Some(pb::event::Payload::Message(pb::Message {
            content: "hi".into(),
            ..Default::default()
        })),
        ..ev.clone()
    };
    ws.send(&publish_frame(4, "public:1:lobby", forged)).await;
    assert_eq!(
        reply_to(&mut ws, 4).await.error.unwrap().code,
        ErrorCode::BadRequest.code()
    );
    // The client's id is replaced by the server's.
    ws.send(&publish_frame(5, "public:1:lobby", ev.clone())).await;
    let mut got_reply = false;
    let mut got_event = None;
    while !got_reply || got_event.is_none() {
        match ws.recv().await.unwrap().kind {
            Some(S::Reply(r)) if r.id == 5 => {
                assert!(r.error.is_none(), "{r:?}");
                got_reply = true;
            }
            Some(S::Event(e)) if e.room == "public:1:lobby" => got_event = e.event,
            _ => {}
        }
    }
    let event = got_event.unwrap();
    assert_ne!(event.id, "forged-id");
    assert_eq!(event.performer.unwrap().id, 7);
    // Publishing has its own rate: the burst (20) then 429.
    let mut limited = false;
    for id in 10..40 {
        ws.send(&publish_frame(id, "public:1:lobby", ev.clone())).await;
        if let Some(err) = reply_to(&mut ws, id).await.error {
            assert_eq!(err.code, ErrorCode::LimitExceeded.code());
            limited = true;
            break;
        }
    }
    assert!(limited, "client publishing is rate limited");
}

/// A retried publish (same event id) is numbered and delivered once.
async fn retried_publishes_are_delivered_once(t: &TestGateway) {
    let (mut ws, _) = RawWs::handshake(&t.ws_url(), &token("agent", 7, 1, &[4])).await;
    ws.send(&subscribe(1, "inbox:4", "")).await;
    reply_to(&mut ws, 1).await;
    let body = json!({"rooms": ["inbox:4", "account:1"], "event": {"id": "evt-42", "name": "message.created", "json": "1"}});
    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = t
            .http
            .post(t.api("/api/v1/publish"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        answers.push(resp.json::<serde_json::Value>().await.unwrap());
    }
    assert_eq!(answers[0]["positions"][0]["duplicate"], serde_json::Value::Null);
    assert_eq!(answers[1]["positions"][0]["duplicate"], true);
    assert_eq!(answers[1]["positions"][1]["duplicate"], true);
    assert_eq!(
        answers[0]["positions"][0]["position"],
        answers[1]["positions"][0]["position"]
    );
    // Another id is a new event.
    t.publish(&["inbox:4"], "message.created", "2").await;
    let mut offsets = Vec::new();
    while offsets.len() < 2 {
        if let Some(S::Event(e)) = ws.recv().await.unwrap().kind
            && e.room == "inbox:4"
        {
            offsets.push((e.offset, e.event.unwrap().json));
        }
    }
    assert_eq!(offsets, vec![(1, "1".to_string()), (2, "2".to_string())]);
}

#[tokio::test]
async fn a_retried_publish_is_delivered_once_on_the_memory_engine() {
    retried_publishes_are_delivered_once(&TestGateway::start().await).await;
}

#[tokio::test]
async fn a_retried_publish_is_delivered_once_on_redis() {
    let redis = common::redis::SHARED_REDIS.to_string();
    let t = TestGateway::start_with(redis_config(&redis, &common::redis::unique_prefix("idem")))
        .await
        .ready()
        .await;
    retried_publishes_are_delivered_once(&t).await;
}

#[tokio::test]
async fn a_refresh_that_drops_an_inbox_ends_that_subscription() {
    let t = TestGateway::start().await;
    let (mut ws, _) = RawWs::handshake(&t.ws_url(), &token("agent", 7, 1, &[3, 4])).await;
    for (id, room) in [(1, "inbox:3"), (2, "inbox:4")] {
        ws.send(&subscribe(id, room, "")).await;
        assert!(reply_to(&mut ws, id).await.error.is_none());
    }
    ws.send(&pb::ClientFrame {
        id: 3,
        kind: Some(C::Refresh(pb::RefreshToken {
            token: token("agent", 7, 1, &[4]),
        })),
    })
    .await;
    let mut ended = None;
    let mut refreshed = false;
    while ended.is_none() || !refreshed {
        match ws.recv().await.unwrap().kind {
            Some(S::Unsubscribed(u)) => ended = Some(u),
            Some(S::Reply(r)) if r.id == 3 => refreshed = r.refreshed.is_some(),
            _ => {}
        }
    }
    let ended = ended.unwrap();
    assert_eq!(ended.room, "inbox:3");
    assert_eq!(ended.error.unwrap().code, ErrorCode::PermissionDenied.code());
    t.publish(&["inbox:3"], "message.created", "\"secret\"").await;
    t.publish(&["inbox:4"], "message.created", "\"ok\"").await;
    loop {
        if let Some(S::Event(e)) = ws.recv().await.unwrap().kind {
            assert_ne!(e.room, "inbox:3", "events of the dropped inbox keep arriving");
            if e.room == "inbox:4" {
                break;
            }
        }
    }
}

#[tokio::test]
async fn tokens_without_expiry_or_beyond_the_lifetime_are_refused_unless_allowed() {
    let t = TestGateway::start().await;
    let no_exp = token_with(json!({"sub": "7", "account_id": 1, "role": "agent"}));
    let too_long =
        token_with(json!({"sub": "7", "account_id": 1, "role": "agent", "exp": now_unix() + 30 * 86_400}));
    for tok in [&no_exp, &too_long] {
        let mut ws = RawWs::connect(&t.ws_url()).await;
        ws.send(&hello(tok)).await;
        assert_eq!(
            ws.until_end().await.0.map(|d| d.code),
            Some(DisconnectCode::Unauthorized.code())
        );
    }
    let mut config = config();
    config.allow_tokens_without_exp = true;
    config.token_max_lifetime = Duration::from_secs(3600);
    let t = TestGateway::start_with(config).await;
    let (_ws, welcome) = RawWs::handshake(&t.ws_url(), &no_exp).await;
    let deadline = welcome.token_expires_at_ms as u64 / 1000;
    assert!(
        (now_unix() + 3590..=now_unix() + 3600).contains(&deadline),
        "a token without exp lasts the maximum lifetime: {deadline}"
    );
}

#[test]
fn handshake_policy_refuses_beyond_the_cap_and_retries_when_piling_up() {
    use rtgate_server::transport::webtransport::{HandshakeDecision, HandshakePolicy};
    let policy = HandshakePolicy {
        timeout: Duration::from_secs(5),
        max_in_flight: 100,
        retry_above: 10,
        max_per_ip: 0,
    };
    assert_eq!(policy.decide(0, false), HandshakeDecision::Accept);
    assert_eq!(policy.decide(10, false), HandshakeDecision::Retry);
    assert_eq!(policy.decide(10, true), HandshakeDecision::Accept);
    assert_eq!(policy.decide(100, true), HandshakeDecision::Refuse);
    let always = HandshakePolicy {
        retry_above: 0,
        ..policy
    };
    assert_eq!(always.decide(0, false), HandshakeDecision::Retry);
}

#[tokio::test]
async fn webtransport_clients_get_through_address_validation() {
    let mut config = config();
    config.quic_retry = rtgate_server::config::QuicRetry::Always;
    let t = TestGateway::start_with(config).await;
    let (client, _events) = t.client(TRANSPORTS[0], &token("agent", 7, 1, &[])).await;
    client.close();
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let mut config = config();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let t = TestGateway::start_with(config).await;
    let main = t.http.get(t.api("/metrics")).send().await.unwrap();
    assert_eq!(main.status(), 404);
    let own = t
        .http
        .get(format!("http://{}/metrics", t.gw.metrics_addr.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains("rtgate_"));
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_a_protocol_code() {
    let t = TestGateway::start().await;
    let tok = token("agent", 7, 1, &[]);
    // Raw bytes written under the WebSocket layer: an unknown opcode (masked), and a
    // client frame without a mask.
    for (bytes, code) in [
        (vec![0x83u8, 0x80, 1, 2, 3, 4], DisconnectCode::ProtocolViolation),
        (vec![0x82u8, 0x01, 0x00], DisconnectCode::ProtocolViolation),
    ] {
        let (mut ws, _) = RawWs::handshake(&t.ws_url(), &tok).await;
        let tcp = match ws.ws.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
            _ => unreachable!("plain ws"),
        };
        tcp.write_all(&bytes).await.unwrap();
        let (disconnect, close) = ws.until_end().await;
        assert_eq!(disconnect.map(|d| d.code), Some(code.code()), "{bytes:?}");
        assert_eq!(close, Some(code.code() as u16));
    }
}

#[tokio::test]
async fn quic_connections_that_never_open_a_session_are_dropped_at_the_deadline() {
    let mut config = config();
    config.handshake_timeout = Duration::from_millis(500);
    config.max_handshakes = 2;
    config.max_handshakes_per_ip = 0;
    config.quic_retry = rtgate_server::config::QuicRetry::Never;
    let t = TestGateway::start_with(config).await;
    let started = Instant::now();
    let a = common::quic::silent_connection(t.gw.wt_addr)
        .await
        .expect("handshake");
    let b = common::quic::silent_connection(t.gw.wt_addr)
        .await
        .expect("handshake");
    // Two handshakes in progress: the cap.
    let refused = common::quic::silent_connection(t.gw.wt_addr).await;
    assert!(refused.is_err(), "a third handshake beyond the cap was accepted");
    for conn in [a, b] {
        tokio::time::timeout(Duration::from_secs(3), conn.closed())
            .await
            .expect("closed by the gateway at the deadline");
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Their slots came back: a real client gets in.
    let (client, _events) = t.client(TRANSPORTS[0], &token("agent", 7, 1, &[])).await;
    client.close();
}

#[tokio::test]
async fn one_address_cannot_take_every_handshake_slot() {
    let mut config = config();
    config.handshake_timeout = Duration::from_secs(3);
    config.max_handshakes_per_ip = 2;
    config.quic_retry = rtgate_server::config::QuicRetry::Never;
    let t = TestGateway::start_with(config).await;
    // Silent handshakes from the test's address hold its two slots...
    let _a = common::quic::silent_connection(t.gw.wt_addr)
        .await
        .expect("handshake");
    let _b = common::quic::silent_connection(t.gw.wt_addr)
        .await
        .expect("handshake");
    assert!(
        common::quic::silent_connection(t.gw.wt_addr).await.is_err(),
        "a third handshake from the same address was accepted"
    );
    // ...and a client from another address is not held up by them.
    let other = common::quic::silent_connection_from([127, 0, 0, 3], t.gw.wt_addr).await;
    assert!(other.is_ok(), "{other:?}");
}

#[tokio::test]
async fn webtransport_sessions_end_with_the_close_capsule_carrying_the_code() {
    let t = TestGateway::start().await;
    let (mut wt, _) =
        common::raw::RawWt::handshake(&t.wt_url(), t.cert_hash(), &token("agent", 7, 1, &[])).await;
    let resp = t
        .http
        .post(t.api("/api/v1/disconnect"))
        .bearer_auth(API_KEY)
        .json(&json!({"userId": "7", "reason": "account suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        wt.until_end().await.map(|d| d.code),
        Some(DisconnectCode::Kicked.code())
    );
    // The session's end, as the WebTransport layer reports it: from the capsule.
    let err = tokio::time::timeout(Duration::from_secs(3), wt.connection.accept_uni())
        .await
        .expect("the session ends")
        .expect_err("no stream after the close");
    match err {
        wtransport::error::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.code().into_inner(),
                u64::from(DisconnectCode::Kicked.code())
            );
            assert_eq!(close.reason(), b"account suspended");
        }
        other => panic!("closed without the session-close capsule: {other:?}"),
    }
    // The client ended the QUIC connection itself, on the capsule: the gateway's own QUIC
    // close (a fallback) never came first.
    let quic = wt.connection.quic_connection().close_reason();
    assert!(
        matches!(quic, Some(wtransport::quinn::ConnectionError::LocallyClosed)),
        "the QUIC connection was closed by the gateway before the capsule: {quic:?}"
    );
}
