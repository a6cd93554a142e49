//! Limits and timings of sessions.

use std::time::Duration;

/// Limits and timings of sessions; shared by all sessions of a node.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Announced in `Welcome`.
    pub node_id: String,
    /// A connection must say Hello within this.
    pub hello_timeout: Duration,
    /// The client sends at least one frame this often.
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is closed as stale.
    pub stale_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame_size: usize,
    /// Most rooms one connection may join (auto rooms included).
    pub max_subscriptions: usize,
    /// How long after its token expires a connection may still send a refresh.
    pub refresh_grace: Duration,
    /// Event names clients may publish; a trailing `*` matches any suffix.
    pub client_publish: Vec<String>,
    /// Kinds of rooms clients may publish into (`conversation`, `public`, …).
    pub client_publish_rooms: Vec<String>,
    /// Client events per second one connection may publish.
    pub client_publish_rate: f64,
    /// Client events one connection may publish in a burst.
    pub client_publish_burst: f64,
    /// Largest encoded event a client may publish.
    pub max_event_size: usize,
    /// Least time between two typing frames of one connection in one room.
    pub typing_min_interval: Duration,
    /// A typing indicator not refreshed for this long is turned off by the gateway.
    pub typing_timeout: Duration,
    /// Requests per second a connection may make (pings and refreshes excepted).
    pub request_rate: f64,
    /// Requests a connection may make in a burst.
    pub request_burst: f64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            node_id: "node".into(),
            hello_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(25),
            stale_timeout: Duration::from_secs(60),
            max_frame_size: rtgate_protocol::DEFAULT_MAX_FRAME_SIZE,
            max_subscriptions: 256,
            refresh_grace: Duration::from_secs(30),
            client_publish: vec!["client.*".into()],
            client_publish_rooms: vec!["conversation".into(), "public".into()],
            client_publish_rate: 5.0,
            client_publish_burst: 20.0,
            max_event_size: 128 * 1024,
            typing_min_interval: Duration::from_millis(300),
            typing_timeout: Duration::from_secs(6),
            request_rate: 50.0,
            request_burst: 100.0,
        }
    }
}
