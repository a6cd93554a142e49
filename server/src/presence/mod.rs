//! Presence: who is online (across devices and nodes), agents' availability, last seen,
//! and the `presence.update` events announced to account rooms.
//!
//! [`PresenceService`] runs the sans-IO [`Tracker`] on a task of its own against a
//! [`PresenceStore`] ([`MemoryPresence`] or [`RedisPresence`]) and publishes changes
//! through the engine.

mod redis;
mod store;
mod tracker;

pub use redis::RedisPresence;
pub use store::{MemoryPresence, PresenceStore, effective, presence_of};
pub use tracker::{Action, Tracker, TrackerConfig};

use std::sync::Arc;
use std::time::Instant;

use rtgate_protocol::{RoomName, pb};
use tokio::sync::mpsc;

use crate::auth::PrincipalId;
use crate::connection::unix_ms;
use crate::engine::{Engine, EngineError};

/// Name of the events announcing presence and availability changes.
pub const PRESENCE_EVENT: &str = "presence.update";

/// Most entries in one presence event: large accounts get several small events rather
/// than one large frame per connection (which would also leave every connection's
/// socket buffer grown to its size).
pub const PRESENCE_EVENT_MAX_ENTRIES: usize = 64;

enum Input {
    Connected(PrincipalId),
    Disconnected(PrincipalId),
    Activity(PrincipalId),
}

/// The node's presence service.
pub struct PresenceService {
    input: mpsc::UnboundedSender<Input>,
    store: Arc<dyn PresenceStore>,
    engine: Arc<dyn Engine>,
}

impl std::fmt::Debug for PresenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresenceService")
    }
}

impl PresenceService {
    /// Starts the service of node `node_id`.
    pub fn start(
        node_id: String,
        config: TrackerConfig,
        store: Arc<dyn PresenceStore>,
        engine: Arc<dyn Engine>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(node_id, config, store.clone(), engine.clone(), rx));
        Arc::new(PresenceService {
            input: tx,
            store,
            engine,
        })
    }

    /// A connection of `who` was authenticated.
    pub fn connected(&self, who: PrincipalId) {
        let _ = self.input.send(Input::Connected(who));
    }

    /// A connection of `who` closed.
    pub fn disconnected(&self, who: PrincipalId) {
        let _ = self.input.send(Input::Disconnected(who));
    }

    /// `who` sent something.
    pub fn activity(&self, who: PrincipalId) {
        let _ = self.input.send(Input::Activity(who));
    }

    /// The presence of an account.
    pub async fn snapshot(&self, account: u64) -> Result<pb::Presence, EngineError> {
        self.store.snapshot(account, unix_ms()).await
    }

    /// Sets an agent's availability and, when it changed, tells the account room; returns
    /// the agent's entry.
    pub async fn set_availability(
        &self,
        account: u64,
        user: u64,
        availability: pb::Availability,
    ) -> Result<pb::Presence, EngineError> {
        let changed = self.store.set_availability(account, user, availability).await?;
        let who = PrincipalId {
            account,
            contact: false,
            id: user,
        };
        let presence = presence_of(self.store.entries(account, &[who], unix_ms()).await?);
        if changed {
            publish_presence(&*self.engine, account, presence.clone()).await?;
        }
        Ok(presence)
    }
}

/// Publishes the current entries of `who` to the account room, in events of at most
/// [`PRESENCE_EVENT_MAX_ENTRIES`] entries.
async fn announce(
    store: &dyn PresenceStore,
    engine: &dyn Engine,
    account: u64,
    who: &[PrincipalId],
) -> Result<(), EngineError> {
    for chunk in who.chunks(PRESENCE_EVENT_MAX_ENTRIES) {
        let entries = store.entries(account, chunk, unix_ms()).await?;
        publish_presence(engine, account, presence_of(entries)).await?;
    }
    Ok(())
}

/// Publishes one `presence.update` event to the account room.
async fn publish_presence(
    engine: &dyn Engine,
    account: u64,
    presence: pb::Presence,
) -> Result<(), EngineError> {
    let event = pb::Event {
        id: uuid::Uuid::new_v4().to_string(),
        name: PRESENCE_EVENT.into(),
        account_id: account,
        occurred_at_ms: unix_ms() as i64,
        payload: Some(pb::event::Payload::Presence(presence)),
        ..Default::default()
    };
    engine
        .publish(
            &RoomName::account(account),
            &prost::Message::encode_to_vec(&event),
            None,
        )
        .await
        .map(|_| ())
}

async fn run(
    node: String,
    config: TrackerConfig,
    store: Arc<dyn PresenceStore>,
    engine: Arc<dyn Engine>,
    mut input: mpsc::UnboundedReceiver<Input>,
) {
    let mut tracker = Tracker::new(config, Instant::now(), unix_ms());
    loop {
        while let Some(action) = tracker.poll_action() {
            let now_ms = unix_ms();
            let result = match action {
                Action::MarkOnline(who) => store.mark_online(who, &node, now_ms).await.map(|became| {
                    if became {
                        tracker.became(who, true, Instant::now());
                    }
                }),
                Action::MarkOffline(who) => store.mark_offline(who, &node, now_ms).await.map(|became| {
                    if became {
                        tracker.became(who, false, Instant::now());
                    }
                }),
                Action::TouchSeen(who, at) => store.touch_seen(who, at).await,
                Action::Refresh(held) => store.refresh(&node, &held, now_ms).await,
                Action::Reap(accounts) => store.reap(&accounts, now_ms).await.map(|gone| {
                    for who in gone {
                        tracker.became(who, false, Instant::now());
                    }
                }),
                Action::Publish { account, changes } => {
                    let who: Vec<PrincipalId> = changes.iter().map(|(w, _)| *w).collect();
                    announce(&*store, &*engine, account, &who).await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, "presence update failed");
            }
        }
        let deadline = tokio::time::Instant::from_std(tracker.poll_timeout());
        tokio::select! {
            msg = input.recv() => match msg {
                None => return,
                Some(Input::Connected(who)) => tracker.connected(who, Instant::now()),
                Some(Input::Disconnected(who)) => tracker.disconnected(who, Instant::now()),
                Some(Input::Activity(who)) => tracker.activity(who, Instant::now()),
            },
            _ = tokio::time::sleep_until(deadline) => tracker.handle_timeout(Instant::now()),
        }
    }
}
