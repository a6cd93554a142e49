//! Commands for the backend end to end: a domain event written to the Redis Stream, as a
//! backend's after-commit hook would, and the command its listener decided read back
//! from the backend stream by a consumer of the backend's own.

mod common;

use std::time::Duration;

use common::redis::{SHARED_REDIS, unique_prefix};
use common::*;
use serde_json::{Value, json};

async fn read_notices(conn: &mut ::redis::aio::MultiplexedConnection, stream: &str, n: usize) -> Vec<Value> {
    for _ in 0..250 {
        let entries = common::redis::stream_entries(conn, stream).await;
        if entries.len() >= n {
            return entries
                .iter()
                .map(|(_, fields)| {
                    let notice: Value = serde_json::from_str(&fields["json"]).unwrap();
                    assert_eq!(notice["id"], fields["id"], "the entry's id is the notice's");
                    notice
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} notices never appeared on {stream}");
}

#[tokio::test]
async fn an_assignment_through_the_stream_becomes_an_add_participant_command() {
    let prefix = unique_prefix("commands");
    let t = TestGateway::start_with(redis_config(SHARED_REDIS, &prefix))
        .await
        .ready()
        .await;
    let client = ::redis::Client::open(SHARED_REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let assigned = |id: &str, assignee: u64| {
        json!({
            "id": id, "name": "assignee.changed", "accountId": "1",
            "conversation": { "displayId": "42", "inboxId": "3", "assigneeId": assignee.to_string() },
            "payload": "{}",
        })
        .to_string()
    };
    let events = format!("{{{prefix}:events}}");
    // The assignment, dispatched twice by the backend (auto-assignment does), and an
    // unassignment; then the first event again (a backend retry: a duplicate).
    for (id, assignee) in [("ev-a", 7), ("ev-b", 7), ("ev-c", 0), ("ev-a", 7)] {
        let _: String = ::redis::cmd("XADD")
            .arg(&events)
            .arg("*")
            .arg("json")
            .arg(assigned(id, assignee))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let stream = format!("{{{prefix}:backend}}");
    // Each dispatch is decided by the participation listener and, as an assignment, by
    // the notification listener too.
    read_notices(&mut conn, &stream, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = read_notices(&mut conn, &stream, 4).await;
    assert_eq!(all.len(), 4, "nothing for the unassignment: {all:?}");
    let by = |listener: &str| -> Vec<Value> {
        all.iter()
            .filter(|n| n["command"]["listener"] == listener)
            .cloned()
            .collect()
    };
    let notices = by("participation");
    // One command per dispatch (upserts: applying both is harmless).
    assert_eq!(notices.len(), 2, "{all:?}");
    assert_ne!(notices[0]["id"], notices[1]["id"]);
    let notified = by("notification");
    assert_eq!(notified.len(), 2, "{all:?}");
    assert_eq!(
        notified[0]["command"]["createNotification"],
        json!({ "notificationType": "conversation_assignment", "userId": "7", "conversationDisplayId": "42" })
    );
    let command = &notices[0]["command"];
    assert_eq!(command["listener"], "participation");
    assert_eq!(command["eventId"], "ev-a");
    assert_eq!(command["accountId"], "1");
    assert_eq!(
        command["addParticipant"],
        json!({ "conversationDisplayId": "42", "userId": "7" })
    );
    assert_eq!(notices[1]["command"]["eventId"], "ev-b");
    let _: () = ::redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(t);
}
