//! The Prometheus endpoint: its counters move with what happens.

mod common;

use std::collections::HashMap;

use common::*;
use rtgate_client::TransportPreference;

/// `name{labels}` → value, from the Prometheus text format.
async fn scrape(t: &TestGateway) -> HashMap<String, f64> {
    let text = t.metrics_text().await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_connections_events_and_failures() {
    let t = TestGateway::start().await;
    let before = scrape(&t).await;

    let (ws, mut ws_events) = t
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    let (wt, mut wt_events) = t
        .client(TransportPreference::WebTransport, &token("agent", 8, 1, &[]))
        .await;
    ws.subscribe("public:1:m", None).await.unwrap();
    wt.subscribe("public:1:m", None).await.unwrap();
    for n in 0..5 {
        t.publish(&["public:1:m"], "client.n", &n.to_string()).await;
    }
    for _ in 0..5 {
        next_room_event(&mut ws_events).await;
        next_room_event(&mut wt_events).await;
    }
    let mut bad = common::raw::RawWs::connect(&t.ws_url()).await;
    bad.send(&common::raw::hello("not-a-token")).await;
    bad.until_end().await;

    let after = scrape(&t).await;
    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert!(delta(r#"rtgate_connects_total{transport="websocket"}"#) >= 2.0);
    assert!(delta(r#"rtgate_connects_total{transport="webtransport"}"#) >= 1.0);
    assert!(get(&after, r#"rtgate_connections{transport="websocket"}"#) >= 1.0);
    assert!(get(&after, r#"rtgate_connections{transport="webtransport"}"#) >= 1.0);
    assert!(delta(r#"rtgate_events_published_total{source="api"}"#) >= 5.0);
    assert!(delta("rtgate_events_delivered_total") >= 10.0);
    assert!(delta(r#"rtgate_bytes_sent_total{transport="websocket"}"#) > 0.0);
    assert!(delta(r#"rtgate_bytes_sent_total{transport="webtransport"}"#) > 0.0);
    assert!(delta(r#"rtgate_bytes_received_total{transport="websocket"}"#) > 0.0);
    assert!(delta(r#"rtgate_auth_failures_total{reason="invalid"}"#) >= 1.0);
    assert!(delta(r#"rtgate_disconnects_total{transport="websocket",reason="unauthorized"}"#) >= 1.0);
    assert!(delta("rtgate_delivery_seconds_count") >= 10.0, "{after:?}");
    assert!(delta("rtgate_publish_seconds_count") >= 5.0);
    assert!(get(&after, "rtgate_subscriptions") >= 2.0);
    assert!(get(&after, "rtgate_rooms") >= 1.0);
    assert_eq!(get(&after, "rtgate_engine_ready"), 1.0);
    ws.close();
    wt.close();
}
