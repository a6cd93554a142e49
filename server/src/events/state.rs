//! The state the business listeners keep from the events they see (when a conversation
//! was last resolved, who participates in it, whether a survey or a campaign conversation
//! was already decided…), in the engine: in memory on a single node, in Redis with
//! several, where every node reads and writes the same keys.
//!
//! Listeners stay sans-IO: a listener names the keys it reads ([`StateRead`]); the bus
//! loads them into a [`StateView`] before the listener decides, and the writes come back
//! as actions. Events of one conversation reach a listener in order, so what it wrote
//! for one event is there when it decides the next.
//!
//! Every key lives in a *scope* (a conversation, a contact inbox): in Redis
//! `{<prefix>:<scope>}:<field>`, one hash slot per scope. Keys expire after the
//! configured time without a write.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::engine::{EngineError, RedisCommands};

/// A key of listener state: a scope and a field in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateKey {
    /// What the key is about, e.g. `c:1:42` (conversation 42 of account 1).
    pub scope: String,
    /// Which fact, e.g. `resolved_at`.
    pub field: &'static str,
}

impl StateKey {
    /// A key of conversation `display_id` of `account_id`.
    pub fn conversation(account_id: u64, display_id: u64, field: &'static str) -> StateKey {
        StateKey {
            scope: format!("c:{account_id}:{display_id}"),
            field,
        }
    }

    /// A key of contact inbox `id`.
    pub fn contact_inbox(id: u64, field: &'static str) -> StateKey {
        StateKey {
            scope: format!("ci:{id}"),
            field,
        }
    }
}

impl std::fmt::Display for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.scope, self.field)
    }
}

/// A read a listener needs before it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRead {
    /// A value (text).
    Value(StateKey),
    /// A set of ids.
    Members(StateKey),
}

/// What a listener reads: the values and sets it asked for, as they were before it decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateView {
    values: HashMap<StateKey, String>,
    members: HashMap<StateKey, Vec<u64>>,
}

impl StateView {
    /// The value at `key`, if any.
    pub fn value(&self, key: &StateKey) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value at `key` as a number, if it is one.
    pub fn number(&self, key: &StateKey) -> Option<i64> {
        self.value(key).and_then(|v| v.parse().ok())
    }

    /// The set at `key`, sorted (empty if none).
    pub fn members(&self, key: &StateKey) -> &[u64] {
        self.members.get(key).map_or(&[], Vec::as_slice)
    }

    /// This view with a value set (tests, and the stores building a view).
    pub fn with_value(mut self, key: StateKey, value: impl Into<String>) -> Self {
        self.values.insert(key, value.into());
        self
    }

    /// This view with a set.
    pub fn with_members(mut self, key: StateKey, mut members: Vec<u64>) -> Self {
        members.sort_unstable();
        members.dedup();
        self.members.insert(key, members);
        self
    }
}

/// Storage of listener state.
#[async_trait]
pub trait ListenerState: Send + Sync {
    /// Loads what `reads` names.
    async fn read(&self, reads: &[StateRead]) -> Result<StateView, EngineError>;
    /// Sets a value.
    async fn remember(&self, key: &StateKey, value: &str) -> Result<(), EngineError>;
    /// Adds ids to a set.
    async fn add_members(&self, key: &StateKey, members: &[u64]) -> Result<(), EngineError>;
    /// Replaces a set (an empty list removes it).
    async fn replace_members(&self, key: &StateKey, members: &[u64]) -> Result<(), EngineError>;
    /// Claims `key` for `owner`, atomically across nodes: true when it was free (it is
    /// now the owner's) or already the owner's — the same decision taken again.
    async fn claim(&self, key: &StateKey, owner: &str) -> Result<bool, EngineError>;
}

enum Slot {
    Value(String),
    Members(HashSet<u64>),
}

/// Listener state in this process, forgotten after `ttl` without a write.
pub struct MemoryState {
    ttl: Duration,
    slots: Mutex<HashMap<StateKey, (Instant, Slot)>>,
    writes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MemoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryState")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl MemoryState {
    /// An empty store whose keys expire `ttl` after their last write.
    pub fn new(ttl: Duration) -> Self {
        MemoryState {
            ttl,
            slots: Mutex::new(HashMap::new()),
            writes: Default::default(),
        }
    }

    fn write(&self, key: &StateKey, change: impl FnOnce(Option<Slot>) -> Option<Slot>) {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("state lock");
        // Expired keys are swept now and then, not on every write.
        if self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            slots.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        }
        let current = slots
            .remove(key)
            .filter(|(at, _)| now.duration_since(*at) < self.ttl)
            .map(|(_, slot)| slot);
        if let Some(slot) = change(current) {
            slots.insert(key.clone(), (now, slot));
        }
    }
}

#[async_trait]
impl ListenerState for MemoryState {
    async fn read(&self, reads: &[StateRead]) -> Result<StateView, EngineError> {
        let now = Instant::now();
        let slots = self.slots.lock().expect("state lock");
        let mut view = StateView::default();
        for read in reads {
            let (StateRead::Value(key) | StateRead::Members(key)) = read;
            match (read, slots.get(key)) {
                (_, Some((at, _))) if now.duration_since(*at) >= self.ttl => {}
                (StateRead::Value(_), Some((_, Slot::Value(v)))) => {
                    view = view.with_value(key.clone(), v.clone());
                }
                (StateRead::Members(_), Some((_, Slot::Members(m)))) => {
                    view = view.with_members(key.clone(), m.iter().copied().collect());
                }
                _ => {}
            }
        }
        Ok(view)
    }

    async fn remember(&self, key: &StateKey, value: &str) -> Result<(), EngineError> {
        self.write(key, |_| Some(Slot::Value(value.to_string())));
        Ok(())
    }

    async fn add_members(&self, key: &StateKey, members: &[u64]) -> Result<(), EngineError> {
        self.write(key, |slot| {
            let mut set = match slot {
                Some(Slot::Members(m)) => m,
                _ => HashSet::new(),
            };
            set.extend(members);
            Some(Slot::Members(set))
        });
        Ok(())
    }

    async fn replace_members(&self, key: &StateKey, members: &[u64]) -> Result<(), EngineError> {
        self.write(key, |_| {
            (!members.is_empty()).then(|| Slot::Members(members.iter().copied().collect()))
        });
        Ok(())
    }

    async fn claim(&self, key: &StateKey, owner: &str) -> Result<bool, EngineError> {
        let mut won = false;
        self.write(key, |slot| match slot {
            Some(Slot::Value(v)) => {
                won = v == owner;
                Some(Slot::Value(v))
            }
            _ => {
                won = true;
                Some(Slot::Value(owner.to_string()))
            }
        });
        Ok(won)
    }
}

/// A claim: set when free, kept (and answered 1) when already the owner's.
const CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if v == ARGV[1] then return 1 end
return 0
"#;

/// Listener state in Redis, shared by every node.
pub struct RedisState {
    commands: Arc<RedisCommands>,
    ttl_seconds: u64,
    claim: redis::Script,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState").finish_non_exhaustive()
    }
}

impl RedisState {
    /// The store under the engine's prefix; keys expire `ttl` after their last write.
    pub fn new(commands: Arc<RedisCommands>, ttl: Duration) -> Self {
        RedisState {
            commands,
            ttl_seconds: ttl.as_secs().max(1),
            claim: redis::Script::new(CLAIM),
        }
    }

    fn key(&self, key: &StateKey) -> String {
        format!("{{{}:{}}}:{}", self.commands.prefix(), key.scope, key.field)
    }
}

#[async_trait]
impl ListenerState for RedisState {
    async fn read(&self, reads: &[StateRead]) -> Result<StateView, EngineError> {
        if reads.is_empty() {
            return Ok(StateView::default());
        }
        // Keys of different scopes live in different slots of a cluster.
        let cmds: Vec<redis::Cmd> = reads
            .iter()
            .map(|read| match read {
                StateRead::Value(key) => redis::Cmd::get(self.key(key)),
                StateRead::Members(key) => redis::Cmd::smembers(self.key(key)),
            })
            .collect();
        let replies = self.commands.each(cmds).await?;
        let mut view = StateView::default();
        for (read, reply) in reads.iter().zip(replies) {
            match read {
                StateRead::Value(key) => {
                    if let Ok(Some(v)) = redis::from_redis_value::<Option<String>>(reply) {
                        view = view.with_value(key.clone(), v);
                    }
                }
                StateRead::Members(key) => {
                    let members: Vec<u64> = redis::from_redis_value(reply).unwrap_or_default();
                    if !members.is_empty() {
                        view = view.with_members(key.clone(), members);
                    }
                }
            }
        }
        Ok(view)
    }

    async fn remember(&self, key: &StateKey, value: &str) -> Result<(), EngineError> {
        self.commands
            .command::<()>(
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(value)
                    .arg("EX")
                    .arg(self.ttl_seconds),
            )
            .await
    }

    async fn add_members(&self, key: &StateKey, members: &[u64]) -> Result<(), EngineError> {
        if members.is_empty() {
            return Ok(());
        }
        let key = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .sadd(&key, members)
            .ignore()
            .expire(&key, self.ttl_seconds as i64)
            .ignore();
        self.commands.pipe::<()>(&pipe).await
    }

    async fn replace_members(&self, key: &StateKey, members: &[u64]) -> Result<(), EngineError> {
        let key = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        if !members.is_empty() {
            pipe.sadd(&key, members)
                .ignore()
                .expire(&key, self.ttl_seconds as i64)
                .ignore();
        }
        self.commands.pipe::<()>(&pipe).await
    }

    async fn claim(&self, key: &StateKey, owner: &str) -> Result<bool, EngineError> {
        let mut invocation = self.claim.key(self.key(key));
        invocation.arg(owner).arg(self.ttl_seconds);
        let won: i64 = self.commands.call(invocation).await?;
        Ok(won == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_sets_and_claims_in_memory() {
        let state = MemoryState::new(Duration::from_secs(60));
        let resolved = StateKey::conversation(1, 42, "resolved_at");
        let people = StateKey::conversation(1, 42, "participants");
        let marker = StateKey::contact_inbox(7, "campaign");
        state.remember(&resolved, "1000").await.unwrap();
        state.add_members(&people, &[5, 3]).await.unwrap();
        state.add_members(&people, &[3, 9]).await.unwrap();
        let view = state
            .read(&[
                StateRead::Value(resolved.clone()),
                StateRead::Members(people.clone()),
                StateRead::Value(marker.clone()),
            ])
            .await
            .unwrap();
        assert_eq!(view.number(&resolved), Some(1000));
        assert_eq!(view.members(&people), [3, 5, 9]);
        assert_eq!(view.value(&marker), None);
        assert!(state.claim(&marker, "cmd-a").await.unwrap());
        assert!(
            state.claim(&marker, "cmd-a").await.unwrap(),
            "the same decision again"
        );
        assert!(!state.claim(&marker, "cmd-b").await.unwrap());
        state.replace_members(&people, &[]).await.unwrap();
        let view = state.read(&[StateRead::Members(people.clone())]).await.unwrap();
        assert!(view.members(&people).is_empty());
    }

    #[tokio::test]
    async fn memory_keys_expire() {
        let state = MemoryState::new(Duration::ZERO);
        let key = StateKey::conversation(1, 1, "resolved_at");
        state.remember(&key, "1").await.unwrap();
        let view = state.read(&[StateRead::Value(key.clone())]).await.unwrap();
        assert_eq!(view.value(&key), None);
    }
}
