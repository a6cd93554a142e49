//! The key and tokens of the session fuzz target, shared with the seed generator so that
//! seeds can carry tokens the target accepts. The fuzzer cannot forge a signature, so
//! everything past Hello is reached either through the Hello the target prepends (see
//! `client_frame.rs`) or through a seed that carries a token minted here.
// Each of the two users needs a different part of this file.
#![allow(dead_code)]

use jsonwebtoken::{EncodingKey, Header};

/// The HS256 secret the target's authenticator verifies with.
pub const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";

/// The wall clock when a fuzzed session starts (2030-03-17), in Unix milliseconds.
pub const T0_UNIX_MS: u64 = 1_900_000_000_000;

/// The wall clock when a fuzzed session starts, in Unix seconds.
pub const T0_UNIX: u64 = T0_UNIX_MS / 1000;

/// Signs `claims` with [`SECRET`].
pub fn sign(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET))
        .expect("HS256 signing does not fail")
}

/// A connection token: `role` is `agent`, `admin` or `contact`; `exp_in` seconds after
/// the session starts, or none.
pub fn connection(role: &str, sub: u64, exp_in: Option<u64>) -> String {
    let mut claims = serde_json::json!({
        "sub": sub.to_string(),
        "account_id": 1,
        "role": role,
        "inboxes": [3, 5],
    });
    if let Some(exp_in) = exp_in {
        claims["exp"] = (T0_UNIX + exp_in).into();
    }
    sign(&claims)
}

/// A subscription token granting `room` to the holder of `own_room` (`user:7`) for a year.
pub fn subscription(own_room: &str, room: &str) -> String {
    sign(&serde_json::json!({
        "sub": own_room,
        "room": room,
        "exp": T0_UNIX + 365 * 24 * 3600,
    }))
}

/// The principals the target can say Hello as, by the number in the input's first byte:
/// 1 an agent whose token expires two minutes in, 2 an admin whose token lasts a day,
/// 3 a contact. (A token without expiry is refused by default.)
pub fn preamble_token(n: u8) -> String {
    match n {
        1 => connection("agent", 7, Some(120)),
        2 => connection("admin", 8, Some(86_000)),
        _ => connection("contact", 9, Some(3600)),
    }
}
