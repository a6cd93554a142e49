//! The client side: a worker process holding a share of the connections. The coordinator
//! re-executes this binary as `rtgate-bench worker` and talks to it in JSON lines: the
//! first stdin line is a [`Plan`], then [`Command`]s; every stdout line is a [`Report`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use rtgate_client::{
    Client, ClientConfig, ClientEvent, SharedEndpoint, TransportPreference, fixed_token,
    webtransport_endpoint,
};
use rtgate_protocol::{RoomKind, RoomName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;

use crate::target::{Node, Transport, mint_token, mint_token_as};
use crate::util::unix_us;

/// Highest latency recorded, µs (larger values are clamped).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A fresh latency histogram (µs, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

/// Serialises a histogram to base64 (HdrHistogram V2 format).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialising to memory");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Parses what [`encode_histogram`] wrote.
pub fn decode_histogram(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| e.to_string())?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("{e:?}"))
}

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Gateway nodes; connection `i` goes to node `i % nodes.len()`.
    pub nodes: Vec<Node>,
    /// Transport choice (`mix`: alternate per node).
    pub transport: Transport,
    /// Global index of this worker's first connection.
    pub first: u64,
    /// How many connections.
    pub count: u64,
    /// Members per room; 0 for idle connections that join nothing.
    pub room_size: u64,
    /// Rooms are `public:<account>:<prefix>-<n>`.
    pub room_prefix: String,
    /// HS256 secret to mint tokens with.
    pub jwt_secret: String,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Timeout of one connect (and of one subscribe), ms.
    pub connect_timeout_ms: u64,
    /// Whether clients reconnect.
    pub reconnect: bool,
    /// Chatwoot-shaped rooms instead of public ones: room `n` is the inbox `inbox:<n+1>`,
    /// whose members are agents with that inbox in their token, but its last member, a
    /// contact (its own room `contact:<i+1>`), the inbox's contact side.
    #[serde(default)]
    pub inbox_rooms: bool,
}

impl Plan {
    /// Node index, transport and room of connection `i`.
    pub fn layout(&self, i: u64) -> (usize, Transport, Option<u64>) {
        let n = self.nodes.len() as u64;
        let node = (i % n) as usize;
        let transport = match self.transport {
            Transport::Mix if (i / n).is_multiple_of(2) => Transport::Ws,
            Transport::Mix => Transport::Wt,
            t => t,
        };
        let room = (self.room_size > 0).then(|| i / self.room_size);
        (node, transport, room)
    }
}

/// The account of connection `i`: accounts of [`AGENTS_PER_ACCOUNT`](crate::target::AGENTS_PER_ACCOUNT)
/// connections; a room's members all take the account of its first member, since public
/// rooms never cross accounts.
pub fn account_of(i: u64, room_size: u64) -> u64 {
    let first = i.checked_div(room_size).map_or(i, |room| room * room_size);
    1 + first / crate::target::AGENTS_PER_ACCOUNT
}

/// Room name of room `n` (rooms of `room_size` connections).
pub fn room_name(prefix: &str, n: u64, room_size: u64) -> String {
    format!("public:{}:{prefix}-{n}", account_of(n * room_size, room_size))
}

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Report the latency histogram and counters; reset them if asked.
    Snapshot {
        /// Start a new measurement window.
        reset: bool,
    },
    /// Report connection states.
    Status,
    /// Close every client and exit.
    Close,
}

/// Connection counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Connected right now.
    pub connected_now: i64,
    /// Disconnected and not yet back with every room live.
    pub down: i64,
    /// Disconnect events seen.
    pub disconnects: u64,
    /// Rooms resumed with every missed event replayed.
    pub resumed_ok: u64,
    /// Rooms whose recovery failed (events lost for good).
    pub recovery_failed: u64,
    /// Latest moment a client came back, µs since the epoch.
    pub last_back_us: u64,
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// The connect phase is over.
    Ready {
        /// Connections that got a Welcome (and joined their room).
        connected: u64,
        /// Connections that did not.
        failed: u64,
        /// Seconds from the first connect attempt to the last success.
        connect_secs: f64,
        /// Members per room: (room number, subscribed members).
        members: Vec<(u64, u32)>,
        /// A few error messages.
        errors: Vec<String>,
        /// This worker's resident set, KiB.
        rss_kb: u64,
    },
    /// Deliveries since the last reset.
    Snapshot {
        /// Unique deliveries.
        received: u64,
        /// Deliveries whose offset was not above the last one seen.
        duplicates: u64,
        /// Latency histogram (µs), [`encode_histogram`].
        hist: String,
        /// Counters.
        status: Status,
        /// This worker's resident set, KiB.
        rss_kb: u64,
    },
    /// Connection states.
    Status(Status),
    /// Every client closed.
    Closed,
}

const SHARDS: usize = 16;

struct Shared {
    hist: Vec<Mutex<Histogram<u64>>>,
    received: AtomicU64,
    duplicates: AtomicU64,
    connected_now: AtomicI64,
    down: AtomicI64,
    disconnects: AtomicU64,
    resumed_ok: AtomicU64,
    recovery_failed: AtomicU64,
    last_back_us: AtomicU64,
}

impl Shared {
    fn status(&self) -> Status {
        Status {
            connected_now: self.connected_now.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            resumed_ok: self.resumed_ok.load(Ordering::Relaxed),
            recovery_failed: self.recovery_failed.load(Ordering::Relaxed),
            last_back_us: self.last_back_us.load(Ordering::Relaxed),
        }
    }

    fn back(&self) {
        self.down.fetch_sub(1, Ordering::Relaxed);
        self.last_back_us.fetch_max(unix_us(), Ordering::Relaxed);
    }
}

fn emit(report: &Report) {
    use std::io::Write;
    let line = serde_json::to_string(report).expect("serialisable");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Parses the send time a publish carried in `json` (µs since the epoch): a bare number,
/// or a JSON object's `sent_us` (domain events' payloads are objects).
pub fn sent_us(json: &str) -> Option<u64> {
    let json = json.trim();
    if json.starts_with('{') {
        return serde_json::from_str::<serde_json::Value>(json).ok()?["sent_us"].as_u64();
    }
    json.parse().ok()
}

/// Whether connection `i` is its inbox room's contact (the room's last member).
pub fn is_contact(i: u64, room_size: u64) -> bool {
    room_size > 1 && i % room_size == room_size - 1
}

async fn pump(
    shard: usize,
    has_room: bool,
    shared: Arc<Shared>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<ClientEvent>,
) {
    let mut last_offset: HashMap<RoomName, u64> = HashMap::new();
    let mut down = false;
    while let Some(event) = events.recv().await {
        match event {
            ClientEvent::Event { room, offset, event } => {
                let Some(sent) = sent_us(&event.json) else {
                    continue;
                };
                let last = last_offset.entry(room).or_insert(0);
                if offset <= *last {
                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                *last = offset;
                let latency = unix_us().saturating_sub(sent).clamp(1, MAX_LATENCY_US);
                shared.received.fetch_add(1, Ordering::Relaxed);
                let mut h = shared.hist[shard].lock().expect("not poisoned");
                let _ = h.record(latency);
            }
            ClientEvent::Connected(_) => {
                shared.connected_now.fetch_add(1, Ordering::Relaxed);
                if down && !has_room {
                    down = false;
                    shared.back();
                }
            }
            ClientEvent::Subscribed {
                room,
                resumed,
                recovered,
                ..
            } => {
                if !matches!(room.kind(), RoomKind::Public(_) | RoomKind::Inbox(_)) {
                    continue;
                }
                if resumed && recovered {
                    shared.resumed_ok.fetch_add(1, Ordering::Relaxed);
                }
                if down {
                    down = false;
                    shared.back();
                }
            }
            ClientEvent::RecoveryFailed { room } => {
                shared.recovery_failed.fetch_add(1, Ordering::Relaxed);
                last_offset.remove(&room);
            }
            ClientEvent::Disconnected { .. } => {
                shared.disconnects.fetch_add(1, Ordering::Relaxed);
                shared.connected_now.fetch_sub(1, Ordering::Relaxed);
                if !down {
                    down = true;
                    shared.down.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

enum Outcome {
    Ok(Client, Option<u64>),
    Failed(String),
}

/// QUIC endpoints (UDP sockets) per node that a worker's WebTransport clients share: one
/// endpoint per client would make the clients, not the gateway, the bottleneck.
const ENDPOINTS_PER_NODE: usize = 16;

/// A node's certificate hash as bytes.
pub fn cert_of(node: &crate::target::Node) -> Option<[u8; 32]> {
    node.cert_hex.as_deref().and_then(|h| {
        let bytes = hex::decode(h).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok()
    })
}

async fn open(i: u64, plan: &Plan, endpoints: &[Vec<SharedEndpoint>], shared: Arc<Shared>) -> Outcome {
    let (node_index, transport, room) = plan.layout(i);
    let node = &plan.nodes[node_index];
    // `sub` must be a positive integer user id.
    let account = account_of(i, plan.room_size);
    let contact = plan.inbox_rooms && is_contact(i, plan.room_size);
    let token = match (plan.inbox_rooms, room) {
        (true, Some(_)) if contact => {
            mint_token_as(&plan.jwt_secret, &(i + 1).to_string(), account, "contact", vec![])
        }
        (true, Some(room)) => mint_token_as(
            &plan.jwt_secret,
            &(i + 1).to_string(),
            account,
            "agent",
            vec![room + 1],
        ),
        _ => mint_token(&plan.jwt_secret, &(i + 1).to_string(), account),
    };
    let mut config = ClientConfig::new(node.wt_url.clone(), node.ws_url.clone(), fixed_token(token));
    config.prefer = match transport {
        Transport::Wt => TransportPreference::WebTransport,
        _ => TransportPreference::WebSocket,
    };
    config.cert_sha256 = cert_of(node);
    let pool = &endpoints[node_index];
    config.wt_endpoint = Some(pool[i as usize % pool.len()].clone());
    let timeout = Duration::from_millis(plan.connect_timeout_ms);
    config.connect_timeout = timeout;
    config.reconnect = plan.reconnect;
    config.name = "rtgate-bench".into();
    let (client, events) = Client::connect(config);
    tokio::spawn(pump((i as usize) % SHARDS, room.is_some(), shared, events));
    match tokio::time::timeout(timeout, client.connected()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            client.close();
            return Outcome::Failed(format!("connect: {e}"));
        }
        Err(_) => {
            client.close();
            return Outcome::Failed("connect timed out".into());
        }
    }
    if let Some(room) = room.filter(|_| !contact) {
        let name = if plan.inbox_rooms {
            format!("inbox:{}", room + 1)
        } else {
            room_name(&plan.room_prefix, room, plan.room_size)
        };
        match tokio::time::timeout(timeout, client.subscribe(&name, None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                client.close();
                return Outcome::Failed(format!("subscribe: {e}"));
            }
            Err(_) => {
                client.close();
                return Outcome::Failed("subscribe timed out".into());
            }
        }
    }
    Outcome::Ok(client, room)
}

fn own_rss() -> u64 {
    crate::util::sample(std::process::id()).map_or(0, |s| s.rss_kb)
}

/// Runs a worker: reads the plan and commands from stdin, reports on stdout.
pub async fn run() -> Result<(), String> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no plan on stdin")?;
    let plan: Plan = serde_json::from_str(&first).map_err(|e| format!("plan: {e}"))?;
    for node in &plan.nodes {
        node.validate()?;
    }
    let endpoints = plan
        .nodes
        .iter()
        .map(|n| {
            (0..ENDPOINTS_PER_NODE)
                .map(|_| webtransport_endpoint(cert_of(n)))
                .collect()
        })
        .collect::<Result<Vec<Vec<_>>, _>>()?;
    let endpoints = Arc::new(endpoints);
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared {
        hist: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        connected_now: AtomicI64::new(0),
        down: AtomicI64::new(0),
        disconnects: AtomicU64::new(0),
        resumed_ok: AtomicU64::new(0),
        recovery_failed: AtomicU64::new(0),
        last_back_us: AtomicU64::new(0),
    });

    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(plan.count as usize);
    for i in plan.first..plan.first + plan.count {
        let plan = plan.clone();
        let endpoints = endpoints.clone();
        let shared = shared.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let outcome = open(i, &plan, &endpoints, shared).await;
            (outcome, started.elapsed())
        }));
    }
    let mut clients = Vec::with_capacity(tasks.len());
    let mut members: HashMap<u64, u32> = HashMap::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut failed = 0;
    let mut last_ok = Duration::ZERO;
    for task in tasks {
        match task.await {
            Ok((Outcome::Ok(client, room), at)) => {
                clients.push(client);
                if let Some(room) = room {
                    *members.entry(room).or_default() += 1;
                }
                last_ok = last_ok.max(at);
            }
            Ok((Outcome::Failed(e), _)) => {
                failed += 1;
                *errors.entry(e).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                *errors.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    let mut members: Vec<(u64, u32)> = members.into_iter().collect();
    members.sort_unstable();
    emit(&Report::Ready {
        connected: clients.len() as u64,
        failed,
        connect_secs: last_ok.as_secs_f64(),
        members,
        errors: errors
            .into_iter()
            .take(5)
            .map(|(e, n)| format!("{n}× {e}"))
            .collect(),
        rss_kb: own_rss(),
    });

    while let Ok(Some(line)) = lines.next_line().await {
        let cmd: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => return Err(format!("command {line:?}: {e}")),
        };
        match cmd {
            Command::Snapshot { reset } => {
                let mut merged = new_histogram();
                for shard in &shared.hist {
                    let mut h = shard.lock().expect("not poisoned");
                    merged.add(&*h).expect("same bounds");
                    if reset {
                        h.reset();
                    }
                }
                let (received, duplicates) = if reset {
                    (
                        shared.received.swap(0, Ordering::Relaxed),
                        shared.duplicates.swap(0, Ordering::Relaxed),
                    )
                } else {
                    (
                        shared.received.load(Ordering::Relaxed),
                        shared.duplicates.load(Ordering::Relaxed),
                    )
                };
                emit(&Report::Snapshot {
                    received,
                    duplicates,
                    hist: encode_histogram(&merged),
                    status: shared.status(),
                    rss_kb: own_rss(),
                });
            }
            Command::Status => emit(&Report::Status(shared.status())),
            Command::Close => break,
        }
    }
    for c in &clients {
        c.close();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    emit(&Report::Closed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip() {
        let mut h = new_histogram();
        for v in [1, 10, 100, 1000, 10_000] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn layout_spreads_nodes_and_transports() {
        let node = Node {
            wt_url: "https://127.0.0.1:1/wt".into(),
            ws_url: "ws://127.0.0.1:2/ws".into(),
            api_url: "http://127.0.0.1:2".into(),
            cert_hex: None,
        };
        let plan = Plan {
            nodes: vec![node.clone(), node],
            transport: Transport::Mix,
            first: 0,
            count: 8,
            room_size: 4,
            room_prefix: "x".into(),
            jwt_secret: String::new(),
            connect_concurrency: 1,
            connect_timeout_ms: 1,
            reconnect: false,
            inbox_rooms: false,
        };
        assert_eq!(plan.layout(0), (0, Transport::Ws, Some(0)));
        assert_eq!(plan.layout(1), (1, Transport::Ws, Some(0)));
        assert_eq!(plan.layout(2), (0, Transport::Wt, Some(0)));
        assert_eq!(plan.layout(5), (1, Transport::Ws, Some(1)));
    }

    #[test]
    fn send_times_are_read_from_numbers_and_from_domain_event_payloads() {
        assert_eq!(sent_us(" 123 "), Some(123));
        assert_eq!(sent_us(r#"{"account_id":1,"id":5,"sent_us":456}"#), Some(456));
        assert_eq!(sent_us(r#"{"id":5}"#), None);
        // Rooms of 10: members 0–8 are agents, 9 the contact.
        assert!(!is_contact(8, 10) && is_contact(9, 10) && is_contact(19, 10));
        assert!(!is_contact(0, 1), "a room of one has no contact");
    }
}
