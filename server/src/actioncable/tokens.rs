//! Whose a `pubsub_token` is, and who a `RoomChannel` subscription therefore is: the
//! records the backend mirrors (`/api/v1/mirror/pubsub-tokens`), the store that keeps
//! them (with the resume positions of `/cable` connections a node closed), and the
//! decision (a pure function of the record, the parameters and the mirror).
//!
//! Tokens are kept only as their SHA-256: a store read by someone else gives no token away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prost::Message;
use rtgate_protocol::pb;
use sha2::{Digest, Sha256};

use super::wire::RoomParams;
use crate::auth::{Principal, Role};
use crate::engine::{EngineError, RedisCommands};
use crate::events::mirror::Mirror;

/// A token's key in the store: the hex SHA-256 of the token.
pub fn token_key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks a mirrored token record.
pub fn check_token(record: &pb::PubsubToken) -> Result<(), String> {
    if record.token.is_empty() || record.token.len() > 255 {
        return Err("token must be 1 to 255 bytes".into());
    }
    match (record.user_id, record.contact_inbox_id) {
        (0, 0) | (1.., 1..) => Err("exactly one of user_id and contact_inbox_id is set".into()),
        (0, _) if record.account_id == 0 => Err("a contact inbox's token needs its account_id".into()),
        _ => Ok(()),
    }
}

/// Why a `RoomChannel` subscription is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The identifier names another channel.
    #[error("not RoomChannel")]
    UnknownChannel,
    /// No such token is mirrored.
    #[error("unknown pubsub_token")]
    UnknownToken,
    /// A user's token with another `user_id`, or a contact's token with one.
    #[error("the token is not this user's")]
    WrongUser,
    /// The user is not (mirrored as) a member of `account_id`, or none was given.
    #[error("the user is not in this account")]
    NotInAccount,
}

impl Rejection {
    /// A short stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::UnknownChannel => "unknown_channel",
            Rejection::UnknownToken => "unknown_token",
            Rejection::WrongUser => "wrong_user",
            Rejection::NotInAccount => "not_in_account",
        }
    }
}

/// Who subscribes with `params`, as Chatwoot's `RoomChannel` decides it: a user's token
/// with its own `user_id` and one of the user's accounts streams `user:ID`,
/// `account:ACCOUNT` and the inboxes the user gets broadcasts of; a contact inbox's token
/// without `user_id` streams `contact:ID` in its account.
pub fn resolve(
    record: Option<&pb::PubsubToken>,
    params: &RoomParams,
    mirror: &Mirror,
) -> Result<Principal, Rejection> {
    let record = record.ok_or(Rejection::UnknownToken)?;
    match (record.user_id, params.user_id) {
        (0, None) => Ok(Principal {
            id: record.contact_inbox_id,
            account_id: record.account_id,
            role: Role::Contact,
            inboxes: Vec::new(),
            expires_at: None,
            auto_inboxes: false,
        }),
        (0, Some(_)) | (_, None) => Err(Rejection::WrongUser),
        (user, Some(asked)) if user != asked => Err(Rejection::WrongUser),
        (user, Some(_)) => {
            let account = params.account_id.ok_or(Rejection::NotInAccount)?;
            let member = mirror
                .account_user(account, user)
                .ok_or(Rejection::NotInAccount)?;
            let role = if member.role() == pb::account_user::Role::Administrator {
                Role::Admin
            } else {
                Role::Agent
            };
            Ok(Principal {
                id: user,
                account_id: account,
                role,
                inboxes: mirror.member_inboxes(account, user),
                expires_at: None,
                auto_inboxes: true,
            })
        }
    }
}

/// Where token records and resume positions are kept.
#[async_trait]
pub trait CableStore: Send + Sync {
    /// Stores a record under a token key; the record it replaced, if any.
    async fn put_token(&self, key: &str, record: Vec<u8>) -> Result<Option<Vec<u8>>, EngineError>;
    /// Deletes a token; the record it held, if any.
    async fn delete_token(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError>;
    /// The record of a token.
    async fn token(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError>;
    /// Which of these tokens are stored, in order.
    async fn tokens_exist(&self, keys: &[String]) -> Result<Vec<bool>, EngineError>;
    /// Keeps one closed connection's positions for a token, for `ttl`.
    async fn save_resume(&self, key: &str, entry: String, ttl: Duration) -> Result<(), EngineError>;
    /// Takes one kept entry of a token (each is taken once).
    async fn take_resume(&self, key: &str) -> Result<Option<String>, EngineError>;
}

/// Decodes a stored record.
pub fn decode_record(bytes: &[u8]) -> Option<pb::PubsubToken> {
    pb::PubsubToken::decode(bytes).ok()
}

/// A record as stored: without the token itself.
pub fn encode_record(record: &pb::PubsubToken) -> Vec<u8> {
    pb::PubsubToken {
        token: String::new(),
        ..record.clone()
    }
    .encode_to_vec()
}

/// The store of a single node on the embedded engine.
#[derive(Debug, Default)]
pub struct MemoryCableStore {
    tokens: Mutex<HashMap<String, Vec<u8>>>,
    resumes: Mutex<HashMap<String, Vec<(Instant, String)>>>,
}

#[async_trait]
impl CableStore for MemoryCableStore {
    async fn put_token(&self, key: &str, record: Vec<u8>) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self
            .tokens
            .lock()
            .expect("tokens lock")
            .insert(key.to_string(), record))
    }

    async fn delete_token(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tokens.lock().expect("tokens lock").remove(key))
    }

    async fn token(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tokens.lock().expect("tokens lock").get(key).cloned())
    }

    async fn tokens_exist(&self, keys: &[String]) -> Result<Vec<bool>, EngineError> {
        let tokens = self.tokens.lock().expect("tokens lock");
        Ok(keys.iter().map(|k| tokens.contains_key(k)).collect())
    }

    async fn save_resume(&self, key: &str, entry: String, ttl: Duration) -> Result<(), EngineError> {
        // Only this token's list is pruned: a stopping node saves one entry per connection.
        let now = Instant::now();
        let mut resumes = self.resumes.lock().expect("resumes lock");
        let list = resumes.entry(key.to_string()).or_default();
        list.retain(|(until, _)| *until > now);
        list.push((now + ttl, entry));
        Ok(())
    }

    async fn take_resume(&self, key: &str) -> Result<Option<String>, EngineError> {
        let now = Instant::now();
        let mut resumes = self.resumes.lock().expect("resumes lock");
        let Some(list) = resumes.get_mut(key) else {
            return Ok(None);
        };
        list.retain(|(until, _)| *until > now);
        let taken = (!list.is_empty()).then(|| list.remove(0).1);
        if list.is_empty() {
            resumes.remove(key);
        }
        Ok(taken)
    }
}

/// The store on Redis: `{<prefix>:cable}:t:<key>` holds a token's record,
/// `{<prefix>:cable}:r:<key>` a list of resume entries (expiring).
pub struct RedisCableStore {
    commands: Arc<RedisCommands>,
}

impl std::fmt::Debug for RedisCableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCableStore").finish_non_exhaustive()
    }
}

impl RedisCableStore {
    /// The store under the engine's prefix.
    pub fn new(commands: Arc<RedisCommands>) -> Self {
        RedisCableStore { commands }
    }

    fn key(&self, kind: &str, key: &str) -> String {
        // One hash tag per token: tokens spread over a Cluster's slots.
        format!("{{{}:cable:{key}}}:{kind}", self.commands.prefix())
    }
}

#[async_trait]
impl CableStore for RedisCableStore {
    async fn put_token(&self, key: &str, record: Vec<u8>) -> Result<Option<Vec<u8>>, EngineError> {
        self.commands
            .command(redis::cmd("SET").arg(self.key("t", key)).arg(record).arg("GET"))
            .await
    }

    async fn delete_token(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        self.commands
            .command(redis::cmd("GETDEL").arg(self.key("t", key)))
            .await
    }

    async fn token(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        self.commands
            .command(redis::cmd("GET").arg(self.key("t", key)))
            .await
    }

    async fn tokens_exist(&self, keys: &[String]) -> Result<Vec<bool>, EngineError> {
        // One round trip per few hundred tokens (each in its own slot: a pipeline, not MGET).
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.exists(self.key("t", key));
            }
            found.extend(self.commands.pipe::<Vec<bool>>(&pipe).await?);
        }
        Ok(found)
    }

    async fn save_resume(&self, key: &str, entry: String, ttl: Duration) -> Result<(), EngineError> {
        let list = self.key("r", key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .rpush(&list, entry)
            .ignore()
            .expire(&list, ttl.as_secs().max(1) as i64)
            .ignore();
        self.commands.pipe::<()>(&pipe).await
    }

    async fn take_resume(&self, key: &str) -> Result<Option<String>, EngineError> {
        self.commands
            .command(redis::cmd("LPOP").arg(self.key("r", key)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror() -> Mirror {
        let mut m = Mirror::default();
        m.add_account_user(pb::AccountUser {
            id: 1,
            account_id: 1,
            user_id: 7,
            ..Default::default()
        });
        m.add_account_user(pb::AccountUser {
            id: 2,
            account_id: 1,
            user_id: 9,
            role: pb::account_user::Role::Administrator as i32,
            ..Default::default()
        });
        for (inbox, account, members) in [(3, 1, vec![7]), (4, 1, vec![]), (5, 2, vec![7])] {
            m.add_inbox(pb::InboxSettings {
                inbox_id: inbox,
                account_id: account,
                member_ids: members,
                ..Default::default()
            });
        }
        m
    }

    fn user_token(user: u64) -> pb::PubsubToken {
        pb::PubsubToken {
            token: "t".into(),
            user_id: user,
            ..Default::default()
        }
    }

    fn params(account: Option<u64>, user: Option<u64>) -> RoomParams {
        RoomParams {
            pubsub_token: "t".into(),
            account_id: account,
            user_id: user,
        }
    }

    #[test]
    fn an_agent_streams_its_room_its_account_and_the_inboxes_it_is_a_member_of() {
        let p = resolve(Some(&user_token(7)), &params(Some(1), Some(7)), &mirror()).unwrap();
        assert_eq!((p.id, p.account_id, p.role), (7, 1, Role::Agent));
        let rooms: Vec<String> = p.auto_rooms().iter().map(|r| r.to_string()).collect();
        assert_eq!(rooms, ["user:7", "account:1", "inbox:3"]);
        // An administrator gets every inbox of the account, members or not.
        let admin = resolve(Some(&user_token(9)), &params(Some(1), Some(9)), &mirror()).unwrap();
        assert_eq!((admin.role, admin.inboxes.clone()), (Role::Admin, vec![3, 4]));
    }

    #[test]
    fn the_holder_of_a_token_gets_what_chatwoot_gives_them_and_nothing_more() {
        let m = mirror();
        let cases = [
            (None, params(Some(1), Some(7)), Rejection::UnknownToken),
            (
                Some(user_token(7)),
                params(Some(1), Some(9)),
                Rejection::WrongUser,
            ),
            (Some(user_token(7)), params(Some(1), None), Rejection::WrongUser),
            (
                Some(user_token(7)),
                params(Some(2), Some(7)),
                Rejection::NotInAccount,
            ),
            (
                Some(user_token(7)),
                params(None, Some(7)),
                Rejection::NotInAccount,
            ),
        ];
        for (record, params, want) in cases {
            assert_eq!(
                resolve(record.as_ref(), &params, &m).unwrap_err(),
                want,
                "{params:?}"
            );
        }
        let contact = pb::PubsubToken {
            token: "c".into(),
            contact_inbox_id: 501,
            account_id: 1,
            ..Default::default()
        };
        // A contact's token streams its contact inbox only, whatever account it names.
        let p = resolve(Some(&contact), &params(Some(2), None), &m).unwrap();
        assert_eq!((p.id, p.account_id, p.role), (501, 1, Role::Contact));
        assert_eq!(p.auto_rooms().len(), 1);
        assert_eq!(p.auto_rooms()[0].to_string(), "contact:501");
        assert_eq!(
            resolve(Some(&contact), &params(Some(1), Some(7)), &m).unwrap_err(),
            Rejection::WrongUser
        );
    }

    #[test]
    fn token_records_are_checked() {
        assert!(check_token(&user_token(7)).is_ok());
        let both = pb::PubsubToken {
            contact_inbox_id: 1,
            account_id: 1,
            ..user_token(7)
        };
        assert!(check_token(&both).is_err());
        assert!(
            check_token(&pb::PubsubToken {
                token: "t".into(),
                ..Default::default()
            })
            .is_err()
        );
        let no_account = pb::PubsubToken {
            token: "t".into(),
            contact_inbox_id: 1,
            ..Default::default()
        };
        assert!(check_token(&no_account).is_err());
        assert!(
            check_token(&pb::PubsubToken {
                token: String::new(),
                ..user_token(7)
            })
            .is_err()
        );
        // Stored records never hold the token.
        assert_eq!(decode_record(&encode_record(&user_token(7))).unwrap().token, "");
    }

    #[tokio::test]
    async fn stored_tokens_are_told_apart_from_gone_ones() {
        let store = MemoryCableStore::default();
        store.put_token("a", vec![1]).await.unwrap();
        let keys = ["a".to_string(), "b".to_string()];
        assert_eq!(store.tokens_exist(&keys).await.unwrap(), [true, false]);
        store.delete_token("a").await.unwrap();
        assert_eq!(store.tokens_exist(&keys).await.unwrap(), [false, false]);
    }

    #[tokio::test]
    async fn resume_entries_are_taken_once_each() {
        let store = MemoryCableStore::default();
        store
            .save_resume("k", "a".into(), Duration::from_secs(60))
            .await
            .unwrap();
        store
            .save_resume("k", "b".into(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.take_resume("k").await.unwrap().as_deref(), Some("a"));
        assert_eq!(store.take_resume("k").await.unwrap().as_deref(), Some("b"));
        assert_eq!(store.take_resume("k").await.unwrap(), None);
    }
}
