//! The one place where a session's actions meet the node: the [`Conductor`] owns a
//! [`Session`] and carries out what it asks (engine joins and publishes, admission,
//! presence, frames onto the transport's lanes), feeding the results back in.
//!
//! It does no waiting of its own and reads no clock: the tokio driver ([`super::drive`])
//! and the in-memory test harness both feed it inputs with the instant they happened and
//! call [`Conductor::settle`] after each, so the two cannot drift apart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use rtgate_protocol::pb::{self, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, FrameError, RoomName};

use super::Transport;
use crate::auth::PrincipalId;
use crate::engine::with_timeout;
use crate::hub::{Pumped, ReplayCursor, Subscriber};
use crate::ids::ConnectionId;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::session::{Action, Session};

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The code sent in `Disconnect`.
    pub code: DisconnectCode,
    /// The reason sent with it.
    pub reason: String,
}

fn encode(frame: &pb::ServerFrame) -> Bytes {
    Bytes::from(frame.encode_to_vec())
}

/// One connection's session, subscriptions and transport, driven by inputs.
pub struct Conductor {
    node: Arc<Node>,
    conn: ConnectionId,
    session: Session,
    transport: Transport,
    subs: HashMap<RoomName, Arc<Subscriber>>,
    /// Rooms whose replay is going out at the client's pace.
    replays: Vec<RoomName>,
    /// Set once admitted: the presence of this connection's principal.
    identified: Option<PrincipalId>,
    /// The client is gone: nothing more is sent to it.
    peer_gone: bool,
}

impl std::fmt::Debug for Conductor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conductor")
            .field("conn", &self.conn)
            .field("transport", &self.transport.kind)
            .field("rooms", &self.subs.len())
            .finish()
    }
}

impl Conductor {
    /// A connection registered as `conn` (see [`Node::register`]) that started at `now`,
    /// when the wall clock read `unix_ms`.
    pub fn new(
        node: Arc<Node>,
        conn: ConnectionId,
        transport: Transport,
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        let session = Session::new(
            node.session.clone(),
            node.auth.clone(),
            format!("{}-{}", node.session.node_id, conn.0),
            now,
            unix_ms,
        );
        let mut conductor = Conductor {
            node,
            conn,
            session,
            transport,
            subs: HashMap::new(),
            replays: Vec::new(),
            identified: None,
            peer_gone: false,
        };
        if conductor.node.is_shutting_down() {
            conductor.shutdown();
        }
        conductor
    }

    /// The session (for inspection).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The connection's send budget.
    pub fn outbox(&self) -> &Arc<Outbox> {
        self.transport.control.outbox()
    }

    /// When [`timeout`](Self::timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    /// Whether replays are waiting for the client to read what is queued.
    pub fn is_replaying(&self) -> bool {
        !self.replays.is_empty()
    }

    /// A frame body from the control path.
    pub fn frame(&mut self, body: &[u8], now: Instant) {
        self.session.handle_frame(body, now);
        if let Some(who) = self.identified {
            self.node.presence.activity(who);
        }
    }

    /// The transport authenticated the client (see [`super::Incoming::Authenticated`]).
    pub fn authenticated(
        &mut self,
        principal: crate::auth::Principal,
        recover: &[pb::RoomPosition],
        now: Instant,
    ) {
        self.session.authenticated(principal, recover, now);
    }

    /// A datagram.
    pub fn datagram(&mut self, body: &[u8], now: Instant) {
        self.session.handle_datagram(body, now);
    }

    /// The control path could not be framed.
    pub fn framing_error(&mut self, err: &FrameError) {
        self.session.handle_framing_error(err);
    }

    /// The transport's own protocol was violated.
    pub fn protocol_error(&mut self, reason: &str) {
        self.session.close(DisconnectCode::ProtocolViolation, reason);
    }

    /// The transport failed for a reason of the server's.
    pub fn failed(&mut self, reason: &str) {
        self.session.close(DisconnectCode::ServerError, reason);
    }

    /// The client went away: the session winds down (typing indicators off), nothing
    /// more is sent.
    pub fn peer_closed(&mut self) {
        self.peer_gone = true;
        self.session.close(DisconnectCode::Normal, "client went away");
    }

    /// Time passed: fire the session's timers due at `now`.
    pub fn timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
    }

    /// The send budget was exceeded.
    pub fn overflowed(&mut self) {
        self.session
            .close(DisconnectCode::SlowConsumer, "send queue overflow");
    }

    /// The node asked this connection to close (disconnect-user, revocation).
    pub fn kicked(&mut self, reason: &str) {
        self.session.close(DisconnectCode::Kicked, reason);
    }

    /// The gateway is shutting down.
    pub fn shutdown(&mut self) {
        self.session
            .close(DisconnectCode::Shutdown, "gateway shutting down");
    }

    /// Carries out every action the session has asked for, feeding results back (which
    /// may ask for more), until it has nothing left to ask. `clock` tells the time when a
    /// result comes back (after an engine call). Returns how the connection ends once the
    /// session has closed; then call [`finish`](Self::finish).
    pub async fn settle(&mut self, clock: &(dyn Fn() -> Instant + Sync)) -> Option<Ending> {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(frame) => {
                    let _ = self.transport.control.send(encode(&frame));
                }
                Action::Close(code, reason) => return Some(Ending { code, reason }),
                // Engine and presence calls run boxed: the driver's own state stays small
                // while the connection is idle.
                other => Box::pin(self.execute(other, clock)).await,
            }
        }
        None
    }

    /// Sends more of every replay in progress, reading pages as needed (call when the
    /// client has read enough of its queue: [`Outbox::below_replay_mark`]).
    pub async fn pump_replays(&mut self) {
        let mut still = Vec::with_capacity(self.replays.len());
        let mut failed = None;
        for room in std::mem::take(&mut self.replays) {
            let Some(sub) = self.subs.get(&room) else { continue };
            let state = match sub.pump() {
                Pumped::NeedPage(cursor) if failed.is_none() => {
                    match fetch_page(&self.node, sub, &room, &cursor, self.transport.control.outbox()).await {
                        Ok(state) => state,
                        Err(reason) => {
                            failed = Some(reason);
                            Pumped::Waiting
                        }
                    }
                }
                other => other,
            };
            if state != Pumped::Done {
                still.push(room);
            }
        }
        self.replays = still;
        if let Some(reason) = failed {
            self.session.close(DisconnectCode::ServerError, &reason);
        }
    }

    async fn execute(&mut self, action: Action, clock: &(dyn Fn() -> Instant + Sync)) {
        let node = self.node.clone();
        let engine = &node.engine;
        match action {
            Action::Admit => {
                let p = self.session.principal().expect("admission follows hello").clone();
                match node.admit(self.conn, &p) {
                    Ok(()) => {
                        self.session.admitted(Ok(()));
                        node.presence.connected(p.principal_id());
                        self.identified = Some(p.principal_id());
                    }
                    Err(refusal) => self.session.admitted(Err(refusal.to_string())),
                }
            }
            Action::AuthFailed(reason) => {
                metrics::counter!("rtgate_auth_failures_total", "reason" => reason).increment(1);
                tracing::info!(conn = %self.conn, reason, "authentication failed");
            }
            Action::Join { room, since } => {
                let principal = self.session.principal().expect("joins follow hello");
                let sub = Subscriber::new(
                    self.conn,
                    room.clone(),
                    principal.own_room(),
                    principal.is_contact(),
                    self.transport.lanes.lane(&room),
                    self.transport.datagrams.clone(),
                );
                self.subs.insert(room.clone(), sub.clone());
                let result = with_timeout(engine.subscribe(sub, since)).await;
                self.session.join_done(&room, result, clock());
            }
            Action::Activate(room) => {
                let Some(sub) = self.subs.get(&room) else { return };
                match sub.activate() {
                    Pumped::Done => {}
                    Pumped::Waiting => self.replays.push(room),
                    Pumped::NeedPage(cursor) => {
                        self.replays.push(room.clone());
                        if let Err(reason) =
                            fetch_page(&node, sub, &room, &cursor, self.transport.control.outbox()).await
                        {
                            self.session.close(DisconnectCode::ServerError, &reason);
                        }
                    }
                }
            }
            Action::Leave(room) => {
                if let Some(sub) = self.subs.remove(&room) {
                    sub.close();
                }
                engine.unsubscribe(&room, self.conn).await;
                self.transport.lanes.release(&room);
            }
            Action::Publish { id, room, event } => {
                // Client events carry server-made ids: no idempotency key to honour.
                let result = with_timeout(engine.publish(&room, &event.encode_to_vec(), None))
                    .await
                    .map(|p| p.pos);
                if result.is_ok() {
                    metrics::counter!("rtgate_events_published_total", "source" => "client").increment(1);
                }
                self.session.publish_done(id, result);
            }
            Action::Ephemeral { room, event, private } => {
                let frame = encode(&pb::ServerFrame {
                    kind: Some(S::Ephemeral(pb::Ephemeral {
                        room: room.to_string(),
                        event: Some(event),
                    })),
                });
                let me = self.session.principal().map(|p| p.own_room());
                if let Err(err) = engine
                    .publish_ephemeral(&room, frame, me.as_ref().map(|r| r.as_str()), private)
                    .await
                {
                    tracing::debug!(conn = %self.conn, %room, %err, "ephemeral event dropped");
                }
            }
            Action::SetAvailability { id, availability } => {
                let p = self.session.principal().expect("requests follow hello");
                let (account, user) = (p.account_id, p.id);
                let result = node.presence.set_availability(account, user, availability).await;
                self.session.answer(id, result.map(|_| None));
            }
            Action::QueryPresence { id } => {
                let account = self
                    .session
                    .principal()
                    .expect("requests follow hello")
                    .account_id;
                let result = node.presence.snapshot(account).await;
                self.session.answer(id, result.map(Some));
            }
            Action::Send(_) | Action::Close(..) => unreachable!("handled by settle"),
        }
    }

    /// Ends the connection: leaves every room, tells presence, sends `Disconnect` (unless
    /// the client is gone), closes the transport and only then deregisters — shutdown's
    /// drain waits until every client has been told why.
    pub async fn finish(self, ending: Ending) {
        let Conductor {
            node,
            conn,
            transport,
            mut subs,
            identified,
            peer_gone,
            ..
        } = self;
        for (room, sub) in subs.drain() {
            sub.close();
            node.engine.unsubscribe(&room, conn).await;
        }
        metrics::counter!(
            "rtgate_disconnects_total",
            "transport" => transport.kind.label(),
            "reason" => ending.code.label()
        )
        .increment(1);
        if let Some(who) = identified {
            node.presence.disconnected(who);
        }
        let Ending { code, reason } = ending;
        tracing::debug!(%conn, transport = %transport.kind, code = code.label(), %reason, peer_gone, "connection closed");
        if !peer_gone {
            let frame = pb::ServerFrame {
                kind: Some(S::Disconnect(code.frame(reason.clone()))),
            };
            let _ = transport.control.send_final(encode(&frame));
        }
        let Transport { lanes, closer, .. } = transport;
        drop(lanes);
        closer.close(code, reason).await;
        node.deregister(conn);
    }
}

/// Reads the next page of a room's replay and hands it to the subscriber (which sends
/// what the client's queue has room for). An engine that cannot be read ends the
/// connection: the client reconnects and recovers from its position.
async fn fetch_page(
    node: &Node,
    sub: &Subscriber,
    room: &RoomName,
    cursor: &ReplayCursor,
    outbox: &Outbox,
) -> Result<Pumped, String> {
    let mut cursor = cursor.clone();
    loop {
        let page = with_timeout(node.engine.replay_page(room, &cursor, outbox.replay_mark()))
            .await
            .map_err(|e| format!("cannot read the replay of {room}: {e}"))?;
        match sub.add_page(page) {
            Pumped::NeedPage(next) => cursor = next,
            other => return Ok(other),
        }
    }
}
