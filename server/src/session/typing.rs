//! Typing indicators: ephemeral, rate limited, turned off by the gateway when a client
//! leaves one on.

use rtgate_protocol::RoomKind;

use super::{Action, Session, SubscriptionState};
use crate::auth::Role;
use std::time::Instant;

use rtgate_protocol::pb::{self};
use rtgate_protocol::{ErrorCode, RoomName};

impl Session {
    pub(super) fn handle_typing(&mut self, id: u32, typing: pb::Typing, now: Instant) {
        let Some(room) = self.parse_room(id, &typing.room) else {
            return;
        };
        if !matches!(room.kind(), RoomKind::Conversation(_)) {
            return self.reply_error(id, ErrorCode::BadRequest, "typing is for conversation rooms");
        }
        if !self.rooms.get(&room).is_some_and(SubscriptionState::is_live) {
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

    pub(super) fn typing_off(&mut self, room: &RoomName, now: Instant) {
        if let Some((_, private)) = self.typing_until.remove(room) {
            self.emit_typing(room, false, private, now);
        }
    }

    pub(super) fn emit_typing(&mut self, room: &RoomName, on: bool, private: bool, now: Instant) {
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
}
