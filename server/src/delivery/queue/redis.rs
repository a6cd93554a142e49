//! The queue of several nodes, in Redis. Keys (one hash slot, `{<prefix>:deliveries}` =
//! `{T}`; `<dest>` is a digest of the destination's URL):
//!
//! | key | type | what |
//! |---|---|---|
//! | `{T}:q:<dest>` | sorted set | the destination's line: delivery ids scored by when due (unix ms), a claimed one by when its claim lapses |
//! | `{T}:dests` | sorted set | destinations with a line, scored by a hint: nothing of theirs is due before it (a parked one: when its breaker lets a probe through) |
//! | `{T}:d` | hash | id → the delivery (protobuf `Delivery`) |
//! | `{T}:id:<id>` | string | the id was queued within the deduplication window |
//! | `{T}:dead` | hash | id → the dead letter |
//! | `{T}:dead:order` | sorted set | dead letter ids by when they were given up |
//!
//! A claim moves the ids' scores to the claim's end in the same script that reads them:
//! two nodes never claim one delivery at once. Every script names its keys.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use redis::Value;
use rtgate_protocol::pb;

use super::{ClaimLimits, Claimed, DeliveryQueue, Depth, MAX_DEAD, Queued, destination_key, revived};
use crate::engine::redis::value_bytes;
use crate::engine::{EngineError, RedisCommands};

const ENQUEUE: &str = r#"
-- KEYS[1] dests, KEYS[2] records, KEYS[3] dead, then per item i: KEYS[2 + 2i] its id
-- marker, KEYS[3 + 2i] its line. ARGV[1] window s; per item: ARGV[4i - 2] id,
-- ARGV[4i - 1] record, ARGV[4i] score, ARGV[4i + 1] destination.
-- For each: 1 queued; 0 seen within the window, queued or dead already.
local out = {}
local n = (#KEYS - 3) / 2
for i = 1, n do
  local a = 4 * i - 2
  local id = ARGV[a]
  if redis.call('HEXISTS', KEYS[2], id) == 0 and redis.call('HEXISTS', KEYS[3], id) == 0
      and redis.call('SET', KEYS[2 + 2 * i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('HSET', KEYS[2], id, ARGV[a + 1])
    redis.call('ZADD', KEYS[3 + 2 * i], ARGV[a + 2], id)
    redis.call('ZADD', KEYS[1], 'LT', ARGV[a + 2], ARGV[a + 3])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

const CLAIM: &str = r#"
-- KEYS[1] dests, KEYS[2] records, KEYS[2 + j] line j; ARGV[1] now, ARGV[2] claim end,
-- ARGV[3] most per line, ARGV[4] most in all, ARGV[4 + j] destination j.
-- Returns id, record, id, record…; an id without a record is dropped. Each line's hint
-- becomes its first score (a line left empty is forgotten); a line parked since the
-- caller looked (its hint now later than now) is left alone.
local out = {}
local left = tonumber(ARGV[4])
for j = 3, #KEYS do
  if left <= 0 then break end
  local dest = ARGV[2 + j]
  local hint = redis.call('ZSCORE', KEYS[1], dest)
  if not hint or tonumber(hint) <= tonumber(ARGV[1]) then
    local ids = redis.call('ZRANGEBYSCORE', KEYS[j], '-inf', ARGV[1], 'LIMIT', 0, math.min(tonumber(ARGV[3]), left))
    for _, id in ipairs(ids) do
      local record = redis.call('HGET', KEYS[2], id)
      if record then
        redis.call('ZADD', KEYS[j], ARGV[2], id)
        out[#out + 1] = id
        out[#out + 1] = record
        left = left - 1
      else
        redis.call('ZREM', KEYS[j], id)
      end
    end
    local first = redis.call('ZRANGE', KEYS[j], 0, 0, 'WITHSCORES')
    if #first == 0 then
      redis.call('ZREM', KEYS[1], dest)
    else
      redis.call('ZADD', KEYS[1], first[2], dest)
    end
  end
end
return out
"#;

const EXTEND: &str = r#"
-- KEYS[1] line; ARGV[1] id, ARGV[2] the claim's end, ARGV[3] its new end. 1: extended.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"#;

const DONE: &str = r#"
-- KEYS[1] line, KEYS[2] records; ARGV[1] id, ARGV[2] the claim's end. 1: removed; 0: the
-- claim is not the delivery's any more.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

const RETRY: &str = r#"
-- KEYS[1] line, KEYS[2] records, KEYS[3] dests; ARGV[1] id, ARGV[2] the claim's end,
-- ARGV[3] record, ARGV[4] due, ARGV[5] destination. 1: back in line; 0: not our claim.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[3], 'LT', ARGV[4], ARGV[5])
return 1
"#;

const DEAD: &str = r#"
-- KEYS[1] line, KEYS[2] records, KEYS[3] dead, KEYS[4] dead order; ARGV[1] id,
-- ARGV[2] record, ARGV[3] failed at, ARGV[4] most kept, ARGV[5] the claim's end.
-- 1: dead-lettered; 0: not our claim.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[5]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[4], 0, over - 1)
  redis.call('HDEL', KEYS[3], unpack(old))
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, over - 1)
end
return 1
"#;

const REPLAY: &str = r#"
-- KEYS[1] dead, KEYS[2] dead order, KEYS[3] records, KEYS[4] line, KEYS[5] dests;
-- ARGV[1] id, ARGV[2] revived record, ARGV[3] now, ARGV[4] destination.
-- 1: back in the queue; 0: no such dead letter.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[5], 'LT', ARGV[3], ARGV[4])
return 1
"#;

/// The Redis delivery queue.
pub struct RedisDeliveryQueue {
    commands: Arc<RedisCommands>,
    base: String,
    lease_ms: i64,
    window_s: u64,
    enqueue: redis::Script,
    claim: redis::Script,
    extend: redis::Script,
    done: redis::Script,
    retry: redis::Script,
    dead: redis::Script,
    replay: redis::Script,
}

impl std::fmt::Debug for RedisDeliveryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDeliveryQueue")
            .field("base", &self.base)
            .finish()
    }
}

fn decode(id: &str, bytes: &[u8]) -> Option<pb::Delivery> {
    match pb::Delivery::decode(bytes) {
        Ok(d) => Some(d),
        Err(err) => {
            tracing::warn!(id, %err, "a stored delivery does not decode; skipped");
            None
        }
    }
}

impl RedisDeliveryQueue {
    /// The queue under the engine's prefix; claims last `lease`, ids are remembered for
    /// `window`.
    pub fn new(commands: Arc<RedisCommands>, lease: Duration, window: Duration) -> Self {
        RedisDeliveryQueue {
            base: format!("{{{}:deliveries}}", commands.prefix()),
            commands,
            lease_ms: lease.as_millis() as i64,
            window_s: window.as_secs().max(1),
            enqueue: redis::Script::new(ENQUEUE),
            claim: redis::Script::new(CLAIM),
            extend: redis::Script::new(EXTEND),
            done: redis::Script::new(DONE),
            retry: redis::Script::new(RETRY),
            dead: redis::Script::new(DEAD),
            replay: redis::Script::new(REPLAY),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.base)
    }

    fn line(&self, dest: &str) -> String {
        format!("{}:q:{dest}", self.base)
    }
}

#[async_trait]
impl DeliveryQueue for RedisDeliveryQueue {
    fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    async fn enqueue(&self, items: Vec<Queued>, now_ms: i64) -> Result<(Vec<Claimed>, usize), EngineError> {
        if items.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let lease_until_ms = now_ms + self.lease_ms;
        let mut items = items;
        let mut invocation = self.enqueue.prepare_invoke();
        invocation
            .key(self.key("dests"))
            .key(self.key("d"))
            .key(self.key("dead"))
            .arg(self.window_s);
        for item in &mut items {
            let d = &mut item.delivery;
            d.queued_at_ms = now_ms;
            let dest = destination_key(&d.url);
            invocation
                .key(self.key(&format!("id:{}", d.id)))
                .key(self.line(&dest))
                .arg(&d.id)
                .arg(d.encode_to_vec())
                .arg(item.not_before_ms.unwrap_or(lease_until_ms))
                .arg(dest);
        }
        let queued: Vec<i64> = self.commands.call(invocation).await?;
        let new = queued.iter().filter(|q| **q == 1).count();
        let claimed = items
            .into_iter()
            .zip(queued)
            .filter(|(item, q)| *q == 1 && item.not_before_ms.is_none())
            .map(|(item, _)| Claimed {
                delivery: item.delivery,
                lease_until_ms,
            })
            .collect();
        Ok((claimed, new))
    }

    async fn claim(&self, limits: ClaimLimits<'_>, now_ms: i64) -> Result<Vec<Claimed>, EngineError> {
        // The destinations with something due, then their lines in one script.
        let due: Vec<String> = self
            .commands
            .command(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key("dests"))
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limits.total.max(1) + limits.skip.len()),
            )
            .await?;
        let dests: Vec<String> = due.into_iter().filter(|d| !limits.skip.contains(d)).collect();
        if dests.is_empty() {
            return Ok(Vec::new());
        }
        let lease_until_ms = now_ms + self.lease_ms;
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(self.key("dests"))
            .key(self.key("d"))
            .arg(now_ms)
            .arg(lease_until_ms)
            .arg(limits.per_destination.max(1))
            .arg(limits.total.max(1));
        for dest in &dests {
            invocation.key(self.line(dest)).arg(dest);
        }
        let reply: Vec<Value> = self.commands.call(invocation).await?;
        Ok(reply
            .chunks(2)
            .filter_map(|pair| {
                let id = String::from_utf8_lossy(value_bytes(pair.first()?)?).into_owned();
                let delivery = decode(&id, value_bytes(pair.get(1)?)?)?;
                Some(Claimed {
                    delivery,
                    lease_until_ms,
                })
            })
            .collect())
    }

    async fn extend(&self, claimed: &mut Claimed, now_ms: i64) -> Result<bool, EngineError> {
        let until = now_ms + self.lease_ms;
        let mut invocation = self.extend.prepare_invoke();
        invocation
            .key(self.line(&destination_key(&claimed.delivery.url)))
            .arg(&claimed.delivery.id)
            .arg(claimed.lease_until_ms)
            .arg(until);
        let extended: i64 = self.commands.call(invocation).await?;
        if extended == 1 {
            claimed.lease_until_ms = until;
        }
        Ok(extended == 1)
    }

    async fn done(&self, claimed: &Claimed) -> Result<bool, EngineError> {
        // The line's hint stays; the next claim that looks finds it empty and forgets it.
        let d = &claimed.delivery;
        let mut invocation = self.done.prepare_invoke();
        invocation
            .key(self.line(&destination_key(&d.url)))
            .key(self.key("d"))
            .arg(&d.id)
            .arg(claimed.lease_until_ms);
        Ok(self.commands.call::<i64>(invocation).await? == 1)
    }

    async fn retry(&self, claimed: &Claimed, due_ms: i64) -> Result<bool, EngineError> {
        let d = &claimed.delivery;
        let dest = destination_key(&d.url);
        let mut invocation = self.retry.prepare_invoke();
        invocation
            .key(self.line(&dest))
            .key(self.key("d"))
            .key(self.key("dests"))
            .arg(&d.id)
            .arg(claimed.lease_until_ms)
            .arg(d.encode_to_vec())
            .arg(due_ms)
            .arg(dest);
        Ok(self.commands.call::<i64>(invocation).await? == 1)
    }

    async fn park(&self, url: &str, until_ms: i64) -> Result<(), EngineError> {
        let _: Value = self
            .commands
            .command(
                redis::cmd("ZADD")
                    .arg(self.key("dests"))
                    .arg("XX")
                    .arg(until_ms)
                    .arg(destination_key(url)),
            )
            .await?;
        Ok(())
    }

    async fn dead(&self, claimed: &Claimed) -> Result<bool, EngineError> {
        let delivery = &claimed.delivery;
        let mut invocation = self.dead.prepare_invoke();
        invocation
            .key(self.line(&destination_key(&delivery.url)))
            .key(self.key("d"))
            .key(self.key("dead"))
            .key(self.key("dead:order"))
            .arg(&delivery.id)
            .arg(delivery.encode_to_vec())
            .arg(delivery.failed_at_ms)
            .arg(MAX_DEAD)
            .arg(claimed.lease_until_ms);
        Ok(self.commands.call::<i64>(invocation).await? == 1)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<pb::Delivery>, EngineError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = self
            .commands
            .command(
                redis::cmd("ZREVRANGE")
                    .arg(self.key("dead:order"))
                    .arg(0)
                    .arg(limit - 1),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<Value> = self
            .commands
            .command(redis::cmd("HMGET").arg(self.key("dead")).arg(&ids))
            .await?;
        Ok(ids
            .iter()
            .zip(records)
            .filter_map(|(id, v)| decode(id, value_bytes(&v)?))
            .collect())
    }

    async fn replay(&self, id: &str, now_ms: i64) -> Result<bool, EngineError> {
        let record: Option<Vec<u8>> = self
            .commands
            .command(redis::cmd("HGET").arg(self.key("dead")).arg(id))
            .await?;
        let Some(delivery) = record.and_then(|r| decode(id, &r)) else {
            return Ok(false);
        };
        let dest = destination_key(&delivery.url);
        let mut invocation = self.replay.prepare_invoke();
        invocation
            .key(self.key("dead"))
            .key(self.key("dead:order"))
            .key(self.key("d"))
            .key(self.line(&dest))
            .key(self.key("dests"))
            .arg(id)
            .arg(revived(delivery, now_ms).encode_to_vec())
            .arg(now_ms)
            .arg(dest);
        let replayed: i64 = self.commands.call(invocation).await?;
        Ok(replayed == 1)
    }

    async fn discard(&self, id: &str) -> Result<bool, EngineError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.key("dead"), id)
            .zrem(self.key("dead:order"), id)
            .ignore();
        let (deleted,): (u64,) = self.commands.pipe(&pipe).await?;
        Ok(deleted > 0)
    }

    async fn depth(&self) -> Result<Depth, EngineError> {
        let mut pipe = redis::pipe();
        pipe.hlen(self.key("d")).hlen(self.key("dead"));
        let (queued, dead): (u64, u64) = self.commands.pipe(&pipe).await?;
        Ok(Depth { queued, dead })
    }
}
