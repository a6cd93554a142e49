//! Outbound delivery end to end: destinations mirrored through the server API, domain
//! events published once, and real HTTP receivers on loopback that check signatures and
//! count what arrives — retries, timeouts, the breaker, dead letters and replay, the SSRF
//! guard, and several nodes sharing one queue.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::GatewayProcess;
use common::receiver::{Mode, Receiver};
use common::redis::{SHARED_REDIS, unique_prefix};
use common::*;
use rtgate_server::Config;
use serde_json::{Value, json};

/// A gateway configuration for delivery tests: loopback receivers allowed, short timers.
fn delivery_config(mut c: Config) -> Config {
    c.delivery_allow_private = true;
    c.delivery_retry_base = Duration::from_millis(50);
    c.delivery_poll = Duration::from_millis(20);
    c.delivery_timeout = Duration::from_secs(2);
    c
}

async fn start() -> TestGateway {
    TestGateway::start_with(delivery_config(config())).await
}

/// PUT a destination; the status and JSON answer.
async fn put(t: &TestGateway, path: &str, body: Value) -> (u16, Value) {
    t.put_json(&format!("/api/v1/destinations/{path}"), body).await
}

async fn put_ok(t: &TestGateway, path: &str, body: Value) {
    let (status, answer) = put(t, path, body).await;
    assert_eq!(status, 200, "PUT {path}: {answer}");
}

/// Posts events that must all be accepted.
async fn post_events(t: &TestGateway, events: Vec<Value>) {
    for (status, reason) in t.post_events(events).await {
        assert_eq!(status, "STATUS_ACCEPTED", "{reason}");
    }
}

/// Posts `n` `message.created` events with ids `<tag>-<i>`.
async fn post_messages(t: &TestGateway, tag: &str, n: usize) {
    post_events(
        t,
        (0..n).map(|i| message_created(&format!("{tag}-{i}"))).collect(),
    )
    .await;
}

/// Configures account webhook `id` on `url` for `message_created`.
async fn subscribe(t: &TestGateway, id: u64, url: &str) {
    put_ok(
        t,
        &format!("webhooks/{id}"),
        webhook(id, url, "s", &["message_created"]),
    )
    .await;
}

fn message_created(id: &str) -> Value {
    json!({
        "id": id,
        "name": "message.created",
        "accountId": "1",
        "occurredAtMs": (now_unix() * 1000).to_string(),
        "conversation": { "displayId": "42", "inboxId": "3", "contactInboxIds": ["501"], "assigneeBotId": "8" },
        "message": { "id": "900", "messageType": "MESSAGE_TYPE_INCOMING" },
        "payload": json!({ "id": 900, "content": "hi" }).to_string(),
        "webhookPayload": json!({ "id": 900, "content": "hi", "message_type": "incoming",
                                   "account": { "id": 1, "name": "Acme" } }).to_string(),
    })
}

fn webhook(id: u64, url: &str, secret: &str, subscriptions: &[&str]) -> Value {
    json!({ "accountId": "1", "url": url, "secret": secret, "subscriptions": subscriptions, "id": id.to_string() })
}

async fn dead_letters(t: &TestGateway) -> Vec<Value> {
    t.get_json("/api/v1/deliveries/dead")
        .await
        .get("deliveries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

async fn wait_dead(t: &TestGateway, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let dead = dead_letters(t).await;
        if dead.len() >= n {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} dead letters never appeared");
}

#[tokio::test]
async fn each_listener_delivers_signed_payloads_to_its_destinations() {
    let t = start().await;
    let r = Receiver::start().await;
    for (path, secret) in [
        ("webhook", "wh-secret"),
        ("inbox", "inbox-secret"),
        ("bot", "bot-secret"),
        ("slack", "hook-secret"),
    ] {
        r.secret(path, secret);
    }
    put_ok(
        &t,
        "webhooks/1",
        webhook(1, &r.url("webhook"), "wh-secret", &["message_created"]),
    )
    .await;
    // Subscribed to something else: gets nothing here.
    put_ok(
        &t,
        "webhooks/2",
        webhook(2, &r.url("other"), "x", &["contact_created"]),
    )
    .await;
    put_ok(
        &t,
        "inbox-webhooks/3",
        json!({ "accountId": "1", "url": r.url("inbox"), "secret": "inbox-secret",
                "headers": [{ "name": "X-Api-Inbox", "value": "3" }] }),
    )
    .await;
    put_ok(
        &t,
        "agent-bots/8",
        json!({ "accountId": "1", "url": r.url("bot"), "secret": "bot-secret", "inboxIds": ["3"] }),
    )
    .await;
    put_ok(
        &t,
        "hooks/5",
        json!({ "accountId": "1", "appId": "slack", "url": r.url("slack"), "secret": "hook-secret", "enabled": true }),
    )
    .await;
    put_ok(&t, "installation", json!({ "url": r.url("installation") })).await;

    post_events(&t, vec![message_created("ev-1")]).await;
    post_events(
        &t,
        vec![json!({
            "id": "ev-2", "name": "account.created", "accountId": "1",
            "webhookPayload": json!({ "id": 1, "name": "Acme", "users": [] }).to_string(),
        })],
    )
    .await;

    let within = Duration::from_secs(5);
    let mut ids = Vec::new();
    for path in ["webhook", "inbox", "bot", "slack"] {
        let hits = r.wait_for(path, 200, 1, within).await;
        let hit = &hits[0];
        assert_eq!(hit.signed, Some(true), "{path}: signed with its own secret");
        assert_eq!(hit.body["event"], "message_created", "{path}");
        assert_eq!(hit.body["content"], "hi", "{path}");
        assert_eq!(hit.headers["content-type"], "application/json");
        ids.push(hit.delivery.clone().expect("a delivery id"));
    }
    assert_eq!(
        r.hits("inbox")[0].headers["x-api-inbox"],
        "3",
        "the destination's own headers"
    );
    assert_eq!(r.hits("slack")[0].body["hook"]["app_id"], "slack");
    let installation = r.wait_for("installation", 200, 1, within).await;
    assert_eq!(
        installation[0].signed, None,
        "the installation webhook is unsigned"
    );
    assert_eq!(installation[0].body["event"], "account_created");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "one delivery id per destination");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(r.hits("other").is_empty());
    for path in ["webhook", "inbox", "bot", "slack", "installation"] {
        assert_eq!(r.hits(path).len(), 1, "{path}: once");
    }

    // The same event again (a backend retry) is a duplicate: nothing more is delivered.
    let resp: Value = t
        .http
        .post(t.api("/api/v1/events"))
        .bearer_auth(API_KEY)
        .json(&json!({ "events": [message_created("ev-1")] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["outcomes"][0]["status"], "STATUS_DUPLICATE");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.hits("webhook").len(), 1);

    // Counted per kind and outcome.
    let metrics = t.metrics_text().await;
    for kind in ["webhook", "inbox_webhook", "agent_bot", "hook", "installation"] {
        let line = format!("rtgate_outbound_attempts_total{{kind=\"{kind}\",outcome=\"delivered\"}}");
        assert!(metrics.contains(&line), "{line} in /metrics");
    }
    assert!(metrics.contains("rtgate_outbound_lag_seconds"));
}

#[tokio::test]
async fn retries_follow_500_and_429_with_retry_after_but_not_400() {
    let t = start().await;
    let r = Receiver::start().await;
    r.set("flaky", Mode::FailFirst(500, 2));
    r.set("busy", Mode::RetryAfter(429, 1));
    r.set("bad", Mode::Status(400));
    subscribe(&t, 1, &r.url("flaky")).await;
    subscribe(&t, 2, &r.url("busy")).await;
    subscribe(&t, 3, &r.url("bad")).await;
    post_events(&t, vec![message_created("ev-retry")]).await;

    // 500, 500, then 200: one delivery id throughout.
    let flaky = r.wait_for("flaky", 200, 1, Duration::from_secs(5)).await;
    let all = r.hits("flaky");
    assert_eq!(all.iter().map(|h| h.status).collect::<Vec<_>>(), [500, 500, 200]);
    assert!(all.iter().all(|h| h.delivery == flaky[0].delivery));

    // 429 with Retry-After: 1 → the next attempt a second later, not before.
    let busy = r.wait_for("busy", 0, 2, Duration::from_secs(5)).await;
    let gap = busy[1].at - busy[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    r.set("busy", Mode::Ok);
    r.wait_for("busy", 200, 1, Duration::from_secs(5)).await;

    // 400: given up at once, dead-lettered with the reason.
    let dead = wait_dead(&t, 1).await;
    assert_eq!(r.hits("bad").len(), 1, "no retry after 400");
    assert_eq!(dead[0]["lastError"], "HTTP 400");
    assert_eq!(dead[0]["attempts"], 1);
    assert_eq!(dead[0]["kind"], "DESTINATION_KIND_WEBHOOK");
    assert!(dead[0].get("secret").is_none(), "secrets are never listed");
}

#[tokio::test]
async fn a_hanging_endpoint_is_cut_at_the_timeout_and_holds_up_no_one_else() {
    let mut c = delivery_config(config());
    c.delivery_timeout = Duration::from_millis(400);
    c.delivery_max_attempts = 2;
    // The breaker is another test's subject: here it stays closed.
    c.delivery_breaker_failures = 1000;
    let t = TestGateway::start_with(c).await;
    let r = Receiver::start().await;
    r.set("hang", Mode::Hang);
    subscribe(&t, 1, &r.url("hang")).await;
    subscribe(&t, 2, &r.url("ok")).await;
    let started = Instant::now();
    post_messages(&t, "ev-hang", 20).await;
    r.wait_for("ok", 200, 20, Duration::from_secs(5)).await;
    // The healthy endpoint got all twenty while the other hung.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let dead = wait_dead(&t, 20).await;
    assert!(
        dead.iter()
            .all(|d| d["lastError"].as_str().unwrap().contains("timed out")),
        "{dead:?}"
    );
    assert!(dead.iter().all(|d| d["url"].as_str().unwrap().ends_with("/hang")));
}

#[tokio::test]
async fn the_breaker_opens_on_failures_and_closes_when_a_probe_succeeds() {
    let mut c = delivery_config(config());
    c.delivery_breaker_failures = 3;
    c.delivery_breaker_open = Duration::from_millis(800);
    c.delivery_per_destination = 1;
    c.delivery_retry_base = Duration::from_millis(10);
    let t = TestGateway::start_with(c).await;
    let r = Receiver::start().await;
    r.set("down", Mode::Status(503));
    subscribe(&t, 1, &r.url("down")).await;
    post_messages(&t, "ev-br", 10).await;
    r.wait_for("down", 0, 3, Duration::from_secs(5)).await;
    // Open: nothing reaches the endpoint for the open period.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.hits("down").len(), 3, "no attempts while open");
    // The endpoint recovers; the probe after the open period succeeds and the rest follow.
    r.set("down", Mode::Ok);
    let delivered = r.wait_for("down", 200, 10, Duration::from_secs(10)).await;
    let opened_at = r.hits("down")[2].at;
    assert!(delivered[0].at - opened_at >= Duration::from_millis(700));
    assert_eq!(r.hits("down").len(), 13, "three failures, one success each");
}

#[tokio::test]
async fn a_dead_letter_is_listed_replayed_once_and_announced_to_the_backend() {
    let r = Receiver::start().await;
    let mut c = delivery_config(config());
    c.backend_callback_url = Some(r.url("backend"));
    c.backend_callback_secret = "backend-secret".into();
    let t = TestGateway::start_with(c).await;
    r.secret("backend", "backend-secret");
    r.set("bot", Mode::Status(410));
    put_ok(
        &t,
        "agent-bots/8",
        json!({ "url": r.url("bot"), "secret": "b", "inboxIds": ["3"] }),
    )
    .await;
    post_events(&t, vec![message_created("ev-dead")]).await;
    let dead = wait_dead(&t, 1).await;
    let id = dead[0]["id"].as_str().unwrap().to_string();
    assert_eq!(dead[0]["kind"], "DESTINATION_KIND_AGENT_BOT");
    assert_eq!(dead[0]["lastError"], "HTTP 410");

    // delivery.failed, signed, for the backend to apply Chatwoot's side effects.
    let notice = r.wait_for("backend", 200, 1, Duration::from_secs(5)).await;
    assert_eq!(notice[0].signed, Some(true));
    let failed = &notice[0].body["deliveryFailed"];
    assert_eq!(failed["deliveryId"], id);
    assert_eq!(failed["kind"], "DESTINATION_KIND_AGENT_BOT");
    assert_eq!(failed["messageId"], "900");
    assert_eq!(failed["conversationDisplayId"], "42");
    assert_eq!(failed["eventId"], "ev-dead");
    assert_eq!(failed["error"], "HTTP 410");

    // Fixed, replayed: delivered with the same id, and no longer dead.
    r.set("bot", Mode::Ok);
    let replay = |id: &str| {
        t.http
            .post(t.api(&format!("/api/v1/deliveries/dead/{id}/replay")))
            .bearer_auth(API_KEY)
            .send()
    };
    assert_eq!(replay(&id).await.unwrap().status(), 204);
    let ok = r.wait_for("bot", 200, 1, Duration::from_secs(5)).await;
    assert_eq!(ok[0].delivery.as_deref(), Some(id.as_str()));
    assert!(dead_letters(&t).await.is_empty());
    assert_eq!(replay(&id).await.unwrap().status(), 404, "replayed once");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.hits("bot").len(), 2);

    // A dead letter can be discarded.
    r.set("bot", Mode::Status(400));
    post_events(&t, vec![message_created("ev-dead-2")]).await;
    let dead = wait_dead(&t, 1).await;
    let id = dead[0]["id"].as_str().unwrap();
    let discard = || {
        t.http
            .delete(t.api(&format!("/api/v1/deliveries/dead/{id}")))
            .bearer_auth(API_KEY)
            .send()
    };
    assert_eq!(discard().await.unwrap().status(), 204);
    assert_eq!(discard().await.unwrap().status(), 404);
    assert!(dead_letters(&t).await.is_empty());
}

#[tokio::test]
async fn internal_addresses_are_refused_unless_private_networks_are_allowed() {
    let r = Receiver::start().await;
    let mut c = delivery_config(config());
    c.delivery_allow_private = false;
    let strict = TestGateway::start_with(c).await;
    let port = r.addr.port();
    put_ok(
        &strict,
        "webhooks/1",
        webhook(
            1,
            &format!("http://127.0.0.1:{port}/a"),
            "s",
            &["message_created"],
        ),
    )
    .await;
    // A name that resolves to a loopback address.
    put_ok(
        &strict,
        "webhooks/2",
        webhook(
            2,
            &format!("http://localhost:{port}/b"),
            "s",
            &["message_created"],
        ),
    )
    .await;
    put_ok(
        &strict,
        "webhooks/3",
        webhook(
            3,
            "http://169.254.169.254/latest/meta-data/",
            "s",
            &["message_created"],
        ),
    )
    .await;
    subscribe(&strict, 4, "http://[::ffff:10.0.0.1]/c").await;
    post_events(&strict, vec![message_created("ev-ssrf")]).await;
    let dead = wait_dead(&strict, 4).await;
    let errors: HashMap<String, String> = dead
        .iter()
        .map(|d| {
            (
                d["destinationId"].as_str().unwrap().to_string(),
                d["lastError"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(errors["1"].contains("loopback"), "{errors:?}");
    assert!(errors["2"].contains("refused addresses (loopback)"), "{errors:?}");
    assert!(errors["3"].contains("cloud_metadata"), "{errors:?}");
    assert!(errors["4"].contains("private"), "{errors:?}");
    assert!(dead.iter().all(|d| d["attempts"] == 1), "never retried");
    assert!(r.hits("a").is_empty() && r.hits("b").is_empty());

    // Allowed for private deployments — but cloud metadata never.
    let open = start().await;
    subscribe(&open, 1, &r.url("a")).await;
    put_ok(
        &open,
        "webhooks/3",
        webhook(
            3,
            "http://169.254.169.254/latest/meta-data/",
            "s",
            &["message_created"],
        ),
    )
    .await;
    post_events(&open, vec![message_created("ev-ssrf")]).await;
    r.wait_for("a", 200, 1, Duration::from_secs(5)).await;
    let dead = wait_dead(&open, 1).await;
    assert!(dead[0]["lastError"].as_str().unwrap().contains("cloud_metadata"));
}

#[tokio::test]
async fn destinations_are_checked_listed_without_secrets_and_deleted() {
    let t = start().await;
    let (status, answer) = put(
        &t,
        "webhooks/1",
        webhook(1, "ftp://example.com/", "s", &["message_created"]),
    )
    .await;
    assert_eq!(
        (status, answer["message"].as_str().unwrap()),
        (422, "url must be http or https")
    );
    let (status, answer) = put(
        &t,
        "webhooks/1",
        webhook(1, "https://example.com/", "s", &["message.created"]),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    let (status, _) = put(&t, "webhooks/1", webhook(2, "https://example.com/", "s", &[])).await;
    assert_eq!(status, 422, "the body's id is the path's");
    let (status, _) = put(&t, "robots/1", json!({})).await;
    assert_eq!(status, 404);
    let unauthorized = t
        .http
        .put(t.api("/api/v1/destinations/webhooks/1"))
        .json(&webhook(1, "https://example.com/", "s", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    subscribe(&t, 1, "https://example.com/a").await;
    put_ok(
        &t,
        "webhooks/2",
        json!({ "accountId": "2", "url": "https://example.com/b" }),
    )
    .await;
    let all = t.get_json("/api/v1/destinations/webhooks").await;
    assert_eq!(all["webhooks"].as_array().unwrap().len(), 2);
    let mine = t.get_json("/api/v1/destinations/webhooks?account_id=1").await;
    let listed = &mine["webhooks"].as_array().unwrap()[0];
    assert_eq!(listed["url"], "https://example.com/a");
    assert_eq!(listed["hasSecret"], true);
    assert!(listed.get("secret").is_none());
    // Replace: the new record wins.
    put_ok(&t, "webhooks/1", webhook(1, "https://example.com/new", "", &[])).await;
    let mine = t.get_json("/api/v1/destinations/webhooks?account_id=1").await;
    assert_eq!(mine["webhooks"][0]["url"], "https://example.com/new");
    assert!(mine["webhooks"][0].get("hasSecret").is_none());

    // Header values are write-only too (they may carry credentials).
    put_ok(
        &t,
        "webhooks/3",
        json!({ "accountId": "3", "url": "https://example.com/c",
                "headers": [{ "name": "X-Token", "value": "t0ken" }] }),
    )
    .await;
    let third = t.get_json("/api/v1/destinations/webhooks?account_id=3").await;
    assert_eq!(third["webhooks"][0]["headers"], json!([{ "name": "X-Token" }]));

    let delete = |path: &'static str| t.http.delete(t.api(path)).bearer_auth(API_KEY).send();
    assert_eq!(
        delete("/api/v1/destinations/webhooks/1").await.unwrap().status(),
        204
    );
    assert_eq!(
        delete("/api/v1/destinations/webhooks/1").await.unwrap().status(),
        404
    );
    put_ok(&t, "installation", json!({ "url": "https://hub.example/" })).await;
    assert_eq!(
        t.get_json("/api/v1/destinations/installation").await["url"],
        "https://hub.example/"
    );
    assert_eq!(
        delete("/api/v1/destinations/installation")
            .await
            .unwrap()
            .status(),
        204
    );
}

#[tokio::test]
async fn on_redis_two_nodes_share_the_queue_and_never_both_deliver_one() {
    let prefix = unique_prefix("deliveries-two-nodes");
    let node = || {
        let mut c = delivery_config(redis_config(SHARED_REDIS, &prefix));
        // Every first attempt fails on purpose: the breaker stays out of it.
        c.delivery_breaker_failures = 1_000_000;
        c
    };
    let a = TestGateway::start_with(node()).await.ready().await;
    let b = TestGateway::start_with(node()).await.ready().await;
    let r = Receiver::start().await;
    // Every delivery fails once: its retry is claimed by whichever node polls first.
    r.set("shared", Mode::FailFirst(500, 1));
    // Configured through one node, seen by the other.
    subscribe(&a, 1, &r.url("shared")).await;
    let listed = b.get_json("/api/v1/destinations/webhooks").await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
    const N: usize = 200;
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let events = chunk
            .iter()
            .map(|i| message_created(&format!("{prefix}-{i}")))
            .collect();
        post_events(if chunk[0] % 100 == 0 { &a } else { &b }, events).await;
    }
    r.wait_for("shared", 200, N, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut per_id: HashMap<String, Vec<u16>> = HashMap::new();
    for hit in r.hits("shared") {
        per_id.entry(hit.delivery.unwrap()).or_default().push(hit.status);
    }
    assert_eq!(per_id.len(), N);
    for (id, statuses) in per_id {
        assert_eq!(
            statuses,
            [500, 200],
            "{id}: one failed attempt, one success, never two at once"
        );
    }
}

#[tokio::test]
async fn a_gateway_killed_with_deliveries_queued_makes_them_after_restart_once() {
    let prefix = unique_prefix("deliveries-kill");
    let flags = [
        "--redis",
        SHARED_REDIS,
        "--redis-prefix",
        &prefix,
        "--delivery-allow-private",
        "--delivery-retry-base",
        "50ms",
        "--delivery-max-retry-delay",
        "200ms",
        "--delivery-max-attempts",
        "1000",
        "--delivery-breaker-failures",
        "1000000",
        "--delivery-poll",
        "20ms",
        "--delivery-lease",
        "2s",
    ];
    let r = Receiver::start().await;
    r.set("down", Mode::Status(503));
    let mut doomed = GatewayProcess::start(&flags, "").await;
    let http = reqwest::Client::new();
    let put = http
        .put(doomed.url("/api/v1/destinations/webhooks/1"))
        .bearer_auth(API_KEY)
        .json(&webhook(1, &r.url("down"), "s", &["message_created"]))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    const N: usize = 100;
    let events: Vec<Value> = (0..N)
        .map(|i| message_created(&format!("{prefix}-{i}")))
        .collect();
    let resp = http
        .post(doomed.url("/api/v1/events"))
        .bearer_auth(API_KEY)
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Every delivery was tried (so it is queued, failing) before the gateway dies.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids: std::collections::HashSet<_> =
            r.hits("down").into_iter().filter_map(|h| h.delivery).collect();
        if ids.len() == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {N} deliveries tried",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.signal("KILL");
    let _ = doomed.child.wait();
    // Requests the dead process had sent are still answered 503: one answered 200 after
    // it died would be delivered again (at least once), and this test counts exact ones.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = r.hits("down").len();
    r.set("down", Mode::Ok);

    let _next = GatewayProcess::start(&flags, "").await;
    r.wait_for("down", 200, N, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for hit in r.hits("down").into_iter().filter(|h| h.status == 200) {
        *delivered.entry(hit.delivery.unwrap()).or_default() += 1;
    }
    assert_eq!(delivered.len(), N);
    assert!(
        delivered.values().all(|n| *n == 1),
        "each delivered once: {delivered:?}"
    );
    assert!(r.hits("down").len() > before);
}

#[tokio::test]
async fn on_redis_a_given_up_delivery_is_a_notice_on_the_backend_stream() {
    let prefix = unique_prefix("deliveries-notice");
    let t = TestGateway::start_with(delivery_config(redis_config(SHARED_REDIS, &prefix)))
        .await
        .ready()
        .await;
    let r = Receiver::start().await;
    r.set("hook", Mode::Status(404));
    put_ok(
        &t,
        "inbox-webhooks/3",
        json!({ "accountId": "1", "url": r.url("hook"), "secret": "s" }),
    )
    .await;
    post_events(&t, vec![message_created(&format!("{prefix}-ev"))]).await;
    let dead = wait_dead(&t, 1).await;
    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{{{prefix}:backend}}");
    let mut entries: Vec<(String, HashMap<String, String>)> = Vec::new();
    for _ in 0..100 {
        entries = common::redis::stream_entries(&mut conn, &stream).await;
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(entries.len(), 1, "one notice");
    let fields = &entries[0].1;
    let notice: Value = serde_json::from_str(&fields["json"]).unwrap();
    assert_eq!(notice["id"], fields["id"].as_str());
    let failed = &notice["deliveryFailed"];
    assert_eq!(failed["kind"], "DESTINATION_KIND_INBOX_WEBHOOK");
    assert_eq!(failed["deliveryId"], dead[0]["id"]);
    assert_eq!(failed["messageId"], "900");
    assert_eq!(failed["error"], "HTTP 404");
    let _: () = ::redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn deliveries_held_back_past_their_age_bound_are_given_up_without_an_attempt() {
    let mut c = delivery_config(config());
    c.delivery_max_age = Duration::from_secs(1);
    c.delivery_breaker_failures = 1;
    c.delivery_breaker_open = Duration::from_millis(1500);
    c.delivery_per_destination = 1;
    let t = TestGateway::start_with(c).await;
    let r = Receiver::start().await;
    r.set("down", Mode::Status(503));
    subscribe(&t, 1, &r.url("down")).await;
    post_messages(&t, "ev-age", 5).await;
    let dead = wait_dead(&t, 5).await;
    assert_eq!(
        r.hits("down").len(),
        1,
        "one attempt opened the breaker; none after"
    );
    for d in &dead {
        let error = d["lastError"].as_str().unwrap();
        assert!(error.contains("--delivery-max-age"), "{error}");
    }
}
