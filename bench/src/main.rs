//! rtgate-bench: load generator and measurements for the rtgate gateway.
//!
//! Every run targets loopback only, is bounded in time and count, and stops by itself.
//! See docs/benchmarks.md.

mod attack;
mod coord;
mod deliveries;
mod gateway;
mod monitor;
mod publisher;
mod report;
mod target;
mod util;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use coord::Workers;
use gateway::{Gateway, Spec};
use report::{IdleResult, Latency, LoadResult, ServerUsage, StormResult};
use target::{Node, Transport, require_loopback};
use util::{ProcSample, sample};

/// Load generator and measurements for rtgate (loopback only).
#[derive(Parser)]
#[command(name = "rtgate-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A load run with explicit parameters (defaults: 1,000 connections, rooms of 10,
    /// 100 events/s, 10 s).
    Run(Opts),
    /// Seed load: 10k connections, rooms of 10, 1,000 events/s for 60 s.
    Seed(Opts),
    /// Opens N idle connections and measures server RSS per connection.
    IdleMemory(Opts),
    /// Raises the publish rate step by step until p99 passes the limit.
    Sweep(Opts),
    /// Restarts the gateway under 10k connected clients; measures recovery.
    ReconnectStorm(Opts),
    /// Domain events through the Redis Stream: Chatwoot-shaped `message.created` events,
    /// each for an inbox room of agents and its contact (defaults: 10,000 connections,
    /// rooms of 10 = 9 agents + 1 contact, 1,000 events/s, 30 s). Needs --redis.
    Ingest(Opts),
    /// Outbound deliveries: one account webhook on a receiver in this process, and
    /// `message.created` events at a rate (default 2,000/s for 20 s); `--second` adds a
    /// webhook that answers (a baseline) or one that never does.
    Deliveries(deliveries::DeliveryOpts),
    /// Attacks a gateway with default limits from another loopback address, under a
    /// legitimate load (default: 200 WebSocket connections, rooms of 10, 200 events/s).
    Attack(AttackOpts),
    /// (internal) a client worker driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Clone, Debug)]
struct Opts {
    /// Start the gateway(s) from this `rtgate` binary (fresh cert dir, own credentials).
    #[arg(long)]
    rtgate_bin: Option<PathBuf>,
    /// Gateways to start with --rtgate-bin (more than one needs --redis).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Redis URL for started gateways (multi-node engine), or a Redis Cluster's nodes,
    /// comma-separated, with --gateway-arg=--redis-cluster; loopback only.
    #[arg(long)]
    redis: Option<String>,
    /// Extra flag for started gateways (repeat; e.g. --gateway-arg=--send-queue-bytes=4194304).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
    /// Running gateways: WebTransport URLs (comma-separated), one per node.
    #[arg(long, value_delimiter = ',')]
    wt_url: Vec<String>,
    /// Running gateways: WebSocket URLs, one per node.
    #[arg(long, value_delimiter = ',')]
    ws_url: Vec<String>,
    /// Running gateways: server API base URLs (http://127.0.0.1:8080), one per node.
    #[arg(long, value_delimiter = ',')]
    api_url: Vec<String>,
    /// Running gateways: certificate SHA-256 (hex); default: GET <api-url>/dev/cert-hash.
    #[arg(long)]
    cert_hash: Option<String>,
    /// Running gateways: HS256 secret (default for started ones: random).
    #[arg(long, env = "RTGATE_BENCH_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Running gateways: server API key (default for started ones: random).
    #[arg(long, env = "RTGATE_BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Running gateways: process ids to read RSS and CPU from.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Transport of the connections.
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Connections.
    #[arg(long)]
    connections: Option<u64>,
    /// Members per room (0: join no room).
    #[arg(long)]
    room_size: Option<u64>,
    /// Room-events published per second (one event to one room = one room-event).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of publishing (idle-memory: seconds to settle).
    #[arg(long)]
    duration: Option<u64>,
    /// Rooms per publish request (default: enough to keep ≤ 1,000 requests/s).
    #[arg(long)]
    batch: Option<usize>,
    /// Worker processes (default: one per 8,000 connections).
    #[arg(long)]
    workers: Option<usize>,
    /// Connects in flight per worker.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Timeout of one connect or subscribe, ms.
    #[arg(long, default_value_t = 15_000)]
    connect_timeout_ms: u64,
    /// Output directory (JSON, markdown, SVG).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Name of the run in reports.
    #[arg(long)]
    label: Option<String>,
    /// Sweep: first rate (room-events/s).
    #[arg(long, default_value_t = 2000.0)]
    start_rate: f64,
    /// Sweep: each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// Sweep: most steps.
    #[arg(long, default_value_t = 10)]
    max_steps: usize,
    /// Sweep: p99 limit that ends it, ms.
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
    /// Reconnect storm: seconds of load before the restart.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Reconnect storm: most seconds to wait for every client to come back.
    #[arg(long, default_value_t = 60)]
    storm_timeout: u64,
    /// Reconnect storm: stop the node with SIGTERM (graceful) or SIGKILL (crash).
    #[arg(long, value_enum, default_value = "term")]
    restart_signal: RestartSignal,
}

#[derive(Args, Clone, Debug)]
struct AttackOpts {
    /// Which attack.
    #[arg(long, value_enum)]
    kind: attack::Kind,
    /// Attacker connections held at once (default: slowloris 2000, slow-body 200,
    /// silent-ws 300, quic-handshakes 3000).
    #[arg(long)]
    sockets: Option<usize>,
    /// Source address of the attacker's sockets (loopback; the load comes from 127.0.0.1).
    #[arg(long, default_value = "127.0.0.2")]
    attacker_addr: std::net::IpAddr,
    /// Spread the attacker's sockets over this many consecutive addresses from
    /// --attacker-addr (a distributed attack).
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// Seconds of load before the attack.
    #[arg(long, default_value_t = 10)]
    before: u64,
    /// Seconds of attack.
    #[arg(long, default_value_t = 30)]
    attack_secs: u64,
    /// Seconds of load after the attack.
    #[arg(long, default_value_t = 10)]
    after: u64,
    /// Pause before the attacker reopens a socket the gateway closed, ms.
    #[arg(long, default_value_t = 100)]
    reopen_ms: u64,
    /// quic-handshakes: Initial-sized datagrams that are not QUIC, per second (0: none).
    #[arg(long, default_value_t = 2000)]
    flood_rate: u64,
    #[command(flatten)]
    load: Opts,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RestartSignal {
    Term,
    Kill,
}

/// Upper bounds every run respects.
const MAX_CONNECTIONS: u64 = 200_000;
const MAX_DURATION_SECS: u64 = 600;
const MAX_RATE: f64 = 2_000_000.0;

struct Preset {
    connections: u64,
    room_size: u64,
    rate: f64,
    duration: u64,
}

/// Checks bounds and loopback targets.
fn validate(o: &Opts, p: &Preset) -> Result<(), String> {
    if p.connections == 0 || p.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
    }
    if p.duration == 0 || p.duration > MAX_DURATION_SECS {
        return Err(format!("--duration must be 1..={MAX_DURATION_SECS} s"));
    }
    if !(p.rate.is_finite() && p.rate >= 0.0 && p.rate <= MAX_RATE) {
        return Err(format!("--rate must be 0..={MAX_RATE}"));
    }
    if o.max_steps == 0 || o.max_steps > 30 || o.step_factor <= 1.0 {
        return Err("--max-steps must be 1..=30 and --step-factor > 1".into());
    }
    if o.storm_timeout > 300 || o.warmup > 120 {
        return Err("--storm-timeout ≤ 300 s and --warmup ≤ 120 s".into());
    }
    for url in o.wt_url.iter().chain(&o.ws_url).chain(&o.api_url) {
        require_loopback(url)?;
    }
    if let Some(r) = &o.redis {
        // One URL, or a Redis Cluster's seed nodes, comma-separated.
        for url in r.split(',') {
            require_loopback(url.trim())?;
        }
    }
    if o.rtgate_bin.is_none() {
        let n = o.api_url.len();
        if n == 0 || o.ws_url.len() != n || o.wt_url.len() != n {
            return Err("give --rtgate-bin, or as many --wt-url, --ws-url and --api-url as nodes".into());
        }
        if o.jwt_secret.is_none() || o.api_key.is_none() {
            return Err("running gateways need --jwt-secret and --api-key".into());
        }
    } else if o.nodes == 0 || o.nodes > 8 || (o.nodes > 1 && o.redis.is_none()) {
        return Err("--nodes must be 1..=8, and more than one needs --redis".into());
    }
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    hex::encode(buf)
}

/// The gateways of a run: started here or given.
struct Env {
    /// The started gateways' Redis prefix (their event stream is `{<prefix>:events}`).
    redis_prefix: Option<String>,
    nodes: Vec<Node>,
    gateways: Vec<Gateway>,
    pids: Vec<u32>,
    jwt_secret: String,
    api_key: String,
    dir: Option<PathBuf>,
}

impl Env {
    /// Starts or finds the gateways; started ones get the budgets lifted if `lift_limits`.
    async fn new(o: &Opts, lift_limits: bool) -> Result<Env, String> {
        let jwt_secret = o.jwt_secret.clone().unwrap_or_else(|| random_hex(32));
        let api_key = o.api_key.clone().unwrap_or_else(|| random_hex(16));
        if let Some(bin) = &o.rtgate_bin {
            let tag = format!("{}-{}", std::process::id(), util::unix_us());
            let dir = std::env::temp_dir().join(format!("rtgate-bench-{tag}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let spec = Spec {
                bin: bin.clone(),
                jwt_secret: jwt_secret.clone(),
                api_key: api_key.clone(),
                redis: o.redis.clone(),
                redis_prefix: format!("bench-{tag}"),
                extra: o.gateway_args.clone(),
                lift_limits,
                dir: dir.clone(),
            };
            let mut gateways = Vec::new();
            for i in 0..o.nodes {
                let gw = Gateway::start(&spec, i).await?;
                eprintln!(
                    "rtgate-bench: node {i} pid {} at {} / {} (log {})",
                    gw.pid(),
                    gw.node.ws_url,
                    gw.node.wt_url,
                    gw.log().display()
                );
                gateways.push(gw);
            }
            let nodes = gateways.iter().map(|g| g.node.clone()).collect();
            let pids = gateways.iter().map(Gateway::pid).collect();
            Ok(Env {
                redis_prefix: o.redis.as_ref().map(|_| spec.redis_prefix.clone()),
                nodes,
                gateways,
                pids,
                jwt_secret,
                api_key,
                dir: Some(dir),
            })
        } else {
            let mut nodes = Vec::new();
            for i in 0..o.api_url.len() {
                let api_url = o.api_url[i].trim_end_matches('/').to_string();
                let cert_hex = match &o.cert_hash {
                    Some(h) => Some(h.clone()),
                    None => fetch_cert_hash(&api_url).await,
                };
                let node = Node {
                    wt_url: o.wt_url[i].clone(),
                    ws_url: o.ws_url[i].clone(),
                    api_url,
                    cert_hex,
                };
                node.validate()?;
                nodes.push(node);
            }
            Ok(Env {
                redis_prefix: None,
                nodes,
                gateways: Vec::new(),
                pids: o.server_pid.clone(),
                jwt_secret,
                api_key,
                dir: None,
            })
        }
    }

    fn samples(&self) -> Vec<Option<ProcSample>> {
        self.pids.iter().map(|p| sample(*p)).collect()
    }

    fn usage(&self, before: &[Option<ProcSample>]) -> Vec<ServerUsage> {
        self.pids
            .iter()
            .zip(before)
            .map(|(pid, a)| {
                let b = sample(*pid);
                match (a, b) {
                    (Some(a), Some(b)) => ServerUsage {
                        pid: *pid,
                        rss_start_kb: a.rss_kb,
                        rss_end_kb: b.rss_kb,
                        rss_peak_kb: b.hwm_kb,
                        cpu_pct: util::cpu_percent(a, &b),
                    },
                    _ => ServerUsage {
                        pid: *pid,
                        ..Default::default()
                    },
                }
            })
            .collect()
    }

    fn finish(self) {
        let dir = self.dir.clone();
        drop(self.gateways);
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn fetch_cert_hash(api_url: &str) -> Option<String> {
    let v: serde_json::Value = reqwest::get(format!("{api_url}/dev/cert-hash"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["hex"].as_str().map(str::to_string)
}

struct Run<'a> {
    o: &'a Opts,
    p: Preset,
    label: String,
    room_prefix: String,
    /// Domain events through this stream instead of publishes through the API, to inbox
    /// rooms with a contact each.
    stream: Option<publisher::Stream>,
}

impl Run<'_> {
    fn rooms(&self) -> u64 {
        if self.p.room_size == 0 {
            0
        } else {
            self.p.connections.div_ceil(self.p.room_size)
        }
    }

    fn batch(&self, rate: f64) -> usize {
        let rooms = self.rooms().max(1) as usize;
        self.o
            .batch
            .unwrap_or_else(|| (rate / 1000.0).ceil().max(1.0) as usize)
            .clamp(1, rooms.min(1000))
    }

    fn plan(&self, env: &Env, reconnect: bool) -> worker::Plan {
        worker::Plan {
            nodes: env.nodes.clone(),
            transport: self.o.transport,
            first: 0,
            count: 0,
            room_size: self.p.room_size,
            room_prefix: self.room_prefix.clone(),
            jwt_secret: env.jwt_secret.clone(),
            connect_concurrency: self.o.connect_concurrency,
            connect_timeout_ms: self.o.connect_timeout_ms,
            reconnect,
            inbox_rooms: self.stream.is_some(),
        }
    }

    async fn connect(&self, env: &Env, reconnect: bool) -> Result<Workers, String> {
        let workers = self
            .o
            .workers
            .unwrap_or_else(|| self.p.connections.div_ceil(8000) as usize);
        eprintln!(
            "rtgate-bench: opening {} {} connections in {} worker(s)…",
            self.p.connections,
            self.o.transport.name(),
            workers
        );
        let w = Workers::start(
            &self.plan(env, reconnect),
            self.p.connections,
            workers,
            Duration::from_secs(300),
        )
        .await?;
        eprintln!(
            "rtgate-bench: {} connected, {} failed in {:.1} s {:?}",
            w.connected, w.failed, w.connect_secs, w.errors
        );
        Ok(w)
    }

    fn base(&self, env: &Env, w: &Workers) -> LoadResult {
        LoadResult {
            label: self.label.clone(),
            transport: self.o.transport.name().into(),
            nodes: env.nodes.len(),
            connections_target: self.p.connections,
            connected: w.connected,
            connect_failed: w.failed,
            connect_secs: w.connect_secs,
            connect_rate: if w.connect_secs > 0.0 {
                w.connected as f64 / w.connect_secs
            } else {
                0.0
            },
            room_size: self.p.room_size,
            rooms: self.rooms(),
            errors: w.errors.clone(),
            ..Default::default()
        }
    }

    /// Publishes at `rate` for `secs`, drains, and measures.
    async fn measure(
        &self,
        env: &Env,
        w: &mut Workers,
        http: &reqwest::Client,
        rate: f64,
        secs: u64,
    ) -> Result<LoadResult, String> {
        w.snapshot(true).await?;
        let before = env.samples();
        let bench_before: Vec<(u32, Option<ProcSample>)> =
            w.pids().into_iter().map(|p| (p, sample(p))).collect();
        let batch = self.batch(rate);
        let load = publisher::Load {
            api_urls: env.nodes.iter().map(|n| n.api_url.clone()).collect(),
            api_key: env.api_key.clone(),
            room_prefix: self.room_prefix.clone(),
            rooms: self.rooms(),
            room_size: self.p.room_size,
            rate,
            batch,
            duration: Duration::from_secs(secs),
            max_in_flight: 128,
        };
        let published = match &self.stream {
            Some(stream) => publisher::publish_stream(&load, stream, Arc::new(AtomicBool::new(false))).await,
            None => publisher::publish(http, &load, Arc::new(AtomicBool::new(false))).await,
        };
        let usage = env.usage(&before);
        let bench_cpu: f64 = bench_before
            .iter()
            .filter_map(|(p, a)| Some(util::cpu_percent(a.as_ref()?, &sample(*p)?)))
            .sum();
        let expected = w.expected(&published.per_room);
        // Drain: wait until everything arrived, at most 5 s.
        let mut snap = w.snapshot(false).await?;
        for _ in 0..50 {
            if snap.received >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            snap = w.snapshot(false).await?;
        }
        let snap = w.snapshot(true).await?;
        let secs_f = published.elapsed.as_secs_f64();
        let mut r = self.base(env, w);
        r.rate_target = rate;
        r.rate_achieved = published.room_events() as f64 / secs_f;
        r.batch = batch;
        r.publish_errors = published.errors;
        r.duration_secs = secs_f;
        r.expected = expected;
        r.received = snap.received;
        r.duplicates = snap.duplicates;
        r.lost = expected.saturating_sub(snap.received);
        r.loss_pct = if expected > 0 {
            r.lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        };
        r.deliveries_per_sec = snap.received as f64 / secs_f;
        r.latency = Latency::from_us(&snap.hist);
        r.publish_latency = Latency::from_us(&published.latency);
        r.servers = usage;
        r.bench_rss_kb = snap.rss_kb;
        r.bench_cpu_pct = bench_cpu;
        r.disconnects = snap.status.disconnects;
        r.errors.extend(published.error_samples);
        Ok(r)
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

#[derive(Serialize)]
struct Output<'a, T: Serialize> {
    scenario: &'a str,
    date: String,
    machine: util::Machine,
    command: String,
    results: T,
}

/// The file name of a scenario's outputs: `<scenario>-<transport>`.
fn output_name(o: &Opts, scenario: &str) -> String {
    format!(
        "{scenario}-{}",
        o.transport.name().to_lowercase().replace(['+', ' '], "-")
    )
}

fn write_outputs<T: Serialize>(
    o: &Opts,
    scenario: &str,
    name: &str,
    results: &T,
    markdown: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let out = Output {
        scenario,
        date: util::utc_string(util::unix_us() / 1_000_000),
        machine: util::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        results,
    };
    let json = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    std::fs::write(o.out.join(format!("{name}.json")), json).map_err(|e| e.to_string())?;
    let md = format!(
        "<!-- {} | {} | {} CPUs, {} -->\n`{}`\n\n{}",
        scenario, out.date, out.machine.cpus, out.machine.cpu_model, out.command, markdown
    );
    std::fs::write(o.out.join(format!("{name}.md")), &md).map_err(|e| e.to_string())?;
    println!("{md}");
    eprintln!("rtgate-bench: wrote {}/{name}.json and .md", o.out.display());
    Ok(())
}

async fn load_scenario(o: &Opts, scenario: &str, p: Preset) -> Result<(), String> {
    validate(o, &p)?;
    let ingest = scenario == "ingest";
    if ingest && (o.redis.is_none() || o.rtgate_bin.is_none()) {
        return Err("ingest needs --rtgate-bin and --redis (the event stream)".into());
    }
    let env = Env::new(o, true).await?;
    let stream = ingest.then(|| publisher::Stream {
        redis: o.redis.clone().expect("checked"),
        key: format!("{{{}:events}}", env.redis_prefix.clone().unwrap_or_default()),
    });
    let run = Run {
        o,
        label: o.label.clone().unwrap_or_else(|| scenario.into()),
        room_prefix: format!("b{}", std::process::id()),
        p,
        stream,
    };
    let result = async {
        let mut w = run.connect(&env, true).await?;
        let http = http_client();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = run.measure(&env, &mut w, &http, run.p.rate, run.p.duration).await;
        w.close().await;
        r
    }
    .await;
    env.finish();
    if let Some(stream) = &run.stream
        && let Err(e) = publisher::remove_stream(stream).await
    {
        eprintln!(
            "rtgate-bench: could not remove the event stream {}: {e}",
            stream.key
        );
    }
    let r = result?;
    let name = output_name(o, scenario);
    write_outputs(
        o,
        scenario,
        &name,
        &r,
        &report::load_table(std::slice::from_ref(&r)),
    )
}

async fn idle_memory(o: &Opts, p: Preset) -> Result<(), String> {
    validate(o, &p)?;
    let env = Env::new(o, true).await?;
    let run = Run {
        o,
        label: "idle-memory".into(),
        room_prefix: format!("b{}", std::process::id()),
        p,
        stream: None,
    };
    let result = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = env.samples();
        let w = run.connect(&env, false).await?;
        tokio::time::sleep(Duration::from_secs(run.p.duration)).await;
        let mid = env.samples();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let usage = env.usage(&mid);
        let rss_before: u64 = before.iter().flatten().map(|s| s.rss_kb).sum();
        let rss_after: u64 = usage.iter().map(|u| u.rss_end_kb).sum();
        let idle_cpu: f64 = usage.iter().map(|u| u.cpu_pct).sum();
        let n = w.connected.max(1) as f64;
        let r = IdleResult {
            transport: o.transport.name().into(),
            connections_target: run.p.connections,
            connected: w.connected,
            connect_secs: w.connect_secs,
            connect_rate: w.connected as f64 / w.connect_secs.max(1e-9),
            rss_before_kb: rss_before,
            rss_after_kb: rss_after,
            bytes_per_connection: (rss_after as f64 - rss_before as f64) * 1024.0 / n,
            bench_bytes_per_connection: w.rss_kb as f64 * 1024.0 / n,
            idle_cpu_pct: idle_cpu,
            errors: w.errors.clone(),
        };
        w.close().await;
        Ok::<_, String>(r)
    }
    .await;
    env.finish();
    let r = result?;
    let name = output_name(o, "idle-memory");
    write_outputs(
        o,
        "idle-memory",
        &name,
        &r,
        &report::idle_table(std::slice::from_ref(&r)),
    )
}

async fn sweep(o: &Opts, p: Preset) -> Result<(), String> {
    validate(o, &p)?;
    let env = Env::new(o, true).await?;
    let run = Run {
        o,
        label: "sweep".into(),
        room_prefix: format!("b{}", std::process::id()),
        p,
        stream: None,
    };
    let mut steps: Vec<LoadResult> = Vec::new();
    let result = async {
        let mut w = run.connect(&env, true).await?;
        let http = http_client();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut rate = o.start_rate;
        for step in 0..o.max_steps {
            let mut r = run.measure(&env, &mut w, &http, rate, run.p.duration).await?;
            r.label = format!("step {}", step + 1);
            eprintln!(
                "rtgate-bench: step {} rate {:.0}/s sent {:.0}/s deliveries {:.0}/s p99 {} ms loss {:.3} %",
                step + 1,
                rate,
                r.rate_achieved,
                r.deliveries_per_sec,
                report::fmt_ms(r.latency.p99_ms),
                r.loss_pct
            );
            let over = r.latency.p99_ms > o.p99_limit_ms || r.latency.samples == 0;
            steps.push(r);
            if over {
                break;
            }
            rate = (rate * o.step_factor).min(MAX_RATE);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        w.close().await;
        Ok::<_, String>(())
    }
    .await;
    env.finish();
    result?;
    let name = output_name(o, "sweep");
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let title = format!(
        "rtgate delivery latency vs load — {}, {} conns, rooms of {}, {} node(s)",
        o.transport.name(),
        run.p.connections,
        run.p.room_size,
        env_nodes(o)
    );
    let svg = report::sweep_svg(&title, &steps, o.p99_limit_ms);
    std::fs::write(o.out.join(format!("{name}.svg")), svg).map_err(|e| e.to_string())?;
    write_outputs(o, "sweep", &name, &steps, &report::load_table(&steps))
}

fn env_nodes(o: &Opts) -> usize {
    if o.rtgate_bin.is_some() {
        o.nodes
    } else {
        o.api_url.len()
    }
}

async fn storm(o: &Opts, p: Preset) -> Result<(), String> {
    validate(o, &p)?;
    let mut env = Env::new(o, true).await?;
    let run = Run {
        o,
        label: "reconnect-storm".into(),
        room_prefix: format!("b{}", std::process::id()),
        p,
        stream: None,
    };
    let result = async {
        let mut w = run.connect(&env, true).await?;
        let http = http_client();
        w.snapshot(true).await?;
        let before = env.samples();
        let stop = Arc::new(AtomicBool::new(false));
        let load = publisher::Load {
            api_urls: env.nodes.iter().map(|n| n.api_url.clone()).collect(),
            api_key: env.api_key.clone(),
            room_prefix: run.room_prefix.clone(),
            rooms: run.rooms(),
            room_size: run.p.room_size,
            rate: run.p.rate,
            batch: run.batch(run.p.rate),
            duration: Duration::from_secs(o.warmup + o.storm_timeout + 10),
            max_in_flight: 128,
        };
        let pub_task = {
            let http = http.clone();
            let stop = stop.clone();
            tokio::spawn(async move { publisher::publish(&http, &load, stop).await })
        };
        tokio::time::sleep(Duration::from_secs(o.warmup)).await;
        let connected = w.status().await?.connected_now.max(0) as u64;
        let t0 = util::unix_us();
        let sig = match o.restart_signal {
            RestartSignal::Term => libc::SIGTERM,
            RestartSignal::Kill => libc::SIGKILL,
        };
        let (stop_d, start_d) = if let Some(gw) = env.gateways.first_mut() {
            eprintln!("rtgate-bench: restarting node 0 ({:?})", o.restart_signal);
            let d = gw.restart(sig).await?;
            env.pids[0] = gw.pid();
            d
        } else {
            eprintln!(
                "rtgate-bench: restart the gateway now; waiting up to {} s",
                o.storm_timeout
            );
            (Duration::ZERO, Duration::ZERO)
        };
        // Wait until every client saw the restart and is back with its room live.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(o.storm_timeout);
        let mut status = w.status().await?;
        let mut back = None;
        while tokio::time::Instant::now() < deadline {
            status = w.status().await?;
            if status.disconnects >= connected && status.down == 0 {
                back = Some(status.last_back_us.saturating_sub(t0) as f64 / 1e6);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("rtgate-bench: storm status {status:?}");
        // A little more load after recovery, then stop and drain.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let published = pub_task.await.map_err(|e| e.to_string())?;
        let usage = env.usage(&before);
        let expected = w.expected(&published.per_room);
        for _ in 0..50 {
            if w.snapshot(false).await?.received >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let snap = w.snapshot(true).await?;
        let secs_f = published.elapsed.as_secs_f64();
        let mut load = run.base(&env, &w);
        load.rate_target = run.p.rate;
        load.rate_achieved = published.room_events() as f64 / secs_f;
        load.batch = run.batch(run.p.rate);
        load.publish_errors = published.errors;
        load.duration_secs = secs_f;
        load.expected = expected;
        load.received = snap.received;
        load.duplicates = snap.duplicates;
        load.lost = expected.saturating_sub(snap.received);
        load.loss_pct = if expected > 0 {
            load.lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        };
        load.deliveries_per_sec = snap.received as f64 / secs_f;
        load.latency = Latency::from_us(&snap.hist);
        load.publish_latency = Latency::from_us(&published.latency);
        load.servers = usage;
        load.disconnects = snap.status.disconnects;
        load.errors.extend(published.error_samples);
        let r = StormResult {
            transport: o.transport.name().into(),
            connected,
            signal: format!("{:?}", o.restart_signal).to_uppercase(),
            stop_secs: stop_d.as_secs_f64(),
            start_secs: start_d.as_secs_f64(),
            all_back_secs: back,
            still_down: snap.status.down,
            disconnects: snap.status.disconnects,
            resumed_ok: snap.status.resumed_ok,
            recovery_failed: snap.status.recovery_failed,
            load,
        };
        w.close().await;
        Ok::<_, String>(r)
    }
    .await;
    env.finish();
    let r = result?;
    let name = output_name(o, "reconnect-storm");
    write_outputs(
        o,
        "reconnect-storm",
        &name,
        &r,
        &report::storm_table(std::slice::from_ref(&r)),
    )
}

/// `host:port` of a loopback URL with an IP literal host.
fn socket_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    require_loopback(url)?;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .parse()
        .map_err(|_| format!("{url:?}: the attack needs an IP address and port"))
}

/// Longest attack scenario, s (before + attack + after).
const MAX_ATTACK_RUN_SECS: u64 = 90;

fn validate_attack(a: &AttackOpts) -> Result<(), String> {
    if !a.attacker_addr.is_loopback() {
        return Err("--attacker-addr must be a loopback address".into());
    }
    if a.sources == 0 || a.sources > 64 {
        return Err("--sources must be 1..=64".into());
    }
    attack::sources(a.attacker_addr, a.sources)?;
    let total = a.before + a.attack_secs + a.after;
    if a.before == 0 || a.attack_secs == 0 || a.after == 0 || total > MAX_ATTACK_RUN_SECS {
        return Err(format!(
            "--before, --attack-secs and --after must be ≥ 1 s and together ≤ {MAX_ATTACK_RUN_SECS} s"
        ));
    }
    if a.sockets.is_some_and(|n| n == 0 || n > attack::MAX_SOCKETS) {
        return Err(format!("--sockets must be 1..={}", attack::MAX_SOCKETS));
    }
    if a.flood_rate > 20_000 || a.reopen_ms > 10_000 {
        return Err("--flood-rate ≤ 20000/s and --reopen-ms ≤ 10000".into());
    }
    Ok(())
}

/// The legitimate load's deliveries, per phase (before, during, after) and per second.
struct Legit {
    hist: [hdrhistogram::Histogram<u64>; 3],
    received: [u64; 3],
    disconnects: [u64; 3],
    last_disconnects: u64,
    seconds: Vec<report::Second>,
}

impl Legit {
    fn new(disconnects: u64) -> Legit {
        Legit {
            hist: std::array::from_fn(|_| worker::new_histogram()),
            received: [0; 3],
            disconnects: [0; 3],
            last_disconnects: disconnects,
            seconds: Vec::new(),
        }
    }

    /// Adds a snapshot (taken with reset) to `phase`.
    fn add(&mut self, snap: &coord::Snapshot, phase: usize, at_ms: u64) -> Result<(), String> {
        let total = snap.status.disconnects;
        self.disconnects[phase] += total.saturating_sub(self.last_disconnects);
        self.last_disconnects = total;
        self.received[phase] += snap.received;
        let l = Latency::from_us(&snap.hist);
        self.seconds.push(report::Second {
            at_ms,
            received: snap.received,
            p99_ms: l.p99_ms,
            max_ms: l.max_ms,
        });
        self.hist[phase].add(&snap.hist).map_err(|e| format!("{e:?}"))
    }

    fn phase(&self, phase: usize, secs: f64) -> report::LegitPhase {
        report::LegitPhase {
            secs,
            received: self.received[phase],
            latency: Latency::from_us(&self.hist[phase]),
            disconnects: self.disconnects[phase],
        }
    }
}

/// The phase a moment (ms since the start) falls in.
fn phase_of(at_ms: u64, start_ms: u64, end_ms: u64) -> usize {
    if at_ms < start_ms {
        0
    } else if at_ms < end_ms {
        1
    } else {
        2
    }
}

fn probe_phases(
    probes: &[monitor::Probe],
    transport: target::Transport,
    start: u64,
    end: u64,
) -> report::Phases<report::ProbeSummary> {
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut errors: [Vec<String>; 3] = Default::default();
    for p in probes.iter().filter(|p| p.transport == transport) {
        let i = phase_of(p.at_ms, start, end);
        match (&p.connect_ms, &p.error) {
            (Some(ms), _) => times[i].push(*ms),
            (None, e) => errors[i].push(e.clone().unwrap_or_default()),
        }
    }
    let of = |i: usize| report::ProbeSummary::of(&times[i], &errors[i]);
    report::Phases {
        before: of(0),
        during: of(1),
        after: of(2),
    }
}

/// RSS and descriptors: the last reading before the attack, the peak during it, the last.
fn reading_phases(
    samples: &[monitor::Sample],
    start: u64,
    end: u64,
) -> (report::Phases<u64>, report::Phases<u64>) {
    let mut rss = report::Phases::default();
    let mut fds = report::Phases::default();
    for s in samples {
        match phase_of(s.at_ms, start, end) {
            0 => {
                rss.before = s.rss_kb;
                fds.before = s.fds;
            }
            1 => {
                rss.during = rss.during.max(s.rss_kb);
                fds.during = fds.during.max(s.fds);
            }
            _ => {}
        }
        rss.after = s.rss_kb;
        fds.after = s.fds;
    }
    (rss, fds)
}

/// CPU per phase, percent of one core, from the first and last reading of each phase.
fn cpu_phases(
    samples: &[monitor::Sample],
    start: u64,
    end: u64,
    ticks: fn(&monitor::Sample) -> u64,
) -> report::Phases<f64> {
    let pct = |phase: usize| {
        let mut it = samples.iter().filter(|s| phase_of(s.at_ms, start, end) == phase);
        let (Some(a), Some(b)) = (it.next(), it.next_back()) else {
            return 0.0;
        };
        let secs = b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0;
        if secs <= 0.0 {
            return 0.0;
        }
        ticks(b).saturating_sub(ticks(a)) as f64 / util::clk_tck() / secs * 100.0
    };
    report::Phases {
        before: pct(0),
        during: pct(1),
        after: pct(2),
    }
}

async fn attack_scenario(a: &AttackOpts) -> Result<(), String> {
    let o = &a.load;
    let mut p = preset(o, 200, 10, 200.0, 0);
    // The phases set the length; --duration does not apply.
    p.duration = a.before + a.attack_secs + a.after;
    validate(o, &p)?;
    validate_attack(a)?;
    let env = Env::new(o, false).await?;
    let run = Run {
        o,
        label: format!("attack {}", a.kind.name()),
        room_prefix: format!("b{}", std::process::id()),
        p,
        stream: None,
    };
    let result = async {
        let node = env.nodes.first().cloned().ok_or("no gateway")?;
        let pid = *env
            .pids
            .first()
            .ok_or("the attack needs the gateway's pid (--server-pid)")?;
        let plan = attack::Plan {
            kind: a.kind,
            sockets: a.sockets.unwrap_or_else(|| a.kind.default_sockets()),
            sources: attack::sources(a.attacker_addr, a.sources)?,
            http: socket_addr(&node.ws_url)?,
            quic: socket_addr(&node.wt_url)?,
            duration: Duration::from_secs(a.attack_secs),
            reopen_after: Duration::from_millis(a.reopen_ms),
            flood_rate: a.flood_rate,
        };
        let mut w = run.connect(&env, true).await?;
        let http = http_client();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = std::time::Instant::now();
        let samples = monitor::sample_every(pid, Duration::from_millis(250), t0);
        let probes = monitor::probe_every(node.clone(), env.jwt_secret.clone(), Duration::from_secs(2), t0);
        let first = w.snapshot(true).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let load = publisher::Load {
            api_urls: vec![node.api_url.clone()],
            api_key: env.api_key.clone(),
            room_prefix: run.room_prefix.clone(),
            rooms: run.rooms(),
            room_size: run.p.room_size,
            rate: run.p.rate,
            batch: run.batch(run.p.rate),
            duration: Duration::from_secs(run.p.duration + 10),
            max_in_flight: 128,
        };
        let pub_task = {
            let (http, stop) = (http.clone(), stop.clone());
            tokio::spawn(async move { publisher::publish(&http, &load, stop).await })
        };

        // One snapshot a second: a latency series, summed into the phases.
        let total = a.before + a.attack_secs + a.after;
        let mut legit = Legit::new(first.status.disconnects);
        let mut attacker = None;
        let (mut start_ms, mut end_ms) = (0, 0);
        for sec in 1..=total {
            tokio::time::sleep_until((t0 + Duration::from_secs(sec)).into()).await;
            let snap = w.snapshot(true).await?;
            let at_ms = t0.elapsed().as_millis() as u64;
            let phase = if sec <= a.before {
                0
            } else if sec <= a.before + a.attack_secs {
                1
            } else {
                2
            };
            legit.add(&snap, phase, at_ms)?;
            if sec == a.before {
                eprintln!(
                    "rtgate-bench: {} from {} address(es) from {} with {} sockets for {} s…",
                    a.kind.name(),
                    plan.sources.len(),
                    a.attacker_addr,
                    plan.sockets,
                    a.attack_secs
                );
                start_ms = at_ms;
                attacker = Some(attack::spawn(plan.clone()));
            }
            if sec == a.before + a.attack_secs {
                end_ms = at_ms;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let published = pub_task.await.map_err(|e| e.to_string())?;
        let expected = w.expected(&published.per_room);
        for _ in 0..50 {
            if legit.received.iter().sum::<u64>() >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let snap = w.snapshot(true).await?;
            legit.add(&snap, 2, t0.elapsed().as_millis() as u64)?;
        }
        let finish_ms = t0.elapsed().as_millis() as u64;
        let attacker = attacker.ok_or("the attack did not start")?;
        let tally = tokio::task::spawn_blocking(move || attacker.join())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the attacker thread panicked".to_string())??;
        eprintln!("rtgate-bench: attacker {tally:?}");
        let samples = samples.finish();
        let probes = probes.finish();
        let received = legit.received.iter().sum::<u64>();
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
        let (rss_kb, fds) = reading_phases(&samples, start_ms, end_ms);
        let mut errors = w.errors.clone();
        errors.extend(published.error_samples.iter().cloned());
        let r = report::AttackResult {
            kind: a.kind.name().into(),
            source: match a.sources {
                1 => a.attacker_addr.to_string(),
                n => format!("{n} addresses {} – {}", a.attacker_addr, plan.sources[n - 1]),
            },
            sockets: plan.sockets,
            attack_secs: secs(start_ms, end_ms),
            gateway_args: o.gateway_args.clone(),
            transport: o.transport.name().into(),
            connected: w.connected,
            room_size: run.p.room_size,
            rate_target: run.p.rate,
            rate_achieved: published.room_events() as f64 / published.elapsed.as_secs_f64(),
            publish_errors: published.errors,
            expected,
            received,
            lost: expected.saturating_sub(received),
            legit: report::Phases {
                before: legit.phase(0, secs(0, start_ms)),
                during: legit.phase(1, secs(start_ms, end_ms)),
                after: legit.phase(2, secs(end_ms, finish_ms)),
            },
            legit_seconds: legit.seconds,
            rss_kb,
            fds,
            cpu_pct: cpu_phases(&samples, start_ms, end_ms, |s| s.cpu_ticks),
            bench_cpu_pct: cpu_phases(&samples, start_ms, end_ms, |s| s.bench_cpu_ticks),
            machine_cpu_pct: cpu_phases(&samples, start_ms, end_ms, |s| s.machine_cpu_ticks),
            cpus: util::machine().cpus,
            new_ws: probe_phases(&probes, target::Transport::Ws, start_ms, end_ms),
            new_wt: probe_phases(&probes, target::Transport::Wt, start_ms, end_ms),
            attacker: tally,
            samples,
            probes,
            errors,
        };
        w.close().await;
        Ok::<_, String>(r)
    }
    .await;
    env.finish();
    let r = result?;
    let name = format!("attack-{}", a.kind.name());
    write_outputs(o, "attack", &name, &r, &report::attack_table(&r))
}

fn preset(o: &Opts, connections: u64, room_size: u64, rate: f64, duration: u64) -> Preset {
    Preset {
        connections: o.connections.unwrap_or(connections),
        room_size: o.room_size.unwrap_or(room_size),
        rate: o.rate.unwrap_or(rate),
        duration: o.duration.unwrap_or(duration),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Worker => worker::run().await,
        Cmd::Run(o) => load_scenario(o, "run", preset(o, 1000, 10, 100.0, 10)).await,
        Cmd::Seed(o) => load_scenario(o, "seed", preset(o, 10_000, 10, 1000.0, 60)).await,
        Cmd::Ingest(o) => load_scenario(o, "ingest", preset(o, 10_000, 10, 1000.0, 30)).await,
        Cmd::IdleMemory(o) => idle_memory(o, preset(o, 10_000, 0, 0.0, 5)).await,
        Cmd::Sweep(o) => sweep(o, preset(o, 10_000, 10, 0.0, 10)).await,
        Cmd::ReconnectStorm(o) => {
            let mut o = o.clone();
            if o.redis.is_none() && o.rtgate_bin.is_some() {
                o.redis = Some("redis://127.0.0.1:6379".into());
            }
            storm(&o, preset(&o, 10_000, 10, 200.0, 60)).await
        }
        Cmd::Attack(a) => attack_scenario(a).await,
        Cmd::Deliveries(o) => deliveries::run(o).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtgate-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Opts {
        let mut full = vec!["rtgate-bench", "run"];
        full.extend_from_slice(args);
        match Cli::parse_from(full).cmd {
            Cmd::Run(o) => o,
            _ => unreachable!(),
        }
    }

    fn p() -> Preset {
        Preset {
            connections: 10,
            room_size: 2,
            rate: 10.0,
            duration: 1,
        }
    }

    fn attack_opts(args: &[&str]) -> AttackOpts {
        let mut full = vec!["rtgate-bench", "attack"];
        full.extend_from_slice(args);
        match Cli::parse_from(full).cmd {
            Cmd::Attack(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn attacks_are_bounded_and_stay_on_loopback() {
        let a = attack_opts(&["--kind=slowloris", "--rtgate-bin=/bin/true"]);
        assert!(validate_attack(&a).is_ok());
        assert_eq!(a.attacker_addr.to_string(), "127.0.0.2");
        let a = attack_opts(&["--kind=silent-ws", "--attacker-addr=10.0.0.2"]);
        assert!(validate_attack(&a).unwrap_err().contains("loopback"));
        let a = attack_opts(&["--kind=quic-handshakes", "--sockets=100000"]);
        assert!(validate_attack(&a).is_err());
        let a = attack_opts(&["--kind=slow-body", "--attack-secs=600"]);
        assert!(validate_attack(&a).is_err());
        assert_eq!(
            socket_addr("ws://127.0.0.1:8080/ws"),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        assert!(
            socket_addr("ws://10.0.0.1:8080/ws")
                .unwrap_err()
                .contains("loopback")
        );
        assert!(
            socket_addr("ws://localhost:8080/ws").is_err(),
            "needs an IP literal"
        );
    }

    #[test]
    fn readings_split_into_phases() {
        let at = |at_ms, rss_kb, fds| monitor::Sample {
            at_ms,
            rss_kb,
            fds,
            cpu_ticks: at_ms / 10,
            bench_cpu_ticks: 0,
            machine_cpu_ticks: 0,
        };
        let samples = [
            at(0, 10, 5),
            at(900, 11, 6),
            at(1000, 50, 90),
            at(1500, 40, 99),
            at(2500, 30, 7),
        ];
        let (rss, fds) = reading_phases(&samples, 1000, 2000);
        assert_eq!((rss.before, rss.during, rss.after), (11, 50, 30));
        assert_eq!((fds.before, fds.during, fds.after), (6, 99, 7));
        let cpu = cpu_phases(&samples, 1000, 2000, |s| s.cpu_ticks);
        let full = 100.0 * 100.0 / util::clk_tck();
        assert!((cpu.before - full).abs() < 1e-6, "{}", cpu.before);
        assert_eq!(cpu.after, 0.0, "one reading only");
    }

    #[test]
    fn non_loopback_targets_are_refused() {
        let o = opts(&[
            "--ws-url=ws://10.1.2.3:8080/ws",
            "--wt-url=https://127.0.0.1:4433/wt",
            "--api-url=http://127.0.0.1:8080",
            "--jwt-secret=x",
            "--api-key=y",
        ]);
        assert!(validate(&o, &p()).unwrap_err().contains("loopback"));
        let o = opts(&["--rtgate-bin=/bin/true", "--redis=redis://redis.example:6379"]);
        assert!(validate(&o, &p()).unwrap_err().contains("loopback"));
    }

    #[test]
    fn loopback_targets_and_bounds() {
        let o = opts(&[
            "--ws-url=ws://127.0.0.1:8080/ws",
            "--wt-url=https://127.0.0.1:4433/wt",
            "--api-url=http://127.0.0.1:8080",
            "--jwt-secret=x",
            "--api-key=y",
        ]);
        assert!(validate(&o, &p()).is_ok());
        let mut big = p();
        big.duration = 100_000;
        assert!(validate(&o, &big).is_err());
        let o = opts(&["--rtgate-bin=/bin/true", "--nodes=2"]);
        assert!(validate(&o, &p()).unwrap_err().contains("--redis"));
    }
}
