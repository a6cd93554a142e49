//! Command-line flags, each with an environment equivalent (`rtgate --help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Parses `250ms`, `10s`, `5m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 10s, 5m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "d" => Ok(Duration::from_secs(n * 86_400)),
        _ => Err(format!("invalid duration unit in {s:?} (use ms, s, m, h or d)")),
    }
}

/// rtgate: realtime gateway over WebTransport (HTTP/3) with a WebSocket fallback.
///
/// With no configuration it runs in development mode: a self-signed certificate is
/// generated under --cert-dir, and a JWT secret and API key are made up and printed.
#[derive(Debug, Clone, Parser)]
#[command(name = "rtgate", version, about, long_about)]
pub struct Config {
    /// UDP address of the WebTransport listener. Default: [::]:4433 (dual stack) with
    /// --production, 127.0.0.1:4433 in development mode (it hands out tokens).
    #[arg(long, env = "RTGATE_WT_LISTEN")]
    pub wt_listen: Option<SocketAddr>,

    /// QUIC endpoints sharing the WebTransport port (SO_REUSEPORT), each with its own
    /// driver task, so that QUIC's packet processing runs on several cores. The kernel
    /// hands each client address to one endpoint: a client whose address changes
    /// mid-connection (NAT rebinding) reconnects instead of migrating when above 1.
    #[arg(long, env = "RTGATE_WT_ENDPOINTS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub wt_endpoints: u16,

    /// TCP address of the HTTP listener: WebSocket (/ws), server API (/api/v1), health.
    /// Default: [::]:8080 with --production, 127.0.0.1:8080 in development mode.
    #[arg(long, env = "RTGATE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Serve /metrics on this address only (not on the HTTP listener).
    #[arg(long, env = "RTGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// TLS certificate chain (PEM) for WebTransport. Without it a development
    /// certificate is generated.
    #[arg(long, env = "RTGATE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// TLS private key (PEM) matching --cert.
    #[arg(long, env = "RTGATE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Where the development certificate is kept (a relative path is taken from the
    /// working directory; the absolute path is logged at start).
    #[arg(long, env = "RTGATE_CERT_DIR", default_value = "certs")]
    pub cert_dir: PathBuf,

    /// HS256 secret for client tokens: the bytes of this text (UTF-8, not hex- or
    /// base64-decoded), at least 32 of them.
    #[arg(
        long,
        env = "RTGATE_JWT_SECRET",
        conflicts_with = "jwt_public_key",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// RS256 or ES256 public key (PEM file) for client tokens.
    #[arg(long, env = "RTGATE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim.
    #[arg(long, env = "RTGATE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long, env = "RTGATE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Bearer key for the server API (with --production: at least 24 characters).
    #[arg(long, env = "RTGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Production mode: refuse to start without a JWT key, an API key and a certificate.
    #[arg(long, env = "RTGATE_PRODUCTION")]
    pub production: bool,

    /// This node's id (default: random).
    #[arg(long, env = "RTGATE_NODE_ID")]
    pub node_id: Option<String>,

    /// Events kept per room for recovery.
    #[arg(long, env = "RTGATE_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,

    /// Age beyond which history events are dropped.
    #[arg(long, env = "RTGATE_HISTORY_TTL", default_value = "5m", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// Time a connection has to send Hello (from the WebSocket upgrade or the
    /// WebTransport session); until then it holds an unauthenticated slot.
    #[arg(long, env = "RTGATE_HELLO_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub hello_timeout: Duration,

    /// Time a client has to complete a handshake: QUIC plus the WebTransport CONNECT
    /// request, or an HTTP request's headers.
    #[arg(long, env = "RTGATE_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Time a client has to send an HTTP request body.
    #[arg(long, env = "RTGATE_HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,

    /// Heartbeat interval announced to clients; silence for 2.5× this closes a connection.
    #[arg(long, env = "RTGATE_HEARTBEAT", default_value = "25s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// Largest frame accepted, in bytes.
    #[arg(long, env = "RTGATE_MAX_FRAME_SIZE", default_value_t = 65536)]
    pub max_frame_size: usize,

    /// Most rooms per connection.
    #[arg(long, env = "RTGATE_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    pub max_subscriptions: usize,

    /// How long after expiry a connection may still refresh its token.
    #[arg(long, env = "RTGATE_REFRESH_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub refresh_grace: Duration,

    /// Bytes queued for one connection before it is disconnected as a slow consumer.
    #[arg(long, env = "RTGATE_SEND_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub send_queue_bytes: usize,

    /// Most concurrent authenticated connections (past Hello).
    #[arg(long, env = "RTGATE_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most connections waiting for their Hello, in all (a budget of their own, so that
    /// silent sockets never take authenticated slots).
    #[arg(long, env = "RTGATE_MAX_PENDING_CONNECTIONS", default_value_t = 4096)]
    pub max_pending_connections: usize,

    /// Most connections waiting for their Hello from one client address.
    #[arg(long, env = "RTGATE_MAX_PENDING_PER_IP", default_value_t = 256)]
    pub max_pending_per_ip: usize,

    /// Most open connections from one client address: TCP connections (HTTP and
    /// WebSocket) and WebTransport sessions each count. Behind a proxy every client has the
    /// proxy's address: raise it there.
    #[arg(long, env = "RTGATE_MAX_CONNECTIONS_PER_IP", default_value_t = 4096)]
    pub max_connections_per_ip: usize,

    /// Most authenticated connections of one user or contact.
    #[arg(long, env = "RTGATE_MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,

    /// New TCP connections and QUIC handshakes accepted per second (beyond, they wait in
    /// the kernel's backlog or are refused).
    #[arg(long, env = "RTGATE_ACCEPT_RATE", default_value_t = 2000.0)]
    pub accept_rate: f64,

    /// Most QUIC handshakes in progress; beyond, new ones are refused.
    #[arg(long, env = "RTGATE_MAX_HANDSHAKES", default_value_t = 1024)]
    pub max_handshakes: usize,

    /// Most QUIC handshakes in progress from one client address.
    #[arg(long, env = "RTGATE_MAX_HANDSHAKES_PER_IP", default_value_t = 128)]
    pub max_handshakes_per_ip: usize,

    /// QUIC address validation (Retry): `auto` asks for it once 64 handshakes are in
    /// progress, `always` for every handshake, `never` not at all.
    #[arg(long, env = "RTGATE_QUIC_RETRY", value_enum, default_value = "auto")]
    pub quic_retry: QuicRetry,

    /// Largest event accepted, in bytes (the encoded `Event`), from the API and from
    /// clients. At most a quarter of --send-queue-bytes.
    #[arg(long, env = "RTGATE_MAX_EVENT_SIZE", default_value_t = 128 * 1024)]
    pub max_event_size: usize,

    /// Most seconds a connection token may be valid for (`exp` at most this far ahead).
    #[arg(long, env = "RTGATE_TOKEN_MAX_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub token_max_lifetime: Duration,

    /// Accept connection tokens without `exp`; such a connection must refresh its token
    /// within --token-max-lifetime.
    #[arg(long, env = "RTGATE_ALLOW_TOKENS_WITHOUT_EXP")]
    pub allow_tokens_without_exp: bool,

    /// Most server-opened streams per WebTransport connection (rooms share beyond).
    #[arg(long, env = "RTGATE_MAX_ROOM_STREAMS", default_value_t = 64)]
    pub max_room_streams: usize,

    /// Event names clients may publish (comma-separated; trailing * matches a suffix).
    #[arg(
        long,
        env = "RTGATE_CLIENT_PUBLISH",
        default_value = "client.*",
        value_delimiter = ','
    )]
    pub client_publish: Vec<String>,

    /// Kinds of rooms clients may publish into (comma-separated: conversation, public,
    /// inbox, account, user, contact; empty: none).
    #[arg(
        long,
        env = "RTGATE_CLIENT_PUBLISH_ROOMS",
        default_value = "conversation,public",
        value_delimiter = ','
    )]
    pub client_publish_rooms: Vec<String>,

    /// Client events one connection may publish per second.
    #[arg(long, env = "RTGATE_CLIENT_PUBLISH_RATE", default_value_t = 5.0)]
    pub client_publish_rate: f64,

    /// Client events one connection may publish in a burst.
    #[arg(long, env = "RTGATE_CLIENT_PUBLISH_BURST", default_value_t = 20.0)]
    pub client_publish_burst: f64,

    /// Redis URL (`redis://host:port/db`): share rooms, history and presence with every
    /// node on the same Redis. Without it the node runs on its embedded engine. With
    /// `--redis-cluster`, the URLs of some of the cluster's nodes, comma-separated.
    #[arg(long, env = "RTGATE_REDIS")]
    pub redis: Option<String>,

    /// `--redis` names a Redis Cluster (Redis 7 or newer): keys and rooms' channels are
    /// spread over its masters by slot.
    #[arg(long, env = "RTGATE_REDIS_CLUSTER", requires = "redis")]
    pub redis_cluster: bool,

    /// Prefix of every Redis key and channel.
    #[arg(long, env = "RTGATE_REDIS_PREFIX", default_value = "rtgate")]
    pub redis_prefix: String,

    /// Sharded pub/sub (SSUBSCRIBE/SPUBLISH): auto uses it on Redis 7 and newer.
    #[arg(long, env = "RTGATE_REDIS_SHARDED_PUBSUB", value_enum, default_value = "auto")]
    pub redis_sharded_pubsub: crate::engine::ShardedPubSub,

    /// Timeout of every Redis call.
    #[arg(long, env = "RTGATE_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// The Redis Stream domain events are queued in (the backend may `XADD` to it);
    /// default `{<redis-prefix>:events}`.
    #[arg(long, env = "RTGATE_EVENTS_STREAM")]
    pub events_stream: Option<String>,

    /// How long a domain event's id is remembered: a retry within it is a duplicate.
    #[arg(long, env = "RTGATE_EVENTS_DEDUP_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub events_dedup_window: Duration,

    /// Listeners not to run, by name (comma-separated): routing, webhook, agent_bot, hook,
    /// installation_webhook, participation, notification, reporting_event, csat_survey,
    /// campaign, automation_rule — for a backend that keeps some of its own while it
    /// migrates.
    #[arg(long, env = "RTGATE_DISABLE_LISTENERS", value_delimiter = ',')]
    pub disable_listeners: Vec<String>,

    /// Attempts at a domain event before it is dead-lettered.
    #[arg(long, env = "RTGATE_EVENTS_MAX_ATTEMPTS", default_value_t = 5)]
    pub events_max_attempts: u32,

    /// How long the node reading the event stream holds it without renewing: a node that
    /// dies is replaced by another after this.
    #[arg(long, env = "RTGATE_EVENTS_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub events_lease: Duration,

    /// About how many entries the event stream keeps.
    #[arg(long, env = "RTGATE_EVENTS_STREAM_MAXLEN", default_value_t = 1_000_000)]
    pub events_stream_maxlen: usize,

    /// How long one delivery attempt (webhook, agent bot, hook) may take, connect and
    /// answer together.
    #[arg(long, env = "RTGATE_DELIVERY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// Attempts at a delivery, the first included, before it is given up.
    #[arg(long, env = "RTGATE_DELIVERY_MAX_ATTEMPTS", default_value_t = 8)]
    pub delivery_max_attempts: u32,

    /// How long the business listeners keep what they learnt of a conversation (when it
    /// was last resolved, its participants, whether its survey was decided…) after the
    /// last write.
    #[arg(long, env = "RTGATE_LISTENER_STATE_TTL", default_value = "180d", value_parser = parse_duration)]
    pub listener_state_ttl: Duration,

    /// No delivery attempt starts later than this after the delivery was queued.
    #[arg(long, env = "RTGATE_DELIVERY_MAX_AGE", default_value = "1h", value_parser = parse_duration)]
    pub delivery_max_age: Duration,

    /// Ceiling of the first retry's delay (full jitter), doubled on each further one.
    #[arg(long, env = "RTGATE_DELIVERY_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub delivery_retry_base: Duration,

    /// Longest delay between two attempts (a longer `Retry-After` is capped to it).
    #[arg(long, env = "RTGATE_DELIVERY_MAX_RETRY_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub delivery_max_retry_delay: Duration,

    /// Attempts in flight to one destination (URL) at once, per node.
    #[arg(long, env = "RTGATE_DELIVERY_PER_DESTINATION", default_value_t = 16)]
    pub delivery_per_destination: usize,

    /// Deliveries one node holds at once (in flight or waiting for their destination);
    /// beyond, new ones wait in the queue for whichever node has room.
    #[arg(long, env = "RTGATE_DELIVERY_MAX_HELD", default_value_t = 4096)]
    pub delivery_max_held: usize,

    /// How long a node's claim on a delivery lasts: a node that dies mid-attempt leaves
    /// it to another after this.
    #[arg(long, env = "RTGATE_DELIVERY_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub delivery_lease: Duration,

    /// How often each node looks for due deliveries (retries, and those of a dead node).
    #[arg(long, env = "RTGATE_DELIVERY_POLL", default_value = "200ms", value_parser = parse_duration)]
    pub delivery_poll: Duration,

    /// Consecutive failures (timeouts, connection errors, 408, 429, 5xx) that open a
    /// destination's breaker.
    #[arg(long, env = "RTGATE_DELIVERY_BREAKER_FAILURES", default_value_t = 5)]
    pub delivery_breaker_failures: u32,

    /// How long an open breaker holds deliveries before one probe (doubling, up to 5 min).
    #[arg(long, env = "RTGATE_DELIVERY_BREAKER_OPEN", default_value = "10s", value_parser = parse_duration)]
    pub delivery_breaker_open: Duration,

    /// Let deliveries reach loopback, private, link-local and unique-local addresses (a
    /// private deployment whose endpoints are on its own network). Cloud metadata,
    /// multicast and unspecified addresses stay refused.
    #[arg(long, env = "RTGATE_DELIVERY_ALLOW_PRIVATE")]
    pub delivery_allow_private: bool,

    /// Where rtgate POSTs its notices to the backend (`delivery.failed`), signed like a
    /// webhook with --backend-callback-secret; on Redis they are also on the stream
    /// `{<redis-prefix>:backend}`.
    #[arg(long, env = "RTGATE_BACKEND_CALLBACK_URL")]
    pub backend_callback_url: Option<String>,

    /// The secret the backend callback's notices are signed with.
    #[arg(long, env = "RTGATE_BACKEND_CALLBACK_SECRET", default_value = "")]
    pub backend_callback_secret: String,

    /// How long a room's epoch and last offset are kept after its last event.
    #[arg(long, env = "RTGATE_REDIS_META_TTL", default_value = "24h", value_parser = parse_duration)]
    pub redis_meta_ttl: Duration,

    /// Requests per second one connection may make (pings and refreshes excepted).
    #[arg(long, env = "RTGATE_REQUEST_RATE", default_value_t = 50.0)]
    pub request_rate: f64,

    /// Requests one connection may make in a burst.
    #[arg(long, env = "RTGATE_REQUEST_BURST", default_value_t = 100.0)]
    pub request_burst: f64,

    /// Presence entries of a node expire this long after its last heartbeat (a node that
    /// dies takes its users offline after at most this).
    #[arg(long, env = "RTGATE_PRESENCE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub presence_ttl: Duration,

    /// How often a node refreshes its presence entries.
    #[arg(long, env = "RTGATE_PRESENCE_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub presence_heartbeat: Duration,

    /// A user is offline only after their last connection has been gone this long.
    #[arg(long, env = "RTGATE_PRESENCE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub presence_grace: Duration,

    /// Presence changes are gathered this long into one event per account.
    #[arg(long, env = "RTGATE_PRESENCE_DEBOUNCE", default_value = "500ms", value_parser = parse_duration)]
    pub presence_debounce: Duration,

    /// A typing indicator not refreshed for this long is turned off by the gateway.
    #[arg(long, env = "RTGATE_TYPING_TIMEOUT", default_value = "6s", value_parser = parse_duration)]
    pub typing_timeout: Duration,

    /// Also maintain the presence keys Chatwoot reads (ONLINE_PRESENCE, ONLINE_STATUS);
    /// needs --redis.
    #[arg(long, env = "RTGATE_CHATWOOT_PRESENCE_KEYS", requires = "redis")]
    pub chatwoot_presence_keys: bool,

    /// Key namespace of Chatwoot's Redis (its Redis::Namespace).
    #[arg(long, env = "RTGATE_CHATWOOT_NAMESPACE", default_value = "alfred")]
    pub chatwoot_namespace: String,

    /// Relay the broadcasts an unchanged Rails publishes with its ActionCable Redis adapter
    /// on this Redis into rtgate's rooms, for `/cable` clients (one node relays at a time).
    #[arg(long, env = "RTGATE_CABLE_REDIS")]
    pub cable_redis: Option<String>,

    /// Rails' ActionCable `channel_prefix` (Chatwoot: `chatwoot_<RAILS_ENV>_action_cable`).
    #[arg(
        long,
        env = "RTGATE_CABLE_CHANNEL_PREFIX",
        default_value = "chatwoot_production_action_cable"
    )]
    pub cable_channel_prefix: String,

    /// How often each node checks that the tokens its `/cable` connections subscribed with
    /// are still mirrored (closing those whose removal it missed).
    #[arg(long, env = "RTGATE_CABLE_TOKEN_CHECK", default_value = "60s", value_parser = parse_duration)]
    pub cable_token_check: Duration,

    /// Directory of the demo page served at /demo.
    #[arg(long, env = "RTGATE_DEMO_DIR", default_value = "server/demo")]
    pub demo_dir: PathBuf,

    /// Directory of the built browser package, served at /demo/pkg (and /admin/pkg).
    #[arg(long, env = "RTGATE_DEMO_PKG_DIR", default_value = "client-wasm/pkg")]
    pub demo_pkg_dir: PathBuf,

    /// Serve the admin console at /admin/ (its data needs the API key); on by default in
    /// development mode only.
    #[arg(long, env = "RTGATE_CONSOLE", num_args = 0..=1, default_missing_value = "true")]
    pub console: Option<bool>,

    /// How long shutdown waits for connections to close.
    #[arg(long, env = "RTGATE_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// On SIGTERM, how long /readyz answers 503 before clients are told to go and the
    /// listeners close (load balancers stop sending new clients first).
    #[arg(long, env = "RTGATE_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
}

/// When QUIC handshakes must prove the client's address first (a Retry round trip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuicRetry {
    /// Once many handshakes are in progress.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl Config {
    /// A configuration with every default and both listeners on ephemeral loopback ports
    /// (for tests and embedding).
    pub fn ephemeral() -> Self {
        let mut config = Config::parse_from(["rtgate"]);
        config.wt_listen = Some("127.0.0.1:0".parse().expect("valid address"));
        config.http_listen = Some("127.0.0.1:0".parse().expect("valid address"));
        config
    }

    /// Whether the gateway runs in development mode.
    pub fn dev_mode(&self) -> bool {
        !self.production
    }

    fn default_ip(&self) -> std::net::IpAddr {
        if self.production {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        }
    }

    /// The WebTransport listener's address (the mode's default when not given).
    pub fn wt_addr(&self) -> SocketAddr {
        self.wt_listen.unwrap_or(SocketAddr::new(self.default_ip(), 4433))
    }

    /// The HTTP listener's address (the mode's default when not given).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listen
            .unwrap_or(SocketAddr::new(self.default_ip(), 8080))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86_400)));
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn development_mode_listens_on_loopback_unless_told_otherwise() {
        let dev = Config::parse_from(["rtgate"]);
        assert_eq!(dev.http_addr().to_string(), "127.0.0.1:8080");
        assert_eq!(dev.wt_addr().to_string(), "127.0.0.1:4433");
        let prod = Config::parse_from(["rtgate", "--production"]);
        assert_eq!(prod.http_addr().to_string(), "[::]:8080");
        assert_eq!(prod.wt_addr().to_string(), "[::]:4433");
        let told = Config::parse_from(["rtgate", "--http-listen", "0.0.0.0:9000"]);
        assert_eq!(told.http_addr().to_string(), "0.0.0.0:9000");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
