//! The notification listener's rules, as a table of events, mirrored configuration and
//! kept state in, commands and pushes out.

use std::sync::Arc;

use super::*;
use crate::delivery::directory::Directory;

const ACCOUNT: u64 = 1;
const INBOX: u64 = 3;

/// Inbox 3 with members 4, 5, 6, 8; users 4 and 5 want creation notifications; user 7 is
/// an administrator (not a member); team 30 is users 5 and 6.
fn listener() -> NotificationListener<Arc<Directory>> {
    let mut m = Mirror::default();
    m.add_inbox(pb::InboxSettings {
        inbox_id: INBOX,
        account_id: ACCOUNT,
        member_ids: vec![6, 5, 4, 8],
        ..Default::default()
    });
    for (id, user, role, wants) in [
        (1, 4, 0, true),
        (2, 5, 0, true),
        (3, 6, 0, false),
        (4, 7, 1, false),
    ] {
        m.add_account_user(pb::AccountUser {
            id,
            account_id: ACCOUNT,
            user_id: user,
            role,
            notifications: if wants {
                vec!["conversation_creation".into()]
            } else {
                vec!["conversation_assignment".into()]
            },
        });
    }
    m.add_team(pb::Team {
        id: 30,
        account_id: ACCOUNT,
        member_ids: vec![6, 5],
    });
    NotificationListener::new(Arc::new(Directory::from_mirror(m)))
}

fn event(name: &str) -> pb::DomainEvent {
    pb::DomainEvent {
        id: format!("ev-{name}"),
        name: name.into(),
        account_id: ACCOUNT,
        conversation: Some(pb::ConversationFacts {
            display_id: 42,
            inbox_id: INBOX,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn message(
    private: bool,
    kind: pb::MessageType,
    sender: Option<(pb::sender::Kind, u64)>,
    content: &str,
) -> pb::DomainEvent {
    let mut e = event("message.created");
    e.message = Some(pb::MessageFacts {
        id: 900,
        message_type: kind as i32,
        private,
        content: content.into(),
        sender: sender.map(|(k, id)| pb::Sender {
            kind: k as i32,
            id,
            ..Default::default()
        }),
        ..Default::default()
    });
    e
}

/// The notifications decided, as (user, type, message), in order; and checks each has
/// its push in the user's room, with the command's id.
fn notified(actions: &[Action]) -> Vec<(u64, String, u64)> {
    let mut out = Vec::new();
    let mut pushes = Vec::new();
    for a in actions {
        match a {
            Action::Command { id, command } => {
                if let Some(pb::command::Kind::CreateNotification(n)) = &command.kind {
                    assert_eq!(command.listener, "notification");
                    assert_eq!(n.conversation_display_id, 42);
                    out.push((n.user_id, n.notification_type.clone(), n.message_id, id.clone()));
                }
            }
            Action::Publish { rooms, event } => {
                assert_eq!(event.name, PENDING_EVENT);
                pushes.push((rooms[0].to_string(), event.id.clone()));
            }
            _ => {}
        }
    }
    let expected: Vec<(String, String)> = out
        .iter()
        .map(|(user, _, _, id)| (format!("user:{user}"), id.clone()))
        .collect();
    assert_eq!(pushes, expected, "one push per notification, same id");
    out.into_iter().map(|(u, k, m, _)| (u, k, m)).collect()
}

fn participants_added(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::AddMembers { key, members } => {
                assert_eq!(*key, participants_key(ACCOUNT, 42));
                Some(members.clone())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

fn none() -> StateView {
    StateView::default()
}

#[test]
fn a_new_conversation_notifies_the_members_who_want_it() {
    let mut l = listener();
    let actions = l.decide(&event("conversation.created"), &none()).unwrap();
    assert_eq!(
        notified(&actions),
        [
            (4, "conversation_creation".into(), 0),
            (5, "conversation_creation".into(), 0)
        ]
    );
    let handoff = l.decide(&event("conversation.bot_handoff"), &none()).unwrap();
    assert_eq!(notified(&handoff).len(), 2);

    let mut pending = event("conversation.created");
    pending.conversation.as_mut().unwrap().status = pb::ConversationStatus::Pending as i32;
    assert_eq!(l.decide(&pending, &none()), Err(Skip::Filtered));
    let mut elsewhere = event("conversation.created");
    elsewhere.conversation.as_mut().unwrap().inbox_id = 99;
    assert_eq!(l.decide(&elsewhere, &none()), Err(Skip::Unconfigured));
}

#[test]
fn an_assignment_notifies_the_assignee_unless_self_assigned_or_pending() {
    let mut l = listener();
    let mut e = event("assignee.changed");
    e.conversation.as_mut().unwrap().assignee_id = 6;
    e.performed_by = Some(pb::Performer {
        kind: pb::performer::Kind::User as i32,
        id: 4,
    });
    let actions = l.decide(&e, &none()).unwrap();
    assert_eq!(notified(&actions), [(6, "conversation_assignment".into(), 0)]);
    assert_eq!(participants_added(&actions), [6]);

    e.performed_by.as_mut().unwrap().id = 6;
    let own = l.decide(&e, &none()).unwrap();
    assert!(notified(&own).is_empty(), "self-assigned");
    assert_eq!(participants_added(&own), [6], "still a participant");

    e.performed_by = None;
    e.conversation.as_mut().unwrap().status = pb::ConversationStatus::Pending as i32;
    assert!(notified(&l.decide(&e, &none()).unwrap()).is_empty(), "pending");

    e.conversation.as_mut().unwrap().assignee_id = 0;
    assert_eq!(l.decide(&e, &none()), Err(Skip::Filtered));
}

#[test]
fn mentions_in_private_notes_reach_members_and_administrators() {
    let mut l = listener();
    // User 5 (member), 9 (neither member nor admin), 7 (admin), team 30 (6 and 5).
    let note = message(
        true,
        pb::MessageType::Outgoing,
        Some((pb::sender::Kind::User, 4)),
        "cc (mention://user/5/Ann) (mention://user/9/Zed) (mention://user/7/Boss) and (mention://team/30/Billing)",
    );
    let actions = l.decide(&note, &none()).unwrap();
    assert_eq!(
        notified(&actions),
        [
            (5, "conversation_mention".into(), 900),
            (7, "conversation_mention".into(), 900),
            (6, "conversation_mention".into(), 900),
        ]
    );
    assert_eq!(participants_added(&actions), [5, 7, 6]);
    let participant_commands = actions
        .iter()
        .filter(|a| matches!(a, Action::Command { command, .. } if matches!(command.kind, Some(pb::command::Kind::AddParticipant(_)))))
        .count();
    assert_eq!(participant_commands, 3);
    // A public message's mention syntax is not a mention; a note without any is nothing.
    let plain = message(
        true,
        pb::MessageType::Outgoing,
        Some((pb::sender::Kind::User, 4)),
        "no one",
    );
    assert_eq!(l.decide(&plain, &none()), Err(Skip::NoDestination));
}

#[test]
fn new_messages_go_to_the_assignee_then_participants_but_never_the_sender() {
    let mut l = listener();
    let state = none().with_members(participants_key(ACCOUNT, 42), vec![4, 8, 10]);
    let mut incoming = message(
        false,
        pb::MessageType::Incoming,
        Some((pb::sender::Kind::Contact, 77)),
        "hi",
    );
    incoming.conversation.as_mut().unwrap().assignee_id = 4;
    assert_eq!(
        notified(&l.decide(&incoming, &state).unwrap()),
        [
            (4, "assigned_conversation_new_message".into(), 900),
            (8, "participating_conversation_new_message".into(), 900),
            (10, "participating_conversation_new_message".into(), 900),
        ]
    );
    let mut reply = message(
        false,
        pb::MessageType::Outgoing,
        Some((pb::sender::Kind::User, 8)),
        "on it",
    );
    reply.conversation.as_mut().unwrap().assignee_id = 4;
    assert_eq!(
        notified(&l.decide(&reply, &state).unwrap()),
        [
            (4, "assigned_conversation_new_message".into(), 900),
            (10, "participating_conversation_new_message".into(), 900),
        ]
    );
    let mut by_assignee = reply.clone();
    by_assignee.message.as_mut().unwrap().sender.as_mut().unwrap().id = 4;
    assert_eq!(
        notified(&l.decide(&by_assignee, &state).unwrap()),
        [
            (8, "participating_conversation_new_message".into(), 900),
            (10, "participating_conversation_new_message".into(), 900),
        ]
    );
    // Activity and template messages notify nobody.
    let activity = message(false, pb::MessageType::Activity, None, "assigned");
    assert_eq!(l.decide(&activity, &state), Err(Skip::NoDestination));
    // The reads name the participants.
    assert_eq!(
        l.reads(&incoming),
        [StateRead::Members(participants_key(ACCOUNT, 42))]
    );
}

#[test]
fn a_blocked_contact_notifies_mentions_only() {
    let mut l = listener();
    let state = none().with_members(participants_key(ACCOUNT, 42), vec![8]);
    let mut incoming = message(
        false,
        pb::MessageType::Incoming,
        Some((pb::sender::Kind::Contact, 77)),
        "hi",
    );
    incoming.conversation.as_mut().unwrap().contact_blocked = true;
    incoming.conversation.as_mut().unwrap().assignee_id = 4;
    assert_eq!(l.decide(&incoming, &state), Err(Skip::NoDestination));
    let mut note = message(
        true,
        pb::MessageType::Outgoing,
        Some((pb::sender::Kind::User, 4)),
        "(mention://user/5/Ann)",
    );
    note.conversation.as_mut().unwrap().contact_blocked = true;
    assert_eq!(
        notified(&l.decide(&note, &state).unwrap()),
        [(5, "conversation_mention".into(), 900)]
    );
    let mut created = event("conversation.created");
    created.conversation.as_mut().unwrap().contact_blocked = true;
    assert_eq!(l.decide(&created, &none()), Err(Skip::Filtered));
}

#[test]
fn decisions_have_stable_ids() {
    let mut l = listener();
    let ids = |actions: Vec<Action>| -> Vec<String> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Command { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    };
    let first = ids(l.decide(&event("conversation.created"), &none()).unwrap());
    let again = ids(l.decide(&event("conversation.created"), &none()).unwrap());
    assert_eq!(first, again);
    assert_ne!(first[0], first[1]);
}

#[test]
fn mention_syntax() {
    assert_eq!(
        mentions(
            "(mention://user/1/A) (mention://user/1/A) (mention://team/2/T) (mention://user/3/) (mention://user/x/B) (mention://user/4/D"
        ),
        (vec![1], vec![2])
    );
    assert_eq!(
        mentions("mention://user/1/A"),
        (vec![], vec![]),
        "without the brackets"
    );
}
