//! Chatwoot's CsatSurveyListener, as a decision.
//!
//! - `conversation.status_changed` to resolved: a survey if the inbox has CSAT on, no
//!   survey was sent for the conversation yet, and the label rules allow it; its form is
//!   the channel's approved template (WhatsApp Cloud, Twilio WhatsApp), else an
//!   `input_csat` message while the conversation can be replied to, else an activity
//!   note that no survey could be sent. A survey is decided once per conversation across
//!   every node; the note, which is not a survey, may come again on a later resolution.
//! - `message.updated` of an `input_csat` message with a submitted rating: the response,
//!   upserted per message by the backend.

use rtgate_protocol::pb;
use serde_json::Value;

use super::{Action, Listener, Skip, StateKey, StateView, command_action, command_id};
use crate::delivery::listeners::DirectorySource;

/// The CSAT listener.
pub struct CsatListener<D> {
    source: D,
}

impl<D: DirectorySource> CsatListener<D> {
    /// The listener over this mirror (inboxes' CSAT settings).
    pub fn new(source: D) -> Self {
        CsatListener { source }
    }
}

/// Whether the survey rules let a conversation with these labels be surveyed.
pub fn rules_allow(rules: Option<&pb::SurveyRules>, labels: &[String]) -> bool {
    let Some(rules) = rules.filter(|r| !r.values.is_empty()) else {
        return true;
    };
    let any = rules.values.iter().any(|v| labels.contains(v));
    match rules.operator.as_str() {
        "contains" => any,
        "does_not_contain" => !any,
        _ => true,
    }
}

/// The survey's form for this inbox and conversation.
pub fn form(inbox: &pb::InboxSettings, can_reply: bool) -> pb::send_csat_survey::Form {
    use pb::send_csat_survey::Form;
    let approved = inbox.csat.as_ref().is_some_and(|c| c.template_approved);
    if approved && inbox.channel_type == "Channel::Whatsapp" {
        Form::WhatsappTemplate
    } else if approved && inbox.twilio_whatsapp {
        Form::TwilioTemplate
    } else if can_reply {
        Form::InputCsatMessage
    } else {
        Form::NotSentActivity
    }
}

impl<D: DirectorySource> CsatListener<D> {
    fn resolved(&self, event: &pb::DomainEvent) -> Result<Vec<Action>, Skip> {
        let Some(c) = event.conversation.as_ref().filter(|c| c.display_id > 0) else {
            return Err(Skip::NoPayload);
        };
        if c.status() != pb::ConversationStatus::Resolved {
            return Err(Skip::Filtered);
        }
        let directory = self.source.directory();
        let Some(inbox) = directory.mirror().inbox(c.inbox_id) else {
            return Err(Skip::Unconfigured);
        };
        let csat = inbox.csat.as_ref();
        if !csat.is_some_and(|s| s.enabled) || !rules_allow(csat.and_then(|s| s.rules.as_ref()), &c.labels) {
            return Err(Skip::Filtered);
        }
        let form = form(inbox, c.can_reply);
        let command = super::command(
            self.name(),
            event,
            pb::command::Kind::SendCsatSurvey(pb::SendCsatSurvey {
                conversation_display_id: c.display_id,
                inbox_id: c.inbox_id,
                form: form as i32,
            }),
        );
        Ok(vec![if form == pb::send_csat_survey::Form::NotSentActivity {
            Action::Command {
                id: command_id(self.name(), &format!("{}:not_sent", event.id)),
                command,
            }
        } else {
            Action::CommandOnce {
                claim: StateKey::conversation(event.account_id, c.display_id, "csat_survey"),
                id: command_id(
                    self.name(),
                    &format!("{}:{}:survey", event.account_id, c.display_id),
                ),
                command,
            }
        }])
    }

    fn responded(&self, event: &pb::DomainEvent) -> Result<Vec<Action>, Skip> {
        let Some(m) = event.message.as_ref() else {
            return Err(Skip::NoPayload);
        };
        if m.content_type != "input_csat" {
            return Err(Skip::Filtered);
        }
        let attributes: Value = serde_json::from_str(&m.content_attributes).unwrap_or(Value::Null);
        let response = &attributes["submitted_values"]["csat_survey_response"];
        let Some(rating) = super::json_integer(&response["rating"]).and_then(|r| i32::try_from(r).ok())
        else {
            return Err(Skip::Filtered);
        };
        let feedback = response["feedback_message"].as_str().unwrap_or("").to_string();
        let c = event.conversation.as_ref();
        // A changed rating is another decision (the backend upserts per message).
        Ok(vec![command_action(
            self.name(),
            event,
            &format!("{}:{}:{rating}:{feedback}", event.account_id, m.id),
            pb::command::Kind::RecordCsatResponse(pb::RecordCsatResponse {
                conversation_display_id: c.map_or(0, |c| c.display_id),
                message_id: m.id,
                contact_id: c.map_or(0, |c| c.contact_id),
                assignee_id: c.map_or(0, |c| c.assignee_id),
                rating,
                feedback_message: feedback,
            }),
        )])
    }
}

impl<D: DirectorySource> Listener for CsatListener<D> {
    fn name(&self) -> &'static str {
        "csat_survey"
    }

    fn handles(&self, event_name: &str) -> bool {
        matches!(event_name, "conversation.status_changed" | "message.updated")
    }

    fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
        match event.name.as_str() {
            "conversation.status_changed" => self.resolved(event),
            "message.updated" => self.responded(event),
            _ => Err(Skip::NotRouted),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::delivery::directory::Directory;
    use crate::events::mirror::Mirror;
    use pb::send_csat_survey::Form;

    fn listener(
        channel: &str,
        twilio: bool,
        approved: bool,
        rules: Option<(&str, &[&str])>,
    ) -> CsatListener<Arc<Directory>> {
        let mut m = Mirror::default();
        m.add_inbox(pb::InboxSettings {
            inbox_id: 3,
            account_id: 1,
            channel_type: channel.into(),
            twilio_whatsapp: twilio,
            csat: Some(pb::CsatSettings {
                enabled: true,
                template_approved: approved,
                rules: rules.map(|(op, values)| pb::SurveyRules {
                    operator: op.into(),
                    values: values.iter().map(|v| v.to_string()).collect(),
                }),
            }),
            ..Default::default()
        });
        m.add_inbox(pb::InboxSettings {
            inbox_id: 4,
            account_id: 1,
            ..Default::default()
        });
        CsatListener::new(Arc::new(Directory::from_mirror(m)))
    }

    fn resolved(inbox: u64, labels: &[&str], can_reply: bool) -> pb::DomainEvent {
        pb::DomainEvent {
            id: "ev-1".into(),
            name: "conversation.status_changed".into(),
            account_id: 1,
            conversation: Some(pb::ConversationFacts {
                display_id: 42,
                inbox_id: inbox,
                status: pb::ConversationStatus::Resolved as i32,
                labels: labels.iter().map(|l| l.to_string()).collect(),
                can_reply,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn survey(actions: Vec<Action>) -> (Form, bool) {
        let [action] = <[Action; 1]>::try_from(actions).expect("one action");
        let (once, command) = match action {
            Action::CommandOnce { claim, command, .. } => {
                assert_eq!(claim, StateKey::conversation(1, 42, "csat_survey"));
                (true, command)
            }
            Action::Command { command, .. } => (false, command),
            other => panic!("{other:?}"),
        };
        let Some(pb::command::Kind::SendCsatSurvey(s)) = command.kind else {
            panic!()
        };
        (s.form(), once)
    }

    #[test]
    fn the_form_follows_the_channel_and_the_reply_window() {
        let web = || listener("Channel::WebWidget", false, false, None);
        let state = StateView::default();
        assert_eq!(
            survey(web().decide(&resolved(3, &[], true), &state).unwrap()),
            (Form::InputCsatMessage, true)
        );
        assert_eq!(
            survey(web().decide(&resolved(3, &[], false), &state).unwrap()),
            (Form::NotSentActivity, false),
            "not a survey: may come again"
        );
        let whatsapp = listener("Channel::Whatsapp", false, true, None);
        assert_eq!(
            survey({ whatsapp }.decide(&resolved(3, &[], false), &state).unwrap()),
            (Form::WhatsappTemplate, true)
        );
        let twilio = listener("Channel::TwilioSms", true, true, None);
        assert_eq!(
            survey({ twilio }.decide(&resolved(3, &[], false), &state).unwrap()),
            (Form::TwilioTemplate, true)
        );
        let unapproved = listener("Channel::Whatsapp", false, false, None);
        assert_eq!(
            survey({ unapproved }.decide(&resolved(3, &[], true), &state).unwrap()),
            (Form::InputCsatMessage, true)
        );
    }

    #[test]
    fn label_rules_settings_and_status_decide_whether() {
        let state = StateView::default();
        let mut only_vip = listener("Channel::WebWidget", false, false, Some(("contains", &["vip"])));
        assert!(only_vip.decide(&resolved(3, &["vip", "x"], true), &state).is_ok());
        assert_eq!(
            only_vip.decide(&resolved(3, &["x"], true), &state),
            Err(Skip::Filtered)
        );
        let mut not_spam = listener(
            "Channel::WebWidget",
            false,
            false,
            Some(("does_not_contain", &["spam"])),
        );
        assert!(not_spam.decide(&resolved(3, &[], true), &state).is_ok());
        assert_eq!(
            not_spam.decide(&resolved(3, &["spam"], true), &state),
            Err(Skip::Filtered)
        );
        let mut l = listener("Channel::WebWidget", false, false, None);
        assert_eq!(
            l.decide(&resolved(4, &[], true), &state),
            Err(Skip::Filtered),
            "CSAT off"
        );
        assert_eq!(l.decide(&resolved(5, &[], true), &state), Err(Skip::Unconfigured));
        let mut open = resolved(3, &[], true);
        open.conversation.as_mut().unwrap().status = pb::ConversationStatus::Open as i32;
        assert_eq!(l.decide(&open, &state), Err(Skip::Filtered));
    }

    #[test]
    fn a_submitted_rating_becomes_a_response() {
        let mut l = listener("Channel::WebWidget", false, false, None);
        let updated = |content_type: &str, attributes: &str| pb::DomainEvent {
            id: "ev-2".into(),
            name: "message.updated".into(),
            account_id: 1,
            conversation: Some(pb::ConversationFacts {
                display_id: 42,
                contact_id: 77,
                assignee_id: 6,
                ..Default::default()
            }),
            message: Some(pb::MessageFacts {
                id: 900,
                content_type: content_type.into(),
                content_attributes: attributes.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let state = StateView::default();
        let rated = updated(
            "input_csat",
            r#"{"submitted_values":{"csat_survey_response":{"rating":4,"feedback_message":"quick"}}}"#,
        );
        let [Action::Command { id, command }] =
            <[Action; 1]>::try_from(l.decide(&rated, &state).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            command.kind,
            Some(pb::command::Kind::RecordCsatResponse(pb::RecordCsatResponse {
                conversation_display_id: 42,
                message_id: 900,
                contact_id: 77,
                assignee_id: 6,
                rating: 4,
                feedback_message: "quick".into(),
            }))
        );
        let changed = updated(
            "input_csat",
            r#"{"submitted_values":{"csat_survey_response":{"rating":"5"}}}"#,
        );
        let [Action::Command { id: other, .. }] =
            <[Action; 1]>::try_from(l.decide(&changed, &state).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_ne!(id, other, "a changed rating is another command");
        assert_eq!(
            l.decide(&updated("input_csat", "{}"), &state),
            Err(Skip::Filtered),
            "not rated yet"
        );
        assert_eq!(l.decide(&updated("text", ""), &state), Err(Skip::Filtered));
    }
}
