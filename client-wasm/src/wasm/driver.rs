//! The browser event loop: one task that owns the [`ClientSession`] and the [`Connector`]
//! and reacts to one input at a time (application commands, transport frames and closes,
//! attempt outcomes, tokens, the network signal) or to the earliest timer. It is the
//! browser twin of the native driver; only the transports and the loop are new.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{Either, join_all, select};
use js_sys::Function;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::spawn_local;
use web_time::{Instant, SystemTime, UNIX_EPOCH};

use rtgate_protocol::{DisconnectCode, pb};

use super::js::{call, error, object, provide, to_js};
use super::link::{Link, LinkEvent, Sink};
use super::network::NetworkWatch;
use super::options::Options;
use super::state::StateInfo;
use super::timer::sleep;
use super::{http, websocket, webtransport};
use crate::backoff::Backoff;
use crate::connector::{Connector, ConnectorAction, ConnectorConfig, ConnectorState, TransportKind};
use crate::session::{ClientEvent, ClientSession, RequestError};

/// Settles a JavaScript promise.
pub(crate) type Settle = oneshot::Sender<Result<JsValue, JsValue>>;

/// A request from the application.
pub(crate) enum Command {
    Subscribe {
        room: String,
        token: Option<String>,
        token_provider: Option<Function>,
        since: Option<pb::StreamPosition>,
        handler: Function,
        done: Settle,
    },
    Unsubscribe {
        room: String,
    },
    Publish {
        room: String,
        event: Box<pb::Event>,
        done: Settle,
    },
    Typing {
        room: String,
        on: bool,
        private: bool,
    },
    SetAvailability {
        availability: pb::Availability,
        done: Settle,
    },
    Presence {
        done: Settle,
    },
    Position {
        room: String,
        done: Settle,
    },
    Close,
}

/// Everything the loop reacts to.
pub(crate) enum Input {
    Command(Command),
    /// A connection attempt finished (`probe`: one beside the connection in use).
    Attempt {
        id: u64,
        transport: TransportKind,
        probe: bool,
        outcome: Result<Box<Ready>, AttemptError>,
    },
    /// A transport of attempt `id` reported something.
    Link {
        id: u64,
        event: LinkEvent,
    },
    /// A fresh token for the connection of attempt `id`.
    Token {
        id: u64,
        result: Result<String, String>,
    },
    /// The browser went online (true) or offline (false).
    Online(bool),
}

/// An opened transport with the credentials to say Hello.
pub(crate) struct Ready {
    link: Link,
    token: String,
    room_tokens: Vec<(String, Result<String, String>)>,
}

/// Why an attempt failed.
pub(crate) enum AttemptError {
    /// The transport did not open.
    Open(String),
    /// The token provider failed.
    Token(String),
}

/// What a request's promise resolves to.
enum Answer {
    /// `Reply.published`.
    Published,
    /// Nothing.
    Done,
    /// `Reply.presence`.
    Presence,
}

pub(crate) struct Driver {
    options: Rc<Options>,
    inputs: mpsc::UnboundedReceiver<Input>,
    tx: mpsc::UnboundedSender<Input>,
    session: ClientSession,
    connector: Connector,
    /// The current transport and the attempt it came from.
    link: Option<(u64, Link)>,
    /// The latest attempt started.
    attempt: u64,
    handlers: HashMap<String, Function>,
    room_tokens: HashMap<String, Function>,
    sub_waiters: HashMap<String, Vec<Settle>>,
    reply_waiters: HashMap<u32, (Answer, Settle)>,
    last_end: (Option<u32>, String),
    reported: Option<StateInfo>,
    _network: Option<NetworkWatch>,
}

/// The wall-clock time, in milliseconds since the Unix epoch.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn request_error(e: RequestError) -> JsValue {
    match e {
        RequestError::NotConnected => error(0, "not connected"),
        RequestError::InvalidRoom => error(422, "invalid room name"),
    }
}

impl Driver {
    /// A driver and the sender through which everything reaches it.
    pub(crate) fn new(options: Options) -> (Driver, mpsc::UnboundedSender<Input>) {
        let (tx, inputs) = mpsc::unbounded();
        let now = Instant::now();
        let config = ConnectorConfig {
            prefer: options.prefer,
            connect_timeout: options.connect_timeout,
            enabled: options.enabled,
            fallback_cooldown: options.fallback_cooldown,
            ..ConnectorConfig::default()
        };
        let network = {
            let tx = tx.clone();
            NetworkWatch::start(Rc::new(move |online| {
                let _ = tx.unbounded_send(Input::Online(online));
            }))
        };
        let mut connector = Connector::new(config, Backoff::new(config.backoff), now);
        if network.as_ref().is_some_and(|n| !n.is_online()) {
            connector.offline();
        }
        let mut session = ClientSession::new(&options.client_name, env!("CARGO_PKG_VERSION"), now);
        session.set_refresh_margin(options.refresh_margin);
        let driver = Driver {
            session,
            options: Rc::new(options),
            inputs,
            tx: tx.clone(),
            connector,
            link: None,
            attempt: 0,
            handlers: HashMap::new(),
            room_tokens: HashMap::new(),
            sub_waiters: HashMap::new(),
            reply_waiters: HashMap::new(),
            last_end: (None, String::new()),
            reported: None,
            _network: network,
        };
        (driver, tx)
    }

    /// Runs until the application closes the client or the server says not to come back.
    pub(crate) async fn run(mut self) {
        self.pump();
        while self.connector.state() != ConnectorState::Stopped {
            let deadline = [self.session.poll_timeout(), self.connector.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let next = self.inputs.next();
            let input = match deadline {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    match select(next, sleep(wait)).await {
                        Either::Left((input, _)) => input,
                        Either::Right(_) => {
                            self.timeout(Instant::now());
                            self.pump();
                            continue;
                        }
                    }
                }
                None => next.await,
            };
            match input {
                Some(input) => self.handle(input),
                None => self.connector.stop(),
            }
            self.pump();
        }
        self.link = None;
        for done in self.sub_waiters.drain().flat_map(|(_, w)| w) {
            let _ = done.send(Err(error(0, "client stopped")));
        }
        for (_, (_, done)) in self.reply_waiters.drain() {
            let _ = done.send(Err(error(0, "client stopped")));
        }
    }

    fn timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
        self.connector.handle_timeout(now);
    }

    /// Applies every consequence of the last input: connector actions, frames to send,
    /// session events; then tells the application about a state change.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            while let Some(action) = self.connector.poll_action() {
                busy = true;
                match action {
                    ConnectorAction::Open { transport, timeout } => {
                        self.start_attempt(transport, timeout, false);
                    }
                    ConnectorAction::Probe { transport, timeout } => {
                        self.start_attempt(transport, timeout, true);
                    }
                    ConnectorAction::Close => self.link = None,
                }
            }
            while let Some(frame) = self.session.poll_transmit(Instant::now()) {
                if let Some((_, link)) = &self.link
                    && let Err(reason) = link.send(&frame)
                {
                    self.link_ended(None, reason);
                    busy = true;
                    break;
                }
            }
            while let Some(event) = self.session.poll_event() {
                busy = true;
                self.dispatch(event);
            }
            if !busy {
                break;
            }
        }
        self.report_state();
    }

    fn report_state(&mut self) {
        let mut info = StateInfo::new(
            self.connector.state(),
            self.session.is_ready(),
            self.connector.attempt(),
        );
        if info.state != "connected" {
            info.code = self.last_end.0;
            info.reason = self.last_end.1.clone();
        }
        if self.reported.as_ref() == Some(&info) {
            return;
        }
        self.reported = Some(info.clone());
        if let Some(callback) = &self.options.on_state_change {
            // The connector's timer while connected is the next probe, not a retry.
            info.retry_in = matches!(self.connector.state(), ConnectorState::Waiting)
                .then(|| self.connector.poll_timeout())
                .flatten()
                .map(|at| at.saturating_duration_since(Instant::now()));
            call(callback, &info.to_js());
        }
    }

    /// Opens `transport` and fetches the tokens to say Hello with; a `probe` runs beside
    /// the connection in use, which it replaces only once it is open.
    fn start_attempt(&mut self, transport: TransportKind, timeout: Duration, probe: bool) {
        self.attempt += 1;
        let id = self.attempt;
        let tx = self.tx.clone();
        let sink: Sink = {
            let tx = tx.clone();
            Rc::new(move |event| {
                let _ = tx.unbounded_send(Input::Link { id, event });
            })
        };
        let options = self.options.clone();
        let room_providers: Vec<(String, Function)> = self
            .room_tokens
            .iter()
            .map(|(room, f)| (room.clone(), f.clone()))
            .collect();
        spawn_local(async move {
            let opened = match transport {
                TransportKind::WebTransport => webtransport::open(
                    &options.webtransport_url,
                    options.cert_hash.as_deref(),
                    timeout,
                    sink,
                )
                .await
                .map(Link::Wt),
                TransportKind::WebSocket => websocket::open(&options.websocket_url, timeout, sink)
                    .await
                    .map(Link::Ws),
                TransportKind::Http => http::open(&options.http_url, timeout, sink).await.map(Link::Http),
            };
            let outcome = match opened {
                Err(e) => Err(AttemptError::Open(e)),
                Ok(link) => match provide(&options.token).await {
                    Err(e) => Err(AttemptError::Token(e)),
                    Ok(token) => {
                        let room_tokens = join_all(
                            room_providers
                                .into_iter()
                                .map(|(room, provider)| async move { (room, provide(&provider).await) }),
                        )
                        .await;
                        Ok(Box::new(Ready {
                            link,
                            token,
                            room_tokens,
                        }))
                    }
                },
            };
            let _ = tx.unbounded_send(Input::Attempt {
                id,
                transport,
                probe,
                outcome,
            });
        });
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Command(command) => self.command(command),
            Input::Attempt { id, .. } if id != self.attempt => {}
            Input::Attempt {
                id,
                transport,
                probe: true,
                outcome,
            } => {
                let ready = outcome.ok().filter(|ready| !ready.link.is_closed());
                if self.connector.probe_done(transport, ready.is_some(), now)
                    && let Some(ready) = ready
                {
                    // Move over: the old transport closes, the session says Hello on the
                    // new one and recovers its rooms from where it was.
                    self.link = None;
                    self.session.transport_closed();
                    self.adopt(id, *ready, now);
                }
            }
            Input::Attempt {
                transport,
                outcome: Err(AttemptError::Open(reason)),
                ..
            } => {
                self.last_end = (None, reason);
                self.connector.open_failed(transport, now);
            }
            Input::Attempt {
                transport,
                outcome: Err(AttemptError::Token(reason)),
                ..
            } => {
                self.last_end = (None, format!("token provider failed: {reason}"));
                self.connector.opened(transport);
                self.connector.closed(Some(Duration::ZERO), now);
            }
            Input::Attempt {
                id,
                transport,
                outcome: Ok(ready),
                ..
            } => {
                self.connector.opened(transport);
                if ready.link.is_closed() {
                    self.last_end = (None, "closed while connecting".into());
                    self.connector.closed(Some(Duration::ZERO), now);
                    return;
                }
                self.adopt(id, *ready, now);
            }
            Input::Link { id, event } => {
                if self.link.as_ref().is_none_or(|(current, _)| *current != id) {
                    return;
                }
                match event {
                    LinkEvent::Frame(frame) => self.session.handle_frame(*frame, now),
                    LinkEvent::Closed { code, reason } => self.link_ended(code, reason),
                }
            }
            Input::Token { id, result } => {
                if self.link.as_ref().is_none_or(|(current, _)| *current != id) {
                    return;
                }
                match result {
                    Ok(token) => {
                        let _ = self.session.refresh(&token);
                    }
                    Err(_) => self.session.token_unavailable(now),
                }
            }
            Input::Online(true) => self.connector.online(now),
            Input::Online(false) => self.connector.offline(),
        }
    }

    /// Runs the session over the opened transport of attempt `id`: Hello, then the rooms.
    fn adopt(&mut self, id: u64, ready: Ready, now: Instant) {
        for (room, token) in ready.room_tokens {
            if let Ok(token) = token
                && self.session.rooms().any(|r| r.as_str() == room)
            {
                let _ = self.session.subscribe(&room, Some(&token));
            }
        }
        self.link = Some((id, ready.link));
        self.session.connect(&ready.token, now, unix_ms());
    }

    /// The transport ended without a Disconnect frame.
    fn link_ended(&mut self, code: Option<u32>, reason: String) {
        if self.link.take().is_none() {
            return;
        }
        let known = code.and_then(DisconnectCode::from_code);
        if !self.session.is_ready() && known.is_none() {
            self.connector.lost_before_welcome(Instant::now());
        }
        self.session.transport_closed();
        let advice = match known {
            Some(known) => known
                .reconnect_advice()
                .map(|ms| Duration::from_millis(u64::from(ms))),
            None => Some(Duration::ZERO),
        };
        self.ended(code, reason, advice);
    }

    fn ended(&mut self, code: Option<u32>, reason: String, advice: Option<Duration>) {
        self.link = None;
        self.last_end = (code, reason);
        self.connector.closed(advice, Instant::now());
    }

    /// Asks the application's token function for a fresh token for the current connection.
    fn fetch_refresh_token(&self) {
        let Some((id, _)) = &self.link else { return };
        let (id, tx, provider) = (*id, self.tx.clone(), self.options.token.clone());
        spawn_local(async move {
            let result = provide(&provider).await;
            let _ = tx.unbounded_send(Input::Token { id, result });
        });
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Subscribe {
                room,
                token,
                token_provider,
                since,
                handler,
                done,
            } => {
                if since.is_none() && self.session.is_live(&room) {
                    self.handlers.insert(room.clone(), handler);
                    let _ = done.send(Ok(subscribed_js(&room, false, false, 0)));
                    return;
                }
                let result = match since {
                    Some(since) => self.session.subscribe_from(&room, token.as_deref(), since),
                    None => self.session.subscribe(&room, token.as_deref()),
                };
                match result {
                    Ok(()) => {
                        self.handlers.insert(room.clone(), handler);
                        if let Some(provider) = token_provider {
                            self.room_tokens.insert(room.clone(), provider);
                        }
                        self.sub_waiters.entry(room).or_default().push(done);
                    }
                    Err(e) => {
                        let _ = done.send(Err(request_error(e)));
                    }
                }
            }
            Command::Unsubscribe { room } => {
                let _ = self.session.unsubscribe(&room);
                self.handlers.remove(&room);
                self.room_tokens.remove(&room);
                for done in self.sub_waiters.remove(&room).unwrap_or_default() {
                    let _ = done.send(Err(error(0, "unsubscribed")));
                }
            }
            Command::Publish { room, event, done } => {
                let request = self.session.publish(&room, *event);
                self.await_reply(request, Answer::Published, done);
            }
            Command::SetAvailability { availability, done } => {
                let request = self.session.set_availability(availability);
                self.await_reply(request, Answer::Done, done);
            }
            Command::Presence { done } => {
                let request = self.session.query_presence();
                self.await_reply(request, Answer::Presence, done);
            }
            Command::Typing { room, on, private } => {
                if self.session.is_ready()
                    && let Some((_, link)) = &self.link
                    && let Ok(frame) = self.session.typing_frame(&room, on, private)
                {
                    let _ = link.send_unreliable(&frame);
                }
            }
            Command::Position { room, done } => {
                let position = self.session.position(&room).map_or(JsValue::UNDEFINED, to_js);
                let _ = done.send(Ok(position));
            }
            Command::Close => {
                self.last_end = (None, "closed by the application".into());
                self.connector.stop();
            }
        }
    }

    fn await_reply(&mut self, request: Result<u32, RequestError>, answer: Answer, done: Settle) {
        match request {
            Ok(id) => {
                self.reply_waiters.insert(id, (answer, done));
            }
            Err(e) => {
                let _ = done.send(Err(request_error(e)));
            }
        }
    }

    fn deliver(&self, room: &str, value: &JsValue, presence: bool) {
        if presence && let Some(callback) = &self.options.on_presence {
            call(callback, value);
        }
        if let Some(handler) = self.handlers.get(room).or(self.options.on_event.as_ref()) {
            call(handler, value);
        }
    }

    fn dispatch(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected(_) => {
                self.connector.welcomed();
                self.last_end = (None, String::new());
            }
            ClientEvent::Subscribed {
                room,
                resumed,
                recovered,
                replayed,
            } => {
                for done in self.sub_waiters.remove(room.as_str()).unwrap_or_default() {
                    let _ = done.send(Ok(subscribed_js(room.as_str(), resumed, recovered, replayed)));
                }
            }
            ClientEvent::RecoveryFailed { room } => {
                if let Some(callback) = &self.options.on_room_reset {
                    call(callback, &room.as_str().into());
                }
            }
            ClientEvent::SubscribeFailed { room, error: e } => {
                self.handlers.remove(room.as_str());
                self.room_tokens.remove(room.as_str());
                for done in self.sub_waiters.remove(room.as_str()).unwrap_or_default() {
                    let _ = done.send(Err(error(e.code, &e.message)));
                }
            }
            ClientEvent::Event { room, offset, event } => {
                let presence = event.name.starts_with("presence.");
                let value = object(&[
                    ("room", room.as_str().into()),
                    ("offset", (offset as f64).into()),
                    ("ephemeral", false.into()),
                    ("event", to_js(&event)),
                ]);
                self.deliver(room.as_str(), &value, presence);
            }
            ClientEvent::Ephemeral { room, event } => {
                let value = object(&[
                    ("room", room.as_str().into()),
                    ("ephemeral", true.into()),
                    ("event", to_js(&event)),
                ]);
                self.deliver(room.as_str(), &value, false);
            }
            ClientEvent::TokenNeeded => self.fetch_refresh_token(),
            ClientEvent::Reply { id, result } => {
                if let Some((answer, done)) = self.reply_waiters.remove(&id) {
                    let _ = done.send(match (result, answer) {
                        (Err(e), _) => Err(error(e.code, &e.message)),
                        (Ok(reply), Answer::Published) => Ok(to_js(&reply.published)),
                        (Ok(reply), Answer::Presence) => Ok(to_js(&reply.presence.unwrap_or_default())),
                        (Ok(_), Answer::Done) => Ok(JsValue::UNDEFINED),
                    });
                }
            }
            ClientEvent::Disconnected {
                code,
                reason,
                reconnect,
            } => self.ended(code, reason, reconnect),
        }
    }
}

fn subscribed_js(room: &str, resumed: bool, recovered: bool, replayed: u32) -> JsValue {
    object(&[
        ("room", room.into()),
        ("resumed", resumed.into()),
        ("recovered", recovered.into()),
        ("replayed", replayed.into()),
    ])
}
