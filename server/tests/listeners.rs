//! The business listeners end to end: configuration mirrored through the server API,
//! domain events written to the Redis Stream (as a backend's after-commit hook would),
//! and what the listeners decided read back as a backend would — commands from the
//! backend stream, notifications pushed to a user's room — on one node and on two.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::raw::{RawWs, subscribe};
use common::redis::{SHARED_REDIS, unique_prefix};
use common::*;
use rtgate_protocol::pb;
use rtgate_server::engine::{RedisConfig, RedisEngine};
use rtgate_server::events::state::{ListenerState, MemoryState, RedisState, StateKey};
use rtgate_server::hub::Hub;
use serde_json::{Value, json};

/// The commands on the backend stream (JSON notices), once at least `n` are there and
/// no more came for a moment.
async fn commands(conn: &mut ::redis::aio::MultiplexedConnection, stream: &str, n: usize) -> Vec<Value> {
    let read = |conn: &mut ::redis::aio::MultiplexedConnection| {
        let stream = stream.to_string();
        let mut conn = conn.clone();
        async move {
            common::redis::stream_entries(&mut conn, &stream)
                .await
                .iter()
                .map(|(_, fields)| serde_json::from_str::<Value>(&fields["json"]).unwrap()["command"].clone())
                .collect::<Vec<Value>>()
        }
    };
    for _ in 0..500 {
        if read(conn).await.len() >= n {
            // Whatever else was decided has arrived too.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return read(conn).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} commands on {stream}: {:?}", read(conn).await);
}

/// The commands of one kind (the oneof's JSON name).
fn of_kind<'a>(commands: &'a [Value], kind: &str) -> Vec<&'a Value> {
    commands
        .iter()
        .filter(|c| c.get(kind).is_some())
        .map(|c| &c[kind])
        .collect()
}

async fn xadd(conn: &mut ::redis::aio::MultiplexedConnection, stream: &str, event: Value) {
    let _: String = ::redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("json")
        .arg(event.to_string())
        .query_async(conn)
        .await
        .unwrap();
}

async fn mirror(t: &TestGateway, path: &str, body: Value) {
    let (status, answer) = t.put_json(&format!("/api/v1/mirror/{path}"), body).await;
    assert_eq!(status, 200, "PUT {path}: {answer}");
}

const CREATED_MS: i64 = 1_796_000_000_000;

#[tokio::test]
async fn events_through_the_stream_become_commands_and_pushed_notifications() {
    let prefix = unique_prefix("listeners");
    let t = TestGateway::start_with(redis_config(SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    mirror(
        &t,
        "inboxes/3",
        json!({"accountId": "1", "memberIds": ["4", "5"], "csat": {"enabled": true}}),
    )
    .await;
    mirror(
        &t,
        "account-users/1",
        json!({"accountId": "1", "userId": "4", "notifications": ["conversation_creation"]}),
    )
    .await;
    mirror(&t, "account-users/2", json!({"accountId": "1", "userId": "5"})).await;
    mirror(
        &t,
        "automation-rules/1",
        json!({"accountId": "1", "eventName": "conversation_created", "active": true,
               "conditions": [{"attributeKey": "status", "filterOperator": "equal_to", "values": ["open"]}],
               "actions": [{"actionName": "add_label", "actionParams": ["new"]}]}),
    )
    .await;
    // A bad record is refused with its reason.
    let (status, answer) = t
        .put_json(
            "/api/v1/mirror/automation-rules/2",
            json!({"accountId": "1", "eventName": "conversation_created",
                   "conditions": [{"attributeKey": "status", "filterOperator": "like"}]}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("filter_operator"),
        "{answer}"
    );

    // Agent 4 listens in their own room.
    let (mut ws, _) = RawWs::handshake(&t.ws_url(), &token("agent", 4, 1, &[3])).await;
    ws.send(&subscribe(1, "user:4", "")).await;
    assert!(ws.recv().await.is_some(), "subscribed");

    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let events = format!("{{{prefix}:events}}");
    let conversation = |status: &str| {
        json!({"displayId": "42", "inboxId": "3", "status": status, "createdAtMs": CREATED_MS.to_string(),
               "canReply": true, "contactInboxIds": ["501"]})
    };
    xadd(
        &mut conn,
        &events,
        json!({"id": "ev-created", "name": "conversation.created", "accountId": "1",
               "occurredAtMs": CREATED_MS.to_string(), "conversation": conversation("CONVERSATION_STATUS_OPEN"),
               "payload": "{}", "webhookPayload": r#"{"id":42,"status":"open"}"#}),
    )
    .await;
    for (id, name) in [
        ("ev-status", "conversation.status_changed"),
        ("ev-resolved", "conversation.resolved"),
    ] {
        xadd(
            &mut conn,
            &events,
            json!({"id": id, "name": name, "accountId": "1",
                   "occurredAtMs": (CREATED_MS + 90_000).to_string(),
                   "conversation": conversation("CONVERSATION_STATUS_RESOLVED"), "payload": "{}"}),
        )
        .await;
    }
    let backend = format!("{{{prefix}:backend}}");
    let all = commands(&mut conn, &backend, 4).await;
    let notifications = of_kind(&all, "createNotification");
    assert_eq!(
        notifications,
        [&json!({"notificationType": "conversation_creation", "userId": "4", "conversationDisplayId": "42"})],
        "user 5 does not want them: {all:?}"
    );
    let rules = of_kind(&all, "runAutomationActions");
    assert_eq!(rules.len(), 1, "{all:?}");
    assert_eq!(rules[0]["ruleId"], "1");
    assert_eq!(rules[0]["actions"][0]["actionName"], "add_label");
    let surveys = of_kind(&all, "sendCsatSurvey");
    assert_eq!(surveys.len(), 1, "{all:?}");
    assert_eq!(surveys[0]["form"], "FORM_INPUT_CSAT_MESSAGE");
    let reports = of_kind(&all, "createReportingEvent");
    assert_eq!(reports.len(), 1, "{all:?}");
    assert_eq!(reports[0]["name"], "conversation_resolved");
    assert_eq!(reports[0]["valueSeconds"], "90");
    assert_eq!(all.len(), 4, "nothing else: {all:?}");

    // The notification was pushed to agent 4's room at once, with the command's id.
    let pushed = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await {
            Ok(Some(pb::ServerFrame {
                kind: Some(pb::server_frame::Kind::Event(e)),
            })) if e.room == "user:4" => break e.event.unwrap(),
            Ok(Some(_)) => continue,
            other => panic!("no push: {other:?}"),
        }
    };
    assert_eq!(pushed.name, "notification.pending");
    let payload: Value = serde_json::from_str(&pushed.json).unwrap();
    assert_eq!(payload["notification_type"], "conversation_creation");
    assert_eq!(payload["primary_actor_id"], 42);

    // Resolved again later (reopened in between): no second survey, decided once.
    xadd(
        &mut conn,
        &events,
        json!({"id": "ev-status-2", "name": "conversation.status_changed", "accountId": "1",
               "conversation": conversation("CONVERSATION_STATUS_RESOLVED"), "payload": "{}"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = commands(&mut conn, &backend, 4).await;
    assert_eq!(of_kind(&after, "sendCsatSurvey").len(), 1, "{after:?}");
    let metrics = t.metrics_text().await;
    assert!(
        metrics.contains(r#"rtgate_commands_total{listener="csat_survey",outcome="already_decided"} 1"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("rtgate_commands_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(t);
}

#[tokio::test]
async fn a_campaign_triggered_on_two_nodes_at_once_starts_one_conversation() {
    let prefix = unique_prefix("campaign-race");
    let a = TestGateway::start_with(redis_config(SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    let b = TestGateway::start_with(redis_config(SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    mirror(
        &a,
        "campaigns/100",
        json!({"accountId": "1", "displayId": "7", "inboxId": "3", "enabled": true}),
    )
    .await;
    let trigger = |id: String, contact_inbox: u64| {
        json!({"id": id, "name": "campaign.triggered", "accountId": "1", "inboxId": "3",
               "contactInboxId": contact_inbox.to_string(),
               "eventInfo": r#"{"campaign_id":7}"#, "payload": "{}"})
    };
    // Ten contact inboxes, each triggered at the same moment through both nodes.
    for ci in 1..=10u64 {
        let (ra, rb) = tokio::join!(
            a.post_events(vec![trigger(format!("a-{ci}"), ci)]),
            b.post_events(vec![trigger(format!("b-{ci}"), ci)]),
        );
        assert_eq!(ra[0].0, "STATUS_ACCEPTED");
        assert_eq!(rb[0].0, "STATUS_ACCEPTED");
    }
    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let all = commands(&mut conn, &format!("{{{prefix}:backend}}"), 10).await;
    let starts = of_kind(&all, "startCampaignConversation");
    let mut per_inbox: HashMap<String, usize> = HashMap::new();
    for s in &starts {
        *per_inbox
            .entry(s["contactInboxId"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(s["campaignId"], "100");
    }
    assert_eq!(per_inbox.len(), 10, "{all:?}");
    assert!(per_inbox.values().all(|n| *n == 1), "{per_inbox:?}");
    drop((a, b));
}

/// Claims race from many tasks on separate connections (as separate nodes would): one
/// owner wins each key, and only its own claim is granted again.
async fn claims_are_exclusive(stores: Vec<Arc<dyn ListenerState>>) {
    for round in 0..20u64 {
        let key = StateKey::contact_inbox(round, "conversation");
        let tries = stores.iter().enumerate().map(|(i, s)| {
            let (s, key) = (s.clone(), key.clone());
            tokio::spawn(async move { (i, s.claim(&key, &format!("owner-{i}")).await.unwrap()) })
        });
        let results: Vec<(usize, bool)> = futures::future::join_all(tries)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let winners: Vec<usize> = results.iter().filter(|(_, won)| *won).map(|(i, _)| *i).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let w = winners[0];
        assert!(stores[w].claim(&key, &format!("owner-{w}")).await.unwrap());
        let other = (w + 1) % stores.len();
        assert!(
            !stores[other]
                .claim(&key, &format!("owner-{other}"))
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn listener_state_claims_are_exclusive_in_memory_and_in_redis() {
    let memory: Arc<dyn ListenerState> = Arc::new(MemoryState::new(Duration::from_secs(60)));
    claims_are_exclusive(vec![memory.clone(), memory.clone(), memory]).await;
    let prefix = unique_prefix("listener-state");
    let node = || -> Arc<dyn ListenerState> {
        let config = RedisConfig {
            prefix: prefix.clone(),
            ..RedisConfig::new(SHARED_REDIS)
        };
        let engine = RedisEngine::new(Arc::new(Hub::new()), config).unwrap();
        Arc::new(RedisState::new(engine.commands(), Duration::from_secs(60)))
    };
    claims_are_exclusive(vec![node(), node(), node(), node()]).await;
    // Every key of the state expires `--listener-state-ttl` after its last write.
    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(format!("{{{prefix}:ci:0}}:conversation"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    let state = node();
    let people = StateKey::conversation(1, 42, "participants");
    state.add_members(&people, &[5]).await.unwrap();
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(format!("{{{prefix}:c:1:42}}:participants"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn listener_state_claims_are_exclusive_on_a_cluster() {
    let cluster = common::cluster::PrivateCluster::start(3).await;
    let prefix = unique_prefix("listener-state");
    let node = || -> Arc<dyn ListenerState> {
        let config = RedisConfig {
            prefix: prefix.clone(),
            cluster: true,
            ..RedisConfig::new(&cluster.url())
        };
        let engine = RedisEngine::new(Arc::new(Hub::new()), config).unwrap();
        Arc::new(RedisState::new(engine.commands(), Duration::from_secs(60)))
    };
    claims_are_exclusive(vec![node(), node(), node(), node()]).await;
    // One read across scopes: keys in different slots.
    let state = node();
    let people = StateKey::conversation(1, 42, "participants");
    let claimed = StateKey::contact_inbox(9, "conversation");
    state.add_members(&people, &[6, 5]).await.unwrap();
    state.remember(&claimed, "conversation:42").await.unwrap();
    let view = state
        .read(&[
            rtgate_server::events::state::StateRead::Members(people.clone()),
            rtgate_server::events::state::StateRead::Value(claimed.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(view.members(&people), [5, 6]);
    assert_eq!(view.value(&claimed), Some("conversation:42"));
}

#[tokio::test]
async fn mirrored_participants_are_notified_of_new_messages() {
    let prefix = unique_prefix("participants");
    let t = TestGateway::start_with(redis_config(SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    let (status, _) = t
        .put_json("/api/v1/mirror/participants/1/42", json!({"userIds": ["8", "9"]}))
        .await;
    assert_eq!(status, 200);
    let (status, answer) = t
        .put_json("/api/v1/mirror/participants/1/42", json!({"userIds": ["0"]}))
        .await;
    assert_eq!(status, 422, "{answer}");
    mirror(&t, "teams/30", json!({"accountId": "1", "memberIds": ["8"]})).await;
    mirror(&t, "teams/31", json!({"accountId": "2"})).await;
    let teams = t.get_json("/api/v1/mirror/teams?account_id=1").await;
    assert_eq!(teams["teams"].as_array().map(Vec::len), Some(1), "{teams}");
    let outcomes = t
        .post_events(vec![
            json!({"id": "ev-m", "name": "message.created", "accountId": "1",
            "conversation": {"displayId": "42", "inboxId": "3"},
            "message": {"id": "900", "messageType": "MESSAGE_TYPE_OUTGOING",
                        "sender": {"kind": "KIND_USER", "id": "9"}},
            "payload": "{}"}),
        ])
        .await;
    assert_eq!(outcomes[0].0, "STATUS_ACCEPTED", "{outcomes:?}");
    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let all = commands(&mut conn, &format!("{{{prefix}:backend}}"), 1).await;
    assert_eq!(
        of_kind(&all, "createNotification"),
        [
            &json!({"notificationType": "participating_conversation_new_message", "userId": "8",
                 "conversationDisplayId": "42", "messageId": "900"})
        ],
        "participant 8, not the sender 9: {all:?}"
    );
}

#[tokio::test]
async fn listeners_can_be_disabled_by_name_and_unknown_names_are_refused() {
    let mut bad = config();
    bad.disable_listeners = vec!["notifications".into()];
    let err = rtgate_server::gateway::Gateway::start(bad)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("one of routing, webhook"), "{err}");

    let prefix = unique_prefix("disabled");
    let mut cfg = redis_config(SHARED_REDIS, &prefix);
    cfg.disable_listeners = vec!["notification".into()];
    let t = TestGateway::start_with(cfg).await.ready().await;
    let outcomes = t
        .post_events(vec![
            json!({"id": "ev-1", "name": "assignee.changed", "accountId": "1",
            "conversation": {"displayId": "42", "inboxId": "3", "assigneeId": "7"}, "payload": "{}"}),
        ])
        .await;
    assert_eq!(outcomes[0].0, "STATUS_ACCEPTED");
    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let all = commands(&mut conn, &format!("{{{prefix}:backend}}"), 1).await;
    assert_eq!(all.len(), 1, "the participation command only: {all:?}");
    assert_eq!(all[0]["listener"], "participation");
}
