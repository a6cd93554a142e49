//! The server API: API key checks, protobuf and JSON bodies, validation, room info.

mod common;

use common::*;
use prost::Message as _;
use rtgate_protocol::pb;
use serde_json::json;

#[tokio::test]
async fn the_api_key_is_required_and_checked() {
    let t = TestGateway::start().await;
    let body = json!({ "rooms": ["public:1:a"], "event": { "name": "x" } });
    for key in [None, Some("wrong"), Some(""), Some("test-api-key-x")] {
        let mut req = t.http.post(t.api("/api/v1/publish")).json(&body);
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{key:?}");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(err["code"], 401);
    }
    for path in ["/api/v1/rooms/public:1:a"] {
        assert_eq!(t.http.get(t.api(path)).send().await.unwrap().status(), 401);
    }
    assert_eq!(
        t.http
            .post(t.api("/api/v1/disconnect"))
            .json(&json!({"userId": "1"}))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Health needs no key.
    assert_eq!(t.http.get(t.api("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(t.http.get(t.api("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn publish_accepts_protobuf_and_json_and_validates() {
    let t = TestGateway::start().await;
    let (client, mut events) = t.client(TRANSPORTS[0], &token("agent", 7, 1, &[3])).await;
    client.subscribe("inbox:3", None).await.unwrap();

    let req = pb::PublishRequest {
        rooms: vec!["inbox:3".into(), "public:1:b".into()],
        event: Some(pb::Event {
            name: "message.created".into(),
            account_id: 1,
            payload: Some(pb::event::Payload::Message(pb::Message {
                id: 99,
                content: "hello".into(),
                conversation_id: 5,
                ..Default::default()
            })),
            ..Default::default()
        }),
    };
    let resp = t
        .http
        .post(t.api("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .header("Content-Type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let out = pb::PublishResponse::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(out.positions.len(), 2);
    assert_eq!(out.positions[0].room, "inbox:3");
    assert_eq!(out.positions[0].position.as_ref().unwrap().offset, 1);
    loop {
        if let rtgate_client::ClientEvent::Event { room, event, .. } = next(&mut events).await {
            assert_eq!(room.as_str(), "inbox:3");
            assert!(!event.id.is_empty(), "the gateway assigns an id");
            assert!(event.occurred_at_ms > 0);
            match event.payload {
                Some(pb::event::Payload::Message(m)) => {
                    assert_eq!((m.id, m.content.as_str()), (99, "hello"))
                }
                other => panic!("{other:?}"),
            }
            break;
        }
    }

    // JSON with typed payloads (protobuf JSON mapping), answered in protobuf when asked.
    let resp = t
        .http
        .post(t.api("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .header("Accept", "application/x-protobuf")
        .json(&json!({
            "rooms": ["inbox:3"],
            "event": { "id": "e-2", "name": "conversation.updated", "accountId": 1,
                       "conversation": { "id": 5, "status": "CONVERSATION_STATUS_RESOLVED", "labels": ["vip"] } }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out = pb::PublishResponse::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(out.positions[0].position.as_ref().unwrap().offset, 2);
    loop {
        if let rtgate_client::ClientEvent::Event { event, offset, .. } = next(&mut events).await {
            assert_eq!((offset, event.id.as_str()), (2, "e-2"));
            match event.payload {
                Some(pb::event::Payload::Conversation(c)) => {
                    assert_eq!(c.status(), pb::ConversationStatus::Resolved);
                    assert_eq!(c.labels, vec!["vip"]);
                }
                other => panic!("{other:?}"),
            }
            break;
        }
    }

    let bad = [
        (
            json!({ "rooms": ["inbox:03"], "event": { "name": "x" } }),
            422,
            422,
        ),
        (json!({ "rooms": ["inbox:3"] }), 400, 400),
        (json!({ "rooms": [], "event": { "name": "x" } }), 400, 400),
        (json!({ "rooms": ["inbox:3"], "event": { "name": "" } }), 400, 400),
        (json!({ "rooms": "inbox:3", "event": { "name": "x" } }), 400, 400),
    ];
    for (body, status, code) in bad {
        let resp = t
            .http
            .post(t.api("/api/v1/publish"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{body}");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(err["code"], code, "{body}");
    }
    let resp = t
        .http
        .post(t.api("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .header("Content-Type", "application/x-protobuf")
        .body(vec![0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err = pb::ApiError::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(err.code, 400);
    client.close();
}

#[tokio::test]
async fn room_info_reports_subscribers_and_position() {
    let t = TestGateway::start().await;
    let (a, _ea) = t.client(TRANSPORTS[0], &token("agent", 7, 1, &[])).await;
    let (b, _eb) = t.client(TRANSPORTS[1], &token("agent", 8, 1, &[])).await;
    a.subscribe("public:1:info", None).await.unwrap();
    b.subscribe("public:1:info", None).await.unwrap();
    t.publish(&["public:1:info"], "client.x", "1").await;
    t.publish(&["public:1:info"], "client.x", "2").await;
    let info: serde_json::Value = t.get_json("/api/v1/rooms/public:1:info").await;
    assert_eq!(info["subscribers"], 2);
    assert_eq!(info["offset"], "2");
    assert!(!info["epoch"].as_str().unwrap().is_empty());
    let resp = t
        .http
        .get(t.api("/api/v1/rooms/nope"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    for bad in ["x", "0", "007", "+7", "contact:x"] {
        let resp = t
            .http
            .post(t.api("/api/v1/disconnect"))
            .bearer_auth(API_KEY)
            .json(&json!({ "userId": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
    a.close();
    b.close();
}

#[tokio::test]
async fn the_dev_certificate_hash_is_served() {
    let t = TestGateway::start().await;
    let body: serde_json::Value = t
        .http
        .get(t.api("/dev/cert-hash"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["algorithm"], "sha-256");
    assert_eq!(body["hex"], t.gw.cert_sha256);
    assert_eq!(body["bytes"].as_array().unwrap().len(), 32);
    assert_eq!(body["webtransport_port"], t.gw.wt_addr.port());
}
