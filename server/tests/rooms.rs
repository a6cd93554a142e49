//! Room authorization over both transports: the matrix, cross-account attempts,
//! subscription tokens, and refusals that reveal nothing.

mod common;

use common::*;
use rtgate_client::{ClientError, TransportPreference};
use rtgate_protocol::ErrorCode;

async fn outcome(client: &rtgate_client::Client, room: &str, token: Option<&str>) -> Result<(), u32> {
    match client.subscribe(room, token).await {
        Ok(_) => Ok(()),
        Err(ClientError::Server(e)) => Err(e.code),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn authorization_matrix_over_both_transports() {
    let t = TestGateway::start().await;
    let denied = Err(ErrorCode::PermissionDenied.code());
    for prefer in TRANSPORTS {
        let (agent, _e1) = t.client(prefer, &token("agent", 7, 1, &[10])).await;
        let (admin, _e2) = t.client(prefer, &token("admin", 8, 1, &[10, 11])).await;
        let (contact, _e3) = t.client(prefer, &token("contact", 7, 1, &[])).await;
        let (other, _e4) = t.client(prefer, &token("admin", 9, 2, &[20])).await;

        // Already joined on connect (user:/account: for agents, contact: for contacts):
        // joining again is a no-op.
        assert_eq!(outcome(&agent, "user:7", None).await, Ok(()));
        assert_eq!(outcome(&agent, "account:1", None).await, Ok(()));
        assert_eq!(outcome(&contact, "contact:7", None).await, Ok(()));

        assert_eq!(outcome(&agent, "inbox:10", None).await, Ok(()));
        assert_eq!(outcome(&agent, "inbox:11", None).await, denied);
        assert_eq!(outcome(&admin, "inbox:11", None).await, Ok(()));
        assert_eq!(outcome(&agent, "user:8", None).await, denied);
        assert_eq!(outcome(&agent, "contact:7", None).await, denied);
        assert_eq!(outcome(&agent, "public:1:lobby", None).await, Ok(()));
        assert_eq!(outcome(&contact, "user:7", None).await, denied);
        assert_eq!(outcome(&contact, "account:1", None).await, denied);
        assert_eq!(outcome(&contact, "inbox:10", None).await, denied);
        assert_eq!(outcome(&contact, "public:1:lobby", None).await, Ok(()));

        // Cross-account: the other tenant's admin gets the same answer for a room that
        // exists with subscribers as for one that does not.
        assert_eq!(outcome(&other, "account:1", None).await, denied);
        assert_eq!(outcome(&other, "inbox:10", None).await, denied);
        assert_eq!(outcome(&other, "user:7", None).await, denied);
        assert_eq!(outcome(&other, "inbox:999", None).await, denied);

        // Conversations need a subscription token for this holder and room.
        let grants: [(&rtgate_client::Client, Option<String>, Result<(), u32>); 8] = [
            (&agent, None, denied),
            (&agent, Some(sub_token("user:8", "conversation:5", 60)), denied),
            (&agent, Some(sub_token("user:7", "conversation:6", 60)), denied),
            (&agent, Some(sub_token("user:7", "conversation:5", -60)), denied),
            (&agent, Some("not-a-token".into()), denied),
            (&agent, Some(sub_token("user:7", "conversation:5", 60)), Ok(())),
            (&contact, Some(sub_token("user:7", "conversation:5", 60)), denied),
            (
                &contact,
                Some(sub_token("contact:7", "conversation:5", 60)),
                Ok(()),
            ),
        ];
        for (n, (client, token, expected)) in grants.iter().enumerate() {
            assert_eq!(
                outcome(client, "conversation:5", token.as_deref()).await,
                *expected,
                "grant {n}"
            );
        }

        for bad in ["inbox:010", "room:1", "", "public:UPPER"] {
            assert!(
                matches!(agent.subscribe(bad, None).await, Err(ClientError::Invalid(_))),
                "{bad:?}"
            );
        }
        for c in [agent, admin, contact, other] {
            c.close();
        }
    }
}

#[tokio::test]
async fn invalid_and_repeated_subscriptions_get_their_own_codes() {
    let t = TestGateway::start().await;
    let (mut ws, _) = common::raw::RawWs::handshake(&t.ws_url(), &token("agent", 7, 1, &[])).await;
    let cases = [
        ("inbox:010", ErrorCode::InvalidRoom),
        ("room:1", ErrorCode::InvalidRoom),
        ("", ErrorCode::InvalidRoom),
        ("public:UPPER", ErrorCode::InvalidRoom),
        ("user:7", ErrorCode::AlreadySubscribed),
    ];
    for (i, (room, code)) in cases.iter().enumerate() {
        ws.send(&common::raw::subscribe(i as u32 + 1, room, "")).await;
        match ws.recv().await.unwrap().kind {
            Some(rtgate_protocol::pb::server_frame::Kind::Reply(r)) => {
                assert_eq!(r.id, i as u32 + 1);
                assert_eq!(r.error.unwrap().code, code.code(), "{room:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn subscription_limit_is_enforced() {
    let mut config = config();
    config.max_subscriptions = 4;
    let t = TestGateway::start_with(config).await;
    let (client, _events) = t
        .client(TransportPreference::WebSocket, &token("agent", 7, 1, &[]))
        .await;
    // user:7 and account:1 count too.
    client.subscribe("public:1:a", None).await.unwrap();
    client.subscribe("public:1:b", None).await.unwrap();
    assert_eq!(
        outcome(&client, "public:1:c", None).await,
        Err(ErrorCode::LimitExceeded.code())
    );
}
