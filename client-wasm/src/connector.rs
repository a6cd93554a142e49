//! When and how to (re)connect, sans-IO: transport choice (WebTransport first, then
//! WebSocket, then plain HTTP, each tried when the one before does not connect in time),
//! moving back up once a skipped transport may work again, exponential backoff with full
//! jitter, the server's advice, and the platform's online/offline signal. The native and
//! browser clients both drive this one state machine; only the transports differ.

use std::time::Duration;

use web_time::Instant;

use crate::backoff::{Backoff, BackoffConfig};

/// A transport, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransportKind {
    /// HTTP/3 WebTransport.
    WebTransport,
    /// WebSocket.
    WebSocket,
    /// Plain HTTP requests: a streaming response and POSTs.
    Http,
}

impl TransportKind {
    /// Every transport, best first.
    pub const ALL: [TransportKind; 3] = [
        TransportKind::WebTransport,
        TransportKind::WebSocket,
        TransportKind::Http,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Which transports to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportPreference {
    /// WebTransport, falling back to WebSocket (then HTTP, where enabled) when it does not
    /// connect in time.
    Auto,
    /// Only WebTransport.
    WebTransport,
    /// Only WebSocket.
    WebSocket,
    /// Only plain HTTP.
    Http,
}

/// Settings of the connector.
#[derive(Debug, Clone, Copy)]
pub struct ConnectorConfig {
    /// Transport choice.
    pub prefer: TransportPreference,
    /// How long a transport may take to connect. With `Auto`, an attempt that takes
    /// longer falls back to the next transport (a path that silently drops UDP would
    /// otherwise stall the user for the whole QUIC idle timeout).
    pub connect_timeout: Duration,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// After a transport failed to connect and a later one worked, how long reconnects
    /// skip it; once this has passed, a connection over a later transport tries it again
    /// beside the running one and moves over if it connects.
    pub fallback_cooldown: Duration,
    /// Which of WebTransport, WebSocket and HTTP (in that order) `Auto` may use.
    pub enabled: [bool; 3],
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            prefer: TransportPreference::Auto,
            connect_timeout: Duration::from_secs(2),
            backoff: BackoffConfig::default(),
            fallback_cooldown: Duration::from_secs(300),
            enabled: [true, true, false],
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
    /// Try this better transport beside the connection in use, giving up after
    /// `timeout`; report with [`Connector::probe_done`]. If it connects, the driver moves
    /// the session over to it (a reconnect with recovery) and closes the old one.
    Probe {
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
    /// When each transport last failed to connect (under `Auto`).
    failed_at: [Option<Instant>; 3],
    /// The better transport being tried beside the connection in use.
    probing: Option<TransportKind>,
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
            failed_at: [None; 3],
            probing: None,
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
            ConnectorState::Connected(current) if self.probing.is_none() => self.next_probe(current),
            _ => None,
        }
    }

    fn enabled(&self) -> impl Iterator<Item = TransportKind> + '_ {
        TransportKind::ALL
            .into_iter()
            .filter(|k| self.config.enabled[k.index()])
    }

    /// The transport after `kind` under `Auto`, if any.
    fn after(&self, kind: TransportKind) -> Option<TransportKind> {
        self.enabled().find(|k| *k > kind)
    }

    /// Whether `kind` failed within the cooldown (the last resort is never skipped).
    fn skipped(&self, kind: TransportKind, now: Instant) -> bool {
        self.after(kind).is_some()
            && self.failed_at[kind.index()]
                .is_some_and(|at| now.saturating_duration_since(at) < self.config.fallback_cooldown)
    }

    fn first_transport(&self, now: Instant) -> TransportKind {
        match self.config.prefer {
            TransportPreference::WebTransport => TransportKind::WebTransport,
            TransportPreference::WebSocket => TransportKind::WebSocket,
            TransportPreference::Http => TransportKind::Http,
            TransportPreference::Auto => self
                .enabled()
                .find(|k| !self.skipped(*k, now))
                .unwrap_or(TransportKind::WebTransport),
        }
    }

    /// When a better transport than `current` is due to be tried again.
    fn next_probe(&self, current: TransportKind) -> Option<Instant> {
        if self.config.prefer != TransportPreference::Auto {
            return None;
        }
        self.enabled()
            .filter(|k| *k < current)
            .filter_map(|k| self.failed_at[k.index()])
            .map(|at| at + self.config.fallback_cooldown)
            .min()
    }

    fn open(&mut self, transport: TransportKind) {
        self.state = ConnectorState::Opening(transport);
        self.wait_until = None;
        self.probing = None;
        self.actions.push(ConnectorAction::Open {
            transport,
            timeout: self.config.connect_timeout,
        });
    }

    fn wait(&mut self, advice: Option<Duration>, now: Instant) {
        let delay = self.backoff.next_delay(advice);
        self.wait_until = Some(now + delay);
        self.probing = None;
        self.state = if self.online {
            ConnectorState::Waiting
        } else {
            ConnectorState::Offline
        };
    }

    /// Fires the wait timer, or starts a probe of a better transport that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ConnectorState::Waiting if self.wait_until.is_some_and(|t| now >= t) => {
                let transport = self.first_transport(now);
                self.open(transport);
            }
            ConnectorState::Connected(current)
                if self.probing.is_none() && self.next_probe(current).is_some_and(|t| now >= t) =>
            {
                let best = self.enabled().find(|k| *k < current && !self.skipped(*k, now));
                if let Some(transport) = best {
                    self.probing = Some(transport);
                    self.actions.push(ConnectorAction::Probe {
                        transport,
                        timeout: self.config.connect_timeout,
                    });
                }
            }
            _ => {}
        }
    }

    /// The probe of `transport` ended: `opened` tells whether it connected. Answers
    /// whether the driver moves the session over to it (as after [`opened`](Self::opened));
    /// false for a probe that no longer counts (the connection ended meanwhile).
    pub fn probe_done(&mut self, transport: TransportKind, opened: bool, now: Instant) -> bool {
        if self.probing != Some(transport) {
            return false;
        }
        self.probing = None;
        if !opened {
            self.failed_at[transport.index()] = Some(now);
            return false;
        }
        self.failed_at[transport.index()] = None;
        self.state = ConnectorState::Connected(transport);
        true
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

    /// The transport in use ended before the server welcomed the session, without a word
    /// from the server (a proxy that lets the upgrade through but not what follows):
    /// under `Auto` it counts as a failed open, and reconnects skip it for the cooldown.
    /// Call before [`closed`](Self::closed).
    pub fn lost_before_welcome(&mut self, now: Instant) {
        if let ConnectorState::Connected(kind) = self.state
            && self.config.prefer == TransportPreference::Auto
            && self.after(kind).is_some()
        {
            self.failed_at[kind.index()] = Some(now);
        }
    }

    /// Opening a transport failed or timed out.
    pub fn open_failed(&mut self, transport: TransportKind, now: Instant) {
        if self.state != ConnectorState::Opening(transport) {
            return;
        }
        if self.config.prefer == TransportPreference::Auto
            && let Some(next) = self.after(transport)
        {
            self.failed_at[transport.index()] = Some(now);
            return self.open(next);
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
        self.probing = None;
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
            fallback_cooldown: Duration::from_secs(60),
            enabled: [true, true, true],
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
        assert_eq!(open_of(&mut c), TransportKind::Http);
        c.open_failed(TransportKind::Http, t0 + Duration::from_secs(100));
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

    #[test]
    fn websocket_failing_too_falls_back_to_http_and_reconnects_skip_what_failed() {
        let t0 = Instant::now();
        let mut c = connector(TransportPreference::Auto, t0);
        assert_eq!(open_of(&mut c), TransportKind::WebTransport);
        c.open_failed(TransportKind::WebTransport, t0);
        assert_eq!(open_of(&mut c), TransportKind::WebSocket);
        c.open_failed(TransportKind::WebSocket, t0 + Duration::from_millis(1500));
        assert_eq!(
            open_of(&mut c),
            TransportKind::Http,
            "no wait before the fallback"
        );
        c.opened(TransportKind::Http);
        c.welcomed();
        c.closed(Some(Duration::ZERO), t0 + Duration::from_secs(5));
        let due = c.poll_timeout().unwrap();
        c.handle_timeout(due);
        assert_eq!(
            open_of(&mut c),
            TransportKind::Http,
            "within the cooldown, HTTP at once"
        );
        // HTTP failing is the end of the line: back off, then HTTP again.
        c.open_failed(TransportKind::Http, t0 + Duration::from_secs(6));
        assert!(c.poll_action().is_none());
        assert_eq!(c.state(), ConnectorState::Waiting);
    }

    #[test]
    fn a_connection_over_http_tries_better_transports_again_after_the_cooldown() {
        let t0 = Instant::now();
        let mut c = connector(TransportPreference::Auto, t0);
        open_of(&mut c);
        c.open_failed(TransportKind::WebTransport, t0);
        open_of(&mut c);
        c.open_failed(TransportKind::WebSocket, t0 + Duration::from_secs(2));
        assert_eq!(open_of(&mut c), TransportKind::Http);
        c.opened(TransportKind::Http);
        c.welcomed();
        // WebTransport's cooldown ends first: it is probed beside the running connection.
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        c.handle_timeout(t0 + Duration::from_secs(30));
        assert!(c.poll_action().is_none(), "nothing before the cooldown");
        c.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(
            c.poll_action(),
            Some(ConnectorAction::Probe {
                transport: TransportKind::WebTransport,
                timeout: Duration::from_millis(1500),
            })
        );
        assert_eq!(c.poll_timeout(), None, "one probe at a time");
        assert!(!c.probe_done(TransportKind::WebTransport, false, t0 + Duration::from_secs(61)));
        assert_eq!(
            c.state(),
            ConnectorState::Connected(TransportKind::Http),
            "still on HTTP"
        );
        // Then WebSocket's, which connects: the connection moves over.
        c.handle_timeout(t0 + Duration::from_secs(62));
        assert_eq!(
            c.poll_action(),
            Some(ConnectorAction::Probe {
                transport: TransportKind::WebSocket,
                timeout: Duration::from_millis(1500),
            })
        );
        assert!(c.probe_done(TransportKind::WebSocket, true, t0 + Duration::from_secs(63)));
        assert_eq!(c.state(), ConnectorState::Connected(TransportKind::WebSocket));
        // WebTransport is probed again once its own cooldown has passed.
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(121)));
        c.handle_timeout(t0 + Duration::from_secs(121));
        assert!(matches!(
            c.poll_action(),
            Some(ConnectorAction::Probe {
                transport: TransportKind::WebTransport,
                ..
            })
        ));
        // A connection lost meanwhile drops the probe: reconnects start from the top.
        c.closed(Some(Duration::ZERO), t0 + Duration::from_secs(122));
        assert!(!c.probe_done(TransportKind::WebTransport, true, t0 + Duration::from_secs(122)));
        assert_eq!(c.state(), ConnectorState::Waiting);
    }

    #[test]
    fn without_the_http_fallback_or_with_a_fixed_transport_nothing_is_probed() {
        let t0 = Instant::now();
        let mut config = ConnectorConfig {
            enabled: [true, true, false],
            ..ConnectorConfig::default()
        };
        let mut c = Connector::new(config, Backoff::with_seed(config.backoff, 1), t0);
        open_of(&mut c);
        c.open_failed(TransportKind::WebTransport, t0);
        open_of(&mut c);
        c.open_failed(TransportKind::WebSocket, t0);
        assert!(c.poll_action().is_none(), "no HTTP: back off");
        config.prefer = TransportPreference::Http;
        let mut c = Connector::new(config, Backoff::with_seed(config.backoff, 1), t0);
        assert_eq!(open_of(&mut c), TransportKind::Http);
        c.opened(TransportKind::Http);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn auto_uses_only_the_enabled_transports() {
        let t0 = Instant::now();
        let config = ConnectorConfig {
            enabled: [false, true, true],
            ..ConnectorConfig::default()
        };
        let mut c = Connector::new(config, Backoff::with_seed(config.backoff, 1), t0);
        assert_eq!(open_of(&mut c), TransportKind::WebSocket);
        c.open_failed(TransportKind::WebSocket, t0);
        assert_eq!(open_of(&mut c), TransportKind::Http);
        c.opened(TransportKind::Http);
        let due = c.poll_timeout().unwrap();
        c.handle_timeout(due);
        assert!(matches!(
            c.poll_action(),
            Some(ConnectorAction::Probe {
                transport: TransportKind::WebSocket,
                ..
            })
        ));
    }

    #[test]
    fn a_transport_lost_before_the_welcome_is_skipped_like_one_that_did_not_open() {
        let t0 = Instant::now();
        let mut c = connector(TransportPreference::Auto, t0);
        open_of(&mut c);
        c.open_failed(TransportKind::WebTransport, t0);
        open_of(&mut c);
        c.open_failed(TransportKind::WebSocket, t0);
        assert_eq!(open_of(&mut c), TransportKind::Http);
        c.opened(TransportKind::Http);
        c.welcomed();
        // The probe of WebSocket opens, takes the session, and goes silent before Welcome.
        c.handle_timeout(t0 + Duration::from_secs(60));
        c.poll_action();
        c.probe_done(TransportKind::WebTransport, false, t0 + Duration::from_secs(61));
        c.handle_timeout(t0 + Duration::from_secs(61));
        assert!(c.probe_done(TransportKind::WebSocket, true, t0 + Duration::from_secs(61)));
        c.poll_action();
        c.lost_before_welcome(t0 + Duration::from_secs(70));
        c.closed(Some(Duration::ZERO), t0 + Duration::from_secs(70));
        let due = c.poll_timeout().unwrap();
        c.handle_timeout(due);
        assert_eq!(open_of(&mut c), TransportKind::Http, "back to what worked");
        // The last resort is never skipped.
        c.opened(TransportKind::Http);
        c.lost_before_welcome(t0 + Duration::from_secs(71));
        c.closed(Some(Duration::ZERO), t0 + Duration::from_secs(71));
        let due = c.poll_timeout().unwrap();
        c.handle_timeout(due);
        assert_eq!(open_of(&mut c), TransportKind::Http);
    }
}
