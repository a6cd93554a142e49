//! The queue of several nodes: a Redis Stream with one consumer group.
//!
//! Keys (all in one hash slot, `{<prefix>:events}` by default):
//!
//! | key | type | what |
//! |---|---|---|
//! | `{S}` | stream | the events: field `pb` (protobuf) or `json` (its JSON mapping); the backend may `XADD` here |
//! | `{S}:id:<event id>` | string | the id of the entry that carries this event id, for the deduplication window |
//! | `{S}:lease` | string | the node reading the stream now, with a short expiry it keeps renewing |
//! | `{S}:dead` | stream | dead letters: `entry`, `event_id`, `reason`, and the original `pb` or `json` |
//!
//! One node reads at a time (the lease holder), so that the events of a conversation are
//! handled in their order; the others stand by. A node that takes the lease over claims
//! every entry the previous reader left unacknowledged, so an event accepted before a
//! crash is handled after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use redis::Value;
use rtgate_protocol::pb;
use tokio::sync::Mutex;

use super::{Appended, DeadLetter, Entry, EventQueue, Poison};
use crate::engine::redis::{value_bytes, value_str};
use crate::engine::{EngineError, RedisCommands};
use crate::events::ingest::{self, EntryFormat};

/// Settings of the Redis queue.
#[derive(Debug, Clone)]
pub struct RedisQueueConfig {
    /// The stream's key (a hash tag keeps its companions in its slot).
    pub stream: String,
    /// This node's name in the consumer group.
    pub consumer: String,
    /// How long an event id is remembered.
    pub dedup_window: Duration,
    /// About how many entries the stream keeps (`MAXLEN ~`).
    pub max_len: usize,
    /// How long the reader's lease lasts without renewal.
    pub lease: Duration,
    /// Largest accepted event.
    pub max_event_size: usize,
}

/// The consumer group's name.
pub const GROUP: &str = "rtgate";

const APPEND: &str = r#"
-- KEYS[1] stream, KEYS[1 + i] the id key of event i; ARGV[1] window s, ARGV[2] maxlen,
-- ARGV[2 + i] event i. For each: 1 appended, 0 a duplicate. An id is remembered only once
-- its entry is in: a failed XADD leaves nothing behind for it.
local out = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[i - 1] = 0
  else
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'pb', ARGV[i + 1])
    redis.call('SET', KEYS[i], id, 'EX', ARGV[1])
    out[i - 1] = 1
  end
end
return out
"#;

const FIRST_SEEN: &str = r#"
-- KEYS: the events' id keys; ARGV[1] window s, ARGV[1 + i] the entry id of KEYS[i].
-- For each: 1, handle it (first seen, or seen in this very entry); 0, a duplicate.
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
    out[i] = 1
  elseif v == ARGV[i + 1] then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// Takes or renews a lease (also the Rails relay's).
pub(crate) const RENEW: &str = r#"
-- KEYS[1] lease; ARGV[1] node, ARGV[2] ms. 1: held (taken now: 2), 0: someone else's.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Gives a lease up, if it is this node's (also the Rails relay's).
pub(crate) const RELEASE: &str = r#"
-- KEYS[1] lease; ARGV[1] node: deleted only when it is this node's.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// A Redis Stream queue.
pub struct RedisQueue {
    commands: Arc<RedisCommands>,
    config: RedisQueueConfig,
    append: redis::Script,
    first_seen: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    reader: Mutex<Option<crate::engine::RedisConnection>>,
    group_ready: AtomicBool,
    /// Entries handed to this consumer may be pending unseen (at start, after a failed
    /// read, acknowledgement or dead letter): read this consumer's pending list next.
    reclaim: AtomicBool,
    /// Where the takeover's claim of other consumers' entries goes on (paged).
    claim_cursor: std::sync::Mutex<Option<String>>,
    /// Whether this node held the lease at its last renewal, and when that was.
    lease_state: std::sync::Mutex<(bool, Option<std::time::Instant>)>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("stream", &self.config.stream)
            .finish()
    }
}

/// A stream entry's field/value pairs.
type Fields<'a> = Vec<(String, &'a [u8])>;

/// One stream entry: its id and its field/value pairs.
fn parse_entry(v: &Value) -> Option<(String, Fields<'_>)> {
    let Value::Array(parts) = v else { return None };
    let id = value_str(parts.first()?)?;
    let fields = match parts.get(1)? {
        Value::Array(kv) => kv
            .chunks(2)
            .filter_map(|c| Some((value_str(c.first()?)?, value_bytes(c.get(1)?)?)))
            .collect(),
        // An entry deleted while pending reads as nil.
        _ => Vec::new(),
    };
    Some((id, fields))
}

impl RedisQueue {
    /// A queue on the engine's Redis.
    pub fn new(commands: Arc<RedisCommands>, config: RedisQueueConfig) -> Self {
        RedisQueue {
            commands,
            config,
            append: redis::Script::new(APPEND),
            first_seen: redis::Script::new(FIRST_SEEN),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            reader: Mutex::new(None),
            group_ready: AtomicBool::new(false),
            reclaim: AtomicBool::new(true),
            claim_cursor: std::sync::Mutex::new(None),
            lease_state: std::sync::Mutex::new((false, None)),
        }
    }

    fn id_key(&self, event_id: &str) -> String {
        format!("{}:id:{event_id}", self.config.stream)
    }

    fn window_secs(&self) -> u64 {
        self.config.dedup_window.as_secs().max(1)
    }

    async fn ensure_group(&self) -> Result<(), EngineError> {
        if self.group_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        // From the start of the stream: events the backend wrote before any node ran count.
        let created: Result<Value, EngineError> = self
            .commands
            .command(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&self.config.stream)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        match created {
            Ok(_) => {}
            Err(EngineError::Unavailable(e)) if e.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether this node holds the lease now (taking it when free). When it has just
    /// taken it, the entries the previous reader left unacknowledged are claimed.
    async fn lease(&self) -> Result<(bool, bool), EngineError> {
        let held: i64 = {
            let mut inv = self.renew.prepare_invoke();
            inv.key(format!("{}:lease", self.config.stream))
                .arg(&self.config.consumer)
                .arg(self.config.lease.as_millis() as u64);
            self.commands.call(inv)
        }
        .await?;
        *self.lease_state.lock().expect("lease lock") = (held > 0, Some(std::time::Instant::now()));
        if held == 2 {
            *self.claim_cursor.lock().expect("claim lock") = Some("0-0".into());
        }
        Ok((held > 0, held == 2))
    }

    /// Renews the lease when a third of it has passed since the last renewal (called
    /// between entries, so that a long batch does not outlive it).
    async fn keep_lease(&self) {
        let due = {
            let (held, at) = *self.lease_state.lock().expect("lease lock");
            held && at.is_none_or(|t| t.elapsed() >= self.config.lease / 3)
        };
        if due && self.lease().await.is_err() {
            // Cannot tell: stop handling until the next renewal says.
            self.lease_state.lock().expect("lease lock").0 = false;
        }
    }

    /// The next page of the takeover's claim: entries pending in the group, whoever they
    /// were handed to, now this node's. `None` once the claim is complete.
    async fn claim_page(&self, max: usize) -> Result<Option<Vec<Entry>>, EngineError> {
        let Some(cursor) = self.claim_cursor.lock().expect("claim lock").clone() else {
            return Ok(None);
        };
        let reply: Value = self
            .commands
            .command(
                redis::cmd("XAUTOCLAIM")
                    .arg(&self.config.stream)
                    .arg(GROUP)
                    .arg(&self.config.consumer)
                    .arg(0)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(max.max(1)),
            )
            .await?;
        let Value::Array(parts) = reply else {
            *self.claim_cursor.lock().expect("claim lock") = None;
            return Ok(None);
        };
        let next = parts.first().and_then(value_str).unwrap_or_else(|| "0-0".into());
        // Redis 7 also names the pending entries the stream no longer holds (trimmed).
        if let Some(Value::Array(gone)) = parts.get(2)
            && !gone.is_empty()
        {
            metrics::counter!("rtgate_events_trimmed_unhandled_total").increment(gone.len() as u64);
            tracing::error!(
                entries = gone.len(),
                "pending events were trimmed from the stream before being handled"
            );
        }
        let out = match parts.get(1) {
            Some(Value::Array(entries)) => self.entries(entries, 1).await?,
            _ => Vec::new(),
        };
        *self.claim_cursor.lock().expect("claim lock") = (next != "0-0").then_some(next);
        Ok(Some(out))
    }

    /// One XREADGROUP: `>` for new entries (blocking up to `block_ms`), `0` for this
    /// consumer's own pending ones.
    async fn read_group(
        &self,
        max: usize,
        from: &str,
        block_ms: Option<u64>,
    ) -> Result<Vec<Entry>, EngineError> {
        let mut reader = self.reader.lock().await;
        if reader.is_none() {
            *reader = Some(self.commands.blocking_connection().await?);
        }
        let conn = reader.as_mut().expect("set");
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(max);
        if let Some(ms) = block_ms {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(&self.config.stream).arg(from);
        let reply: Result<Value, _> = tokio::time::timeout(
            Duration::from_millis(block_ms.unwrap_or(0)) + Duration::from_secs(2),
            cmd.query_async(conn),
        )
        .await
        .map_err(|_| EngineError::Unavailable("stream read timed out".into()))
        .and_then(|r| r.map_err(|e| EngineError::Unavailable(e.to_string())));
        let reply = match reply {
            Ok(v) => v,
            Err(e) => {
                *reader = None;
                if e.to_string().contains("NOGROUP") {
                    // The stream or its group is gone (a flushed or restarted Redis).
                    self.group_ready.store(false, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        drop(reader);
        let attempts = u32::from(from != ">");
        let mut out = Vec::new();
        // [[stream, [entry, …]]] or nil on timeout.
        if let Value::Array(streams) = reply {
            for s in streams {
                let Value::Array(parts) = s else { continue };
                if let Some(Value::Array(entries)) = parts.get(1) {
                    out.extend(self.entries(entries, attempts).await?);
                }
            }
        }
        Ok(out)
    }

    async fn read_inner(&self, max: usize, wait: Duration) -> Result<Vec<Entry>, EngineError> {
        self.ensure_group().await?;
        let (held, taken) = self.lease().await?;
        if !held {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        if taken {
            tracing::info!("took the event stream over: claiming what was left pending");
        }
        if let Some(claimed) = self.claim_page(max).await?
            && !claimed.is_empty()
        {
            return Ok(claimed);
        }
        if self.reclaim.swap(false, Ordering::Relaxed) {
            let own = self.read_group(max, "0", None).await?;
            if own.len() >= max {
                self.reclaim.store(true, Ordering::Relaxed);
            }
            if !own.is_empty() {
                return Ok(own);
            }
        }
        // Never block past the lease: another node would take the stream over meanwhile.
        let block = wait.min(self.config.lease / 3).as_millis().max(1) as u64;
        self.read_group(max, ">", Some(block)).await
    }

    /// Turns stream entries into [`Entry`]s: decoded, checked, deduplicated (one script
    /// call for the whole batch).
    async fn entries(&self, values: &[Value], attempts: u32) -> Result<Vec<Entry>, EngineError> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            let Some((id, fields)) = parse_entry(v) else {
                continue;
            };
            let decoded = match fields.iter().find(|(k, _)| k == "pb" || k == "json") {
                Some((k, raw)) => {
                    let format = if k == "pb" {
                        EntryFormat::Protobuf
                    } else {
                        EntryFormat::Json
                    };
                    ingest::decode(format, raw)
                        .and_then(|e| ingest::check(&e, self.config.max_event_size).map(|()| e))
                }
                None => Err("the entry has neither a pb nor a json field".into()),
            };
            out.push(Entry {
                id,
                event: decoded.map_err(Poison::Refused),
                attempts,
            });
        }
        let checked: Vec<usize> = (0..out.len()).filter(|i| out[*i].event.is_ok()).collect();
        if checked.is_empty() {
            return Ok(out);
        }
        let first: Vec<i64> = {
            let mut inv = self.first_seen.prepare_invoke();
            inv.arg(self.window_secs());
            for &i in &checked {
                let event_id = out[i].event.as_ref().map(|e| e.id.as_str()).unwrap_or_default();
                inv.key(self.id_key(event_id)).arg(&out[i].id);
            }
            self.commands.call(inv)
        }
        .await?;
        for (&i, first) in checked.iter().zip(first) {
            if first != 1 {
                out[i].event = Err(Poison::Duplicate);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl EventQueue for RedisQueue {
    async fn append(&self, events: &[pb::DomainEvent]) -> Result<Vec<Appended>, EngineError> {
        self.ensure_group().await?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // The whole batch in one script call.
        let added: Vec<i64> = {
            let mut inv = self.append.prepare_invoke();
            inv.key(&self.config.stream)
                .arg(self.window_secs())
                .arg(self.config.max_len);
            for event in events {
                inv.key(self.id_key(&event.id)).arg(event.encode_to_vec());
            }
            self.commands.call(inv)
        }
        .await?;
        Ok(added
            .into_iter()
            .map(|a| {
                if a == 1 {
                    Appended::Accepted
                } else {
                    Appended::Duplicate
                }
            })
            .collect())
    }

    async fn read(&self, max: usize, wait: Duration) -> Result<Vec<Entry>, EngineError> {
        let result = self.read_inner(max, wait).await;
        if result.is_err() {
            // Whatever Redis handed out before the failure is pending under this consumer.
            self.reclaim.store(true, Ordering::Relaxed);
        }
        result
    }

    fn holds(&self) -> bool {
        self.lease_state.lock().expect("lease lock").0
    }

    async fn release(&self) {
        let mut inv = self.release.prepare_invoke();
        inv.key(format!("{}:lease", self.config.stream))
            .arg(&self.config.consumer);
        let released: Result<i64, _> = self.commands.call(inv).await;
        if let Err(err) = released {
            tracing::debug!(%err, "cannot release the event stream's lease");
        }
        self.lease_state.lock().expect("lease lock").0 = false;
    }

    async fn ack(&self, entries: &[String]) -> Result<(), EngineError> {
        if entries.is_empty() {
            return Ok(());
        }
        let acked: Result<i64, _> = self
            .commands
            .command(
                redis::cmd("XACK")
                    .arg(&self.config.stream)
                    .arg(GROUP)
                    .arg(entries),
            )
            .await;
        if acked.is_err() {
            // Still pending: it is read again (and handled again, harmlessly).
            self.reclaim.store(true, Ordering::Relaxed);
        }
        self.keep_lease().await;
        acked.map(|_| ())
    }

    async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<(), EngineError> {
        let event_id = entry.event.as_ref().map(|e| e.id.clone()).unwrap_or_default();
        let mut add = redis::cmd("XADD");
        add.arg(format!("{}:dead", self.config.stream))
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("entry")
            .arg(&entry.id)
            .arg("event_id")
            .arg(&event_id)
            .arg("reason")
            .arg(reason);
        if let Ok(event) = &entry.event {
            add.arg("pb").arg(event.encode_to_vec());
        }
        let _: Value = self.commands.command(&add).await?;
        Ok(())
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, EngineError> {
        let reply: Value = self
            .commands
            .command(
                redis::cmd("XREVRANGE")
                    .arg(format!("{}:dead", self.config.stream))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(max),
            )
            .await?;
        let mut out = Vec::new();
        if let Value::Array(entries) = reply {
            for e in &entries {
                let Some((_, fields)) = parse_entry(e) else {
                    continue;
                };
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                out.push(DeadLetter {
                    entry: field("entry"),
                    event_id: field("event_id"),
                    reason: field("reason"),
                });
            }
        }
        out.reverse();
        Ok(out)
    }
}
