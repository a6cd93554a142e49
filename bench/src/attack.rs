//! Exhaustion attacks on a gateway's budgets, from source addresses of their own:
//! slowloris, slow API bodies, silent WebSockets and QUIC handshakes that never ask for a
//! session. Every attack is bounded in sockets and time, runs on one thread of its own
//! and only ever targets loopback.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use wtransport::quinn;

use crate::report::Latency;

/// Most attacker sockets of one attack.
pub const MAX_SOCKETS: usize = 5000;

/// A connection the gateway closes within this time was refused, not timed out.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);

/// Size of a QUIC Initial datagram.
const INITIAL_SIZE: usize = 1200;

/// The attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// TCP connections trickling a request's headers one byte at a time.
    Slowloris,
    /// API publishes announcing a 1 MB body without a valid key, the body sent slowly.
    SlowBody,
    /// WebSocket upgrades that never send `Hello`.
    SilentWs,
    /// QUIC handshakes that never send the WebTransport session request, plus
    /// Initial-sized datagrams that are not QUIC.
    QuicHandshakes,
}

impl Kind {
    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Slowloris => "slowloris",
            Kind::SlowBody => "slow-body",
            Kind::SilentWs => "silent-ws",
            Kind::QuicHandshakes => "quic-handshakes",
        }
    }

    /// Sockets (connections held at once) when none are given.
    pub fn default_sockets(self) -> usize {
        match self {
            Kind::Slowloris => 2000,
            Kind::SlowBody => 200,
            Kind::SilentWs => 300,
            Kind::QuicHandshakes => 3000,
        }
    }
}

/// One attack.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which.
    pub kind: Kind,
    /// Connections held at once; each is reopened when the gateway closes it.
    pub sockets: usize,
    /// Source addresses the attacker's sockets bind to, socket `i` to `sources[i % n]`
    /// (QUIC: one endpoint, one UDP socket, per address).
    pub sources: Vec<IpAddr>,
    /// The gateway's HTTP/WebSocket listener.
    pub http: SocketAddr,
    /// The gateway's QUIC listener.
    pub quic: SocketAddr,
    /// How long.
    pub duration: Duration,
    /// Pause before a closed or failed socket is opened again.
    pub reopen_after: Duration,
    /// Non-QUIC Initial-sized datagrams per second (quic-handshakes only; 0: none).
    pub flood_rate: u64,
}

/// What the attacker saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Connection attempts (TCP connects, QUIC handshakes).
    pub attempts: u64,
    /// Attempts that never became a connection (TCP connect error, QUIC handshake
    /// refused, failed or timed out).
    pub failed: u64,
    /// Connections established (TCP connected, QUIC handshake complete).
    pub opened: u64,
    /// Established connections the gateway ended within 1 s (refusals at a budget).
    pub refused: u64,
    /// Established connections the gateway ended later (at a deadline).
    pub closed: u64,
    /// Connections still open when the attack ended.
    pub open_at_end: u64,
    /// Most connections open at once.
    pub open_peak: u64,
    /// How soon the gateway ended the connections it refused, ms.
    pub refused_after_ms: Latency,
    /// How long the gateway let the others live before ending them, ms.
    pub held_ms: Latency,
    /// How attempts ended, by what the gateway answered.
    pub outcomes: BTreeMap<String, u64>,
    /// Non-QUIC datagrams sent.
    pub datagrams: u64,
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    failed: AtomicU64,
    opened: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    open_at_end: AtomicU64,
    open_now: AtomicI64,
    open_peak: AtomicI64,
    datagrams: AtomicU64,
    outcomes: Mutex<BTreeMap<String, u64>>,
    refused_us: Mutex<Option<Histogram<u64>>>,
    held_us: Mutex<Option<Histogram<u64>>>,
}

fn record(h: &Mutex<Option<Histogram<u64>>>, d: Duration) {
    let mut h = h.lock().expect("not poisoned");
    let h = h.get_or_insert_with(crate::worker::new_histogram);
    let _ = h.record((d.as_micros() as u64).clamp(1, crate::worker::MAX_LATENCY_US));
}

fn latency(h: &Mutex<Option<Histogram<u64>>>) -> Latency {
    h.lock()
        .expect("not poisoned")
        .as_ref()
        .map(Latency::from_us)
        .unwrap_or_default()
}

/// How one attacker connection ended.
enum End {
    /// It never became a connection.
    Failed(String),
    /// The gateway ended it after `held`, answering `how`.
    Closed { held: Duration, how: String },
    /// The attack ended first.
    Held,
}

impl Counters {
    fn outcome(&self, label: String) {
        *self
            .outcomes
            .lock()
            .expect("not poisoned")
            .entry(label)
            .or_default() += 1;
    }

    fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let now = self.open_now.fetch_add(1, Ordering::Relaxed) + 1;
        self.open_peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Records how a connection ended (after [`opened`](Self::opened) unless failed).
    fn end(&self, end: End) {
        match end {
            End::Failed(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.outcome(why);
                return;
            }
            End::Closed { held, how } => {
                if held < REFUSED_WITHIN {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    record(&self.refused_us, held);
                } else {
                    self.closed.fetch_add(1, Ordering::Relaxed);
                    record(&self.held_us, held);
                }
                self.outcome(how);
            }
            End::Held => {
                self.open_at_end.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.open_now.fetch_sub(1, Ordering::Relaxed);
    }

    fn tally(&self) -> Tally {
        Tally {
            attempts: self.attempts.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            open_at_end: self.open_at_end.load(Ordering::Relaxed),
            open_peak: self.open_peak.load(Ordering::Relaxed).max(0) as u64,
            refused_after_ms: latency(&self.refused_us),
            held_ms: latency(&self.held_us),
            outcomes: self.outcomes.lock().expect("not poisoned").clone(),
            datagrams: self.datagrams.load(Ordering::Relaxed),
        }
    }
}

/// `n` consecutive IPv4 addresses from `first`, all in 127.0.0.0/8.
pub fn sources(first: IpAddr, n: usize) -> Result<Vec<IpAddr>, String> {
    let IpAddr::V4(v4) = first else {
        return Err("the attacker's addresses must be IPv4 loopback (127.0.0.0/8)".into());
    };
    let base = u32::from(v4);
    (0..n as u32)
        .map(|k| {
            let a = std::net::Ipv4Addr::from(base.checked_add(k).unwrap_or(0));
            if a.is_loopback() {
                Ok(IpAddr::V4(a))
            } else {
                Err(format!("{a} is not a loopback address"))
            }
        })
        .collect()
}

/// Runs `plan` on a thread of its own (one core at most) and returns its tally.
pub fn spawn(plan: Plan) -> std::thread::JoinHandle<Result<Tally, String>> {
    std::thread::Builder::new()
        .name("attacker".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(run(plan))
        })
        .expect("spawning the attacker thread")
}

async fn run(plan: Plan) -> Result<Tally, String> {
    if plan.sources.is_empty() {
        return Err("no source address".into());
    }
    for addr in plan.sources.iter().chain([&plan.http.ip(), &plan.quic.ip()]) {
        if !addr.is_loopback() {
            return Err(format!("refusing to attack from or to {addr}: loopback only"));
        }
    }
    let sockets = plan.sockets.clamp(1, MAX_SOCKETS);
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let deadline = start + plan.duration;
    let endpoints = match plan.kind {
        Kind::QuicHandshakes => plan
            .sources
            .iter()
            .map(|s| quic_endpoint(*s))
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let mut tasks = Vec::with_capacity(sockets + 1);
    for i in 0..sockets {
        // Ramp up over the first second.
        let begin = start + Duration::from_secs(1).mul_f64(i as f64 / sockets as f64);
        let plan = plan.clone();
        let counters = counters.clone();
        let source = plan.sources[i % plan.sources.len()];
        let endpoint = endpoints.get(i % plan.sources.len()).cloned();
        tasks.push(tokio::spawn(async move {
            sleep_until(begin).await;
            while Instant::now() < deadline {
                counters.attempt();
                let end = match (&endpoint, plan.kind) {
                    (Some(ep), _) => quic_handshake(ep, plan.quic, &counters, deadline).await,
                    (None, kind) => match connect(source, plan.http, deadline).await {
                        Ok(stream) => {
                            counters.opened();
                            let opened = Instant::now();
                            let how = match kind {
                                Kind::Slowloris => slowloris(stream, deadline).await,
                                Kind::SlowBody => slow_body(stream, plan.http, i, deadline).await,
                                _ => silent_ws(stream, plan.http, deadline).await,
                            };
                            how.map_or(End::Held, |how| End::Closed {
                                held: opened.elapsed(),
                                how,
                            })
                        }
                        Err(e) => End::Failed(e),
                    },
                };
                let held = matches!(end, End::Held);
                counters.end(end);
                if held {
                    break;
                }
                sleep(plan.reopen_after).await;
            }
        }));
    }
    if plan.kind == Kind::QuicHandshakes && plan.flood_rate > 0 {
        let (source, to, rate, counters) = (plan.sources[0], plan.quic, plan.flood_rate, counters.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = flood(source, to, rate, &counters, deadline).await {
                counters.outcome(format!("datagram flood stopped: {e}"));
            }
        }));
    }
    for t in tasks {
        let _ = timeout_at(deadline + Duration::from_secs(5), t).await;
    }
    for ep in endpoints {
        ep.close(0u32.into(), b"");
        let _ = timeout(Duration::from_secs(2), ep.wait_idle()).await;
    }
    Ok(counters.tally())
}

/// A TCP connection from `source` (any port) to `to`.
async fn connect(source: IpAddr, to: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind: {e}"))?;
    let bound = deadline.min(Instant::now() + Duration::from_secs(5));
    match timeout_at(bound, socket.connect(to)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("connect: {}", e.kind())),
        Err(_) => Err("connect: timed out".into()),
    }
}

/// What the gateway answered on a closed TCP connection: its status line if any.
fn answered(got: &[u8], tail: &str) -> String {
    let text = String::from_utf8_lossy(got);
    match text.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)) {
        Some(code) => format!("HTTP {code}, {tail}"),
        None if got.is_empty() => tail.to_string(),
        None => format!("{} bytes, {tail}", got.len()),
    }
}

/// Reads until the gateway closes the connection (or `deadline`), then names how.
/// `None`: still open at the deadline.
async fn read_to_close(stream: &mut tokio::net::tcp::OwnedReadHalf, deadline: Instant) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) => return Some(answered(&got, "closed")),
            Ok(Ok(n)) => {
                if got.len() < 256 {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Ok(Err(e)) => return Some(answered(&got, &format!("{:?}", e.kind()))),
        }
    }
}

/// Request headers, sent one byte at a time and never finished.
async fn slowloris(stream: TcpStream, deadline: Instant) -> Option<String> {
    const PARTIAL: &[u8] =
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-Padding: ";
    let (mut rd, mut wr) = stream.into_split();
    let trickle = async move {
        let mut at = 0;
        loop {
            let byte = PARTIAL.get(at).copied().unwrap_or(b'a');
            at += 1;
            if wr.write_all(&[byte]).await.is_err() {
                // The gateway closed its end; the reader sees how.
                std::future::pending::<()>().await;
            }
            sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        how = read_to_close(&mut rd, deadline) => how,
        _ = trickle => None,
    }
}

/// A publish announcing 1 MB, with a wrong key (even sockets) or none (odd), whose body
/// then trickles in.
async fn slow_body(stream: TcpStream, to: SocketAddr, i: usize, deadline: Instant) -> Option<String> {
    let auth = if i.is_multiple_of(2) {
        "Authorization: Bearer not-the-key\r\n"
    } else {
        ""
    };
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000\r\n{auth}\r\n"
    );
    let (mut rd, mut wr) = stream.into_split();
    if wr.write_all(head.as_bytes()).await.is_err() {
        return Some("write failed".into());
    }
    let trickle = async move {
        loop {
            if wr.write_all(b"{\"rooms\":[").await.is_err() {
                std::future::pending::<()>().await;
            }
            sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        how = read_to_close(&mut rd, deadline) => how,
        _ = trickle => None,
    }
}

/// A WebSocket upgrade that is accepted and then never says `Hello`.
async fn silent_ws(stream: TcpStream, to: SocketAddr, deadline: Instant) -> Option<String> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (mut rd, mut wr) = stream.into_split();
    if wr.write_all(request.as_bytes()).await.is_err() {
        return Some("write failed".into());
    }
    // Keep the write half open: dropping it would half-close the socket.
    let _wr = wr;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut upgraded = false;
    loop {
        if !upgraded && let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if !got.starts_with(b"HTTP/1.1 101") {
                return Some(answered(&got, "not upgraded"));
            }
            got.drain(..end + 4);
            upgraded = true;
        }
        if upgraded {
            while let Some((opcode, payload, len)) = ws_frame(&got) {
                if opcode == 0x8 {
                    let code = payload.get(..2).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                    return Some(format!("WebSocket close {code}"));
                }
                got.drain(..len);
            }
        }
        match timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) if upgraded => return Some("closed without a close frame".into()),
            Ok(Ok(0)) => return Some(answered(&got, "closed")),
            Ok(Ok(n)) if got.len() < 64 * 1024 => got.extend_from_slice(&buf[..n]),
            Ok(Ok(_)) => return Some("unexpected data".into()),
            Ok(Err(e)) => return Some(format!("{:?}", e.kind())),
        }
    }
}

/// The first unmasked WebSocket frame in `buf`: (opcode, payload, frame length).
fn ws_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, head): (usize, usize) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    let payload = buf.get(head..head.checked_add(len)?)?;
    Some((b0 & 0x0f, payload, head + len))
}

/// Accepts any server certificate: the attacker has no reason to check it.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One QUIC client endpoint (one UDP socket on `source`) speaking ALPN `h3`.
fn quic_endpoint(source: IpAddr) -> Result<quinn::Endpoint, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::new(source, 0)).map_err(|e| format!("QUIC endpoint: {e}"))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

/// Names a QUIC connection's end.
fn quic_reason(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match e {
        E::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            "QUIC refused".into()
        }
        E::ConnectionClosed(c) => format!("QUIC closed: {:?}", c.error_code),
        E::ApplicationClosed(c) => format!("QUIC closed by the application, code {}", c.error_code),
        E::TimedOut => "QUIC idle timeout".into(),
        other => format!("QUIC {other}"),
    }
}

/// A QUIC handshake that, once complete, says nothing more.
async fn quic_handshake(
    endpoint: &quinn::Endpoint,
    to: SocketAddr,
    counters: &Counters,
    deadline: Instant,
) -> End {
    let connecting = match endpoint.connect(to, "localhost") {
        Ok(c) => c,
        Err(e) => return End::Failed(format!("QUIC connect: {e}")),
    };
    let bound = deadline.min(Instant::now() + Duration::from_secs(10));
    let conn = match timeout_at(bound, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return End::Failed(quic_reason(&e)),
        Err(_) => return End::Failed("QUIC handshake not done in time".into()),
    };
    counters.opened();
    let opened = Instant::now();
    match timeout_at(deadline, conn.closed()).await {
        Ok(e) => End::Closed {
            held: opened.elapsed(),
            how: quic_reason(&e),
        },
        Err(_) => {
            conn.close(0u32.into(), b"");
            End::Held
        }
    }
}

/// A small xorshift generator: the datagrams' contents only need to differ.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// An Initial-sized datagram with a QUIC v1 long header (fresh connection ids) and a
/// payload that does not decrypt.
fn fake_initial(noise: &mut Noise, buf: &mut [u8; INITIAL_SIZE]) {
    noise.fill(buf);
    buf[0] = 0xc0 | (buf[0] & 0x03);
    buf[1..5].copy_from_slice(&1u32.to_be_bytes());
    buf[5] = 8; // destination connection id: bytes 6..14
    buf[14] = 8; // source connection id: bytes 15..23
    buf[23] = 0; // no token
    let rest = (INITIAL_SIZE - 26) as u16;
    buf[24..26].copy_from_slice(&(0x4000 | rest).to_be_bytes());
}

/// Sends `rate` fake Initials per second to `to` until `deadline`.
async fn flood(
    source: IpAddr,
    to: SocketAddr,
    rate: u64,
    counters: &Counters,
    deadline: Instant,
) -> std::io::Result<()> {
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(source, 0)).await?;
    let mut noise = Noise(crate::util::unix_us() | 1);
    let mut buf = [0u8; INITIAL_SIZE];
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < deadline {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            fake_initial(&mut noise, &mut buf);
            // Loopback drops under pressure; a lost datagram still counts as sent.
            let _ = socket.send_to(&buf, to).await;
            sent += 1;
        }
        counters.datagrams.store(sent, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_frames_are_parsed() {
        // A close frame with code 3002 and a reason, after a small binary frame.
        let mut buf = vec![0x82, 2, 9, 9, 0x88, 5];
        buf.extend_from_slice(&3002u16.to_be_bytes());
        buf.extend_from_slice(b"abc");
        let (op, payload, len) = ws_frame(&buf).unwrap();
        assert_eq!((op, payload, len), (0x2, &[9u8, 9][..], 4));
        let (op, payload, len) = ws_frame(&buf[4..]).unwrap();
        assert_eq!((op, len), (0x8, 7));
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 3002);
        assert!(ws_frame(&buf[4..8]).is_none(), "incomplete");
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(0u8, 256));
        assert_eq!(ws_frame(&long).map(|f| f.2), Some(260));
    }

    #[test]
    fn fake_initials_look_like_quic_v1_initials() {
        let mut noise = Noise(42);
        let mut buf = [0u8; INITIAL_SIZE];
        fake_initial(&mut noise, &mut buf);
        assert_eq!(buf[0] & 0xf0, 0xc0, "long header, Initial");
        assert_eq!(&buf[1..5], &[0, 0, 0, 1]);
        let declared = (u16::from_be_bytes([buf[24], buf[25]]) & 0x3fff) as usize;
        assert_eq!(26 + declared, INITIAL_SIZE);
    }

    #[test]
    fn sources_stay_on_loopback() {
        let s = sources("127.0.0.2".parse().unwrap(), 3).unwrap();
        assert_eq!(s.last().unwrap().to_string(), "127.0.0.4");
        assert!(sources("127.255.255.254".parse().unwrap(), 3).is_err());
        assert!(sources("10.0.0.1".parse().unwrap(), 1).is_err());
        assert!(sources("::1".parse().unwrap(), 1).is_err());
    }

    #[test]
    fn answers_are_named() {
        assert_eq!(
            answered(b"HTTP/1.1 401 Unauthorized\r\n", "closed"),
            "HTTP 401, closed"
        );
        assert_eq!(answered(b"", "closed"), "closed");
        assert_eq!(answered(b"xyz", "closed"), "3 bytes, closed");
    }
}
