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
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use redis::Value;
use rtgate_protocol::pb;
use tokio::sync::Mutex;

use super::{Appended, DeadLetter, Entry, EventQueue, Poison};
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
-- KEYS[1] stream, KEYS[2] the event id's key; ARGV[1] window s, ARGV[2] maxlen, ARGV[3] event
if redis.call('SET', KEYS[2], '', 'NX', 'EX', ARGV[1]) then
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'pb', ARGV[3])
  redis.call('SET', KEYS[2], id, 'XX', 'KEEPTTL')
  return id
end
return false
"#;

const FIRST_SEEN: &str = r#"
-- KEYS[1] the event id's key; ARGV[1] entry id, ARGV[2] window s. 1: handle it, 0: a duplicate.
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if v == ARGV[1] then return 1 end
return 0
"#;

const RENEW: &str = r#"
-- KEYS[1] lease; ARGV[1] node, ARGV[2] ms. 1: held (taken now: 2), 0: someone else's.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// A Redis Stream queue.
pub struct RedisQueue {
    commands: Arc<RedisCommands>,
    config: RedisQueueConfig,
    append: redis::Script,
    first_seen: redis::Script,
    renew: redis::Script,
    reader: Mutex<Option<redis::aio::MultiplexedConnection>>,
    group_ready: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("stream", &self.config.stream)
            .finish()
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A stream entry's field/value pairs.
type Fields<'a> = Vec<(String, &'a [u8])>;

/// One stream entry: its id and its field/value pairs.
fn parse_entry(v: &Value) -> Option<(String, Fields<'_>)> {
    let Value::Array(parts) = v else { return None };
    let id = text(parts.first()?)?;
    let fields = match parts.get(1)? {
        Value::Array(kv) => kv
            .chunks(2)
            .filter_map(|c| Some((text(c.first()?)?, bytes(c.get(1)?)?)))
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
            reader: Mutex::new(None),
            group_ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn id_key(&self, event_id: &str) -> String {
        format!("{}:id:{event_id}", self.config.stream)
    }

    fn window_secs(&self) -> u64 {
        self.config.dedup_window.as_secs().max(1)
    }

    async fn ensure_group(&self) -> Result<(), EngineError> {
        if self.group_ready.load(std::sync::atomic::Ordering::Relaxed) {
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
        self.group_ready.store(true, std::sync::atomic::Ordering::Relaxed);
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
        Ok((held > 0, held == 2))
    }

    /// Every entry pending in the group, whoever it was handed to, now this node's.
    async fn claim_all(&self) -> Result<Vec<Entry>, EngineError> {
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        loop {
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
                        .arg(100),
                )
                .await?;
            let Value::Array(parts) = reply else { break };
            let next = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
            if let Some(Value::Array(entries)) = parts.get(1) {
                for e in entries {
                    if let Some(entry) = self.entry(e, 1).await? {
                        out.push(entry);
                    }
                }
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    /// Turns a stream entry into an [`Entry`]: decoded, checked, deduplicated.
    async fn entry(&self, v: &Value, attempts: u32) -> Result<Option<Entry>, EngineError> {
        let Some((id, fields)) = parse_entry(v) else {
            return Ok(None);
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
        let event = match decoded {
            Ok(event) => {
                let first: i64 = {
                    let mut inv = self.first_seen.prepare_invoke();
                    inv.key(self.id_key(&event.id)).arg(&id).arg(self.window_secs());
                    self.commands.call(inv)
                }
                .await?;
                if first == 1 {
                    Ok(event)
                } else {
                    Err(Poison::Duplicate)
                }
            }
            Err(reason) => Err(Poison::Refused(reason)),
        };
        Ok(Some(Entry { id, event, attempts }))
    }
}

#[async_trait]
impl EventQueue for RedisQueue {
    async fn append(&self, events: &[pb::DomainEvent]) -> Result<Vec<Appended>, EngineError> {
        self.ensure_group().await?;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let added: Option<String> = {
                let mut inv = self.append.prepare_invoke();
                inv.key(&self.config.stream)
                    .key(self.id_key(&event.id))
                    .arg(self.window_secs())
                    .arg(self.config.max_len)
                    .arg(event.encode_to_vec());
                self.commands.call(inv)
            }
            .await?;
            out.push(if added.is_some() {
                Appended::Accepted
            } else {
                Appended::Duplicate
            });
        }
        Ok(out)
    }

    async fn read(&self, max: usize, wait: Duration) -> Result<Vec<Entry>, EngineError> {
        self.ensure_group().await?;
        let (held, taken) = self.lease().await?;
        if !held {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        if taken {
            let claimed = self.claim_all().await?;
            if !claimed.is_empty() {
                tracing::info!(
                    entries = claimed.len(),
                    "took the event stream over: claimed what was pending"
                );
                return Ok(claimed);
            }
        }
        let mut reader = self.reader.lock().await;
        if reader.is_none() {
            *reader = Some(self.commands.blocking_connection().await?);
        }
        let conn = reader.as_mut().expect("set");
        // Never block past the lease: another node would take the stream over meanwhile.
        let block = wait.min(self.config.lease / 3).as_millis().max(1) as u64;
        let reply: Result<Value, _> = tokio::time::timeout(
            Duration::from_millis(block) + Duration::from_secs(2),
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.config.consumer)
                .arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(&self.config.stream)
                .arg(">")
                .query_async(conn),
        )
        .await
        .map_err(|_| EngineError::Unavailable("stream read timed out".into()))
        .and_then(|r| r.map_err(|e| EngineError::Unavailable(e.to_string())));
        let reply = match reply {
            Ok(v) => v,
            Err(e) => {
                *reader = None;
                return Err(e);
            }
        };
        drop(reader);
        let mut out = Vec::new();
        // [[stream, [entry, …]]] or nil on timeout.
        if let Value::Array(streams) = reply {
            for s in streams {
                let Value::Array(parts) = s else { continue };
                if let Some(Value::Array(entries)) = parts.get(1) {
                    for e in entries {
                        if let Some(entry) = self.entry(e, 0).await? {
                            out.push(entry);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn ack(&self, entry: &str) -> Result<(), EngineError> {
        let _: i64 = self
            .commands
            .command(redis::cmd("XACK").arg(&self.config.stream).arg(GROUP).arg(entry))
            .await?;
        Ok(())
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
        self.ack(&entry.id).await
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
