//! Chatwoot's NotificationListener (with its MentionService, NewMessageNotificationService
//! and NotificationBuilder checks), as a decision: who gets which in-app notification.
//! Each one is a `create_notification` command for the backend (which creates the row,
//! and its email and push jobs) and, at once, a `notification.pending` event in the
//! user's room.
//!
//! | event | who | type |
//! |---|---|---|
//! | `conversation.created`, `conversation.bot_handoff` (not pending) | the inbox's members | `conversation_creation` (only users whose settings have it) |
//! | `assignee.changed` (an assignee, not self-assigned, not pending) | the assignee | `conversation_assignment` |
//! | `message.created`, a private note with mentions | mentioned users (teams expanded) who are inbox members or administrators | `conversation_mention` |
//! | `message.created`, public incoming or outgoing | the assignee, then the participants; never the sender, nor anyone notified for the message already | `assigned_conversation_new_message`, `participating_conversation_new_message` |
//!
//! A blocked contact's conversations notify mentions only. The listener keeps the
//! conversation's participants (assignees and mentioned users, and what the backend
//! mirrors), in the listener state.

use rtgate_protocol::{RoomName, pb};
use serde_json::json;

use super::{Action, Listener, Skip, StateKey, StateRead, StateView, command_action, command_id};
use crate::delivery::listeners::DirectorySource;
use crate::events::mirror::Mirror;

/// The key of a conversation's participants in the listener state.
pub fn participants_key(account_id: u64, display_id: u64) -> StateKey {
    StateKey::conversation(account_id, display_id, "participants")
}

/// The name of the event pushed to a user's room when a notification is decided.
pub const PENDING_EVENT: &str = "notification.pending";

/// The user ids mentioned in `content` (`(mention://user/<id>/<name>)`), and the team
/// ids (`(mention://team/<id>/<name>)`), in order of appearance, each once.
pub fn mentions(content: &str) -> (Vec<u64>, Vec<u64>) {
    let (mut users, mut teams) = (Vec::new(), Vec::new());
    let mut rest = content;
    while let Some(at) = rest.find("(mention://") {
        rest = &rest[at + "(mention://".len()..];
        let list = if let Some(r) = rest.strip_prefix("user/") {
            rest = r;
            &mut users
        } else if let Some(r) = rest.strip_prefix("team/") {
            rest = r;
            &mut teams
        } else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        // `<id>/<name>)`, the name at least one character (Chatwoot's pattern).
        let tail = &rest[digits..];
        let closed = tail
            .strip_prefix('/')
            .and_then(|t| t.find(')').filter(|&end| end > 0));
        if digits == 0 || closed.is_none() {
            continue;
        }
        if let Ok(id) = rest[..digits].parse::<u64>()
            && !list.contains(&id)
        {
            list.push(id);
        }
    }
    (users, teams)
}

/// The notification listener.
pub struct NotificationListener<D> {
    source: D,
}

impl<D: DirectorySource> NotificationListener<D> {
    /// The listener over this mirror.
    pub fn new(source: D) -> Self {
        NotificationListener { source }
    }
}

/// One notification decided.
struct Notify {
    user_id: u64,
    kind: &'static str,
    message_id: u64,
}

fn pending(conversation: &pb::ConversationFacts) -> bool {
    conversation.status() == pb::ConversationStatus::Pending
}

/// The user's settings include `kind` (Chatwoot checks this for conversation creation
/// only; a user without settings in the account gets none).
fn subscribed(mirror: &Mirror, account_id: u64, user_id: u64, kind: &str) -> bool {
    mirror
        .account_user(account_id, user_id)
        .is_some_and(|u| u.notifications.iter().any(|n| n == kind))
}

impl<D: DirectorySource> NotificationListener<D> {
    fn actions(&self, event: &pb::DomainEvent, display_id: u64, notify: Vec<Notify>) -> Vec<Action> {
        let mut actions = Vec::new();
        for n in notify {
            // The push carries the command's id, so the two can be matched.
            let id = command_id(self.name(), &format!("{}:{}:{}", event.id, n.kind, n.user_id));
            actions.push(Action::Command {
                id: id.clone(),
                command: super::command(
                    self.name(),
                    event,
                    pb::command::Kind::CreateNotification(pb::CreateNotification {
                        notification_type: n.kind.into(),
                        user_id: n.user_id,
                        conversation_display_id: display_id,
                        message_id: n.message_id,
                    }),
                ),
            });
            let payload = json!({
                "id": id,
                "notification_type": n.kind,
                "user_id": n.user_id,
                "account_id": event.account_id,
                "primary_actor_type": "Conversation",
                "primary_actor_id": display_id,
                "secondary_actor_type": if n.message_id > 0 { "Message" } else { "" },
                "secondary_actor_id": n.message_id,
            });
            actions.push(Action::Publish {
                rooms: vec![RoomName::user(n.user_id)],
                event: pb::Event {
                    id: id.clone(),
                    name: PENDING_EVENT.into(),
                    account_id: event.account_id,
                    occurred_at_ms: event.occurred_at_ms,
                    json: payload.to_string(),
                    ..Default::default()
                },
            });
        }
        actions
    }

    fn message_created(
        &self,
        event: &pb::DomainEvent,
        conversation: &pb::ConversationFacts,
        state: &StateView,
    ) -> Result<Vec<Action>, Skip> {
        let Some(message) = event.message.as_ref() else {
            return Err(Skip::NoPayload);
        };
        let directory = self.source.directory();
        let mirror = directory.mirror();
        let account = event.account_id;
        let sender_user = message
            .sender
            .as_ref()
            .filter(|s| s.kind() == pb::sender::Kind::User)
            .map(|s| s.id);
        let mut notify: Vec<Notify> = Vec::new();
        let mut actions = Vec::new();

        // Mentions in a private note.
        if message.private && !message.content.is_empty() {
            let (users, teams) = mentions(&message.content);
            let mut mentioned = users;
            for team in teams {
                if let Some(t) = mirror.team(account, team) {
                    for member in &t.member_ids {
                        if !mentioned.contains(member) {
                            mentioned.push(*member);
                        }
                    }
                }
            }
            if !mentioned.is_empty() {
                let Some(inbox) = mirror.inbox(conversation.inbox_id) else {
                    return Err(Skip::Unconfigured);
                };
                let admins = mirror.administrators(account);
                mentioned.retain(|u| inbox.member_ids.contains(u) || admins.contains(u));
                for user in &mentioned {
                    notify.push(Notify {
                        user_id: *user,
                        kind: "conversation_mention",
                        message_id: message.id,
                    });
                }
                if !mentioned.is_empty() {
                    actions.push(Action::AddMembers {
                        key: participants_key(account, conversation.display_id),
                        members: mentioned.clone(),
                    });
                    for user in &mentioned {
                        actions.push(command_action(
                            self.name(),
                            event,
                            &format!("{}:participant:{user}", event.id),
                            pb::command::Kind::AddParticipant(pb::AddParticipant {
                                conversation_display_id: conversation.display_id,
                                user_id: *user,
                            }),
                        ));
                    }
                }
            }
        }

        // A new public message: the assignee, then the participants.
        let notifiable = !message.private
            && matches!(
                message.message_type(),
                pb::MessageType::Incoming | pb::MessageType::Outgoing
            );
        if notifiable && !conversation.contact_blocked {
            let assignee = conversation.assignee_id;
            let notified = |list: &[Notify], user: u64| list.iter().any(|n| n.user_id == user);
            if assignee != 0 && Some(assignee) != sender_user && !notified(&notify, assignee) {
                notify.push(Notify {
                    user_id: assignee,
                    kind: "assigned_conversation_new_message",
                    message_id: message.id,
                });
            }
            for user in state.members(&participants_key(account, conversation.display_id)) {
                if Some(*user) != sender_user && !notified(&notify, *user) {
                    notify.push(Notify {
                        user_id: *user,
                        kind: "participating_conversation_new_message",
                        message_id: message.id,
                    });
                }
            }
        }
        if notify.is_empty() && actions.is_empty() {
            return Err(Skip::NoDestination);
        }
        actions.extend(self.actions(event, conversation.display_id, notify));
        Ok(actions)
    }
}

impl<D: DirectorySource> Listener for NotificationListener<D> {
    fn name(&self) -> &'static str {
        "notification"
    }

    fn handles(&self, event_name: &str) -> bool {
        matches!(
            event_name,
            "conversation.created" | "conversation.bot_handoff" | "assignee.changed" | "message.created"
        )
    }

    fn reads(&self, event: &pb::DomainEvent) -> Vec<StateRead> {
        // Participants matter for public messages only (notes notify mentions).
        let public = event.message.as_ref().is_some_and(|m| {
            !m.private
                && matches!(
                    m.message_type(),
                    pb::MessageType::Incoming | pb::MessageType::Outgoing
                )
        });
        match (event.name.as_str(), &event.conversation) {
            ("message.created", Some(c)) if public && !c.contact_blocked => {
                vec![StateRead::Members(participants_key(
                    event.account_id,
                    c.display_id,
                ))]
            }
            _ => Vec::new(),
        }
    }

    fn decide(&mut self, event: &pb::DomainEvent, state: &StateView) -> Result<Vec<Action>, Skip> {
        if !self.handles(&event.name) {
            return Err(Skip::NotRouted);
        }
        let Some(conversation) = event.conversation.as_ref().filter(|c| c.display_id > 0) else {
            return Err(Skip::NoPayload);
        };
        let account = event.account_id;
        match event.name.as_str() {
            "conversation.created" | "conversation.bot_handoff" => {
                if pending(conversation) || conversation.contact_blocked {
                    return Err(Skip::Filtered);
                }
                let directory = self.source.directory();
                let mirror = directory.mirror();
                let Some(inbox) = mirror.inbox(conversation.inbox_id) else {
                    return Err(Skip::Unconfigured);
                };
                let mut members = inbox.member_ids.clone();
                members.sort_unstable();
                members.dedup();
                let notify: Vec<Notify> = members
                    .into_iter()
                    .filter(|u| subscribed(mirror, account, *u, "conversation_creation"))
                    .map(|user_id| Notify {
                        user_id,
                        kind: "conversation_creation",
                        message_id: 0,
                    })
                    .collect();
                if notify.is_empty() {
                    return Err(Skip::NoDestination);
                }
                Ok(self.actions(event, conversation.display_id, notify))
            }
            "assignee.changed" => {
                let assignee = conversation.assignee_id;
                if assignee == 0 {
                    return Err(Skip::Filtered);
                }
                // The assignee becomes a participant whatever else (the participation
                // listener tells the backend).
                let mut actions = vec![Action::AddMembers {
                    key: participants_key(account, conversation.display_id),
                    members: vec![assignee],
                }];
                let by = event.performed_by.as_ref();
                let self_assigned =
                    by.is_some_and(|p| p.kind() == pb::performer::Kind::User && p.id == assignee);
                if !self_assigned && !pending(conversation) && !conversation.contact_blocked {
                    actions.extend(self.actions(
                        event,
                        conversation.display_id,
                        vec![Notify {
                            user_id: assignee,
                            kind: "conversation_assignment",
                            message_id: 0,
                        }],
                    ));
                }
                Ok(actions)
            }
            _ => self.message_created(event, conversation, state),
        }
    }
}

#[cfg(test)]
#[path = "notification_tests.rs"]
mod tests;
