//! What the attack scenario watches while it runs: the gateway's memory and open
//! descriptors, read from /proc at a fixed period, and whether a new legitimate client
//! can connect, tried at a fixed period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtgate_client::{Client, ClientConfig, TransportPreference, fixed_token};
use serde::Serialize;

use crate::target::{Node, Transport, mint_token};

/// One reading of the gateway.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Since the start of the measurement, ms.
    pub at_ms: u64,
    /// VmRSS, KiB.
    pub rss_kb: u64,
    /// Open descriptors.
    pub fds: u64,
    /// The gateway's CPU time so far (utime + stime), clock ticks.
    pub cpu_ticks: u64,
    /// The same for this process (the attacker, publisher and probes).
    pub bench_cpu_ticks: u64,
    /// The same for every process on the machine.
    pub machine_cpu_ticks: u64,
}

/// One new client's connect.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// Since the start of the measurement, ms (when the connect began).
    pub at_ms: u64,
    /// Transport.
    pub transport: Transport,
    /// Connect to Welcome, ms (`None`: it did not connect).
    pub connect_ms: Option<f64>,
    /// Why not.
    pub error: Option<String>,
}

/// Results a background loop collects until it is stopped.
pub struct Collected<T> {
    items: Arc<Mutex<Vec<T>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<T: Clone> Collected<T> {
    /// Stops the loop (at once, even mid-probe) and returns what it collected.
    pub fn finish(self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        self.items.lock().expect("not poisoned").clone()
    }
}

/// Reads `pid`'s RSS and descriptor count every `period`.
pub fn sample_every(pid: u32, period: Duration, t0: Instant) -> Collected<Sample> {
    let items = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (items, stop) = (items.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (Some(s), Some(fds)) = (crate::util::sample(pid), crate::util::fd_count(pid)) else {
                    continue;
                };
                let own = crate::util::sample(std::process::id()).unwrap_or_default();
                items.lock().expect("not poisoned").push(Sample {
                    at_ms: t0.elapsed().as_millis() as u64,
                    rss_kb: s.rss_kb,
                    fds,
                    cpu_ticks: s.cpu_ticks,
                    bench_cpu_ticks: own.cpu_ticks,
                    machine_cpu_ticks: crate::util::machine_busy_ticks().unwrap_or(0),
                });
            }
        })
    };
    Collected {
        items,
        stop,
        tasks: vec![task],
    }
}

/// First user id of the probing clients (far above the load's).
const PROBE_USER: u64 = 900_000;
/// Account of the probing clients (none of the load's).
const PROBE_ACCOUNT: u64 = 900_000;
/// How long one probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects one new client over `transport` and returns the time to its Welcome.
async fn probe(node: &Node, jwt_secret: &str, transport: Transport, n: u64) -> Result<Duration, String> {
    let token = mint_token(jwt_secret, &(PROBE_USER + n).to_string(), PROBE_ACCOUNT);
    let mut config = ClientConfig::new(node.wt_url.clone(), node.ws_url.clone(), fixed_token(token));
    config.prefer = match transport {
        Transport::Wt => TransportPreference::WebTransport,
        _ => TransportPreference::WebSocket,
    };
    config.cert_sha256 = crate::worker::cert_of(node);
    config.connect_timeout = PROBE_TIMEOUT;
    config.reconnect = false;
    config.name = "rtgate-bench-probe".into();
    let started = Instant::now();
    let (client, _events) = Client::connect(config);
    let result = tokio::time::timeout(PROBE_TIMEOUT, client.connected()).await;
    client.close();
    match result {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!("not connected in {} s", PROBE_TIMEOUT.as_secs())),
    }
}

/// Every `period`, connects a new client over each transport (each closed again at once;
/// one loop per transport, so a connect that hangs delays only its own transport's next
/// one) and records how long each took.
pub fn probe_every(node: Node, jwt_secret: String, period: Duration, t0: Instant) -> Collected<Probe> {
    let items = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let loops = [(Transport::Ws, 0), (Transport::Wt, 1)].map(|(transport, first)| {
        let (items, stop, node, jwt_secret) = (items.clone(), stop.clone(), node.clone(), jwt_secret.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Distinct users: even numbers over WebSocket, odd over WebTransport.
            let mut n = first;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 2;
                let at_ms = t0.elapsed().as_millis() as u64;
                let result = probe(&node, &jwt_secret, transport, n).await;
                items.lock().expect("not poisoned").push(Probe {
                    at_ms,
                    transport,
                    connect_ms: result.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
                    error: result.err(),
                });
            }
        })
    });
    Collected {
        items,
        stop,
        tasks: loops.into(),
    }
}
