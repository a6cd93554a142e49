//! Test harness: gateways on ephemeral loopback ports, tokens, the server API, and raw
//! frame-level clients for both transports.
#![allow(dead_code)]

pub mod cluster;
pub mod harness;
pub mod process;
pub mod proxy;
pub mod quic;
pub mod raw;
pub mod receiver;
pub mod redis;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtgate_client::{Client, ClientConfig, ClientEvent, TransportPreference, fixed_token};
use rtgate_protocol::pb;
use rtgate_server::{Config, Gateway};
use serde_json::json;
use tokio::sync::mpsc;

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const API_KEY: &str = "test-api-key";

/// Both transports, for tests that run over each.
pub const TRANSPORTS: [TransportPreference; 2] =
    [TransportPreference::WebTransport, TransportPreference::WebSocket];

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub struct TestGateway {
    pub gw: Gateway,
    pub http: reqwest::Client,
    _certs: tempfile::TempDir,
}

/// A configuration on Redis at `url`, keys under `prefix`.
pub fn redis_config(url: &str, prefix: &str) -> Config {
    let mut c = config();
    c.redis = Some(url.to_string());
    c.redis_prefix = prefix.to_string();
    c
}

pub fn config() -> Config {
    let mut config = Config::ephemeral();
    config.jwt_secret = Some(SECRET.into());
    config.api_key = Some(API_KEY.into());
    config
}

impl TestGateway {
    /// A node on the shared Redis under `prefix`, ready.
    pub async fn on_shared_redis(prefix: &str) -> Self {
        Self::start_with(redis_config(redis::SHARED_REDIS, prefix))
            .await
            .ready()
            .await
    }

    pub async fn start() -> Self {
        Self::start_with(config()).await
    }

    pub async fn start_with(mut config: Config) -> Self {
        let certs = tempfile::tempdir().unwrap();
        config.cert_dir = certs.path().to_path_buf();
        let gw = Gateway::start(config).await.expect("gateway starts");
        TestGateway {
            gw,
            http: reqwest::Client::new(),
            _certs: certs,
        }
    }

    /// Waits until `/readyz` says ready (the engine is connected).
    pub async fn ready(self) -> Self {
        self.wait_ready(true).await;
        self
    }

    /// Waits until `/readyz` answers `ready` (200) or not (503).
    pub async fn wait_ready(&self, ready: bool) {
        let want = if ready { 200 } else { 503 };
        for _ in 0..500 {
            if let Ok(r) = self.http.get(self.api("/readyz")).send().await
                && r.status() == want
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("readyz never answered {want}");
    }

    /// GET an API path with the API key; the JSON answer.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.api(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn wt_url(&self) -> String {
        format!("https://127.0.0.1:{}/wt", self.gw.wt_addr.port())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.gw.http_addr.port())
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.gw.http_addr.port(), path)
    }

    pub fn cert_hash(&self) -> [u8; 32] {
        hex::decode(&self.gw.cert_sha256).unwrap().try_into().unwrap()
    }

    pub fn client_config(&self, prefer: TransportPreference, token: &str) -> ClientConfig {
        let mut c = ClientConfig::new(self.wt_url(), self.ws_url(), fixed_token(token));
        c.cert_sha256 = Some(self.cert_hash());
        c.prefer = prefer;
        c
    }

    /// A connected client and its events (Connected already consumed).
    pub async fn client(
        &self,
        prefer: TransportPreference,
        token: &str,
    ) -> (Client, mpsc::UnboundedReceiver<ClientEvent>) {
        let (client, mut events) = Client::connect(self.client_config(prefer, token));
        tokio::time::timeout(Duration::from_secs(10), client.connected())
            .await
            .expect("connects in time")
            .expect("connects");
        loop {
            if let ClientEvent::Connected(_) = next(&mut events).await {
                break;
            }
        }
        (client, events)
    }

    /// POSTs domain events (JSON mapping) to `/api/v1/events`; each one's (status, reason).
    pub async fn post_events(&self, events: Vec<serde_json::Value>) -> Vec<(String, String)> {
        let resp = self
            .http
            .post(self.api("/api/v1/events"))
            .bearer_auth(API_KEY)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        body["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["status"].as_str().unwrap_or("").to_string(),
                    o["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// PUTs a JSON body to an API path; the status and the answer.
    pub async fn put_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .put(self.api(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.api("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Publishes a JSON event to rooms through the server API; returns the offsets.
    pub async fn publish(&self, rooms: &[&str], name: &str, json_payload: &str) -> Vec<u64> {
        let resp = self
            .http
            .post(self.api("/api/v1/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({
                "rooms": rooms,
                "event": { "name": name, "accountId": "1", "json": json_payload },
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "publish failed: {}",
            resp.text().await.unwrap()
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        body["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["position"]["offset"].as_str().map_or_else(
                    || p["position"]["offset"].as_u64().unwrap(),
                    |s| s.parse().unwrap(),
                )
            })
            .collect()
    }
}

pub fn token_with(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A connection token.
pub fn token(role: &str, id: u64, account: u64, inboxes: &[u64]) -> String {
    token_with(json!({
        "sub": id.to_string(), "account_id": account, "role": role, "inboxes": inboxes,
        "exp": now_unix() + 3600,
    }))
}

/// A subscription token granting `room` to the holder whose own room is `holder`.
pub fn sub_token(holder: &str, room: &str, exp_in: i64) -> String {
    token_with(json!({ "sub": holder, "room": room, "exp": (now_unix() as i64 + exp_in) as u64 }))
}

/// The next client event (panics after 10 s).
pub async fn next(events: &mut mpsc::UnboundedReceiver<ClientEvent>) -> ClientEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("client running")
}

/// The next room event, skipping everything else (presence updates included); returns
/// (room, offset, json payload).
pub async fn next_room_event(events: &mut mpsc::UnboundedReceiver<ClientEvent>) -> (String, u64, String) {
    loop {
        if let ClientEvent::Event { room, offset, event } = next(events).await
            && event.name != "presence.update"
        {
            return (room.to_string(), offset, event.json);
        }
    }
}

/// The next Disconnected event.
pub async fn next_disconnect(
    events: &mut mpsc::UnboundedReceiver<ClientEvent>,
) -> (Option<u32>, Option<Duration>) {
    loop {
        if let ClientEvent::Disconnected { code, reconnect, .. } = next(events).await {
            return (code, reconnect);
        }
    }
}

pub fn event(name: &str) -> pb::Event {
    pb::Event {
        name: name.into(),
        ..Default::default()
    }
}

/// A `message.created` domain event in the JSON mapping, as a Rails backend writes it
/// (conversation 42 of inbox 3, contact inbox 501).
pub fn message_created_event(id: &str, private: bool, content: &str) -> serde_json::Value {
    json!({
        "id": id,
        "name": "message.created",
        "accountId": "1",
        "occurredAtMs": (now_unix() * 1000).to_string(),
        "conversation": { "displayId": "42", "inboxId": "3", "contactInboxIds": ["501"] },
        "message": { "id": "900", "messageType": "MESSAGE_TYPE_OUTGOING", "private": private },
        "payload": json!({ "id": 900, "content": content, "private": private }).to_string(),
    })
}

/// The value of the first sample of `name` (any labels) in a Prometheus text.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
