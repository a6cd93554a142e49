//! The connection driver: runs one connection's [`Conductor`] on tokio. Transport
//! adapters deliver [`Incoming`] items and provide lanes to write to; the driver waits
//! for the next input (a frame, a timer, the send queue, a kick, shutdown) and hands it
//! to the conductor, which does the rest.

mod conductor;

pub use conductor::{Conductor, Ending};

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use rtgate_protocol::{DisconnectCode, FrameError, RoomName};
use tokio::sync::oneshot;

use crate::ids::ConnectionId;
use crate::node::{ConnControl, Node};
use crate::outbox::{DatagramSink, Lane};
use crate::transport::TransportKind;

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
    /// The transport authenticated the client itself (a `/cable` subscription), in place
    /// of a Hello; `recover` as a Hello's.
    Authenticated {
        /// Who it is.
        principal: crate::auth::Principal,
        /// Positions to recover the automatic rooms from.
        recover: Vec<rtgate_protocol::pb::RoomPosition>,
    },
    /// The transport cannot go on for a reason of the server's (a store it needs does
    /// not answer): the connection closes with `server_error` and the client retries.
    Failed(String),
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

/// What the conductor writes to and closes: the sending side of a transport.
pub struct Transport {
    /// Which transport.
    pub kind: TransportKind,
    /// The control path.
    pub control: Lane,
    /// Room event lanes.
    pub lanes: Box<dyn RoomLanes>,
    /// Unreliable datagrams, when the peer supports them.
    pub datagrams: Option<Arc<dyn DatagramSink>>,
    /// Closes the transport.
    pub closer: Box<dyn Closer>,
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs a connection to its end. `conn` and `control_rx` come from [`Node::register`];
/// `incoming` is what the transport reads from the client.
pub async fn drive(
    node: Arc<Node>,
    conn: ConnectionId,
    mut control_rx: oneshot::Receiver<ConnControl>,
    mut incoming: BoxStream<'static, Incoming>,
    transport: Transport,
) {
    let mut shutdown = node.shutdown_signal();
    shutdown.borrow_and_update();
    let mut c = Conductor::new(node, conn, transport, Instant::now(), unix_ms());
    let outbox = c.outbox().clone();
    let mut control_open = true;
    let ending = loop {
        if let Some(ending) = c.settle(&Instant::now).await {
            break ending;
        }
        let deadline = c.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = outbox.overflowed() => c.overflowed(),
            _ = outbox.below_replay_mark(), if c.is_replaying() => c.pump_replays().await,
            ctl = &mut control_rx, if control_open => {
                control_open = false;
                if let Ok(ConnControl::Kick(reason)) = ctl {
                    c.kicked(&reason);
                }
            }
            Ok(()) = shutdown.changed() => {
                if *shutdown.borrow() {
                    c.shutdown();
                }
            }
            incoming = incoming.next() => match incoming {
                Some(Incoming::Frame(body)) => c.frame(&body, Instant::now()),
                Some(Incoming::Datagram(body)) => c.datagram(&body, Instant::now()),
                Some(Incoming::Authenticated { principal, recover }) => {
                    c.authenticated(principal, &recover, Instant::now());
                }
                Some(Incoming::FramingError(err)) => c.framing_error(&err),
                Some(Incoming::ProtocolError(reason)) => c.protocol_error(&reason),
                Some(Incoming::Failed(reason)) => c.failed(&reason),
                Some(Incoming::Closed) | None => c.peer_closed(),
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                c.timeout(Instant::now());
            }
        }
    };
    c.finish(ending).await;
}
