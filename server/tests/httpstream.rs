//! The HTTP fallback transport over real sockets: a streaming response for the server's
//! frames and numbered POSTs for the client's, with the same session as WebSocket —
//! through the node holding the stream or any other node.

mod common;

use std::time::Duration;

use common::raw::{RawHttp, RawWs, hello, subscribe};
use common::redis::unique_prefix;
use common::*;
use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, encode_frame};

fn ping(nonce: u64) -> pb::ClientFrame {
    pb::ClientFrame {
        id: 0,
        kind: Some(C::Ping(pb::Ping { nonce })),
    }
}

fn typing(room: &str) -> pb::ClientFrame {
    pb::ClientFrame {
        id: 0,
        kind: Some(C::Typing(pb::Typing {
            room: room.into(),
            on: true,
            private: false,
        })),
    }
}

/// The next frame that is not a presence event.
async fn next_frame(http: &mut RawHttp) -> S {
    loop {
        let kind = http.recv().await.expect("the stream is open").kind.unwrap();
        match &kind {
            S::Event(e) if e.event.as_ref().is_some_and(|e| e.name == "presence.update") => {}
            _ => return kind,
        }
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test]
async fn a_client_on_plain_http_gets_the_full_service() {
    let gw = TestGateway::start().await;
    let base = gw.api("");
    let response = reqwest::get(format!("{base}/http/stream")).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-transform")
    );
    drop(response);

    let (mut http, welcome) = RawHttp::handshake(&base, &token("agent", 7, 1, &[3])).await;
    assert_eq!(welcome.user_id, "7");
    assert_eq!(
        gw.gw
            .node
            .connection_count_by(rtgate_server::transport::TransportKind::Http),
        1
    );

    // Rooms: a subscription, an event published through the API, a Ping.
    let room = "conversation:42";
    let grant = sub_token("user:7", room, 600);
    assert_eq!(
        http.send_to(&base, &[subscribe(5, room, &grant), ping(9)]).await,
        204
    );
    let mut got_reply = false;
    let mut got_pong = false;
    while !(got_reply && got_pong) {
        match next_frame(&mut http).await {
            S::Reply(r) if r.id == 5 => {
                assert!(r.error.is_none(), "{r:?}");
                got_reply = true;
            }
            S::Pong(p) => {
                assert_eq!(p.nonce, 9);
                got_pong = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let offset = gw.publish(&[room], "message.created", "{\"n\":1}").await[0];
    match next_frame(&mut http).await {
        S::Event(e) => {
            assert_eq!((e.room.as_str(), e.offset), (room, offset));
            assert_eq!(e.event.unwrap().json, "{\"n\":1}");
        }
        other => panic!("expected the event, got {other:?}"),
    }

    // Typing from the HTTP client reaches a WebSocket client in the room, and back.
    let (mut ws, _) = RawWs::handshake(&gw.ws_url(), &token("agent", 8, 1, &[3])).await;
    ws.send(&subscribe(1, room, &sub_token("user:8", room, 600)))
        .await;
    loop {
        if let Some(S::Reply(r)) = ws.recv().await.unwrap().kind {
            assert!(r.error.is_none());
            break;
        }
    }
    assert_eq!(http.send_to(&base, &[typing(room)]).await, 204);
    loop {
        if let Some(S::Ephemeral(e)) = ws.recv().await.unwrap().kind {
            assert_eq!(e.room, room);
            break;
        }
    }
    ws.send(&typing(room)).await;
    loop {
        if let S::Ephemeral(e) = next_frame(&mut http).await {
            assert_eq!(e.room, room);
            break;
        }
    }

    // A kick ends the stream with its Disconnect.
    let status = gw
        .http
        .post(gw.api("/api/v1/disconnect"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({ "userId": "7", "reason": "bye" }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let end = http.until_end().await.expect("a Disconnect before the end");
    assert_eq!(end.code, DisconnectCode::Kicked.code());
}

#[tokio::test]
async fn sends_are_taken_once_in_order_and_bad_ones_are_refused() {
    let gw = TestGateway::start().await;
    let base = gw.api("");
    let (mut http, _) = RawHttp::handshake(&base, &token("agent", 7, 1, &[3])).await;

    // A retried batch (same number) is taken once: one Pong.
    let body = encode_frame(&ping(1)).to_vec();
    assert_eq!(http.send_raw(&base, 1, body.clone()).await, 204);
    assert_eq!(http.send_raw(&base, 1, body).await, 204);
    // A batch from the future waits for the ones before it.
    assert_eq!(
        http.send_raw(&base, 5, encode_frame(&ping(5)).to_vec()).await,
        409
    );
    http.seq = 2;
    assert_eq!(http.send_to(&base, &[ping(2)]).await, 204);
    let nonces: Vec<u64> = [next_frame(&mut http).await, next_frame(&mut http).await]
        .into_iter()
        .map(|f| match f {
            S::Pong(p) => p.nonce,
            other => panic!("expected a Pong, got {other:?}"),
        })
        .collect();
    assert_eq!(nonces, [1, 2], "each batch once, in order");

    // Not a session, not a number, too large, too many frames.
    let bogus = format!("{:064x}-{}", 7u8, gw.gw.node.session.node_id);
    let wide = format!("{}é{}-n1", "a".repeat(31), "a".repeat(31));
    for (session, seq, want) in [
        (bogus.as_str(), "0", 404),
        ("nothing", "0", 404),
        (wide.as_str(), "0", 400),
        (http.session.as_str(), "x", 400),
    ] {
        let status = http
            .http
            .post(format!("{base}/http/send"))
            .header("rtgate-session", session)
            .header("rtgate-seq", seq)
            .body(vec![0u8])
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), want, "{session} {seq}");
    }
    let status = http
        .http
        .post(format!("{base}/http/send"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400, "no headers");
    let huge = vec![0u8; gw.gw.node.session.max_frame_size * 4 + 1];
    assert_eq!(http.send_raw(&base, http.seq, huge).await, 413);
    let many: Vec<u8> = (0..65).flat_map(|n| encode_frame(&ping(n)).to_vec()).collect();
    assert_eq!(http.send_raw(&base, http.seq, many).await, 413);

    // A batch that is not frames ends the session with a framing error.
    assert_eq!(http.send_raw(&base, http.seq, vec![0x05, 1, 2]).await, 400);
    let end = http.until_end().await.expect("a Disconnect");
    assert_eq!(end.code, DisconnectCode::BadFrame.code(), "{end:?}");
    assert_eq!(
        http.send_raw(&base, http.seq + 1, vec![]).await,
        404,
        "the session is gone"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_is_closed_and_one_that_never_says_hello_is_timed_out() {
    let mut config = config();
    config.hello_timeout = Duration::from_millis(300);
    let gw = TestGateway::start_with(config).await;
    let base = gw.api("");
    let node = gw.gw.node.clone();
    let (http, _) = RawHttp::handshake(&base, &token("agent", 7, 1, &[3])).await;
    assert_eq!(node.http_streams.len(), 1);
    drop(http);
    wait_for("the dropped stream's session closing", || {
        node.connection_count() == 0 && node.http_streams.is_empty()
    })
    .await;

    let mut silent = RawHttp::open(&base).await;
    let end = silent.until_end().await.expect("a Disconnect");
    assert_eq!(end.code, DisconnectCode::HelloTimeout.code(), "{end:?}");
    wait_for("the silent session going", || node.http_streams.is_empty()).await;
}

#[tokio::test]
async fn pages_of_any_origin_may_use_it() {
    let gw = TestGateway::start().await;
    let preflight = gw
        .http
        .request(reqwest::Method::OPTIONS, gw.api("/http/send"))
        .header("origin", "https://customer.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,rtgate-session,rtgate-seq",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    for name in ["content-type", "rtgate-session", "rtgate-seq"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert_eq!(
        h["access-control-max-age"], "600",
        "one fixed URL: the preflight is cached"
    );

    let stream = gw
        .http
        .get(gw.api("/http/stream"))
        .header("origin", "https://customer.example")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        stream.headers()["access-control-expose-headers"],
        "rtgate-session"
    );
}

#[tokio::test]
async fn sends_through_another_node_reach_the_session_in_order() {
    let prefix = unique_prefix("httpfb");
    let a = TestGateway::on_shared_redis(&prefix).await;
    let b = TestGateway::on_shared_redis(&prefix).await;
    let (base_a, base_b) = (a.api(""), b.api(""));
    let mut http = RawHttp::open(&base_a).await;
    // Hello through node b, then batches alternating between the nodes.
    assert_eq!(
        http.send_to(&base_b, &[hello(&token("agent", 7, 1, &[3]))]).await,
        202
    );
    assert!(matches!(next_frame(&mut http).await, S::Welcome(_)));
    for n in 1..=20u64 {
        let via = if n % 2 == 0 { &base_a } else { &base_b };
        let status = http.send_to(via, &[ping(n)]).await;
        assert!(status == 202 || status == 204, "{status}");
    }
    for n in 1..=20u64 {
        match next_frame(&mut http).await {
            S::Pong(p) => assert_eq!(p.nonce, n),
            other => panic!("expected Pong {n}, got {other:?}"),
        }
    }
    assert_eq!(
        b.gw.node.connection_count(),
        0,
        "the session stays on the node of its stream"
    );
    // A forged session id is refused where it lands, not passed on.
    let forged = format!("{:064x}-{}", 1u8, a.gw.node.session.node_id);
    let status = http
        .http
        .post(format!("{base_b}/http/send"))
        .header("rtgate-session", &forged)
        .header("rtgate-seq", "0")
        .body(encode_frame(&ping(1)).to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_stream_the_gateway_cannot_take_is_one_disconnect_and_no_session() {
    let mut config = config();
    config.max_pending_per_ip = 1;
    let gw = TestGateway::start_with(config).await;
    let base = gw.api("");
    // The first stream holds the address's one pending slot (no Hello yet).
    let _first = RawHttp::open(&base).await;
    let refused = reqwest::get(format!("{base}/http/stream")).await.unwrap();
    assert_eq!(refused.status(), 200);
    assert!(refused.headers().get("rtgate-session").is_none());
    let body = refused.bytes().await.unwrap();
    let mut decoder = rtgate_protocol::FrameDecoder::new(1 << 20);
    decoder.push(&body);
    let frame = decoder.next_frame().unwrap().expect("one frame");
    let Some(S::Disconnect(d)) = <pb::ServerFrame as prost::Message>::decode(&frame[..])
        .unwrap()
        .kind
    else {
        panic!("expected a Disconnect");
    };
    assert_eq!(d.code, DisconnectCode::Overloaded.code());
    assert_eq!(decoder.next_frame().unwrap(), None, "and nothing more");
}
