//! Every event name of the catalogue through the routing listener, with its exact rooms.

use super::*;
use crate::events::catalogue::EVENT_NAMES;

const ACCOUNT: u64 = 1;
const INBOX: u64 = 3;
const CONVERSATION: u64 = 42;
/// The conversation's contact side: two verified contact inboxes.
const CONTACT_INBOXES: [u64; 2] = [501, 502];
const USER: u64 = 9;

fn domain(name: &str) -> pb::DomainEvent {
    pb::DomainEvent {
        id: format!("id-{name}"),
        name: name.into(),
        account_id: ACCOUNT,
        occurred_at_ms: 1_700_000_000_000,
        conversation: Some(pb::ConversationFacts {
            display_id: CONVERSATION,
            inbox_id: INBOX,
            contact_inbox_ids: CONTACT_INBOXES.to_vec(),
            ..Default::default()
        }),
        message: Some(pb::MessageFacts {
            id: 77,
            message_type: pb::MessageType::Outgoing as i32,
            ..Default::default()
        }),
        user_id: USER,
        typing: Some(pb::TypingFacts {
            typer: Some(pb::Sender {
                kind: pb::sender::Kind::User as i32,
                id: USER,
                ..Default::default()
            }),
            private: false,
        }),
        payload: r#"{"id":42}"#.into(),
        ..Default::default()
    }
}

fn rooms(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::Publish { rooms, .. } | Action::Ephemeral { rooms, .. } => {
                rooms.iter().map(|r| r.to_string())
            }
            _ => panic!("routing only publishes"),
        })
        .collect()
}

#[test]
fn every_event_reaches_exactly_its_recipient_rooms() {
    let inbox = "inbox:3".to_string();
    let contacts = ["contact:501".to_string(), "contact:502".to_string()];
    let with_contacts = || [vec![inbox.clone()], contacts.to_vec()].concat();
    let expected = |name: &str| -> Option<Vec<String>> {
        Some(match name {
            "message.created" | "message.updated" => with_contacts(),
            "conversation.created" | "conversation.status_changed" | "conversation.updated" => {
                with_contacts()
            }
            "first.reply.created"
            | "conversation.read"
            | "assignee.changed"
            | "team.changed"
            | "conversation.contact_changed"
            | "conversation.unread_count_changed" => vec![inbox.clone()],
            // The typer is an agent: every contact room, the agent's connections excluded.
            "conversation.typing_on" | "conversation.typing_off" => with_contacts(),
            "conversation.mentioned"
            | "notification.created"
            | "notification.updated"
            | "notification.deleted"
            | "copilot.message.created"
            | "account.enrichment_completed"
            | "voice_call.incoming" => vec!["user:9".into()],
            "contact.created"
            | "contact.updated"
            | "contact.merged"
            | "contact.deleted"
            | "account.cache_invalidated"
            | "voice_call.outbound_connected"
            | "voice_call.outbound_accepted"
            | "voice_call.ended"
            | "voice_call.permission_granted" => vec!["account:1".into()],
            // Handled by other listeners (webhooks, bots, notifications, reporting…).
            _ => return None,
        })
    };
    for name in EVENT_NAMES {
        let mut routing = Routing::default();
        let got = routing.route(&domain(name));
        match expected(name) {
            Some(want) => {
                let actions = got.unwrap_or_else(|skip| panic!("{name}: skipped as {skip:?}"));
                assert_eq!(rooms(&actions), want, "{name}");
                assert_eq!(missing_facts(&domain(name)), None, "{name}");
            }
            None => assert_eq!(got, Err(Skip::NotRouted), "{name}"),
        }
    }
}

#[test]
fn room_events_carry_the_payload_byte_for_byte_with_account_id_always_in_it() {
    let mut routing = Routing::default();
    let mut e = domain("message.created");
    e.payload = r#"{"id":42,  "account_id":1}"#.into();
    let Action::Publish { event: out, .. } = &routing.route(&e).unwrap()[0] else {
        panic!("published")
    };
    assert_eq!(out.json, e.payload, "passed through untouched");
    assert_eq!(
        (out.id.as_str(), out.name.as_str(), out.account_id),
        ("id-message.created", "message.created", 1)
    );
    assert_eq!(out.occurred_at_ms, e.occurred_at_ms);

    let mut e = domain("contact.updated");
    e.payload = r#"{"id":5,"name":"Ada"}"#.into();
    let Action::Publish { event: out, .. } = &routing.route(&e).unwrap()[0] else {
        panic!("published")
    };
    let json: serde_json::Value = serde_json::from_str(&out.json).unwrap();
    assert_eq!(
        json,
        serde_json::json!({ "id": 5, "name": "Ada", "account_id": 1 })
    );

    e.payload = String::new();
    let Action::Publish { event: out, .. } = &routing.route(&e).unwrap()[0] else {
        panic!("published")
    };
    assert_eq!(out.json, r#"{"account_id":1}"#);
}

#[test]
fn private_notes_and_activity_messages_never_reach_the_contact_side() {
    let mut routing = Routing::default();
    let mut note = domain("message.created");
    note.message.as_mut().unwrap().private = true;
    assert_eq!(rooms(&routing.route(&note).unwrap()), ["inbox:3"]);
    let mut activity = domain("message.updated");
    activity.message.as_mut().unwrap().message_type = pb::MessageType::Activity as i32;
    assert_eq!(rooms(&routing.route(&activity).unwrap()), ["inbox:3"]);
    let mut incoming = domain("message.created");
    incoming.message.as_mut().unwrap().message_type = pb::MessageType::Incoming as i32;
    assert_eq!(
        rooms(&routing.route(&incoming).unwrap()),
        ["inbox:3", "contact:501", "contact:502"]
    );
}

#[test]
fn typing_is_ephemeral_never_echoes_to_the_typer_and_private_typing_stays_with_agents() {
    let mut routing = Routing::default();
    let on = domain("conversation.typing_on");
    let actions = routing.route(&on).unwrap();
    let [
        Action::Ephemeral {
            rooms,
            event,
            exclude,
            private,
        },
    ] = &actions[..]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(exclude.as_ref().map(|r| r.as_str()), Some("user:9"));
    assert!(!private);
    assert_eq!(rooms.len(), 3);
    let Some(pb::event::Payload::Typing(t)) = &event.payload else {
        panic!("typed")
    };
    assert_eq!(
        (t.room.as_str(), t.on, t.sender.as_ref().unwrap().id),
        ("conversation:42", true, USER)
    );

    // A contact typing: the agents see it, its own contact room is left out.
    let mut by_contact = domain("conversation.typing_off");
    by_contact.typing.as_mut().unwrap().typer = Some(pb::Sender {
        kind: pb::sender::Kind::Contact as i32,
        id: 501,
        ..Default::default()
    });
    let actions = routing.route(&by_contact).unwrap();
    let [
        Action::Ephemeral {
            rooms,
            exclude,
            event,
            ..
        },
    ] = &actions[..]
    else {
        panic!("{actions:?}")
    };
    let rooms: Vec<_> = rooms.iter().map(|r| r.as_str()).collect();
    assert_eq!(rooms, ["inbox:3", "contact:502"]);
    assert_eq!(exclude.as_ref().map(|r| r.as_str()), Some("contact:501"));
    assert!(matches!(&event.payload, Some(pb::event::Payload::Typing(t)) if !t.on));

    // A private note being typed: agents only, marked private.
    let mut private = domain("conversation.typing_on");
    private.typing.as_mut().unwrap().private = true;
    let actions = routing.route(&private).unwrap();
    let [Action::Ephemeral { rooms, private, .. }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(rooms.len(), 1);
    assert!(*private);
}

#[test]
fn updates_older_than_the_last_one_routed_for_their_conversation_are_dropped() {
    let mut routing = Routing::new(2);
    let at = |name: &str, display_id: u64, updated_at: f64| {
        let mut e = domain(name);
        let c = e.conversation.as_mut().unwrap();
        c.display_id = display_id;
        c.updated_at = updated_at;
        e
    };
    assert!(routing.route(&at("conversation.updated", 42, 10.5)).is_ok());
    assert_eq!(
        routing.route(&at("assignee.changed", 42, 10.25)),
        Err(Skip::Stale)
    );
    // The same instant is not older (several events of one commit share it).
    assert!(
        routing
            .route(&at("conversation.status_changed", 42, 10.5))
            .is_ok()
    );
    assert!(routing.route(&at("team.changed", 42, 11.0)).is_ok());
    // Another conversation has its own order; unordered names are never stale.
    assert!(routing.route(&at("conversation.read", 43, 1.0)).is_ok());
    assert!(routing.route(&at("message.created", 42, 1.0)).is_ok());
    assert!(
        routing.route(&at("conversation.updated", 42, 0.0)).is_ok(),
        "no updated_at: not ordered"
    );
    // Bounded: the oldest conversation is forgotten first.
    assert!(routing.route(&at("conversation.read", 44, 1.0)).is_ok());
    assert!(
        routing.route(&at("conversation.updated", 42, 1.0)).is_ok(),
        "42 was forgotten"
    );
}

#[test]
fn events_without_the_facts_their_routing_needs_are_named() {
    let mut e = domain("message.created");
    e.message = None;
    assert_eq!(missing_facts(&e), Some("message facts"));
    let mut e = domain("conversation.updated");
    e.conversation = None;
    assert_eq!(missing_facts(&e), Some("conversation.inbox_id"));
    let mut e = domain("notification.created");
    e.user_id = 0;
    assert_eq!(missing_facts(&e), Some("user_id"));
    let mut e = domain("conversation.typing_on");
    e.typing = None;
    assert_eq!(missing_facts(&e), Some("typing.typer"));
    let e = domain("contact.created");
    assert_eq!(missing_facts(&e), None);
    assert_eq!(
        missing_facts(&domain("account.created")),
        None,
        "not routed: nothing needed"
    );
}
