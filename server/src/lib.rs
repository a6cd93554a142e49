//! rtgate: a realtime gateway. Clients connect over WebTransport (one QUIC stream per
//! room, datagrams for typing) or WebSocket, authenticate with a JWT and join rooms;
//! backends publish events to rooms through the server API; every room keeps numbered
//! history so reconnecting clients get what they missed.
//!
//! The data flow, from a backend's publish to a client's screen:
//!
//! ```text
//! backend ──HTTP──▶ api ──▶ engine (offset + history) ──▶ hub ──▶ subscriber ──▶ lane ──▶ transport ──▶ client
//! client ──frames──▶ transport ──▶ connection driver ──▶ session (sans-IO) ──▶ actions ──▶ engine / lanes
//! ```
//!
//! See docs/architecture.md for the whole picture.
#![warn(missing_docs)]

pub mod actioncable;
pub mod admission;
pub mod api;
pub mod auth;
pub mod authz;
pub mod certs;
pub mod config;
pub mod connection;
pub mod console;
pub mod delivery;
pub mod dev;
pub mod engine;
pub mod events;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod ratelimit;
pub mod session;
pub mod transport;

pub use config::Config;
pub use gateway::{Gateway, StartError};
