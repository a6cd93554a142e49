//! The session driven by hand, with time stepped explicitly.

use super::*;
use crate::auth::TokenKey;
use crate::engine::SubscribeOutcome;
use crate::ids::Epoch;
use jsonwebtoken::{EncodingKey, Header};

const SECRET: &[u8] = b"unit-secret-unit-secret-unit-secret!";
const T0_UNIX_MS: u64 = 1_900_000_000_000;

fn token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn agent_token(exp_in_secs: u64) -> String {
    token(serde_json::json!({
        "sub": "7", "account_id": 1, "role": "agent", "exp": T0_UNIX_MS / 1000 + exp_in_secs,
    }))
}

fn session(t0: Instant) -> Session {
    let config = SessionConfig {
        hello_timeout: Duration::from_secs(5),
        stale_timeout: Duration::from_secs(60),
        refresh_grace: Duration::from_secs(10),
        ..SessionConfig::default()
    };
    let auth = Authenticator::new(TokenKey::hs256(SECRET).unwrap(), None, None);
    Session::new(Arc::new(config), Arc::new(auth), "s1".into(), t0, T0_UNIX_MS)
}

fn frame(id: u32, kind: C) -> pb::ClientFrame {
    pb::ClientFrame { id, kind: Some(kind) }
}

fn hello(token: &str) -> pb::ClientFrame {
    frame(
        0,
        C::Hello(pb::Hello {
            token: token.into(),
            ..Default::default()
        }),
    )
}

/// The actions queued, with admission granted along the way (as the driver would).
fn actions(s: &mut Session) -> Vec<Action> {
    let mut out = Vec::new();
    while let Some(a) = s.poll_action() {
        if a == Action::Admit {
            s.admitted(Ok(()));
            continue;
        }
        out.push(a);
    }
    out
}

fn outcome(offset: u64) -> SubscribeOutcome {
    SubscribeOutcome {
        pos: StreamPos {
            epoch: Epoch::from_wire("e"),
            offset,
        },
        recovered: false,
        replayed: 0,
    }
}

/// A session past Hello and Welcome.
fn active(t0: Instant, exp_in_secs: u64) -> Session {
    let mut s = session(t0);
    s.handle_client_frame(hello(&agent_token(exp_in_secs)), t0);
    for a in actions(&mut s) {
        if let Action::Join { room, .. } = a {
            s.join_done(&room, Ok(outcome(0)), t0);
        }
    }
    let acts = actions(&mut s);
    assert!(matches!(
        &acts[0],
        Action::Send(pb::ServerFrame {
            kind: Some(S::Welcome(_))
        })
    ));
    s
}

fn closed_with(acts: &[Action]) -> Option<DisconnectCode> {
    acts.iter().find_map(|a| match a {
        Action::Close(code, _) => Some(*code),
        _ => None,
    })
}

fn reply(acts: &[Action]) -> pb::Reply {
    acts.iter()
        .find_map(|a| match a {
            Action::Send(pb::ServerFrame {
                kind: Some(S::Reply(r)),
            }) => Some(r.clone()),
            _ => None,
        })
        .expect("a reply")
}

#[test]
fn hello_timeout_fires_exactly_at_the_deadline() {
    let t0 = Instant::now();
    let mut s = session(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    s.handle_timeout(t0 + Duration::from_millis(4999));
    assert!(actions(&mut s).is_empty());
    s.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::HelloTimeout));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn welcome_waits_for_auto_rooms_and_frames_sent_meanwhile_are_held() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle_client_frame(hello(&agent_token(3600)), t0);
    let joins: Vec<RoomName> = actions(&mut s)
        .into_iter()
        .filter_map(|a| match a {
            Action::Join { room, .. } => Some(room),
            _ => None,
        })
        .collect();
    assert_eq!(
        joins.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        ["user:7", "account:1"]
    );
    s.handle_client_frame(frame(1, C::Ping(pb::Ping { nonce: 9 })), t0);
    s.join_done(&joins[0], Ok(outcome(3)), t0);
    assert!(actions(&mut s).is_empty(), "nothing before the Welcome");
    s.join_done(&joins[1], Ok(outcome(4)), t0);
    let acts = actions(&mut s);
    let Action::Send(pb::ServerFrame {
        kind: Some(S::Welcome(w)),
    }) = &acts[0]
    else {
        panic!("{acts:?}")
    };
    assert_eq!(w.rooms.len(), 2);
    assert_eq!(w.token_expires_at_ms, (T0_UNIX_MS / 1000 + 3600) as i64 * 1000);
    assert!(matches!(acts[1], Action::Activate(_)));
    assert!(matches!(acts[2], Action::Activate(_)));
    assert!(matches!(&acts[3], Action::Send(pb::ServerFrame { kind: Some(S::Pong(p)) }) if p.nonce == 9));
}

#[test]
fn an_expired_token_closes_after_the_grace_period_unless_refreshed() {
    let t0 = Instant::now();
    let mut s = active(t0, 60);
    // Deadline: expiry (60 s) + clock leeway (5 s, as at Hello) + grace (10 s).
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    // Keep the connection from going stale meanwhile.
    s.handle_client_frame(
        frame(0, C::Ping(pb::Ping { nonce: 1 })),
        t0 + Duration::from_secs(30),
    );
    actions(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(75)));
    s.handle_timeout(t0 + Duration::from_secs(74));
    assert!(closed_with(&actions(&mut s)).is_none());
    s.handle_timeout(t0 + Duration::from_secs(75));
    assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::TokenExpired));

    // Refreshed during the grace period: the deadline moves.
    let mut s = active(t0, 60);
    let fresh = token(serde_json::json!({
        "sub": "7", "account_id": 1, "role": "agent", "exp": T0_UNIX_MS / 1000 + 3600,
    }));
    s.handle_client_frame(
        frame(5, C::Refresh(pb::RefreshToken { token: fresh })),
        t0 + Duration::from_secs(65),
    );
    let r = reply(&actions(&mut s));
    assert_eq!(r.id, 5);
    assert!(r.error.is_none());
    s.handle_timeout(t0 + Duration::from_secs(70));
    assert!(closed_with(&actions(&mut s)).is_none());
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + Duration::from_secs(65 + 60)),
        "now the stale timer is next"
    );

    // A refresh for another user is refused and changes nothing.
    let mut s = active(t0, 60);
    let other = token(serde_json::json!({
        "sub": "8", "account_id": 1, "role": "agent", "exp": T0_UNIX_MS / 1000 + 3600,
    }));
    s.handle_client_frame(
        frame(6, C::Refresh(pb::RefreshToken { token: other })),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::Unauthorized.code()
    );
    s.handle_timeout(t0 + Duration::from_secs(75));
    assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::TokenExpired));
}

#[test]
fn requests_beyond_the_rate_are_refused_but_pings_are_not() {
    let t0 = Instant::now();
    let mut s = active(t0, 3600);
    let sub = |id: u32| {
        frame(
            id,
            C::Unsubscribe(pb::Unsubscribe {
                room: "public:1:none".into(),
            }),
        )
    };
    for id in 1..=100 {
        s.handle_client_frame(sub(id), t0);
        assert_eq!(
            reply(&actions(&mut s)).error.unwrap().code,
            ErrorCode::NotSubscribed.code()
        );
    }
    s.handle_client_frame(sub(101), t0);
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::LimitExceeded.code()
    );
    s.handle_client_frame(frame(0, C::Ping(pb::Ping { nonce: 1 })), t0);
    assert!(matches!(
        &actions(&mut s)[0],
        Action::Send(pb::ServerFrame {
            kind: Some(S::Pong(_))
        })
    ));
    // 50 per second refill.
    s.handle_client_frame(sub(102), t0 + Duration::from_millis(20));
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::NotSubscribed.code()
    );
}

#[test]
fn silent_connections_go_stale() {
    let t0 = Instant::now();
    let mut s = active(t0, 80_000);
    s.handle_timeout(t0 + Duration::from_secs(59));
    assert!(actions(&mut s).is_empty());
    s.handle_client_frame(
        frame(0, C::Ping(pb::Ping { nonce: 1 })),
        t0 + Duration::from_secs(59),
    );
    actions(&mut s);
    s.handle_timeout(t0 + Duration::from_secs(100));
    assert!(actions(&mut s).is_empty());
    s.handle_timeout(t0 + Duration::from_secs(119));
    assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::Stale));
}

fn join(s: &mut Session, room: &str, token: &str, now: Instant) {
    s.handle_client_frame(
        frame(
            9,
            C::Subscribe(pb::Subscribe {
                room: room.into(),
                since: None,
                token: token.into(),
            }),
        ),
        now,
    );
    let acts = actions(s);
    let room = RoomName::parse(room).unwrap();
    assert!(
        acts.contains(&Action::Join {
            room: room.clone(),
            since: None
        }),
        "{acts:?}"
    );
    s.join_done(&room, Ok(outcome(0)), now);
    actions(s);
}

#[test]
fn typing_is_for_joined_conversations_rate_limited_and_private_only_for_agents() {
    let t0 = Instant::now();
    let mut s = active(t0, 3600);
    let typing = |on: bool| {
        frame(
            1,
            C::Typing(pb::Typing {
                room: "conversation:5".into(),
                on,
                private: true,
            }),
        )
    };
    s.handle_client_frame(typing(true), t0);
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::NotSubscribed.code()
    );

    let grant = token(
        serde_json::json!({ "sub": "user:7", "room": "conversation:5", "exp": T0_UNIX_MS / 1000 + 60 }),
    );
    join(&mut s, "conversation:5", &grant, t0);
    s.handle_client_frame(typing(true), t0);
    let acts = actions(&mut s);
    let Some(Action::Ephemeral { event, private, .. }) =
        acts.iter().find(|a| matches!(a, Action::Ephemeral { .. }))
    else {
        panic!("{acts:?}")
    };
    assert!(*private);
    assert_eq!(event.name, "conversation.typing_on");
    s.handle_client_frame(typing(false), t0 + Duration::from_millis(100));
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::LimitExceeded.code()
    );
    s.handle_client_frame(typing(false), t0 + Duration::from_millis(400));
    assert!(
        actions(&mut s)
            .iter()
            .any(|a| matches!(a, Action::Ephemeral { .. }))
    );
    s.handle_client_frame(
        frame(
            1,
            C::Typing(pb::Typing {
                room: "public:1:x".into(),
                on: true,
                private: false,
            }),
        ),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::BadRequest.code()
    );
}

#[test]
fn clients_publish_only_allowed_names_to_joined_rooms_with_server_set_fields() {
    let t0 = Instant::now();
    let mut s = active(t0, 3600);
    let publish = |room: &str, name: &str| {
        frame(
            3,
            C::Publish(pb::Publish {
                room: room.into(),
                event: Some(pb::Event {
                    name: name.into(),
                    account_id: 999,
                    ..Default::default()
                }),
            }),
        )
    };
    s.handle_client_frame(publish("public:1:x", "client.hi"), t0);
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::NotSubscribed.code()
    );
    join(&mut s, "public:1:x", "", t0);
    s.handle_client_frame(publish("public:1:x", "message.created"), t0);
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::PermissionDenied.code()
    );
    s.handle_client_frame(publish("public:1:x", "client."), t0);
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::PermissionDenied.code()
    );
    s.handle_client_frame(publish("public:1:x", "client.hi"), t0 + Duration::from_secs(2));
    let acts = actions(&mut s);
    let Some(Action::Publish { event, .. }) = acts.first() else {
        panic!("{acts:?}")
    };
    assert_eq!(
        event.account_id, 1,
        "the account comes from the token, not the client"
    );
    assert_eq!(event.performer.as_ref().unwrap().id, 7);
    assert_eq!(event.occurred_at_ms, (T0_UNIX_MS + 2000) as i64);
    s.publish_done(3, Err(EngineError::Unavailable("down".into())));
    assert_eq!(
        reply(&actions(&mut s)).error.unwrap().code,
        ErrorCode::Unavailable.code()
    );
}

#[test]
fn a_connection_refused_at_admission_closes_overloaded_and_joins_nothing() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle_client_frame(hello(&agent_token(3600)), t0);
    assert_eq!(s.poll_action(), Some(Action::Admit));
    assert_eq!(s.poll_action(), None, "nothing before admission");
    s.admitted(Err("too many connections for this user".into()));
    let acts: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
    assert!(!acts.iter().any(|a| matches!(a, Action::Join { .. })), "{acts:?}");
    assert_eq!(closed_with(&acts), Some(DisconnectCode::Overloaded));
}

#[test]
fn a_hello_before_the_revocations_are_loaded_is_told_to_retry() {
    let t0 = Instant::now();
    let config = SessionConfig::default();
    let auth = Authenticator::new(TokenKey::hs256(SECRET).unwrap(), None, None);
    auth.revocations().mark_unknown();
    let mut s = Session::new(Arc::new(config), Arc::new(auth), "s1".into(), t0, T0_UNIX_MS);
    s.handle_client_frame(hello(&agent_token(3600)), t0);
    let acts = actions(&mut s);
    assert!(
        acts.contains(&Action::AuthFailed("revocations_unknown")),
        "{acts:?}"
    );
    assert_eq!(closed_with(&acts), Some(DisconnectCode::ServerError));
    assert!(DisconnectCode::ServerError.reconnect_advice().is_some());
}

#[test]
fn a_failed_auto_join_closes_and_a_failed_join_replies() {
    let t0 = Instant::now();
    let mut s = session(t0);
    s.handle_client_frame(hello(&agent_token(3600)), t0);
    let room = RoomName::user(7);
    actions(&mut s);
    s.join_done(&room, Err(EngineError::Unavailable("down".into())), t0);
    assert_eq!(closed_with(&actions(&mut s)), Some(DisconnectCode::ServerError));

    let mut s = active(t0, 3600);
    s.handle_client_frame(
        frame(
            4,
            C::Subscribe(pb::Subscribe {
                room: "public:1:y".into(),
                ..Default::default()
            }),
        ),
        t0,
    );
    actions(&mut s);
    s.join_done(
        &RoomName::parse("public:1:y").unwrap(),
        Err(EngineError::Unavailable("down".into())),
        t0,
    );
    let acts = actions(&mut s);
    assert!(acts.contains(&Action::Leave(RoomName::parse("public:1:y").unwrap())));
    assert_eq!(reply(&acts).error.unwrap().code, ErrorCode::Unavailable.code());
}
