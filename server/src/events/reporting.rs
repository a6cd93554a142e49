//! Chatwoot's ReportingEventListener, as a decision: the reporting rows to write, each a
//! `create_reporting_event` command with its value in seconds and in the inbox's
//! business hours.
//!
//! | event | row | from → to |
//! |---|---|---|
//! | `conversation.resolved` | `conversation_resolved`, and `conversation_bot_resolved` when the inbox has an active bot and no human ever replied | created → event |
//! | `first.reply.created` | `first_response` (the replier) | the bot handoff if any, else created → message |
//! | `reply.created` | `reply_time` (the assignee) | waiting_since → message |
//! | `conversation.bot_handoff` | `conversation_bot_handoff`, once per conversation | created → event |
//! | `conversation.opened` | `conversation_opened`: 0 the first time, else the time since the last resolution | last resolved → event |
//!
//! The listener keeps, per conversation: the last resolution's time, the first handoff's
//! time, and whether a human (a user) sent an outgoing message (seen on
//! `message.created`).

use rtgate_protocol::pb;

use super::business_hours::business_seconds;
use super::{Action, Listener, Skip, StateKey, StateRead, StateView, command_action, command_id};
use crate::delivery::listeners::DirectorySource;

const RESOLVED_AT: &str = "resolved_at";
const HANDOFF_AT: &str = "handoff_at";
const HUMAN_REPLIED: &str = "human_replied";

/// The reporting listener.
pub struct ReportingListener<D> {
    source: D,
}

impl<D: DirectorySource> ReportingListener<D> {
    /// The listener over this mirror (inboxes for business hours, agent bots for the
    /// bot-resolved row).
    pub fn new(source: D) -> Self {
        ReportingListener { source }
    }
}

/// Whole seconds from `from_ms` to `to_ms`, as Chatwoot's `to.to_i - from.to_i`.
fn seconds(from_ms: i64, to_ms: i64) -> i64 {
    to_ms.div_euclid(1000) - from_ms.div_euclid(1000)
}

/// An outgoing message sent by a user (a human, not a bot or the system).
fn human_reply(event: &pb::DomainEvent) -> bool {
    event.message.as_ref().is_some_and(|m| {
        m.message_type() == pb::MessageType::Outgoing
            && m.sender
                .as_ref()
                .is_some_and(|s| s.kind() == pb::sender::Kind::User)
    })
}

fn key(event: &pb::DomainEvent, c: &pb::ConversationFacts, field: &'static str) -> StateKey {
    StateKey::conversation(event.account_id, c.display_id, field)
}

impl<D: DirectorySource> ReportingListener<D> {
    /// The command writing `row`, named by the event and the row's name.
    fn row(&self, event: &pb::DomainEvent, row: pb::CreateReportingEvent) -> Action {
        command_action(
            self.name(),
            event,
            &format!("{}:{}", event.id, row.name),
            pb::command::Kind::CreateReportingEvent(row),
        )
    }

    fn report(
        c: &pb::ConversationFacts,
        inbox: &pb::InboxSettings,
        name: &str,
        user_id: u64,
        from_ms: i64,
        to_ms: i64,
    ) -> pb::CreateReportingEvent {
        pb::CreateReportingEvent {
            name: name.into(),
            conversation_display_id: c.display_id,
            inbox_id: c.inbox_id,
            user_id,
            value_seconds: seconds(from_ms, to_ms),
            value_in_business_hours_seconds: business_seconds(inbox, from_ms, to_ms),
            event_start_time_ms: from_ms,
            event_end_time_ms: to_ms,
        }
    }
}

impl<D: DirectorySource> Listener for ReportingListener<D> {
    fn name(&self) -> &'static str {
        "reporting_event"
    }

    fn handles(&self, event_name: &str) -> bool {
        matches!(
            event_name,
            "conversation.resolved"
                | "first.reply.created"
                | "reply.created"
                | "conversation.bot_handoff"
                | "conversation.opened"
                | "message.created"
        )
    }

    fn reads(&self, event: &pb::DomainEvent) -> Vec<StateRead> {
        let Some(c) = event.conversation.as_ref() else {
            return Vec::new();
        };
        let field = match event.name.as_str() {
            "message.created" if !human_reply(event) => return Vec::new(),
            "conversation.resolved" | "message.created" => HUMAN_REPLIED,
            "first.reply.created" | "conversation.bot_handoff" => HANDOFF_AT,
            "conversation.opened" => RESOLVED_AT,
            _ => return Vec::new(),
        };
        vec![StateRead::Value(key(event, c, field))]
    }

    fn decide(&mut self, event: &pb::DomainEvent, state: &StateView) -> Result<Vec<Action>, Skip> {
        if !self.handles(&event.name) {
            return Err(Skip::NotRouted);
        }
        let Some(c) = event.conversation.as_ref().filter(|c| c.display_id > 0) else {
            return Err(Skip::NoPayload);
        };
        if event.name == "message.created" {
            // Only to learn that a human replied (the bot-resolved row's condition).
            if !human_reply(event) || state.value(&key(event, c, HUMAN_REPLIED)).is_some() {
                return Err(Skip::Filtered);
            }
            return Ok(vec![Action::Remember {
                key: key(event, c, HUMAN_REPLIED),
                value: "1".into(),
            }]);
        }
        let directory = self.source.directory();
        let Some(inbox) = directory.mirror().inbox(c.inbox_id) else {
            return Err(Skip::Unconfigured);
        };
        let now = event.occurred_at_ms;
        let created = c.created_at_ms;
        match event.name.as_str() {
            "conversation.resolved" => {
                let mut actions = vec![
                    self.row(
                        event,
                        Self::report(c, inbox, "conversation_resolved", c.assignee_id, created, now),
                    ),
                    Action::Remember {
                        key: key(event, c, RESOLVED_AT),
                        value: now.to_string(),
                    },
                ];
                let bot = directory.inbox_bot(c.inbox_id).is_some();
                if bot && state.value(&key(event, c, HUMAN_REPLIED)).is_none() {
                    actions.push(self.row(
                        event,
                        Self::report(c, inbox, "conversation_bot_resolved", c.assignee_id, created, now),
                    ));
                }
                Ok(actions)
            }
            "first.reply.created" | "reply.created" => {
                let Some(m) = event.message.as_ref() else {
                    return Err(Skip::NoPayload);
                };
                let replied = if m.created_at_ms > 0 { m.created_at_ms } else { now };
                if event.name == "first.reply.created" {
                    let since = state.number(&key(event, c, HANDOFF_AT)).unwrap_or(created);
                    let replier = m.sender.as_ref().map_or(0, |s| s.id);
                    Ok(vec![self.row(
                        event,
                        Self::report(c, inbox, "first_response", replier, since, replied),
                    )])
                } else {
                    if c.waiting_since_ms == 0 {
                        return Err(Skip::Filtered);
                    }
                    Ok(vec![self.row(
                        event,
                        Self::report(c, inbox, "reply_time", c.assignee_id, c.waiting_since_ms, replied),
                    )])
                }
            }
            "conversation.bot_handoff" => {
                if state.value(&key(event, c, HANDOFF_AT)).is_some() {
                    return Err(Skip::Filtered);
                }
                // Once per conversation across nodes: the claim names the conversation.
                let report = Self::report(c, inbox, "conversation_bot_handoff", c.assignee_id, created, now);
                Ok(vec![
                    Action::Remember {
                        key: key(event, c, HANDOFF_AT),
                        value: now.to_string(),
                    },
                    Action::CommandOnce {
                        claim: key(event, c, "handoff_reported"),
                        id: command_id(
                            self.name(),
                            &format!("{}:{}:conversation_bot_handoff", event.account_id, c.display_id),
                        ),
                        command: super::command(
                            self.name(),
                            event,
                            pb::command::Kind::CreateReportingEvent(report),
                        ),
                    },
                ])
            }
            _ => {
                // conversation.opened
                let row = match state.number(&key(event, c, RESOLVED_AT)) {
                    Some(resolved) => {
                        Self::report(c, inbox, "conversation_opened", c.assignee_id, resolved, now)
                    }
                    None => pb::CreateReportingEvent {
                        value_seconds: 0,
                        value_in_business_hours_seconds: 0,
                        ..Self::report(c, inbox, "conversation_opened", c.assignee_id, created, now)
                    },
                };
                Ok(vec![self.row(event, row)])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;

    use super::*;
    use crate::delivery::directory::Directory;

    const T0: i64 = 1_796_000_000_000; // 2026-11-30 (a Monday) 00:53:20 UTC

    /// Inbox 3, open Monday to Friday 00:00–23:59 UTC (so business time is the plain
    /// time on weekdays); inbox 4 the same, with an active agent bot.
    fn listener() -> ReportingListener<Arc<Directory>> {
        let inbox = |id: u64| {
            pb::InboxSettings {
                inbox_id: id,
                account_id: 1,
                working_hours_enabled: true,
                working_hours: (1..=5)
                    .map(|d| pb::WorkingHours {
                        day_of_week: d,
                        open_all_day: true,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let bot = pb::AgentBot {
            id: 9,
            url: "https://bot.example/in".into(),
            inbox_ids: vec![4],
            ..Default::default()
        }
        .encode_to_vec();
        let (i3, i4) = (inbox(3), inbox(4));
        let (dir, bad) = Directory::from_records([
            ("inboxes:3", i3.as_slice()),
            ("inboxes:4", i4.as_slice()),
            ("agent-bots:9", bot.as_slice()),
        ]);
        assert!(bad.is_empty());
        ReportingListener::new(Arc::new(dir))
    }

    fn event(name: &str, inbox: u64, at_ms: i64) -> pb::DomainEvent {
        pb::DomainEvent {
            id: format!("ev-{name}-{at_ms}"),
            name: name.into(),
            account_id: 1,
            occurred_at_ms: at_ms,
            conversation: Some(pb::ConversationFacts {
                display_id: 42,
                inbox_id: inbox,
                assignee_id: 6,
                created_at_ms: T0,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rows(actions: &[Action]) -> Vec<pb::CreateReportingEvent> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Command { command, .. } | Action::CommandOnce { command, .. } => {
                    match &command.kind {
                        Some(pb::command::Kind::CreateReportingEvent(r)) => Some(r.clone()),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    fn remembered(actions: &[Action]) -> Vec<(StateKey, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Remember { key, value } => Some((key.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }

    fn conv(field: &'static str) -> StateKey {
        StateKey::conversation(1, 42, field)
    }

    #[test]
    fn resolution_measures_from_creation_and_is_remembered() {
        let mut l = listener();
        let at = T0 + 3_600_500;
        let actions = l
            .decide(&event("conversation.resolved", 3, at), &StateView::default())
            .unwrap();
        let [row] = rows(&actions).try_into().unwrap();
        assert_eq!(row.name, "conversation_resolved");
        assert_eq!(
            (row.value_seconds, row.value_in_business_hours_seconds),
            (3600, 3600)
        );
        assert_eq!((row.event_start_time_ms, row.event_end_time_ms), (T0, at));
        assert_eq!(row.user_id, 6);
        assert_eq!(remembered(&actions), [(conv(RESOLVED_AT), at.to_string())]);
    }

    #[test]
    fn a_bot_inbox_without_human_replies_also_counts_a_bot_resolution() {
        let mut l = listener();
        let at = T0 + 60_000;
        let mut names = |state: &StateView| {
            rows(&l.decide(&event("conversation.resolved", 4, at), state).unwrap())
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&StateView::default()),
            ["conversation_resolved", "conversation_bot_resolved"]
        );
        let replied = StateView::default().with_value(conv(HUMAN_REPLIED), "1");
        assert_eq!(names(&replied), ["conversation_resolved"]);
        // Human replies are learnt from outgoing messages by users, once.
        let mut message = event("message.created", 4, at);
        message.message = Some(pb::MessageFacts {
            id: 1,
            message_type: pb::MessageType::Outgoing as i32,
            sender: Some(pb::Sender {
                kind: pb::sender::Kind::User as i32,
                id: 6,
                ..Default::default()
            }),
            ..Default::default()
        });
        let learnt = l.decide(&message, &StateView::default()).unwrap();
        assert_eq!(remembered(&learnt), [(conv(HUMAN_REPLIED), "1".into())]);
        assert_eq!(l.decide(&message, &replied), Err(Skip::Filtered), "already known");
        message.message.as_mut().unwrap().sender.as_mut().unwrap().kind = pb::sender::Kind::AgentBot as i32;
        assert_eq!(l.decide(&message, &StateView::default()), Err(Skip::Filtered));
    }

    #[test]
    fn first_response_counts_from_the_handoff_when_there_was_one() {
        let mut l = listener();
        let mut e = event("first.reply.created", 3, T0 + 900_000);
        e.message = Some(pb::MessageFacts {
            id: 5,
            created_at_ms: T0 + 600_000,
            sender: Some(pb::Sender {
                kind: pb::sender::Kind::User as i32,
                id: 8,
                ..Default::default()
            }),
            ..Default::default()
        });
        let [row] = rows(&l.decide(&e, &StateView::default()).unwrap())
            .try_into()
            .unwrap();
        assert_eq!(
            (row.name.as_str(), row.value_seconds, row.user_id),
            ("first_response", 600, 8)
        );
        let handed = StateView::default().with_value(conv(HANDOFF_AT), (T0 + 500_000).to_string());
        let [row] = rows(&l.decide(&e, &handed).unwrap()).try_into().unwrap();
        assert_eq!((row.value_seconds, row.event_start_time_ms), (100, T0 + 500_000));
    }

    #[test]
    fn reply_time_counts_from_waiting_since() {
        let mut l = listener();
        let mut e = event("reply.created", 3, T0 + 10_000);
        e.message = Some(pb::MessageFacts {
            id: 5,
            created_at_ms: T0 + 10_000,
            ..Default::default()
        });
        assert_eq!(
            l.decide(&e, &StateView::default()),
            Err(Skip::Filtered),
            "not waiting"
        );
        e.conversation.as_mut().unwrap().waiting_since_ms = T0 + 4_000;
        let [row] = rows(&l.decide(&e, &StateView::default()).unwrap())
            .try_into()
            .unwrap();
        assert_eq!(
            (row.name.as_str(), row.value_seconds, row.user_id),
            ("reply_time", 6, 6)
        );
    }

    #[test]
    fn a_handoff_is_reported_once_per_conversation() {
        let mut l = listener();
        let at = T0 + 120_000;
        let actions = l
            .decide(&event("conversation.bot_handoff", 3, at), &StateView::default())
            .unwrap();
        assert_eq!(remembered(&actions), [(conv(HANDOFF_AT), at.to_string())]);
        let Some(Action::CommandOnce { claim, id, .. }) = actions.last() else {
            panic!("a claimed command")
        };
        assert_eq!(*claim, conv("handoff_reported"));
        // Another handoff event of the same conversation: the same claim and command id.
        let again = l
            .decide(
                &event("conversation.bot_handoff", 3, at + 1),
                &StateView::default(),
            )
            .unwrap();
        let Some(Action::CommandOnce { id: id2, .. }) = again.last() else {
            panic!()
        };
        assert_eq!(id, id2);
        assert_eq!(rows(&actions)[0].value_seconds, 120);
        let known = StateView::default().with_value(conv(HANDOFF_AT), at.to_string());
        assert_eq!(
            l.decide(&event("conversation.bot_handoff", 3, at + 2), &known),
            Err(Skip::Filtered)
        );
    }

    #[test]
    fn an_opening_is_zero_the_first_time_then_the_time_since_resolution() {
        let mut l = listener();
        let at = T0 + 7_200_000;
        let [first] = rows(
            &l.decide(&event("conversation.opened", 3, at), &StateView::default())
                .unwrap(),
        )
        .try_into()
        .unwrap();
        assert_eq!(
            (first.value_seconds, first.value_in_business_hours_seconds),
            (0, 0)
        );
        assert_eq!(first.event_start_time_ms, T0);
        let resolved = StateView::default().with_value(conv(RESOLVED_AT), (T0 + 3_600_000).to_string());
        let [reopen] = rows(&l.decide(&event("conversation.opened", 3, at), &resolved).unwrap())
            .try_into()
            .unwrap();
        assert_eq!(
            (reopen.value_seconds, reopen.event_start_time_ms),
            (3600, T0 + 3_600_000)
        );
    }

    #[test]
    fn business_hours_leave_out_the_weekend_and_a_missing_inbox_is_a_skip() {
        let mut l = listener();
        // Resolved the next Monday: the weekend is not business time.
        let week = 7 * 86_400_000;
        let [row] = rows(
            &l.decide(
                &event("conversation.resolved", 3, T0 + week),
                &StateView::default(),
            )
            .unwrap(),
        )
        .try_into()
        .unwrap();
        assert_eq!(row.value_seconds, 7 * 86_400);
        // Five weekdays of 23:59 each.
        assert_eq!(row.value_in_business_hours_seconds, 5 * (23 * 3600 + 59 * 60));
        assert_eq!(
            l.decide(&event("conversation.resolved", 99, T0), &StateView::default()),
            Err(Skip::Unconfigured)
        );
    }
}
