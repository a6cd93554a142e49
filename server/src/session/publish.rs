//! Client events: what a client may publish, where, how often, with which fields set by
//! the gateway.

use prost::Message;

use super::{Action, Session, SubscriptionState};
use crate::engine::EngineError;
use crate::ids::StreamPos;
use std::time::Instant;

use rtgate_protocol::pb::{self};
use rtgate_protocol::{ErrorCode, RoomName};

impl Session {
    pub(super) fn may_publish(&self, name: &str) -> bool {
        self.config
            .client_publish
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix) && name.len() > prefix.len(),
                None => name == pattern,
            })
    }

    pub(super) fn may_publish_in(&self, room: &RoomName) -> bool {
        let kind = room.kind().label();
        self.config.client_publish_rooms.iter().any(|k| k == kind)
    }

    pub(super) fn sender(&self) -> pb::Sender {
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

    pub(super) fn handle_publish(&mut self, id: u32, publish: pb::Publish, now: Instant) {
        let Some(room) = self.parse_room(id, &publish.room) else {
            return;
        };
        let Some(mut event) = publish.event else {
            return self.reply_error(id, ErrorCode::BadRequest, "publish without event");
        };
        if !self.rooms.get(&room).is_some_and(SubscriptionState::is_live) {
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
}
