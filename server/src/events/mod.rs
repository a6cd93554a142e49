//! The event system: domain events the backend publishes once, and rtgate's listeners
//! that decide what follows from each.
//!
//! - [`ingest`]: what makes an event acceptable (a known name, the facts its listeners
//!   need, JSON payloads, a size bound).
//! - [`queue`]: the durable queue events wait in until every listener is done with them:
//!   in memory on a single node, a Redis Stream with a consumer group on several.
//! - [`bus`]: runs the listeners on each event (in order per conversation, in parallel
//!   across conversations), retries a failed listener alone, dead-letters what keeps
//!   failing, and has [`Action`]s carried out by the executor.
//! - Listeners are sans-IO: an event and the state they keep in, actions out.
//!   [`routing`] is Chatwoot's ActionCableListener; [`participation`] its
//!   ParticipationListener, whose decision is a command for the backend.

pub mod automation;
pub mod bus;
pub mod business_hours;
pub mod campaign;
pub mod catalogue;
pub mod csat;
pub mod ingest;
pub mod mirror;
pub mod notification;
pub mod participation;
pub mod queue;
pub mod reporting;
pub mod routing;
pub mod state;

use rtgate_protocol::{RoomName, pb};

pub use state::{StateKey, StateRead, StateView};

/// What a listener asks the bus's executor to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish `event` into each room (numbered, kept in history), with the domain event's
    /// id as idempotency key: an event handled twice is not published twice.
    Publish {
        /// The rooms.
        rooms: Vec<RoomName>,
        /// The room event.
        event: pb::Event,
    },
    /// Deliver `event` to the rooms' subscribers now, unnumbered (typing), except the
    /// connections whose own room is `exclude`; `private` skips contact connections.
    Ephemeral {
        /// The rooms.
        rooms: Vec<RoomName>,
        /// The event.
        event: pb::Event,
        /// The typer's own room.
        exclude: Option<RoomName>,
        /// Hidden from contacts.
        private: bool,
    },
    /// Queue these deliveries (outbound HTTP), each once: a delivery id already queued
    /// within the deduplication window is not queued again.
    Deliver(Vec<rtgate_protocol::pb::Delivery>),
    /// Tell the backend to carry this out (on the backend stream and callback); `id` is
    /// stable for the event and the decision, so applying it twice is harmless.
    Command {
        /// The command's id.
        id: String,
        /// The command.
        command: rtgate_protocol::pb::Command,
    },
    /// Tell the backend `command` only if `claim` is free or already held by this event's
    /// decision: a decision taken once for what `claim` names, whichever node takes it
    /// and however many events ask for it (a lost claim is counted, and nothing is sent);
    /// the same event handled again is granted it again, and sends the same command id.
    CommandOnce {
        /// What the decision is about (a conversation's survey, a contact inbox's
        /// campaign conversation…).
        claim: StateKey,
        /// The command's id.
        id: String,
        /// The command.
        command: rtgate_protocol::pb::Command,
    },
    /// Keep a value of listener state.
    Remember {
        /// Where.
        key: StateKey,
        /// What.
        value: String,
    },
    /// Add ids to a set of listener state.
    AddMembers {
        /// Which set.
        key: StateKey,
        /// The ids.
        members: Vec<u64>,
    },
}

/// Why a listener did nothing with an event (counted by the bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not an event this listener handles.
    NotRouted,
    /// An update older than the last one handled for its conversation.
    Stale,
    /// Nowhere to deliver it (no destination configured wants it).
    NoDestination,
    /// Not for delivery by the listener's rules (an activity message, a status that is
    /// not the one named…).
    Filtered,
    /// An update that changed nothing.
    NothingChanged,
    /// The event lacks the webhook payload the delivery is made of.
    NoPayload,
    /// The mirrored configuration the decision needs is missing (an inbox, a campaign…):
    /// counted and logged, never guessed.
    Unconfigured,
    /// Caused by the listener's own decisions (an automation rule's actions) or by the
    /// user it would tell: nothing to do.
    OwnDoing,
}

impl Skip {
    /// The label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Skip::NotRouted => "not_routed",
            Skip::Stale => "stale",
            Skip::NoDestination => "no_destination",
            Skip::Filtered => "filtered",
            Skip::NothingChanged => "nothing_changed",
            Skip::NoPayload => "no_payload",
            Skip::Unconfigured => "unconfigured",
            Skip::OwnDoing => "own_doing",
        }
    }
}

/// A listener: decides, from an event and the state it keeps, what must happen.
pub trait Listener: Send {
    /// Its name, for metrics and logs.
    fn name(&self) -> &'static str;
    /// Whether it handles events of this name.
    fn handles(&self, event_name: &str) -> bool;
    /// The listener state it reads to decide `event`, loaded by the bus beforehand.
    fn reads(&self, _event: &pb::DomainEvent) -> Vec<StateRead> {
        Vec::new()
    }
    /// What follows from `event`, given the state it asked for.
    fn decide(&mut self, event: &pb::DomainEvent, state: &StateView) -> Result<Vec<Action>, Skip>;
}

/// Every listener the bus runs, by name, in the order it runs them.
pub const LISTENER_NAMES: [&str; 11] = [
    "routing",
    "webhook",
    "agent_bot",
    "hook",
    "installation_webhook",
    "participation",
    "notification",
    "reporting_event",
    "csat_survey",
    "campaign",
    "automation_rule",
];

/// The id of a command: the listener and what the command is about (`key`) name it, so
/// the same decision taken twice has one id.
pub fn command_id(listener: &str, key: &str) -> String {
    crate::ids::derived_uuid(&[b"command", listener.as_bytes(), key.as_bytes()])
}

/// `listener`'s decision on `event` as an action: the command, with the id `key` names.
pub fn command_action(listener: &str, event: &pb::DomainEvent, key: &str, kind: pb::command::Kind) -> Action {
    Action::Command {
        id: command_id(listener, key),
        command: command(listener, event, kind),
    }
}

/// An integer given as a JSON number or as text (backends send ids either way).
pub fn json_integer(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A command of `listener` caused by `event`.
pub fn command(listener: &str, event: &pb::DomainEvent, kind: pb::command::Kind) -> pb::Command {
    pb::Command {
        event_id: event.id.clone(),
        account_id: event.account_id,
        listener: listener.to_string(),
        kind: Some(kind),
    }
}

/// The key events are ordered by: events of one conversation are handled in the order
/// they came, by each listener; other keys in parallel.
pub fn ordering_key(event: &pb::DomainEvent) -> (u64, u64) {
    (
        event.account_id,
        event.conversation.as_ref().map_or(0, |c| c.display_id),
    )
}
