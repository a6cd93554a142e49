//! Chatwoot's CampaignListener, as a decision: `campaign.triggered` starts the campaign's
//! conversation for the contact inbox — only if it has none yet, and once, even when two
//! nodes decide at the same moment.
//!
//! - The campaign is the account's with the display id `event_info.campaign_id`, in the
//!   contact inbox's inbox, enabled; a campaign not mirrored is a counted skip.
//! - The listener keeps, per contact inbox, whether it has a conversation: set by a
//!   `conversation.created` naming the contact inbox, or by the campaign decision itself
//!   — an atomic claim in the engine, so of two triggers only one becomes a command. The
//!   command's id names the contact inbox, so a backend that gets it twice applies it once;
//!   the backend's own check (a conversation made before rtgate saw any) still applies.
//! - The conversation's `additional_attributes` are `event_info` without `campaign_id` and
//!   `custom_attributes`; its custom attributes are `event_info.custom_attributes`.

use rtgate_protocol::pb;
use serde_json::{Map, Value};

use super::{Action, Listener, Skip, StateKey, StateRead, StateView, command_id};
use crate::delivery::listeners::DirectorySource;

/// The key saying a contact inbox has a conversation (the claim of the campaign decision).
pub fn conversation_key(contact_inbox_id: u64) -> StateKey {
    StateKey::contact_inbox(contact_inbox_id, "conversation")
}

/// The campaign listener.
pub struct CampaignListener<D> {
    source: D,
}

impl<D: DirectorySource> CampaignListener<D> {
    /// The listener over this mirror (campaigns).
    pub fn new(source: D) -> Self {
        CampaignListener { source }
    }
}

impl<D: DirectorySource> Listener for CampaignListener<D> {
    fn name(&self) -> &'static str {
        "campaign"
    }

    fn handles(&self, event_name: &str) -> bool {
        matches!(event_name, "campaign.triggered" | "conversation.created")
    }

    fn reads(&self, event: &pb::DomainEvent) -> Vec<StateRead> {
        if event.name == "campaign.triggered" && event.contact_inbox_id != 0 {
            vec![StateRead::Value(conversation_key(event.contact_inbox_id))]
        } else {
            Vec::new()
        }
    }

    fn decide(&mut self, event: &pb::DomainEvent, state: &StateView) -> Result<Vec<Action>, Skip> {
        if !self.handles(&event.name) {
            return Err(Skip::NotRouted);
        }
        if event.contact_inbox_id == 0 {
            return Err(Skip::NoPayload);
        }
        let key = conversation_key(event.contact_inbox_id);
        if event.name == "conversation.created" {
            let display = event.conversation.as_ref().map_or(0, |c| c.display_id);
            return Ok(vec![Action::Remember {
                key,
                value: format!("conversation:{display}"),
            }]);
        }
        let mut info: Map<String, Value> = serde_json::from_str(&event.event_info).unwrap_or_default();
        let display_id = info.remove("campaign_id").as_ref().and_then(super::json_integer);
        let Some(display_id) = display_id
            .and_then(|id| u64::try_from(id).ok())
            .filter(|id| *id > 0)
        else {
            return Err(Skip::Filtered);
        };
        if state.value(&key).is_some() {
            // Its conversation exists, or the campaign was decided already.
            return Err(Skip::Filtered);
        }
        let directory = self.source.directory();
        let Some(campaign) = directory.mirror().campaign(event.account_id, display_id) else {
            return Err(Skip::Unconfigured);
        };
        if !campaign.enabled || (event.inbox_id != 0 && campaign.inbox_id != event.inbox_id) {
            return Err(Skip::Filtered);
        }
        let custom = match info.remove("custom_attributes") {
            Some(Value::Object(o)) => Value::Object(o),
            _ => Value::Object(Map::new()),
        };
        let command = super::command(
            self.name(),
            event,
            pb::command::Kind::StartCampaignConversation(pb::StartCampaignConversation {
                contact_inbox_id: event.contact_inbox_id,
                campaign_id: campaign.id,
                campaign_display_id: display_id,
                inbox_id: campaign.inbox_id,
                additional_attributes: Value::Object(info).to_string(),
                custom_attributes: custom.to_string(),
            }),
        );
        Ok(vec![Action::CommandOnce {
            claim: key,
            // Named by the contact inbox: whichever trigger wins, the backend sees one id.
            id: command_id(self.name(), &format!("contact_inbox:{}", event.contact_inbox_id)),
            command,
        }])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::delivery::directory::Directory;
    use crate::events::mirror::Mirror;

    fn listener() -> CampaignListener<Arc<Directory>> {
        let mut m = Mirror::default();
        for (id, display, inbox, enabled) in [(100, 1, 3, true), (101, 2, 3, false), (102, 3, 4, true)] {
            m.add_campaign(pb::Campaign {
                id,
                account_id: 1,
                display_id: display,
                inbox_id: inbox,
                enabled,
            });
        }
        CampaignListener::new(Arc::new(Directory::from_mirror(m)))
    }

    fn triggered(id: &str, info: &str) -> pb::DomainEvent {
        pb::DomainEvent {
            id: id.into(),
            name: "campaign.triggered".into(),
            account_id: 1,
            inbox_id: 3,
            contact_inbox_id: 55,
            event_info: info.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_trigger_starts_the_conversation_once_per_contact_inbox() {
        let mut l = listener();
        let e = triggered(
            "ev-1",
            r#"{"campaign_id":1,"custom_attributes":{"plan":"pro"},"referer":"https://shop/x"}"#,
        );
        assert_eq!(l.reads(&e), [StateRead::Value(conversation_key(55))]);
        let [Action::CommandOnce { claim, id, command }] =
            <[Action; 1]>::try_from(l.decide(&e, &StateView::default()).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(claim, conversation_key(55));
        let Some(pb::command::Kind::StartCampaignConversation(start)) = command.kind else {
            panic!()
        };
        assert_eq!(
            (start.campaign_id, start.campaign_display_id, start.inbox_id),
            (100, 1, 3)
        );
        assert_eq!(start.additional_attributes, r#"{"referer":"https://shop/x"}"#);
        assert_eq!(start.custom_attributes, r#"{"plan":"pro"}"#);
        // A second trigger (another event) gives the same command id.
        let [Action::CommandOnce { id: again, .. }] = <[Action; 1]>::try_from(
            l.decide(
                &triggered("ev-2", r#"{"campaign_id":"1"}"#),
                &StateView::default(),
            )
            .unwrap(),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(id, again);
        // Once the contact inbox has a conversation, nothing.
        let has = StateView::default().with_value(conversation_key(55), "conversation:9");
        assert_eq!(l.decide(&e, &has), Err(Skip::Filtered));
    }

    #[test]
    fn unknown_disabled_and_foreign_campaigns_are_skipped() {
        let mut l = listener();
        let none = StateView::default();
        assert_eq!(
            l.decide(&triggered("e", r#"{"campaign_id":9}"#), &none),
            Err(Skip::Unconfigured)
        );
        assert_eq!(
            l.decide(&triggered("e", r#"{"campaign_id":2}"#), &none),
            Err(Skip::Filtered),
            "disabled"
        );
        assert_eq!(
            l.decide(&triggered("e", r#"{"campaign_id":3}"#), &none),
            Err(Skip::Filtered),
            "another inbox"
        );
        assert_eq!(
            l.decide(&triggered("e", r#"{}"#), &none),
            Err(Skip::Filtered),
            "no campaign id"
        );
        let mut bare = triggered("e", r#"{"campaign_id":1}"#);
        bare.contact_inbox_id = 0;
        assert_eq!(l.decide(&bare, &none), Err(Skip::NoPayload));
    }

    #[test]
    fn a_new_conversation_marks_its_contact_inbox() {
        let mut l = listener();
        let created = pb::DomainEvent {
            id: "c".into(),
            name: "conversation.created".into(),
            account_id: 1,
            contact_inbox_id: 55,
            conversation: Some(pb::ConversationFacts {
                display_id: 9,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            l.decide(&created, &StateView::default()).unwrap(),
            [Action::Remember {
                key: conversation_key(55),
                value: "conversation:9".into()
            }]
        );
    }
}
