//! WebTransport transport (HTTP/3 over QUIC, via wtransport).
//!
//! - The client opens one bidirectional **control stream**: Hello, requests, replies,
//!   pongs and the final Disconnect travel on it as length-delimited frames.
//! - The server opens one **unidirectional stream per joined room** and writes that room's
//!   events on it in order, so a room the client reads slowly never delays another. When the
//!   peer's stream credit (or `max_room_streams`) runs out, further rooms share the existing
//!   streams; a room never moves between streams, so its order holds.
//! - Typing travels as **datagrams** when the peer supports them and the frame fits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use rtgate_protocol::{DisconnectCode, FrameDecoder, RoomName};
use tokio::sync::{oneshot, watch};
use wtransport::endpoint::IncomingSession;
use wtransport::{Connection, Endpoint, RecvStream, SendStream, ServerConfig, VarInt};

use super::{TransportKind, WriterCloser};
use crate::connection::{Closer, Incoming, RoomLanes, Transport, drive};
use crate::ids::ConnectionId;
use crate::node::{ConnControl, Node};
use crate::outbox::{DatagramSink, Lane, LaneReceiver, Outbox, Queued};

/// The path WebTransport sessions are accepted on.
pub const PATH: &str = "/wt";

/// Frames beyond this many are written in one go.
const WRITE_BATCH: usize = 64;

/// QUIC settings sized for a gateway: a client opens its control stream (and HTTP/3 its
/// own few), so stream limits are small — quinn keeps per-stream state for every stream
/// the peer may open — and clients send little.
pub fn transport_config() -> wtransport::config::QuicTransportConfig {
    use wtransport::quinn::VarInt as QVarInt;
    let mut t = wtransport::config::QuicTransportConfig::default();
    t.max_concurrent_bidi_streams(QVarInt::from_u32(8));
    t.max_concurrent_uni_streams(QVarInt::from_u32(8));
    t.datagram_receive_buffer_size(Some(64 * 1024));
    // One datagram per send call: segmentation offload would keep a ~15 KB transmit
    // buffer per connection for batches an event gateway rarely sends.
    t.enable_segmentation_offload(false);
    t
}

/// Binds the QUIC endpoint with the given server config.
pub fn bind(config: ServerConfig) -> std::io::Result<Endpoint<wtransport::endpoint::endpoint_side::Server>> {
    Endpoint::server(config)
}

/// How the accept loop treats QUIC handshakes before they cost any state.
#[derive(Debug, Clone)]
pub struct HandshakePolicy {
    /// Time from the first packet to the WebTransport session request.
    pub timeout: std::time::Duration,
    /// Most handshakes in progress; beyond, new ones are refused.
    pub max_in_flight: usize,
    /// Ask for address validation (Retry) once this many are in progress (0: always,
    /// `usize::MAX`: never).
    pub retry_above: usize,
    /// Most handshakes in progress from one client address (0: no limit), so that one
    /// client cannot take the whole `max_in_flight`.
    pub max_per_ip: usize,
}

/// Handshakes in progress, in all and per client address.
#[derive(Debug)]
struct InFlight {
    total: std::sync::atomic::AtomicUsize,
    per_ip: Arc<crate::admission::AddressSlots>,
}

/// A handshake's place, held from its first packet to its session request.
struct HandshakeSlot {
    in_flight: Arc<InFlight>,
    _address: Arc<crate::admission::AddressSlot>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.in_flight
            .total
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What to do with a new QUIC connection attempt, given how many handshakes are in
/// progress: pure, so that the policy is tested without sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeDecision {
    /// Go on with the handshake.
    Accept,
    /// Answer with a Retry: the client proves its address first, at no cost to us.
    Retry,
    /// Refuse outright.
    Refuse,
}

impl HandshakePolicy {
    /// The decision for an attempt when `in_flight` handshakes are in progress.
    pub fn decide(&self, in_flight: usize, address_validated: bool) -> HandshakeDecision {
        if in_flight >= self.max_in_flight {
            HandshakeDecision::Refuse
        } else if !address_validated && in_flight >= self.retry_above {
            HandshakeDecision::Retry
        } else {
            HandshakeDecision::Accept
        }
    }
}

/// Accepts sessions on every endpoint until shutdown begins; then drains the node and
/// closes the endpoints. The handshake budgets are shared by all endpoints.
pub async fn accept_loop(
    node: Arc<Node>,
    endpoints: Vec<Endpoint<wtransport::endpoint::endpoint_side::Server>>,
    policy: HandshakePolicy,
    shutdown: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(InFlight {
        total: Default::default(),
        per_ip: crate::admission::AddressSlots::new(policy.max_per_ip),
    });
    let loops: Vec<_> = endpoints
        .into_iter()
        .enumerate()
        .map(|(index, endpoint)| {
            tokio::spawn(accept_on(
                node.clone(),
                endpoint,
                index,
                policy.clone(),
                in_flight.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    let mut endpoints = Vec::with_capacity(loops.len());
    for task in loops {
        if let Ok(endpoint) = task.await {
            endpoints.push(endpoint);
        }
    }
    // Refuse new sessions while the existing ones are drained.
    let _ = node.drain(std::time::Duration::from_secs(3600)).await;
    for endpoint in endpoints {
        endpoint.close(VarInt::from_u32(DisconnectCode::Shutdown.code()), b"shutdown");
    }
}

/// Accepts sessions on one endpoint until shutdown begins; gives the endpoint back.
async fn accept_on(
    node: Arc<Node>,
    endpoint: Endpoint<wtransport::endpoint::endpoint_side::Server>,
    index: usize,
    policy: HandshakePolicy,
    in_flight: Arc<InFlight>,
    mut shutdown: watch::Receiver<bool>,
) -> Endpoint<wtransport::endpoint::endpoint_side::Server> {
    let handshakes =
        metrics::counter!("rtgate_webtransport_handshakes_total", "endpoint" => index.to_string());
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let n = in_flight.total.load(std::sync::atomic::Ordering::Relaxed);
                match policy.decide(n, incoming.remote_address_validated()) {
                    HandshakeDecision::Refuse => {
                        metrics::counter!("rtgate_handshakes_refused_total", "reason" => "in_flight").increment(1);
                        incoming.refuse();
                        continue;
                    }
                    HandshakeDecision::Retry => {
                        metrics::counter!("rtgate_handshakes_retried_total").increment(1);
                        incoming.retry();
                        continue;
                    }
                    HandshakeDecision::Accept => {}
                }
                let ip = incoming.remote_address().ip();
                let Some(handshake_of_ip) = in_flight.per_ip.acquire(ip) else {
                    metrics::counter!("rtgate_handshakes_refused_total", "reason" => "per_ip").increment(1);
                    incoming.refuse();
                    continue;
                };
                let Some(address) = node.addresses.acquire(ip) else {
                    metrics::counter!("rtgate_connections_refused_total", "reason" => "per_ip").increment(1);
                    incoming.refuse();
                    continue;
                };
                // Paced after the checks: attempts refused at once cost no share of the rate.
                node.pacer.ready().await;
                in_flight.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                handshakes.increment(1);
                let slot = HandshakeSlot {
                    in_flight: in_flight.clone(),
                    _address: handshake_of_ip,
                };
                tokio::spawn(handle(node.clone(), incoming, policy.timeout, slot, address));
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    endpoint
}

/// A session past its handshake, with its control stream.
struct Established {
    conn: ConnectionId,
    control_rx: oneshot::Receiver<ConnControl>,
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
}

async fn handle(
    node: Arc<Node>,
    incoming: IncomingSession,
    timeout: std::time::Duration,
    slot: HandshakeSlot,
    _address: Arc<crate::admission::AddressSlot>,
) {
    // The handshake's futures are large and short-lived: boxed, they are freed once the
    // session is up instead of sizing this task for its whole life.
    let Some(session) = Box::pin(establish(&node, incoming, timeout, slot)).await else {
        return;
    };
    serve(node, session).await;
}

async fn establish(
    node: &Arc<Node>,
    incoming: IncomingSession,
    timeout: std::time::Duration,
    slot: HandshakeSlot,
) -> Option<Established> {
    let ip = incoming.remote_address().ip();
    // Dropping the handshake drops the QUIC connection with it: a client that never gets
    // to its session request holds nothing past the deadline.
    let request = match tokio::time::timeout(timeout, incoming.into_future()).await {
        Ok(Ok(r)) => r,
        Ok(Err(err)) => {
            tracing::debug!(%err, "webtransport handshake failed");
            return None;
        }
        Err(_) => {
            metrics::counter!("rtgate_handshakes_refused_total", "reason" => "timeout").increment(1);
            tracing::debug!("webtransport handshake timed out");
            return None;
        }
    };
    drop(slot);
    if request.path() != PATH {
        request.not_found().await;
        return None;
    }
    let (conn, control_rx) = match node.register(TransportKind::WebTransport, ip) {
        Ok(registered) => registered,
        Err(_) => {
            request.too_many_requests().await;
            return None;
        }
    };
    let connection = match request.accept().await {
        Ok(c) => c,
        Err(err) => {
            tracing::debug!(%err, "webtransport session not established");
            node.deregister(conn);
            return None;
        }
    };
    let control = tokio::time::timeout(node.session.hello_timeout, connection.accept_bi()).await;
    let (send, recv) = match control {
        Ok(Ok(streams)) => streams,
        _ => {
            connection.close(
                VarInt::from_u32(DisconnectCode::HelloTimeout.code()),
                b"no control stream",
            );
            node.deregister(conn);
            return None;
        }
    };
    let remote: SocketAddr = connection.remote_address();
    tracing::debug!(%conn, %remote, "webtransport session");
    Some(Established {
        conn,
        control_rx,
        connection,
        send,
        recv,
    })
}

async fn serve(node: Arc<Node>, session: Established) {
    let Established {
        conn,
        control_rx,
        connection,
        send,
        recv,
    } = session;

    // Read by the driver itself: no task or queue of its own per connection.
    let control = control_frames(recv, node.session.max_frame_size);
    let incoming = if connection.max_datagram_size().is_some() {
        stream::select(control, datagrams(connection.clone())).boxed()
    } else {
        control
    };

    let outbox = Outbox::new(node.limits.send_queue_bytes);
    let (control_lane, control_rx_lane) = Lane::new(&outbox);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = tokio::spawn(write_control(send, control_rx_lane, close_rx, connection.clone()));
    let datagrams: Option<Arc<dyn DatagramSink>> = connection
        .max_datagram_size()
        .map(|_| Arc::new(Datagrams(connection.clone())) as Arc<dyn DatagramSink>);
    let transport = Transport {
        kind: TransportKind::WebTransport,
        control: control_lane,
        lanes: Box::new(StreamLanes {
            connection: connection.clone(),
            outbox,
            max_streams: node.limits.max_room_streams,
            rooms: HashMap::new(),
            streams: Vec::new(),
            next_shared: 0,
        }),
        datagrams,
        closer: Box::new(WtCloser {
            writer: WriterCloser {
                signal: close_tx,
                writer,
                timeout: node.limits.close_flush_timeout,
            },
            connection: connection.clone(),
        }),
    };
    Box::pin(drive(node, conn, control_rx, incoming, transport)).await;
}

/// The control stream as frames: ends with `Closed` (or a framing error).
fn control_frames(recv: RecvStream, max: usize) -> BoxStream<'static, Incoming> {
    struct Reader {
        recv: RecvStream,
        decoder: FrameDecoder,
        done: bool,
    }
    let reader = Reader {
        recv,
        decoder: FrameDecoder::new(max),
        done: false,
    };
    stream::unfold(reader, move |mut r| async move {
        if r.done {
            return None;
        }
        loop {
            match r.decoder.next_frame() {
                Ok(Some(body)) => return Some((Incoming::Frame(body), r)),
                Ok(None) => {}
                Err(err) => {
                    r.done = true;
                    return Some((Incoming::FramingError(err), r));
                }
            }
            match r.recv.quic_stream_mut().read_chunk(max.max(4096), true).await {
                Ok(Some(chunk)) => {
                    metrics::counter!("rtgate_bytes_received_total", "transport" => "webtransport")
                        .increment(chunk.bytes.len() as u64);
                    r.decoder.push(&chunk.bytes);
                }
                Ok(None) | Err(_) => {
                    r.done = true;
                    return Some((Incoming::Closed, r));
                }
            }
        }
    })
    .boxed()
}

/// The session's datagrams.
fn datagrams(connection: Connection) -> BoxStream<'static, Incoming> {
    stream::unfold(connection, |c| async move {
        let d = c.receive_datagram().await.ok()?;
        Some((Incoming::Datagram(d.payload()), c))
    })
    .boxed()
}

fn prefix(len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(prost::length_delimiter_len(len));
    prost::encode_length_delimiter(len, &mut buf).expect("capacity reserved");
    buf.freeze()
}

/// Writes queued frames (length-prefixed) until the lane closes. Returns false if the
/// stream broke.
async fn write_frames(send: &mut SendStream, rx: &mut LaneReceiver, first: Queued) -> bool {
    let mut chunks = Vec::with_capacity(2);
    let mut timings = Vec::with_capacity(1);
    let mut n = 0;
    let mut next = Some(first);
    while let Some(q) = next {
        n += q.frame.len();
        chunks.push(prefix(q.frame.len()));
        chunks.push(q.frame.clone());
        timings.push(q);
        next = if chunks.len() < WRITE_BATCH * 2 {
            rx.try_recv_queued()
        } else {
            None
        };
    }
    let ok = send.quic_stream_mut().write_all_chunks(&mut chunks).await.is_ok();
    rx.written(n);
    if ok {
        metrics::counter!("rtgate_bytes_sent_total", "transport" => "webtransport").increment(n as u64);
        for q in timings {
            q.record_written();
        }
    }
    ok
}

async fn write_control(
    mut send: SendStream,
    mut rx: LaneReceiver,
    mut close_rx: oneshot::Receiver<(DisconnectCode, String)>,
    connection: Connection,
) {
    loop {
        tokio::select! {
            biased;
            frame = rx.recv_queued() => {
                let Some(frame) = frame else { break };
                if !write_frames(&mut send, &mut rx, frame).await {
                    return;
                }
            }
            closing = &mut close_rx => {
                let (code, reason) = closing.unwrap_or((DisconnectCode::Normal, String::new()));
                while let Some(frame) = rx.try_recv_queued() {
                    if !write_frames(&mut send, &mut rx, frame).await {
                        break;
                    }
                }
                let _ = send.finish().await;
                // Give the peer a moment to read the Disconnect frame before the session ends.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(200), send.stopped()).await;
                close_session(&connection, code, &reason).await;
                return;
            }
        }
    }
}

/// Ends the session the WebTransport way: a CLOSE_WEBTRANSPORT_SESSION capsule with the
/// disconnect code and reason (browsers report them in `WebTransport.closed`), then, once
/// the peer has answered or after a second, the QUIC connection.
async fn close_session(connection: &Connection, code: DisconnectCode, reason: &str) {
    let reason = reason.as_bytes();
    let capsule = async {
        if connection.close_session(code.code(), reason).await.is_ok() {
            connection.closed().await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), capsule).await;
    connection.close(VarInt::from_u32(code.code()), reason);
}

async fn write_room_stream(opening: BoxFuture<'static, Option<SendStream>>, mut rx: LaneReceiver) {
    let Some(first) = rx.recv_queued().await else {
        return;
    };
    let Some(mut send) = opening.await else {
        rx.written(first.frame.len());
        while let Some(f) = rx.recv().await {
            rx.written(f.len());
        }
        return;
    };
    let mut next = Some(first);
    while let Some(frame) = next {
        if !write_frames(&mut send, &mut rx, frame).await {
            // The client stopped the stream: drain so the budget stays honest.
            while let Some(f) = rx.recv().await {
                rx.written(f.len());
            }
            return;
        }
        next = rx.recv_queued().await;
    }
    let _ = send.finish().await;
}

struct StreamSlot {
    lane: Lane,
    rooms: usize,
}

struct StreamLanes {
    connection: Connection,
    outbox: Arc<Outbox>,
    max_streams: usize,
    rooms: HashMap<RoomName, usize>,
    streams: Vec<Option<StreamSlot>>,
    next_shared: usize,
}

impl StreamLanes {
    fn open_stream(&mut self, opening: BoxFuture<'static, Option<SendStream>>) -> usize {
        let (lane, rx) = Lane::new(&self.outbox);
        tokio::spawn(write_room_stream(opening, rx));
        let slot = StreamSlot { lane, rooms: 0 };
        match self.streams.iter().position(Option::is_none) {
            Some(i) => {
                self.streams[i] = Some(slot);
                i
            }
            None => {
                self.streams.push(Some(slot));
                self.streams.len() - 1
            }
        }
    }
}

impl RoomLanes for StreamLanes {
    fn lane(&mut self, room: &RoomName) -> Lane {
        let open = self.streams.iter().flatten().count();
        let slot = if open == 0 {
            // No stream to share yet: wait for credit.
            let connection = self.connection.clone();
            self.open_stream(Box::pin(async move {
                let opening = connection.open_uni().await.ok()?;
                opening.await.ok()
            }))
        } else if open < self.max_streams
            && let Some(Ok(opening)) = self.connection.open_uni().now_or_never()
        {
            self.open_stream(Box::pin(async move { opening.await.ok() }))
        } else {
            // Out of stream credit: share the stream carrying the fewest rooms.
            self.next_shared += 1;
            let (i, _) = self
                .streams
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.rooms)))
                .min_by_key(|(i, rooms)| (*rooms, (*i + self.next_shared) % self.streams.len()))
                .expect("at least one stream is open");
            i
        };
        let s = self.streams[slot].as_mut().expect("slot just chosen");
        s.rooms += 1;
        self.rooms.insert(room.clone(), slot);
        s.lane.clone()
    }

    fn release(&mut self, room: &RoomName) {
        let Some(slot) = self.rooms.remove(room) else {
            return;
        };
        if let Some(s) = self.streams[slot].as_mut() {
            s.rooms -= 1;
            if s.rooms == 0 {
                // Dropping the last lane finishes the stream once its queue is written.
                self.streams[slot] = None;
            }
        }
    }
}

#[derive(Debug)]
struct Datagrams(Connection);

impl DatagramSink for Datagrams {
    fn send_datagram(&self, frame: Bytes) -> bool {
        self.0.send_datagram(frame).is_ok()
    }
}

struct WtCloser {
    writer: WriterCloser<(DisconnectCode, String)>,
    connection: Connection,
}

impl Closer for WtCloser {
    fn close(self: Box<Self>, code: DisconnectCode, reason: String) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.writer.close((code, reason.clone())).await;
            // In case the writer was cut short by the flush timeout.
            self.connection
                .close(VarInt::from_u32(code.code()), reason.as_bytes());
        })
    }
}
