//! The connection state shown to the application: what the connector and the session say,
//! with the transport in use and the reconnection schedule.

use std::time::Duration;

use wasm_bindgen::JsValue;

use super::js::object;
use crate::connector::{ConnectorState, TransportKind};

/// One snapshot; the application is told whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateInfo {
    /// `connecting`, `connected`, `waiting`, `offline` or `stopped`.
    pub(crate) state: &'static str,
    /// The transport being opened or in use.
    pub(crate) transport: Option<TransportKind>,
    /// Consecutive failed attempts.
    pub(crate) attempt: u32,
    /// While waiting: time until the next attempt.
    pub(crate) retry_in: Option<Duration>,
    /// Why the last connection ended: the server's code, if any.
    pub(crate) code: Option<u32>,
    /// Why the last connection ended.
    pub(crate) reason: String,
}

impl StateInfo {
    /// The snapshot for a connector state; `welcomed` tells whether the session is ready.
    pub(crate) fn new(connector: ConnectorState, welcomed: bool, attempt: u32) -> StateInfo {
        let (state, transport) = match connector {
            ConnectorState::Opening(kind) => ("connecting", Some(kind)),
            ConnectorState::Connected(kind) if welcomed => ("connected", Some(kind)),
            ConnectorState::Connected(kind) => ("connecting", Some(kind)),
            ConnectorState::Waiting => ("waiting", None),
            ConnectorState::Offline => ("offline", None),
            ConnectorState::Stopped => ("stopped", None),
        };
        StateInfo {
            state,
            transport,
            attempt,
            retry_in: None,
            code: None,
            reason: String::new(),
        }
    }

    /// As a JavaScript object (`ConnectionState` in the TypeScript types).
    pub(crate) fn to_js(&self) -> JsValue {
        let transport = match self.transport {
            Some(TransportKind::WebTransport) => "webtransport".into(),
            Some(TransportKind::WebSocket) => "websocket".into(),
            Some(TransportKind::Http) => "http".into(),
            None => JsValue::NULL,
        };
        let mut entries = vec![
            ("state", self.state.into()),
            ("transport", transport),
            ("attempt", self.attempt.into()),
        ];
        if let Some(retry) = self.retry_in {
            entries.push(("retryInMs", (retry.as_millis() as f64).into()));
        }
        if let Some(code) = self.code {
            entries.push(("code", code.into()));
        }
        if !self.reason.is_empty() {
            entries.push(("reason", self.reason.as_str().into()));
        }
        object(&entries)
    }
}
