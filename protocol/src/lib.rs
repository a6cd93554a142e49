//! The rtgate wire protocol.
//!
//! - [`pb`]: the protobuf messages generated from `proto/rtgate/v1/*.proto` (frames, domain
//!   events, server-API bodies), with their protobuf-JSON mapping.
//! - [`FrameDecoder`] / [`encode_frame`]: length-delimited framing for streams, sans-IO.
//! - [`RoomName`]: validated room names (`user:7`, `conversation:42`, `public:1:lobby`, …).
//! - [`ErrorCode`] and [`DisconnectCode`]: the numbered codes of replies and closes.
//!
//! Nothing here performs I/O; bytes go in, messages come out.
#![warn(missing_docs)]

mod codes;
mod framing;
mod room;

pub use codes::{DisconnectCode, ErrorCode};
pub use framing::{FrameDecoder, FrameError, decode_frame, encode_frame, encode_frame_into};
pub use room::{RoomKind, RoomName, RoomNameError};

/// Version of the protocol spoken by this crate, announced in `Welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default upper bound on the size of one frame, in bytes.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;

/// Generated protobuf types of package `rtgate.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/rtgate.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/rtgate.v1.serde.rs"));
}

pub use prost::Message as ProstMessage;
