//! Several QUIC endpoints on one WebTransport port (`--wt-endpoints`, SO_REUSEPORT): the
//! kernel spreads clients over them, each endpoint serves its sessions fully, and a
//! stopping gateway drains and closes them all, leaving the port free.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rtgate_client::{ClientEvent, TransportPreference};

/// `rtgate_webtransport_handshakes_total` by endpoint.
fn handshakes_by_endpoint(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("rtgate_webtransport_handshakes_total{"))
        .filter_map(|l| {
            let endpoint = l.split("endpoint=\"").nth(1)?.split('"').next()?.to_string();
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some((endpoint, n))
        })
        .collect()
}

#[tokio::test]
async fn sessions_spread_over_several_endpoints_on_one_port_and_all_are_served() {
    let mut config = config();
    config.wt_endpoints = 4;
    let t = TestGateway::start_with(config).await;
    let mut clients = Vec::new();
    for id in 0..16u64 {
        // Each client has a QUIC endpoint (and a source port) of its own.
        let (client, events) = t
            .client(
                TransportPreference::WebTransport,
                &token("agent", 100 + id, 1, &[]),
            )
            .await;
        client.subscribe("public:1:spread", None).await.unwrap();
        clients.push((client, events));
    }
    let offset = t.publish(&["public:1:spread"], "client.n", "\"all\"").await[0];
    for (_, events) in &mut clients {
        assert_eq!(
            next_room_event(events).await,
            ("public:1:spread".into(), offset, "\"all\"".into())
        );
    }
    let spread = handshakes_by_endpoint(&t.metrics_text().await);
    assert_eq!(spread.values().sum::<f64>(), 16.0, "{spread:?}");
    assert!(
        spread.len() >= 2,
        "16 clients over 4 endpoints use more than one: {spread:?}"
    );

    // Stopping: every session is told, and every endpoint lets go of the port.
    let addr = t.gw.wt_addr;
    let stopping = tokio::spawn(t.gw.shutdown(Duration::from_secs(2)));
    for (_, events) in &mut clients {
        loop {
            if let ClientEvent::Disconnected { .. } = next(events).await {
                break;
            }
        }
    }
    stopping.await.unwrap();
    std::net::UdpSocket::bind(addr).expect("the port is free once the gateway stopped");
}
