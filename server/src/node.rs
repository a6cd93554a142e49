//! State shared by every connection of one gateway process: configuration, the verifier,
//! the engine, the registry of live connections (to kick a user's sessions or shut down),
//! and the shutdown signal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::auth::{Authenticator, Principal, Role};
use crate::engine::Engine;
use crate::ids::ConnectionId;
use crate::presence::PresenceService;
use crate::session::SessionConfig;
use crate::transport::TransportKind;

/// A request from the node to one connection.
#[derive(Debug, Clone)]
pub enum ConnControl {
    /// Close with `kicked`, giving this reason.
    Kick(String),
}

#[derive(Debug)]
struct ConnEntry {
    /// Set once admitted (after Hello): until then the connection is pending.
    who: Option<(bool, u64)>,
    ip: IpAddr,
    transport: TransportKind,
    /// One request at most reaches a connection (it then closes).
    control: Option<oneshot::Sender<ConnControl>>,
    /// A `/cable` connection: the key of the `pubsub_token` it subscribed with.
    cable_token: Option<String>,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The gateway is shutting down.
    #[error("gateway shutting down")]
    ShuttingDown,
    /// Too many connections are waiting for their Hello (in all or from this address).
    #[error("too many connections waiting for their hello")]
    PendingFull,
    /// The gateway holds its maximum of authenticated connections.
    #[error("gateway at its connection limit")]
    Full,
    /// This user or contact holds their maximum of connections.
    #[error("too many connections for this user")]
    UserFull,
}

impl Refusal {
    /// The code a refused client is told: come back later (after a restart, or when the
    /// gateway has room again).
    pub fn code(self) -> rtgate_protocol::DisconnectCode {
        match self {
            Refusal::ShuttingDown => rtgate_protocol::DisconnectCode::Shutdown,
            _ => rtgate_protocol::DisconnectCode::Overloaded,
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    entries: HashMap<ConnectionId, ConnEntry>,
    pending: usize,
    pending_by_ip: HashMap<IpAddr, usize>,
    admitted: usize,
    by_user: HashMap<(bool, u64), usize>,
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// Per-connection resource limits.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Bytes that may wait in one connection's send queues before it counts as slow.
    pub send_queue_bytes: usize,
    /// Most concurrent authenticated connections; further ones are refused with `overloaded`.
    pub max_connections: usize,
    /// Most connections waiting for their Hello, in all.
    pub max_pending: usize,
    /// Most connections waiting for their Hello from one address.
    pub max_pending_per_ip: usize,
    /// Most authenticated connections of one user or contact.
    pub max_per_user: usize,
    /// Most open connections from one client address (0: no limit).
    pub max_per_ip: usize,
    /// New connections per second.
    pub accept_rate: f64,
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
            max_pending: 4096,
            max_pending_per_ip: 256,
            max_per_user: 32,
            max_per_ip: 4096,
            accept_rate: 2000.0,
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
    connections: Mutex<Registry>,
    shutdown: watch::Sender<bool>,
    draining: AtomicBool,
    /// Open connections per client address (TCP connections and WebTransport sessions).
    pub addresses: Arc<crate::admission::AddressSlots>,
    /// Paces new connections.
    pub pacer: Arc<crate::admission::AcceptPacer>,
    /// The HTTP fallback streams this node holds.
    pub http_streams: crate::transport::httpstream::Streams,
    /// Whether a console on another node watches the figures.
    pub console_watch: crate::console::Watch,
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
            next_conn: AtomicU64::new(1),
            connections: Mutex::new(Registry::default()),
            shutdown: watch::channel(false).0,
            draining: AtomicBool::new(false),
            addresses: crate::admission::AddressSlots::new(limits.max_per_ip),
            pacer: Arc::new(crate::admission::AcceptPacer::new(limits.accept_rate)),
            http_streams: Default::default(),
            console_watch: Default::default(),
            limits,
        })
    }

    /// Registers a new connection from `ip`, not yet authenticated: it holds a pending
    /// slot until [`admit`](Self::admit) or [`deregister`](Self::deregister).
    pub fn register(
        &self,
        transport: TransportKind,
        ip: IpAddr,
    ) -> Result<(ConnectionId, oneshot::Receiver<ConnControl>), Refusal> {
        if self.is_shutting_down() {
            return Err(Refusal::ShuttingDown);
        }
        let ip = crate::admission::canonical_ip(ip);
        let mut reg = self.connections.lock().expect("registry lock");
        let from_ip = reg.pending_by_ip.get(&ip).copied().unwrap_or(0);
        if reg.pending >= self.limits.max_pending || from_ip >= self.limits.max_pending_per_ip {
            metrics::counter!("rtgate_connections_refused_total", "reason" => "pending_full").increment(1);
            return Err(Refusal::PendingFull);
        }
        let id = ConnectionId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        metrics::counter!("rtgate_connects_total", "transport" => transport.label()).increment(1);
        let (tx, rx) = oneshot::channel();
        reg.pending += 1;
        *reg.pending_by_ip.entry(ip).or_insert(0) += 1;
        reg.entries.insert(
            id,
            ConnEntry {
                who: None,
                ip,
                transport,
                control: Some(tx),
                cable_token: None,
            },
        );
        Ok((id, rx))
    }

    /// Lets an authenticated connection in: it moves from its pending slot to an
    /// authenticated one, within the gateway's and the user's limits.
    pub fn admit(&self, id: ConnectionId, principal: &Principal) -> Result<(), Refusal> {
        let user = (principal.role == Role::Contact, principal.id);
        let mut reg = self.connections.lock().expect("registry lock");
        let Some(entry) = reg.entries.get(&id) else {
            return Err(Refusal::ShuttingDown);
        };
        if entry.who.is_some() {
            return Ok(());
        }
        let ip = entry.ip;
        let refusal = if reg.admitted >= self.limits.max_connections {
            Some(Refusal::Full)
        } else if reg.by_user.get(&user).copied().unwrap_or(0) >= self.limits.max_per_user {
            Some(Refusal::UserFull)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let label = if refusal == Refusal::Full {
                "full"
            } else {
                "user_full"
            };
            metrics::counter!("rtgate_connections_refused_total", "reason" => label).increment(1);
            return Err(refusal);
        }
        reg.pending -= 1;
        decrement(&mut reg.pending_by_ip, &ip);
        reg.admitted += 1;
        *reg.by_user.entry(user).or_insert(0) += 1;
        if let Some(e) = reg.entries.get_mut(&id) {
            e.who = Some(user);
        }
        Ok(())
    }

    /// Forgets a closed connection.
    pub fn deregister(&self, id: ConnectionId) {
        let mut reg = self.connections.lock().expect("registry lock");
        let Some(entry) = reg.entries.remove(&id) else {
            return;
        };
        match entry.who {
            Some(user) => {
                reg.admitted -= 1;
                decrement(&mut reg.by_user, &user);
            }
            None => {
                reg.pending -= 1;
                decrement(&mut reg.pending_by_ip, &entry.ip);
            }
        }
    }

    /// Live connections (pending ones included).
    pub fn connection_count(&self) -> usize {
        self.connections.lock().expect("registry lock").entries.len()
    }

    /// Connections still waiting for their Hello.
    pub fn pending_count(&self) -> usize {
        self.connections.lock().expect("registry lock").pending
    }

    /// Live connections over one transport.
    pub fn connection_count_by(&self, transport: TransportKind) -> usize {
        self.connections
            .lock()
            .expect("registry lock")
            .entries
            .values()
            .filter(|e| e.transport == transport)
            .count()
    }

    /// Closes every connection of a user (`contact` selects contact connections), returning
    /// how many were asked to close.
    pub fn kick(&self, contact: bool, id: u64, reason: &str) -> usize {
        self.kick_where(|e| e.who == Some((contact, id)), reason)
    }

    /// Asks every connection matching `which` to close with `kicked`; how many were asked.
    fn kick_where(&self, which: impl Fn(&ConnEntry) -> bool, reason: &str) -> usize {
        let mut reg = self.connections.lock().expect("registry lock");
        let mut n = 0;
        for e in reg.entries.values_mut() {
            if which(e)
                && let Some(control) = e.control.take()
                && control.send(ConnControl::Kick(reason.to_string())).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Notes the `pubsub_token` (its key) a `/cable` connection subscribed with.
    pub fn bind_cable_token(&self, id: ConnectionId, key: &str) {
        if let Some(e) = self
            .connections
            .lock()
            .expect("registry lock")
            .entries
            .get_mut(&id)
        {
            e.cable_token = Some(key.to_string());
        }
    }

    /// Closes every `/cable` connection that subscribed with the token of `key`,
    /// returning how many were asked to close.
    pub fn kick_cable_token(&self, key: &str, reason: &str) -> usize {
        self.kick_where(|e| e.cable_token.as_deref() == Some(key), reason)
    }

    /// The keys of the `pubsub_token`s live `/cable` connections subscribed with, each once.
    pub fn cable_tokens(&self) -> Vec<String> {
        let reg = self.connections.lock().expect("registry lock");
        let keys: std::collections::BTreeSet<&String> = reg
            .entries
            .values()
            .filter_map(|e| e.cable_token.as_ref())
            .collect();
        keys.into_iter().cloned().collect()
    }

    /// A receiver that turns true when the node begins to shut down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Marks the node as draining: `/readyz` answers 503 so that load balancers stop sending
    /// new clients, while everything keeps working.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`begin_drain`](Self::begin_drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
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
