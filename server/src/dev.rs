//! Development-mode credentials: a generated JWT secret and API key, and tokens minted
//! with them so that a developer can try the gateway at once.

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

/// Credentials made up at start in development mode.
#[derive(Debug, Clone)]
pub struct DevCredentials {
    /// HS256 secret clients' tokens are signed with.
    pub jwt_secret: String,
    /// Bearer key of the server API.
    pub api_key: String,
}

/// Claims of a connection token (see docs/protocol.md, "Authentication").
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionClaims {
    /// User or contact id, as a string.
    pub sub: String,
    /// Account id.
    pub account_id: u64,
    /// `agent`, `admin` or `contact`.
    pub role: String,
    /// Inboxes the user belongs to.
    pub inboxes: Vec<u64>,
    /// Expiry, unix seconds.
    pub exp: u64,
}

/// Claims of a subscription token.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionClaims {
    /// The holder's own room (`user:7`, `contact:3`).
    pub sub: String,
    /// The room granted.
    pub room: String,
    /// Expiry, unix seconds.
    pub exp: u64,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl DevCredentials {
    /// Fresh random credentials.
    pub fn generate() -> Self {
        DevCredentials {
            jwt_secret: random_hex(32),
            api_key: format!("dev-{}", random_hex(16)),
        }
    }

    /// An HS256 token for `claims`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )
        .expect("HS256 signing does not fail")
    }
}
