//! Subscriptions: joining and leaving rooms, and the grant each was joined on (checked
//! again when a refresh changes the claims).

use super::{Action, Session};
use crate::authz::{Grant, may_join};
use crate::ids::StreamPos;
use std::time::Instant;

use rtgate_protocol::pb::{self, server_frame::Kind as S};
use rtgate_protocol::{ErrorCode, RoomName};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubscriptionState {
    /// Joining on behalf of request `id` (0 for rooms joined automatically).
    Joining {
        id: u32,
        grant: Grant,
    },
    Live {
        grant: Grant,
    },
}

impl SubscriptionState {
    pub(super) fn is_live(&self) -> bool {
        matches!(self, SubscriptionState::Live { .. })
    }

    pub(super) fn grant(&self) -> Grant {
        match self {
            SubscriptionState::Joining { grant, .. } | SubscriptionState::Live { grant } => *grant,
        }
    }
}

impl Session {
    pub(super) fn parse_room(&mut self, id: u32, room: &str) -> Option<RoomName> {
        match RoomName::parse(room) {
            Ok(room) => Some(room),
            Err(err) => {
                self.reply_error(id, ErrorCode::InvalidRoom, &err.to_string());
                None
            }
        }
    }

    pub(super) fn handle_subscribe(&mut self, id: u32, sub: pb::Subscribe, now: Instant) {
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
        self.rooms
            .insert(room.clone(), SubscriptionState::Joining { id, grant });
        let since = sub.since.as_ref().map(StreamPos::from_pb);
        self.actions.push_back(Action::Join { room, since });
    }

    /// After a refresh: every room joined on the strength of the claims must still be
    /// granted by the new ones; those that are not are left, and the client is told.
    pub(super) fn recheck_rooms(&mut self, now: Instant) {
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
}
