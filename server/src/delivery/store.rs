//! Where the destinations (and the business listeners' mirrored configuration, in the
//! same records) are kept: in memory on a single node, in Redis with several — and each
//! node's in-memory copy of them ([`Destinations`]), which the listeners read.
//!
//! Redis keys (one hash slot):
//!
//! | key | type | what |
//! |---|---|---|
//! | `{<prefix>:destinations}` | hash | `<collection>:<id>` → the record (protobuf) |
//! | `{<prefix>:destinations}:v` | string | a counter bumped by every change |
//!
//! A node reloads its copy when the counter moved: the bus checks it before each round
//! of events, so an event queued after a change was answered is decided with the change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use super::directory::{Collection, Directory, Listed};
use crate::engine::{EngineError, RedisCommands};

/// Storage of destination records.
#[async_trait]
pub trait DestinationStore: Send + Sync {
    /// Creates or replaces the record at `key`.
    async fn put(&self, key: &str, record: Vec<u8>) -> Result<(), EngineError>;
    /// Deletes it; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, EngineError>;
    /// The change counter.
    async fn version(&self) -> Result<u64, EngineError>;
    /// The counter and every record, read together.
    async fn load(&self) -> Result<(u64, Vec<(String, Vec<u8>)>), EngineError>;
}

/// Records in this process.
#[derive(Debug, Default)]
pub struct MemoryDestinations {
    state: Mutex<(u64, BTreeMap<String, Vec<u8>>)>,
}

#[async_trait]
impl DestinationStore for MemoryDestinations {
    async fn put(&self, key: &str, record: Vec<u8>) -> Result<(), EngineError> {
        let mut state = self.state.lock().expect("destinations lock");
        state.0 += 1;
        state.1.insert(key.to_string(), record);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, EngineError> {
        let mut state = self.state.lock().expect("destinations lock");
        let existed = state.1.remove(key).is_some();
        if existed {
            state.0 += 1;
        }
        Ok(existed)
    }

    async fn version(&self) -> Result<u64, EngineError> {
        Ok(self.state.lock().expect("destinations lock").0)
    }

    async fn load(&self) -> Result<(u64, Vec<(String, Vec<u8>)>), EngineError> {
        let state = self.state.lock().expect("destinations lock");
        Ok((
            state.0,
            state.1.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ))
    }
}

/// Records in Redis, shared by every node.
pub struct RedisDestinations {
    commands: Arc<RedisCommands>,
    hash: String,
    version: String,
}

impl RedisDestinations {
    /// The store under the engine's prefix.
    pub fn new(commands: Arc<RedisCommands>) -> Self {
        let hash = format!("{{{}:destinations}}", commands.prefix());
        RedisDestinations {
            version: format!("{hash}:v"),
            hash,
            commands,
        }
    }
}

#[async_trait]
impl DestinationStore for RedisDestinations {
    async fn put(&self, key: &str, record: Vec<u8>) -> Result<(), EngineError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&self.hash, key, record)
            .ignore()
            .incr(&self.version, 1)
            .ignore();
        self.commands.pipe::<()>(&pipe).await
    }

    async fn delete(&self, key: &str) -> Result<bool, EngineError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(&self.hash, key)
            .incr(&self.version, 1)
            .ignore();
        let (deleted,): (u64,) = self.commands.pipe(&pipe).await?;
        Ok(deleted > 0)
    }

    async fn version(&self) -> Result<u64, EngineError> {
        let v: Option<u64> = self
            .commands
            .command(redis::cmd("GET").arg(&self.version))
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn load(&self) -> Result<(u64, Vec<(String, Vec<u8>)>), EngineError> {
        let mut pipe = redis::pipe();
        pipe.atomic().get(&self.version).hgetall(&self.hash);
        let (version, records): (Option<u64>, Vec<(String, Vec<u8>)>) = self.commands.pipe(&pipe).await?;
        Ok((version.unwrap_or(0), records))
    }
}

/// A node's copy of the destinations, kept current from the store.
pub struct Destinations {
    store: Arc<dyn DestinationStore>,
    current: RwLock<(Option<u64>, Arc<Directory>)>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations").finish_non_exhaustive()
    }
}

impl Destinations {
    /// An empty copy of `store` (the first [`sync`](Self::sync) loads it).
    pub fn new(store: Arc<dyn DestinationStore>) -> Arc<Self> {
        Arc::new(Destinations {
            store,
            current: RwLock::new((None, Arc::new(Directory::default()))),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The copy as of the last sync.
    pub fn current(&self) -> Arc<Directory> {
        self.current.read().expect("destinations lock").1.clone()
    }

    /// Reloads the copy if the store changed since it was made.
    pub async fn sync(&self) -> Result<(), EngineError> {
        let version = self.store.version().await?;
        if self.current.read().expect("destinations lock").0 == Some(version) {
            return Ok(());
        }
        let _one = self.reloading.lock().await;
        if self.current.read().expect("destinations lock").0 == Some(version) {
            return Ok(());
        }
        let (version, records) = self.store.load().await?;
        let (directory, bad) =
            Directory::from_records(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        for key in bad {
            tracing::warn!(key, "a stored destination does not decode; left out");
        }
        let destinations = records
            .iter()
            .filter(|(key, _)| super::directory::parse_key(key).is_some_and(|(c, _)| !c.is_mirror()))
            .count();
        metrics::gauge!("rtgate_outbound_destinations").set(destinations as f64);
        metrics::gauge!("rtgate_mirror_records").set((records.len() - destinations) as f64);
        *self.current.write().expect("destinations lock") = (Some(version), Arc::new(directory));
        Ok(())
    }

    /// Stores a record and brings the copy up to date.
    pub async fn put(&self, collection: Collection, id: u64, record: Vec<u8>) -> Result<(), EngineError> {
        self.store.put(&collection.key(id), record).await?;
        self.sync().await
    }

    /// Deletes a record; whether it existed.
    pub async fn delete(&self, collection: Collection, id: u64) -> Result<bool, EngineError> {
        let existed = self.store.delete(&collection.key(id)).await?;
        self.sync().await?;
        Ok(existed)
    }

    /// Every record of a collection, current as of now.
    pub async fn list(&self, collection: Collection) -> Result<Vec<Listed>, EngineError> {
        self.sync().await?;
        Ok(self.current().list(collection))
    }
}
