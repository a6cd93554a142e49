//! Chatwoot's ParticipationListener, as a decision: on `assignee.changed` with an
//! assignee, the assignee becomes a participant of the conversation. The backend applies
//! the command (an upsert: a participant already there stays one).

use rtgate_protocol::pb;

use super::{Action, Listener, Skip, StateView, command_action};

/// The participation listener.
#[derive(Debug, Default)]
pub struct Participation;

impl Listener for Participation {
    fn name(&self) -> &'static str {
        "participation"
    }

    fn handles(&self, event_name: &str) -> bool {
        event_name == "assignee.changed"
    }

    fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
        if !self.handles(&event.name) {
            return Err(Skip::NotRouted);
        }
        let Some(conversation) = event.conversation.as_ref().filter(|c| c.display_id > 0) else {
            return Err(Skip::NoPayload);
        };
        if conversation.assignee_id == 0 {
            // Unassigned: nobody to add.
            return Err(Skip::Filtered);
        }
        // The event names the decision: handled again (after a crash), it gives the same
        // id. Chatwoot's second dispatch of an assignment is another event, and another
        // command — an upsert, so applying both is harmless.
        Ok(vec![command_action(
            self.name(),
            event,
            &format!("{}:{}", event.id, conversation.assignee_id),
            pb::command::Kind::AddParticipant(pb::AddParticipant {
                conversation_display_id: conversation.display_id,
                user_id: conversation.assignee_id,
            }),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(id: &str, display: u64, assignee: u64) -> pb::DomainEvent {
        pb::DomainEvent {
            id: id.into(),
            name: "assignee.changed".into(),
            account_id: 1,
            conversation: Some(pb::ConversationFacts {
                display_id: display,
                inbox_id: 3,
                assignee_id: assignee,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn command(actions: Vec<Action>) -> (String, pb::Command) {
        let [Action::Command { id, command }] = <[Action; 1]>::try_from(actions).expect("one action") else {
            panic!("not a command")
        };
        (id, command)
    }

    #[test]
    fn the_new_assignee_becomes_a_participant_once() {
        let mut p = Participation;
        let (id, cmd) = command(p.decide(&assigned("ev-1", 42, 7), &StateView::default()).unwrap());
        assert_eq!(cmd.listener, "participation");
        assert_eq!(cmd.event_id, "ev-1");
        assert_eq!(cmd.account_id, 1);
        assert_eq!(
            cmd.kind,
            Some(pb::command::Kind::AddParticipant(pb::AddParticipant {
                conversation_display_id: 42,
                user_id: 7
            }))
        );
        // The same event handled again: the same command id; another event, another.
        assert_eq!(
            command(p.decide(&assigned("ev-1", 42, 7), &StateView::default()).unwrap()).0,
            id
        );
        assert_ne!(
            command(p.decide(&assigned("ev-2", 42, 7), &StateView::default()).unwrap()).0,
            id
        );
    }

    #[test]
    fn unassignment_and_other_events_give_nothing() {
        let mut p = Participation;
        assert_eq!(
            p.decide(&assigned("ev-1", 42, 0), &StateView::default()),
            Err(Skip::Filtered)
        );
        let mut other = assigned("ev-2", 42, 7);
        other.name = "team.changed".into();
        assert!(!p.handles(&other.name));
        assert_eq!(p.decide(&other, &StateView::default()), Err(Skip::NotRouted));
        let mut bare = assigned("ev-3", 42, 7);
        bare.conversation = None;
        assert_eq!(p.decide(&bare, &StateView::default()), Err(Skip::NoPayload));
    }
}
