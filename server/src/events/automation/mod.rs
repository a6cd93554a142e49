//! Chatwoot's AutomationRuleListener, as a decision: the account's active rules for the
//! event (conversation created, updated, opened, resolved; message created) whose
//! conditions hold ([`conditions`]) have their actions carried out — by the backend, as
//! one `run_automation_actions` command per rule, except `send_webhook_event`, which
//! rtgate delivers itself (the conversation's webhook data with
//! `event: automation_event.<rule event>`, unsigned, as Chatwoot's).
//!
//! Skipped: what a rule did (`performed_by` an automation rule: the loop guard); created
//! and opened conversations with `additional_attributes.auto_reply`; activity messages
//! and email auto-replies.

pub mod conditions;

use bytes::Bytes;
use rtgate_protocol::pb::{self, DestinationKind};
use serde_json::Value;

use super::{Action, Listener, Skip, StateView, command_action};
use crate::delivery::listeners::{DirectorySource, To, delivery};
use conditions::Subject;

/// The rule event (`AutomationRule.event_name`) of a domain event's name, for the five
/// rules run on.
fn rule_event(event_name: &str) -> Option<&'static str> {
    Some(match event_name {
        "conversation.created" => "conversation_created",
        "conversation.updated" => "conversation_updated",
        "conversation.opened" => "conversation_opened",
        "conversation.resolved" => "conversation_resolved",
        "message.created" => "message_created",
        _ => return None,
    })
}

/// The automation listener.
pub struct AutomationListener<D> {
    source: D,
}

impl<D: DirectorySource> AutomationListener<D> {
    /// The listener over this mirror (automation rules).
    pub fn new(source: D) -> Self {
        AutomationListener { source }
    }
}

impl<D: DirectorySource> Listener for AutomationListener<D> {
    fn name(&self) -> &'static str {
        "automation_rule"
    }

    fn handles(&self, event_name: &str) -> bool {
        rule_event(event_name).is_some()
    }

    fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
        let Some(rule_event) = rule_event(&event.name) else {
            return Err(Skip::NotRouted);
        };
        if event
            .performed_by
            .as_ref()
            .is_some_and(|p| p.kind() == pb::performer::Kind::AutomationRule)
        {
            return Err(Skip::OwnDoing);
        }
        let Some(c) = event.conversation.as_ref().filter(|c| c.display_id > 0) else {
            return Err(Skip::NoPayload);
        };
        match event.name.as_str() {
            "conversation.created" | "conversation.opened" if c.auto_reply => return Err(Skip::Filtered),
            "message.created" => {
                let Some(m) = event.message.as_ref() else {
                    return Err(Skip::NoPayload);
                };
                if m.message_type() == pb::MessageType::Activity || m.auto_reply {
                    return Err(Skip::Filtered);
                }
            }
            _ => {}
        }
        let directory = self.source.directory();
        let rules = directory.mirror().active_rules(event.account_id, rule_event);
        if rules.is_empty() {
            return Err(Skip::NoDestination);
        }
        let subject = Subject::new(event);
        // Every webhook of this event has the same body (its rules share the event name):
        // built once, when the first is sent, and shared.
        let webhook_event = format!("automation_event.{rule_event}");
        let body = std::cell::OnceCell::<Option<Bytes>>::new();
        let mut actions = Vec::new();
        for rule in rules.into_iter().filter(|r| subject.matches(&r.conditions)) {
            let (webhooks, backend): (Vec<&pb::RuleAction>, Vec<&pb::RuleAction>) = rule
                .actions
                .iter()
                .partition(|a| a.action_name == "send_webhook_event");
            if !backend.is_empty() {
                actions.push(command_action(
                    self.name(),
                    event,
                    &format!("{}:{}", event.id, rule.id),
                    pb::command::Kind::RunAutomationActions(pb::RunAutomationActions {
                        rule_id: rule.id,
                        conversation_display_id: c.display_id,
                        actions: backend.into_iter().cloned().collect(),
                    }),
                ));
            }
            let mut sends = Vec::new();
            for (n, action) in webhooks.into_iter().enumerate() {
                let Some(url) = action.action_params.first() else {
                    continue;
                };
                let Some(body) = body.get_or_init(|| {
                    let mut body = subject.conversation()?.clone();
                    body.insert("event".into(), Value::String(webhook_event.clone()));
                    serde_json::to_vec(&body).ok().map(Bytes::from)
                }) else {
                    tracing::warn!(rule = rule.id, event = %event.id,
                        "send_webhook_event without the conversation's webhook data in the event: not sent");
                    metrics::counter!("rtgate_listener_events_total", "listener" => "automation_rule", "outcome" => "no_payload")
                        .increment(1);
                    continue;
                };
                let mut d = delivery(
                    event,
                    To {
                        kind: DestinationKind::Automation,
                        id: rule.id,
                        url,
                        secret: "",
                        headers: &[],
                    },
                    body.clone(),
                );
                // One delivery per action of the rule.
                d.id = crate::ids::derived_uuid(&[
                    b"automation",
                    event.id.as_bytes(),
                    &rule.id.to_be_bytes(),
                    &n.to_be_bytes(),
                ]);
                d.event = webhook_event.clone();
                sends.push(d);
            }
            if !sends.is_empty() {
                actions.push(Action::Deliver(sends));
            }
        }
        if actions.is_empty() {
            return Err(Skip::Filtered);
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::delivery::directory::Directory;
    use crate::events::mirror::Mirror;

    fn rule(
        id: u64,
        event: &str,
        conditions: Vec<pb::RuleCondition>,
        actions: Vec<(&str, &[&str])>,
    ) -> pb::AutomationRule {
        pb::AutomationRule {
            id,
            account_id: 1,
            event_name: event.into(),
            active: true,
            conditions,
            actions: actions
                .into_iter()
                .map(|(name, params)| pb::RuleAction {
                    action_name: name.into(),
                    action_params: params.iter().map(|p| p.to_string()).collect(),
                })
                .collect(),
        }
    }

    fn cond(key: &str, op: &str, values: &[&str]) -> pb::RuleCondition {
        pb::RuleCondition {
            attribute_key: key.into(),
            filter_operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        }
    }

    fn listener(rules: Vec<pb::AutomationRule>) -> AutomationListener<Arc<Directory>> {
        let mut m = Mirror::default();
        for r in rules {
            m.add_rule(r);
        }
        AutomationListener::new(Arc::new(Directory::from_mirror(m)))
    }

    fn message(content: &str) -> pb::DomainEvent {
        pb::DomainEvent {
            id: "ev-1".into(),
            name: "message.created".into(),
            account_id: 1,
            conversation: Some(pb::ConversationFacts {
                display_id: 42,
                inbox_id: 3,
                ..Default::default()
            }),
            message: Some(pb::MessageFacts {
                id: 900,
                message_type: pb::MessageType::Incoming as i32,
                content: content.into(),
                ..Default::default()
            }),
            webhook_payload:
                r#"{"id":900,"conversation":{"id":42,"status":"open","meta":{"sender":{"email":"a@b.c"}}}}"#
                    .into(),
            ..Default::default()
        }
    }

    #[test]
    fn matching_rules_become_commands_and_webhooks_deliveries() {
        let mut l = listener(vec![
            rule(
                1,
                "message_created",
                vec![cond("content", "contains", &["Refund"])],
                vec![
                    ("add_label", &["billing"]),
                    ("send_webhook_event", &["https://crm.example/in"]),
                    ("assign_team", &["2"]),
                ],
            ),
            rule(
                2,
                "message_created",
                vec![cond("content", "contains", &["invoice"])],
                vec![("add_label", &["x"])],
            ),
            rule(3, "conversation_created", vec![], vec![("add_label", &["new"])]),
        ]);
        let actions = l
            .decide(&message("I want a refund please"), &StateView::default())
            .unwrap();
        assert_eq!(actions.len(), 2);
        let Action::Command { command, .. } = &actions[0] else {
            panic!()
        };
        let Some(pb::command::Kind::RunAutomationActions(run)) = &command.kind else {
            panic!()
        };
        assert_eq!((run.rule_id, run.conversation_display_id), (1, 42));
        assert_eq!(
            run.actions
                .iter()
                .map(|a| a.action_name.as_str())
                .collect::<Vec<_>>(),
            ["add_label", "assign_team"]
        );
        let Action::Deliver(sends) = &actions[1] else {
            panic!()
        };
        let [send] = sends.as_slice() else { panic!() };
        assert_eq!(send.url, "https://crm.example/in");
        assert!(send.secret.is_empty(), "unsigned");
        assert_eq!(send.kind(), DestinationKind::Automation);
        let body: Value = serde_json::from_slice(&send.body).unwrap();
        assert_eq!(body["event"], "automation_event.message_created");
        assert_eq!(body["id"], 42, "the conversation's webhook data");
        assert_eq!(
            l.decide(&message("hello"), &StateView::default()),
            Err(Skip::Filtered)
        );
    }

    #[test]
    fn every_webhook_of_an_event_shares_one_body() {
        let hook = |id| {
            rule(
                id,
                "message_created",
                vec![],
                vec![("send_webhook_event", &["https://a.example/in"])],
            )
        };
        let mut l = listener(vec![hook(1), hook(2)]);
        let bodies: Vec<Bytes> = l
            .decide(&message("x"), &StateView::default())
            .unwrap()
            .into_iter()
            .flat_map(|a| match a {
                Action::Deliver(d) => d.into_iter().map(|d| d.body).collect(),
                _ => vec![],
            })
            .collect();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0].as_ptr(), bodies[1].as_ptr(), "built once, shared");
    }

    #[test]
    fn the_loop_guard_and_the_skips() {
        let mut l = listener(vec![rule(
            1,
            "message_created",
            vec![],
            vec![("add_label", &["x"])],
        )]);
        let mut by_rule = message("x");
        by_rule.performed_by = Some(pb::Performer {
            kind: pb::performer::Kind::AutomationRule as i32,
            id: 1,
        });
        assert_eq!(l.decide(&by_rule, &StateView::default()), Err(Skip::OwnDoing));
        let mut activity = message("x");
        activity.message.as_mut().unwrap().message_type = pb::MessageType::Activity as i32;
        assert_eq!(l.decide(&activity, &StateView::default()), Err(Skip::Filtered));
        let mut auto_reply = message("x");
        auto_reply.message.as_mut().unwrap().auto_reply = true;
        assert_eq!(l.decide(&auto_reply, &StateView::default()), Err(Skip::Filtered));
        let mut created = message("x");
        created.name = "conversation.created".into();
        assert_eq!(
            l.decide(&created, &StateView::default()),
            Err(Skip::NoDestination),
            "no rule for it"
        );
        let mut l = listener(vec![rule(
            1,
            "conversation_created",
            vec![],
            vec![("add_label", &["x"])],
        )]);
        created.conversation.as_mut().unwrap().auto_reply = true;
        assert_eq!(l.decide(&created, &StateView::default()), Err(Skip::Filtered));
        created.conversation.as_mut().unwrap().auto_reply = false;
        assert!(l.decide(&created, &StateView::default()).is_ok());
        let mut inactive = rule(1, "message_created", vec![], vec![("add_label", &["x"])]);
        inactive.active = false;
        let mut l = listener(vec![inactive]);
        assert_eq!(
            l.decide(&message("x"), &StateView::default()),
            Err(Skip::NoDestination)
        );
    }
}
