//! Transport adapters. Each reads frames into [`crate::connection::Incoming`] items and
//! writes the frames of the connection's lanes; all protocol decisions live in the session.

pub mod websocket;
pub mod webtransport;

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
