//! rtgate client.
//!
//! - [`ClientSession`]: the sans-IO session (Hello, rooms with their positions, recovery,
//!   heartbeats, token refresh), shared by every platform.
//! - [`Connector`]: when and over which transport to (re)connect, sans-IO, with
//!   [`Backoff`] (full jitter, honouring server advice) and online/offline signals.
//! - [`Client`] (native): a tokio client over WebTransport or WebSocket that reconnects
//!   and resumes every room by itself.
#![warn(missing_docs)]

mod backoff;
mod connector;
mod session;

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use backoff::{Backoff, BackoffConfig};
pub use connector::{
    Connector, ConnectorAction, ConnectorConfig, ConnectorState, TransportKind, TransportPreference,
};
pub use session::{ClientEvent, ClientSession, RequestError, needs_new_token};

#[cfg(not(target_arch = "wasm32"))]
pub use native::{
    Client, ClientConfig, ClientError, ConnectionState, SharedEndpoint, TokenProvider, fixed_token,
    webtransport_endpoint,
};
#[cfg(target_arch = "wasm32")]
pub use wasm::{ClientOptions, RtgateClient, SubscribeOptions};

pub use rtgate_protocol as protocol;
