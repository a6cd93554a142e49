//! rtgate client.
//!
//! - [`ClientSession`]: the sans-IO session (Hello, rooms with their positions, recovery,
//!   heartbeats), shared by every platform.
//! - [`Backoff`]: reconnection delays with full jitter, honouring server advice.
//! - [`Client`] (native): a tokio client over WebTransport or WebSocket that reconnects
//!   and resumes every room by itself.
#![warn(missing_docs)]

mod backoff;
mod session;

#[cfg(not(target_arch = "wasm32"))]
mod native;

pub use backoff::{Backoff, BackoffConfig};
pub use session::{ClientEvent, ClientSession, RequestError, needs_new_token};

#[cfg(not(target_arch = "wasm32"))]
pub use native::{
    Client, ClientConfig, ClientError, ConnectionState, TokenProvider, TransportKind,
    TransportPreference, fixed_token,
};

pub use rtgate_protocol as protocol;
