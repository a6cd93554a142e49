//! The command side of the Redis engine: one multiplexed connection (to one server, or a
//! cluster connection routing each command to the master of its key's slot), established
//! on first use and shared by every command of the node (the engine's and the presence
//! store's). Every call runs under the configured timeout, and its outcome feeds readiness
//! and the error count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{RedisConfig, ShardedPubSub};
use crate::engine::EngineError;

/// Counters of the engine's health.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Redis calls that failed or timed out.
    pub errors: AtomicU64,
    /// Times the pub/sub connection was re-established.
    pub reconnects: AtomicU64,
    /// Gaps filled from history.
    pub gaps_repaired: AtomicU64,
    /// Rooms reset because history could not fill a gap.
    pub resets: AtomicU64,
}

pub(super) fn unavailable(err: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(err.to_string())
}

/// Where the engine's data lives.
#[derive(Clone)]
pub(crate) enum Target {
    /// One Redis server (a primary).
    Server(redis::Client),
    /// A Redis Cluster, known by its seed nodes.
    Cluster(Box<ClusterClient>),
}

impl Target {
    /// `url` names one server; with `cluster`, it lists seed nodes, comma-separated.
    /// `resp3` for connections that receive pushes (pub/sub).
    pub(crate) fn open(url: &str, cluster: bool, resp3: bool) -> Result<Self, EngineError> {
        let internal = |e: redis::RedisError| EngineError::Internal(e.to_string());
        let protocol = if resp3 {
            redis::ProtocolVersion::RESP3
        } else {
            redis::ProtocolVersion::RESP2
        };
        if cluster {
            let seeds: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            if seeds.is_empty() {
                return Err(EngineError::Internal("no redis cluster node given".into()));
            }
            let client = ClusterClientBuilder::new(seeds)
                .use_protocol(protocol)
                .build()
                .map_err(internal)?;
            Ok(Target::Cluster(Box::new(client)))
        } else {
            let client = redis::Client::open(url).map_err(internal)?;
            let info = client.get_connection_info().clone();
            let settings = info.redis_settings().clone().set_protocol(protocol);
            Ok(Target::Server(
                redis::Client::open(info.set_redis_settings(settings)).map_err(internal)?,
            ))
        }
    }

    /// A cluster connection with the engine's timeouts (`None`: no response timeout, for
    /// blocking commands that carry their own), delivering pushes to `pushes` if given.
    pub(crate) async fn cluster_connection(
        seeds: &ClusterClient,
        timeout: Duration,
        response_timeout: Option<Duration>,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<ClusterConnection, EngineError> {
        let mut config = redis::cluster::ClusterConfig::new().set_connection_timeout(timeout);
        if let Some(t) = response_timeout {
            config = config.set_response_timeout(t);
        }
        if let Some(tx) = pushes {
            config = config.set_push_sender(tx);
        }
        tokio::time::timeout(timeout * 2, seeds.get_async_connection_with_config(config))
            .await
            .map_err(|_| unavailable("connecting to the redis cluster timed out"))?
            .map_err(unavailable)
    }
}

/// A connection commands run on: to one server, or to a cluster.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnecting by itself.
    Managed(ConnectionManager),
    /// One server, a connection of its own.
    Direct(MultiplexedConnection),
    /// A cluster: each command goes to the master of its key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Managed(c) => c.req_packed_command(cmd),
            RedisConnection::Direct(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Managed(c) => c.get_db(),
            RedisConnection::Direct(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// A handle on the engine's command connection, for whatever else keeps its data in the
/// same Redis (presence): scripts, commands and pipelines, each under the engine's timeout
/// and counted in its health.
pub struct RedisCommands {
    target: Target,
    conn: tokio::sync::Mutex<Option<RedisConnection>>,
    prefix: String,
    timeout: Duration,
    sharding: ShardedPubSub,
    sharded: AtomicBool,
    ok: AtomicBool,
    stats: Arc<RedisStats>,
}

impl std::fmt::Debug for RedisCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCommands")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisCommands {
    pub(super) fn new(target: Target, config: &RedisConfig, stats: Arc<RedisStats>) -> Self {
        // A cluster is Redis 7 or newer here: its rooms' channels are always sharded.
        let cluster = matches!(target, Target::Cluster(_));
        RedisCommands {
            target,
            conn: tokio::sync::Mutex::new(None),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            sharding: if cluster {
                ShardedPubSub::On
            } else {
                config.sharded
            },
            sharded: AtomicBool::new(cluster || config.sharded == ShardedPubSub::On),
            ok: AtomicBool::new(false),
            stats,
        }
    }

    /// The prefix of every key and channel of the engine.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the engine runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The command connection, established on first use.
    pub(super) async fn conn(&self) -> Result<RedisConnection, EngineError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let client = match &self.target {
            Target::Server(client) => client.clone(),
            Target::Cluster(seeds) => {
                let conn = RedisConnection::Cluster(
                    Target::cluster_connection(seeds, self.timeout, Some(self.timeout), None).await?,
                );
                *guard = Some(conn.clone());
                return Ok(conn);
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| unavailable("connecting to redis timed out"))?
        .map_err(unavailable)?;
        if self.sharding == ShardedPubSub::Auto {
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let major = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .and_then(|v| v.split('.').next())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(0);
            self.sharded.store(major >= 7, Ordering::Relaxed);
        }
        let conn = RedisConnection::Managed(conn);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    fn note<T>(&self, result: &Result<T, EngineError>) {
        match result {
            Ok(_) => self.ok.store(true, Ordering::Relaxed),
            Err(_) => {
                self.ok.store(false, Ordering::Relaxed);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs one script within the call timeout; failures count against readiness.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, EngineError> {
        let result = async {
            let mut conn = self.conn().await?;
            match tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await {
                Err(_) => Err(unavailable("redis call timed out")),
                Ok(Err(e))
                    if e.is_io_error()
                        || e.is_timeout()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal() =>
                {
                    Err(unavailable(e))
                }
                Ok(Err(e)) => Err(EngineError::Internal(e.to_string())),
                Ok(Ok(v)) => Ok(v),
            }
        }
        .await;
        self.note(&result);
        result
    }

    /// Runs one command within the call timeout; failures count against readiness.
    pub async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, EngineError> {
        self.query(|mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs independent commands and answers their replies in order: one pipeline on a
    /// server; on a cluster, each on the master of its key's slot, all in flight at once.
    /// For commands whose keys may live in different slots (a pipeline's must not).
    pub async fn each(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, EngineError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.query(|mut conn| async move {
            if let RedisConnection::Cluster(cluster) = &conn {
                let each = cmds.iter().map(|cmd| {
                    let mut conn = cluster.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                });
                futures::future::join_all(each).await.into_iter().collect()
            } else {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async::<Vec<Value>>(&mut conn).await
            }
        })
        .await
    }

    /// Runs one pipeline within the call timeout; failures count against readiness. On a
    /// cluster, every key of the pipeline must be in one slot (one hash tag).
    pub async fn pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, EngineError> {
        self.query(|mut conn| async move { pipe.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs `query` on the command connection within the call timeout; every failure
    /// is the engine being unavailable, and counts against readiness.
    async fn query<T, F, Fut>(&self, query: F) -> Result<T, EngineError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = async {
            let conn = self.conn().await?;
            tokio::time::timeout(self.timeout, query(conn))
                .await
                .map_err(|_| unavailable("redis call timed out"))?
                .map_err(unavailable)
        }
        .await;
        self.note(&result);
        result
    }

    /// A connection of its own, for commands that block (a stream read waiting for
    /// entries would hold up every command queued behind it on the shared connection).
    /// The caller bounds each command by a timeout of its own.
    pub async fn blocking_connection(&self) -> Result<RedisConnection, EngineError> {
        let result = match &self.target {
            Target::Server(client) => {
                let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout));
                tokio::time::timeout(
                    self.timeout * 2,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map_err(|_| unavailable("connecting to redis timed out"))
                .and_then(|r| r.map_err(unavailable))
                .map(RedisConnection::Direct)
            }
            Target::Cluster(seeds) => Target::cluster_connection(seeds, self.timeout, None, None)
                .await
                .map(RedisConnection::Cluster),
        };
        self.note(&result);
        result
    }

    /// Whether the server takes sharded pub/sub (known once connected, with `Auto`).
    pub(super) fn sharded(&self) -> bool {
        self.sharded.load(Ordering::Relaxed)
    }

    /// Whether the last call succeeded.
    pub(super) fn is_ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }
}
