//! The native (tokio) client: a task that keeps one connection alive over WebTransport or
//! WebSocket, driving the sans-IO [`ClientSession`] and reconnecting with [`Backoff`].

mod transport;

pub use transport::{SharedEndpoint, TransportKind, webtransport_endpoint};

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use web_time::Instant;

use rtgate_protocol::pb;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::{Backoff, BackoffConfig};
use crate::connector::{Connector, ConnectorAction, ConnectorConfig, ConnectorState, TransportPreference};
use crate::session::{ClientEvent, ClientSession, RequestError};
use transport::Link;

/// A token being fetched.
type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Supplies a token at connect, and on the live connection shortly before the current
/// token expires (the client then refreshes it without reconnecting).
pub type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// A provider that always returns the same token.
pub fn fixed_token(token: impl Into<String>) -> TokenProvider {
    let token = token.into();
    Arc::new(move || {
        let token = token.clone();
        Box::pin(async move { Ok(token) })
    })
}

/// How to reach the gateway.
#[derive(Clone)]
pub struct ClientConfig {
    /// WebTransport URL, e.g. `https://127.0.0.1:4433/wt`.
    pub wt_url: String,
    /// WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`.
    pub ws_url: String,
    /// SHA-256 of a development certificate to trust.
    pub cert_sha256: Option<[u8; 32]>,
    /// A QUIC endpoint to share with other clients (see [`webtransport_endpoint`]); by
    /// default each client opens its own.
    pub wt_endpoint: Option<SharedEndpoint>,
    /// Transport choice.
    pub prefer: TransportPreference,
    /// How long WebTransport may take to connect before falling back.
    pub connect_timeout: Duration,
    /// Token source.
    pub token: TokenProvider,
    /// How long before the token expires a fresh one is fetched (at most half of its
    /// remaining life).
    pub refresh_margin: Duration,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// Whether to reconnect after a disconnect.
    pub reconnect: bool,
    /// Name announced in Hello.
    pub name: String,
}

impl ClientConfig {
    /// A configuration with defaults for the given URLs and token.
    pub fn new(wt_url: impl Into<String>, ws_url: impl Into<String>, token: TokenProvider) -> Self {
        ClientConfig {
            wt_url: wt_url.into(),
            ws_url: ws_url.into(),
            cert_sha256: None,
            wt_endpoint: None,
            prefer: TransportPreference::Auto,
            connect_timeout: Duration::from_secs(3),
            token,
            refresh_margin: ClientSession::DEFAULT_REFRESH_MARGIN,
            backoff: BackoffConfig::default(),
            reconnect: true,
            name: "rtgate-client".into(),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Not connected right now.
    #[error("not connected")]
    NotConnected,
    /// The server answered with an error.
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(pb::Error),
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// Invalid input.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl From<RequestError> for ClientError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NotConnected => ClientError::NotConnected,
            RequestError::InvalidRoom => ClientError::Invalid("room name".into()),
        }
    }
}

/// The client's connection state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Trying to connect (attempt number).
    Connecting(u32),
    /// Connected over a transport.
    Connected(TransportKind),
    /// Waiting before the next attempt.
    Waiting(Duration),
    /// Stopped for good (closed, or the server said not to reconnect).
    Stopped,
}

enum RequestKind {
    Availability(pb::Availability),
    Presence,
}

enum Command {
    Subscribe {
        room: String,
        token: Option<String>,
        since: Option<pb::StreamPosition>,
        done: oneshot::Sender<Result<(bool, u32), ClientError>>,
    },
    Unsubscribe {
        room: String,
    },
    Publish {
        room: String,
        event: Box<pb::Event>,
        done: oneshot::Sender<Result<pb::Reply, ClientError>>,
    },
    Typing {
        room: String,
        on: bool,
        private: bool,
    },
    Request {
        kind: RequestKind,
        done: oneshot::Sender<Result<pb::Reply, ClientError>>,
    },
    Refresh {
        token: String,
        done: oneshot::Sender<Result<pb::Reply, ClientError>>,
    },
    Close,
}

/// A handle to a running client. Dropping every handle closes it.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
}

impl Client {
    /// Starts a client; events arrive on the returned receiver.
    pub fn connect(config: ClientConfig) -> (Client, mpsc::UnboundedReceiver<ClientEvent>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting(0));
        tokio::spawn(Driver::new(config, rx, events_tx, state_tx).run());
        (Client { commands, state }, events)
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// Waits until connected and returns the transport.
    pub async fn connected(&self) -> Result<TransportKind, ClientError> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                ConnectionState::Connected(kind) => return Ok(*kind),
                ConnectionState::Stopped => return Err(ClientError::Closed),
                _ => {}
            }
            state.changed().await.map_err(|_| ClientError::Closed)?;
        }
    }

    /// Joins a room and waits until it is live. Returns (recovered, replayed).
    pub async fn subscribe(&self, room: &str, token: Option<&str>) -> Result<(bool, u32), ClientError> {
        self.subscribe_inner(room, token, None).await
    }

    /// Joins a room resuming from `since`. Returns (recovered, replayed).
    pub async fn subscribe_from(
        &self,
        room: &str,
        token: Option<&str>,
        since: pb::StreamPosition,
    ) -> Result<(bool, u32), ClientError> {
        self.subscribe_inner(room, token, Some(since)).await
    }

    async fn subscribe_inner(
        &self,
        room: &str,
        token: Option<&str>,
        since: Option<pb::StreamPosition>,
    ) -> Result<(bool, u32), ClientError> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                room: room.into(),
                token: token.map(str::to_string),
                since,
                done,
            })
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Leaves a room.
    pub fn unsubscribe(&self, room: &str) {
        let _ = self.commands.send(Command::Unsubscribe { room: room.into() });
    }

    /// Publishes a client event to a joined room.
    pub async fn publish(&self, room: &str, event: pb::Event) -> Result<pb::Reply, ClientError> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish {
                room: room.into(),
                event: Box::new(event),
                done,
            })
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Typing on/off in a conversation room (a datagram over WebTransport).
    pub fn typing(&self, room: &str, on: bool, private: bool) {
        let _ = self.commands.send(Command::Typing {
            room: room.into(),
            on,
            private,
        });
    }

    /// Sends a fresh token on the live connection.
    pub async fn refresh_token(&self, token: &str) -> Result<pb::Reply, ClientError> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Refresh {
                token: token.into(),
                done,
            })
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Sets the agent's availability (online, busy, offline).
    pub async fn set_availability(&self, availability: pb::Availability) -> Result<pb::Reply, ClientError> {
        self.request(RequestKind::Availability(availability)).await
    }

    /// The presence of the connection's account.
    pub async fn presence(&self) -> Result<pb::Presence, ClientError> {
        let reply = self.request(RequestKind::Presence).await?;
        Ok(reply.presence.unwrap_or_default())
    }

    async fn request(&self, kind: RequestKind) -> Result<pb::Reply, ClientError> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Request { kind, done })
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Closes the connection and stops reconnecting.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

type SubWaiter = oneshot::Sender<Result<(bool, u32), ClientError>>;
type ReplyWaiter = oneshot::Sender<Result<pb::Reply, ClientError>>;

struct Driver {
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<ClientEvent>,
    state: watch::Sender<ConnectionState>,
    session: ClientSession,
    connector: Connector,
    sub_waiters: HashMap<String, Vec<SubWaiter>>,
    reply_waiters: HashMap<u32, ReplyWaiter>,
    /// Connector actions taken while a link was served, carried out once it is closed.
    deferred: VecDeque<ConnectorAction>,
    /// The session asked for a fresh token.
    token_needed: bool,
}

enum LinkEnd {
    /// Reconnect after at least this long.
    Reconnect(Option<Duration>),
    /// Do not reconnect.
    Stop,
    /// The connector closed the link: it knows already.
    Closed,
}

/// The wall-clock time, in milliseconds since the Unix epoch.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Driver {
    fn new(
        config: ClientConfig,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<ClientEvent>,
        state: watch::Sender<ConnectionState>,
    ) -> Self {
        let mut session = ClientSession::new(&config.name, env!("CARGO_PKG_VERSION"), Instant::now());
        session.set_refresh_margin(config.refresh_margin);
        let connector_config = ConnectorConfig {
            prefer: config.prefer,
            connect_timeout: config.connect_timeout,
            backoff: config.backoff,
            ..ConnectorConfig::default()
        };
        let connector = Connector::new(connector_config, Backoff::new(config.backoff), Instant::now());
        Driver {
            config,
            commands,
            events,
            state,
            session,
            connector,
            sub_waiters: HashMap::new(),
            reply_waiters: HashMap::new(),
            deferred: VecDeque::new(),
            token_needed: false,
        }
    }

    async fn open(
        &self,
        transport: TransportKind,
        timeout: Duration,
    ) -> Result<(Link, mpsc::Receiver<transport::Inbound>), String> {
        let c = &self.config;
        match transport {
            TransportKind::WebTransport => {
                Link::webtransport(&c.wt_url, c.cert_sha256, c.wt_endpoint.as_ref(), timeout).await
            }
            TransportKind::WebSocket => Link::websocket(&c.ws_url, timeout).await,
            TransportKind::Http => Err("the native client speaks WebTransport and WebSocket".into()),
        }
    }

    async fn run(mut self) {
        loop {
            while let Some(action) = self.deferred.pop_front().or_else(|| self.connector.poll_action()) {
                match action {
                    ConnectorAction::Open { transport, timeout } => self.attempt(transport, timeout).await,
                    // `serve` closes its link before it returns: none is open here.
                    ConnectorAction::Close => {}
                    // The native client keeps the link it has and moves up at its next
                    // reconnect (it never runs two transports side by side).
                    ConnectorAction::Probe { transport, .. } => {
                        let _ = self.connector.probe_done(transport, false, Instant::now());
                    }
                }
            }
            if self.connector.state() == ConnectorState::Stopped {
                break;
            }
            let Some(until) = self.connector.poll_timeout() else {
                break;
            };
            let _ = self.state.send(ConnectionState::Waiting(
                until.saturating_duration_since(Instant::now()),
            ));
            tokio::select! {
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {
                    self.connector.handle_timeout(Instant::now());
                }
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd, None).await,
                    None => self.connector.stop(),
                },
            }
        }
        let _ = self.state.send(ConnectionState::Stopped);
        for (_, waiters) in self.sub_waiters.drain() {
            for w in waiters {
                let _ = w.send(Err(ClientError::Closed));
            }
        }
    }

    /// Opens `transport` and serves the link until it ends.
    async fn attempt(&mut self, transport: TransportKind, timeout: Duration) {
        let _ = self
            .state
            .send(ConnectionState::Connecting(self.connector.attempt()));
        match self.open(transport, timeout).await {
            Ok((link, inbound)) => {
                self.connector.opened(transport);
                match self.serve(link, inbound).await {
                    LinkEnd::Reconnect(advice) if self.config.reconnect => self
                        .connector
                        .closed(Some(advice.unwrap_or(Duration::ZERO)), Instant::now()),
                    LinkEnd::Reconnect(_) | LinkEnd::Stop => self.connector.stop(),
                    LinkEnd::Closed => {}
                }
            }
            Err(err) => {
                tracing::debug!(%err, ?transport, "connect failed");
                if self.config.reconnect || transport == TransportKind::WebTransport {
                    self.connector.open_failed(transport, Instant::now());
                } else {
                    self.connector.stop();
                }
            }
        }
    }

    /// Takes the connector's actions while a link is served; `Some` when the link must end.
    fn connector_actions(&mut self) -> Option<LinkEnd> {
        let mut end = None;
        while let Some(action) = self.connector.poll_action() {
            match action {
                ConnectorAction::Close => end = Some(LinkEnd::Closed),
                ConnectorAction::Probe { transport, .. } => {
                    let _ = self.connector.probe_done(transport, false, Instant::now());
                }
                // Another transport replaces this link: close it, then open that one.
                ConnectorAction::Open { .. } => {
                    self.deferred.push_back(action);
                    end = Some(LinkEnd::Closed);
                }
            }
        }
        end
    }

    async fn command(&mut self, cmd: Command, link: Option<&mut Link>) {
        match cmd {
            Command::Subscribe {
                room,
                token,
                since,
                done,
            } => {
                if since.is_none() && self.session.is_live(&room) {
                    let _ = done.send(Ok((false, 0)));
                    return;
                }
                let result = match since {
                    Some(since) => self.session.subscribe_from(&room, token.as_deref(), since),
                    None => self.session.subscribe(&room, token.as_deref()),
                };
                match result {
                    Ok(()) => self.sub_waiters.entry(room).or_default().push(done),
                    Err(e) => {
                        let _ = done.send(Err(e.into()));
                    }
                }
            }
            Command::Unsubscribe { room } => {
                let _ = self.session.unsubscribe(&room);
            }
            Command::Publish { room, event, done } => match self.session.publish(&room, *event) {
                Ok(id) => {
                    self.reply_waiters.insert(id, done);
                }
                Err(e) => {
                    let _ = done.send(Err(e.into()));
                }
            },
            Command::Refresh { token, done } => match self.session.refresh(&token) {
                Ok(id) => {
                    self.reply_waiters.insert(id, done);
                }
                Err(e) => {
                    let _ = done.send(Err(e.into()));
                }
            },
            Command::Typing { room, on, private } => {
                if let Some(link) = link
                    && self.session.is_ready()
                    && let Ok(frame) = self.session.typing_frame(&room, on, private)
                {
                    let _ = link.send_unreliable(&frame).await;
                }
            }
            Command::Request { kind, done } => {
                let result = match kind {
                    RequestKind::Availability(a) => self.session.set_availability(a),
                    RequestKind::Presence => self.session.query_presence(),
                };
                match result {
                    Ok(id) => {
                        self.reply_waiters.insert(id, done);
                    }
                    Err(e) => {
                        let _ = done.send(Err(e.into()));
                    }
                }
            }
            Command::Close => self.connector.stop(),
        }
    }

    /// Routes session events to waiters and the application; returns how the link ended
    /// if it did. A request for a fresh token is answered by the driver, not passed on.
    fn dispatch(&mut self, kind: TransportKind) -> Option<LinkEnd> {
        let mut end = None;
        while let Some(event) = self.session.poll_event() {
            match &event {
                ClientEvent::TokenNeeded => {
                    self.token_needed = true;
                    continue;
                }
                ClientEvent::Connected(_) => {
                    self.connector.welcomed();
                    let _ = self.state.send(ConnectionState::Connected(kind));
                }
                ClientEvent::Subscribed {
                    room,
                    recovered,
                    replayed,
                    ..
                } => {
                    for w in self.sub_waiters.remove(room.as_str()).unwrap_or_default() {
                        let _ = w.send(Ok((*recovered, *replayed)));
                    }
                }
                ClientEvent::SubscribeFailed { room, error } => {
                    for w in self.sub_waiters.remove(room.as_str()).unwrap_or_default() {
                        let _ = w.send(Err(ClientError::Server(error.clone())));
                    }
                }
                ClientEvent::Reply { id, result } => {
                    if let Some(w) = self.reply_waiters.remove(id) {
                        let _ = w.send(match result {
                            Ok(reply) => Ok(reply.clone()),
                            Err(e) if e.code == 0 => Err(ClientError::NotConnected),
                            Err(e) => Err(ClientError::Server(e.clone())),
                        });
                    }
                }
                ClientEvent::Disconnected { reconnect, .. } => {
                    end = Some(match reconnect {
                        Some(delay) => LinkEnd::Reconnect(Some(*delay)),
                        None => LinkEnd::Stop,
                    });
                }
                _ => {}
            }
            let _ = self.events.send(event);
        }
        end
    }

    async fn serve(&mut self, mut link: Link, mut inbound: mpsc::Receiver<transport::Inbound>) -> LinkEnd {
        let kind = link.kind();
        let token = match (self.config.token)().await {
            Ok(t) => t,
            Err(err) => {
                tracing::warn!(%err, "token provider failed");
                link.close().await;
                return LinkEnd::Reconnect(None);
            }
        };
        self.session.connect(&token, Instant::now(), unix_ms());
        self.token_needed = false;
        // A fresh token being fetched for this connection.
        let mut fetching: Option<TokenFuture> = None;
        let end = loop {
            while let Some(frame) = self.session.poll_transmit(Instant::now()) {
                if link.send(&frame).await.is_err() {
                    break;
                }
            }
            if let Some(end) = self.dispatch(kind) {
                break end;
            }
            if std::mem::take(&mut self.token_needed) {
                fetching = Some((self.config.token)());
            }
            if let Some(end) = self.connector_actions() {
                break end;
            }
            let deadline = self.session.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                frame = inbound.recv() => match frame {
                    Some(Ok(frame)) => self.session.handle_frame(frame, Instant::now()),
                    Some(Err(_)) | None => {
                        self.session.transport_closed();
                        self.dispatch(kind);
                        let _ = self.events.send(ClientEvent::Disconnected {
                            code: None,
                            reason: "transport closed".into(),
                            reconnect: Some(Duration::ZERO),
                        });
                        break LinkEnd::Reconnect(None);
                    }
                },
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd, Some(&mut link)).await,
                    None => self.connector.stop(),
                },
                token = async { fetching.as_mut().expect("guarded").await }, if fetching.is_some() => {
                    fetching = None;
                    match token {
                        Ok(token) => {
                            let _ = self.session.refresh(&token);
                        }
                        Err(err) => {
                            tracing::warn!(%err, "token provider failed");
                            self.session.token_unavailable(Instant::now());
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    self.session.handle_timeout(Instant::now());
                }
            }
        };
        // Requests in flight on this link fail now (nothing new when the session already
        // saw the end): with `Closed` when the client is closing.
        if self.connector.state() == ConnectorState::Stopped {
            for (_, w) in self.reply_waiters.drain() {
                let _ = w.send(Err(ClientError::Closed));
            }
        }
        self.session.transport_closed();
        self.dispatch(kind);
        link.close().await;
        end
    }
}
