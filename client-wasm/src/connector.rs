//! When and how to (re)connect, sans-IO: transport choice (WebTransport first, WebSocket
//! when it does not connect in time), exponential backoff with full jitter, the server's
//! advice, and the platform's online/offline signal. The native and browser clients both
//! drive this one state machine; only the transports differ.

use std::time::Duration;

use web_time::Instant;

use crate::backoff::{Backoff, BackoffConfig};

/// A transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// HTTP/3 WebTransport.
    WebTransport,
    /// WebSocket.
    WebSocket,
}

/// Which transports to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportPreference {
    /// WebTransport, falling back to WebSocket when it does not connect in time.
    Auto,
    /// Only WebTransport.
    WebTransport,
    /// Only WebSocket.
    WebSocket,
}

/// Settings of the connector.
#[derive(Debug, Clone, Copy)]
pub struct ConnectorConfig {
    /// Transport choice.
    pub prefer: TransportPreference,
    /// How long a transport may take to connect. With `Auto`, a WebTransport attempt
    /// that takes longer falls back to WebSocket (a path that silently drops UDP would
    /// otherwise stall the user for the whole QUIC idle timeout).
    pub connect_timeout: Duration,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// After WebTransport failed and WebSocket worked, how long to go straight to
    /// WebSocket on reconnects.
    pub webtransport_cooldown: Duration,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            prefer: TransportPreference::Auto,
            connect_timeout: Duration::from_secs(2),
            backoff: BackoffConfig::default(),
            webtransport_cooldown: Duration::from_secs(300),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorAction {
    /// Open this transport, giving up after `timeout` (then call `open_failed`).
    Open {
        /// Which transport.
        transport: TransportKind,
        /// Give up after this long.
        timeout: Duration,
    },
    /// Close the current transport (the connection was found dead, or the app closed it).
    Close,
}

/// The connection state, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorState {
    /// Opening a transport.
    Opening(TransportKind),
    /// Connected over a transport.
    Connected(TransportKind),
    /// Waiting until the next attempt.
    Waiting,
    /// Waiting for the platform to come back online.
    Offline,
    /// Not reconnecting any more.
    Stopped,
}

/// The reconnection state machine.
#[derive(Debug)]
pub struct Connector {
    config: ConnectorConfig,
    backoff: Backoff,
    state: ConnectorState,
    wait_until: Option<Instant>,
    online: bool,
    webtransport_failed_at: Option<Instant>,
    actions: Vec<ConnectorAction>,
}

impl Connector {
    /// A connector that starts connecting at once.
    pub fn new(config: ConnectorConfig, backoff: Backoff, now: Instant) -> Self {
        let mut c = Connector {
            config,
            backoff,
            state: ConnectorState::Waiting,
            wait_until: Some(now),
            online: true,
            webtransport_failed_at: None,
            actions: Vec::new(),
        };
        c.handle_timeout(now);
        c
    }

    /// The current state.
    pub fn state(&self) -> ConnectorState {
        self.state
    }

    /// Consecutive failed attempts.
    pub fn attempt(&self) -> u32 {
        self.backoff.attempt()
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<ConnectorAction> {
        if self.actions.is_empty() {
            None
        } else {
            Some(self.actions.remove(0))
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ConnectorState::Waiting => self.wait_until,
            _ => None,
        }
    }

    fn first_transport(&self, now: Instant) -> TransportKind {
        match self.config.prefer {
            TransportPreference::WebTransport => TransportKind::WebTransport,
            TransportPreference::WebSocket => TransportKind::WebSocket,
            TransportPreference::Auto => match self.webtransport_failed_at {
                Some(at) if now.saturating_duration_since(at) < self.config.webtransport_cooldown => {
                    TransportKind::WebSocket
                }
                _ => TransportKind::WebTransport,
            },
        }
    }

    fn open(&mut self, transport: TransportKind) {
        self.state = ConnectorState::Opening(transport);
        self.wait_until = None;
        self.actions.push(ConnectorAction::Open {
            transport,
            timeout: self.config.connect_timeout,
        });
    }

    fn wait(&mut self, advice: Option<Duration>, now: Instant) {
        let delay = self.backoff.next_delay(advice);
        self.wait_until = Some(now + delay);
        self.state = if self.online {
            ConnectorState::Waiting
        } else {
            ConnectorState::Offline
        };
    }

    /// Fires the wait timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == ConnectorState::Waiting && self.wait_until.is_some_and(|t| now >= t) {
            let transport = self.first_transport(now);
            self.open(transport);
        }
    }

    /// The transport opened (the session then sends Hello).
    pub fn opened(&mut self, transport: TransportKind) {
        if self.state == ConnectorState::Opening(transport) {
            self.state = ConnectorState::Connected(transport);
        }
    }

    /// The server welcomed the session: the connection is good, start backoff over.
    pub fn welcomed(&mut self) {
        self.backoff.reset();
    }

    /// Opening a transport failed or timed out.
    pub fn open_failed(&mut self, transport: TransportKind, now: Instant) {
        if self.state != ConnectorState::Opening(transport) {
            return;
        }
        if transport == TransportKind::WebTransport && self.config.prefer == TransportPreference::Auto {
            self.webtransport_failed_at = Some(now);
            return self.open(TransportKind::WebSocket);
        }
        self.wait(None, now);
    }

    /// The connection ended. `reconnect` is the server's advice: `Some(delay)` to come
    /// back after at least `delay`, `None` not to come back.
    pub fn closed(&mut self, reconnect: Option<Duration>, now: Instant) {
        if self.state == ConnectorState::Stopped {
            return;
        }
        match reconnect {
            Some(advice) => self.wait(Some(advice), now),
            None => self.stop(),
        }
    }

    /// The platform went offline: no attempts until it is back.
    pub fn offline(&mut self) {
        self.online = false;
        if self.state == ConnectorState::Waiting {
            self.state = ConnectorState::Offline;
        }
    }

    /// The platform is back online: try at once.
    pub fn online(&mut self, now: Instant) {
        self.online = true;
        if matches!(self.state, ConnectorState::Offline | ConnectorState::Waiting) {
            self.backoff.reset();
            let transport = self.first_transport(now);
            self.open(transport);
        }
    }

    /// Stops for good.
    pub fn stop(&mut self) {
        if matches!(
            self.state,
            ConnectorState::Connected(_) | ConnectorState::Opening(_)
        ) {
            self.actions.push(ConnectorAction::Close);
        }
        self.state = ConnectorState::Stopped;
        self.wait_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(prefer: TransportPreference, now: Instant) -> Connector {
        let config = ConnectorConfig {
            prefer,
            connect_timeout: Duration::from_millis(1500),
            backoff: BackoffConfig {
                base: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            webtransport_cooldown: Duration::from_secs(60),
        };
        Connector::new(config, Backoff::with_seed(config.backoff, 42), now)
    }

    fn open_of(c: &mut Connector) -> TransportKind {
        match c.poll_action() {
            Some(ConnectorAction::Open { transport, .. }) => transport,
            other => panic!("expected an open, got {other:?}"),
        }
    }

    #[test]
    fn webtransport_first_then_websocket_at_once_when_it_fails() {
        let t0 = Instant::now();
        let mut c = connector(TransportPreference::Auto, t0);
        assert_eq!(open_of(&mut c), TransportKind::WebTransport);
        c.open_failed(TransportKind::WebTransport, t0 + Duration::from_millis(1500));
        assert_eq!(
            open_of(&mut c),
            TransportKind::WebSocket,
            "no wait before the fallback"
        );
        c.opened(TransportKind::WebSocket);
        c.welcomed();
        assert_eq!(c.state(), ConnectorState::Connected(TransportKind::WebSocket));
        // On reconnect within the cooldown, WebSocket straight away.
        c.closed(Some(Duration::ZERO), t0 + Duration::from_secs(10));
        let due = c.poll_timeout().unwrap();
        c.handle_timeout(due);
        assert_eq!(open_of(&mut c), TransportKind::WebSocket);
        // After the cooldown, WebTransport is tried again.
        c.open_failed(TransportKind::WebSocket, t0 + Duration::from_secs(100));
        let due = c.poll_timeout().unwrap();
        c.handle_timeout(due);
        assert_eq!(open_of(&mut c), TransportKind::WebTransport);
    }

    #[test]
    fn failures_back_off_and_advice_is_honoured() {
        let t0 = Instant::now();
        let mut c = connector(TransportPreference::WebSocket, t0);
        assert_eq!(open_of(&mut c), TransportKind::WebSocket);
        let mut now = t0;
        for attempt in 1..=5u32 {
            c.open_failed(TransportKind::WebSocket, now);
            let due = c.poll_timeout().unwrap();
            let ceiling = Duration::from_millis(100) * 2u32.pow(attempt - 1);
            assert!(due - now <= ceiling, "attempt {attempt}");
            c.handle_timeout(due);
            assert_eq!(open_of(&mut c), TransportKind::WebSocket);
            now = due;
        }
        c.opened(TransportKind::WebSocket);
        c.welcomed();
        assert_eq!(c.attempt(), 0);
        c.closed(Some(Duration::from_secs(3)), now);
        assert!(c.poll_timeout().unwrap() >= now + Duration::from_secs(3));
        c.closed(None, now);
        assert_eq!(c.state(), ConnectorState::Stopped);
    }

    #[test]
    fn offline_holds_attempts_and_online_retries_at_once() {
        let t0 = Instant::now();
        let mut c = connector(TransportPreference::WebSocket, t0);
        open_of(&mut c);
        c.opened(TransportKind::WebSocket);
        c.offline();
        c.closed(Some(Duration::ZERO), t0);
        assert_eq!(c.state(), ConnectorState::Offline);
        assert_eq!(c.poll_timeout(), None);
        c.handle_timeout(t0 + Duration::from_secs(60));
        assert!(c.poll_action().is_none());
        c.online(t0 + Duration::from_secs(61));
        assert_eq!(open_of(&mut c), TransportKind::WebSocket);
    }

    #[test]
    fn stopping_closes_an_open_transport() {
        let t0 = Instant::now();
        let mut c = connector(TransportPreference::WebTransport, t0);
        open_of(&mut c);
        c.opened(TransportKind::WebTransport);
        c.stop();
        assert_eq!(c.poll_action(), Some(ConnectorAction::Close));
        assert_eq!(c.state(), ConnectorState::Stopped);
    }
}
