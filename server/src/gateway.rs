//! Starting and stopping a gateway: binds the QUIC and TCP listeners, wires the node, and
//! shuts down gracefully (stop accepting, advise every client to reconnect, drain).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::api::{HttpState, RouterOptions, metrics_router, router};
use crate::auth::{Authenticator, TokenKey};
use crate::certs;
use crate::config::Config;
use crate::config::QuicRetry;
use crate::delivery::executor::{Deliverer, DelivererConfig};
use crate::delivery::listeners::{
    AgentBotListener, HookListener, InstallationWebhookListener, WebhookListener,
};
use crate::delivery::policy::{BreakerConfig, RetryPolicy};
use crate::delivery::queue::{DeliveryQueue, MemoryDeliveryQueue, RedisDeliveryQueue};
use crate::delivery::sender::Sender;
use crate::delivery::ssrf::Guard;
use crate::delivery::store::{DestinationStore, Destinations, MemoryDestinations, RedisDestinations};
use crate::dev::DevCredentials;
use crate::engine::{Engine, HistoryLimits, MemoryEngine, RedisCommands, RedisConfig, RedisEngine};
use crate::events::bus::ListenerParts;
use crate::events::bus::{Bus, BusConfig};
use crate::events::queue::{EventQueue, MemoryQueue, RedisQueue, RedisQueueConfig};
use crate::events::routing::Routing;
use crate::events::state::{ListenerState, MemoryState, RedisState};
use crate::http::HttpLimits;
use crate::hub::Hub;
use crate::node::{ConnectionLimits, Node};
use crate::presence::{MemoryPresence, PresenceService, PresenceStore, RedisPresence, TrackerConfig};
use crate::session::SessionConfig;
use crate::transport::webtransport;

/// Shortest API key accepted in production mode.
pub const MIN_API_KEY_LEN: usize = 24;

/// With `--quic-retry auto`, handshakes beyond this many in progress must validate their
/// address first.
pub const RETRY_ABOVE_HANDSHAKES: usize = 64;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration missing or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {err}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        err: std::io::Error,
    },
    /// No TLS identity.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
}

/// A running gateway.
pub struct Gateway {
    /// The node.
    pub node: Arc<Node>,
    /// Bound WebTransport (UDP) address.
    pub wt_addr: SocketAddr,
    /// Bound HTTP (TCP) address.
    pub http_addr: SocketAddr,
    /// Bound address of the metrics listener, when it has its own.
    pub metrics_addr: Option<SocketAddr>,
    /// Hex SHA-256 of the certificate served over WebTransport.
    pub cert_sha256: String,
    /// Whether the certificate is a generated development one.
    pub dev_cert: bool,
    /// Generated credentials, in development mode when none were configured.
    pub dev: Option<DevCredentials>,
    listeners: Vec<JoinHandle<()>>,
    maintenance: JoinHandle<()>,
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    bind_udp(addr, false)
}

/// A UDP socket on `addr`; with `shared`, SO_REUSEPORT: several sockets (one per QUIC
/// endpoint) share the port, the kernel spreading client addresses over them.
fn bind_udp(addr: SocketAddr, shared: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // Dual stack: browsers resolve localhost to ::1, others use 127.0.0.1.
        socket.set_only_v6(false)?;
    }
    // Room for bursts of handshakes; the kernel default drops them.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Carries out what other nodes ask (kicks, revocations), and keeps the revocations the
/// engine stores loaded: at start, then every minute (in case a message was missed while
/// the engine was unreachable).
async fn run_control(
    node: Arc<Node>,
    mut control: tokio::sync::mpsc::UnboundedReceiver<crate::engine::bus::ControlMessage>,
) {
    use crate::engine::bus::ControlMessage;
    let mut reload = tokio::time::interval(Duration::from_secs(60));
    let mut loaded = false;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = control.recv() => match message {
                None => return,
                Some(ControlMessage::Kick { origin, contact, id, revoke_before, reason }) => {
                    if origin == node.session.node_id {
                        continue;
                    }
                    if revoke_before > 0 {
                        let until = revoke_before + node.auth.max_validity_secs();
                        node.auth.revocations().revoke(contact, id, revoke_before, until);
                    }
                    let n = node.kick(contact, id, &reason);
                    tracing::info!(%origin, contact, id, connections = n, "kick from another node");
                }
                Some(ControlMessage::DropCableToken { origin, key }) => {
                    if origin != node.session.node_id {
                        node.kick_cable_token(&key, crate::actioncable::TOKEN_DROPPED);
                    }
                }
                Some(ControlMessage::ConsoleWatched { origin }) => {
                    if origin != node.session.node_id {
                        node.console_watch.watched_from_afar(crate::connection::unix_ms());
                    }
                }
                Some(ControlMessage::HttpFrames { target, session, seq, frames }) => {
                    if target == node.session.node_id {
                        let max = node.session.max_frame_size;
                        let outcome = node.http_streams.deliver(&session, seq, &frames, max, true);
                        tracing::debug!(?outcome, seq, "HTTP frames from another node");
                    }
                }
            },
            _ = reload.tick() => loaded = false,
            _ = retry.tick(), if !loaded => loaded = load_revocations(&node).await,
        }
    }
}

/// A key for `purpose` that every node with the same API key derives alike.
fn key_from_api_key(purpose: &[u8], api_key: &str) -> [u8; 32] {
    Sha256::new_with_prefix(purpose)
        .chain_update([0])
        .chain_update(api_key.as_bytes())
        .finalize()
        .into()
}

/// Loads the revocations the engine stores into the node's; whether it could. The first
/// successful load lets the node accept connection tokens.
async fn load_revocations(node: &Node) -> bool {
    let now = crate::connection::unix_ms() / 1000;
    match node.engine.load_revocations(now).await {
        Ok(list) => {
            let revocations = node.auth.revocations();
            revocations.prune(now);
            for (contact, id, before, until) in list {
                revocations.revoke(contact, id, before, until);
            }
            revocations.mark_known();
            true
        }
        Err(err) => {
            tracing::debug!(%err, "cannot load revocations yet");
            false
        }
    }
}

/// Where a gateway keeps its state: the engine (rooms, history) and the stores beside it.
pub struct Stores {
    /// Rooms, history and fan-out.
    pub engine: Arc<dyn Engine>,
    /// Presence.
    pub presence: Arc<dyn PresenceStore>,
    /// Domain events waiting for the bus.
    pub events: Arc<dyn EventQueue>,
    /// The mirrored delivery destinations.
    pub destinations: Arc<dyn DestinationStore>,
    /// Deliveries waiting to be made.
    pub deliveries: Arc<dyn DeliveryQueue>,
    /// The stream rtgate's notices to the backend go to (Redis), with its connection.
    pub backend_stream: Option<(Arc<RedisCommands>, String)>,
    /// What the business listeners keep.
    pub listener_state: Arc<dyn ListenerState>,
    /// `/cable`'s token records and resume positions.
    pub cable: Arc<dyn crate::actioncable::tokens::CableStore>,
    /// The commands of a shared Redis, where the Rails broadcast relay's lease is kept
    /// (none on the embedded engine).
    pub shared: Option<Arc<RedisCommands>>,
}

/// Event ids the embedded queue remembers (for its deduplication window), at most.
const MEMORY_DEDUP_IDS: usize = 1_000_000;

impl Gateway {
    /// Starts a gateway: on Redis when `--redis` is given, else on the embedded engine.
    pub async fn start(mut config: Config) -> Result<Gateway, StartError> {
        // Named before anything uses the name (the event stream's consumer is this node).
        config
            .node_id
            .get_or_insert_with(|| format!("n{:08x}", rand::random::<u32>()));
        let hub = Arc::new(Hub::new());
        let history = HistoryLimits {
            max_events: config.history_size,
            max_age: config.history_ttl,
        };
        let presence_ttl = config.presence_ttl.as_millis() as u64;
        let window = config.events_dedup_window;
        let stores = match &config.redis {
            Some(url) => {
                let redis = RedisConfig {
                    cluster: config.redis_cluster,
                    prefix: config.redis_prefix.clone(),
                    history,
                    meta_ttl: config.redis_meta_ttl,
                    sharded: config.redis_sharded_pubsub,
                    timeout: config.redis_timeout,
                    ..RedisConfig::new(url)
                };
                let engine =
                    RedisEngine::new(hub, redis).map_err(|e| StartError::Config(format!("redis: {e}")))?;
                let chatwoot = config
                    .chatwoot_presence_keys
                    .then(|| config.chatwoot_namespace.clone());
                let presence = Arc::new(RedisPresence::new(engine.commands(), presence_ttl, chatwoot));
                let stream = config
                    .events_stream
                    .clone()
                    .unwrap_or_else(|| format!("{{{}:events}}", config.redis_prefix));
                // Its companions (ids, lease, dead letters) must share its hash slot.
                let tagged = stream
                    .find('{')
                    .is_some_and(|open| stream[open + 1..].find('}').is_some_and(|close| close > 0));
                if !tagged {
                    return Err(StartError::Config(format!(
                        "--events-stream {stream:?} needs a hash tag, e.g. {{{stream}}}"
                    )));
                }
                if config.events_stream_maxlen < 1000 {
                    return Err(StartError::Config(
                        "--events-stream-maxlen must be at least 1000".into(),
                    ));
                }
                let events = Arc::new(RedisQueue::new(
                    engine.commands(),
                    RedisQueueConfig {
                        stream: config
                            .events_stream
                            .clone()
                            .unwrap_or_else(|| format!("{{{}:events}}", config.redis_prefix)),
                        consumer: config.node_id.clone().unwrap_or_default(),
                        dedup_window: config.events_dedup_window,
                        max_len: config.events_stream_maxlen,
                        lease: config.events_lease,
                        max_event_size: config.max_event_size,
                    },
                ));
                let commands = engine.commands();
                Stores {
                    destinations: Arc::new(RedisDestinations::new(commands.clone())),
                    deliveries: Arc::new(RedisDeliveryQueue::new(
                        commands.clone(),
                        config.delivery_lease,
                        window,
                    )),
                    backend_stream: Some((commands.clone(), format!("{{{}:backend}}", commands.prefix()))),
                    listener_state: Arc::new(RedisState::new(commands.clone(), config.listener_state_ttl)),
                    cable: Arc::new(crate::actioncable::tokens::RedisCableStore::new(commands.clone())),
                    shared: Some(commands.clone()),
                    engine: Arc::new(engine),
                    presence,
                    events,
                }
            }
            None => Stores {
                engine: Arc::new(MemoryEngine::new(hub, history)),
                presence: Arc::new(MemoryPresence::new(presence_ttl)),
                events: Arc::new(MemoryQueue::new(window, MEMORY_DEDUP_IDS)),
                destinations: Arc::new(MemoryDestinations::default()),
                deliveries: Arc::new(MemoryDeliveryQueue::new(config.delivery_lease, window)),
                backend_stream: None,
                listener_state: Arc::new(MemoryState::new(config.listener_state_ttl)),
                cable: Arc::new(crate::actioncable::tokens::MemoryCableStore::default()),
                shared: None,
            },
        };
        Gateway::start_with_stores(config, stores).await
    }

    /// Starts a gateway on the given engine and stores.
    pub async fn start_with_stores(config: Config, stores: Stores) -> Result<Gateway, StartError> {
        let Stores {
            engine,
            presence,
            events,
            destinations,
            deliveries,
            backend_stream,
            listener_state,
            cable,
            shared,
        } = stores;
        if let Some(unknown) = config
            .disable_listeners
            .iter()
            .find(|n| !crate::events::LISTENER_NAMES.contains(&n.as_str()))
        {
            return Err(StartError::Config(format!(
                "--disable-listeners: no listener {unknown:?} (one of {})",
                crate::events::LISTENER_NAMES.join(", ")
            )));
        }
        let dev_mode = config.dev_mode();
        let need_dev =
            config.jwt_secret.is_none() && config.jwt_public_key.is_none() || config.api_key.is_none();
        if !dev_mode && need_dev {
            return Err(StartError::Config(
                "production mode needs --jwt-secret or --jwt-public-key, and --api-key".into(),
            ));
        }
        if !dev_mode && config.cert.is_none() {
            return Err(StartError::Config(
                "production mode needs --cert and --key".into(),
            ));
        }
        if !dev_mode
            && config
                .api_key
                .as_ref()
                .is_some_and(|k| k.trim().len() < MIN_API_KEY_LEN)
        {
            return Err(StartError::Config(format!(
                "--api-key must be at least {MIN_API_KEY_LEN} characters in production mode"
            )));
        }
        if config.api_key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(StartError::Config("--api-key is empty".into()));
        }
        const KINDS: [&str; 6] = ["user", "contact", "account", "inbox", "conversation", "public"];
        if let Some(bad) = config
            .client_publish_rooms
            .iter()
            .find(|k| !k.is_empty() && !KINDS.contains(&k.as_str()))
        {
            return Err(StartError::Config(format!(
                "--client-publish-rooms: unknown room kind {bad:?} (one of {})",
                KINDS.join(", ")
            )));
        }
        if config.max_event_size * 4 > config.send_queue_bytes {
            return Err(StartError::Config(format!(
                "--max-event-size ({}) must be at most a quarter of --send-queue-bytes ({})",
                config.max_event_size, config.send_queue_bytes
            )));
        }
        let dev = need_dev.then(DevCredentials::generate);

        let key = match (&config.jwt_secret, &config.jwt_public_key) {
            (Some(secret), _) => {
                TokenKey::hs256(secret.as_bytes()).map_err(|e| StartError::Config(e.to_string()))?
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| StartError::Config(format!("cannot read {}: {e}", path.display())))?;
                TokenKey::public_pem(&pem).map_err(|e| StartError::Config(e.to_string()))?
            }
            (None, None) => {
                let secret = &dev.as_ref().expect("dev credentials made").jwt_secret;
                TokenKey::hs256(secret.as_bytes()).map_err(|e| StartError::Config(e.to_string()))?
            }
        };
        let api_key = config
            .api_key
            .clone()
            .unwrap_or_else(|| dev.as_ref().expect("dev credentials made").api_key.clone());
        // The console's tokens are signed with a key every node derives alike.
        let console_key = key_from_api_key(b"rtgate console tokens", &api_key);
        let auth = Authenticator::new(key, config.jwt_issuer.as_deref(), config.jwt_audience.as_deref())
            .with_lifetime(
                config.token_max_lifetime.as_secs(),
                config.allow_tokens_without_exp,
            )
            .with_console_key(&console_key);

        let identity = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => certs::load(cert, key).await?,
            _ => {
                let dir = std::path::absolute(&config.cert_dir).unwrap_or_else(|_| config.cert_dir.clone());
                tracing::info!(dir = %dir.display(), "development certificate directory");
                certs::dev_identity(&dir).await?
            }
        };

        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("n{:08x}", rand::random::<u32>()));
        let session = SessionConfig {
            node_id,
            hello_timeout: config.hello_timeout,
            heartbeat_interval: config.heartbeat,
            stale_timeout: config.heartbeat * 5 / 2,
            max_frame_size: config.max_frame_size,
            max_subscriptions: config.max_subscriptions,
            refresh_grace: config.refresh_grace,
            client_publish: config.client_publish.clone(),
            client_publish_rooms: config.client_publish_rooms.clone(),
            client_publish_rate: config.client_publish_rate,
            client_publish_burst: config.client_publish_burst,
            max_event_size: config.max_event_size,
            typing_timeout: config.typing_timeout,
            request_rate: config.request_rate,
            request_burst: config.request_burst,
            ..SessionConfig::default()
        };
        let limits = ConnectionLimits {
            send_queue_bytes: config.send_queue_bytes,
            max_connections: config.max_connections,
            max_pending: config.max_pending_connections,
            max_pending_per_ip: config.max_pending_per_ip,
            max_per_user: config.max_connections_per_user,
            max_per_ip: config.max_connections_per_ip,
            accept_rate: config.accept_rate,
            max_room_streams: config.max_room_streams,
            ..ConnectionLimits::default()
        };
        let presence = PresenceService::start(
            session.node_id.clone(),
            TrackerConfig {
                grace: config.presence_grace,
                heartbeat: config.presence_heartbeat,
                debounce: config.presence_debounce,
                ..TrackerConfig::default()
            },
            presence,
            engine.clone(),
        );
        crate::metrics::install();
        let node = Node::new(session, auth, engine.clone(), presence, limits);

        // WebTransport: one QUIC endpoint, or several sharing the port.
        let first = bind_udp(config.wt_addr(), config.wt_endpoints > 1).map_err(|err| StartError::Bind {
            addr: config.wt_addr(),
            err,
        })?;
        let wt_addr = first.local_addr().map_err(|err| StartError::Bind {
            addr: config.wt_addr(),
            err,
        })?;
        let mut sockets = vec![first];
        for _ in 1..config.wt_endpoints {
            sockets.push(bind_udp(wt_addr, true).map_err(|err| StartError::Bind { addr: wt_addr, err })?);
        }
        let mut endpoints = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let mut server_config = wtransport::ServerConfig::builder()
                .with_bind_socket(socket)
                .with_custom_transport(
                    identity.identity.clone_identity(),
                    webtransport::transport_config(),
                )
                .max_idle_timeout(Some(config.heartbeat * 3))
                .map_err(|e| StartError::Config(format!("idle timeout: {e}")))?
                .build();
            // Connection attempts waiting for the accept loop are bounded (quinn's defaults
            // allow 65,536 of them, with up to 10 MiB buffered each): beyond, QUIC refuses
            // them without keeping anything.
            server_config
                .quic_config_mut()
                .max_incoming(config.max_handshakes.max(256))
                .incoming_buffer_size(64 * 1024)
                .incoming_buffer_size_total(16 << 20);
            endpoints.push(
                webtransport::bind(server_config).map_err(|err| StartError::Bind { addr: wt_addr, err })?,
            );
        }

        // HTTP: WebSocket, server API, health.
        let bind_tcp =
            |addr: SocketAddr| crate::http::bind(addr).map_err(|err| StartError::Bind { addr, err });
        let listener = bind_tcp(config.http_addr())?;
        let http_addr = listener.local_addr().map_err(|err| StartError::Bind {
            addr: config.http_addr(),
            err,
        })?;
        let metrics_listener = config.metrics_listen.map(bind_tcp).transpose()?;
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().map_err(|err| StartError::Bind {
                addr: config.metrics_listen.expect("set"),
                err,
            })?),
            None => None,
        };
        if let Some(url) = &config.backend_callback_url {
            crate::delivery::directory::check_url(url)
                .map_err(|e| StartError::Config(format!("--backend-callback-url: {e}")))?;
        }
        let destinations = Destinations::new(destinations);
        if let Err(err) = destinations.sync().await {
            tracing::warn!(%err, "cannot load the delivery destinations yet; retried before each round of events");
        }
        let deliverer = Deliverer::new(
            deliveries,
            Sender::new(
                Guard {
                    allow_private: config.delivery_allow_private,
                },
                config.delivery_timeout,
            ),
            DelivererConfig {
                policy: RetryPolicy {
                    max_attempts: config.delivery_max_attempts.max(1),
                    max_age: config.delivery_max_age,
                    base: config.delivery_retry_base,
                    max_delay: config.delivery_max_retry_delay,
                },
                breaker: BreakerConfig {
                    failures: config.delivery_breaker_failures.max(1),
                    open_for: config.delivery_breaker_open,
                    ..BreakerConfig::default()
                },
                timeout: config.delivery_timeout,
                per_destination: config.delivery_per_destination.max(1),
                max_held: config.delivery_max_held.max(1),
                poll: config.delivery_poll,
                callback: config
                    .backend_callback_url
                    .clone()
                    .map(|url| (url, config.backend_callback_secret.clone())),
            },
            backend_stream,
        );
        // Every node of a gateway signs HTTP fallback session ids alike (a send may land
        // on any of them).
        node.http_streams
            .set_key(key_from_api_key(b"rtgate http session ids", &api_key));
        let state = HttpState {
            // Development tokens only when the gateway verifies with the secret it made up.
            dev: if dev_mode && config.jwt_secret.is_none() && config.jwt_public_key.is_none() {
                dev.clone()
            } else {
                None
            },
            node: node.clone(),
            api_key_sha256: Sha256::digest(api_key.as_bytes()).into(),
            dev_cert_sha256: identity.generated.then(|| identity.sha256_hex.clone()),
            wt_port: wt_addr.port(),
            max_event_size: config.max_event_size,
            events: events.clone(),
            destinations: destinations.clone(),
            deliveries: deliverer.queue().clone(),
            listener_state: listener_state.clone(),
            cable: Arc::new(crate::actioncable::Cable {
                store: cable,
                destinations: destinations.clone(),
            }),
        };
        let cable = state.cable.clone();
        let app = router(
            state.clone(),
            RouterOptions {
                metrics: metrics_listener.is_none(),
                demo: dev_mode.then(|| (config.demo_dir.clone(), config.demo_pkg_dir.clone())),
                body_timeout: config.http_body_timeout,
                console: config
                    .console
                    .unwrap_or(dev_mode)
                    .then(|| config.demo_pkg_dir.clone()),
            },
        );
        let http_limits = HttpLimits {
            header_timeout: config.handshake_timeout,
            pacer: node.pacer.clone(),
            slots: node.addresses.clone(),
        };

        // Revocations made on other nodes (or before this one started) are loaded before
        // any token is accepted; if the engine cannot answer yet, tokens are refused
        // (clients retry) until the control task loads them.
        let control = engine.take_control();
        if control.is_some() {
            node.auth.revocations().mark_unknown();
            load_revocations(&node).await;
        }

        let mut listeners = Vec::new();
        let policy = webtransport::HandshakePolicy {
            timeout: config.handshake_timeout,
            max_in_flight: config.max_handshakes,
            max_per_ip: config.max_handshakes_per_ip,
            retry_above: match config.quic_retry {
                QuicRetry::Always => 0,
                QuicRetry::Never => usize::MAX,
                QuicRetry::Auto => RETRY_ABOVE_HANDSHAKES,
            },
        };
        listeners.push(tokio::spawn(webtransport::accept_loop(
            node.clone(),
            endpoints,
            policy,
            node.shutdown_signal(),
        )));
        listeners.push(tokio::spawn(crate::http::serve(
            listener,
            app,
            http_limits.clone(),
            node.shutdown_signal(),
        )));
        if let Some(metrics_listener) = metrics_listener {
            // Its own pacing and address budget: scrapes are not held up by client floods.
            let limits = HttpLimits {
                pacer: Arc::new(crate::admission::AcceptPacer::new(0.0)),
                slots: crate::admission::AddressSlots::new(64),
                ..http_limits
            };
            listeners.push(tokio::spawn(crate::http::serve(
                metrics_listener,
                metrics_router(state),
                limits,
                node.shutdown_signal(),
            )));
        }
        let parts = ListenerParts {
            deliverer: deliverer.clone(),
            destinations: destinations.clone(),
            state: listener_state,
        };
        let all: Vec<Box<dyn crate::events::Listener>> = vec![
            Box::new(Routing::default()),
            Box::new(WebhookListener::new(destinations.clone())),
            Box::new(AgentBotListener::new(destinations.clone())),
            Box::new(HookListener::new(destinations.clone())),
            Box::new(InstallationWebhookListener::new(destinations.clone())),
            Box::new(crate::events::participation::Participation),
            Box::new(crate::events::notification::NotificationListener::new(
                destinations.clone(),
            )),
            Box::new(crate::events::reporting::ReportingListener::new(
                destinations.clone(),
            )),
            Box::new(crate::events::csat::CsatListener::new(destinations.clone())),
            Box::new(crate::events::campaign::CampaignListener::new(
                destinations.clone(),
            )),
            Box::new(crate::events::automation::AutomationListener::new(
                destinations.clone(),
            )),
        ];
        debug_assert_eq!(
            all.iter().map(|l| l.name()).collect::<Vec<_>>(),
            crate::events::LISTENER_NAMES
        );
        let listeners_run: Vec<Box<dyn crate::events::Listener>> = all
            .into_iter()
            .filter(|l| !config.disable_listeners.iter().any(|n| n == l.name()))
            .collect();
        let bus = Bus::new(
            events,
            engine.clone(),
            listeners_run,
            BusConfig {
                max_attempts: config.events_max_attempts.max(1),
                ..BusConfig::default()
            },
            Some(parts),
        );
        listeners.push(tokio::spawn(bus.run(node.shutdown_signal())));
        listeners.push(tokio::spawn(deliverer.run(node.shutdown_signal())));
        listeners.push(tokio::spawn(cable.clone().run_token_checks(
            node.clone(),
            config.cable_token_check.max(Duration::from_millis(100)),
            node.shutdown_signal(),
        )));
        if let Some(url) = &config.cable_redis {
            let relay = crate::actioncable::relay::RelayConfig {
                url: url.clone(),
                channel_prefix: config.cable_channel_prefix.clone(),
                lease: shared.map(|c| {
                    let key = format!("{{{}:cable}}:relay", c.prefix());
                    (c, key)
                }),
            };
            listeners.push(tokio::spawn(crate::actioncable::relay::run(
                node.clone(),
                cable,
                relay,
                node.shutdown_signal(),
            )));
        }
        if let Some(control) = control {
            listeners.push(tokio::spawn(run_control(node.clone(), control)));
        }
        let maintenance_engine = engine.clone();
        let feed = crate::console::run_feed(node.clone(), Duration::from_secs(1));
        let maintenance = tokio::spawn(async move {
            // Histogram samples are folded every second (bounded memory under load);
            // engine housekeeping runs every ten; the console's figures go out beside.
            let upkeep = async {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                for n in 0u64.. {
                    tick.tick().await;
                    crate::metrics::upkeep();
                    if n % 10 == 0 {
                        maintenance_engine.maintain().await;
                    }
                }
            };
            tokio::join!(upkeep, feed);
        });

        tracing::info!(%wt_addr, %http_addr, node = %node.session.node_id, "rtgate listening");
        Ok(Gateway {
            node,
            wt_addr,
            http_addr,
            metrics_addr,
            cert_sha256: identity.sha256_hex,
            dev_cert: identity.generated,
            dev,
            listeners,
            maintenance,
        })
    }

    /// Stops accepting, sends every client `Disconnect(shutdown)`, and waits up to
    /// `drain` for connections to close. Returns how many were still open.
    pub async fn shutdown(self, drain: Duration) -> usize {
        self.node.begin_shutdown();
        let left = self.node.drain(drain).await;
        self.maintenance.abort();
        // The listeners release their sockets once drained; a restart may bind them again.
        for mut task in self.listeners {
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        // QUIC's endpoint task closes the UDP socket just after the endpoint is dropped:
        // wait for it, so that a restarted gateway can bind the same port at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while udp_socket(self.wt_addr).is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        left
    }
}
