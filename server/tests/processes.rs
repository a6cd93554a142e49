//! What only a gateway process shows: SIGTERM's drain, running out of descriptors, being
//! killed with users online (presence), and a kick that must reach every node.

mod common;

use std::time::Duration;

use common::process::GatewayProcess;
use common::raw::{RawWs, hello};
use common::*;
use rtgate_protocol::DisconnectCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn on_sigterm_readyz_fails_first_and_clients_are_told_after_the_delay() {
    let gw = GatewayProcess::start(&["--shutdown-delay", "1s"], "").await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(gw.url("/readyz")).send().await.unwrap().status(), 200);
    let (mut ws, _) = RawWs::handshake(&gw.ws_url(), &token("agent", 7, 1, &[])).await;
    let signalled = std::time::Instant::now();
    gw.signal("TERM");
    let mut draining = false;
    // Well within the 1 s delay, however slowly a loaded machine delivers the signal.
    for _ in 0..80 {
        let r = http.get(gw.url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            assert_eq!(r.text().await.unwrap(), "draining");
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(draining, "/readyz fails while the gateway drains");
    let (disconnect, _) = ws.until_end().await;
    assert_eq!(disconnect.unwrap().code, DisconnectCode::Shutdown.code());
    assert!(
        signalled.elapsed() >= Duration::from_millis(900),
        "clients are told only after the delay"
    );
}

#[tokio::test]
async fn the_gateway_keeps_serving_through_descriptor_exhaustion() {
    // 64 descriptors: the attacker's sockets take what is left.
    let gw = GatewayProcess::start(
        &["--handshake-timeout", "1s", "--max-connections-per-ip", "0"],
        "ulimit -n 64;",
    )
    .await;
    let (mut ws, _) = RawWs::handshake(&gw.ws_url(), &token("agent", 7, 1, &[3])).await;
    ws.send(&common::raw::subscribe(1, "inbox:3", "")).await;
    assert!(ws.recv().await.is_some());
    let mut attacker = Vec::new();
    for _ in 0..120 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(gw.http_addr)).await {
            Ok(Ok(mut tcp)) => {
                let _ = tcp.write_all(b"G").await;
                attacker.push(tcp);
            }
            _ => break,
        }
    }
    // The live WebSocket keeps working while accepts fail.
    let publish = |n: u32| {
        let url = gw.url("/api/v1/publish");
        async move {
            // The API may be unreachable while descriptors are exhausted: publish through
            // a connection opened before, i.e. retry until the header deadline frees some.
            let http = reqwest::Client::new();
            for _ in 0..200 {
                if let Ok(r) = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&json!({"rooms": ["inbox:3"], "event": {"name": "m", "json": n.to_string()}}))
                    .send()
                    .await
                    && r.status() == 200
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the API never came back");
        }
    };
    publish(1).await;
    loop {
        if let Some(rtgate_protocol::pb::ServerFrame {
            kind: Some(rtgate_protocol::pb::server_frame::Kind::Event(e)),
        }) = ws.recv().await
            && e.room == "inbox:3"
        {
            break;
        }
    }
    drop(attacker);
    // And new clients get in again.
    let (_ws2, welcome) = RawWs::handshake(&gw.ws_url(), &token("agent", 8, 1, &[])).await;
    assert_eq!(welcome.user_id, "8");
}

#[tokio::test]
async fn a_killed_node_takes_its_users_offline_within_the_ttl() {
    let prefix = common::redis::unique_prefix("dead");
    let presence = [
        "--presence-ttl",
        "1s",
        "--presence-heartbeat",
        "200ms",
        "--presence-grace",
        "200ms",
    ];
    let mut flags = vec![
        "--redis",
        common::redis::SHARED_REDIS,
        "--redis-prefix",
        prefix.as_str(),
    ];
    flags.extend(presence);
    let mut doomed = GatewayProcess::start(&flags, "").await;
    // The survivor holds no connection in account 1.
    let mut config = redis_config(common::redis::SHARED_REDIS, &prefix);
    config.presence_ttl = Duration::from_secs(1);
    config.presence_heartbeat = Duration::from_millis(200);
    let survivor = TestGateway::start_with(config).await.ready().await;
    let (_ws, _) = RawWs::handshake(&doomed.ws_url(), &token("agent", 7, 1, &[])).await;
    let online = |v: &serde_json::Value| {
        v["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|e| e["id"] == "7" && e["online"] == true))
    };
    let mut seen = false;
    for _ in 0..250 {
        if online(&survivor.get_json("/api/v1/presence/1").await) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "online while its node lives");
    doomed.child.kill().unwrap();
    let _ = doomed.child.wait();
    let killed = std::time::Instant::now();
    while online(&survivor.get_json("/api/v1/presence/1").await) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "still online after the TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_disconnect_reaches_every_node_and_revoked_tokens_stay_out() {
    let prefix = common::redis::unique_prefix("kick");
    let a = TestGateway::start_with(redis_config(common::redis::SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    let b = TestGateway::start_with(redis_config(common::redis::SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    let old = token_with(
        json!({"sub": "7", "account_id": 1, "role": "agent", "iat": now_unix() - 60, "exp": now_unix() + 3600}),
    );
    let (mut on_b, _) = RawWs::handshake(&b.ws_url(), &old).await;
    let resp: serde_json::Value = a
        .http
        .post(a.api("/api/v1/disconnect"))
        .bearer_auth(API_KEY)
        .json(&json!({"userId": "7", "reason": "suspended", "revokeTokens": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["nodes"], 1, "{resp}");
    let d = on_b.until_end().await.0.unwrap();
    assert_eq!(
        (d.code, d.reason.as_str()),
        (DisconnectCode::Kicked.code(), "suspended")
    );
    // The old token is refused on every node, a token without iat too; a new one works.
    for t in [&a, &b] {
        for tok in [&old, &token("agent", 7, 1, &[])] {
            let mut ws = RawWs::connect(&t.ws_url()).await;
            ws.send(&hello(tok)).await;
            assert_eq!(
                ws.until_end().await.0.map(|d| d.code),
                Some(DisconnectCode::Unauthorized.code())
            );
        }
    }
    let fresh = token_with(
        json!({"sub": "7", "account_id": 1, "role": "agent", "iat": now_unix() + 2, "exp": now_unix() + 3600}),
    );
    let (_ws, welcome) = RawWs::handshake(&b.ws_url(), &fresh).await;
    assert_eq!(welcome.user_id, "7");
    // A node started later knows the revocation before it takes any token.
    let c = TestGateway::start_with(redis_config(common::redis::SHARED_REDIS, &prefix)).await;
    let mut ws = RawWs::connect(&c.ws_url()).await;
    ws.send(&hello(&old)).await;
    assert_eq!(
        ws.until_end().await.0.map(|d| d.code),
        Some(DisconnectCode::Unauthorized.code())
    );
    let (_ws, welcome) = RawWs::handshake(&c.ws_url(), &fresh).await;
    assert_eq!(welcome.user_id, "7");
}

#[tokio::test]
async fn a_node_killed_mid_batch_leaves_its_events_to_another_none_lost_none_twice() {
    let prefix = common::redis::unique_prefix("events-kill");
    let stream = format!("{{{prefix}:events}}");
    let flags = [
        "--redis",
        common::redis::SHARED_REDIS,
        "--redis-prefix",
        prefix.as_str(),
        "--node-id",
        "doomed",
        "--events-lease",
        "1s",
    ];
    let mut doomed = GatewayProcess::start(&flags, "").await;
    let client = ::redis::Client::open(common::redis::SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let lease = format!("{stream}:lease");
    let mut holds = false;
    for _ in 0..200 {
        let holder: Option<String> = ::redis::cmd("GET")
            .arg(&lease)
            .query_async(&mut conn)
            .await
            .unwrap();
        if holder.as_deref() == Some("doomed") {
            holds = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(holds, "the first node reads the stream");
    let mut config = redis_config(common::redis::SHARED_REDIS, &prefix);
    config.events_lease = Duration::from_secs(1);
    let survivor = TestGateway::start_with(config).await.ready().await;
    let (agent, mut events) = survivor
        .client(
            rtgate_client::TransportPreference::WebSocket,
            &token("agent", 7, 1, &[3]),
        )
        .await;
    agent.subscribe("inbox:3", None).await.unwrap();

    // Events of one conversation, in chunks, until the first node is caught holding some
    // it has read and not finished: then it is killed, and the rest keep coming.
    const TOTAL: usize = 3000;
    let event = |n: usize| {
        json!({
            "id": format!("k-{n}"), "name": "message.created", "accountId": "1",
            "conversation": { "displayId": "42", "inboxId": "3" },
            "message": { "id": n.to_string() },
            "payload": json!({ "n": n }).to_string(),
        })
        .to_string()
    };
    let mut killed_with_pending = 0;
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(100) {
        let mut pipe = ::redis::pipe();
        for n in chunk {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("json")
                .arg(event(*n))
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
        if killed_with_pending == 0 {
            let pending: ::redis::Value = ::redis::cmd("XPENDING")
                .arg(&stream)
                .arg("rtgate")
                .arg("-")
                .arg("+")
                .arg(1000)
                .arg("doomed")
                .query_async(&mut conn)
                .await
                .unwrap();
            if let ::redis::Value::Array(entries) = pending
                && !entries.is_empty()
            {
                doomed.child.kill().unwrap();
                let _ = doomed.child.wait();
                killed_with_pending = entries.len();
            }
        }
    }
    assert!(killed_with_pending > 0, "the node was killed mid-batch");

    // Every event reaches the client once, in order, through the survivor.
    let mut got = Vec::with_capacity(TOTAL);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < TOTAL {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {TOTAL} arrived",
            got.len()
        );
        if let Ok(Some(rtgate_client::ClientEvent::Event { offset, event, .. })) =
            tokio::time::timeout(Duration::from_secs(1), events.recv()).await
            && event.name == "message.created"
        {
            let data: serde_json::Value = serde_json::from_str(&event.json).unwrap();
            got.push((offset, data["n"].as_u64().unwrap() as usize));
        }
    }
    let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        offsets,
        (1..=TOTAL as u64).collect::<Vec<_>>(),
        "none lost, none twice"
    );
    let order: Vec<usize> = got.iter().map(|g| g.1).collect();
    assert_eq!(
        order,
        (0..TOTAL).collect::<Vec<_>>(),
        "in the order they were written"
    );
    agent.close();
}
