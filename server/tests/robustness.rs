//! Bad input never crashes anything: malformed and oversized frames, frames out of order
//! and a missing Hello each close the connection with their own code; slow consumers are
//! cut off without slowing anyone else.

mod common;

use std::time::Duration;

use common::raw::{RawWs, RawWt, RoomStream, hello, subscribe};
use common::*;
use prost::Message as _;
use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, encode_frame};

fn ping() -> pb::ClientFrame {
    pb::ClientFrame {
        id: 0,
        kind: Some(C::Ping(pb::Ping { nonce: 1 })),
    }
}

#[tokio::test]
async fn malformed_and_misplaced_frames_close_with_their_code_over_websocket() {
    let t = TestGateway::start().await;
    let tok = token("agent", 7, 1, &[]);
    let too_big = vec![0x0a; 64 * 1024 + 1];
    let cases: Vec<(Vec<Vec<u8>>, DisconnectCode)> = vec![
        (vec![vec![0xff, 0xff, 0xff]], DisconnectCode::BadFrame),
        (vec![too_big], DisconnectCode::FrameTooLarge),
        (vec![ping().encode_to_vec()], DisconnectCode::ProtocolViolation),
        (
            vec![hello(&tok).encode_to_vec(), hello(&tok).encode_to_vec()],
            DisconnectCode::ProtocolViolation,
        ),
        (
            vec![hello(&tok).encode_to_vec(), vec![0x12, 0x05, 0x01]],
            DisconnectCode::BadFrame,
        ),
    ];
    for (frames, code) in cases {
        let mut ws = RawWs::connect(&t.ws_url()).await;
        for f in frames {
            ws.send_bytes(f).await;
        }
        let (disconnect, close) = ws.until_end().await;
        assert_eq!(disconnect.map(|d| d.code), Some(code.code()), "{code}");
        assert_eq!(close, Some(code.code() as u16));
    }
    // Text messages are refused too.
    let mut ws = RawWs::connect(&t.ws_url()).await;
    futures::SinkExt::send(&mut ws.ws, tokio_tungstenite::tungstenite::Message::text("{}"))
        .await
        .unwrap();
    assert_eq!(
        ws.until_end().await.0.unwrap().code,
        DisconnectCode::BadFrame.code()
    );
    // The gateway is unharmed.
    let (_ws, welcome) = RawWs::handshake(&t.ws_url(), &tok).await;
    assert_eq!(welcome.user_id, "7");
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_with_their_code_over_webtransport() {
    let t = TestGateway::start().await;
    let tok = token("agent", 7, 1, &[]);
    let mut oversized_prefix = Vec::new();
    prost::encode_length_delimiter(10 << 20, &mut oversized_prefix).unwrap();
    let cases: Vec<(Vec<u8>, DisconnectCode)> = vec![
        (vec![0x03, 0xff, 0xff, 0xff], DisconnectCode::BadFrame),
        (vec![0xff; 11], DisconnectCode::BadFrame),
        (oversized_prefix, DisconnectCode::FrameTooLarge),
        (encode_frame(&ping()).to_vec(), DisconnectCode::ProtocolViolation),
    ];
    for (bytes, code) in cases {
        let mut wt = RawWt::connect(&t.wt_url(), t.cert_hash()).await;
        wt.send_bytes(&bytes).await;
        assert_eq!(wt.until_end().await.map(|d| d.code), Some(code.code()), "{code}");
    }
    let (_wt, welcome) = RawWt::handshake(&t.wt_url(), t.cert_hash(), &tok).await;
    assert_eq!(welcome.user_id, "7");
}

#[tokio::test]
async fn a_connection_that_does_not_say_hello_is_closed() {
    let mut config = config();
    config.hello_timeout = Duration::from_millis(300);
    let t = TestGateway::start_with(config).await;
    let mut ws = RawWs::connect(&t.ws_url()).await;
    let (disconnect, close) = ws.until_end().await;
    assert_eq!(disconnect.unwrap().code, DisconnectCode::HelloTimeout.code());
    assert_eq!(close, Some(DisconnectCode::HelloTimeout.code() as u16));

    // Over WebTransport: with the control stream open but silent, and without it.
    let mut wt = RawWt::connect(&t.wt_url(), t.cert_hash()).await;
    wt.send_bytes(&[]).await;
    assert_eq!(
        wt.until_end().await.unwrap().code,
        DisconnectCode::HelloTimeout.code()
    );
}

fn big_payload(n: usize) -> String {
    format!("\"{}\"", "x".repeat(n))
}

#[tokio::test]
async fn slow_consumers_are_disconnected_without_delaying_others() {
    let mut config = config();
    config.send_queue_bytes = 256 * 1024;
    config.max_event_size = 64 * 1024;
    let t = TestGateway::start_with(config).await;
    let tok = token("agent", 7, 1, &[]);
    // One WebSocket and one WebTransport client that never read, one reader.
    let (mut slow_ws, _) = RawWs::handshake(&t.ws_url(), &tok).await;
    slow_ws.send(&subscribe(1, "public:1:flood", "")).await;
    assert!(matches!(slow_ws.recv().await.unwrap().kind, Some(S::Reply(_))));
    let (mut slow_wt, _) = RawWt::handshake(&t.wt_url(), t.cert_hash(), &tok).await;
    slow_wt.send(&subscribe(1, "public:1:flood", "")).await;
    assert!(matches!(slow_wt.recv().await.unwrap().kind, Some(S::Reply(_))));
    let (reader, mut events) = t.client(TRANSPORTS[1], &tok).await;
    reader.subscribe("public:1:flood", None).await.unwrap();

    let payload = big_payload(32 * 1024);
    for _ in 0..400 {
        t.publish(&["public:1:flood"], "client.flood", &payload).await;
    }
    for n in 1..=400u64 {
        assert_eq!(next_room_event(&mut events).await.1, n);
    }
    let (disconnect, close) = slow_ws.until_end().await;
    assert_eq!(disconnect.unwrap().code, DisconnectCode::SlowConsumer.code());
    assert_eq!(close, Some(DisconnectCode::SlowConsumer.code() as u16));
    let d = slow_wt.until_end().await.unwrap();
    assert_eq!(d.code, DisconnectCode::SlowConsumer.code());
    assert!(d.reconnect);
}

#[tokio::test]
async fn a_room_whose_stream_is_not_read_does_not_delay_another_room() {
    let mut config = config();
    config.send_queue_bytes = 64 << 20;
    let t = TestGateway::start_with(config).await;
    let (mut wt, _) = RawWt::handshake(&t.wt_url(), t.cert_hash(), &token("agent", 7, 1, &[])).await;

    wt.send(&subscribe(1, "public:1:busy", "")).await;
    assert!(matches!(wt.recv().await.unwrap().kind, Some(S::Reply(_))));
    t.publish(&["public:1:busy"], "client.x", "0").await;
    let mut busy = RoomStream::accept(&wt.connection).await;
    assert_eq!(busy.next_event().await.room, "public:1:busy");

    wt.send(&subscribe(2, "public:1:quiet", "")).await;
    assert!(matches!(wt.recv().await.unwrap().kind, Some(S::Reply(_))));
    t.publish(&["public:1:quiet"], "client.x", "0").await;
    let mut quiet = RoomStream::accept(&wt.connection).await;
    assert_eq!(quiet.next_event().await.room, "public:1:quiet");

    // Far more than the stream's flow-control window, never read.
    let payload = big_payload(32 * 1024);
    for _ in 0..200 {
        t.publish(&["public:1:busy"], "client.flood", &payload).await;
    }
    for n in 2..=20u64 {
        t.publish(&["public:1:quiet"], "client.x", &n.to_string()).await;
        let e = tokio::time::timeout(Duration::from_secs(2), quiet.next_event())
            .await
            .expect("the quiet room is not held up by the busy one");
        assert_eq!((e.room.as_str(), e.offset), ("public:1:quiet", n));
    }
    // The busy room's events are all there, in order, once read.
    for n in 2..=201u64 {
        assert_eq!(busy.next_event().await.offset, n);
    }
}
