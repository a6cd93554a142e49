//! The delivery benchmark: a gateway started from `--rtgate-bin`, one account webhook
//! pointing at a receiver in this process (HTTP/1.1 on loopback, signature checked), and
//! `message.created` domain events posted at a fixed rate; each event is one delivery.
//! Measured: deliveries per second, latency from the event's publication to its arrival
//! at the receiver, and the gateway's CPU per delivery. With `--second hanging`, a second
//! webhook receives every event too and never answers (each attempt runs into the
//! timeout): the healthy endpoint's figures show what that costs it, against
//! `--second healthy` (a second endpoint that answers) as the baseline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::gateway::{Gateway, Spec};
use crate::report::Latency;
use crate::util::{self, unix_us};

/// Options of `rtgate-bench deliveries`.
#[derive(Args, Clone, Debug)]
pub struct DeliveryOpts {
    /// The `rtgate` binary to start (fresh certificate, own credentials).
    #[arg(long)]
    pub rtgate_bin: PathBuf,
    /// Redis URL (loopback): the gateway's engine, and the durable delivery queue.
    #[arg(long)]
    pub redis: Option<String>,
    /// Events (= deliveries to the healthy endpoint) per second.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Conversations the events are spread over.
    #[arg(long, default_value_t = 1000)]
    pub conversations: u64,
    /// A second webhook on every event: `healthy` (a baseline: twice the deliveries) or
    /// `hanging` (never answers: each attempt runs into the timeout).
    #[arg(long, value_enum, default_value = "none")]
    pub second: Second,
    /// Pin the gateway to this CPU.
    #[arg(long)]
    pub gateway_cpu: Option<usize>,
    /// Pin this process (publisher and receiver) to this CPU.
    #[arg(long)]
    pub bench_cpu: Option<usize>,
    /// Extra flag for the gateway (repeat).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

/// The second webhook of a run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Second {
    /// None.
    None,
    /// One that answers at once.
    Healthy,
    /// One that never answers.
    Hanging,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct DeliveryResult {
    /// `healthy`, `healthy + healthy` or `healthy + hanging`.
    pub label: String,
    /// Events posted per second (target).
    pub rate: f64,
    /// Seconds of publishing.
    pub duration_s: u64,
    /// Events accepted by the gateway.
    pub events_accepted: u64,
    /// Deliveries that reached the first endpoint (all of them, after the wait).
    pub delivered: u64,
    /// Deliveries whose signature did not check out.
    pub bad_signatures: u64,
    /// Deliveries per second at the healthy endpoint during the publishing window.
    pub delivered_per_s: f64,
    /// From the event's publication (the backend's POST) to its arrival.
    pub latency: Latency,
    /// Attempts the hanging endpoint received.
    pub hanging_attempts: u64,
    /// Deliveries the second healthy endpoint received.
    pub second_delivered: u64,
    /// Gateway CPU, percent of one core, over the publishing window.
    pub gateway_cpu_pct: f64,
    /// Gateway CPU per event, µs: ingest, the routing and delivery listeners, the queue,
    /// and the event's deliveries (one, or two with a second webhook).
    pub cpu_us_per_event: f64,
    /// Gateway RSS at the end, KiB.
    pub gateway_rss_kb: u64,
}

const SECRET: &str = "bench-webhook-secret";

struct Receiver {
    latency: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    in_window: AtomicU64,
    bad_signatures: AtomicU64,
    hanging: AtomicU64,
    second: AtomicU64,
    window_end_us: AtomicU64,
}

fn verify(headers: &hyper::HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (get("x-chatwoot-timestamp"), get("x-chatwoot-signature")) else {
        return false;
    };
    let Some(hex_sig) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

async fn receive(r: Arc<Receiver>, req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    match req.uri().path() {
        "/hang" => {
            r.hanging.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(Response::new(String::new()));
        }
        "/second" => {
            let _ = req.into_body().collect().await;
            r.second.fetch_add(1, Ordering::Relaxed);
            return Ok(Response::new(String::new()));
        }
        _ => {}
    }
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(Response::new(String::new())),
    };
    let now = unix_us();
    if !verify(&headers, &body) {
        r.bad_signatures.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&body)
        && let Some(sent) = v["sent_us"].as_u64()
    {
        let _ = r.latency.lock().unwrap().record(now.saturating_sub(sent).max(1));
    }
    r.delivered.fetch_add(1, Ordering::Relaxed);
    if now <= r.window_end_us.load(Ordering::Relaxed) {
        r.in_window.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Response::new(String::new()))
}

async fn start_receiver(r: Arc<Receiver>) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let r = r.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| receive(r.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn pin(pid: u32, cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity reads it only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("cannot pin {pid} to CPU {cpu}"));
        }
    }
    Ok(())
}

fn event(n: u64, conversations: u64) -> Value {
    let sent = unix_us();
    let conversation = n % conversations + 1;
    json!({
        "id": format!("bench-{}-{n}", std::process::id()),
        "name": "message.created",
        "accountId": "1",
        "occurredAtMs": (sent / 1000).to_string(),
        "conversation": { "displayId": conversation.to_string(), "inboxId": "1", "contactInboxIds": [conversation.to_string()] },
        "message": { "id": n.to_string(), "messageType": "MESSAGE_TYPE_INCOMING" },
        "payload": json!({ "id": n, "content": "hello" }).to_string(),
        "webhookPayload": json!({ "id": n, "content": "hello", "message_type": "incoming",
                                   "sent_us": sent, "account": { "id": 1, "name": "Bench" } }).to_string(),
    })
}

/// Runs the benchmark; writes `deliveries-<label>.json` and prints a markdown row.
pub async fn run(o: &DeliveryOpts) -> Result<(), String> {
    if !(1.0..=50_000.0).contains(&o.rate) || !(1..=600).contains(&o.duration) {
        return Err("--rate is 1 to 50,000 events/s and --duration 1 to 600 s".into());
    }
    if let Some(url) = &o.redis {
        crate::target::require_loopback(url)?;
    }
    if let Some(cpu) = o.bench_cpu {
        pin(std::process::id(), cpu)?;
    }
    let tag = format!("{}-{}", std::process::id(), unix_us());
    let dir = std::env::temp_dir().join(format!("rtgate-bench-{tag}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let api_key = format!("bench-api-key-{tag}");
    let mut extra = vec!["--delivery-allow-private".to_string()];
    extra.extend(o.gateway_args.iter().cloned());
    let spec = Spec {
        bin: o.rtgate_bin.clone(),
        jwt_secret: format!("bench-jwt-secret-{tag}-0123456789abcdef"),
        api_key: api_key.clone(),
        redis: o.redis.clone(),
        redis_prefix: format!("bench-{tag}"),
        extra,
        lift_limits: true,
        dir,
    };
    let gw = Gateway::start(&spec, 0).await?;
    if let Some(cpu) = o.gateway_cpu {
        pin(gw.pid(), cpu)?;
    }
    let receiver = Arc::new(Receiver {
        latency: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")),
        delivered: AtomicU64::new(0),
        in_window: AtomicU64::new(0),
        bad_signatures: AtomicU64::new(0),
        hanging: AtomicU64::new(0),
        second: AtomicU64::new(0),
        window_end_us: AtomicU64::new(u64::MAX),
    });
    let addr = start_receiver(receiver.clone()).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let api = gw.node.api_url.clone();
    let mut hooks = vec![(1, format!("http://{addr}/ok"))];
    match o.second {
        Second::None => {}
        Second::Healthy => hooks.push((2, format!("http://{addr}/second"))),
        Second::Hanging => hooks.push((2, format!("http://{addr}/hang"))),
    }
    for (id, url) in hooks {
        let resp = http
            .put(format!("{api}/api/v1/destinations/webhooks/{id}"))
            .bearer_auth(&api_key)
            .json(&json!({ "accountId": "1", "url": url, "secret": SECRET, "subscriptions": ["message_created"] }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("cannot configure the webhook: {}", resp.status()));
        }
    }

    // Publish: a batch every 10 ms.
    let accepted = Arc::new(AtomicU64::new(0));
    let per_tick = (o.rate / 100.0).max(1.0);
    let ticks = o.duration * 100;
    let before = util::sample(gw.pid()).ok_or("cannot read the gateway's /proc")?;
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0u64;
    let mut owed = 0.0;
    let mut posts = Vec::new();
    for _ in 0..ticks {
        interval.tick().await;
        owed += per_tick;
        let count = owed.floor() as u64;
        owed -= count as f64;
        let events: Vec<Value> = (0..count).map(|i| event(n + i, o.conversations)).collect();
        n += count;
        let (http, api, key, accepted) = (http.clone(), api.clone(), api_key.clone(), accepted.clone());
        posts.push(tokio::spawn(async move {
            let resp = http
                .post(format!("{api}/api/v1/events"))
                .bearer_auth(key)
                .json(&json!({ "events": events }))
                .send()
                .await;
            if let Ok(resp) = resp
                && let Ok(body) = resp.json::<Value>().await
            {
                let ok = body["outcomes"].as_array().map_or(0, |a| {
                    a.iter().filter(|o| o["status"] == "STATUS_ACCEPTED").count()
                });
                accepted.fetch_add(ok as u64, Ordering::Relaxed);
            }
        }));
    }
    receiver.window_end_us.store(unix_us(), Ordering::Relaxed);
    let window = started.elapsed();
    let after = util::sample(gw.pid()).ok_or("cannot read the gateway's /proc")?;
    let in_window = receiver.in_window.load(Ordering::Relaxed);
    for p in posts {
        let _ = p.await;
    }
    // Let the tail arrive.
    let accepted = accepted.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.delivered.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_s = (after.cpu_ticks - before.cpu_ticks) as f64 / util::clk_tck();
    let delivered = receiver.delivered.load(Ordering::Relaxed);
    let result = DeliveryResult {
        label: match o.second {
            Second::None => "healthy".into(),
            Second::Healthy => "healthy + healthy".into(),
            Second::Hanging => "healthy + hanging".into(),
        },
        rate: o.rate,
        duration_s: o.duration,
        events_accepted: accepted,
        delivered,
        bad_signatures: receiver.bad_signatures.load(Ordering::Relaxed),
        delivered_per_s: in_window as f64 / window.as_secs_f64(),
        latency: Latency::from_us(&receiver.latency.lock().unwrap()),
        hanging_attempts: receiver.hanging.load(Ordering::Relaxed),
        second_delivered: receiver.second.load(Ordering::Relaxed),
        gateway_cpu_pct: 100.0 * cpu_s / window.as_secs_f64(),
        cpu_us_per_event: if in_window > 0 {
            cpu_s * 1e6 / in_window as f64
        } else {
            0.0
        },
        gateway_rss_kb: after.rss_kb,
    };
    drop(gw);
    if let Some(url) = &o.redis {
        // The gateway's keys: hash-tagged `{<prefix>:…}` and plain `<prefix>:…`.
        for start in [
            format!("{{{}:", spec.redis_prefix),
            format!("{}:", spec.redis_prefix),
        ] {
            if let Err(e) = crate::publisher::remove_keys_starting(url, &start).await {
                eprintln!("rtgate-bench: could not remove the run's Redis keys: {e}");
            }
        }
    }
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let name = match o.second {
        Second::None => "deliveries",
        Second::Healthy => "deliveries-second-healthy",
        Second::Hanging => "deliveries-second-hanging",
    };
    let path = o.out.join(format!("{name}.json"));
    let json = json!({
        "scenario": "deliveries",
        "date": util::utc_string(unix_us() / 1_000_000),
        "machine": util::machine(),
        "result": result,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).map_err(|e| e.to_string())?;
    let l = &result.latency;
    println!(
        "| {} | {:.0} | {} / {} | {:.0} | {:.2} / {:.2} / {:.2} / {:.2} | {} | {:.1} % | {:.1} |",
        result.label,
        result.rate,
        result.delivered,
        result.events_accepted,
        result.delivered_per_s,
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        result.hanging_attempts,
        result.gateway_cpu_pct,
        result.cpu_us_per_event,
    );
    eprintln!("rtgate-bench: wrote {}", path.display());
    if result.bad_signatures > 0 {
        return Err(format!(
            "{} deliveries had a bad signature",
            result.bad_signatures
        ));
    }
    Ok(())
}
