//! The browser client: [`RtgateClient`], exported to JavaScript with wasm-bindgen.
//!
//! It drives the same [`ClientSession`](crate::ClientSession) and
//! [`Connector`](crate::Connector) as the native client, over the browser's WebTransport
//! (control stream, server-opened room streams, datagrams for typing), WebSocket, or
//! plain HTTP requests.

mod api;
mod driver;
mod http;
mod js;
mod link;
mod network;
mod options;
mod state;
mod timer;
mod websocket;
mod webtransport;

pub use api::{ClientOptions, RtgateClient, SubscribeOptions};
