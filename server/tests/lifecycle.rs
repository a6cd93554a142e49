//! Connection lifecycle over both transports: token refresh and expiry, kicks from the
//! backend, and shutdown that advises clients to reconnect.

mod common;

use std::time::Duration;

use common::*;
use rtgate_client::ClientError;
use rtgate_protocol::DisconnectCode;
use serde_json::json;

fn short_token(id: u64, secs: i64) -> String {
    let exp = now_unix() as i64 + secs;
    token_with(json!({ "sub": id.to_string(), "account_id": 1, "role": "agent", "exp": exp }))
}

#[tokio::test]
async fn expired_tokens_must_be_refreshed_within_the_grace_period() {
    let mut config = config();
    config.refresh_grace = Duration::from_millis(200);
    let t = TestGateway::start_with(config).await;
    for prefer in TRANSPORTS {
        // Expired 4 s ago, inside the clock leeway (5 s) so Hello takes it: the live
        // deadline (exp + leeway + grace) comes a second later, and the client is told why.
        // (The deadline itself, to the millisecond, is tested on the hand-clocked harness.)
        let (client, mut events) = t.client(prefer, &short_token(7, -4)).await;
        let (code, reconnect) = next_disconnect(&mut events).await;
        assert_eq!(code, Some(DisconnectCode::TokenExpired.code()), "{prefer:?}");
        assert!(reconnect.is_some(), "a new token may reconnect");
        client.close();

        // Refreshed in time: the connection lives on past the first expiry.
        let (client, mut events) = t.client(prefer, &short_token(8, 1)).await;
        let reply = client.refresh_token(&short_token(8, 3600)).await.unwrap();
        assert!(reply.refreshed.unwrap().token_expires_at_ms > 0);
        // A token for someone else is refused and changes nothing.
        let err = client.refresh_token(&short_token(9, 3600)).await.unwrap_err();
        assert!(matches!(err, ClientError::Server(e) if e.code == 401));
        // That the refreshed connection outlives the first token is the session's
        // business, tested on the hand-clocked harness; here, it still delivers.
        t.publish(&["user:8"], "client.still-here", "1").await;
        assert_eq!(next_room_event(&mut events).await.0, "user:8");
        client.close();
    }
}

#[tokio::test]
async fn the_backend_can_disconnect_a_users_connections() {
    let t = TestGateway::start().await;
    let (a1, mut e1) = t.client(TRANSPORTS[0], &token("agent", 7, 1, &[])).await;
    let (a2, mut e2) = t.client(TRANSPORTS[1], &token("agent", 7, 1, &[])).await;
    let (other, mut e3) = t.client(TRANSPORTS[1], &token("agent", 8, 1, &[])).await;
    let resp: serde_json::Value = t
        .http
        .post(t.api("/api/v1/disconnect"))
        .bearer_auth(API_KEY)
        .json(&json!({ "userId": "7", "reason": "session revoked" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["connections"], 2);
    for events in [&mut e1, &mut e2] {
        let (code, reconnect) = next_disconnect(events).await;
        assert_eq!(code, Some(DisconnectCode::Kicked.code()));
        assert_eq!(reconnect, None, "a kicked client does not come back");
    }
    t.publish(&["user:8"], "client.x", "1").await;
    assert_eq!(next_room_event(&mut e3).await.0, "user:8");
    for c in [a1, a2, other] {
        c.close();
    }
}

#[tokio::test]
async fn shutdown_advises_every_client_to_reconnect() {
    let t = TestGateway::start().await;
    let mut all = Vec::new();
    for (i, prefer) in TRANSPORTS.iter().cycle().take(6).enumerate() {
        all.push(t.client(*prefer, &token("agent", 10 + i as u64, 1, &[])).await);
    }
    let TestGateway { gw, .. } = t;
    let left = gw.shutdown(Duration::from_secs(5)).await;
    assert_eq!(left, 0, "every connection drained");
    for (client, events) in &mut all {
        let (code, reconnect) = next_disconnect(events).await;
        assert_eq!(code, Some(DisconnectCode::Shutdown.code()));
        assert_eq!(reconnect, Some(Duration::from_millis(500)));
        client.close();
    }
}
