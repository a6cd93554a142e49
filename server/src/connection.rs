//! The connection driver: runs one [`Session`] against one transport and the engine.
//! Transport adapters deliver [`Incoming`] items and provide lanes to write to; this
//! module turns session actions into engine calls and frames, and nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use prost::Message;
use rtgate_protocol::pb::{self, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, FrameError, RoomName};
use tokio::sync::oneshot;

use crate::engine::with_timeout;
use crate::hub::{Pumped, ReplayCursor, Subscriber};
use crate::ids::ConnectionId;
use crate::node::{ConnControl, Node};
use crate::outbox::{DatagramSink, Lane};
use crate::presence;
use crate::session::{Action, Session};

/// What a transport reads from the client.
#[derive(Debug)]
pub enum Incoming {
    /// One frame body from the control path.
    Frame(Bytes),
    /// One datagram.
    Datagram(Bytes),
    /// The control path could not be framed; nothing more will come.
    FramingError(FrameError),
    /// The transport's own protocol was violated (WebSocket framing, …); nothing more
    /// will come.
    ProtocolError(String),
    /// The client went away.
    Closed,
}

/// Lanes for room events: one per room stream on WebTransport, the socket on WebSocket.
pub trait RoomLanes: Send {
    /// The lane carrying `room`'s events.
    fn lane(&mut self, room: &RoomName) -> Lane;
    /// `room` was left; its stream may be finished.
    fn release(&mut self, room: &RoomName);
}

/// Closes a transport once its last frames are flushed.
pub trait Closer: Send {
    /// Flushes what is queued (bounded by a timeout) and closes with `code`.
    fn close(self: Box<Self>, code: DisconnectCode, reason: String) -> BoxFuture<'static, ()>;
}

/// Everything the driver needs from a transport.
pub struct TransportHandle {
    /// `"webtransport"` or `"websocket"`.
    pub kind: &'static str,
    /// Frames and datagrams read from the client.
    pub incoming: BoxStream<'static, Incoming>,
    /// The control path.
    pub control: Lane,
    /// Room event lanes.
    pub lanes: Box<dyn RoomLanes>,
    /// Unreliable datagrams, when the peer supports them.
    pub datagrams: Option<Arc<dyn DatagramSink>>,
    /// Closes the transport.
    pub closer: Box<dyn Closer>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode(frame: &pb::ServerFrame) -> Bytes {
    Bytes::from(frame.encode_to_vec())
}

/// Runs a connection to its end. `conn` and `control_rx` come from [`Node::register`].
pub async fn drive(
    node: Arc<Node>,
    conn: ConnectionId,
    mut control_rx: oneshot::Receiver<ConnControl>,
    mut t: TransportHandle,
) {
    let mut session = Session::new(
        node.session.clone(),
        node.auth.clone(),
        format!("{}-{}", node.session.node_id, conn.0),
        Instant::now(),
        unix_ms(),
    );
    let engine = node.engine.clone();
    let outbox = t.control.outbox().clone();
    let mut shutdown = node.shutdown_signal();
    let mut subs: HashMap<RoomName, Arc<Subscriber>> = HashMap::new();
    // Rooms whose replay is going out at the client's pace.
    let mut replays: Vec<RoomName> = Vec::new();
    let mut identified = None;
    let close: (DisconnectCode, String);
    let mut peer_gone = false;
    let mut control_open = true;
    if *shutdown.borrow_and_update() {
        session.close(DisconnectCode::Shutdown, "gateway shutting down");
    }

    'run: loop {
        while let Some(action) = session.poll_action() {
            match action {
                Action::Send(frame) => {
                    let _ = t.control.send(encode(&frame));
                }
                Action::Activate(room) => {
                    if let Some(sub) = subs.get(&room) {
                        match sub.activate() {
                            Pumped::Done => {}
                            Pumped::Waiting => replays.push(room),
                            Pumped::NeedPage(cursor) => {
                                replays.push(room.clone());
                                if let Err(reason) = fetch_page(&node, sub, &room, &cursor, &outbox).await {
                                    session.close(DisconnectCode::ServerError, &reason);
                                }
                            }
                        }
                    }
                }
                Action::Admit => {
                    let p = session.principal().expect("admission follows hello").clone();
                    match node.admit(conn, &p) {
                        Ok(()) => {
                            session.admitted(Ok(()));
                            node.presence.connected(presence::who(&p));
                            identified = Some(presence::who(&p));
                        }
                        Err(refusal) => session.admitted(Err(refusal.to_string())),
                    }
                }
                Action::AuthFailed(reason) => {
                    metrics::counter!("rtgate_auth_failures_total", "reason" => reason).increment(1);
                    tracing::info!(%conn, reason, "authentication failed");
                }
                Action::Close(code, reason) => {
                    close = (code, reason);
                    break 'run;
                }
                // Engine and presence calls run boxed: the driver's own state stays small
                // while the connection is idle.
                other => {
                    Box::pin(execute(&node, conn, &mut session, &mut subs, &mut t, other)).await;
                }
            }
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = outbox.overflowed() => session.close(DisconnectCode::SlowConsumer, "send queue overflow"),
            _ = outbox.below_replay_mark(), if !replays.is_empty() => {
                if let Err(reason) = pump_replays(&node, &subs, &mut replays, &outbox).await {
                    session.close(DisconnectCode::ServerError, &reason);
                }
            }
            ctl = &mut control_rx, if control_open => {
                control_open = false;
                if let Ok(ConnControl::Kick(reason)) = ctl {
                    session.close(DisconnectCode::Kicked, &reason);
                }
            }
            Ok(()) = shutdown.changed() => {
                if *shutdown.borrow() {
                    session.close(DisconnectCode::Shutdown, "gateway shutting down");
                }
            }
            incoming = t.incoming.next() => match incoming {
                Some(Incoming::Frame(body)) => {
                    session.handle_frame(&body, Instant::now());
                    if let Some(who) = identified {
                        node.presence.activity(who);
                    }
                }
                Some(Incoming::Datagram(body)) => session.handle_datagram(&body, Instant::now()),
                Some(Incoming::FramingError(err)) => session.handle_framing_error(&err),
                Some(Incoming::ProtocolError(reason)) => session.close(DisconnectCode::ProtocolViolation, &reason),
                Some(Incoming::Closed) | None => {
                    // Let the session wind down (typing indicators off) before cleanup.
                    peer_gone = true;
                    session.close(DisconnectCode::Normal, "client went away");
                }
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                session.handle_timeout(Instant::now());
            }
        }
    }

    for (room, sub) in subs.drain() {
        sub.close();
        engine.unsubscribe(&room, conn).await;
    }
    metrics::counter!("rtgate_disconnects_total", "transport" => t.kind, "reason" => close.0.label())
        .increment(1);
    if let Some(who) = identified {
        node.presence.disconnected(who);
    }
    let (code, reason) = close;
    tracing::debug!(%conn, transport = t.kind, code = code.label(), %reason, peer_gone, "connection closed");
    if !peer_gone {
        let frame = pb::ServerFrame {
            kind: Some(S::Disconnect(code.frame(reason.clone()))),
        };
        let _ = t.control.send_final(encode(&frame));
    }
    drop(t.lanes);
    t.closer.close(code, reason).await;
    // Only now: shutdown's drain waits until every client has been told why.
    node.deregister(conn);
}

/// Reads the next page of a room's replay and hands it to the subscriber (which sends
/// what the client's queue has room for). An engine that cannot be read ends the
/// connection: the client reconnects and recovers from its position.
async fn fetch_page(
    node: &Node,
    sub: &Subscriber,
    room: &RoomName,
    cursor: &ReplayCursor,
    outbox: &crate::outbox::Outbox,
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

/// Sends more of every replay in progress, reading pages as needed; forgets the finished.
async fn pump_replays(
    node: &Node,
    subs: &HashMap<RoomName, Arc<Subscriber>>,
    replays: &mut Vec<RoomName>,
    outbox: &crate::outbox::Outbox,
) -> Result<(), String> {
    let mut still = Vec::with_capacity(replays.len());
    for room in replays.drain(..) {
        let Some(sub) = subs.get(&room) else { continue };
        let state = match sub.pump() {
            Pumped::NeedPage(cursor) => fetch_page(node, sub, &room, &cursor, outbox).await?,
            other => other,
        };
        if state != Pumped::Done {
            still.push(room);
        }
    }
    *replays = still;
    Ok(())
}

/// Carries out an action that awaits the engine or the presence service.
async fn execute(
    node: &Arc<Node>,
    conn: ConnectionId,
    session: &mut Session,
    subs: &mut HashMap<RoomName, Arc<Subscriber>>,
    t: &mut TransportHandle,
    action: Action,
) {
    let engine = &node.engine;
    match action {
        Action::Join { room, since } => {
            let principal = session.principal().expect("joins follow hello");
            let sub = Subscriber::new(
                conn,
                room.clone(),
                principal.own_room(),
                principal.is_contact(),
                t.lanes.lane(&room),
                t.datagrams.clone(),
            );
            subs.insert(room.clone(), sub.clone());
            let result = with_timeout(engine.subscribe(sub, since)).await;
            session.join_done(&room, result, Instant::now());
        }
        Action::Leave(room) => {
            if let Some(sub) = subs.remove(&room) {
                sub.close();
            }
            engine.unsubscribe(&room, conn).await;
            t.lanes.release(&room);
        }
        Action::Publish { id, room, event } => {
            // Client events carry server-made ids: no idempotency key to honour.
            let result = with_timeout(engine.publish(&room, &event.encode_to_vec(), None))
                .await
                .map(|p| p.pos);
            if result.is_ok() {
                metrics::counter!("rtgate_events_published_total", "source" => "client").increment(1);
            }
            session.publish_done(id, result);
        }
        Action::Ephemeral { room, event, private } => {
            let frame = encode(&pb::ServerFrame {
                kind: Some(S::Ephemeral(pb::Ephemeral {
                    room: room.to_string(),
                    event: Some(event),
                })),
            });
            let me = session.principal().map(|p| p.own_room());
            if let Err(err) = engine
                .publish_ephemeral(&room, frame, me.as_ref().map(|r| r.as_str()), private)
                .await
            {
                tracing::debug!(%conn, %room, %err, "ephemeral event dropped");
            }
        }
        Action::SetAvailability { id, availability } => {
            let p = session.principal().expect("requests follow hello");
            let (account, user) = (p.account_id, p.id);
            let result = node.presence.set_availability(account, user, availability).await;
            session.answer(id, result.map(|_| None));
        }
        Action::QueryPresence { id } => {
            let account = session.principal().expect("requests follow hello").account_id;
            let result = node.presence.snapshot(account).await;
            session.answer(id, result.map(Some));
        }
        Action::Send(_) | Action::Admit | Action::Activate(_) | Action::AuthFailed(_) | Action::Close(..) => {
            unreachable!("handled by the driver")
        }
    }
}
