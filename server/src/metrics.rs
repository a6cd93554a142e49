//! Prometheus metrics. Counters and histograms are recorded where things happen; gauges
//! (connections, rooms, engine health) are read from the node when `/metrics` is scraped.

use std::sync::OnceLock;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::node::Node;
use crate::transport::TransportKind;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!("rtgate_connections", "Open connections, by transport");
    describe_counter!("rtgate_connects_total", "Connections accepted, by transport");
    describe_counter!(
        "rtgate_disconnects_total",
        "Connections closed, by transport and reason"
    );
    describe_gauge!("rtgate_rooms", "Rooms with subscribers on this node");
    describe_gauge!("rtgate_subscriptions", "Room subscriptions on this node");
    describe_counter!(
        "rtgate_events_published_total",
        "Events published, by source (api, client)"
    );
    describe_counter!(
        "rtgate_events_delivered_total",
        "Room events handed to subscribers"
    );
    describe_counter!(
        "rtgate_ephemeral_delivered_total",
        "Ephemeral events (typing) handed to subscribers"
    );
    describe_counter!(
        "rtgate_bytes_sent_total",
        Unit::Bytes,
        "Frame bytes written to clients, by transport"
    );
    describe_counter!(
        "rtgate_bytes_received_total",
        Unit::Bytes,
        "Frame bytes read from clients, by transport"
    );
    describe_histogram!(
        "rtgate_delivery_seconds",
        Unit::Seconds,
        "From an event reaching this node's fan-out to its write on a client's transport"
    );
    describe_histogram!(
        "rtgate_publish_seconds",
        Unit::Seconds,
        "Duration of a server-API publish (assign offset, store, broadcast)"
    );
    describe_counter!(
        "rtgate_send_queue_overflows_total",
        "Connections whose send queue overflowed"
    );
    describe_counter!("rtgate_auth_failures_total", "Refused tokens, by reason");
    describe_gauge!("rtgate_engine_ready", "1 when the engine (Redis) is reachable");
    describe_counter!(
        "rtgate_engine_errors_total",
        "Failed or timed-out engine (Redis) calls"
    );
    describe_counter!(
        "rtgate_engine_reconnects_total",
        "Engine (Redis) pub/sub reconnections"
    );
    describe_counter!(
        "rtgate_events_ingested_total",
        "Domain events taken in, by source (http, stream) and outcome"
    );
    describe_counter!(
        "rtgate_listener_events_total",
        "Domain events a listener handled, skipped (by reason) or failed on"
    );
    describe_histogram!(
        "rtgate_event_lag_seconds",
        Unit::Seconds,
        "From a domain event's occurred_at to a listener having handled it"
    );
    describe_counter!(
        "rtgate_events_dead_lettered_total",
        "Domain events given up by the bus"
    );
    describe_counter!(
        "rtgate_outbound_queued_total",
        "Outbound deliveries queued, by destination kind"
    );
    describe_counter!(
        "rtgate_outbound_attempts_total",
        "Outbound delivery attempts, by destination kind and outcome (delivered, retry, failed)"
    );
    describe_histogram!(
        "rtgate_outbound_attempt_seconds",
        Unit::Seconds,
        "Duration of an outbound delivery attempt, by destination kind"
    );
    describe_histogram!(
        "rtgate_outbound_lag_seconds",
        Unit::Seconds,
        "From a domain event's occurred_at to its delivery, by destination kind"
    );
    describe_counter!(
        "rtgate_outbound_deferred_total",
        "Outbound deliveries put back without an attempt (breaker open, line full), by kind"
    );
    describe_gauge!(
        "rtgate_outbound_queue_depth",
        "Outbound deliveries queued (all nodes, on Redis)"
    );
    describe_gauge!(
        "rtgate_outbound_dead_letters",
        "Outbound deliveries given up and kept as dead letters"
    );
    describe_gauge!(
        "rtgate_outbound_held",
        "Outbound deliveries this node holds (in flight or waiting for their destination)"
    );
    describe_gauge!(
        "rtgate_outbound_breakers_open",
        "Destinations whose circuit breaker is open on this node"
    );
    describe_gauge!(
        "rtgate_outbound_destinations",
        "Delivery destinations mirrored into this node"
    );
    describe_counter!(
        "rtgate_outbound_replayed_total",
        "Dead letters replayed through the server API"
    );
    describe_counter!(
        "rtgate_backend_notices_total",
        "Notices to the backend (delivery_failed, command), sent or unsent"
    );
    describe_gauge!(
        "rtgate_mirror_records",
        "Records of the business listeners' mirrored configuration this node holds"
    );
    describe_histogram!(
        "rtgate_listener_state_read_seconds",
        Unit::Seconds,
        "Time a listener waited for the state it reads before deciding"
    );
    describe_counter!(
        "rtgate_commands_total",
        "Listeners' commands for the backend: sent, or already_decided (a claimed decision another event took)"
    );
}

/// Renders the metrics of `node` in Prometheus text format.
pub fn render(node: &Node) -> String {
    let handle = install();
    for transport in TransportKind::ALL {
        gauge!("rtgate_connections", "transport" => transport.label())
            .set(node.connection_count_by(transport) as f64);
    }
    let hub = node.engine.hub();
    gauge!("rtgate_rooms").set(hub.rooms() as f64);
    gauge!("rtgate_subscriptions").set(hub.subscriptions() as f64);
    gauge!("rtgate_engine_ready").set(if node.engine.is_ready() { 1.0 } else { 0.0 });
    let health = node.engine.health();
    counter!("rtgate_engine_errors_total").absolute(health.errors);
    counter!("rtgate_engine_reconnects_total").absolute(health.reconnects);
    handle.render()
}

/// Folds recorded histogram samples; called periodically so memory stays bounded.
pub fn upkeep() {
    if let Some(h) = HANDLE.get() {
        h.run_upkeep();
    }
}
