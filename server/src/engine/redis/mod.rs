//! The Redis engine: any number of nodes sharing one Redis act as one gateway.
//!
//! - **Publish** is one script: next offset, append to the room's history stream (trimmed
//!   by count and age), refresh expiries, and broadcast on the room's channel.
//! - **Fan-out**: a node subscribes only to the channels of rooms with local subscribers,
//!   reference-counted, over one pub/sub connection (sharded pub/sub where the server
//!   supports it); commands use one multiplexed connection.
//! - **Recovery**: the node remembers the last position it delivered in every room.
//!   When a message arrives past a gap, or when the pub/sub connection comes back, it
//!   fills the gap from history; when history cannot, local subscribers get a `RoomReset`
//!   (the client's `recovered = false`). Never a silent gap.
//! - **Outage**: every call has a timeout; while Redis is unreachable publishes fail fast
//!   (`Unavailable`, HTTP 503), the node reports not ready, and everything resumes by
//!   itself when Redis returns.
//!
//! This module holds the configuration and the [`Engine`] implementation; `commands` is
//! the command connection, `pubsub` the pub/sub connection, `follower` what the node does
//! with the messages it receives (ordering, gap repair), `scripts` the Lua scripts,
//! `replies` the parsing of their answers and `keys` the key layout.

mod commands;
mod follower;
mod keys;
mod pubsub;
mod replies;
mod scripts;

use commands::unavailable;
pub use commands::{RedisCommands, RedisConnection, RedisStats};
pub use keys::Keys;
use replies::{Read, parse_page, parse_read};
pub(crate) use replies::{value_bytes, value_str};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rtgate_protocol::RoomName;
use tokio::sync::{mpsc, oneshot};

use super::{
    Engine, EngineError, HistoryLimits, Published, RoomInfo, SubscribeOutcome, bus, encode_publication,
};
use crate::hub::{Hub, Publication, ReplayCursor, ReplayPage, Subscriber};
use crate::ids::{ConnectionId, Epoch, StreamPos};

/// Whether to use sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, Redis 7+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShardedPubSub {
    /// Sharded when the server is Redis 7 or newer.
    Auto,
    /// Always sharded.
    On,
    /// Classic `SUBSCRIBE`/`PUBLISH`.
    Off,
}

/// How to use Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`; with `cluster`, the seed nodes, comma-separated.
    pub url: String,
    /// Whether `url` names a Redis Cluster.
    pub cluster: bool,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// History kept per room.
    pub history: HistoryLimits,
    /// How long a room's epoch and last offset outlive its last event.
    pub meta_ttl: Duration,
    /// Sharded pub/sub choice.
    pub sharded: ShardedPubSub,
    /// Timeout of every Redis call.
    pub timeout: Duration,
}

impl RedisConfig {
    /// Defaults for `url`.
    pub fn new(url: &str) -> Self {
        RedisConfig {
            url: url.to_string(),
            cluster: false,
            prefix: "rtgate".into(),
            history: HistoryLimits::default(),
            meta_ttl: Duration::from_secs(86_400),
            sharded: ShardedPubSub::Auto,
            timeout: Duration::from_secs(1),
        }
    }
}

pub(crate) struct Inner {
    hub: Arc<Hub>,
    config: RedisConfig,
    keys: Keys,
    commands: Arc<RedisCommands>,
    pubsub_target: commands::Target,
    publish_script: redis::Script,
    read_script: redis::Script,
    page_script: redis::Script,
    pubsub_up: AtomicBool,
    /// Last position delivered by this node, per room with local subscribers.
    tracks: Mutex<HashMap<RoomName, Option<StreamPos>>>,
    stats: Arc<RedisStats>,
    /// Where control messages from other nodes go.
    control: mpsc::UnboundedSender<bus::ControlMessage>,
    /// This instance's probe channel (see `pubsub`: a connection that stays open but
    /// stops delivering is found by it).
    probe_channel: String,
}

/// The Redis engine.
pub struct RedisEngine {
    inner: Arc<Inner>,
    pubsub: mpsc::UnboundedSender<pubsub::Command>,
    control: Mutex<Option<mpsc::UnboundedReceiver<bus::ControlMessage>>>,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("prefix", &self.inner.config.prefix)
            .finish()
    }
}

impl RedisEngine {
    /// An engine on `config`, delivering to `hub`. Connects in the background: a node
    /// starts (not ready) even while Redis is unreachable.
    pub fn new(hub: Arc<Hub>, config: RedisConfig) -> Result<Self, EngineError> {
        let target = commands::Target::open(&config.url, config.cluster, false)?;
        let pubsub_target = commands::Target::open(&config.url, config.cluster, true)?;
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(RedisStats::default());
        let config_prefix = config.prefix.clone();
        let inner = Arc::new(Inner {
            hub,
            keys: Keys::new(&config.prefix),
            commands: Arc::new(RedisCommands::new(target, &config, stats.clone())),
            config,
            pubsub_target,
            publish_script: redis::Script::new(scripts::PUBLISH),
            read_script: redis::Script::new(scripts::READ),
            page_script: redis::Script::new(scripts::PAGE),
            pubsub_up: AtomicBool::new(false),
            tracks: Mutex::new(HashMap::new()),
            stats,
            control: control_tx,
            probe_channel: Keys::new(&config_prefix).probe(&format!("{:016x}", rand::random::<u64>())),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(pubsub::run(inner.clone(), rx));
        Ok(RedisEngine {
            inner,
            pubsub: tx,
            control: Mutex::new(Some(control_rx)),
        })
    }

    /// The engine's command connection, for stores that keep their data in the same
    /// Redis (presence).
    pub fn commands(&self) -> Arc<RedisCommands> {
        self.inner.commands.clone()
    }

    /// Health counters.
    pub fn stats(&self) -> Arc<RedisStats> {
        self.inner.stats.clone()
    }

    async fn join_channel(&self, room: &RoomName) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.pubsub
            .send(pubsub::Command::Subscribe(room.clone(), tx))
            .map_err(|_| EngineError::Internal("pub/sub task gone".into()))?;
        match tokio::time::timeout(self.inner.config.timeout * 2, rx).await {
            Ok(Ok(result)) => result,
            _ => Err(unavailable("pub/sub subscribe timed out")),
        }
    }
}

impl Inner {
    fn sharded(&self) -> bool {
        self.commands.sharded()
    }

    async fn read(
        &self,
        room: &RoomName,
        since: Option<&StreamPos>,
        (max_events, max_bytes): (usize, usize),
    ) -> Result<(StreamPos, Read), EngineError> {
        let mut inv = self.read_script.prepare_invoke();
        inv.key(self.keys.meta(room))
            .key(self.keys.history(room))
            .arg(self.config.history.max_age.as_millis() as u64)
            .arg(self.config.meta_ttl.as_millis() as u64)
            .arg(if since.is_some() { "1" } else { "0" })
            .arg(since.map_or("", |s| s.epoch.as_str()))
            .arg(since.map_or(0, |s| s.offset))
            .arg(max_events.min(i64::MAX as usize))
            .arg(max_bytes.min(i64::MAX as usize));
        let values: Vec<redis::Value> = self.commands.call(inv).await?;
        parse_read(values).ok_or_else(|| EngineError::Internal("unexpected read script reply".into()))
    }

    fn publication(&self, room: &RoomName, epoch: &Epoch, offset: u64, event: &[u8]) -> Arc<Publication> {
        encode_publication(
            room,
            StreamPos {
                epoch: epoch.clone(),
                offset,
            },
            event,
        )
    }
}

#[async_trait]
impl Engine for RedisEngine {
    async fn publish(
        &self,
        room: &RoomName,
        event: &[u8],
        key: Option<&str>,
    ) -> Result<Published, EngineError> {
        let inner = &self.inner;
        let mut inv = inner.publish_script.prepare_invoke();
        inv.key(inner.keys.meta(room))
            .key(inner.keys.history(room))
            .key(inner.keys.channel(room))
            .key(inner.keys.ids(room))
            .arg(event)
            .arg(inner.config.history.max_events)
            .arg(inner.config.history.max_age.as_millis() as u64)
            .arg(inner.config.meta_ttl.as_millis() as u64)
            .arg(Epoch::random().as_str())
            .arg(if inner.sharded() { "1" } else { "0" })
            .arg(key.unwrap_or(""));
        let (epoch, offset, duplicate): (String, u64, u8) = inner.commands.call(inv).await?;
        Ok(Published {
            pos: StreamPos {
                epoch: Epoch::from_wire(&epoch),
                offset,
            },
            duplicate: duplicate == 1,
        })
    }

    async fn subscribe(
        &self,
        sub: Arc<Subscriber>,
        since: Option<StreamPos>,
    ) -> Result<SubscribeOutcome, EngineError> {
        let room = sub.room().clone();
        // Registered first, the channel joined next: whatever is published from then on
        // reaches the subscriber's buffer, and whatever came before is in the history read.
        self.inner.hub.add(sub.clone());
        self.join_channel(&room).await?;
        // The node's own position in the room is not moved here: it only records what the
        // hub was handed. Other local subscribers may still be waiting for events up to
        // this read's top through pub/sub, and must not see them dropped as duplicates.
        // Only a first page of the replay is read: the rest is read at the client's pace.
        let (top, read) = self
            .inner
            .read(
                &room,
                since.as_ref(),
                (super::REPLAY_PAGE_EVENTS, super::REPLAY_PAGE_BYTES),
            )
            .await?;
        let (replay, next, recovered): (Vec<_>, _, _) = match read {
            Read::Replay(entries, next) => {
                let last = entries.last().map_or(top.offset, |(o, _)| *o);
                let next = next.map(|id| ReplayCursor {
                    epoch: top.epoch.clone(),
                    next: last + 1,
                    until: top.offset,
                    after_id: Some(Arc::from(id)),
                });
                let replay = entries
                    .iter()
                    .map(|(offset, event)| self.inner.publication(&room, &top.epoch, *offset, event))
                    .collect();
                (replay, next, true)
            }
            Read::Fresh | Read::Lost => (Vec::new(), None, false),
        };
        let replayed = match (&since, recovered) {
            (Some(since), true) => top.offset.saturating_sub(since.offset) as u32,
            _ => 0,
        };
        let outcome = SubscribeOutcome {
            pos: top.clone(),
            recovered,
            replayed,
        };
        sub.prepare(replay, top, next);
        Ok(outcome)
    }

    async fn replay_page(
        &self,
        room: &RoomName,
        cursor: &ReplayCursor,
        max_bytes: usize,
    ) -> Result<ReplayPage, EngineError> {
        let inner = &self.inner;
        let Some(after) = &cursor.after_id else {
            return Err(EngineError::Internal(
                "a replay cursor without a stream id".into(),
            ));
        };
        let mut inv = inner.page_script.prepare_invoke();
        inv.key(inner.keys.meta(room))
            .key(inner.keys.history(room))
            .arg(cursor.epoch.as_str())
            .arg(after.as_ref())
            .arg(cursor.next)
            .arg(cursor.until)
            .arg(super::REPLAY_PAGE_EVENTS)
            .arg(max_bytes);
        let values: Vec<redis::Value> = inner.commands.call(inv).await?;
        match parse_page(values) {
            Some(Some((entries, next_id))) => {
                let last = entries.last().map_or(cursor.next - 1, |(o, _)| *o);
                let events = entries
                    .iter()
                    .map(|(offset, event)| inner.publication(room, &cursor.epoch, *offset, event))
                    .collect();
                let next = next_id.map(|id| ReplayCursor {
                    next: last + 1,
                    after_id: Some(Arc::from(id)),
                    ..cursor.clone()
                });
                Ok(ReplayPage::Events(events, next))
            }
            Some(None) => {
                let (top, _) = inner.read(room, None, (0, 0)).await?;
                Ok(ReplayPage::Lost(top))
            }
            None => Err(EngineError::Internal("unexpected page script reply".into())),
        }
    }

    async fn unsubscribe(&self, room: &RoomName, conn: ConnectionId) {
        self.inner.hub.remove(room, conn);
        let _ = self.pubsub.send(pubsub::Command::Unsubscribe(room.clone()));
    }

    async fn publish_ephemeral(
        &self,
        room: &RoomName,
        frame: Bytes,
        exclude: Option<&str>,
        private: bool,
    ) -> Result<(), EngineError> {
        let inner = &self.inner;
        let message = bus::encode_ephemeral(private, exclude.unwrap_or(""), &frame);
        let cmd = if inner.sharded() { "SPUBLISH" } else { "PUBLISH" };
        inner
            .commands
            .command::<()>(redis::cmd(cmd).arg(inner.keys.channel(room)).arg(message))
            .await
    }

    async fn room_info(&self, room: &RoomName) -> Result<RoomInfo, EngineError> {
        let inner = &self.inner;
        let (epoch, offset): (Option<String>, Option<u64>) = inner
            .commands
            .command(redis::cmd("HMGET").arg(inner.keys.meta(room)).arg("e").arg("o"))
            .await?;
        Ok(RoomInfo {
            subscribers: inner.hub.subscribers(room) as u32,
            pos: StreamPos {
                epoch: Epoch::from_wire(epoch.as_deref().unwrap_or("")),
                offset: offset.unwrap_or(0),
            },
        })
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    async fn broadcast_control(&self, message: &bus::ControlMessage) -> Result<u32, EngineError> {
        let inner = &self.inner;
        let receivers: u32 = inner
            .commands
            .command(
                redis::cmd("PUBLISH")
                    .arg(inner.keys.control())
                    .arg(bus::encode_control(message)),
            )
            .await?;
        // Every node listens, this one included.
        Ok(receivers.saturating_sub(1))
    }

    fn take_control(&self) -> Option<mpsc::UnboundedReceiver<bus::ControlMessage>> {
        self.control.lock().expect("control lock").take()
    }

    async fn store_revocation(
        &self,
        contact: bool,
        id: u64,
        before: u64,
        until: u64,
    ) -> Result<(), EngineError> {
        let inner = &self.inner;
        let member = format!("{}:{id}", if contact { 'c' } else { 'u' });
        inner
            .commands
            .command::<()>(
                redis::cmd("HSET")
                    .arg(inner.keys.revocations())
                    .arg(member)
                    .arg(format!("{before}:{until}")),
            )
            .await
    }

    async fn load_revocations(&self, now: u64) -> Result<Vec<(bool, u64, u64, u64)>, EngineError> {
        let inner = &self.inner;
        let stored: HashMap<String, String> = inner
            .commands
            .command(redis::cmd("HGETALL").arg(inner.keys.revocations()))
            .await?;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (member, value) in stored {
            let parsed = member.split_once(':').and_then(|(kind, id)| {
                let (before, until) = value.split_once(':')?;
                Some((
                    kind == "c",
                    id.parse().ok()?,
                    before.parse().ok()?,
                    until.parse().ok()?,
                ))
            });
            match parsed {
                Some(r @ (_, _, _, until)) if until > now => live.push(r),
                _ => gone.push(member),
            }
        }
        if !gone.is_empty() {
            // Forgetting what is past its time can wait for the next load if this fails.
            let _ = inner
                .commands
                .command::<()>(redis::cmd("HDEL").arg(inner.keys.revocations()).arg(gone))
                .await;
        }
        Ok(live)
    }

    fn health(&self) -> super::EngineHealth {
        super::EngineHealth {
            errors: self.inner.stats.errors.load(Ordering::Relaxed),
            reconnects: self.inner.stats.reconnects.load(Ordering::Relaxed),
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.pubsub_up.load(Ordering::Relaxed) && self.inner.commands.is_ok()
    }

    async fn maintain(&self) {
        // A cheap round trip keeps readiness honest while the node is idle.
        let _ = self.inner.commands.command::<()>(&redis::cmd("PING")).await;
    }
}
