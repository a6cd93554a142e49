//! The admin console's server side over real sockets: the page only where it is turned
//! on, its API behind the API key, its token joining only the console room, the live
//! figures every node publishes there, and the room browser.

mod common;

use std::time::Duration;

use common::raw::{RawWs, subscribe};
use common::*;
use rtgate_protocol::pb::server_frame::Kind as S;

#[tokio::test]
async fn the_page_is_served_only_where_it_is_turned_on() {
    let mut off = config();
    off.console = Some(false);
    let off = TestGateway::start_with(off).await;
    assert_eq!(
        off.http.get(off.api("/admin/")).send().await.unwrap().status(),
        404
    );

    let on = TestGateway::start().await;
    let page = on.http.get(on.api("/admin/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("rtgate console"));
    let script = on.http.get(on.api("/admin/console.js")).send().await.unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    // Its data is the server API's: nothing without the key.
    for path in [
        "/api/v1/console/token",
        "/api/v1/console/rooms",
        "/api/v1/console/history/user:1",
    ] {
        let status = on.http.get(on.api(path)).send().await.unwrap().status();
        assert_eq!(status, 401, "{path}");
    }
}

#[tokio::test]
async fn a_console_token_joins_the_console_room_only_and_the_figures_arrive_there() {
    let gw = TestGateway::start().await;
    let minted = gw.get_json("/api/v1/console/token").await;
    let room = minted["room"].as_str().unwrap().to_string();
    let (mut ws, welcome) = RawWs::handshake(&gw.ws_url(), minted["token"].as_str().unwrap()).await;
    let rooms: Vec<&str> = welcome.rooms.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(
        rooms,
        [room.as_str()],
        "the console room, and no user or account room"
    );
    ws.send(&subscribe(1, "account:1", "")).await;

    let mut refused = false;
    let mut figures = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(refused && figures.is_some()) && tokio::time::Instant::now() < deadline {
        match ws.recv().await.expect("the console stays connected").kind {
            Some(S::Reply(r)) if r.id == 1 => refused = r.error.is_some(),
            Some(S::Ephemeral(e)) if e.room == room => figures = e.event,
            _ => {}
        }
    }
    assert!(refused, "the console cannot join backend rooms");
    let event = figures.expect("figures within a few seconds");
    assert_eq!(event.name, "console.figures");
    let json: serde_json::Value = serde_json::from_str(&event.json).unwrap();
    assert_eq!(json["node"], gw.gw.node.session.node_id.as_str());
    let metrics = json["metrics"].as_str().unwrap();
    assert!(
        metrics.contains("rtgate_connections{transport=\"websocket\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("# HELP"));

    // A backend's agent cannot join the console room.
    let (mut agent, _) = RawWs::handshake(&gw.ws_url(), &token("admin", 7, 1, &[3])).await;
    agent.send(&subscribe(2, &room, "")).await;
    loop {
        if let Some(S::Reply(r)) = agent.recv().await.unwrap().kind {
            assert!(r.error.is_some(), "{r:?}");
            break;
        }
    }
}

#[tokio::test]
async fn the_room_browser_lists_who_is_subscribed_and_recent_history() {
    let gw = TestGateway::start().await;
    let (_ws, _) = RawWs::handshake(&gw.ws_url(), &token("agent", 7, 1, &[3])).await;
    for n in 1..=25 {
        gw.publish(&["inbox:3"], "message.created", &format!("{{\"n\":{n}}}"))
            .await;
    }
    let rooms = gw.get_json("/api/v1/console/rooms").await;
    let user7 = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "user:7")
        .expect("user:7 is listed");
    assert_eq!(user7["members"], serde_json::json!(["user:7"]));

    let history = gw.get_json("/api/v1/console/history/inbox:3?limit=5").await;
    assert_eq!(history["offset"], 25);
    let offsets: Vec<u64> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [21, 22, 23, 24, 25]);
    assert_eq!(history["events"][4]["json"], "{\"n\":25}");
    let empty = gw.get_json("/api/v1/console/history/inbox:4").await;
    assert_eq!(empty["events"], serde_json::json!([]));
}

#[tokio::test]
async fn a_console_on_one_node_sees_the_figures_of_every_node() {
    use common::redis::unique_prefix;
    let prefix = unique_prefix("console");
    let a = TestGateway::on_shared_redis(&prefix).await;
    let b = TestGateway::on_shared_redis(&prefix).await;
    // Minted by one node, taken by the other: the nodes share the key.
    let minted = b.get_json("/api/v1/console/token").await;
    let room = minted["room"].as_str().unwrap().to_string();
    let (mut ws, _) = RawWs::handshake(&a.ws_url(), minted["token"].as_str().unwrap()).await;
    let mut nodes = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes.len() < 2 && tokio::time::Instant::now() < deadline {
        if let Some(S::Ephemeral(e)) = ws.recv().await.expect("connected").kind
            && e.room == room
        {
            let json: serde_json::Value = serde_json::from_str(&e.event.unwrap().json).unwrap();
            nodes.insert(json["node"].as_str().unwrap().to_string());
        }
    }
    let want: std::collections::BTreeSet<String> = [&a, &b]
        .iter()
        .map(|g| g.gw.node.session.node_id.clone())
        .collect();
    assert_eq!(nodes, want);
}
