//! The delivery listeners' rules as tables: which events, to whom, with which body.

use prost::Message;
use serde_json::{Value, json};

use super::*;
use crate::delivery::directory::Collection;

const ACCOUNT: u64 = 1;
const INBOX: u64 = 3;

fn directory(records: Vec<(String, Vec<u8>)>) -> Arc<Directory> {
    let (dir, bad) = Directory::from_records(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    assert!(bad.is_empty());
    Arc::new(dir)
}

fn webhook(id: u64, subscriptions: &[&str]) -> (String, Vec<u8>) {
    let w = pb::Webhook {
        id,
        account_id: ACCOUNT,
        url: format!("https://hooks.example/{id}"),
        subscriptions: subscriptions.iter().map(|s| s.to_string()).collect(),
        secret: format!("secret-{id}"),
        ..Default::default()
    };
    (Collection::Webhook.key(id), w.encode_to_vec())
}

fn inbox_webhook(inbox: u64, account: u64) -> (String, Vec<u8>) {
    let w = pb::InboxWebhook {
        inbox_id: inbox,
        account_id: account,
        url: format!("https://api-inbox.example/{inbox}"),
        secret: "inbox-secret".into(),
        ..Default::default()
    };
    (Collection::InboxWebhook.key(inbox), w.encode_to_vec())
}

fn bot(id: u64, inboxes: &[u64], url: &str) -> (String, Vec<u8>) {
    let b = pb::AgentBot {
        id,
        account_id: ACCOUNT,
        url: url.into(),
        secret: format!("bot-{id}"),
        inbox_ids: inboxes.to_vec(),
        ..Default::default()
    };
    (Collection::AgentBot.key(id), b.encode_to_vec())
}

fn hook(id: u64, app: &str, inbox: u64, enabled: bool) -> (String, Vec<u8>) {
    let h = pb::Hook {
        id,
        account_id: ACCOUNT,
        app_id: app.into(),
        inbox_id: inbox,
        url: format!("https://apps.example/{app}/{id}"),
        secret: "hook-secret".into(),
        enabled,
        events: vec!["message_created".into()],
        ..Default::default()
    };
    (Collection::Hook.key(id), h.encode_to_vec())
}

fn event(name: &str) -> pb::DomainEvent {
    pb::DomainEvent {
        id: format!("ev-{name}"),
        name: name.into(),
        account_id: ACCOUNT,
        occurred_at_ms: 1_700_000_000_000,
        conversation: Some(pb::ConversationFacts {
            display_id: 12,
            inbox_id: INBOX,
            ..Default::default()
        }),
        message: name.starts_with("message.").then(|| pb::MessageFacts {
            id: 99,
            message_type: MessageType::Incoming as i32,
            ..Default::default()
        }),
        webhook_payload: r#"{"id":12,"account":{"id":1,"name":"Acme"}}"#.into(),
        changed_attributes: r#"[{"status":{"previous_value":"open","current_value":"resolved"}}]"#.into(),
        ..Default::default()
    }
}

fn decide(listener: &mut dyn Listener, event: &pb::DomainEvent) -> Result<Vec<pb::Delivery>, Skip> {
    let mut actions = listener.decide(event, &StateView::default())?;
    assert_eq!(actions.len(), 1);
    let Action::Deliver(list) = actions.remove(0) else {
        panic!("not a delivery")
    };
    Ok(list)
}

fn body(d: &pb::Delivery) -> Value {
    serde_json::from_slice(&d.body).expect("json body")
}

fn targets(list: &[pb::Delivery]) -> Vec<(DestinationKind, u64)> {
    list.iter().map(|d| (d.kind(), d.destination_id)).collect()
}

#[test]
fn webhooks_get_their_subscriptions_and_the_api_inbox_every_inbox_scoped_event() {
    use DestinationKind::{InboxWebhook as I, Webhook as W};
    let dir = directory(vec![
        webhook(1, &crate::delivery::directory::WEBHOOK_EVENTS),
        webhook(2, &["message_created"]),
        inbox_webhook(INBOX, ACCOUNT),
        // Another account's inbox webhook on the same inbox id: never used.
        inbox_webhook(INBOX + 1, ACCOUNT + 1),
    ]);
    let mut listener = WebhookListener::new(dir);
    // (event, expected destinations)
    let table: [(&str, &[(DestinationKind, u64)]); 12] = [
        ("conversation.created", &[(W, 1), (I, INBOX)]),
        ("conversation.status_changed", &[(W, 1), (I, INBOX)]),
        ("conversation.updated", &[(W, 1), (I, INBOX)]),
        ("message.created", &[(W, 1), (W, 2), (I, INBOX)]),
        ("message.updated", &[(W, 1), (I, INBOX)]),
        ("webwidget.triggered", &[(W, 1), (I, INBOX)]),
        ("conversation.typing_on", &[(W, 1), (I, INBOX)]),
        ("conversation.typing_off", &[(W, 1), (I, INBOX)]),
        ("contact.created", &[(W, 1)]),
        ("contact.updated", &[(W, 1)]),
        ("inbox.created", &[(W, 1)]),
        ("inbox.updated", &[(W, 1)]),
    ];
    for (name, expected) in table {
        let got = decide(&mut listener, &event(name)).unwrap_or_else(|s| panic!("{name}: {s:?}"));
        assert_eq!(targets(&got), expected, "{name}");
        for d in &got {
            assert_eq!(body(d)["event"], name.replace('.', "_"), "{name}");
            assert_eq!(d.event, name.replace('.', "_"));
        }
    }
    for name in [
        "assignee.changed",
        "conversation.resolved",
        "account.created",
        "conversation.read",
    ] {
        assert!(!listener.handles(name), "{name}");
        assert_eq!(
            listener.decide(&event(name), &StateView::default()),
            Err(Skip::NotRouted)
        );
    }
}

#[test]
fn webhook_bodies_carry_the_extras_of_each_event() {
    let dir = directory(vec![webhook(1, &crate::delivery::directory::WEBHOOK_EVENTS)]);
    let mut listener = WebhookListener::new(dir);
    let changes = json!([{"status": {"previous_value": "open", "current_value": "resolved"}}]);
    for name in [
        "conversation.status_changed",
        "conversation.updated",
        "contact.updated",
        "inbox.updated",
    ] {
        let got = decide(&mut listener, &event(name)).unwrap();
        assert_eq!(body(&got[0])["changed_attributes"], changes, "{name}");
        assert_eq!(body(&got[0])["account"]["name"], "Acme", "the payload is kept");
    }
    let got = decide(&mut listener, &event("conversation.created")).unwrap();
    assert!(body(&got[0]).get("changed_attributes").is_none());

    let mut widget = event("webwidget.triggered");
    widget.event_info = r#"{"name":"pricing","browser":"Safari"}"#.into();
    let got = decide(&mut listener, &widget).unwrap();
    assert_eq!(body(&got[0])["event_info"]["name"], "pricing");

    let mut typing = event("conversation.typing_on");
    typing.typing = Some(pb::TypingFacts {
        private: true,
        ..Default::default()
    });
    typing.webhook_payload = r#"{"user":{"id":7},"conversation":{"id":12}}"#.into();
    let got = decide(&mut listener, &typing).unwrap();
    assert_eq!(
        body(&got[0]),
        json!({"event": "conversation_typing_on", "user": {"id": 7}, "conversation": {"id": 12}, "is_private": true})
    );

    // A conversation update without changes still goes, with null (as Chatwoot's).
    let mut unchanged = event("conversation.updated");
    unchanged.changed_attributes.clear();
    let got = decide(&mut listener, &unchanged).unwrap();
    assert_eq!(body(&got[0])["changed_attributes"], Value::Null);
}

#[test]
fn webhooks_skip_activity_messages_unchanged_updates_and_events_without_a_payload() {
    let dir = directory(vec![
        webhook(1, &crate::delivery::directory::WEBHOOK_EVENTS),
        inbox_webhook(INBOX, ACCOUNT),
    ]);
    let mut listener = WebhookListener::new(dir);
    for kind in [MessageType::Outgoing, MessageType::Template] {
        let mut e = event("message.created");
        e.message.as_mut().unwrap().message_type = kind as i32;
        assert!(decide(&mut listener, &e).is_ok(), "{kind:?}");
    }
    let mut activity = event("message.updated");
    activity.message.as_mut().unwrap().message_type = MessageType::Activity as i32;
    assert_eq!(
        listener.decide(&activity, &StateView::default()),
        Err(Skip::Filtered)
    );

    for name in ["contact.updated", "inbox.updated"] {
        for empty in ["", "[]", "{}", "null"] {
            let mut e = event(name);
            e.changed_attributes = empty.into();
            assert_eq!(
                listener.decide(&e, &StateView::default()),
                Err(Skip::NothingChanged),
                "{name} {empty:?}"
            );
        }
    }
    let mut bare = event("conversation.created");
    bare.webhook_payload.clear();
    assert_eq!(
        listener.decide(&bare, &StateView::default()),
        Err(Skip::NoPayload)
    );

    let mut elsewhere = event("contact.created");
    elsewhere.account_id = 2;
    assert_eq!(
        listener.decide(&elsewhere, &StateView::default()),
        Err(Skip::NoDestination)
    );
}

#[test]
fn a_widget_event_without_a_conversation_finds_the_api_inbox_by_its_inbox_id() {
    let dir = directory(vec![inbox_webhook(INBOX, ACCOUNT)]);
    let mut listener = WebhookListener::new(dir);
    let mut e = event("webwidget.triggered");
    e.conversation = None;
    e.inbox_id = INBOX;
    let got = decide(&mut listener, &e).unwrap();
    assert_eq!(targets(&got), [(DestinationKind::InboxWebhook, INBOX)]);
    assert_eq!(got[0].secret, "inbox-secret");
}

#[test]
fn delivery_ids_are_stable_per_event_and_destination() {
    let a = delivery_id("ev-1", DestinationKind::Webhook, 1);
    assert_eq!(a, delivery_id("ev-1", DestinationKind::Webhook, 1));
    assert_ne!(a, delivery_id("ev-1", DestinationKind::Webhook, 2));
    assert_ne!(a, delivery_id("ev-1", DestinationKind::InboxWebhook, 1));
    assert_ne!(a, delivery_id("ev-2", DestinationKind::Webhook, 1));
    let parsed = uuid::Uuid::parse_str(&a).expect("uuid-shaped");
    assert_eq!(parsed.get_version_num(), 8);
}

#[test]
fn agent_bots_are_the_assigned_one_and_the_inbox_one_once_each() {
    let dir = directory(vec![
        bot(7, &[INBOX], "https://bot.example/7"),
        bot(8, &[], "https://bot.example/8"),
        bot(9, &[INBOX + 1], ""),
    ]);
    let mut listener = AgentBotListener::new(dir);
    let with_assigned = |name: &str, bot: u64| {
        let mut e = event(name);
        e.conversation.as_mut().unwrap().assignee_bot_id = bot;
        e
    };
    use DestinationKind::AgentBot as B;
    let got = decide(&mut listener, &with_assigned("message.created", 8)).unwrap();
    assert_eq!(targets(&got), [(B, 8), (B, 7)]);
    assert_eq!(got[0].secret, "bot-8");
    let got = decide(&mut listener, &with_assigned("message.created", 7)).unwrap();
    assert_eq!(targets(&got), [(B, 7)], "the same bot once");
    // The widget's event: the inbox's bot only.
    let got = decide(&mut listener, &with_assigned("webwidget.triggered", 8)).unwrap();
    assert_eq!(targets(&got), [(B, 7)]);
    // A bot without an outgoing URL is skipped.
    let mut e = with_assigned("conversation.resolved", 9);
    e.conversation.as_mut().unwrap().inbox_id = INBOX + 1;
    assert_eq!(
        listener.decide(&e, &StateView::default()),
        Err(Skip::NoDestination)
    );

    let table = [
        ("conversation.resolved", false),
        ("conversation.opened", false),
        ("conversation.status_changed", true),
        ("conversation.updated", true),
        ("message.created", false),
        ("message.updated", false),
    ];
    for (name, changes) in table {
        let got = decide(&mut listener, &event(name)).unwrap_or_else(|s| panic!("{name}: {s:?}"));
        let b = body(&got[0]);
        assert_eq!(b["event"], name.replace('.', "_"));
        assert_eq!(b.get("changed_attributes").is_some(), changes, "{name}");
    }
    for name in [
        "conversation.created",
        "contact.created",
        "message.deleted",
        "assignee.changed",
    ] {
        assert!(!listener.handles(name), "{name}");
    }
    let mut activity = event("message.created");
    activity.message.as_mut().unwrap().message_type = MessageType::Activity as i32;
    assert_eq!(
        listener.decide(&activity, &StateView::default()),
        Err(Skip::Filtered)
    );
}

#[test]
fn a_bot_of_another_account_gets_nothing() {
    let mut other = pb::AgentBot {
        id: 5,
        account_id: ACCOUNT + 1,
        url: "https://bot.example/5".into(),
        inbox_ids: vec![INBOX],
        ..Default::default()
    };
    let dir = directory(vec![(Collection::AgentBot.key(5), other.encode_to_vec())]);
    let mut listener = AgentBotListener::new(dir);
    assert_eq!(
        listener.decide(&event("message.created"), &StateView::default()),
        Err(Skip::NoDestination)
    );
    // An installation-wide bot (account 0) serves any account.
    other.account_id = 0;
    let dir = directory(vec![(Collection::AgentBot.key(5), other.encode_to_vec())]);
    let mut listener = AgentBotListener::new(dir);
    assert!(decide(&mut listener, &event("message.created")).is_ok());
}

#[test]
fn hooks_get_only_what_their_app_supports_and_inbox_hooks_only_their_messages() {
    let dir = directory(vec![
        hook(1, "slack", 0, true),
        hook(2, "google_translate", 0, true),
        hook(3, "leadsquared", 0, true),
        hook(4, "dialogflow", INBOX, true),
        hook(5, "dialogflow", INBOX + 1, true),
        hook(6, "slack", 0, false),
        hook(7, "crm_sync", 0, true),
        hook(8, "leadsquared", INBOX, true),
    ]);
    let mut listener = HookListener::new(dir);
    let resolved = || {
        let mut e = event("conversation.resolved");
        e.conversation.as_mut().unwrap().status = ConversationStatus::Resolved as i32;
        e
    };
    let ids = |e: &pb::DomainEvent, l: &mut HookListener<Arc<Directory>>| -> Result<Vec<u64>, Skip> {
        decide(l, e).map(|list| list.iter().map(|d| d.destination_id).collect())
    };
    assert_eq!(
        ids(&event("message.created"), &mut listener),
        Ok(vec![1, 2, 4, 7])
    );
    assert_eq!(ids(&event("message.updated"), &mut listener), Ok(vec![1, 4]));
    assert_eq!(ids(&event("contact.updated"), &mut listener), Ok(vec![3]));
    assert_eq!(ids(&event("conversation.created"), &mut listener), Ok(vec![3]));
    assert_eq!(ids(&resolved(), &mut listener), Ok(vec![3]));
    // Resolved in name but not in status: nothing.
    assert_eq!(
        listener.decide(&event("conversation.resolved"), &StateView::default()),
        Err(Skip::Filtered)
    );
    // No app takes contact_created.
    assert_eq!(
        listener.decide(&event("contact.created"), &StateView::default()),
        Err(Skip::NoDestination)
    );
    let got = decide(&mut listener, &event("contact.updated")).unwrap();
    let b = body(&got[0]);
    assert_eq!(
        b["hook"],
        json!({"id": 3, "app_id": "leadsquared", "inbox_id": 0})
    );
    assert_eq!(b["event"], "contact_updated");
    assert!(b.get("changed_attributes").is_some());
    assert_eq!(got[0].kind(), DestinationKind::Hook);
    assert!(!listener.handles("conversation.opened"));
}

#[test]
fn the_installation_webhook_gets_account_created_unsigned() {
    let target = pb::InstallationWebhook {
        url: "https://hub.example/installations".into(),
        ..Default::default()
    };
    let dir = directory(vec![(Collection::Installation.key(0), target.encode_to_vec())]);
    let mut listener = InstallationWebhookListener::new(dir);
    let mut e = event("account.created");
    e.conversation = None;
    e.webhook_payload =
        r#"{"id":1,"name":"Acme","users":[{"id":7,"name":"Ann","email":"a@x","type":"user"}]}"#.into();
    let got = decide(&mut listener, &e).unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].secret.is_empty(), "unsigned");
    assert_eq!(got[0].kind(), DestinationKind::Installation);
    let b = body(&got[0]);
    assert_eq!(b["event"], "account_created");
    assert_eq!(b["users"][0]["name"], "Ann");
    assert!(!listener.handles("account.cache_invalidated"));

    let mut listener = InstallationWebhookListener::new(directory(vec![]));
    assert_eq!(
        listener.decide(&e, &StateView::default()),
        Err(Skip::NoDestination)
    );
}
