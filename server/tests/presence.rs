//! Presence, typing, availability and last seen, on one node and across nodes through
//! Redis: online/offline with a grace period, expiry when a node dies, typing exclusions
//! and expiry, availability broadcasts, last seen, Chatwoot's presence keys.

mod common;

use std::time::Duration;

use common::redis::{SHARED_REDIS, free_tcp_port, free_udp_port, unique_prefix};
use common::*;
use rtgate_client::{ClientEvent, TransportPreference};
use rtgate_protocol::pb;
use rtgate_server::Config;

fn fast(mut c: Config) -> Config {
    c.presence_grace = Duration::from_millis(300);
    c.presence_heartbeat = Duration::from_millis(200);
    c.presence_ttl = Duration::from_millis(1000);
    c.presence_debounce = Duration::from_millis(50);
    c.typing_timeout = Duration::from_millis(400);
    c
}

async fn node(prefix: &str) -> TestGateway {
    TestGateway::start_with(fast(redis_config(SHARED_REDIS, prefix)))
        .await
        .ready()
        .await
}

/// The next presence.update entry for user `id`, skipping others: (online, availability).
async fn next_presence(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ClientEvent>,
    id: u64,
) -> (bool, i32) {
    loop {
        if let ClientEvent::Event { event, .. } = next(events).await
            && event.name == "presence.update"
            && let Some(pb::event::Payload::Presence(p)) = event.payload
            && let Some(e) = p.users.iter().chain(p.contacts.iter()).find(|e| e.id == id)
        {
            return (e.online, e.availability);
        }
    }
}

async fn snapshot(t: &TestGateway, account: u64) -> pb::Presence {
    let v: serde_json::Value = t.get_json(&format!("/api/v1/presence/{account}")).await;
    serde_json::from_value(v).unwrap()
}

fn user(p: &pb::Presence, id: u64) -> Option<pb::PresenceEntry> {
    p.users.iter().find(|e| e.id == id).cloned()
}

#[tokio::test]
async fn presence_is_shared_across_nodes_with_a_grace_period() {
    let prefix = unique_prefix("presence");
    let a = node(&prefix).await;
    let b = node(&prefix).await;
    let (watcher, mut watch) = b
        .client(TransportPreference::WebSocket, &token("agent", 8, 1, &[]))
        .await;

    let (first, _e1) = a
        .client(TransportPreference::WebTransport, &token("agent", 7, 1, &[]))
        .await;
    assert_eq!(
        next_presence(&mut watch, 7).await,
        (true, pb::Availability::Online as i32)
    );
    // A second device of the same user changes nothing; closing one of two keeps them online.
    let (second, _e2) = b
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    first.close();
    let snap = snapshot(&a, 1).await;
    assert!(user(&snap, 7).unwrap().online, "{snap:?}");
    second.close();
    let started = std::time::Instant::now();
    assert!(!next_presence(&mut watch, 7).await.0);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "offline only after the grace period"
    );
    let entry = user(&snapshot(&b, 1).await, 7).unwrap();
    assert!(!entry.online);
    assert!(entry.last_seen_at_ms > 0, "last seen recorded on disconnect");
    // The presence frame gives the same picture to agents.
    let p = watcher.presence().await.unwrap();
    assert!(user(&p, 8).unwrap().online);
    assert!(!user(&p, 7).unwrap().online);
    watcher.close();
}

#[tokio::test]
async fn a_killed_node_takes_its_users_offline_by_expiry() {
    let prefix = unique_prefix("killed");
    let b = node(&prefix).await;
    let (watcher, mut watch) = b
        .client(TransportPreference::WebSocket, &token("agent", 8, 1, &[]))
        .await;

    let certs = tempfile::tempdir().unwrap();
    let (wt, http) = (free_udp_port(), free_tcp_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rtgate"))
        .args([
            "--redis",
            SHARED_REDIS,
            "--redis-prefix",
            &prefix,
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--wt-listen",
            &format!("127.0.0.1:{wt}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
            "--presence-ttl",
            "1s",
            "--presence-heartbeat",
            "200ms",
            "--presence-grace",
            "300ms",
        ])
        .arg("--cert-dir")
        .arg(certs.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = false;
    for _ in 0..300 {
        if reqwest::get(format!("http://127.0.0.1:{http}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "the child gateway started");
    let mut cc = rtgate_client::ClientConfig::new(
        format!("https://127.0.0.1:{wt}/wt"),
        format!("ws://127.0.0.1:{http}/ws"),
        rtgate_client::fixed_token(token("agent", 7, 1, &[])),
    );
    cc.prefer = TransportPreference::WebSocket;
    cc.reconnect = false;
    let (doomed, _events) = rtgate_client::Client::connect(cc);
    doomed.connected().await.unwrap();
    assert!(next_presence(&mut watch, 7).await.0);

    // No clean shutdown: the node just dies.
    child.kill().unwrap();
    child.wait().unwrap();
    let started = std::time::Instant::now();
    assert!(!next_presence(&mut watch, 7).await.0);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!user(&snapshot(&b, 1).await, 7).unwrap().online);
    watcher.close();
}

#[tokio::test]
async fn typing_reaches_the_others_not_the_sender_nor_contacts_when_private_and_expires() {
    let prefix = unique_prefix("typing");
    let a = node(&prefix).await;
    let b = node(&prefix).await;
    let room = "conversation:42";
    let join = |who: &str| sub_token(who, room, 60);
    let (sender, mut sender_events) = a
        .client(TransportPreference::WebTransport, &token("agent", 7, 1, &[]))
        .await;
    let (other_device, mut other_device_events) = b
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    let (agent, mut agent_events) = b
        .client(TransportPreference::WebTransport, &token("agent", 8, 1, &[]))
        .await;
    let (contact, mut contact_events) = b
        .client(TransportPreference::WebSocket, &token("contact", 9, 1, &[]))
        .await;
    sender.subscribe(room, Some(&join("user:7"))).await.unwrap();
    other_device.subscribe(room, Some(&join("user:7"))).await.unwrap();
    agent.subscribe(room, Some(&join("user:8"))).await.unwrap();
    contact.subscribe(room, Some(&join("contact:9"))).await.unwrap();

    async fn next_typing(
        events: &mut tokio::sync::mpsc::UnboundedReceiver<ClientEvent>,
    ) -> (String, bool, u64) {
        loop {
            if let ClientEvent::Ephemeral { event, .. } = next(events).await
                && let Some(pb::event::Payload::Typing(t)) = event.payload
            {
                return (event.name, t.private, t.sender.unwrap().id);
            }
        }
    }

    // A private note, across nodes: the other agent sees it, the contact does not.
    // (When the gateway turns an indicator off by itself is the session's business, tested
    // on the hand-clocked harness.)
    sender.typing(room, true, true);
    assert_eq!(
        next_typing(&mut agent_events).await,
        ("conversation.typing_on".into(), true, 7)
    );
    // A public reply from the user's other device: the contact sees it too, and it is the
    // contact's first typing event: the private one never reached it.
    other_device.typing(room, true, false);
    assert_eq!(
        next_typing(&mut contact_events).await,
        ("conversation.typing_on".into(), false, 7)
    );
    assert_eq!(
        next_typing(&mut agent_events).await,
        ("conversation.typing_on".into(), false, 7)
    );
    // Closing the connection turns its indicator off.
    other_device.close();
    assert_eq!(
        next_typing(&mut contact_events).await,
        ("conversation.typing_off".into(), false, 7)
    );
    // The sender's devices hear others typing, never their own.
    agent.typing(room, true, false);
    assert_eq!(
        next_typing(&mut sender_events).await,
        ("conversation.typing_on".into(), false, 8)
    );
    while let Ok(e) = sender_events
        .try_recv()
        .or_else(|_| other_device_events.try_recv())
    {
        if let ClientEvent::Ephemeral { event, .. } = &e
            && let Some(pb::event::Payload::Typing(t)) = &event.payload
        {
            assert_ne!(t.sender.as_ref().unwrap().id, 7, "user 7 heard itself: {e:?}");
        }
    }
    for c in [sender, agent, contact] {
        c.close();
    }
}

#[tokio::test]
async fn availability_changes_are_broadcast_and_need_a_live_connection() {
    for redis in [false, true] {
        let prefix = unique_prefix("avail");
        let t = if redis {
            node(&prefix).await
        } else {
            TestGateway::start_with(fast(config())).await
        };
        let (watcher, mut watch) = t
            .client(TransportPreference::WebSocket, &token("admin", 8, 1, &[]))
            .await;
        let (agent, _events) = t
            .client(TransportPreference::WebTransport, &token("agent", 7, 1, &[]))
            .await;
        assert_eq!(
            next_presence(&mut watch, 7).await,
            (true, pb::Availability::Online as i32)
        );

        agent.set_availability(pb::Availability::Busy).await.unwrap();
        assert_eq!(
            next_presence(&mut watch, 7).await,
            (true, pb::Availability::Busy as i32)
        );
        // The backend can set it too.
        let resp = t
            .http
            .post(t.api("/api/v1/availability"))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({ "accountId": 1, "userId": 7, "availability": "AVAILABILITY_ONLINE" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            next_presence(&mut watch, 7).await,
            (true, pb::Availability::Online as i32)
        );
        agent.set_availability(pb::Availability::Busy).await.unwrap();
        assert_eq!(
            next_presence(&mut watch, 7).await.1,
            pb::Availability::Busy as i32
        );
        // Without a live connection the effective availability is offline.
        agent.close();
        assert_eq!(
            next_presence(&mut watch, 7).await,
            (false, pb::Availability::Offline as i32)
        );
        let entry = user(&snapshot(&t, 1).await, 7).unwrap();
        assert_eq!(
            (entry.online, entry.availability),
            (false, pb::Availability::Offline as i32)
        );
        watcher.close();
    }
}

#[tokio::test]
async fn contacts_cannot_query_presence_or_set_availability() {
    let t = TestGateway::start().await;
    let (contact, _e) = t
        .client(TransportPreference::WebSocket, &token("contact", 3, 1, &[]))
        .await;
    assert!(matches!(contact.presence().await, Err(rtgate_client::ClientError::Server(e)) if e.code == 403));
    assert!(matches!(
        contact.set_availability(pb::Availability::Busy).await,
        Err(rtgate_client::ClientError::Server(e)) if e.code == 403
    ));
}

#[tokio::test]
async fn chatwoot_presence_keys_are_maintained_when_asked() {
    let prefix = unique_prefix("cw");
    let namespace = format!("{prefix}-alfred");
    let mut config = fast(redis_config(SHARED_REDIS, &prefix));
    config.chatwoot_presence_keys = true;
    config.chatwoot_namespace = namespace.clone();
    let t = TestGateway::start_with(config).await.ready().await;
    let (agent, _e) = t
        .client(TransportPreference::WebSocket, &token("agent", 7, 5, &[]))
        .await;
    let (contact, _c) = t
        .client(TransportPreference::WebSocket, &token("contact", 3, 5, &[]))
        .await;
    agent.set_availability(pb::Availability::Busy).await.unwrap();

    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut found = (None, None);
    for _ in 0..200 {
        let users: Option<f64> = ::redis::cmd("ZSCORE")
            .arg(format!("{namespace}:ONLINE_PRESENCE::5::USERS"))
            .arg("7")
            .query_async(&mut conn)
            .await
            .unwrap();
        let contacts: Option<f64> = ::redis::cmd("ZSCORE")
            .arg(format!("{namespace}:ONLINE_PRESENCE::5::CONTACTS"))
            .arg("3")
            .query_async(&mut conn)
            .await
            .unwrap();
        found = (users, contacts);
        if users.is_some() && contacts.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = now_unix() as f64;
    let (users, contacts) = (
        found.0.expect("user presence written"),
        found.1.expect("contact presence written"),
    );
    assert!(
        (now - users).abs() < 10.0 && (now - contacts).abs() < 10.0,
        "scores are unix seconds"
    );
    let status: Option<String> = ::redis::cmd("HGET")
        .arg(format!("{namespace}:ONLINE_STATUS::5"))
        .arg("7")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("busy"));
    agent.close();
    contact.close();
}

#[tokio::test]
async fn presence_events_of_a_large_account_are_split_into_small_ones() {
    // Every connect below lands in one debounce window: one batch of 79 changes.
    let mut config = fast(config());
    config.presence_debounce = Duration::from_secs(3);
    let t = TestGateway::start_with(config).await;
    let (watcher, mut watch) = t
        .client(TransportPreference::WebSocket, &token("agent", 1, 1, &[]))
        .await;
    let mut agents = Vec::new();
    for id in 2..=80u64 {
        agents.push(
            t.client(TransportPreference::WebSocket, &token("agent", id, 1, &[]))
                .await,
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut events = 0;
    while seen.len() < 79 {
        if let ClientEvent::Event { event, .. } = next(&mut watch).await
            && let Some(pb::event::Payload::Presence(p)) = event.payload
        {
            assert!(
                p.users.len() <= rtgate_server::presence::PRESENCE_EVENT_MAX_ENTRIES,
                "{}",
                p.users.len()
            );
            seen.extend(p.users.iter().filter(|e| e.online && e.id > 1).map(|e| e.id));
            events += 1;
        }
    }
    assert!(events >= 2);
    watcher.close();
    for (c, _) in agents {
        c.close();
    }
}
