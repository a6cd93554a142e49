//! What a session asks its driver to do.

use rtgate_protocol::{DisconnectCode, RoomName, pb};

use crate::ids::StreamPos;

/// What the session asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a frame on the control path.
    Send(pb::ServerFrame),
    /// The Hello's token verified: take the connection in (node and user limits), then
    /// call [`Session::admitted`].
    Admit,
    /// Subscribe to a room in the engine, then call [`Session::join_done`].
    Join {
        /// The room.
        room: RoomName,
        /// Recovery position, if any.
        since: Option<StreamPos>,
    },
    /// Start delivering the room's replay and live events (after its result was sent).
    Activate(RoomName),
    /// Unsubscribe from a room in the engine.
    Leave(RoomName),
    /// Publish a client event, then call [`Session::publish_done`].
    Publish {
        /// Request id to answer.
        id: u32,
        /// The room.
        room: RoomName,
        /// The event, with server-set fields filled in.
        event: pb::Event,
    },
    /// Deliver an ephemeral event to the room's other subscribers.
    Ephemeral {
        /// The room.
        room: RoomName,
        /// The event.
        event: pb::Event,
        /// Hidden from contacts.
        private: bool,
    },
    /// Set the agent's availability, then call [`Session::answer`].
    SetAvailability {
        /// Request id to answer.
        id: u32,
        /// The new availability.
        availability: pb::Availability,
    },
    /// Fetch the account's presence, then call [`Session::answer`].
    QueryPresence {
        /// Request id to answer.
        id: u32,
    },
    /// Count an authentication failure (for metrics), by reason label.
    AuthFailed(&'static str),
    /// Send `Disconnect` with this code, flush, and close the transport.
    Close(DisconnectCode, String),
}
