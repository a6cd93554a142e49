//! The transport-agnostic session state machine of one connection. Sans-IO: decoded
//! frames, engine results and instants go in; frames to send, engine requests and timer
//! deadlines come out. The transports and the connection driver only move bytes.
//!
//! Lifecycle: `AwaitingHello` → (token verified, auto rooms joining) `Joining` → `Welcome`
//! sent → `Active` → `Closed`. Every input after `Closed` is ignored.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, ErrorCode, FrameError, PROTOCOL_VERSION, RoomKind, RoomName};

use crate::auth::{AuthError, Authenticator, Principal, Role};
use crate::authz::{Grant, may_join};
use crate::engine::{EngineError, SubscribeOutcome};
use crate::ids::StreamPos;
use crate::ratelimit::TokenBucket;

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

/// What the session asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a frame on the control path.
    Send(pb::ServerFrame),
    /// The Hello's token verified: take the connection in (node and user limits), then
    /// call [`Session::admitted`].
    Admit,
    /// Subscribe to a room in the engine, then call [`Session::join_done`].
    Join {
        /// The room.
        room: RoomName,
        /// Recovery position, if any.
        since: Option<StreamPos>,
    },
    /// Start delivering the room's replay and live events (after its result was sent).
    Activate(RoomName),
    /// Unsubscribe from a room in the engine.
    Leave(RoomName),
    /// Publish a client event, then call [`Session::publish_done`].
    Publish {
        /// Request id to answer.
        id: u32,
        /// The room.
        room: RoomName,
        /// The event, with server-set fields filled in.
        event: pb::Event,
    },
    /// Deliver an ephemeral event to the room's other subscribers.
    Ephemeral {
        /// The room.
        room: RoomName,
        /// The event.
        event: pb::Event,
        /// Hidden from contacts.
        private: bool,
    },
    /// Set the agent's availability, then call [`Session::answer`].
    SetAvailability {
        /// Request id to answer.
        id: u32,
        /// The new availability.
        availability: pb::Availability,
    },
    /// Fetch the account's presence, then call [`Session::answer`].
    QueryPresence {
        /// Request id to answer.
        id: u32,
    },
    /// Count an authentication failure (for metrics), by reason label.
    AuthFailed(&'static str),
    /// Send `Disconnect` with this code, flush, and close the transport.
    Close(DisconnectCode, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoomState {
    /// Joining on behalf of request `id` (0 for rooms joined automatically).
    Joining {
        id: u32,
        grant: Grant,
    },
    Live {
        grant: Grant,
    },
}

impl RoomState {
    fn is_live(&self) -> bool {
        matches!(self, RoomState::Live { .. })
    }

    fn grant(&self) -> Grant {
        match self {
            RoomState::Joining { grant, .. } | RoomState::Live { grant } => *grant,
        }
    }
}

#[derive(Debug)]
enum State {
    AwaitingHello,
    /// The token verified; the driver is taking the connection in.
    Admitting {
        recover: HashMap<String, StreamPos>,
        queued: VecDeque<pb::ClientFrame>,
    },
    /// Auto rooms are being joined; frames that arrive meanwhile wait.
    Joining {
        pending: usize,
        results: Vec<pb::SubscribeResult>,
        queued: VecDeque<pb::ClientFrame>,
    },
    Active,
    Closed,
}

/// One connection's session.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    auth: Arc<Authenticator>,
    session_id: String,
    state: State,
    principal: Option<Principal>,
    started: Instant,
    unix_ms_at_start: u64,
    last_rx: Instant,
    rooms: HashMap<RoomName, RoomState>,
    last_typing: HashMap<RoomName, Instant>,
    /// Rooms where this connection's typing indicator is on: until when, and private.
    typing_until: HashMap<RoomName, (Instant, bool)>,
    requests: TokenBucket,
    publishes: TokenBucket,
    actions: VecDeque<Action>,
}

/// Most frames held back while a session is being set up.
const MAX_QUEUED_DURING_SETUP: usize = 64;

impl Session {
    /// A session that started at `now`, when the wall clock read `unix_ms`.
    pub fn new(
        config: Arc<SessionConfig>,
        auth: Arc<Authenticator>,
        session_id: String,
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        let requests = TokenBucket::new(config.request_rate, config.request_burst, now);
        let publishes = TokenBucket::new(config.client_publish_rate, config.client_publish_burst, now);
        Session {
            config,
            auth,
            session_id,
            state: State::AwaitingHello,
            principal: None,
            started: now,
            unix_ms_at_start: unix_ms,
            last_rx: now,
            rooms: HashMap::new(),
            last_typing: HashMap::new(),
            typing_until: HashMap::new(),
            requests,
            publishes,
            actions: VecDeque::new(),
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if action.is_none() && self.actions.capacity() > 0 {
            // An idle connection keeps no buffer.
            self.actions = VecDeque::new();
        }
        action
    }

    /// Whether the session has ended (its `Close` action may still be pending).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The authenticated principal, once Hello succeeded.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Rooms joined or being joined.
    pub fn rooms(&self) -> impl Iterator<Item = &RoomName> {
        self.rooms.keys()
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_ms_at_start + now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// `exp` plus the clock leeway (the rule Hello applies) plus the refresh grace.
    fn token_deadline(&self) -> Option<Instant> {
        let exp = self.principal.as_ref()?.expires_at?;
        let exp_ms = exp.saturating_add(self.auth.leeway_secs()).saturating_mul(1000);
        let from_start = exp_ms.saturating_sub(self.unix_ms_at_start);
        Some(self.started + Duration::from_millis(from_start) + self.config.refresh_grace)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitingHello => Some(self.started + self.config.hello_timeout),
            State::Admitting { .. } => Some(self.started + self.config.hello_timeout),
            State::Joining { .. } | State::Active => {
                let stale = self.last_rx + self.config.stale_timeout;
                let mut next = self.token_deadline().map_or(stale, |t| t.min(stale));
                for (until, _) in self.typing_until.values() {
                    next = next.min(*until);
                }
                Some(next)
            }
        }
    }

    /// Fires the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => {}
            State::AwaitingHello | State::Admitting { .. } => {
                if now >= self.started + self.config.hello_timeout {
                    self.close(DisconnectCode::HelloTimeout, "no hello in time");
                }
            }
            State::Joining { .. } | State::Active => {
                let expired: Vec<RoomName> = self
                    .typing_until
                    .iter()
                    .filter(|(_, (until, _))| now >= *until)
                    .map(|(room, _)| room.clone())
                    .collect();
                for room in expired {
                    self.typing_off(&room, now);
                }
                if let Some(deadline) = self.token_deadline()
                    && now >= deadline
                {
                    self.close(
                        DisconnectCode::TokenExpired,
                        "token expired and was not refreshed",
                    );
                } else if now >= self.last_rx + self.config.stale_timeout {
                    self.close(DisconnectCode::Stale, "no heartbeat");
                }
            }
        }
    }

    /// Ends the session with `code`; typing indicators it left on are turned off.
    pub fn close(&mut self, code: DisconnectCode, reason: &str) {
        if self.is_closed() {
            return;
        }
        let typing: Vec<RoomName> = self.typing_until.keys().cloned().collect();
        for room in typing {
            self.typing_off(&room, self.last_rx);
        }
        self.state = State::Closed;
        self.actions.push_back(Action::Close(code, reason.to_string()));
    }

    /// The transport could not frame the input (too large, bad length).
    pub fn handle_framing_error(&mut self, err: &FrameError) {
        match err {
            FrameError::TooLarge { .. } => self.close(DisconnectCode::FrameTooLarge, &err.to_string()),
            _ => self.close(DisconnectCode::BadFrame, &err.to_string()),
        }
    }

    /// One frame body from the control path (a stream frame or a WebSocket message).
    pub fn handle_frame(&mut self, body: &[u8], now: Instant) {
        if self.is_closed() {
            return;
        }
        match rtgate_protocol::decode_frame::<pb::ClientFrame>(body, self.config.max_frame_size) {
            Ok(frame) => self.handle_client_frame(frame, now),
            Err(err) => self.handle_framing_error(&err),
        }
    }

    /// One datagram: only typing and ping are meaningful; undecodable ones are dropped
    /// (datagrams are unreliable by nature, so nothing depends on them).
    pub fn handle_datagram(&mut self, body: &[u8], now: Instant) {
        if !matches!(self.state, State::Active) {
            return;
        }
        if let Ok(frame) = pb::ClientFrame::decode(body)
            && matches!(frame.kind, Some(C::Typing(_)) | Some(C::Ping(_)))
        {
            self.handle_client_frame(frame, now);
        }
    }

    /// A decoded client frame.
    pub fn handle_client_frame(&mut self, frame: pb::ClientFrame, now: Instant) {
        self.last_rx = now;
        match &mut self.state {
            State::Closed => {}
            State::AwaitingHello => match frame.kind {
                Some(C::Hello(hello)) => self.handle_hello(hello, now),
                _ => self.close(DisconnectCode::ProtocolViolation, "the first frame must be hello"),
            },
            State::Joining { queued, .. } | State::Admitting { queued, .. } => {
                if queued.len() >= MAX_QUEUED_DURING_SETUP {
                    self.close(
                        DisconnectCode::ProtocolViolation,
                        "too many frames before welcome",
                    );
                } else {
                    queued.push_back(frame);
                }
            }
            State::Active => self.handle_active(frame, now),
        }
    }

    fn reply_error(&mut self, id: u32, code: ErrorCode, message: &str) {
        if id == 0 {
            return;
        }
        self.send(S::Reply(pb::Reply {
            id,
            error: Some(code.error(message)),
            ..Default::default()
        }));
    }

    fn reply(&mut self, reply: pb::Reply) {
        if reply.id != 0 {
            self.send(S::Reply(reply));
        }
    }

    fn send(&mut self, kind: S) {
        self.actions
            .push_back(Action::Send(pb::ServerFrame { kind: Some(kind) }));
    }

    fn handle_hello(&mut self, hello: pb::Hello, now: Instant) {
        let principal = match self
            .auth
            .verify_connection(&hello.token, self.unix_ms(now) / 1000)
        {
            Ok(p) => p,
            Err(err) => {
                self.actions.push_back(Action::AuthFailed(err.label()));
                let code = if err == AuthError::Expired {
                    DisconnectCode::TokenExpired
                } else {
                    DisconnectCode::Unauthorized
                };
                return self.close(code, "token refused");
            }
        };
        let recover: HashMap<String, StreamPos> = hello
            .recover
            .iter()
            .filter_map(|r| Some((r.room.clone(), StreamPos::from_pb(r.position.as_ref()?))))
            .collect();
        self.state = State::Admitting {
            recover,
            queued: VecDeque::new(),
        };
        self.principal = Some(principal);
        self.actions.push_back(Action::Admit);
    }

    /// The driver took the connection in (or refused it: at the node's or the user's
    /// connection limit). On success the automatic rooms are joined.
    pub fn admitted(&mut self, result: Result<(), String>) {
        if !matches!(self.state, State::Admitting { .. }) {
            return;
        }
        if let Err(reason) = result {
            return self.close(DisconnectCode::Overloaded, &reason);
        }
        let State::Admitting { recover, queued } = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let auto = self.principal.as_ref().expect("set at hello").auto_rooms();
        self.state = State::Joining {
            pending: auto.len(),
            results: Vec::new(),
            queued,
        };
        for room in auto {
            let since = recover.get(room.as_str()).cloned();
            self.rooms.insert(
                room.clone(),
                RoomState::Joining {
                    id: 0,
                    grant: Grant::Claims,
                },
            );
            self.actions.push_back(Action::Join { room, since });
        }
    }

    /// The engine finished a [`Action::Join`].
    pub fn join_done(
        &mut self,
        room: &RoomName,
        result: Result<SubscribeOutcome, EngineError>,
        now: Instant,
    ) {
        let Some(RoomState::Joining { id, grant }) = self.rooms.get(room).copied() else {
            return;
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(err) => {
                self.rooms.remove(room);
                self.actions.push_back(Action::Leave(room.clone()));
                if let State::Joining { .. } = self.state {
                    return self.close(DisconnectCode::ServerError, &format!("cannot join {room}: {err}"));
                }
                let code = match err {
                    EngineError::Unavailable(_) => ErrorCode::Unavailable,
                    EngineError::Internal(_) => ErrorCode::Internal,
                };
                return self.reply_error(id, code, "subscription failed, retry later");
            }
        };
        self.rooms.insert(room.clone(), RoomState::Live { grant });
        let result = pb::SubscribeResult {
            room: room.to_string(),
            epoch: outcome.pos.epoch.to_string(),
            offset: outcome.pos.offset,
            recovered: outcome.recovered,
            replayed: outcome.replayed,
        };
        match &mut self.state {
            State::Joining { pending, results, .. } => {
                results.push(result);
                *pending -= 1;
                if *pending == 0 {
                    self.finish_setup(now);
                }
            }
            State::Active => {
                self.reply(pb::Reply {
                    id,
                    subscribed: Some(result),
                    ..Default::default()
                });
                self.actions.push_back(Action::Activate(room.clone()));
            }
            State::AwaitingHello | State::Admitting { .. } | State::Closed => {}
        }
    }

    fn finish_setup(&mut self, now: Instant) {
        let State::Joining { results, queued, .. } = std::mem::replace(&mut self.state, State::Active) else {
            return;
        };
        let principal = self.principal.as_ref().expect("set at hello");
        let welcome = pb::Welcome {
            session_id: self.session_id.clone(),
            node_id: self.config.node_id.clone(),
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            limits: Some(pb::Limits {
                max_frame_size: self.config.max_frame_size as u32,
                max_subscriptions: self.config.max_subscriptions as u32,
                refresh_grace_ms: self.config.refresh_grace.as_millis() as u32,
            }),
            user_id: principal.id.to_string(),
            account_id: principal.account_id,
            token_expires_at_ms: principal.expires_at.map_or(0, |e| (e * 1000) as i64),
            rooms: results.clone(),
            protocol_version: PROTOCOL_VERSION,
        };
        self.send(S::Welcome(welcome));
        for r in &results {
            if let Ok(room) = RoomName::parse(&r.room) {
                self.actions.push_back(Action::Activate(room));
            }
        }
        for frame in queued {
            if self.is_closed() {
                break;
            }
            self.handle_active(frame, now);
        }
    }

    fn parse_room(&mut self, id: u32, room: &str) -> Option<RoomName> {
        match RoomName::parse(room) {
            Ok(room) => Some(room),
            Err(err) => {
                self.reply_error(id, ErrorCode::InvalidRoom, &err.to_string());
                None
            }
        }
    }

    fn handle_active(&mut self, frame: pb::ClientFrame, now: Instant) {
        let id = frame.id;
        let exempt = matches!(frame.kind, Some(C::Ping(_)) | Some(C::Refresh(_)) | None);
        if !exempt && !self.requests.take(now) {
            return self.reply_error(id, ErrorCode::LimitExceeded, "too many requests");
        }
        match frame.kind {
            None => self.reply_error(id, ErrorCode::BadRequest, "frame carries no known kind"),
            Some(C::Hello(_)) => self.close(DisconnectCode::ProtocolViolation, "hello sent twice"),
            Some(C::Ping(ping)) => self.send(S::Pong(pb::Pong { nonce: ping.nonce })),
            Some(C::Subscribe(sub)) => self.handle_subscribe(id, sub, now),
            Some(C::Unsubscribe(unsub)) => {
                let Some(room) = self.parse_room(id, &unsub.room) else {
                    return;
                };
                if self.rooms.remove(&room).is_none() {
                    return self.reply_error(id, ErrorCode::NotSubscribed, "not subscribed to this room");
                }
                self.typing_off(&room, now);
                self.actions.push_back(Action::Leave(room));
                self.reply(pb::Reply {
                    id,
                    ..Default::default()
                });
            }
            Some(C::Publish(publish)) => self.handle_publish(id, publish, now),
            Some(C::Typing(typing)) => self.handle_typing(id, typing, now),
            Some(C::Refresh(refresh)) => self.handle_refresh(id, &refresh.token, now),
            Some(C::SetAvailability(set)) => {
                let principal = self
                    .principal
                    .as_ref()
                    .expect("active sessions are authenticated");
                if principal.is_contact() {
                    return self.reply_error(
                        id,
                        ErrorCode::PermissionDenied,
                        "contacts have no availability",
                    );
                }
                match pb::Availability::try_from(set.availability) {
                    Ok(availability) => self
                        .actions
                        .push_back(Action::SetAvailability { id, availability }),
                    Err(_) => self.reply_error(id, ErrorCode::BadRequest, "unknown availability"),
                }
            }
            Some(C::Presence(_)) => {
                let principal = self
                    .principal
                    .as_ref()
                    .expect("active sessions are authenticated");
                if principal.is_contact() {
                    return self.reply_error(id, ErrorCode::PermissionDenied, "permission denied");
                }
                self.actions.push_back(Action::QueryPresence { id });
            }
        }
    }

    /// The driver finished a [`Action::SetAvailability`] or [`Action::QueryPresence`].
    pub fn answer(&mut self, id: u32, result: Result<Option<pb::Presence>, EngineError>) {
        match result {
            Ok(presence) => self.reply(pb::Reply {
                id,
                presence,
                ..Default::default()
            }),
            Err(EngineError::Unavailable(_)) => self.reply_error(id, ErrorCode::Unavailable, "retry later"),
            Err(EngineError::Internal(_)) => self.reply_error(id, ErrorCode::Internal, "failed"),
        }
    }

    fn handle_subscribe(&mut self, id: u32, sub: pb::Subscribe, now: Instant) {
        let Some(room) = self.parse_room(id, &sub.room) else {
            return;
        };
        if self.rooms.contains_key(&room) {
            return self.reply_error(
                id,
                ErrorCode::AlreadySubscribed,
                "already subscribed to this room",
            );
        }
        if self.rooms.len() >= self.config.max_subscriptions {
            return self.reply_error(id, ErrorCode::LimitExceeded, "too many subscriptions");
        }
        let principal = self
            .principal
            .as_ref()
            .expect("active sessions are authenticated");
        let grant = if sub.token.is_empty() {
            Grant::Claims
        } else {
            match self
                .auth
                .verify_subscription(&sub.token, principal, &room, self.unix_ms(now) / 1000)
            {
                Ok(()) => Grant::SubscriptionToken,
                Err(err) => {
                    self.actions.push_back(Action::AuthFailed(err.label()));
                    return self.reply_error(id, ErrorCode::PermissionDenied, "permission denied");
                }
            }
        };
        if !may_join(principal, &room, grant) {
            return self.reply_error(id, ErrorCode::PermissionDenied, "permission denied");
        }
        self.rooms.insert(room.clone(), RoomState::Joining { id, grant });
        let since = sub.since.as_ref().map(StreamPos::from_pb);
        self.actions.push_back(Action::Join { room, since });
    }

    fn may_publish(&self, name: &str) -> bool {
        self.config
            .client_publish
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix) && name.len() > prefix.len(),
                None => name == pattern,
            })
    }

    fn may_publish_in(&self, room: &RoomName) -> bool {
        let kind = room.kind().label();
        self.config.client_publish_rooms.iter().any(|k| k == kind)
    }

    fn sender(&self) -> pb::Sender {
        let principal = self
            .principal
            .as_ref()
            .expect("active sessions are authenticated");
        pb::Sender {
            kind: if principal.is_contact() {
                pb::sender::Kind::Contact
            } else {
                pb::sender::Kind::User
            } as i32,
            id: principal.id,
            ..Default::default()
        }
    }

    fn handle_publish(&mut self, id: u32, publish: pb::Publish, now: Instant) {
        let Some(room) = self.parse_room(id, &publish.room) else {
            return;
        };
        let Some(mut event) = publish.event else {
            return self.reply_error(id, ErrorCode::BadRequest, "publish without event");
        };
        if !self.rooms.get(&room).is_some_and(RoomState::is_live) {
            return self.reply_error(id, ErrorCode::NotSubscribed, "not subscribed to this room");
        }
        if !self.may_publish(&event.name) || !self.may_publish_in(&room) {
            return self.reply_error(
                id,
                ErrorCode::PermissionDenied,
                "clients may not publish this event here",
            );
        }
        if event.payload.is_some() {
            // Typed payloads (a message, its sender…) are the backend's word only.
            return self.reply_error(id, ErrorCode::BadRequest, "client events carry json only");
        }
        if event.encoded_len() > self.config.max_event_size {
            return self.reply_error(id, ErrorCode::BadRequest, "event too large");
        }
        if !self.publishes.take(now) {
            return self.reply_error(id, ErrorCode::LimitExceeded, "publishing too often");
        }
        let principal = self
            .principal
            .as_ref()
            .expect("active sessions are authenticated");
        // Fields the server vouches for are never taken from the client; the id is the
        // server's, so a client cannot collide with (and suppress) another event.
        event.id = uuid::Uuid::new_v4().to_string();
        event.account_id = principal.account_id;
        event.occurred_at_ms = self.unix_ms(now) as i64;
        event.performer = (!principal.is_contact()).then(|| pb::User {
            id: principal.id,
            ..Default::default()
        });
        self.actions.push_back(Action::Publish { id, room, event });
    }

    /// The engine finished a [`Action::Publish`].
    pub fn publish_done(&mut self, id: u32, result: Result<StreamPos, EngineError>) {
        match result {
            Ok(pos) => self.reply(pb::Reply {
                id,
                published: Some(pb::PublishResult {
                    epoch: pos.epoch.to_string(),
                    offset: pos.offset,
                }),
                ..Default::default()
            }),
            Err(EngineError::Unavailable(_)) => {
                self.reply_error(id, ErrorCode::Unavailable, "publish failed, retry later")
            }
            Err(EngineError::Internal(_)) => self.reply_error(id, ErrorCode::Internal, "publish failed"),
        }
    }

    fn handle_typing(&mut self, id: u32, typing: pb::Typing, now: Instant) {
        let Some(room) = self.parse_room(id, &typing.room) else {
            return;
        };
        if !matches!(room.kind(), RoomKind::Conversation(_)) {
            return self.reply_error(id, ErrorCode::BadRequest, "typing is for conversation rooms");
        }
        if !self.rooms.get(&room).is_some_and(RoomState::is_live) {
            return self.reply_error(id, ErrorCode::NotSubscribed, "not subscribed to this room");
        }
        if let Some(last) = self.last_typing.get(&room)
            && now.saturating_duration_since(*last) < self.config.typing_min_interval
        {
            return self.reply_error(id, ErrorCode::LimitExceeded, "typing too often");
        }
        self.last_typing.insert(room.clone(), now);
        let principal = self
            .principal
            .as_ref()
            .expect("active sessions are authenticated");
        // Contacts cannot write private notes.
        let private = typing.private && principal.role != Role::Contact;
        if typing.on {
            let until = now + self.config.typing_timeout;
            self.typing_until.insert(room.clone(), (until, private));
        } else {
            self.typing_until.remove(&room);
        }
        self.emit_typing(&room, typing.on, private, now);
        self.reply(pb::Reply {
            id,
            ..Default::default()
        });
    }

    fn typing_off(&mut self, room: &RoomName, now: Instant) {
        if let Some((_, private)) = self.typing_until.remove(room) {
            self.emit_typing(room, false, private, now);
        }
    }

    fn emit_typing(&mut self, room: &RoomName, on: bool, private: bool, now: Instant) {
        let principal = self.principal.as_ref().expect("typing needs a principal");
        let name = if on {
            "conversation.typing_on"
        } else {
            "conversation.typing_off"
        };
        let event = pb::Event {
            name: name.into(),
            account_id: principal.account_id,
            occurred_at_ms: self.unix_ms(now) as i64,
            payload: Some(pb::event::Payload::Typing(pb::TypingIndicator {
                room: room.to_string(),
                on,
                private,
                sender: Some(self.sender()),
            })),
            ..Default::default()
        };
        self.actions.push_back(Action::Ephemeral {
            room: room.clone(),
            event,
            private,
        });
    }

    /// After a refresh: every room joined on the strength of the claims must still be
    /// granted by the new ones; those that are not are left, and the client is told.
    fn recheck_rooms(&mut self, now: Instant) {
        let principal = self.principal.as_ref().expect("refresh follows hello");
        let revoked: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(room, state)| {
                state.grant() == Grant::Claims && !may_join(principal, room, Grant::Claims)
            })
            .map(|(room, _)| room.clone())
            .collect();
        for room in revoked {
            self.rooms.remove(&room);
            self.typing_off(&room, now);
            self.actions.push_back(Action::Leave(room.clone()));
            self.send(S::Unsubscribed(pb::Unsubscribed {
                room: room.to_string(),
                error: Some(
                    ErrorCode::PermissionDenied.error("the refreshed token no longer grants this room"),
                ),
            }));
        }
    }

    fn handle_refresh(&mut self, id: u32, token: &str, now: Instant) {
        let current = self
            .principal
            .as_ref()
            .expect("active sessions are authenticated");
        match self.auth.verify_connection(token, self.unix_ms(now) / 1000) {
            Ok(new)
                if new.id == current.id
                    && new.role == current.role
                    && new.account_id == current.account_id =>
            {
                let expires = new.expires_at;
                self.principal = Some(new);
                self.recheck_rooms(now);
                self.reply(pb::Reply {
                    id,
                    refreshed: Some(pb::RefreshResult {
                        token_expires_at_ms: expires.map_or(0, |e| (e * 1000) as i64),
                    }),
                    ..Default::default()
                });
            }
            Ok(_) => {
                self.actions.push_back(Action::AuthFailed("refresh_mismatch"));
                self.reply_error(
                    id,
                    ErrorCode::Unauthorized,
                    "the new token is for another principal",
                );
            }
            Err(err) => {
                self.actions.push_back(Action::AuthFailed(err.label()));
                self.reply_error(id, ErrorCode::Unauthorized, "token refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The session driven by hand, with time stepped explicitly.
    use super::*;
    use crate::auth::TokenKey;
    use crate::ids::Epoch;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"unit-secret-unit-secret-unit-secret!";
    const T0_UNIX_MS: u64 = 1_900_000_000_000;

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn agent_token(exp_in_secs: u64) -> String {
        token(serde_json::json!({
            "sub": "7", "account_id": 1, "role": "agent", "exp": T0_UNIX_MS / 1000 + exp_in_secs,
        }))
    }

    fn session(t0: Instant) -> Session {
        let config = SessionConfig {
            hello_timeout: Duration::from_secs(5),
            stale_timeout: Duration::from_secs(60),
            refresh_grace: Duration::from_secs(10),
            ..SessionConfig::default()
        };
        let auth = Authenticator::new(TokenKey::hs256(SECRET).unwrap(), None, None);
        Session::new(Arc::new(config), Arc::new(auth), "s1".into(), t0, T0_UNIX_MS)
    }

    fn frame(id: u32, kind: C) -> pb::ClientFrame {
        pb::ClientFrame { id, kind: Some(kind) }
    }

    fn hello(token: &str) -> pb::ClientFrame {
        frame(
            0,
            C::Hello(pb::Hello {
                token: token.into(),
                ..Default::default()
            }),
        )
    }

    /// The actions queued, with admission granted along the way (as the driver would).
    fn actions(s: &mut Session) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = s.poll_action() {
            if a == Action::Admit {
                s.admitted(Ok(()));
                continue;
            }
            out.push(a);
        }
        out
    }

    fn outcome(offset: u64) -> SubscribeOutcome {
        SubscribeOutcome {
            pos: StreamPos {
                epoch: Epoch::from_wire("e"),
                offset,
            },
            recovered: false,
            replayed: 0,
        }
    }

    /// A session past Hello and Welcome.
    fn active(t0: Instant, exp_in_secs: u64) -> Session {
        let mut s = session(t0);
        s.handle_client_frame(hello(&agent_token(exp_in_secs)), t0);
        for a in actions(&mut s) {
            if let Action::Join { room, .. } = a {
                s.join_done(&room, Ok(outcome(0)), t0);
            }
        }
        let acts = actions(&mut s);
        assert!(matches!(
            &acts[0],
            Action::Send(pb::ServerFrame {
                kind: Some(S::Welcome(_))
            })
        ));
        s
    }

    fn closed_with(acts: &[Action]) -> Option<DisconnectCode> {
        acts.iter().find_map(|a| match a {
            Action::Close(code, _) => Some(*code),
            _ => None,
        })
    }

    fn reply(acts: &[Action]) -> pb::Reply {
        acts.iter()
            .find_map(|a| match a {
                Action::Send(pb::ServerFrame {
                    kind: Some(S::Reply(r)),
                }) => Some(r.clone()),
                _ => None,
            })
            .expect("a reply")
    }

    #[test]
    fn hello_timeout_fires_exactly_at_the_deadline() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        s.handle_timeout(t0 + Duration::from_millis(4999));
        assert!(actions(&mut s).is_empty());
        s.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::HelloTimeout));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn welcome_waits_for_auto_rooms_and_frames_sent_meanwhile_are_held() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_client_frame(hello(&agent_token(3600)), t0);
        let joins: Vec<RoomName> = actions(&mut s)
            .into_iter()
            .filter_map(|a| match a {
                Action::Join { room, .. } => Some(room),
                _ => None,
            })
            .collect();
        assert_eq!(
            joins.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            ["user:7", "account:1"]
        );
        s.handle_client_frame(frame(1, C::Ping(pb::Ping { nonce: 9 })), t0);
        s.join_done(&joins[0], Ok(outcome(3)), t0);
        assert!(actions(&mut s).is_empty(), "nothing before the Welcome");
        s.join_done(&joins[1], Ok(outcome(4)), t0);
        let acts = actions(&mut s);
        let Action::Send(pb::ServerFrame {
            kind: Some(S::Welcome(w)),
        }) = &acts[0]
        else {
            panic!("{acts:?}")
        };
        assert_eq!(w.rooms.len(), 2);
        assert_eq!(w.token_expires_at_ms, (T0_UNIX_MS / 1000 + 3600) as i64 * 1000);
        assert!(matches!(acts[1], Action::Activate(_)));
        assert!(matches!(acts[2], Action::Activate(_)));
        assert!(matches!(&acts[3], Action::Send(pb::ServerFrame { kind: Some(S::Pong(p)) }) if p.nonce == 9));
    }

    #[test]
    fn an_expired_token_closes_after_the_grace_period_unless_refreshed() {
        let t0 = Instant::now();
        let mut s = active(t0, 60);
        // Deadline: expiry (60 s) + clock leeway (5 s, as at Hello) + grace (10 s).
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        // Keep the connection from going stale meanwhile.
        s.handle_client_frame(
            frame(0, C::Ping(pb::Ping { nonce: 1 })),
            t0 + Duration::from_secs(30),
        );
        actions(&mut s);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(75)));
        s.handle_timeout(t0 + Duration::from_secs(74));
        assert!(closed_with(&actions(&mut s)).is_none());
        s.handle_timeout(t0 + Duration::from_secs(75));
        assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::TokenExpired));

        // Refreshed during the grace period: the deadline moves.
        let mut s = active(t0, 60);
        let fresh = token(serde_json::json!({
            "sub": "7", "account_id": 1, "role": "agent", "exp": T0_UNIX_MS / 1000 + 3600,
        }));
        s.handle_client_frame(
            frame(5, C::Refresh(pb::RefreshToken { token: fresh })),
            t0 + Duration::from_secs(65),
        );
        let r = reply(&actions(&mut s));
        assert_eq!(r.id, 5);
        assert!(r.error.is_none());
        s.handle_timeout(t0 + Duration::from_secs(70));
        assert!(closed_with(&actions(&mut s)).is_none());
        assert_eq!(
            s.poll_timeout(),
            Some(t0 + Duration::from_secs(65 + 60)),
            "now the stale timer is next"
        );

        // A refresh for another user is refused and changes nothing.
        let mut s = active(t0, 60);
        let other = token(serde_json::json!({
            "sub": "8", "account_id": 1, "role": "agent", "exp": T0_UNIX_MS / 1000 + 3600,
        }));
        s.handle_client_frame(
            frame(6, C::Refresh(pb::RefreshToken { token: other })),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::Unauthorized.code()
        );
        s.handle_timeout(t0 + Duration::from_secs(75));
        assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::TokenExpired));
    }

    #[test]
    fn requests_beyond_the_rate_are_refused_but_pings_are_not() {
        let t0 = Instant::now();
        let mut s = active(t0, 3600);
        let sub = |id: u32| {
            frame(
                id,
                C::Unsubscribe(pb::Unsubscribe {
                    room: "public:1:none".into(),
                }),
            )
        };
        for id in 1..=100 {
            s.handle_client_frame(sub(id), t0);
            assert_eq!(
                reply(&actions(&mut s)).error.unwrap().code,
                ErrorCode::NotSubscribed.code()
            );
        }
        s.handle_client_frame(sub(101), t0);
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::LimitExceeded.code()
        );
        s.handle_client_frame(frame(0, C::Ping(pb::Ping { nonce: 1 })), t0);
        assert!(matches!(
            &actions(&mut s)[0],
            Action::Send(pb::ServerFrame {
                kind: Some(S::Pong(_))
            })
        ));
        // 50 per second refill.
        s.handle_client_frame(sub(102), t0 + Duration::from_millis(20));
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::NotSubscribed.code()
        );
    }

    #[test]
    fn silent_connections_go_stale() {
        let t0 = Instant::now();
        let mut s = active(t0, 80_000);
        s.handle_timeout(t0 + Duration::from_secs(59));
        assert!(actions(&mut s).is_empty());
        s.handle_client_frame(
            frame(0, C::Ping(pb::Ping { nonce: 1 })),
            t0 + Duration::from_secs(59),
        );
        actions(&mut s);
        s.handle_timeout(t0 + Duration::from_secs(100));
        assert!(actions(&mut s).is_empty());
        s.handle_timeout(t0 + Duration::from_secs(119));
        assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::Stale));
    }

    fn join(s: &mut Session, room: &str, token: &str, now: Instant) {
        s.handle_client_frame(
            frame(
                9,
                C::Subscribe(pb::Subscribe {
                    room: room.into(),
                    since: None,
                    token: token.into(),
                }),
            ),
            now,
        );
        let acts = actions(s);
        let room = RoomName::parse(room).unwrap();
        assert!(
            acts.contains(&Action::Join {
                room: room.clone(),
                since: None
            }),
            "{acts:?}"
        );
        s.join_done(&room, Ok(outcome(0)), now);
        actions(s);
    }

    #[test]
    fn typing_is_for_joined_conversations_rate_limited_and_private_only_for_agents() {
        let t0 = Instant::now();
        let mut s = active(t0, 3600);
        let typing = |on: bool| {
            frame(
                1,
                C::Typing(pb::Typing {
                    room: "conversation:5".into(),
                    on,
                    private: true,
                }),
            )
        };
        s.handle_client_frame(typing(true), t0);
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::NotSubscribed.code()
        );

        let grant = token(
            serde_json::json!({ "sub": "user:7", "room": "conversation:5", "exp": T0_UNIX_MS / 1000 + 60 }),
        );
        join(&mut s, "conversation:5", &grant, t0);
        s.handle_client_frame(typing(true), t0);
        let acts = actions(&mut s);
        let Some(Action::Ephemeral { event, private, .. }) =
            acts.iter().find(|a| matches!(a, Action::Ephemeral { .. }))
        else {
            panic!("{acts:?}")
        };
        assert!(*private);
        assert_eq!(event.name, "conversation.typing_on");
        s.handle_client_frame(typing(false), t0 + Duration::from_millis(100));
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::LimitExceeded.code()
        );
        s.handle_client_frame(typing(false), t0 + Duration::from_millis(400));
        assert!(
            actions(&mut s)
                .iter()
                .any(|a| matches!(a, Action::Ephemeral { .. }))
        );
        s.handle_client_frame(
            frame(
                1,
                C::Typing(pb::Typing {
                    room: "public:1:x".into(),
                    on: true,
                    private: false,
                }),
            ),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::BadRequest.code()
        );
    }

    #[test]
    fn clients_publish_only_allowed_names_to_joined_rooms_with_server_set_fields() {
        let t0 = Instant::now();
        let mut s = active(t0, 3600);
        let publish = |room: &str, name: &str| {
            frame(
                3,
                C::Publish(pb::Publish {
                    room: room.into(),
                    event: Some(pb::Event {
                        name: name.into(),
                        account_id: 999,
                        ..Default::default()
                    }),
                }),
            )
        };
        s.handle_client_frame(publish("public:1:x", "client.hi"), t0);
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::NotSubscribed.code()
        );
        join(&mut s, "public:1:x", "", t0);
        s.handle_client_frame(publish("public:1:x", "message.created"), t0);
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::PermissionDenied.code()
        );
        s.handle_client_frame(publish("public:1:x", "client."), t0);
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::PermissionDenied.code()
        );
        s.handle_client_frame(publish("public:1:x", "client.hi"), t0 + Duration::from_secs(2));
        let acts = actions(&mut s);
        let Some(Action::Publish { event, .. }) = acts.first() else {
            panic!("{acts:?}")
        };
        assert_eq!(
            event.account_id, 1,
            "the account comes from the token, not the client"
        );
        assert_eq!(event.performer.as_ref().unwrap().id, 7);
        assert_eq!(event.occurred_at_ms, (T0_UNIX_MS + 2000) as i64);
        s.publish_done(3, Err(EngineError::Unavailable("down".into())));
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::Unavailable.code()
        );
    }

    #[test]
    fn a_connection_refused_at_admission_closes_overloaded_and_joins_nothing() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_client_frame(hello(&agent_token(3600)), t0);
        assert_eq!(s.poll_action(), Some(Action::Admit));
        assert_eq!(s.poll_action(), None, "nothing before admission");
        s.admitted(Err("too many connections for this user".into()));
        let acts: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
        assert!(!acts.iter().any(|a| matches!(a, Action::Join { .. })), "{acts:?}");
        assert_eq!(closed_with(&acts), Some(DisconnectCode::Overloaded));
    }

    #[test]
    fn a_failed_auto_join_closes_and_a_failed_join_replies() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_client_frame(hello(&agent_token(3600)), t0);
        let room = RoomName::user(7);
        actions(&mut s);
        s.join_done(&room, Err(EngineError::Unavailable("down".into())), t0);
        assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::ServerError));

        let mut s = active(t0, 3600);
        s.handle_client_frame(
            frame(
                4,
                C::Subscribe(pb::Subscribe {
                    room: "public:1:y".into(),
                    ..Default::default()
                }),
            ),
            t0,
        );
        actions(&mut s);
        s.join_done(
            &RoomName::parse("public:1:y").unwrap(),
            Err(EngineError::Unavailable("down".into())),
            t0,
        );
        let acts = actions(&mut s);
        assert!(acts.contains(&Action::Leave(RoomName::parse("public:1:y").unwrap())));
        assert_eq!(reply(&acts).error.unwrap().code, ErrorCode::Unavailable.code());
    }
}
