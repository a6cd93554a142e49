//! The domain events rtgate knows: Chatwoot's event names (its `lib/events/types.rb`) and
//! the broadcasts it sends outside its listeners. An event whose name is not here is
//! rejected at ingest: a typo must not vanish silently.

/// Every known event name, sorted.
pub const EVENT_NAMES: &[&str] = &[
    "account.cache_invalidated",
    "account.created",
    "account.enrichment_completed",
    "agent.added",
    "agent.removed",
    "assignee.changed",
    "campaign.triggered",
    "contact.created",
    "contact.deleted",
    "contact.merged",
    "contact.updated",
    "conversation.bot_handoff",
    "conversation.captain_inference_handoff",
    "conversation.captain_inference_resolved",
    "conversation.contact_changed",
    "conversation.created",
    "conversation.deleted",
    "conversation.mentioned",
    "conversation.opened",
    "conversation.read",
    "conversation.resolved",
    "conversation.status_changed",
    "conversation.typing_off",
    "conversation.typing_on",
    "conversation.unread_count_changed",
    "conversation.updated",
    "copilot.message.created",
    "first.reply.created",
    "inbox.created",
    "inbox.updated",
    "message.created",
    "message.updated",
    "notification.created",
    "notification.deleted",
    "notification.updated",
    "reply.created",
    "team.changed",
    "voice_call.ended",
    "voice_call.incoming",
    "voice_call.outbound_accepted",
    "voice_call.outbound_connected",
    "voice_call.permission_granted",
    "webwidget.triggered",
];

/// Whether `name` is a known event.
pub fn is_known(name: &str) -> bool {
    EVENT_NAMES.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_sorted_and_has_no_duplicates() {
        assert!(EVENT_NAMES.windows(2).all(|w| w[0] < w[1]));
        assert!(is_known("message.created"));
        assert!(!is_known("message.create"));
        assert!(
            !is_known("presence.update"),
            "the gateway's own, never the backend's"
        );
    }
}
