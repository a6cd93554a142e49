//! Token verification: connection JWTs (HS256, RS256 or ES256) and the backend-signed
//! subscription tokens that grant single rooms.
//!
//! Time is an input (`now_unix` seconds), never read from the system clock, so expiry is
//! tested with controlled time. Exactly one algorithm is accepted, the one the key is for:
//! `alg: none` and algorithm confusion (an HS256 token "signed" with an RSA public key) are
//! refused by construction.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rtgate_protocol::RoomName;
use serde::Deserialize;

/// The key that verifies tokens, with its algorithm.
#[derive(Clone)]
pub struct TokenKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({:?})", self.algorithm)
    }
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM is neither an RSA nor a P-256 EC public key.
    #[error("the public key PEM is neither an RSA (RS256) nor an EC P-256 (ES256) key: {0}")]
    UnsupportedPem(String),
    /// An HMAC secret shorter than 32 bytes.
    #[error("the HS256 secret must be at least 32 bytes long")]
    ShortSecret,
}

impl TokenKey {
    /// An HS256 shared secret (at least 32 bytes).
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::ShortSecret);
        }
        Ok(TokenKey {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// An RS256 or ES256 public key in PEM form; the algorithm follows the key type.
    pub fn public_pem(pem: &[u8]) -> Result<Self, KeyError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(TokenKey {
                algorithm: Algorithm::RS256,
                key,
            });
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(TokenKey {
                algorithm: Algorithm::ES256,
                key,
            }),
            Err(e) => Err(KeyError::UnsupportedPem(e.to_string())),
        }
    }

    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// What a connection is allowed to be, from its token's `role` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An agent of the account.
    Agent,
    /// An administrator of the account.
    Admin,
    /// A contact (the widget or an API client); `sub` is the contact id.
    Contact,
    /// The gateway's own admin console: never in a backend's token (it cannot be
    /// deserialized); only in tokens the gateway mints (see [`CONSOLE_KID`]).
    #[serde(skip)]
    Console,
}

/// The `kid` of the tokens the gateway mints for its admin console.
pub const CONSOLE_KID: &str = "rtgate-console";

/// The console's principal id and account (no backend user or account has it).
pub const CONSOLE_ID: u64 = u64::MAX;

/// The room the console's live figures are published to, one event per node per second:
/// a public room of the console's own account.
pub fn console_room() -> RoomName {
    RoomName::parse(&format!("public:{CONSOLE_ID}:console")).expect("a valid room name")
}

/// How long a console token is valid.
pub const CONSOLE_TOKEN_SECS: u64 = 3600;

/// The authenticated party behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User id (agents and admins) or contact id (contacts).
    pub id: u64,
    /// The account this connection works in.
    pub account_id: u64,
    /// Agent, admin or contact.
    pub role: Role,
    /// Inboxes the user belongs to (for admins: every inbox of the account), sorted.
    pub inboxes: Vec<u64>,
    /// Unix seconds at which the token expires, if it does.
    pub expires_at: Option<u64>,
    /// Its inbox rooms are joined on connect too (a `/cable` subscription streams them).
    pub auto_inboxes: bool,
}

impl Principal {
    /// The principal's own room: `user:ID` or `contact:ID`.
    pub fn own_room(&self) -> RoomName {
        match self.role {
            Role::Contact => RoomName::contact(self.id),
            Role::Agent | Role::Admin => RoomName::user(self.id),
            Role::Console => console_room(),
        }
    }

    /// Rooms joined automatically on connect.
    pub fn auto_rooms(&self) -> Vec<RoomName> {
        match self.role {
            Role::Contact | Role::Console => vec![self.own_room()],
            Role::Agent | Role::Admin => {
                let mut rooms = vec![self.own_room(), RoomName::account(self.account_id)];
                if self.auto_inboxes {
                    rooms.extend(self.inboxes.iter().map(|&id| RoomName::inbox(id)));
                }
                rooms
            }
        }
    }

    /// Whether this is a contact connection.
    pub fn is_contact(&self) -> bool {
        self.role == Role::Contact
    }

    /// Who this is, in short.
    pub fn principal_id(&self) -> PrincipalId {
        PrincipalId {
            account: self.account_id,
            contact: self.is_contact(),
            id: self.id,
        }
    }
}

/// Who a principal is, in short: a user (agent or admin) or a contact, in an account. The
/// key presence, connection limits and kicks go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrincipalId {
    /// The account.
    pub account: u64,
    /// A contact (else a user).
    pub contact: bool,
    /// The user or contact id.
    pub id: u64,
}

impl PrincipalId {
    /// `u:7` or `c:3`: the member name used in stores.
    pub fn member(&self) -> String {
        format!("{}:{}", if self.contact { "c" } else { "u" }, self.id)
    }

    /// Parses a member name of `account`.
    pub fn from_member(account: u64, member: &str) -> Option<PrincipalId> {
        let (kind, id) = member.split_once(':')?;
        let contact = match kind {
            "u" => false,
            "c" => true,
            _ => return None,
        };
        Some(PrincipalId {
            account,
            contact,
            id: id.parse().ok()?,
        })
    }
}

/// Why a token was refused. The label goes to logs and metrics; clients only see a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Signature, format or algorithm wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// Issuer or audience not accepted.
    #[error("token issuer or audience not accepted")]
    WrongAudience,
    /// Claims missing or of the wrong form.
    #[error("token claims: {0}")]
    Claims(String),
    /// A subscription token for another room or holder.
    #[error("subscription token does not grant this room to this connection")]
    WrongGrant,
    /// The backend revoked this user's tokens issued before a time, and this one is older
    /// (or has no `iat`).
    #[error("token revoked")]
    Revoked,
    /// The node has not yet loaded the revocations made on other nodes, so cannot tell
    /// whether the token is revoked: the client should try again shortly.
    #[error("revocations not loaded yet")]
    RevocationsUnknown,
}

impl AuthError {
    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::Claims(_) => "claims",
            AuthError::WrongGrant => "wrong_grant",
            AuthError::Revoked => "revoked",
            AuthError::RevocationsUnknown => "revocations_unknown",
        }
    }
}

#[derive(Debug, Deserialize)]
struct ConnectionClaims {
    sub: String,
    account_id: u64,
    role: Role,
    #[serde(default)]
    inboxes: Vec<u64>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    /// Present only in subscription tokens; its presence here is refused.
    room: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SubscriptionClaims {
    sub: String,
    room: String,
    exp: u64,
    nbf: Option<u64>,
}

/// Users and contacts whose tokens issued before some time are refused, each until the
/// last such token would have expired anyway.
#[derive(Debug)]
pub struct Revocations {
    entries: std::sync::RwLock<std::collections::HashMap<(bool, u64), (u64, u64)>>,
    /// Whether the revocations made elsewhere (on other nodes, before this one started)
    /// are loaded: until then no connection token is accepted.
    known: std::sync::atomic::AtomicBool,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            entries: Default::default(),
            known: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

impl Revocations {
    /// Revocations may have been made elsewhere: connection tokens are refused (as
    /// [`AuthError::RevocationsUnknown`]) until [`Revocations::mark_known`].
    pub fn mark_unknown(&self) {
        self.known.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Every revocation in force is loaded.
    pub fn mark_known(&self) {
        self.known.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether every revocation in force is loaded.
    pub fn is_known(&self) -> bool {
        self.known.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refuses the tokens of the user (`contact`: the contact) `id` issued before
    /// `before`, until `until` (unix seconds).
    pub fn revoke(&self, contact: bool, id: u64, before: u64, until: u64) {
        let mut entries = self.entries.write().expect("revocations lock");
        // Whatever is past its time goes (the map holds revocations in force only).
        let now = before.saturating_sub(1);
        entries.retain(|_, (_, until)| *until > now);
        let entry = entries.entry((contact, id)).or_insert((before, until));
        entry.0 = entry.0.max(before);
        entry.1 = entry.1.max(until);
    }

    /// Whether a token of `id` issued at `iat` is revoked at `now`.
    pub fn is_revoked(&self, contact: bool, id: u64, iat: Option<u64>, now: u64) -> bool {
        let entries = self.entries.read().expect("revocations lock");
        match entries.get(&(contact, id)) {
            Some((before, until)) if *until > now => iat.is_none_or(|iat| iat < *before),
            _ => false,
        }
    }

    /// Forgets revocations past their time.
    pub fn prune(&self, now: u64) {
        self.entries
            .write()
            .expect("revocations lock")
            .retain(|_, (_, until)| *until > now);
    }
}

/// Verifies tokens with one key and the configured issuer and audience.
#[derive(Debug, Clone)]
pub struct Authenticator {
    key: TokenKey,
    /// Signs and verifies the console's tokens (HS256).
    console_key: Option<Vec<u8>>,
    validation: Validation,
    leeway_secs: u64,
    max_lifetime_secs: u64,
    allow_no_exp: bool,
    revocations: std::sync::Arc<Revocations>,
}

/// Clock leeway applied to every time claim, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// Default maximum lifetime of a connection token: a day.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 86_400;

impl Authenticator {
    /// An authenticator accepting tokens signed with `key`; when `issuer` or `audience`
    /// is given, tokens must carry it.
    pub fn new(key: TokenKey, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(key.algorithm);
        // Time is checked by us against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = audience.is_some();
        if let Some(aud) = audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Authenticator {
            key,
            console_key: None,
            validation,
            leeway_secs: LEEWAY_SECS,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
            allow_no_exp: false,
            revocations: Default::default(),
        }
    }

    /// Mints and accepts console tokens signed with `secret` (the same on every node).
    pub fn with_console_key(mut self, secret: &[u8]) -> Self {
        self.console_key = Some(secret.to_vec());
        self
    }

    /// A token for the admin console, valid from `now_unix` for [`CONSOLE_TOKEN_SECS`];
    /// `None` without a console key.
    pub fn console_token(&self, now_unix: u64) -> Option<String> {
        let secret = self.console_key.as_ref()?;
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(CONSOLE_KID.into());
        let claims = serde_json::json!({
            "sub": CONSOLE_ID.to_string(),
            "iat": now_unix,
            "exp": now_unix + CONSOLE_TOKEN_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret)).ok()
    }

    fn verify_console(&self, token: &str, now_unix: u64) -> Result<Principal, AuthError> {
        #[derive(Deserialize)]
        struct ConsoleClaims {
            sub: String,
            exp: u64,
        }
        let secret = self
            .console_key
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("console tokens are not accepted here".into()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims =
            jsonwebtoken::decode::<ConsoleClaims>(token, &DecodingKey::from_secret(secret), &validation)
                .map_err(|e| AuthError::Invalid(e.to_string()))?
                .claims;
        if claims.sub != CONSOLE_ID.to_string() {
            return Err(AuthError::Claims("not a console token".into()));
        }
        self.check_time(Some(claims.exp), None, now_unix)?;
        if claims.exp > now_unix + CONSOLE_TOKEN_SECS + self.leeway_secs {
            return Err(AuthError::Claims("console tokens live an hour at most".into()));
        }
        Ok(Principal {
            id: CONSOLE_ID,
            account_id: CONSOLE_ID,
            role: Role::Console,
            inboxes: Vec::new(),
            expires_at: Some(claims.exp),
            auto_inboxes: false,
        })
    }

    /// The revoked tokens this authenticator refuses.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// How long a connection token can be valid, in seconds (the maximum lifetime plus
    /// the clock leeway): how long a revocation must be kept.
    pub fn max_validity_secs(&self) -> u64 {
        self.max_lifetime_secs + self.leeway_secs
    }

    /// Connection tokens may be valid for at most `secs` (`exp` at most that far ahead);
    /// with `allow_no_exp`, tokens without `exp` are accepted and treated as expiring
    /// `secs` after they are presented (the connection must refresh by then).
    pub fn with_lifetime(mut self, secs: u64, allow_no_exp: bool) -> Self {
        self.max_lifetime_secs = secs;
        self.allow_no_exp = allow_no_exp;
        self
    }

    /// The clock leeway applied to time claims, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    fn decode<C: serde::de::DeserializeOwned>(&self, token: &str) -> Result<C, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        // The header is checked first: an unknown or other algorithm (`none`, HS256 against
        // a public key) is refused before anything else is looked at.
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.alg != self.key.algorithm {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        jsonwebtoken::decode::<C>(token, &self.key.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => AuthError::WrongAudience,
                ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => AuthError::Claims(e.to_string()),
                _ => AuthError::Invalid(e.to_string()),
            })
    }

    fn check_time(&self, exp: Option<u64>, nbf: Option<u64>, now_unix: u64) -> Result<(), AuthError> {
        if let Some(exp) = exp
            && now_unix >= exp + self.leeway_secs
        {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = nbf
            && now_unix + self.leeway_secs < nbf
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }

    /// Verifies a connection token at time `now_unix`.
    pub fn verify_connection(&self, token: &str, now_unix: u64) -> Result<Principal, AuthError> {
        if jsonwebtoken::decode_header(token).is_ok_and(|h| h.kid.as_deref() == Some(CONSOLE_KID)) {
            return self.verify_console(token, now_unix);
        }
        let claims: ConnectionClaims = self.decode(token)?;
        if claims.room.is_some() {
            return Err(AuthError::Claims(
                "a subscription token cannot open a connection".into(),
            ));
        }
        self.check_time(claims.exp, claims.nbf, now_unix)?;
        let expires_at = match claims.exp {
            Some(exp) if exp > now_unix + self.max_lifetime_secs + self.leeway_secs => {
                return Err(AuthError::Claims(format!(
                    "exp lies beyond the maximum token lifetime of {} s",
                    self.max_lifetime_secs
                )));
            }
            Some(exp) => exp,
            None if self.allow_no_exp => now_unix + self.max_lifetime_secs,
            None => return Err(AuthError::Claims("exp is required".into())),
        };
        let id: u64 = claims
            .sub
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| AuthError::Claims("sub must be a positive integer id".into()))?;
        if claims.account_id == 0 {
            return Err(AuthError::Claims("account_id must be positive".into()));
        }
        if claims.account_id == CONSOLE_ID || id == CONSOLE_ID {
            return Err(AuthError::Claims("that id is the gateway's own".into()));
        }
        if !self.revocations.is_known() {
            return Err(AuthError::RevocationsUnknown);
        }
        if self
            .revocations
            .is_revoked(claims.role == Role::Contact, id, claims.iat, now_unix)
        {
            return Err(AuthError::Revoked);
        }
        let mut inboxes = claims.inboxes;
        inboxes.sort_unstable();
        inboxes.dedup();
        Ok(Principal {
            id,
            account_id: claims.account_id,
            role: claims.role,
            inboxes,
            expires_at: Some(expires_at),
            auto_inboxes: false,
        })
    }

    /// Verifies a subscription token granting `room` to `principal` at time `now_unix`.
    /// Its claims are `sub` (the holder's own room, e.g. `user:7`), `room` and `exp`.
    pub fn verify_subscription(
        &self,
        token: &str,
        principal: &Principal,
        room: &RoomName,
        now_unix: u64,
    ) -> Result<(), AuthError> {
        let claims: SubscriptionClaims = self.decode(token)?;
        self.check_time(Some(claims.exp), claims.nbf, now_unix)?;
        if claims.room != room.as_str() || claims.sub != principal.own_room().as_str() {
            return Err(AuthError::WrongGrant);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"an-hs256-secret-of-thirty-two-bytes!";
    const NOW: u64 = 1_900_000_000;

    fn authenticator() -> Authenticator {
        Authenticator::new(TokenKey::hs256(SECRET).unwrap(), None, None)
    }

    fn token(iat: Option<u64>) -> String {
        let mut claims = serde_json::json!({"sub": "7", "account_id": 1, "role": "agent", "exp": NOW + 60});
        if let Some(iat) = iat {
            claims["iat"] = iat.into();
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn console_tokens_verify_only_under_their_key_and_join_only_the_console_room() {
        let auth = authenticator().with_console_key(b"console key");
        let token = auth.console_token(NOW).unwrap();
        let console = auth.verify_connection(&token, NOW).unwrap();
        assert_eq!((console.role, console.account_id), (Role::Console, CONSOLE_ID));
        assert_eq!(console.auto_rooms(), [console_room()]);
        use crate::authz::{Grant, may_join};
        assert!(may_join(&console, &console_room(), Grant::Claims));
        for room in ["user:1", "account:1", "inbox:1", "public:1:lobby"] {
            assert!(
                !may_join(&console, &RoomName::parse(room).unwrap(), Grant::Claims),
                "{room}"
            );
        }
        assert!(
            auth.verify_connection(&token, NOW + CONSOLE_TOKEN_SECS + 10)
                .is_err(),
            "expired"
        );
        let other = authenticator().with_console_key(b"another gateway");
        assert!(other.verify_connection(&token, NOW).is_err());
        assert!(
            authenticator().verify_connection(&token, NOW).is_err(),
            "no console key"
        );
        assert!(authenticator().console_token(NOW).is_none());
        // A backend token cannot claim to be the console.
        let claims = serde_json::json!({"sub": "7", "account_id": 1, "role": "console", "exp": NOW + 60});
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(
            auth.verify_connection(&forged, NOW),
            Err(AuthError::Claims(_))
        ));
    }

    #[test]
    fn a_revocation_refuses_tokens_issued_before_it_and_tokens_without_iat() {
        let auth = authenticator();
        auth.revocations().revoke(false, 7, NOW, NOW + 100);
        assert_eq!(
            auth.verify_connection(&token(Some(NOW - 1)), NOW).unwrap_err(),
            AuthError::Revoked
        );
        assert_eq!(
            auth.verify_connection(&token(None), NOW).unwrap_err(),
            AuthError::Revoked
        );
        assert!(auth.verify_connection(&token(Some(NOW)), NOW).is_ok());
        // A contact of the same id is another principal; past `until` it is forgotten.
        assert!(!auth.revocations().is_revoked(true, 7, None, NOW));
        assert!(!auth.revocations().is_revoked(false, 7, None, NOW + 100));
    }

    #[test]
    fn no_token_is_accepted_while_revocations_made_elsewhere_are_unknown() {
        let auth = authenticator();
        auth.revocations().mark_unknown();
        assert_eq!(
            auth.verify_connection(&token(Some(NOW)), NOW).unwrap_err(),
            AuthError::RevocationsUnknown
        );
        auth.revocations().mark_known();
        assert!(auth.verify_connection(&token(Some(NOW)), NOW).is_ok());
    }
}
