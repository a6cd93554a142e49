//! The publisher: room-events through the server API at a fixed rate.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::util::unix_us;
use crate::worker::{new_histogram, room_name};

/// What to publish.
#[derive(Debug, Clone)]
pub struct Load {
    /// Server API base URLs; requests rotate over them.
    pub api_urls: Vec<String>,
    /// Bearer key.
    pub api_key: String,
    /// Room name prefix.
    pub room_prefix: String,
    /// Rooms `0..rooms`.
    pub rooms: u64,
    /// Connections per room (rooms are named after their members' account).
    pub room_size: u64,
    /// Room-events per second.
    pub rate: f64,
    /// Rooms per request.
    pub batch: usize,
    /// How long.
    pub duration: Duration,
    /// Requests in flight at most.
    pub max_in_flight: usize,
}

/// What was published.
#[derive(Debug)]
pub struct Published {
    /// Successful room-events per room.
    pub per_room: Vec<u64>,
    /// Failed requests.
    pub errors: u64,
    /// A few error messages.
    pub error_samples: Vec<String>,
    /// Publishing time.
    pub elapsed: Duration,
    /// API round trips, µs.
    pub latency: Histogram<u64>,
}

impl Published {
    /// Successful room-events.
    pub fn room_events(&self) -> u64 {
        self.per_room.iter().sum()
    }
}

/// Publishes `load` until its duration passes or `stop` is set.
pub async fn publish(http: &reqwest::Client, load: &Load, stop: Arc<AtomicBool>) -> Published {
    let per_room: Arc<Vec<AtomicU64>> = Arc::new((0..load.rooms).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::<String>::new()));
    let latency = Arc::new(Mutex::new(new_histogram()));
    let sem = Arc::new(Semaphore::new(load.max_in_flight.max(1)));
    let batch = load.batch.clamp(1, load.rooms.max(1) as usize);
    let req_rate = load.rate / batch as f64;
    let total = (req_rate * load.duration.as_secs_f64()).round() as u64;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut cursor = 0u64;
    let mut n = 0usize;
    'outer: while sent < total && !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * req_rate) as u64).min(total);
        while sent < due {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            let permit = sem.clone().acquire_owned().await.expect("open");
            let rooms: Vec<u64> = (0..batch as u64).map(|k| (cursor + k) % load.rooms).collect();
            cursor = (cursor + batch as u64) % load.rooms;
            let url = format!("{}/api/v1/publish", load.api_urls[n % load.api_urls.len()]);
            n += 1;
            sent += 1;
            let names: Vec<String> = rooms
                .iter()
                .map(|r| format!("\"{}\"", room_name(&load.room_prefix, *r, load.room_size)))
                .collect();
            let http = http.clone();
            let key = load.api_key.clone();
            let per_room = per_room.clone();
            let errors = errors.clone();
            let samples = samples.clone();
            let latency = latency.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let t0 = unix_us();
                let body = format!(
                    r#"{{"rooms":[{}],"event":{{"name":"client.bench","json":"{t0}"}}}}"#,
                    names.join(",")
                );
                let res = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let ok = match res {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        Ok(())
                    }
                    Ok(r) => {
                        let status = r.status();
                        Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
                    }
                    Err(e) => Err(e.to_string()),
                };
                match ok {
                    Ok(()) => {
                        let _ = latency
                            .lock()
                            .expect("not poisoned")
                            .record(unix_us().saturating_sub(t0).max(1));
                        for r in rooms {
                            per_room[r as usize].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut s = samples.lock().expect("not poisoned");
                        if s.len() < 5 {
                            s.push(e);
                        }
                    }
                }
            });
        }
    }
    let elapsed = started.elapsed();
    // Wait (bounded) for requests in flight.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        sem.acquire_many(load.max_in_flight.max(1) as u32),
    )
    .await;
    let latency = latency.lock().expect("not poisoned").clone();
    let error_samples = samples.lock().expect("not poisoned").clone();
    Published {
        per_room: per_room.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
        errors: errors.load(Ordering::Relaxed),
        error_samples,
        elapsed,
        latency,
    }
}

/// Where domain events go: the gateways' Redis Stream.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Redis URL (loopback).
    pub redis: String,
    /// The stream's key.
    pub key: String,
}

/// Writes Chatwoot-shaped domain events (`message.created`, each for one inbox room and
/// its contact) to the stream at `load.rate` events/s, as a backend's after-commit hook
/// would; `per_room` counts events per inbox room. `latency` is the XADD round trip of
/// each pipelined batch.
pub async fn publish_stream(load: &Load, stream: &Stream, stop: Arc<AtomicBool>) -> Published {
    let mut per_room = vec![0u64; load.rooms as usize];
    let mut errors = 0u64;
    let mut error_samples = Vec::new();
    let mut latency = new_histogram();
    let connected = match redis::Client::open(stream.redis.as_str()) {
        Ok(client) => client.get_multiplexed_async_connection().await,
        Err(e) => Err(e),
    };
    let mut conn = match connected {
        Ok(c) => c,
        Err(e) => {
            return Published {
                per_room,
                errors: 1,
                error_samples: vec![e.to_string()],
                elapsed: Duration::ZERO,
                latency,
            };
        }
    };
    let total = (load.rate * load.duration.as_secs_f64()).round() as u64;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut cursor = 0u64;
    let run = std::process::id();
    while sent < total && !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * load.rate) as u64).min(total);
        if due <= sent {
            continue;
        }
        let mut pipe = redis::pipe();
        let mut rooms = Vec::with_capacity((due - sent) as usize);
        let t0 = unix_us();
        for n in sent..due {
            let room = cursor % load.rooms.max(1);
            cursor += 1;
            let account = crate::worker::account_of(room * load.room_size, load.room_size);
            // The room's contact is its last member (see `worker::is_contact`).
            let contact = room * load.room_size + load.room_size;
            let event = serde_json::json!({
                "id": format!("b{run}-{n}"),
                "name": "message.created",
                "accountId": account.to_string(),
                "occurredAtMs": (t0 / 1000).to_string(),
                "conversation": {
                    "displayId": (room + 1).to_string(),
                    "inboxId": (room + 1).to_string(),
                    "contactInboxIds": [contact.to_string()],
                },
                "message": { "id": n.to_string(), "messageType": "MESSAGE_TYPE_OUTGOING" },
                "payload": format!(r#"{{"id":{n},"content":"bench","message_type":1,"sent_us":{t0}}}"#),
            });
            pipe.cmd("XADD")
                .arg(&stream.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(1_000_000)
                .arg("*")
                .arg("json")
                .arg(event.to_string())
                .ignore();
            rooms.push(room);
        }
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => {
                let _ = latency.record(unix_us().saturating_sub(t0).max(1));
                for room in rooms {
                    per_room[room as usize] += 1;
                }
            }
            Err(e) => {
                errors += 1;
                if error_samples.len() < 5 {
                    error_samples.push(e.to_string());
                }
            }
        }
        sent = due;
    }
    Published {
        per_room,
        errors,
        error_samples,
        elapsed: started.elapsed(),
        latency,
    }
}

/// Removes the stream and its companion keys (ids, lease, dead letters): a run leaves
/// nothing behind in the shared Redis.
pub async fn remove_stream(stream: &Stream) -> Result<u64, String> {
    remove_keys_starting(&stream.redis, &stream.key).await
}

/// Removes every key that starts with `start` (taken literally), SCAN by SCAN.
pub async fn remove_keys_starting(redis_url: &str, start: &str) -> Result<u64, String> {
    let client = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut cursor = 0u64;
    let mut removed = 0u64;
    let pattern = format!(
        "{}*",
        start.replace('[', "\\[").replace('*', "\\*").replace('?', "\\?")
    );
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
