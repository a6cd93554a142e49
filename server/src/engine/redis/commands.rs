//! The command side of the Redis engine: one multiplexed connection, established on first
//! use and shared by every command of the node (the engine's and the presence store's).
//! Every call runs under the configured timeout, and its outcome feeds readiness and the
//! error count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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

/// A handle on the engine's command connection, for whatever else keeps its data in the
/// same Redis (presence): scripts, commands and pipelines, each under the engine's timeout
/// and counted in its health.
pub struct RedisCommands {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
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
    pub(super) fn new(client: redis::Client, config: &RedisConfig, stats: Arc<RedisStats>) -> Self {
        RedisCommands {
            client,
            conn: tokio::sync::Mutex::new(None),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            sharding: config.sharded,
            sharded: AtomicBool::new(config.sharded == ShardedPubSub::On),
            ok: AtomicBool::new(false),
            stats,
        }
    }

    /// The prefix of every key and channel of the engine.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The command connection, established on first use.
    pub(super) async fn conn(&self) -> Result<ConnectionManager, EngineError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
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

    /// Runs one pipeline within the call timeout; failures count against readiness.
    pub async fn pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, EngineError> {
        self.query(|mut conn| async move { pipe.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs `query` on the command connection within the call timeout; every failure
    /// is the engine being unavailable, and counts against readiness.
    async fn query<T, F, Fut>(&self, query: F) -> Result<T, EngineError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
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
    pub async fn blocking_connection(&self) -> Result<redis::aio::MultiplexedConnection, EngineError> {
        let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout));
        let result = tokio::time::timeout(
            self.timeout * 2,
            self.client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| unavailable("connecting to redis timed out"))
        .and_then(|r| r.map_err(unavailable));
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
