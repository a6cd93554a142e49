//! The deployment files in `deploy/`, each exercised as written: nginx and HAProxy (the
//! Debian packages) in front of two nodes on one Redis, with clients going through them on
//! every transport they carry; the systemd unit verified by systemd, and its environment
//! file starting a production gateway; the Grafana dashboard's queries against what a
//! gateway exports. Only addresses and ports are rewritten.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::raw::{RawHttp, RawWs};
use common::redis::{SHARED_REDIS, free_tcp_port, free_udp_port, unique_prefix};
use common::*;
use futures::{SinkExt, StreamExt};
use rtgate_client::{Client, ClientConfig, ClientEvent, TransportPreference, fixed_token};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// An API key long enough for production mode.
const PRODUCTION_KEY: &str = "a-production-key-of-enough-length";

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `text` with each `from` replaced by its `to`; each must occur exactly once, so that a
/// change to the file that the test no longer matches fails here, not silently.
fn rewrite(text: &str, replacements: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in replacements {
        assert_eq!(out.matches(from).count(), 1, "{from:?} once in the file");
        out = out.replace(from, to);
    }
    out
}

/// A process stopped with SIGTERM (nginx's master then stops its workers) and waited for
/// on drop; SIGKILL if it lingers.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for_tcp(port: u16) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens on {port}");
}

/// Two nodes on one Redis sharing one certificate (as nodes behind one name do).
async fn two_nodes(certs: &Path) -> (TestGateway, TestGateway) {
    rtgate_server::certs::dev_identity(certs).await.unwrap();
    let prefix = unique_prefix("deploy");
    let node = || {
        let mut c = redis_config(SHARED_REDIS, &prefix);
        c.cert = Some(certs.join("dev-cert.pem"));
        c.key = Some(certs.join("dev-key.pem"));
        // Behind a proxy every client has the proxy's address.
        c.max_connections_per_ip = 0;
        TestGateway::start_with(c)
    };
    let a = node().await.ready().await;
    let b = node().await.ready().await;
    assert_eq!(a.gw.cert_sha256, b.gw.cert_sha256);
    (a, b)
}

/// The HTTP port of a proxy, and how to reach the gateway through it.
struct Front {
    http: u16,
    udp: Option<u16>,
    client: reqwest::Client,
}

impl Front {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.http)
    }

    async fn put(&self, path: &str, body: Value) {
        let r = self
            .client
            .put(self.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    async fn publish(&self, room: &str, content: &str) {
        let r = self
            .client
            .post(self.url("/api/v1/publish"))
            .bearer_auth(API_KEY)
            .json(
                &json!({"rooms": [room], "event": {"name": "message.created", "accountId": "1",
                          "json": json!({"content": content}).to_string()}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// A native client through the proxy over `prefer`, subscribed to `inbox:3`.
    async fn client(
        &self,
        prefer: TransportPreference,
        cert: [u8; 32],
    ) -> (Client, tokio::sync::mpsc::UnboundedReceiver<ClientEvent>) {
        let wt = format!("https://127.0.0.1:{}/wt", self.udp.unwrap_or(1));
        let mut config = ClientConfig::new(wt, self.ws("/ws"), fixed_token(token("agent", 7, 1, &[3])));
        config.cert_sha256 = Some(cert);
        config.prefer = prefer;
        let (client, mut events) = Client::connect(config);
        tokio::time::timeout(Duration::from_secs(10), client.connected())
            .await
            .expect("connects in time")
            .expect("connects");
        loop {
            if let ClientEvent::Connected(_) = next(&mut events).await {
                break;
            }
        }
        client.subscribe("inbox:3", None).await.unwrap();
        (client, events)
    }

    /// The HTTP fallback through the proxy: the stream stays open on one node while the
    /// sends land on whichever node the proxy picks, in order; events reach the stream.
    async fn check_http_fallback(&self) {
        use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};
        let base = self.url("");
        let (mut http, _) = RawHttp::handshake(&base, &token("agent", 7, 1, &[3])).await;
        for n in 1..=10u64 {
            let ping = pb::ClientFrame {
                id: 0,
                kind: Some(C::Ping(pb::Ping { nonce: n })),
            };
            let status = http.send_to(&base, &[ping]).await;
            assert!(status == 202 || status == 204, "{status}");
        }
        let mut pongs = Vec::new();
        while pongs.len() < 10 {
            if let Some(S::Pong(p)) = http.recv().await.expect("the stream stays open").kind {
                pongs.push(p.nonce);
            }
        }
        assert_eq!(pongs, (1..=10).collect::<Vec<_>>());
        self.publish("user:7", "over plain HTTP").await;
        loop {
            if let Some(S::Event(e)) = http.recv().await.expect("the stream stays open").kind
                && e.event.is_some_and(|e| e.json.contains("over plain HTTP"))
            {
                break;
            }
        }
    }

    /// Every transport the proxy carries, end to end: a native client receives what the
    /// API publishes (each possibly through another node), the HTTP fallback works, and
    /// an ActionCable client gets its subscription confirmed and its broadcasts.
    async fn check(&self, transports: &[TransportPreference], cert: [u8; 32]) {
        self.check_http_fallback().await;
        for &prefer in transports {
            let (_client, mut events) = self.client(prefer, cert).await;
            let content = format!("through the proxy over {prefer:?}");
            self.publish("inbox:3", &content).await;
            let (room, _, json) = next_room_event(&mut events).await;
            assert_eq!(
                (room.as_str(), json),
                ("inbox:3", json!({"content": content}).to_string())
            );
        }
        self.put(
            "/api/v1/mirror/pubsub-tokens",
            json!({"token": "deploy-token", "userId": 7}),
        )
        .await;
        self.put(
            "/api/v1/mirror/account-users/7",
            json!({"id": 7, "accountId": 1, "userId": 7}),
        )
        .await;
        let (mut cable, _) = tokio_tungstenite::connect_async(self.ws("/cable")).await.unwrap();
        let identifier =
            json!({"channel": "RoomChannel", "pubsub_token": "deploy-token", "account_id": 1, "user_id": 7});
        let mut texts = Vec::new();
        cable
            .send(Message::Text(
                json!({"command": "subscribe", "identifier": identifier.to_string()})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        let mut published = false;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), cable.next()).await {
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "confirm_subscription" && !published {
                published = true;
                self.publish("user:7", "to /cable").await;
            }
            let done = v["message"]["data"]["content"] == "to /cable";
            texts.push(v);
            if done {
                return;
            }
        }
        panic!("/cable through the proxy: {texts:?}");
    }
}

#[tokio::test]
async fn nginx_as_written_carries_websocket_cable_the_api_and_quic_to_two_nodes() {
    let certs = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(certs.path()).await;
    let (http, udp) = (free_tcp_port(), free_udp_port());
    let conf = rewrite(
        &repo_file("deploy/nginx/nginx.conf"),
        &[
            ("listen 80;", format!("listen 127.0.0.1:{http};")),
            (
                "listen 443 udp reuseport;",
                format!("listen 127.0.0.1:{udp} udp reuseport;"),
            ),
            ("server 10.0.0.11:8080;", format!("server {};", a.gw.http_addr)),
            ("server 10.0.0.12:8080;", format!("server {};", b.gw.http_addr)),
            ("server 10.0.0.11:4433;", format!("server {};", a.gw.wt_addr)),
            ("server 10.0.0.12:4433;", format!("server {};", b.gw.wt_addr)),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let globals = format!(
        "daemon off; pid {}; error_log stderr warn;",
        dir.path().join("nginx.pid").display()
    );
    let _nginx = Running(
        Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .args(["-g", &globals])
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx is installed"),
    );
    wait_for_tcp(http).await;
    let front = Front {
        http,
        udp: Some(udp),
        client: reqwest::Client::new(),
    };
    front
        .check(
            &[TransportPreference::WebSocket, TransportPreference::WebTransport],
            a.cert_hash(),
        )
        .await;
}

#[tokio::test]
async fn haproxy_as_written_carries_websocket_cable_and_the_api_and_drops_a_draining_node() {
    let certs = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(certs.path()).await;
    let http = free_tcp_port();
    let cfg = rewrite(
        &repo_file("deploy/haproxy/haproxy.cfg"),
        &[
            ("bind :80", format!("bind 127.0.0.1:{http}")),
            (
                "server node1 10.0.0.11:8080 check",
                format!("server node1 {} check", a.gw.http_addr),
            ),
            (
                "server node2 10.0.0.12:8080 check",
                format!("server node2 {} check", b.gw.http_addr),
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let _haproxy = Running(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .expect("haproxy is installed"),
    );
    wait_for_tcp(http).await;
    let front = Front {
        http,
        udp: None,
        client: reqwest::Client::new(),
    };
    front
        .check(&[TransportPreference::WebSocket], a.cert_hash())
        .await;

    // A node that drains answers /readyz with 503: HAProxy sends new clients elsewhere.
    a.gw.node.begin_drain();
    let mut only_b = 0;
    for _ in 0..200 {
        let (_ws, welcome) = RawWs::handshake(&front.ws("/ws"), &token("agent", 9, 1, &[])).await;
        if welcome.node_id == b.gw.node.session.node_id {
            only_b += 1;
            if only_b == 6 {
                break;
            }
        } else {
            only_b = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        only_b, 6,
        "six new connections in a row on the node that is not draining"
    );
}

#[tokio::test]
async fn the_systemd_unit_verifies_and_its_environment_file_starts_a_production_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_rtgate"));
    let unit = rewrite(
        &repo_file("deploy/systemd/rtgate.service"),
        &[(
            "ExecStart=/usr/local/bin/rtgate",
            format!("ExecStart={}", binary.display()),
        )],
    );
    let unit_path = dir.path().join("rtgate.service");
    std::fs::write(&unit_path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze is installed");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    // The user, the environment file and the network target exist only on a real host.
    let complaints: Vec<&str> = complaints.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        verify.status.success() && complaints.is_empty(),
        "{complaints:#?}"
    );

    // The environment file's settings, with this machine's certificate, ports and secrets.
    rtgate_server::certs::dev_identity(dir.path()).await.unwrap();
    let (http, wt) = (free_tcp_port(), free_udp_port());
    let env = rewrite(
        &repo_file("deploy/systemd/rtgate.env.example"),
        &[
            (
                "RTGATE_HTTP_LISTEN=[::]:8080",
                format!("RTGATE_HTTP_LISTEN=127.0.0.1:{http}"),
            ),
            (
                "RTGATE_WT_LISTEN=[::]:4433",
                format!("RTGATE_WT_LISTEN=127.0.0.1:{wt}"),
            ),
            (
                "RTGATE_CERT=/etc/rtgate/fullchain.pem",
                format!("RTGATE_CERT={}", dir.path().join("dev-cert.pem").display()),
            ),
            (
                "RTGATE_KEY=/etc/rtgate/key.pem",
                format!("RTGATE_KEY={}", dir.path().join("dev-key.pem").display()),
            ),
            (
                "RTGATE_API_KEY=change-me-to-a-long-random-api-key",
                format!("RTGATE_API_KEY={PRODUCTION_KEY}"),
            ),
            (
                "RTGATE_REDIS=redis://127.0.0.1:6379",
                format!("RTGATE_REDIS={SHARED_REDIS}"),
            ),
        ],
    );
    let vars: Vec<(String, String)> = env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let exec = repo_file("deploy/systemd/rtgate.service");
    let args: Vec<&str> = exec
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/rtgate"))
        .unwrap()
        .split_whitespace()
        .collect();
    let _gateway = Running(
        Command::new(&binary)
            .args(&args)
            .env_clear()
            .env("RTGATE_REDIS_PREFIX", unique_prefix("unit"))
            .envs(vars)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http_client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = http_client
            .get(format!("http://127.0.0.1:{http}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "the unit's gateway is ready");
    // Production: no development endpoints; the API answers to the configured key.
    let dev = http_client
        .get(format!("http://127.0.0.1:{http}/dev/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(dev.status(), 404);
    let presence = http_client
        .get(format!("http://127.0.0.1:{http}/api/v1/presence/1"))
        .bearer_auth(PRODUCTION_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(presence.status(), 200);
}

/// The metric families (`# TYPE` lines) of a Prometheus text.
fn families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_a_working_gateway_exports() {
    let dashboard: Value = serde_json::from_str(&repo_file("deploy/grafana/rtgate-dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    exprs.push(e.clone());
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    assert!(exprs.len() > 20, "the dashboard has its panels: {}", exprs.len());
    let wanted: std::collections::BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("rtgate_"))
                .map(|w| w.trim_end_matches("_bucket").to_string())
                .collect::<Vec<_>>()
        })
        .collect();

    // A gateway doing a bit of everything the dashboard shows.
    let receiver = common::receiver::Receiver::start().await;
    let mut config = config();
    config.delivery_allow_private = true;
    config.max_connections_per_user = 1;
    config.backend_callback_url = Some(receiver.url("/backend"));
    config.cable_redis = Some(SHARED_REDIS.to_string());
    let channel_prefix = format!("{}_action_cable", unique_prefix("dash"));
    config.cable_channel_prefix = channel_prefix.clone();
    let t = TestGateway::start_with(config).await.ready().await;
    let webhook = json!({"id": "1", "accountId": "1", "url": receiver.url("/hook"), "subscriptions": ["message_created"]});
    assert_eq!(
        t.put_json("/api/v1/destinations/webhooks/1", webhook).await.0,
        200
    );
    let (client, mut events) = t
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[3]))
        .await;
    client.subscribe("inbox:3", None).await.unwrap();
    // A second connection of the same user is refused (one allowed here); a bad token too.
    let mut refused = RawWs::connect(&t.ws_url()).await;
    refused
        .send(&common::raw::hello(&token("agent", 7, 1, &[])))
        .await;
    refused.until_end().await;
    let mut bad = RawWs::connect(&t.ws_url()).await;
    bad.send(&common::raw::hello("not-a-token")).await;
    bad.until_end().await;
    t.publish(&["inbox:3"], "message.created", "{}").await;
    let now = now_unix() as i64 * 1000;
    let outcomes = t
        .post_events(vec![
            json!({"id": unique_prefix("ev"), "name": "message.created", "accountId": "1", "occurredAtMs": now.to_string(),
                   "conversation": {"displayId": "42", "inboxId": "3"},
                   "message": {"id": "9", "messageType": "MESSAGE_TYPE_INCOMING"},
                   "payload": "{}", "webhookPayload": "{\"id\":9}"}),
            json!({"id": unique_prefix("ev"), "name": "assignee.changed", "accountId": "1",
                   "conversation": {"displayId": "42", "inboxId": "3", "assigneeId": "7"}, "payload": "{}"}),
        ])
        .await;
    assert!(
        outcomes.iter().all(|(s, _)| s == "STATUS_ACCEPTED"),
        "{outcomes:?}"
    );
    next_room_event(&mut events).await;
    next_room_event(&mut events).await;
    receiver.wait_for("/hook", 200, 1, Duration::from_secs(10)).await;
    let (mut cable, _) = tokio_tungstenite::connect_async(t.ws_url().replace("/ws", "/cable"))
        .await
        .unwrap();
    let identifier = json!({"channel": "RoomChannel", "pubsub_token": "unknown"}).to_string();
    cable
        .send(Message::Text(
            json!({"command": "subscribe", "identifier": identifier})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), cable.next()).await {
        if matches!(&msg, Message::Text(t) if t.contains("reject_subscription")) {
            break;
        }
    }
    // A broadcast of an unchanged Rails, once the relay listens.
    for _ in 0..200 {
        if t.metrics_text().await.contains("rtgate_cable_relay_active 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let redis = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = ::redis::cmd("PUBLISH")
        .arg(format!("{channel_prefix}:account_1"))
        .arg(json!({"event": "contact.updated", "data": {"account_id": 1}}).to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(client);

    let mut missing = wanted.clone();
    for _ in 0..100 {
        let exported = families(&t.metrics_text().await);
        missing = wanted.difference(&exported).cloned().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the gateway does not export: {missing:?}"
    );
}
