//! A hand-clocked, in-memory harness: real client cores (`ClientSession` and `Connector`)
//! wired to the gateway's real [`Conductor`] (session, subscriptions, admission) on a real
//! node and engine, with lanes in place of sockets and time that moves only when a test
//! says so. No socket, no timer, no sleep: a scenario runs in microseconds, the same way
//! every time.
//!
//! The gateway side is exactly what the tokio driver runs: the harness only feeds the
//! conductor inputs (frames, instants, a dropped link) as the driver would.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prost::Message as _;
use rtgate_client::{
    Backoff, BackoffConfig, ClientEvent, ClientSession, Connector, ConnectorAction, ConnectorConfig,
    TransportKind as ClientTransport,
};
use rtgate_protocol::{DisconnectCode, RoomName, pb};
use rtgate_server::auth::{Authenticator, TokenKey};
use rtgate_server::connection::{Closer, Conductor, RoomLanes, Transport};
use rtgate_server::engine::{Engine, HistoryLimits, MemoryEngine};
use rtgate_server::hub::Hub;
use rtgate_server::node::{ConnControl, ConnectionLimits, Node};
use rtgate_server::outbox::{Lane, LaneReceiver, Outbox};
use rtgate_server::presence::{MemoryPresence, PresenceService, TrackerConfig};
use rtgate_server::session::SessionConfig;
use rtgate_server::transport::TransportKind;
use serde_json::json;

use super::SECRET;

/// The wall clock at the harness's start, in Unix milliseconds (a fixed, round date).
pub const UNIX_START_MS: u64 = 1_800_000_000_000;

/// What a harness is built with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Session limits and timings.
    pub session: SessionConfig,
    /// Connection limits (the send budget above all).
    pub limits: ConnectionLimits,
    /// History kept per room.
    pub history: HistoryLimits,
    /// The client's reconnection settings.
    pub connector: ConnectorConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            session: SessionConfig::default(),
            limits: ConnectionLimits::default(),
            history: HistoryLimits {
                max_events: 1000,
                max_age: Duration::from_secs(24 * 3600),
            },
            connector: ConnectorConfig {
                backoff: BackoffConfig {
                    base: Duration::from_millis(250),
                    max: Duration::from_secs(20),
                },
                ..ConnectorConfig::default()
            },
        }
    }
}

/// Which transports a peer's network lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// UDP (WebTransport) gets through.
    pub webtransport: bool,
    /// WebSocket upgrades get through.
    pub websocket: bool,
    /// Plain HTTP requests get through.
    pub http: bool,
}

impl Network {
    /// Everything gets through.
    pub const OPEN: Network = Network {
        webtransport: true,
        websocket: true,
        http: true,
    };

    fn allows(&self, transport: ClientTransport) -> bool {
        match transport {
            ClientTransport::WebTransport => self.webtransport,
            ClientTransport::WebSocket => self.websocket,
            ClientTransport::Http => self.http,
        }
    }
}

/// A peer: one client (session and connector) and, while connected, its link to the
/// gateway.
pub type PeerId = usize;

struct Link {
    conductor: Option<Conductor>,
    rx: LaneReceiver,
    /// The node's requests to this connection (kicks), as the driver receives them.
    control: Option<tokio::sync::oneshot::Receiver<ConnControl>>,
}

/// An attempt to open a transport that the network swallows: it fails at `gives_up`.
struct Stalled {
    transport: ClientTransport,
    gives_up: Instant,
    /// A probe beside the connection in use (else an open).
    probe: bool,
}

struct Peer {
    client: ClientSession,
    connector: Connector,
    token: String,
    network: Network,
    link: Option<Link>,
    stalled: Option<Stalled>,
    /// How many more frames the client reads (`None`: all). At zero it reads nothing:
    /// its send queue fills as a stalled reader's.
    reading: Option<usize>,
    events: VecDeque<ClientEvent>,
    /// Transports opened, in order.
    opened: Vec<ClientTransport>,
    /// Attempts to open a transport, with their instants.
    attempts: Vec<(Instant, ClientTransport)>,
    /// Close codes the gateway ended this peer's connections with, in order.
    closes: Vec<DisconnectCode>,
}

/// The harness: one gateway node and its engine, peers, and the clock.
pub struct Harness {
    /// The gateway node.
    pub node: Arc<Node>,
    /// Its engine.
    pub engine: Arc<dyn Engine>,
    start: Instant,
    now: Instant,
    setup: Setup,
    peers: Vec<Peer>,
}

/// Closing an in-memory link takes nothing: what was queued stays readable.
struct MemoryCloser;

impl Closer for MemoryCloser {
    fn close(self: Box<Self>, _code: DisconnectCode, _reason: String) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Every room on the one in-memory link, in order (as on a WebSocket).
struct OneLane(Lane);

impl RoomLanes for OneLane {
    fn lane(&mut self, _room: &RoomName) -> Lane {
        self.0.clone()
    }
    fn release(&mut self, _room: &RoomName) {}
}

/// A connection token for `role` `id` of `account`, valid `valid_for` from the harness's
/// clock `now_ms`, with extra claims merged in.
pub fn token_at(
    now_ms: u64,
    role: &str,
    id: u64,
    account: u64,
    valid_for: Duration,
    extra: serde_json::Value,
) -> String {
    let mut claims = json!({
        "sub": id.to_string(), "account_id": account, "role": role,
        "iat": now_ms / 1000,
        "exp": (now_ms / 1000) + valid_for.as_secs(),
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            claims.insert(k.clone(), v.clone());
        }
    }
    super::token_with(claims)
}

impl Harness {
    /// A harness on the embedded engine with default settings.
    pub fn new() -> Self {
        Harness::with(Setup::default())
    }

    /// A harness on the embedded engine.
    pub fn with(setup: Setup) -> Self {
        let engine = Arc::new(MemoryEngine::new(Arc::new(Hub::new()), setup.history));
        Harness::on(setup, engine)
    }

    /// A harness on the given engine.
    pub fn on(setup: Setup, engine: Arc<dyn Engine>) -> Self {
        // Presence announcements would land in account rooms at times of their own: they
        // are debounced out of every scenario's reach.
        let tracker = TrackerConfig {
            debounce: Duration::from_secs(365 * 24 * 3600),
            heartbeat: Duration::from_secs(365 * 24 * 3600),
            ..TrackerConfig::default()
        };
        let presence = PresenceService::start(
            setup.session.node_id.clone(),
            tracker,
            Arc::new(MemoryPresence::new(60_000)),
            engine.clone(),
        );
        let auth = Authenticator::new(TokenKey::hs256(SECRET.as_bytes()).unwrap(), None, None);
        let node = Node::new(
            setup.session.clone(),
            auth,
            engine.clone(),
            presence,
            setup.limits.clone(),
        );
        let now = Instant::now();
        Harness {
            node,
            engine,
            start: now,
            now,
            setup,
            peers: Vec::new(),
        }
    }

    /// The harness's clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The wall clock, in Unix milliseconds, at the harness's now.
    pub fn unix_ms(&self) -> u64 {
        UNIX_START_MS + (self.now - self.start).as_millis() as u64
    }

    /// A connection token valid for `valid_for` from now.
    pub fn token(&self, role: &str, id: u64, account: u64, valid_for: Duration) -> String {
        token_at(self.unix_ms(), role, id, account, valid_for, json!({}))
    }

    /// A subscription token granting `room` to the principal whose own room is `holder`.
    pub fn sub_token(&self, holder: &str, room: &str, valid_for: Duration) -> String {
        super::token_with(json!({
            "sub": holder, "room": room,
            "exp": self.unix_ms() / 1000 + valid_for.as_secs(),
        }))
    }

    /// A connection token with extra claims.
    pub fn token_with(
        &self,
        role: &str,
        id: u64,
        account: u64,
        valid_for: Duration,
        extra: serde_json::Value,
    ) -> String {
        token_at(self.unix_ms(), role, id, account, valid_for, extra)
    }

    /// A new peer that connects with `token` as soon as time is stepped or the harness
    /// settles.
    pub async fn peer(&mut self, token: &str) -> PeerId {
        self.peer_on(token, Network::OPEN, 7).await
    }

    /// A new peer on `network`, its backoff jitter seeded with `seed`.
    pub async fn peer_on(&mut self, token: &str, network: Network, seed: u64) -> PeerId {
        let connector = Connector::new(
            self.setup.connector,
            Backoff::with_seed(self.setup.connector.backoff, seed),
            self.now,
        );
        self.peers.push(Peer {
            client: ClientSession::new("harness", "0", self.now),
            connector,
            token: token.to_string(),
            network,
            link: None,
            stalled: None,
            reading: None,
            events: VecDeque::new(),
            opened: Vec::new(),
            attempts: Vec::new(),
            closes: Vec::new(),
        });
        let id = self.peers.len() - 1;
        self.settle().await;
        id
    }

    /// The client session of a peer.
    pub fn client(&mut self, p: PeerId) -> &mut ClientSession {
        &mut self.peers[p].client
    }

    /// The connector of a peer.
    pub fn connector(&self, p: PeerId) -> &Connector {
        &self.peers[p].connector
    }

    /// The token a peer presents on its next connect and whenever its session asks for a
    /// fresh one (its token provider).
    pub fn set_token(&mut self, p: PeerId, token: &str) {
        self.peers[p].token = token.to_string();
    }

    /// What a peer's network lets through from now on.
    pub fn set_network(&mut self, p: PeerId, network: Network) {
        self.peers[p].network = network;
    }

    /// Whether a peer reads what the gateway sends it.
    pub fn set_reading(&mut self, p: PeerId, reading: bool) {
        self.peers[p].reading = if reading { None } else { Some(0) };
    }

    /// The peer reads `frames` more frames, then stops reading.
    pub fn read_only(&mut self, p: PeerId, frames: usize) {
        self.peers[p].reading = Some(frames);
    }

    /// Whether a peer has a link to the gateway.
    pub fn is_linked(&self, p: PeerId) -> bool {
        self.peers[p].link.is_some()
    }

    /// Transports a peer opened, in order.
    pub fn opened(&self, p: PeerId) -> &[ClientTransport] {
        &self.peers[p].opened
    }

    /// Codes the gateway closed a peer's connections with, in order.
    pub fn closes(&self, p: PeerId) -> &[DisconnectCode] {
        &self.peers[p].closes
    }

    /// Bytes waiting in a peer's send queue on the gateway.
    pub fn queued(&self, p: PeerId) -> usize {
        self.peers[p]
            .link
            .as_ref()
            .and_then(|l| l.conductor.as_ref())
            .map_or(0, |c| c.outbox().queued())
    }

    /// Takes the events a peer's application has been told so far.
    pub fn events(&mut self, p: PeerId) -> Vec<ClientEvent> {
        self.peers[p].events.drain(..).collect()
    }

    /// The room events a peer has been told so far, as (room, offset, json), presence
    /// announcements left out.
    pub fn room_events(&mut self, p: PeerId) -> Vec<(String, u64, String)> {
        self.events(p)
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Event { room, offset, event } if event.name != "presence.update" => {
                    Some((room.to_string(), offset, event.json))
                }
                _ => None,
            })
            .collect()
    }

    /// Publishes an event as the backend does (the server API's path into the engine).
    pub async fn publish(&mut self, room: &str, json: &str) -> u64 {
        let room = RoomName::parse(room).expect("valid room");
        let event = pb::Event {
            id: uuid_like(self.unix_ms(), json),
            name: "message.created".into(),
            json: json.into(),
            occurred_at_ms: self.unix_ms() as i64,
            ..Default::default()
        };
        let published = self
            .engine
            .publish(&room, &event.encode_to_vec(), None)
            .await
            .expect("publish");
        self.settle().await;
        published.pos.offset
    }

    /// Sends a frame from a peer's client straight to the gateway (what a driver does
    /// with frames the session builds but does not queue, such as typing).
    pub async fn send(&mut self, p: PeerId, frame: pb::ClientFrame) {
        let now = self.now;
        if let Some(c) = self.peers[p].link.as_mut().and_then(|l| l.conductor.as_mut()) {
            c.frame(&frame.encode_to_vec(), now);
        }
        self.settle().await;
    }

    /// Attempts a peer made to open a transport: when, and which.
    pub fn attempts(&self, p: PeerId) -> &[(Instant, ClientTransport)] {
        &self.peers[p].attempts
    }

    /// The link of a peer breaks (as a network failure would): the gateway sees the
    /// client go away, the client sees its transport close.
    pub async fn drop_link(&mut self, p: PeerId) {
        let now = self.now;
        if let Some(mut link) = self.peers[p].link.take() {
            let peer = &mut self.peers[p];
            close_from_client(&mut link, now, &mut peer.closes).await;
            peer.client.transport_closed();
            peer.events.push_back(ClientEvent::Disconnected {
                code: None,
                reason: "link dropped".into(),
                reconnect: Some(Duration::ZERO),
            });
            peer.connector.closed(Some(Duration::ZERO), now);
        }
        self.settle().await;
    }

    /// The backend disconnects a user (`POST /api/v1/disconnect`): the node asks each of
    /// their connections to close.
    pub async fn kick(&mut self, contact: bool, id: u64, reason: &str) -> usize {
        let n = self.node.kick(contact, id, reason);
        self.settle().await;
        n
    }

    /// The gateway begins shutting down: every connection is told and closed.
    pub async fn shutdown(&mut self) {
        self.node.begin_shutdown();
        for peer in &mut self.peers {
            if let Some(c) = peer.link.as_mut().and_then(|l| l.conductor.as_mut()) {
                c.shutdown();
            }
        }
        self.settle().await;
    }

    /// Moves the clock forward by `by`, firing every timer (client, connector, gateway
    /// session, stalled connection attempts) at the instant it is due, in order.
    pub async fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            self.settle().await;
            let next = self.next_deadline();
            match next {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.fire_timers().await;
                }
                _ => break,
            }
        }
        self.now = until;
        self.fire_timers().await;
        self.settle().await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flat_map(|peer| {
                let server = peer
                    .link
                    .as_ref()
                    .and_then(|l| l.conductor.as_ref())
                    .and_then(|c| c.poll_timeout());
                let client = peer.link.as_ref().and_then(|_| peer.client.poll_timeout());
                [
                    server,
                    client,
                    peer.connector.poll_timeout(),
                    peer.stalled.as_ref().map(|s| s.gives_up),
                ]
            })
            .flatten()
            .min()
    }

    async fn fire_timers(&mut self) {
        let now = self.now;
        for peer in &mut self.peers {
            if let Some(c) = peer.link.as_mut().and_then(|l| l.conductor.as_mut())
                && c.poll_timeout().is_some_and(|t| t <= now)
            {
                c.timeout(now);
            }
            if peer.link.is_some() && peer.client.poll_timeout().is_some_and(|t| t <= now) {
                peer.client.handle_timeout(now);
            }
            if peer.connector.poll_timeout().is_some_and(|t| t <= now) {
                peer.connector.handle_timeout(now);
            }
            if let Some(stalled) = peer.stalled.take_if(|s| s.gives_up <= now) {
                if stalled.probe {
                    let _ = peer.connector.probe_done(stalled.transport, false, now);
                } else {
                    peer.connector.open_failed(stalled.transport, now);
                }
            }
        }
    }

    /// Runs every peer and its connection until nothing more happens at this instant.
    pub async fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for p in 0..self.peers.len() {
                progress |= self.step(p).await;
            }
            if !progress {
                return;
            }
        }
        panic!("the harness did not settle");
    }

    /// One round of a peer: connector actions, client → gateway frames, the conductor's
    /// actions, replays, gateway → client frames, client events. Returns whether anything
    /// moved.
    async fn step(&mut self, p: PeerId) -> bool {
        let now = self.now;
        let unix_ms = self.unix_ms();
        let node = self.node.clone();
        let send_queue = self.setup.limits.send_queue_bytes;
        let peer = &mut self.peers[p];
        let mut progress = false;

        while let Some(action) = peer.connector.poll_action() {
            progress = true;
            match action {
                ConnectorAction::Open { transport, timeout } => {
                    peer.attempts.push((now, transport));
                    if !peer.network.allows(transport) {
                        peer.stalled = Some(Stalled {
                            transport,
                            gives_up: now + timeout,
                            probe: false,
                        });
                        continue;
                    }
                    let Some(link) = open_link(&node, transport, send_queue, now, unix_ms) else {
                        // Refused at once (the gateway is shutting down): the open fails.
                        peer.connector.open_failed(transport, now);
                        continue;
                    };
                    peer.link = Some(link);
                    peer.opened.push(transport);
                    peer.connector.opened(transport);
                    peer.client.connect(&peer.token, now, unix_ms as i64);
                }
                ConnectorAction::Probe { transport, timeout } => {
                    peer.attempts.push((now, transport));
                    let opened = peer
                        .network
                        .allows(transport)
                        .then(|| open_link(&node, transport, send_queue, now, unix_ms))
                        .flatten();
                    let Some(link) = opened else {
                        peer.stalled = Some(Stalled {
                            transport,
                            gives_up: now + timeout,
                            probe: true,
                        });
                        continue;
                    };
                    if peer.connector.probe_done(transport, true, now) {
                        // As the browser driver does: the old link closes, the session
                        // says Hello on the new one.
                        if let Some(mut old) = peer.link.take() {
                            close_from_client(&mut old, now, &mut peer.closes).await;
                        }
                        peer.client.transport_closed();
                        peer.link = Some(link);
                        peer.opened.push(transport);
                        peer.client.connect(&peer.token, now, unix_ms as i64);
                    }
                }
                ConnectorAction::Close => {
                    if let Some(mut link) = peer.link.take() {
                        close_from_client(&mut link, now, &mut peer.closes).await;
                    }
                }
            }
        }

        let Some(link) = peer.link.as_mut() else {
            return progress;
        };
        if let Some(c) = link.conductor.as_mut() {
            // As the driver does: one input, then settle, and so on.
            let mut ending;
            if let Some(control) = link.control.as_mut()
                && let Ok(ConnControl::Kick(reason)) = control.try_recv()
            {
                link.control = None;
                progress = true;
                c.kicked(&reason);
            }
            loop {
                ending = c.settle(&|| now).await;
                if ending.is_some() {
                    break;
                }
                let Some(frame) = peer.client.poll_transmit(now) else {
                    break;
                };
                progress = true;
                c.frame(&frame.encode_to_vec(), now);
            }
            if ending.is_none() {
                if c.outbox().is_overflowed() {
                    c.overflowed();
                }
                if c.is_replaying() && c.outbox().has_replay_room() {
                    let before = c.outbox().queued();
                    c.pump_replays().await;
                    progress |= c.outbox().queued() != before || !c.is_replaying();
                }
                ending = c.settle(&|| now).await;
            }
            if let Some(ending) = ending {
                progress = true;
                peer.closes.push(ending.code);
                let c = link.conductor.take().expect("present");
                c.finish(ending).await;
            }
        }
        while peer.reading != Some(0) {
            let Some(queued) = link.rx.try_recv_queued() else {
                break;
            };
            if let Some(left) = peer.reading.as_mut() {
                *left -= 1;
            }
            {
                progress = true;
                link.rx.written(queued.frame.len());
                let frame = pb::ServerFrame::decode(queued.frame).expect("a server frame");
                peer.client.handle_frame(frame, now);
            }
        }
        if link.conductor.is_none() {
            // The gateway closed the link. A reading client has seen its Disconnect; one
            // that reads nothing only sees the transport close.
            progress = true;
            peer.link = None;
            if peer.reading == Some(0) {
                peer.client.transport_closed();
                peer.events.push_back(ClientEvent::Disconnected {
                    code: None,
                    reason: "transport closed".into(),
                    reconnect: Some(Duration::ZERO),
                });
                peer.connector.closed(Some(Duration::ZERO), now);
            }
        }
        while let Some(event) = peer.client.poll_event() {
            progress = true;
            match &event {
                ClientEvent::Connected(_) => peer.connector.welcomed(),
                // The peer's token provider answers at once with its current token.
                ClientEvent::TokenNeeded => {
                    let _ = peer.client.refresh(&peer.token);
                }
                ClientEvent::Disconnected { reconnect, .. } => {
                    // Told by the gateway, or the client found the link dead: either way
                    // the link is closed from the client's side.
                    if let Some(mut link) = peer.link.take() {
                        close_from_client(&mut link, now, &mut peer.closes).await;
                    }
                    peer.connector.closed(*reconnect, now);
                }
                _ => {}
            }
            peer.events.push_back(event);
        }
        progress
    }
}

/// The client closes its side of `link`: the gateway sees it go away and winds the
/// connection down (its code recorded in `closes`).
/// A new connection to the node over `transport`, as the driver sets one up; `None` when
/// the node refuses it at once.
fn open_link(
    node: &Arc<Node>,
    transport: ClientTransport,
    send_queue: usize,
    now: Instant,
    unix_ms: u64,
) -> Option<Link> {
    let kind = match transport {
        ClientTransport::WebTransport => TransportKind::WebTransport,
        ClientTransport::WebSocket => TransportKind::WebSocket,
        ClientTransport::Http => TransportKind::Http,
    };
    let (conn, control) = node.register(kind, IpAddr::V4(Ipv4Addr::LOCALHOST)).ok()?;
    let outbox = Outbox::new(send_queue);
    let (lane, rx) = Lane::new(&outbox);
    let t = Transport {
        kind,
        control: lane.clone(),
        lanes: Box::new(OneLane(lane)),
        datagrams: None,
        closer: Box::new(MemoryCloser),
    };
    Some(Link {
        conductor: Some(Conductor::new(node.clone(), conn, t, now, unix_ms)),
        rx,
        control: Some(control),
    })
}

async fn close_from_client(link: &mut Link, now: Instant, closes: &mut Vec<DisconnectCode>) {
    if let Some(mut c) = link.conductor.take() {
        c.peer_closed();
        if let Some(ending) = c.settle(&|| now).await {
            closes.push(ending.code);
            c.finish(ending).await;
        }
    }
}

fn uuid_like(unix_ms: u64, json: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    format!("{unix_ms:x}-{:x}", h.finish())
}
