//! Drop-in for Rails' ActionCable, so that Chatwoot's unchanged frontend
//! (`@rails/actioncable`) can connect to rtgate: the wire protocol ([`wire`]), who a
//! `RoomChannel` subscription is ([`tokens`]), the translation between ActionCable and
//! rtgate's own session ([`adapter`]), and the relay of the broadcasts an unchanged Rails
//! publishes into rtgate's rooms ([`relay`]). The transport itself is
//! [`crate::transport::actioncable`].

pub mod adapter;
pub mod relay;
pub mod tokens;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use rtgate_protocol::pb;

use crate::auth::Principal;
use crate::delivery::store::Destinations;
use crate::engine::EngineError;
use tokens::{CableStore, Rejection};

/// Why `/cable` connections of a rotated or deleted token are closed.
pub const TOKEN_DROPPED: &str = "pubsub token rotated or removed";

/// How long the positions of a `/cable` connection closed by a restart are kept for the
/// client's resubscription.
pub const RESUME_TTL: Duration = Duration::from_secs(120);

/// What `/cable` connections need besides the node.
pub struct Cable {
    /// Token records and resume positions.
    pub store: Arc<dyn CableStore>,
    /// The mirror (account users and inboxes), for who an agent is.
    pub destinations: Arc<Destinations>,
}

impl std::fmt::Debug for Cable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cable").finish_non_exhaustive()
    }
}

/// Who subscribed, found from a `RoomChannel`'s parameters.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The session's principal.
    pub principal: Principal,
    /// The token's key.
    pub token_key: String,
    /// Where to resume, when a connection of this token was closed by a restart.
    pub recover: Vec<pb::RoomPosition>,
}

impl Cable {
    /// Closes the node's `/cable` connections whose token is no longer mirrored (its
    /// removal was missed, e.g. while Redis was away); how many were asked to close.
    pub async fn check_tokens(&self, node: &crate::node::Node) -> Result<usize, EngineError> {
        let keys = node.cable_tokens();
        let exist = self.store.tokens_exist(&keys).await?;
        Ok(keys
            .iter()
            .zip(exist)
            .filter(|(_, exists)| !exists)
            .map(|(key, _)| node.kick_cable_token(key, TOKEN_DROPPED))
            .sum())
    }

    /// Runs [`Cable::check_tokens`] every `every` until shutdown.
    pub async fn run_token_checks(
        self: Arc<Self>,
        node: Arc<crate::node::Node>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => match self.check_tokens(&node).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(connections = n, "closed /cable connections of tokens no longer mirrored"),
                    Err(err) => tracing::debug!(%err, "cannot check /cable tokens now"),
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Resolves a subscription: `Ok(Err(_))` when it is rejected, `Err` when the stores
    /// cannot be read (the connection is then closed and the client retries).
    pub async fn lookup(
        &self,
        params: &wire::RoomParams,
    ) -> Result<Result<Subscriber, Rejection>, EngineError> {
        let key = tokens::token_key(&params.pubsub_token);
        let record = self.store.token(&key).await?;
        let record = record.as_deref().and_then(tokens::decode_record);
        if record.as_ref().is_some_and(|r| r.user_id != 0) {
            // Agents are resolved against the mirror: bring it up to date first.
            self.destinations.sync().await?;
        }
        let directory = self.destinations.current();
        let principal = match tokens::resolve(record.as_ref(), params, directory.mirror()) {
            Ok(p) => p,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let recover = match self.store.take_resume(&key).await? {
            Some(entry) => adapter::parse_resume(&entry),
            None => Vec::new(),
        };
        Ok(Ok(Subscriber {
            principal,
            token_key: key,
            recover,
        }))
    }
}
