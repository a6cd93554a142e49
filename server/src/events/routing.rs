//! The realtime routing listener: Chatwoot's ActionCableListener, ported. Sans-IO: from a
//! domain event and the little state it keeps (the last `updated_at` routed per
//! conversation), it decides which rooms get which room event; executors publish them.
//!
//! Chatwoot's recipient sets map onto rtgate rooms, whose authorization already says who
//! may be in them:
//!
//! | Chatwoot | rtgate room | who is in it |
//! |---|---|---|
//! | U(inbox): inbox members + administrators | `inbox:<inbox_id>` | agents whose token lists the inbox; administrators' tokens list every inbox of the account |
//! | C(ci): the conversation's contact side | `contact:<id>` for each of `contact_inbox_ids` | the contact connections of those ids |
//! | ACC and U(account): every agent of the account | `account:<account_id>` | every agent and administrator of the account |
//! | T(user): one user | `user:<user_id>` | that user's connections |
//!
//! Private notes and activity messages never go to contact rooms; typing is ephemeral and
//! never echoes to the typer's own connections; a conversation update older than the last
//! one routed for that conversation is dropped; `account_id` is always in the payload.

use std::collections::{HashMap, VecDeque};

use rtgate_protocol::{RoomName, pb};

use super::{Action, Skip, StateView};

/// Who receives an event, by name (Chatwoot's routing table, section 2 of the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recipients {
    /// The inbox's agents and the contact side; the contact side only for public,
    /// non-activity messages.
    InboxAndContactMessage,
    /// The inbox's agents and the contact side.
    InboxAndContact,
    /// The inbox's agents.
    Inbox,
    /// Typing: the inbox's agents and the contact side (not for private notes), never the
    /// typer; ephemeral.
    Typing,
    /// One user.
    User,
    /// Every agent of the account.
    Account,
    /// One user when given, else the inbox's agents.
    UserOrInbox,
}

fn recipients(name: &str) -> Option<Recipients> {
    use Recipients::*;
    Some(match name {
        "message.created" | "message.updated" => InboxAndContactMessage,
        "conversation.created" | "conversation.status_changed" | "conversation.updated" => InboxAndContact,
        "first.reply.created"
        | "conversation.read"
        | "assignee.changed"
        | "team.changed"
        | "conversation.contact_changed"
        | "conversation.unread_count_changed" => Inbox,
        "conversation.typing_on" | "conversation.typing_off" => Typing,
        "conversation.mentioned"
        | "notification.created"
        | "notification.updated"
        | "notification.deleted"
        | "copilot.message.created"
        | "account.enrichment_completed" => User,
        "contact.created"
        | "contact.updated"
        | "contact.merged"
        | "contact.deleted"
        | "account.cache_invalidated"
        | "voice_call.outbound_connected"
        | "voice_call.outbound_accepted"
        | "voice_call.ended"
        | "voice_call.permission_granted" => Account,
        "voice_call.incoming" => UserOrInbox,
        _ => return None,
    })
}

/// Whether an update of this name is ordered by the conversation's `updated_at` (the
/// events Chatwoot rebuilds from the database just before broadcasting).
fn ordered_by_updated_at(name: &str) -> bool {
    matches!(
        name,
        "conversation.read"
            | "conversation.updated"
            | "team.changed"
            | "assignee.changed"
            | "conversation.status_changed"
    )
}

/// Most conversations whose last `updated_at` is remembered; the oldest entries go first.
pub const DEFAULT_TRACKED_CONVERSATIONS: usize = 100_000;

/// The last `updated_at` routed per conversation, bounded.
#[derive(Debug)]
struct LastUpdates {
    capacity: usize,
    at: HashMap<(u64, u64), f64>,
    order: VecDeque<(u64, u64)>,
}

impl LastUpdates {
    /// Records `updated_at` for a conversation unless an update after it was routed;
    /// false when stale.
    fn advance(&mut self, key: (u64, u64), updated_at: f64) -> bool {
        match self.at.get_mut(&key) {
            Some(last) if updated_at < *last => false,
            Some(last) => {
                *last = updated_at;
                true
            }
            None => {
                if self.order.len() >= self.capacity
                    && let Some(old) = self.order.pop_front()
                {
                    self.at.remove(&old);
                }
                self.at.insert(key, updated_at);
                self.order.push_back(key);
                true
            }
        }
    }
}

/// The routing listener.
#[derive(Debug)]
pub struct Routing {
    last: LastUpdates,
}

impl Default for Routing {
    fn default() -> Self {
        Routing::new(DEFAULT_TRACKED_CONVERSATIONS)
    }
}

/// The routing facts an event lacks.
pub fn missing_facts(event: &pb::DomainEvent) -> Option<&'static str> {
    let conversation = event.conversation.as_ref();
    let inbox = conversation.is_some_and(|c| c.inbox_id != 0);
    match recipients(&event.name)? {
        Recipients::InboxAndContactMessage if event.message.is_none() => Some("message facts"),
        Recipients::InboxAndContactMessage | Recipients::InboxAndContact | Recipients::Inbox if !inbox => {
            Some("conversation.inbox_id")
        }
        Recipients::Typing if !inbox => Some("conversation.inbox_id"),
        Recipients::Typing if event.typing.as_ref().and_then(|t| t.typer.as_ref()).is_none() => {
            Some("typing.typer")
        }
        Recipients::User if event.user_id == 0 => Some("user_id"),
        Recipients::UserOrInbox if event.user_id == 0 && !inbox => Some("user_id or conversation.inbox_id"),
        _ => None,
    }
}

/// The payload with `account_id` in it: passed through as it is when it already has one,
/// else with the field spliced in as text at its start (the rest byte for byte).
fn payload_with_account(payload: &str, account_id: u64) -> String {
    if payload.trim().is_empty() {
        return format!("{{\"account_id\":{account_id}}}");
    }
    // Only the top-level keys are read; values are skipped, not built.
    match serde_json::from_str::<std::collections::HashMap<String, serde::de::IgnoredAny>>(payload) {
        Ok(map) if map.contains_key("account_id") => payload.to_string(),
        Ok(map) => {
            let open = payload.len() - payload.trim_start().len();
            let separator = if map.is_empty() { "" } else { "," };
            format!(
                "{}{{\"account_id\":{account_id}{separator}{}",
                &payload[..open],
                &payload[open + 1..]
            )
        }
        // Not an object: validated at ingest, so this is not reached; pass it through.
        Err(_) => payload.to_string(),
    }
}

impl super::Listener for Routing {
    fn name(&self) -> &'static str {
        "routing"
    }

    fn handles(&self, event_name: &str) -> bool {
        Routing::handles(event_name)
    }

    fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
        self.route(event)
    }
}

impl Routing {
    /// A listener remembering the last update of at most `capacity` conversations.
    pub fn new(capacity: usize) -> Self {
        Routing {
            last: LastUpdates {
                capacity: capacity.max(1),
                at: HashMap::new(),
                order: VecDeque::new(),
            },
        }
    }

    /// Whether the listener routes events of this name.
    pub fn handles(name: &str) -> bool {
        recipients(name).is_some()
    }

    /// Decides where `event` goes.
    pub fn route(&mut self, event: &pb::DomainEvent) -> Result<Vec<Action>, Skip> {
        let Some(recipients) = recipients(&event.name) else {
            return Err(Skip::NotRouted);
        };
        let no_facts = pb::ConversationFacts::default();
        let conversation = event.conversation.as_ref().unwrap_or(&no_facts);
        if ordered_by_updated_at(&event.name)
            && conversation.updated_at > 0.0
            && !self.last.advance(
                (event.account_id, conversation.display_id),
                conversation.updated_at,
            )
        {
            return Err(Skip::Stale);
        }
        let inbox = RoomName::inbox(conversation.inbox_id);
        let contacts = conversation
            .contact_inbox_ids
            .iter()
            .map(|id| RoomName::contact(*id));
        let mut room_event = pb::Event {
            id: event.id.clone(),
            name: event.name.clone(),
            account_id: event.account_id,
            occurred_at_ms: event.occurred_at_ms,
            json: payload_with_account(&event.payload, event.account_id),
            ..Default::default()
        };
        let rooms: Vec<RoomName> = match recipients {
            Recipients::InboxAndContactMessage => {
                let contact_safe = event
                    .message
                    .as_ref()
                    .is_some_and(|m| !m.private && m.message_type != pb::MessageType::Activity as i32);
                let mut rooms = vec![inbox];
                if contact_safe {
                    rooms.extend(contacts);
                }
                rooms
            }
            Recipients::InboxAndContact => std::iter::once(inbox).chain(contacts).collect(),
            Recipients::Inbox => vec![inbox],
            Recipients::User => vec![RoomName::user(event.user_id)],
            Recipients::Account => vec![RoomName::account(event.account_id)],
            Recipients::UserOrInbox if event.user_id != 0 => vec![RoomName::user(event.user_id)],
            Recipients::UserOrInbox => vec![inbox],
            Recipients::Typing => {
                let typing = event.typing.clone().unwrap_or_default();
                let typer = typing.typer.unwrap_or_default();
                let typer_room = match pb::sender::Kind::try_from(typer.kind) {
                    Ok(pb::sender::Kind::Contact) => Some(RoomName::contact(typer.id)),
                    Ok(pb::sender::Kind::User) => Some(RoomName::user(typer.id)),
                    _ => None,
                };
                let mut rooms = vec![inbox];
                if !typing.private {
                    rooms.extend(contacts.filter(|r| Some(r) != typer_room.as_ref()));
                }
                room_event.payload = Some(pb::event::Payload::Typing(pb::TypingIndicator {
                    room: RoomName::conversation(conversation.display_id).to_string(),
                    on: room_event.name == "conversation.typing_on",
                    private: typing.private,
                    sender: Some(typer),
                }));
                return Ok(vec![Action::Ephemeral {
                    rooms,
                    event: room_event,
                    exclude: typer_room,
                    private: typing.private,
                }]);
            }
        };
        Ok(vec![Action::Publish {
            rooms,
            event: room_event,
        }])
    }
}

#[cfg(test)]
mod tests;
