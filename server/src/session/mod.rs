//! The transport-agnostic session state machine of one connection. Sans-IO: decoded
//! frames, engine results and instants go in; frames to send, engine requests and timer
//! deadlines come out ([`Action`]). The transports and the connection driver only move
//! bytes.
//!
//! Lifecycle: `AwaitingHello` → (token verified) `Admitting` → (auto rooms joining)
//! `Joining` → `Welcome` sent → `Active` → `Closed`. Every input after `Closed` is
//! ignored.
//!
//! The jobs are split by module: `setup` (Hello, admission, Welcome), `rooms`
//! (subscriptions and their grants), `publish` (client events), `typing` (ephemeral
//! indicators and their expiry), `refresh` (token refresh on a live connection); this
//! module holds the lifecycle, timers and frame dispatch.

mod action;
mod config;
mod publish;
mod refresh;
mod rooms;
mod setup;
mod typing;

pub use action::Action;
pub use config::SessionConfig;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, ErrorCode, FrameError, RoomName};

use crate::auth::{Authenticator, Principal};
use crate::engine::EngineError;
use crate::ids::StreamPos;
use crate::ratelimit::TokenBucket;
use rooms::SubscriptionState;

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
    rooms: HashMap<RoomName, SubscriptionState>,
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
}

#[cfg(test)]
mod tests;
