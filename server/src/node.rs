//! State shared by every connection of one gateway process: configuration, the verifier,
//! the engine, the registry of live connections (to kick a user's sessions or shut down),
//! and the shutdown signal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::auth::{Authenticator, Principal, Role};
use crate::engine::Engine;
use crate::ids::ConnectionId;
use crate::presence::PresenceService;
use crate::session::SessionConfig;

/// A request from the node to one connection.
#[derive(Debug, Clone)]
pub enum ConnControl {
    /// Close with `kicked`, giving this reason.
    Kick(String),
}

#[derive(Debug)]
struct ConnEntry {
    who: Option<(Role, u64)>,
    transport: &'static str,
    /// One request at most reaches a connection (it then closes).
    control: Option<oneshot::Sender<ConnControl>>,
}

/// Per-connection resource limits.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Bytes that may wait in one connection's send queues before it counts as slow.
    pub send_queue_bytes: usize,
    /// Most concurrent connections; further ones are refused with `overloaded`.
    pub max_connections: usize,
    /// Most server-opened streams per WebTransport connection; beyond, rooms share streams.
    pub max_room_streams: usize,
    /// How long a closing connection may take to flush its last frames.
    pub close_flush_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            send_queue_bytes: 1 << 20,
            max_connections: 100_000,
            max_room_streams: 64,
            close_flush_timeout: Duration::from_secs(2),
        }
    }
}

/// One gateway process.
pub struct Node {
    /// Session limits and timings.
    pub session: Arc<SessionConfig>,
    /// Token verifier.
    pub auth: Arc<Authenticator>,
    /// Rooms, history, fan-out.
    pub engine: Arc<dyn Engine>,
    /// Per-connection limits.
    pub limits: ConnectionLimits,
    /// Presence, availability, last seen.
    pub presence: Arc<PresenceService>,
    next_conn: AtomicU64,
    connections: Mutex<HashMap<ConnectionId, ConnEntry>>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.session.node_id)
            .field("connections", &self.connection_count())
            .finish()
    }
}

impl Node {
    /// A node.
    pub fn new(
        session: SessionConfig,
        auth: Authenticator,
        engine: Arc<dyn Engine>,
        presence: Arc<PresenceService>,
        limits: ConnectionLimits,
    ) -> Arc<Self> {
        Arc::new(Node {
            session: Arc::new(session),
            auth: Arc::new(auth),
            engine,
            presence,
            limits,
            next_conn: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
        })
    }

    /// Registers a new connection, or refuses it when at the limit.
    pub fn register(
        &self,
        transport: &'static str,
    ) -> Option<(ConnectionId, oneshot::Receiver<ConnControl>)> {
        let mut conns = self.connections.lock().expect("registry lock");
        if conns.len() >= self.limits.max_connections {
            return None;
        }
        let id = ConnectionId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        metrics::counter!("rtgate_connects_total", "transport" => transport).increment(1);
        let (tx, rx) = oneshot::channel();
        conns.insert(
            id,
            ConnEntry {
                who: None,
                transport,
                control: Some(tx),
            },
        );
        Some((id, rx))
    }

    /// Records who is behind a connection, once authenticated.
    pub fn identify(&self, id: ConnectionId, principal: &Principal) {
        if let Some(e) = self.connections.lock().expect("registry lock").get_mut(&id) {
            e.who = Some((principal.role, principal.id));
        }
    }

    /// Forgets a closed connection.
    pub fn deregister(&self, id: ConnectionId) {
        self.connections.lock().expect("registry lock").remove(&id);
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.connections.lock().expect("registry lock").len()
    }

    /// Live connections over one transport (`"webtransport"` or `"websocket"`).
    pub fn connection_count_by(&self, transport: &str) -> usize {
        self.connections
            .lock()
            .expect("registry lock")
            .values()
            .filter(|e| e.transport == transport)
            .count()
    }

    /// Closes every connection of a user (`contact` selects contact connections), returning
    /// how many were asked to close.
    pub fn kick(&self, contact: bool, id: u64, reason: &str) -> usize {
        let mut conns = self.connections.lock().expect("registry lock");
        let mut n = 0;
        for e in conns.values_mut() {
            if let Some((role, who)) = e.who
                && who == id
                && (role == Role::Contact) == contact
                && let Some(control) = e.control.take()
                && control.send(ConnControl::Kick(reason.to_string())).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// A receiver that turns true when the node begins to shut down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Begins shutdown: every connection is sent `Disconnect(shutdown)` and closed.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until every connection is gone or `timeout` passes; returns those left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.connection_count();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
