//! An HTTP endpoint on loopback that deliveries are made to: it answers each path as the
//! test says (a status, `Retry-After`, failing the first attempts of each delivery,
//! hanging), checks signatures with the secret of the path, and records every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rtgate_server::delivery::signing;

/// How a path answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200.
    Ok,
    /// This status.
    Status(u16),
    /// This status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// This status for the first `n` attempts of each delivery id, then 200.
    FailFirst(u16, usize),
    /// Never answers (within a minute).
    Hang,
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub delivery: Option<String>,
    /// Whether the signature checked out with the path's secret; `None`: unsigned.
    pub signed: Option<bool>,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub at: Instant,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    hits: Mutex<Vec<Hit>>,
    modes: Mutex<HashMap<String, Mode>>,
    secrets: Mutex<HashMap<String, Vec<u8>>>,
    attempts: Mutex<HashMap<(String, String), usize>>,
    notify: tokio::sync::Notify,
}

/// The receiver.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = inner
        .modes
        .lock()
        .unwrap()
        .get(&path)
        .copied()
        .unwrap_or(Mode::Ok);
    let delivery = headers
        .get(signing::DELIVERY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let signed = headers.get(signing::SIGNATURE_HEADER).map(|sig| {
        let secret = inner
            .secrets
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_default();
        let ts: u64 = headers
            .get(signing::TIMESTAMP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        signing::verify(&secret, ts, &body, sig.to_str().unwrap_or(""))
    });
    let attempt = {
        let mut attempts = inner.attempts.lock().unwrap();
        let n = attempts
            .entry((path.clone(), delivery.clone().unwrap_or_default()))
            .or_default();
        *n += 1;
        *n
    };
    let (status, retry_after) = match mode {
        Mode::Ok => (200, None),
        Mode::Status(code) => (code, None),
        Mode::RetryAfter(code, secs) => (code, Some(secs)),
        Mode::FailFirst(code, n) if attempt <= n => (code, None),
        Mode::FailFirst(..) => (200, None),
        Mode::Hang => (0, None),
    };
    let hit = Hit {
        path,
        delivery,
        signed,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        at: Instant::now(),
        status,
    };
    inner.hits.lock().unwrap().push(hit);
    inner.notify.notify_waiters();
    if mode == Mode::Hang {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return StatusCode::OK.into_response();
    }
    let code = StatusCode::from_u16(status).unwrap();
    match retry_after {
        Some(secs) => (code, [(header::RETRY_AFTER, secs.to_string())]).into_response(),
        None => code.into_response(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/{*path}", axum::routing::post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, inner }
    }

    /// The URL of a path (no leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn set(&self, path: &str, mode: Mode) {
        self.inner.modes.lock().unwrap().insert(path.to_string(), mode);
    }

    pub fn secret(&self, path: &str, secret: &str) {
        self.inner
            .secrets
            .lock()
            .unwrap()
            .insert(path.to_string(), secret.as_bytes().to_vec());
    }

    /// Every request to `path` so far.
    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.inner
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests answered `status` (0: any);
    /// panics after `within`.
    pub async fn wait_for(&self, path: &str, status: u16, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.inner.notify.notified();
            let hits: Vec<Hit> = self
                .hits(path)
                .into_iter()
                .filter(|h| status == 0 || h.status == status)
                .collect();
            if hits.len() >= n {
                return hits;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{path}: {} of {n} requests answered {status} in {within:?}",
                    hits.len()
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }
}
