//! HTTP fallback transport, for networks that let nothing through but plain HTTP
//! requests: `GET /http/stream` answers with a response that does not end, carrying the
//! server's frames length-prefixed (as on a WebTransport stream); the client's frames come
//! in `POST /http/send` requests (the session and the send's number in headers), numbered
//! so that a retried request is taken once.
//!
//! A POST may reach any node (no sticky sessions): the session id names the node that
//! holds the stream, and a node that does not hold it passes the frames on through the
//! engine's control channel ([`ControlMessage::HttpFrames`]). Session ids carry a MAC under
//! a key the nodes share (derived from the API key), so that a forged one is refused
//! where it lands instead of costing every node a message.
//!
//! [`ControlMessage::HttpFrames`]: crate::engine::bus::ControlMessage::HttpFrames

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use rtgate_protocol::{DisconnectCode, FrameDecoder, FrameError};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use super::websocket::SocketLanes;
use super::{TransportKind, WriterCloser};
use crate::connection::{Closer, Incoming, Transport, drive};
use crate::node::Node;
use crate::outbox::{Lane, LaneReceiver, Outbox, Queued};
use crate::ratelimit::TokenBucket;

/// The response header naming the stream's session, to be quoted by every send.
pub const SESSION_HEADER: &str = "rtgate-session";

/// The request header numbering a send.
pub const SEQ_HEADER: &str = "rtgate-seq";

/// Client frames that may wait for the session before sends are refused (429).
const INCOMING_QUEUE: usize = 256;

/// Most frames one send may carry.
pub const MAX_SEND_FRAMES: usize = 64;

/// Frames beyond this many are written as one chunk before the next.
const WRITE_BATCH: usize = 64;

/// What became of a numbered batch of client frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Handed to the session.
    Taken,
    /// Taken before (a retried request): nothing done.
    Duplicate,
    /// An earlier batch has not arrived yet: try again shortly.
    Early,
    /// The session is behind on its frames: try again later.
    Busy,
    /// The batch was not a sequence of frames; the session closes.
    Malformed,
    /// The batch carries more than [`MAX_SEND_FRAMES`] frames; nothing was taken.
    TooMany,
    /// A batch passed on by another node could not be taken (one before it was lost, or
    /// the session was behind): the session closes with `server_error`, and the client
    /// reconnects and recovers.
    Lost,
    /// No such session here.
    Unknown,
}

/// What became of a batch passed on to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassedOn {
    /// Published to the other nodes.
    Sent,
    /// This node's budget for the session or the client's address is spent.
    OverBudget,
    /// No other node listens: the session cannot exist.
    NoOtherNode,
    /// The engine did not answer.
    Unreachable,
}

/// A client frame, or why the send it came in was not frames: all the queue carries
/// (smaller than an [`Incoming`], whose every slot the queue allocates).
type ClientItem = Result<Bytes, FrameError>;

struct Entry {
    tx: mpsc::Sender<ClientItem>,
    next_seq: u64,
    /// Closes the session with `server_error` (it always has room, unlike `tx`).
    fail: Option<oneshot::Sender<String>>,
}

impl Entry {
    fn fail(&mut self, reason: String) -> Delivered {
        if let Some(fail) = self.fail.take() {
            let _ = fail.send(reason);
        }
        Delivered::Lost
    }
}

/// Bytes per second one session may have passed on to another node (and the burst).
const FORWARD_SESSION_RATE: (f64, f64) = (256.0 * 1024.0, 1024.0 * 1024.0);
/// Bytes per second one client address may have passed on to other nodes (and the burst):
/// generous, as a whole office behind one proxy shares an address.
const FORWARD_ADDRESS_RATE: (f64, f64) = (4.0 * 1024.0 * 1024.0, 8.0 * 1024.0 * 1024.0);
/// Budgets kept before the idle ones are forgotten.
const FORWARD_BUDGETS: usize = 4096;

/// What this node passes on to other nodes' sessions, per session and per client
/// address: a send through Redis reaches every node, so one client must not make them all
/// carry a flood (a session id is valid for its whole life, even before `Hello`).
#[derive(Debug, Default)]
pub struct ForwardBudget {
    sessions: HashMap<String, TokenBucket>,
    addresses: HashMap<std::net::IpAddr, TokenBucket>,
}

impl ForwardBudget {
    /// Takes `bytes` from the budgets of `session` and `ip` at `now`; false (nothing
    /// taken) when either is spent.
    pub fn take(&mut self, session: &str, ip: std::net::IpAddr, bytes: usize, now: Instant) -> bool {
        if self.sessions.len() + self.addresses.len() > FORWARD_BUDGETS {
            self.sessions.retain(|_, b| !b.is_full(now));
            self.addresses.retain(|_, b| !b.is_full(now));
            // Still that many busy ones: nothing new until some are idle (memory stays
            // bounded; the refused send is answered 429 and comes again).
            if self.sessions.len() + self.addresses.len() > FORWARD_BUDGETS
                && !(self.sessions.contains_key(session) && self.addresses.contains_key(&ip))
            {
                return false;
            }
        }
        let bytes = bytes.max(1) as f64;
        let address = self
            .addresses
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(FORWARD_ADDRESS_RATE.0, FORWARD_ADDRESS_RATE.1, now));
        let mut probe = address.clone();
        if !probe.take_n(bytes, now) {
            return false;
        }
        let session = self
            .sessions
            .entry(session.to_string())
            .or_insert_with(|| TokenBucket::new(FORWARD_SESSION_RATE.0, FORWARD_SESSION_RATE.1, now));
        if !session.take_n(bytes, now) {
            return false;
        }
        *address = probe;
        true
    }
}

/// The HTTP streams this node holds, by session id, the key their ids are signed with, and
/// what it passes on to other nodes.
#[derive(Default)]
pub struct Streams {
    map: Mutex<HashMap<String, Entry>>,
    key: std::sync::OnceLock<[u8; 32]>,
    /// Sends passed on to other nodes.
    forward_budget: Mutex<ForwardBudget>,
}

impl Streams {
    /// Sets the key session ids are signed with: the same on every node of a gateway
    /// (until set, a random one: a single node's own).
    pub fn set_key(&self, key: [u8; 32]) {
        let _ = self.key.set(key);
    }

    fn mac(&self) -> Hmac<Sha256> {
        let key = self.key.get_or_init(rand::random);
        Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
    }

    /// A session id: 128 random bits and their MAC, then the node that holds the stream.
    fn new_session_id(&self, node_id: &str) -> String {
        let secret = format!("{:032x}", rand::random::<u128>());
        let mut mac = self.mac();
        mac.update(format!("{secret}-{node_id}").as_bytes());
        let tag = &mac.finalize().into_bytes()[..16];
        format!("{secret}{}-{node_id}", hex::encode(tag))
    }

    /// The node named by a session id of this gateway's; `None` for anything else (a
    /// forged or mangled id).
    pub fn owner_of<'a>(&self, session: &'a str) -> Option<&'a str> {
        let (signed, node) = session.split_once('-')?;
        if signed.len() != 64 || !signed.is_ascii() || node.is_empty() {
            return None;
        }
        let (secret, tag) = signed.split_at(32);
        let tag = hex::decode(tag).ok()?;
        let mut mac = self.mac();
        mac.update(format!("{secret}-{node}").as_bytes());
        mac.verify_truncated_left(&tag).ok()?;
        Some(node)
    }

    fn insert(&self, id: String, tx: mpsc::Sender<ClientItem>, fail: oneshot::Sender<String>) {
        self.map.lock().expect("streams lock").insert(
            id,
            Entry {
                tx,
                next_seq: 0,
                fail: Some(fail),
            },
        );
    }

    fn remove(&self, id: &str) {
        self.map.lock().expect("streams lock").remove(id);
    }

    /// How many streams this node holds.
    pub fn len(&self) -> usize {
        self.map.lock().expect("streams lock").len()
    }

    /// Whether this node holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands batch `seq` of client frames (each length-prefixed, frames of at most `max`
    /// bytes) to session `id`. Batches are taken in order, each once. `forwarded`: the
    /// batch came through another node, whose client already has its answer: an early
    /// batch then means one was lost, and a batch that finds the session behind cannot be
    /// refused; either closes the session ([`Delivered::Lost`]).
    pub fn deliver(&self, id: &str, seq: u64, body: &[u8], max: usize, forwarded: bool) -> Delivered {
        // Parsed before the lock every stream of the node shares.
        let parsed = split_frames(body, max);
        let mut map = self.map.lock().expect("streams lock");
        let Some(entry) = map.get_mut(id) else {
            return Delivered::Unknown;
        };
        if seq < entry.next_seq {
            return Delivered::Duplicate;
        }
        if seq > entry.next_seq {
            if forwarded {
                let reason = format!(
                    "client frames were lost: batch {seq} came before {}",
                    entry.next_seq
                );
                return entry.fail(reason);
            }
            return Delivered::Early;
        }
        let frames = match parsed {
            Ok(frames) => frames,
            Err(err) => {
                let _ = entry.tx.try_send(Err(err));
                entry.next_seq += 1;
                return Delivered::Malformed;
            }
        };
        if frames.len() > MAX_SEND_FRAMES {
            return Delivered::TooMany;
        }
        if entry.tx.capacity() < frames.len() {
            if forwarded {
                return entry.fail("the session fell behind on the client's frames".into());
            }
            return Delivered::Busy;
        }
        for frame in frames {
            // Room was checked under the lock; no other sender adds frames.
            let _ = entry.tx.try_send(Ok(frame));
        }
        entry.next_seq += 1;
        drop(map);
        metrics::counter!("rtgate_bytes_received_total", "transport" => "http").increment(body.len() as u64);
        Delivered::Taken
    }

    /// Passes batch `seq` of session `session`, whose stream `owner` holds, on to that node
    /// through the engine's control channel, within this node's budget for the session and
    /// for the client's address `ip`.
    pub async fn pass_on(
        &self,
        node: &Node,
        owner: &str,
        session: &str,
        seq: u64,
        body: &[u8],
        ip: std::net::IpAddr,
    ) -> PassedOn {
        let ip = crate::admission::canonical_ip(ip);
        let allowed =
            self.forward_budget
                .lock()
                .expect("budget lock")
                .take(session, ip, body.len(), Instant::now());
        if !allowed {
            return PassedOn::OverBudget;
        }
        let message = crate::engine::bus::ControlMessage::HttpFrames {
            target: owner.to_string(),
            session: session.to_string(),
            seq,
            frames: body.to_vec(),
        };
        match crate::engine::with_timeout(node.engine.broadcast_control(&message)).await {
            Ok(0) => PassedOn::NoOtherNode,
            Ok(_) => PassedOn::Sent,
            Err(_) => PassedOn::Unreachable,
        }
    }
}

/// Splits a send's body into frame bodies.
pub fn split_frames(body: &[u8], max: usize) -> Result<Vec<Bytes>, FrameError> {
    let mut decoder = FrameDecoder::new(max);
    decoder.push(body);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }
    if decoder.buffered() > 0 {
        return Err(FrameError::Decode(
            "a send ended inside a frame; each send carries whole frames".into(),
        ));
    }
    Ok(frames)
}

/// The most bytes one send may carry: four frames of the largest size.
pub fn max_send_bytes(node: &Node) -> usize {
    node.session.max_frame_size * 4
}

struct HttpCloser(WriterCloser<()>);

impl Closer for HttpCloser {
    fn close(self: Box<Self>, _code: DisconnectCode, _reason: String) -> BoxFuture<'static, ()> {
        // The Disconnect frame is already queued; the response simply ends after it.
        Box::pin(self.0.close(()))
    }
}

/// The body of a response that ends at once, after one `Disconnect`.
fn refusal_body(code: DisconnectCode, reason: String) -> Bytes {
    rtgate_protocol::encode_frame(&rtgate_protocol::pb::ServerFrame {
        kind: Some(rtgate_protocol::pb::server_frame::Kind::Disconnect(
            code.frame(reason),
        )),
    })
}

/// What `GET /http/stream` answers with: the session id and the stream of server frames.
pub struct Opened {
    /// The session id (absent when the connection was refused).
    pub session: Option<String>,
    /// The response body.
    pub body: axum::body::Body,
}

/// Opens a stream: registers the connection, starts its session, and returns the body
/// that carries the session's frames. `client` (its address and slot) is held until the
/// session ends.
pub fn open(node: Arc<Node>, client: Option<crate::http::ClientConn>) -> Opened {
    let ip = client
        .as_ref()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.addr.ip());
    let (conn, control_rx) = match node.register(TransportKind::Http, ip) {
        Ok(registered) => registered,
        Err(refusal) => {
            let code = refusal.code();
            return Opened {
                session: None,
                body: axum::body::Body::from(refusal_body(code, refusal.to_string())),
            };
        }
    };
    let session = node.http_streams.new_session_id(&node.session.node_id);
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    let (fail_tx, fail_rx) = oneshot::channel::<String>();
    node.http_streams.insert(session.clone(), incoming_tx, fail_tx);

    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(2);
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    // The client's frames; `Closed` once the response is gone (or the writer ended);
    // `Failed` when client frames were lost on their way through another node.
    let ends = futures::stream::select(
        futures::stream::once(async move {
            let _ = gone_rx.await;
            Incoming::Closed
        }),
        futures::stream::once(fail_rx).filter_map(|r| futures::future::ready(r.ok().map(Incoming::Failed))),
    );
    let frames = receiver_stream(incoming_rx).map(|item| match item {
        Ok(frame) => Incoming::Frame(frame),
        Err(err) => Incoming::FramingError(err),
    });
    let incoming = futures::stream::select(frames, ends).boxed();

    let outbox = Outbox::new(node.limits.send_queue_bytes);
    let (lane, lane_rx) = Lane::new(&outbox);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = tokio::spawn(write_loop(body_tx, lane_rx, close_rx, gone_tx));
    let transport = Transport {
        kind: TransportKind::Http,
        control: lane.clone(),
        lanes: Box::new(SocketLanes(lane)),
        datagrams: None,
        closer: Box::new(HttpCloser(WriterCloser {
            signal: close_tx,
            writer,
            timeout: node.limits.close_flush_timeout,
        })),
    };
    let id = session.clone();
    tokio::spawn(async move {
        let _slot = client.map(|c| c.slot);
        Box::pin(drive(node.clone(), conn, control_rx, incoming, transport)).await;
        node.http_streams.remove(&id);
    });
    Opened {
        session: Some(session),
        body: axum::body::Body::from_stream(receiver_stream(body_rx)),
    }
}

/// Writes queued frames, length-prefixed, one chunk per batch, until told to close or the
/// client goes away (`gone` then fires).
async fn write_loop(
    body: mpsc::Sender<Result<Bytes, Infallible>>,
    mut rx: LaneReceiver,
    mut close_rx: oneshot::Receiver<()>,
    gone: oneshot::Sender<()>,
) {
    let mut batch: Vec<Queued> = Vec::new();
    loop {
        tokio::select! {
            biased;
            frame = rx.recv_queued() => {
                let Some(frame) = frame else { break };
                batch.push(frame);
                rx.fill_batch(&mut batch, WRITE_BATCH);
                let n: usize = batch.iter().map(|q| q.frame.len()).sum();
                let mut chunk = BytesMut::with_capacity(n + batch.len() * 3);
                for q in &batch {
                    put_frame(&mut chunk, &q.frame);
                }
                if body.send(Ok(chunk.freeze())).await.is_err() {
                    let _ = gone.send(());
                    return;
                }
                rx.written(n);
                metrics::counter!("rtgate_bytes_sent_total", "transport" => "http").increment(n as u64);
                for q in batch.drain(..) {
                    q.record_written();
                }
                if batch.capacity() > WRITE_BATCH * 4 {
                    batch = Vec::new();
                }
            }
            _ = &mut close_rx => {
                let mut chunk = BytesMut::new();
                while let Some(frame) = rx.try_recv() {
                    put_frame(&mut chunk, &frame);
                }
                if !chunk.is_empty() {
                    let _ = body.send(Ok(chunk.freeze())).await;
                }
                // Dropping the sender ends the response.
                return;
            }
            () = body.closed() => {
                let _ = gone.send(());
                return;
            }
        }
    }
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> futures::stream::BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

fn put_frame(chunk: &mut BytesMut, frame: &[u8]) {
    prost::encode_length_delimiter(frame.len(), chunk).expect("BytesMut grows on demand");
    chunk.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for b in bodies {
            put_frame(&mut out, b);
        }
        out.to_vec()
    }

    fn streams_with(id: &str, capacity: usize) -> (Streams, mpsc::Receiver<ClientItem>) {
        streams_failing(id, capacity).0
    }

    #[allow(clippy::type_complexity)]
    fn streams_failing(
        id: &str,
        capacity: usize,
    ) -> ((Streams, mpsc::Receiver<ClientItem>), oneshot::Receiver<String>) {
        let streams = Streams::default();
        let (tx, rx) = mpsc::channel(capacity);
        let (fail, failed) = oneshot::channel();
        streams.insert(id.to_string(), tx, fail);
        ((streams, rx), failed)
    }

    #[test]
    fn batches_are_taken_in_order_and_once() {
        let (streams, mut rx) = streams_with("s", 8);
        let body = frames(&[b"a", b"bc"]);
        assert_eq!(streams.deliver("s", 1, &body, 100, false), Delivered::Early);
        assert_eq!(streams.deliver("s", 0, &body, 100, false), Delivered::Taken);
        assert_eq!(streams.deliver("s", 0, &body, 100, false), Delivered::Duplicate);
        assert_eq!(
            streams.deliver("s", 1, &frames(&[b"d"]), 100, false),
            Delivered::Taken
        );
        let got: Vec<Bytes> = std::iter::from_fn(|| match rx.try_recv() {
            Ok(Ok(f)) => Some(f),
            _ => None,
        })
        .collect();
        assert_eq!(got, [&b"a"[..], b"bc", b"d"]);
        assert_eq!(streams.deliver("t", 0, &body, 100, false), Delivered::Unknown);
    }

    #[test]
    fn a_forwarded_batch_after_a_gap_closes_the_session_for_a_reconnect() {
        let ((streams, _rx), mut failed) = streams_failing("s", 8);
        assert_eq!(
            streams.deliver("s", 2, &frames(&[b"a"]), 100, true),
            Delivered::Lost
        );
        assert!(failed.try_recv().unwrap().contains("lost"));
    }

    #[test]
    fn a_forwarded_batch_that_finds_the_session_behind_closes_it_even_when_its_queue_is_full() {
        let ((streams, mut rx), mut failed) = streams_failing("s", 1);
        assert_eq!(
            streams.deliver("s", 0, &frames(&[b"a"]), 100, true),
            Delivered::Taken
        );
        assert_eq!(
            streams.deliver("s", 1, &frames(&[b"b"]), 100, true),
            Delivered::Lost
        );
        assert!(
            failed.try_recv().is_ok(),
            "the close does not need room in the queue"
        );
        assert!(matches!(rx.try_recv(), Ok(Ok(_))));
    }

    #[test]
    fn a_send_of_too_many_frames_is_refused_whole() {
        let (streams, mut rx) = streams_with("s", 256);
        let many: Vec<&[u8]> = vec![b"x"; MAX_SEND_FRAMES + 1];
        assert_eq!(
            streams.deliver("s", 0, &frames(&many), 100, false),
            Delivered::TooMany
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(
            streams.deliver("s", 0, &frames(&many[1..]), 100, false),
            Delivered::Taken
        );
    }

    #[test]
    fn a_full_session_refuses_the_whole_batch_and_takes_it_later() {
        let (streams, mut rx) = streams_with("s", 2);
        let body = frames(&[b"a", b"b", b"c"]);
        assert_eq!(streams.deliver("s", 0, &body, 100, false), Delivered::Busy);
        assert!(rx.try_recv().is_err(), "nothing of a refused batch is taken");
        assert_eq!(
            streams.deliver("s", 0, &frames(&[b"a", b"b"]), 100, false),
            Delivered::Taken
        );
    }

    #[test]
    fn sends_passed_on_are_bounded_per_session_and_per_address() {
        let t0 = Instant::now();
        let mut budget = ForwardBudget::default();
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        let big = 256 * 1024;
        // A session's burst (four full sends), then its rate.
        assert_eq!((0..10).filter(|_| budget.take("s1", ip, big, t0)).count(), 4);
        assert!(budget.take("s1", ip, big, t0 + Duration::from_secs(1)));
        assert!(!budget.take("s1", ip, big, t0 + Duration::from_secs(1)));
        // Other sessions of the address share its larger budget.
        let taken = (0..100)
            .filter(|n| budget.take(&format!("s{}", n + 2), ip, big, t0 + Duration::from_secs(1)))
            .count();
        assert!((20..=40).contains(&taken), "{taken}");
        // Another address is not held up; small sends pass.
        assert!(budget.take("t", [10, 0, 0, 2].into(), 100, t0 + Duration::from_secs(1)));
        // Idle budgets are forgotten once there are many; busy ones are bounded.
        let later = t0 + Duration::from_secs(60);
        for n in 0..5000u64 {
            assert!(budget.take(&format!("x{n}"), ip, 1, later + Duration::from_millis(n)));
        }
        assert!(
            budget.sessions.len() <= FORWARD_BUDGETS,
            "{}",
            budget.sessions.len()
        );
        let at_once = later + Duration::from_secs(10);
        let refused = (0..5000)
            .filter(|n| !budget.take(&format!("y{n}"), ip, 1, at_once))
            .count();
        assert!(refused > 0 && budget.sessions.len() <= FORWARD_BUDGETS + 1);
    }

    #[test]
    fn bad_batches_close_the_session_with_a_framing_error() {
        for body in [frames(&[&[0u8; 50]]), vec![0x05, 1, 2], vec![0xff; 11]] {
            let (streams, mut rx) = streams_with("s", 8);
            assert_eq!(streams.deliver("s", 0, &body, 10, false), Delivered::Malformed);
            assert!(matches!(rx.try_recv(), Ok(Err(_))), "{body:?}");
        }
    }

    #[test]
    fn session_ids_name_their_node_and_only_the_gateways_own_pass() {
        let (a, b) = (Streams::default(), Streams::default());
        a.set_key([7; 32]);
        b.set_key([7; 32]);
        let id = a.new_session_id("n-1.a");
        assert_eq!(a.owner_of(&id), Some("n-1.a"));
        assert_eq!(b.owner_of(&id), Some("n-1.a"), "another node of the gateway");
        assert_ne!(id, a.new_session_id("n-1.a"));
        let other = Streams::default();
        other.set_key([8; 32]);
        assert_eq!(other.owner_of(&id), None, "another gateway's key");
        let moved = id.replace("-n-1.a", "-n2");
        let mut flipped = id.clone().into_bytes();
        flipped[40] = if flipped[40] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let zeros = format!("{:064x}-n1", 1u8);
        let wide = format!("{}é{}-n1", "a".repeat(31), "a".repeat(31));
        for bad in ["", "abc-n1", &zeros, &id[..64], "n1", &moved, &flipped, &wide] {
            assert_eq!(a.owner_of(bad), None, "{bad}");
        }
    }
}
