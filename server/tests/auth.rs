//! Token verification: success and every failure, for HS256, RS256 and ES256, including
//! `alg: none` and HS/RS algorithm confusion; and the same refusals over both transports.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rtgate_protocol::DisconnectCode;
use rtgate_server::auth::{AuthError, Authenticator, Role, TokenKey};
use serde_json::json;

const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("fixtures/ec-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("fixtures/ec-public.pem");
const NOW: u64 = 1_900_000_000;

fn claims() -> serde_json::Value {
    json!({ "sub": "7", "account_id": 1, "role": "agent", "inboxes": [3, 1], "exp": NOW + 60 })
}

fn hs(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn hs_auth() -> Authenticator {
    Authenticator::new(TokenKey::hs256(SECRET.as_bytes()).unwrap(), None, None)
}

#[test]
fn valid_tokens_of_each_algorithm_are_accepted() {
    let p = hs_auth()
        .verify_connection(&hs(&claims(), SECRET.as_bytes()), NOW)
        .unwrap();
    assert_eq!(
        (p.id, p.account_id, p.role, p.inboxes.clone()),
        (7, 1, Role::Agent, vec![1, 3])
    );
    assert_eq!(p.expires_at, Some(NOW + 60));

    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap();
    let key = TokenKey::public_pem(RSA_PUBLIC).unwrap();
    assert_eq!(key.algorithm(), Algorithm::RS256);
    Authenticator::new(key, None, None)
        .verify_connection(&rs, NOW)
        .unwrap();

    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
    )
    .unwrap();
    let key = TokenKey::public_pem(EC_PUBLIC).unwrap();
    assert_eq!(key.algorithm(), Algorithm::ES256);
    Authenticator::new(key, None, None)
        .verify_connection(&es, NOW)
        .unwrap();
}

#[test]
fn every_failure_is_refused_with_its_reason() {
    let auth = hs_auth();
    let wrong_signature = hs(&claims(), b"another-secret-another-secret-0123456789");
    assert!(matches!(
        auth.verify_connection(&wrong_signature, NOW),
        Err(AuthError::Invalid(_))
    ));

    assert_eq!(
        auth.verify_connection(&hs(&claims(), SECRET.as_bytes()), NOW + 120),
        Err(AuthError::Expired)
    );

    let mut early = claims();
    early["nbf"] = json!(NOW + 600);
    assert_eq!(
        auth.verify_connection(&hs(&early, SECRET.as_bytes()), NOW),
        Err(AuthError::NotYetValid)
    );

    // alg: none, with and without a signature part.
    let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = B64.encode(claims().to_string());
    for token in [format!("{header}.{payload}."), format!("{header}.{payload}")] {
        assert!(
            matches!(auth.verify_connection(&token, NOW), Err(AuthError::Invalid(_))),
            "{token}"
        );
    }

    // HS/RS confusion: an HS256 token "signed" with the RSA public key is refused by a
    // gateway that verifies RS256.
    let confused = hs(&claims(), RSA_PUBLIC);
    let rs_auth = Authenticator::new(TokenKey::public_pem(RSA_PUBLIC).unwrap(), None, None);
    assert!(matches!(
        rs_auth.verify_connection(&confused, NOW),
        Err(AuthError::Invalid(_))
    ));
    // And an RS256 token is refused by an HS256 gateway.
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        auth.verify_connection(&rs, NOW),
        Err(AuthError::Invalid(_))
    ));

    // Issuer and audience.
    let strict = Authenticator::new(
        TokenKey::hs256(SECRET.as_bytes()).unwrap(),
        Some("chatwoot"),
        Some("rtgate"),
    );
    let mut c = claims();
    assert!(
        strict.verify_connection(&hs(&c, SECRET.as_bytes()), NOW).is_err(),
        "iss and aud are required"
    );
    c["iss"] = json!("chatwoot");
    c["aud"] = json!("someone-else");
    assert_eq!(
        strict.verify_connection(&hs(&c, SECRET.as_bytes()), NOW),
        Err(AuthError::WrongAudience)
    );
    c["aud"] = json!("rtgate");
    strict.verify_connection(&hs(&c, SECRET.as_bytes()), NOW).unwrap();
    c["iss"] = json!("mallory");
    assert_eq!(
        strict.verify_connection(&hs(&c, SECRET.as_bytes()), NOW),
        Err(AuthError::WrongAudience)
    );

    // Malformed claims.
    for bad in [
        json!({ "sub": "x", "account_id": 1, "role": "agent" }),
        json!({ "sub": "0", "account_id": 1, "role": "agent" }),
        json!({ "sub": "7", "account_id": 0, "role": "agent" }),
        json!({ "sub": "7", "account_id": 1, "role": "root" }),
        json!({ "sub": "7", "role": "agent" }),
    ] {
        assert!(
            matches!(
                auth.verify_connection(&hs(&bad, SECRET.as_bytes()), NOW),
                Err(AuthError::Claims(_))
            ),
            "{bad}"
        );
    }
    // A subscription token cannot open a connection.
    let mut sub = claims();
    sub["room"] = json!("conversation:1");
    assert!(matches!(
        auth.verify_connection(&hs(&sub, SECRET.as_bytes()), NOW),
        Err(AuthError::Claims(_))
    ));

    assert!(TokenKey::hs256(b"short").is_err());
    assert!(TokenKey::public_pem(b"not a pem").is_err());
}

#[test]
fn subscription_tokens_bind_room_holder_and_time() {
    let auth = hs_auth();
    let p = auth
        .verify_connection(&hs(&claims(), SECRET.as_bytes()), NOW)
        .unwrap();
    let room = rtgate_protocol::RoomName::parse("conversation:42").unwrap();
    let grant = |holder: &str, room: &str, exp: u64| {
        hs(
            &json!({ "sub": holder, "room": room, "exp": exp }),
            SECRET.as_bytes(),
        )
    };
    auth.verify_subscription(&grant("user:7", "conversation:42", NOW + 60), &p, &room, NOW)
        .unwrap();
    assert_eq!(
        auth.verify_subscription(&grant("user:8", "conversation:42", NOW + 60), &p, &room, NOW),
        Err(AuthError::WrongGrant)
    );
    assert_eq!(
        auth.verify_subscription(&grant("contact:7", "conversation:42", NOW + 60), &p, &room, NOW),
        Err(AuthError::WrongGrant)
    );
    assert_eq!(
        auth.verify_subscription(&grant("user:7", "conversation:43", NOW + 60), &p, &room, NOW),
        Err(AuthError::WrongGrant)
    );
    assert_eq!(
        auth.verify_subscription(&grant("user:7", "conversation:42", NOW - 60), &p, &room, NOW),
        Err(AuthError::Expired)
    );
}

#[tokio::test]
async fn refused_tokens_close_the_connection_with_a_code_over_both_transports() {
    let t = TestGateway::start().await;
    let expired =
        token_with(json!({ "sub": "7", "account_id": 1, "role": "agent", "exp": now_unix() - 3600 }));
    let forged = hs(
        &json!({ "sub": "7", "account_id": 1, "role": "agent" }),
        b"forged-forged-forged-forged-forged-forged",
    );
    let cases = [
        (expired, DisconnectCode::TokenExpired),
        (forged, DisconnectCode::Unauthorized),
        ("garbage".to_string(), DisconnectCode::Unauthorized),
    ];
    for (token, code) in &cases {
        let mut ws = common::raw::RawWs::connect(&t.ws_url()).await;
        ws.send(&common::raw::hello(token)).await;
        let (disconnect, close) = ws.until_end().await;
        assert_eq!(disconnect.unwrap().code, code.code());
        assert_eq!(close, Some(code.code() as u16));

        let mut wt = common::raw::RawWt::connect(&t.wt_url(), t.cert_hash()).await;
        wt.send(&common::raw::hello(token)).await;
        assert_eq!(wt.until_end().await.unwrap().code, code.code());
    }
}
