//! Presence in Redis, shared by every node. Per account (hash tag `{a:ID}`):
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:{a:ID}:h:u:7` | ZSET | nodes holding user 7 → last refresh (ms); `c:3` for contacts |
//! | `P:{a:ID}:on` | SET | members online (`u:7`, `c:3`) |
//! | `P:{a:ID}:av` | HASH | user id → availability (0 offline, 1 online, 2 busy) |
//! | `P:{a:ID}:seen` | HASH | member → last seen (unix ms) |
//!
//! with `P` = `<prefix>:p`. A node that dies stops refreshing its entries; they expire and
//! the next reap (by any node with connections in that account) announces the change.
//! Optionally the keys Chatwoot reads are maintained too: `<ns>:ONLINE_PRESENCE::<acct>::USERS`
//! and `::CONTACTS` (ZSET, member id, score unix seconds) and `<ns>:ONLINE_STATUS::<acct>`
//! (HASH, user id → online/busy/offline).
//!
//! The store shares the Redis engine's command connection ([`RedisCommands`]).

use std::sync::Arc;

use async_trait::async_trait;
use rtgate_protocol::pb;

use super::{PresenceStore, effective, presence_of};
use crate::auth::PrincipalId;
use crate::engine::{EngineError, RedisCommands};

const ONLINE: &str = r#"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('SADD', KEYS[2], ARGV[4])
"#;

const OFFLINE: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) == 0 then
  return redis.call('SREM', KEYS[2], ARGV[4])
end
return 0
"#;

const REAP: &str = r#"
local gone = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. m
  redis.call('ZREMRANGEBYSCORE', k, '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
  if redis.call('ZCARD', k) == 0 then
    redis.call('SREM', KEYS[1], m)
    gone[#gone + 1] = m
  end
end
return gone
"#;

const SET_AVAILABILITY: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old == ARGV[2] then return 0 end
return 1
"#;

/// Presence kept in Redis.
pub struct RedisPresence {
    commands: Arc<RedisCommands>,
    ttl_ms: u64,
    chatwoot: Option<String>,
    online: redis::Script,
    offline: redis::Script,
    reap: redis::Script,
    set_availability: redis::Script,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("ttl_ms", &self.ttl_ms)
            .finish()
    }
}

fn availability_name(a: i32) -> &'static str {
    match pb::Availability::try_from(a).unwrap_or(pb::Availability::Offline) {
        pb::Availability::Online => "online",
        pb::Availability::Busy => "busy",
        pb::Availability::Offline => "offline",
    }
}

impl RedisPresence {
    /// Presence kept in the Redis of `commands` (the engine's, see
    /// [`RedisEngine::commands`](crate::engine::RedisEngine::commands)); entries expire
    /// `ttl_ms` after their last refresh. With `chatwoot` (a key namespace such as
    /// `alfred`), Chatwoot's own presence keys are maintained too.
    pub fn new(commands: Arc<RedisCommands>, ttl_ms: u64, chatwoot: Option<String>) -> Self {
        RedisPresence {
            commands,
            ttl_ms,
            chatwoot,
            online: redis::Script::new(ONLINE),
            offline: redis::Script::new(OFFLINE),
            reap: redis::Script::new(REAP),
            set_availability: redis::Script::new(SET_AVAILABILITY),
        }
    }

    fn base(&self, account: u64) -> String {
        format!("{}:p:{{a:{account}}}", self.commands.prefix())
    }

    fn holders(&self, who: &PrincipalId) -> String {
        format!("{}:h:{}", self.base(who.account), who.member())
    }

    /// ZSET account → when a node last refreshed entries of it (ms): accounts whose
    /// refresh stopped (their nodes died) are found here and reaped by any node.
    fn accounts(&self) -> String {
        format!("{}:p:accounts", self.commands.prefix())
    }

    fn online_set(&self, account: u64) -> String {
        format!("{}:on", self.base(account))
    }

    fn chatwoot_presence(&self, who: &PrincipalId) -> Option<String> {
        let ns = self.chatwoot.as_ref()?;
        let kind = if who.contact { "CONTACTS" } else { "USERS" };
        Some(format!("{ns}:ONLINE_PRESENCE::{}::{kind}", who.account))
    }

    /// Runs the online or offline script for `who` held by `node`.
    async fn holder_script(
        &self,
        script: &redis::Script,
        who: PrincipalId,
        node: &str,
        now_ms: u64,
    ) -> Result<i64, EngineError> {
        let mut inv = script.prepare_invoke();
        inv.key(self.holders(&who))
            .key(self.online_set(who.account))
            .arg(node)
            .arg(now_ms)
            .arg(self.ttl_ms)
            .arg(who.member());
        self.commands.call(inv).await
    }

    async fn pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, EngineError> {
        self.commands.pipe(pipe).await
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn mark_online(&self, who: PrincipalId, node: &str, now_ms: u64) -> Result<bool, EngineError> {
        let added = self.holder_script(&self.online, who, node, now_ms).await?;
        let mut cmds = vec![redis::Cmd::zadd(self.accounts(), who.account, now_ms)];
        if let Some(key) = self.chatwoot_presence(&who) {
            cmds.push(redis::Cmd::zadd(key, who.id.to_string(), now_ms / 1000));
        }
        self.commands.each(cmds).await?;
        Ok(added == 1)
    }

    async fn mark_offline(&self, who: PrincipalId, node: &str, now_ms: u64) -> Result<bool, EngineError> {
        let removed = self.holder_script(&self.offline, who, node, now_ms).await?;
        Ok(removed == 1)
    }

    async fn refresh(&self, node: &str, held: &[PrincipalId], now_ms: u64) -> Result<(), EngineError> {
        // Keys of different accounts live in different slots of a cluster: independent
        // commands, not one pipeline.
        for chunk in held.chunks(500) {
            let mut cmds = Vec::with_capacity(chunk.len() * 4 + 1);
            let mut accounts: Vec<u64> = chunk.iter().map(|w| w.account).collect();
            accounts.sort_unstable();
            accounts.dedup();
            let mut refreshed = redis::cmd("ZADD");
            refreshed.arg(self.accounts());
            for account in accounts {
                refreshed.arg(now_ms).arg(account);
            }
            cmds.push(refreshed);
            for who in chunk {
                let holders = self.holders(who);
                cmds.push(redis::Cmd::zadd(&holders, node, now_ms));
                cmds.push(redis::Cmd::pexpire(&holders, self.ttl_ms as i64));
                cmds.push(redis::Cmd::sadd(self.online_set(who.account), who.member()));
                if let Some(key) = self.chatwoot_presence(who) {
                    cmds.push(redis::Cmd::zadd(key, who.id.to_string(), now_ms / 1000));
                }
            }
            self.commands.each(cmds).await?;
        }
        Ok(())
    }

    async fn reap(&self, accounts: &[u64], now_ms: u64) -> Result<Vec<PrincipalId>, EngineError> {
        // Accounts nobody refreshed within the TTL: their nodes are gone.
        let mut p = redis::pipe();
        p.cmd("ZRANGEBYSCORE")
            .arg(self.accounts())
            .arg("-inf")
            .arg(now_ms.saturating_sub(self.ttl_ms))
            .arg("LIMIT")
            .arg(0)
            .arg(1000);
        let (stale,): (Vec<u64>,) = self.pipe(&p).await?;
        let mut all: Vec<u64> = accounts.iter().chain(stale.iter()).copied().collect();
        all.sort_unstable();
        all.dedup();
        let mut gone = Vec::new();
        for account in &all {
            let mut inv = self.reap.prepare_invoke();
            inv.key(self.online_set(*account))
                .arg(format!("{}:h:", self.base(*account)))
                .arg(now_ms)
                .arg(self.ttl_ms);
            let members: Vec<String> = self.commands.call(inv).await?;
            gone.extend(
                members
                    .iter()
                    .filter_map(|m| PrincipalId::from_member(*account, m)),
            );
        }
        if !stale.is_empty() {
            // Forget the stale accounts left with nobody online (a live node re-adds an
            // account when it refreshes it).
            let cmds: Vec<redis::Cmd> = stale
                .iter()
                .map(|account| redis::Cmd::scard(self.online_set(*account)))
                .collect();
            let sizes = self.commands.each(cmds).await?;
            let empty: Vec<u64> = stale
                .iter()
                .zip(sizes)
                .filter(|(_, size)| redis::from_redis_value::<u64>(size.clone()).is_ok_and(|n| n == 0))
                .map(|(account, _)| *account)
                .collect();
            if !empty.is_empty() {
                self.commands
                    .command::<()>(redis::cmd("ZREM").arg(self.accounts()).arg(&empty))
                    .await?;
            }
        }
        Ok(gone)
    }

    async fn touch_seen(&self, who: PrincipalId, at_ms: u64) -> Result<(), EngineError> {
        let mut p = redis::pipe();
        p.hset(format!("{}:seen", self.base(who.account)), who.member(), at_ms)
            .ignore();
        self.pipe::<()>(&p).await
    }

    async fn set_availability(
        &self,
        account: u64,
        user: u64,
        availability: pb::Availability,
    ) -> Result<bool, EngineError> {
        let mut inv = self.set_availability.prepare_invoke();
        inv.key(format!("{}:av", self.base(account)))
            .arg(user)
            .arg(availability as i32);
        let changed: i64 = self.commands.call(inv).await?;
        if let Some(ns) = &self.chatwoot {
            self.commands
                .command::<()>(&redis::Cmd::hset(
                    format!("{ns}:ONLINE_STATUS::{account}"),
                    user.to_string(),
                    availability_name(availability as i32),
                ))
                .await?;
        }
        Ok(changed == 1)
    }

    async fn entries(
        &self,
        account: u64,
        who: &[PrincipalId],
        _now_ms: u64,
    ) -> Result<Vec<(PrincipalId, pb::PresenceEntry)>, EngineError> {
        if who.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.base(account);
        let mut p = redis::pipe();
        for w in who {
            p.sismember(self.online_set(account), w.member());
        }
        p.cmd("HMGET").arg(format!("{base}:av"));
        for w in who {
            p.arg(w.id);
        }
        p.cmd("HMGET").arg(format!("{base}:seen"));
        for w in who {
            p.arg(w.member());
        }
        let mut values: Vec<redis::Value> = self.pipe(&p).await?;
        let seen: Vec<Option<u64>> =
            redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil)).unwrap_or_default();
        let avail: Vec<Option<i32>> =
            redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil)).unwrap_or_default();
        Ok(who
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let online = values
                    .get(i)
                    .and_then(|v| redis::from_redis_value::<bool>(v.clone()).ok())
                    .unwrap_or(false);
                let stored = if w.contact {
                    None
                } else {
                    avail.get(i).copied().flatten()
                };
                (
                    *w,
                    pb::PresenceEntry {
                        id: w.id,
                        availability: effective(stored, online, w.contact),
                        online,
                        last_seen_at_ms: seen.get(i).copied().flatten().unwrap_or(0) as i64,
                    },
                )
            })
            .collect())
    }

    async fn snapshot(&self, account: u64, now_ms: u64) -> Result<pb::Presence, EngineError> {
        let base = self.base(account);
        let mut p = redis::pipe();
        p.smembers(self.online_set(account)).hkeys(format!("{base}:seen"));
        let (online, seen): (Vec<String>, Vec<String>) = self.pipe(&p).await?;
        let mut everyone: Vec<PrincipalId> = online
            .iter()
            .chain(seen.iter())
            .filter_map(|m| PrincipalId::from_member(account, m))
            .collect();
        everyone.sort_unstable();
        everyone.dedup();
        Ok(presence_of(self.entries(account, &everyone, now_ms).await?))
    }
}
