//! The admin console: a page the gateway serves at `/admin/` (with `--console`), for the
//! people who run it. The page holds no secret: it asks for the API key and does
//! everything through the server API. Its live figures come over rtgate's own client:
//! the page connects with a console token (minted by `GET /api/v1/console/token`) and
//! joins the console room, to which every node publishes its `/metrics` figures once a
//! second while a console watches: a node whose own connections include a console says
//! so to the others every other second (`ControlMessage::ConsoleWatched`).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rtgate_protocol::pb;

use crate::engine::with_timeout;
use crate::node::Node;

/// How long a node keeps publishing after another said a console watches, in ms.
const WATCH_MS: u64 = 3000;

/// Until when a console on another node watches (unix ms; 0: none).
#[derive(Debug, Default)]
pub struct Watch(std::sync::atomic::AtomicU64);

impl Watch {
    /// Another node said, at `now_ms`, that a console watches.
    pub fn watched_from_afar(&self, now_ms: u64) {
        self.0
            .fetch_max(now_ms + WATCH_MS, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a console on another node watches at `now_ms`.
    pub fn is_watched(&self, now_ms: u64) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) > now_ms
    }
}

/// The name of the events carrying a node's figures.
pub const FIGURES_EVENT: &str = "console.figures";

/// The metric families the console shows.
pub const FAMILIES: &[&str] = &[
    "rtgate_connections",
    "rtgate_rooms",
    "rtgate_subscriptions",
    "rtgate_events_published_total",
    "rtgate_events_delivered_total",
    "rtgate_events_ingested_total",
    "rtgate_delivery_seconds",
    "rtgate_disconnects_total",
    "rtgate_send_queue_overflows_total",
    "rtgate_engine_ready",
    "rtgate_engine_errors_total",
    "rtgate_engine_reconnects_total",
    "rtgate_outbound_queue_depth",
];

/// The page, its script and its style, built into the binary.
pub const PAGE: &str = include_str!("../console/index.html");
/// The console's script.
pub const SCRIPT: &str = include_str!("../console/console.js");
/// The console's style.
pub const STYLE: &str = include_str!("../console/console.css");

/// The samples of a Prometheus text that belong to the console's families (comments
/// dropped).
pub fn figures(text: &str) -> String {
    let mut out = String::with_capacity(text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        if FAMILIES.contains(&family) || FAMILIES.contains(&name) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The frame carrying `node`'s figures at `unix_ms`.
pub fn figures_frame(node_id: &str, unix_ms: u64, figures: &str) -> Vec<u8> {
    let json = serde_json::json!({ "node": node_id, "at": unix_ms, "metrics": figures });
    pb::ServerFrame {
        kind: Some(pb::server_frame::Kind::Ephemeral(pb::Ephemeral {
            room: crate::auth::console_room().to_string(),
            event: Some(pb::Event {
                name: FIGURES_EVENT.into(),
                json: json.to_string(),
                occurred_at_ms: unix_ms as i64,
                ..Default::default()
            }),
        })),
    }
    .encode_to_vec()
}

/// Publishes this node's figures to the console room every `every`, while a console
/// watches here or on another node; tells the other nodes while one watches here.
pub async fn run_feed(node: Arc<Node>, every: Duration) {
    let room = crate::auth::console_room();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        let here = node.engine.hub().has_subscribers(&room);
        if here && n % 2 == 0 {
            let message = crate::engine::bus::ControlMessage::ConsoleWatched {
                origin: node.session.node_id.clone(),
            };
            let _ = with_timeout(node.engine.broadcast_control(&message)).await;
        }
        if !here && !node.console_watch.is_watched(crate::connection::unix_ms()) {
            continue;
        }
        let text = figures(&crate::metrics::render(&node));
        let frame = figures_frame(&node.session.node_id, crate::connection::unix_ms(), &text);
        if let Err(err) = with_timeout(node.engine.publish_ephemeral(&room, frame.into(), None, false)).await
        {
            tracing::debug!(%err, "console figures not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_consoles_families_are_kept() {
        let text = "# HELP rtgate_connections Open connections\n\
                    rtgate_connections{transport=\"websocket\"} 3\n\
                    rtgate_connects_total{transport=\"websocket\"} 9\n\
                    rtgate_delivery_seconds_bucket{le=\"0.001\"} 5\n\
                    rtgate_delivery_seconds_sum 0.01\n\
                    rtgate_delivery_seconds_count 5\n\
                    rtgate_engine_ready 1\n\
                    rtgate_outbound_attempts_total{outcome=\"ok\"} 2\n";
        assert_eq!(
            figures(text),
            "rtgate_connections{transport=\"websocket\"} 3\n\
             rtgate_delivery_seconds_bucket{le=\"0.001\"} 5\n\
             rtgate_delivery_seconds_sum 0.01\n\
             rtgate_delivery_seconds_count 5\n\
             rtgate_engine_ready 1\n"
        );
    }

    #[test]
    fn the_frame_is_an_ephemeral_of_the_console_room() {
        let frame = pb::ServerFrame::decode(&figures_frame("n1", 7, "x 1\n")[..]).unwrap();
        let Some(pb::server_frame::Kind::Ephemeral(e)) = frame.kind else {
            panic!("{frame:?}");
        };
        assert_eq!(e.room, crate::auth::console_room().as_str());
        let event = e.event.unwrap();
        assert_eq!(event.name, FIGURES_EVENT);
        let json: serde_json::Value = serde_json::from_str(&event.json).unwrap();
        assert_eq!(
            (json["node"].as_str(), json["metrics"].as_str()),
            (Some("n1"), Some("x 1\n"))
        );
    }
}
