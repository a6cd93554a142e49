//! Every operator of rule conditions, the and/or chaining, and the attribute-changed
//! pass, over one conversation.

use super::*;

const NOW: i64 = 1_796_000_000_000;

fn event(name: &str) -> pb::DomainEvent {
    pb::DomainEvent {
        id: "ev".into(),
        name: name.into(),
        account_id: 1,
        occurred_at_ms: NOW,
        conversation: Some(pb::ConversationFacts {
            display_id: 42,
            inbox_id: 3,
            assignee_id: 6,
            status: pb::ConversationStatus::Open as i32,
            labels: vec!["vip".into(), "billing".into()],
            priority: "high".into(),
            created_at_ms: NOW - 10 * 86_400_000,
            ..Default::default()
        }),
        message: Some(pb::MessageFacts {
            id: 9,
            message_type: pb::MessageType::Incoming as i32,
            content: "Where is my REFUND?".into(),
            ..Default::default()
        }),
        webhook_payload: serde_json::json!({
            "id": 42,
            "additional_attributes": {"browser_language": "de", "referer": "https://shop.example/cart"},
            "custom_attributes": {"plan": "pro", "seats": 12, "renewal": "2026-12-24"},
            "meta": {"sender": {"email": "Ann@Example.com", "phone_number": null, "custom_attributes": {"tier": "gold"}}},
            "last_activity_at": (NOW / 1000) - 3600,
        })
        .to_string(),
        changed_attributes: r#"[{"status":{"previous_value":"pending","current_value":"open"}},{"assignee_id":{"previous_value":null,"current_value":6}}]"#.into(),
        ..Default::default()
    }
}

fn c(key: &str, op: &str, values: &[&str]) -> pb::RuleCondition {
    pb::RuleCondition {
        attribute_key: key.into(),
        filter_operator: op.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

fn custom(kind: &str, key: &str, op: &str, values: &[&str]) -> pb::RuleCondition {
    pb::RuleCondition {
        custom_attribute_type: kind.into(),
        ..c(key, op, values)
    }
}

/// Over a conversation event (its payload is the conversation) that also has message
/// facts; message events read the payload's `conversation`, checked below.
fn holds(condition: pb::RuleCondition) -> bool {
    Subject::new(&event("conversation.updated")).holds(&condition)
}

#[test]
fn message_events_read_the_conversation_inside_the_payload() {
    let mut e = event("message.created");
    let conversation: serde_json::Value = serde_json::from_str(&e.webhook_payload).unwrap();
    e.webhook_payload =
        serde_json::json!({"id": 9, "content": "x", "conversation": conversation}).to_string();
    let subject = Subject::new(&e);
    assert!(subject.holds(&c("browser_language", "equal_to", &["de"])));
    assert_eq!(subject.conversation().unwrap()["id"], 42);
}

#[test]
fn every_operator() {
    let table: Vec<(pb::RuleCondition, bool)> = vec![
        (c("status", "equal_to", &["open", "pending"]), true),
        (c("status", "equal_to", &["resolved"]), false),
        (c("status", "not_equal_to", &["resolved"]), true),
        (c("priority", "equal_to", &["HIGH"]), true),
        (c("inbox_id", "equal_to", &["3"]), true),
        (c("assignee_id", "not_equal_to", &["6"]), false),
        (c("team_id", "equal_to", &["1"]), false),
        (c("team_id", "not_equal_to", &["1"]), false), // absent: no comparison matches
        (c("team_id", "is_not_present", &[]), true),
        (c("labels", "equal_to", &["vip"]), true),
        (c("labels", "not_equal_to", &["spam"]), true),
        (c("labels", "not_equal_to", &["vip"]), false),
        (c("content", "contains", &["refund"]), true),
        (c("content", "does_not_contain", &["refund"]), false),
        (c("content", "does_not_contain", &["invoice"]), true),
        (c("message_type", "equal_to", &["incoming"]), true),
        (c("private_note", "equal_to", &["false"]), true),
        (c("browser_language", "equal_to", &["de"]), true),
        (c("referer", "contains", &["shop.example"]), true),
        (c("mail_subject", "is_present", &[]), false),
        (c("mail_subject", "is_not_present", &[]), true),
        (c("email", "equal_to", &["ann@example.com"]), true),
        (c("phone_number", "is_present", &[]), false),
        (c("created_at", "days_before", &["7"]), true),
        (c("created_at", "days_before", &["30"]), false),
        (c("created_at", "is_less_than", &["2026-11-25"]), true),
        (c("last_activity_at", "is_greater_than", &["2026-11-29"]), true),
        (
            custom("conversation_attribute", "plan", "equal_to", &["Pro"]),
            true,
        ),
        (
            custom("conversation_attribute", "seats", "is_greater_than", &["10"]),
            true,
        ),
        (
            custom("conversation_attribute", "seats", "is_less_than", &["10"]),
            false,
        ),
        (
            custom("conversation_attribute", "renewal", "days_before", &["1"]),
            false,
        ),
        (
            custom("conversation_attribute", "missing", "is_present", &[]),
            false,
        ),
        (custom("contact_attribute", "tier", "equal_to", &["gold"]), true),
    ];
    for (condition, expected) in table {
        assert_eq!(holds(condition.clone()), expected, "{condition:?}");
    }
}

fn joined(mut conditions: Vec<(pb::RuleCondition, &str)>) -> Vec<pb::RuleCondition> {
    conditions
        .drain(..)
        .map(|(mut c, op)| {
            c.query_operator = op.into();
            c
        })
        .collect()
}

#[test]
fn and_binds_tighter_than_or() {
    let yes = || c("status", "equal_to", &["open"]);
    let no = || c("status", "equal_to", &["resolved"]);
    let updated = event("conversation.updated");
    let subject = Subject::new(&updated);
    // no AND yes OR yes → (false) OR (true)
    assert!(subject.matches(&joined(vec![(no(), "and"), (yes(), "or"), (yes(), "")])));
    // yes OR no AND no → true OR (false)
    assert!(subject.matches(&joined(vec![(yes(), "or"), (no(), "and"), (no(), "")])));
    // yes AND no OR no AND yes → false OR false
    assert!(!subject.matches(&joined(vec![
        (yes(), "and"),
        (no(), "or"),
        (no(), "and"),
        (yes(), "")
    ])));
    assert!(subject.matches(&[]), "no conditions: every conversation");
}

#[test]
fn attribute_changed_is_checked_against_the_change() {
    let updated = event("conversation.updated");
    let subject = Subject::new(&updated);
    let changed = |key: &str, from: &[&str], to: &[&str], op: &str| pb::RuleCondition {
        attribute_key: key.into(),
        filter_operator: "attribute_changed".into(),
        changed_from: from.iter().map(|v| v.to_string()).collect(),
        changed_to: to.iter().map(|v| v.to_string()).collect(),
        query_operator: op.into(),
        ..Default::default()
    };
    assert!(subject.matches(&[changed("status", &["pending"], &["open"], "")]));
    assert!(!subject.matches(&[changed("status", &["open"], &["resolved"], "")]));
    assert!(
        !subject.matches(&[changed("priority", &["low"], &["high"], "")]),
        "did not change"
    );
    // From nothing to 6: nil's text is "".
    assert!(subject.matches(&[changed("assignee_id", &[""], &["6"], "")]));
    // With another condition: `and` needs it to hold; otherwise either will do.
    let fails = c("status", "equal_to", &["resolved"]);
    assert!(!subject.matches(&[fails.clone(), changed("status", &["pending"], &["open"], "and")]));
    assert!(subject.matches(&[fails, changed("status", &["pending"], &["open"], "")]));
}
