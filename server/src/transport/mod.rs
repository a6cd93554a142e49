//! Transport adapters. Each reads frames into [`crate::connection::Incoming`] items and
//! writes the frames of the connection's lanes; all protocol decisions live in the session.

pub mod actioncable;
pub mod httpstream;
pub mod websocket;
pub mod webtransport;

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The transports a client can connect over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// WebTransport over HTTP/3.
    WebTransport,
    /// WebSocket over HTTP/1.1.
    WebSocket,
    /// ActionCable's JSON protocol over WebSocket (`/cable`).
    ActionCable,
    /// Plain HTTP requests: a streaming response and POSTs (`/http/*`).
    Http,
}

impl TransportKind {
    /// Every transport, for per-transport figures.
    pub const ALL: [TransportKind; 4] = [
        TransportKind::WebTransport,
        TransportKind::WebSocket,
        TransportKind::ActionCable,
        TransportKind::Http,
    ];

    /// The name used in metrics labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            TransportKind::WebTransport => "webtransport",
            TransportKind::WebSocket => "websocket",
            TransportKind::ActionCable => "actioncable",
            TransportKind::Http => "http",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Signals a writer task to flush and close, then waits for it (bounded).
pub(crate) struct WriterCloser<T> {
    pub(crate) signal: oneshot::Sender<T>,
    pub(crate) writer: JoinHandle<()>,
    pub(crate) timeout: Duration,
}

impl<T: Send + 'static> WriterCloser<T> {
    pub(crate) async fn close(self, value: T) {
        let _ = self.signal.send(value);
        let mut writer = self.writer;
        if tokio::time::timeout(self.timeout, &mut writer).await.is_err() {
            writer.abort();
        }
    }
}
