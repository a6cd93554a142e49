//! Setting a session up: the Hello's token, admission, the automatic rooms, `Welcome`.

use std::collections::{HashMap, VecDeque};

use rtgate_protocol::PROTOCOL_VERSION;

use super::{Action, Session, State, SubscriptionState};
use crate::auth::AuthError;
use crate::authz::Grant;
use crate::engine::{EngineError, SubscribeOutcome};
use crate::ids::StreamPos;
use std::time::Instant;

use rtgate_protocol::pb::{self, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, ErrorCode, RoomName};

impl Session {
    pub(super) fn handle_hello(&mut self, hello: pb::Hello, now: Instant) {
        let principal = match self
            .auth
            .verify_connection(&hello.token, self.unix_ms(now) / 1000)
        {
            Ok(p) => p,
            Err(err) => {
                self.actions.push_back(Action::AuthFailed(err.label()));
                return match err {
                    AuthError::Expired => self.close(DisconnectCode::TokenExpired, "token refused"),
                    // Not the token's fault: the node is starting; reconnecting soon works.
                    AuthError::RevocationsUnknown => {
                        self.close(DisconnectCode::ServerError, "the gateway is starting, retry")
                    }
                    _ => self.close(DisconnectCode::Unauthorized, "token refused"),
                };
            }
        };
        self.begin_admission(principal, &hello.recover);
    }

    /// A connection authenticated by its transport (a `/cable` subscription's
    /// `pubsub_token`), in place of a Hello: the session goes on as after a verified one.
    pub fn authenticated(
        &mut self,
        principal: crate::auth::Principal,
        recover: &[pb::RoomPosition],
        now: Instant,
    ) {
        self.last_rx = now;
        match self.state {
            State::AwaitingHello => {}
            State::Closed => return,
            _ => return self.close(DisconnectCode::ProtocolViolation, "already authenticated"),
        }
        self.begin_admission(principal, recover);
    }

    fn begin_admission(&mut self, principal: crate::auth::Principal, recover: &[pb::RoomPosition]) {
        let recover: HashMap<String, StreamPos> = recover
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
                SubscriptionState::Joining {
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
        let Some(SubscriptionState::Joining { id, grant }) = self.rooms.get(room).copied() else {
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
        self.rooms.insert(room.clone(), SubscriptionState::Live { grant });
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

    pub(super) fn finish_setup(&mut self, now: Instant) {
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
}
