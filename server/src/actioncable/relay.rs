//! The relay of an unchanged Rails: the broadcasts Rails' ActionCable Redis adapter
//! publishes (one `PUBLISH <channel_prefix>:<broadcasting> {"event":…,"data":…}` per
//! pubsub token or `account_<id>`) are taken into rtgate's rooms — a user's token into
//! `user:ID`, a contact inbox's into `contact:ID`, `account_<id>` into `account:ID` — with
//! history and positions, so every node's `/cable` (and native) subscribers get them,
//! and a reconnecting client what it missed. Typing goes as ephemeral, as rtgate's own.
//!
//! Pub/sub delivers each broadcast to every subscriber: with several nodes one of them
//! relays at a time (the holder of a lease in rtgate's Redis), so that each broadcast is
//! taken in once. A stopping relay gives the lease up; while it passes on from a relay that
//! died (at most the lease's time) broadcasts are not taken in: Rails' pub/sub keeps
//! nothing for later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use rtgate_protocol::{RoomName, pb};
use serde_json::value::RawValue;

use super::Cable;
use crate::engine::{EngineError, RedisCommands, with_timeout};
use crate::node::Node;

/// How long the relay's lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(3);

/// How long the relay remembers whose a token is.
const TOKEN_CACHE: Duration = Duration::from_secs(10);

/// Where a broadcast goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcasting<'a> {
    /// `account_<id>`.
    Account(u64),
    /// A pubsub token.
    Token(&'a str),
}

/// The broadcasting a Redis channel names, when it is under `prefix`.
pub fn broadcasting<'a>(channel: &'a str, prefix: &str) -> Option<Broadcasting<'a>> {
    let name = channel.strip_prefix(prefix)?.strip_prefix(':')?;
    if let Some(id) = name.strip_prefix("account_") {
        return id.parse().ok().filter(|id| *id > 0).map(Broadcasting::Account);
    }
    (!name.is_empty()).then_some(Broadcasting::Token(name))
}

/// A broadcast's event: its name, its data (raw JSON) and the `account_id` in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// `event`.
    pub name: String,
    /// `data`, byte for byte.
    pub data: String,
    /// `data.account_id` (0 when absent).
    pub account_id: u64,
}

/// Parses a broadcast as Chatwoot makes them (`{"event": …, "data": {…}}`).
pub fn parse_broadcast(payload: &[u8]) -> Option<Relayed> {
    #[derive(serde::Deserialize)]
    struct Broadcast<'a> {
        event: String,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    #[derive(serde::Deserialize)]
    struct Account {
        account_id: Option<serde_json::Value>,
    }
    let b: Broadcast = serde_json::from_slice(payload).ok()?;
    if b.event.is_empty() {
        return None;
    }
    let account_id = serde_json::from_str::<Account>(b.data.get())
        .ok()
        .and_then(|a| a.account_id)
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .unwrap_or(0);
    Some(Relayed {
        name: b.event,
        data: b.data.get().to_string(),
        account_id,
    })
}

/// The room of a token's record.
pub fn room_of(record: &pb::PubsubToken) -> Option<RoomName> {
    match (record.user_id, record.contact_inbox_id) {
        (0, 0) => None,
        (0, id) => Some(RoomName::contact(id)),
        (id, _) => Some(RoomName::user(id)),
    }
}

/// Whether an event is typing: ephemeral, not stored.
fn is_typing(name: &str) -> bool {
    matches!(name, "conversation.typing_on" | "conversation.typing_off")
}

/// Where the relay listens and who may relay.
pub struct RelayConfig {
    /// The Redis Rails' ActionCable adapter publishes on.
    pub url: String,
    /// Rails' `channel_prefix` (`chatwoot_<env>_action_cable`).
    pub channel_prefix: String,
    /// rtgate's own Redis, where the lease is kept (none on the embedded engine: this
    /// node is the only one).
    pub lease: Option<(Arc<RedisCommands>, String)>,
}

/// Gives the lease up (a stopping node), so that another node relays at once.
async fn release(lease: &Option<(Arc<RedisCommands>, String)>, node_id: &str) {
    if let Some((commands, key)) = lease {
        let script = redis::Script::new(crate::events::queue::LEASE_RELEASE);
        let mut inv = script.prepare_invoke();
        inv.key(key).arg(node_id);
        let _ = commands.call::<i64>(inv).await;
    }
}

struct Relay {
    node: Arc<Node>,
    cable: Arc<Cable>,
    prefix: String,
    tokens: HashMap<String, (Instant, Option<RoomName>)>,
}

impl Relay {
    async fn room(&mut self, to: Broadcasting<'_>) -> Result<Option<RoomName>, EngineError> {
        let token = match to {
            Broadcasting::Account(id) => return Ok(Some(RoomName::account(id))),
            Broadcasting::Token(token) => token,
        };
        let key = super::tokens::token_key(token);
        if let Some((at, room)) = self.tokens.get(&key)
            && at.elapsed() < TOKEN_CACHE
        {
            return Ok(room.clone());
        }
        let record = self.cable.store.token(&key).await?;
        let room = record
            .as_deref()
            .and_then(super::tokens::decode_record)
            .as_ref()
            .and_then(room_of);
        if self.tokens.len() > 100_000 {
            self.tokens.retain(|_, (at, _)| at.elapsed() < TOKEN_CACHE);
        }
        self.tokens.insert(key, (Instant::now(), room.clone()));
        Ok(room)
    }

    /// Takes one broadcast in; the outcome's label.
    async fn relay(&mut self, channel: &str, payload: &[u8]) -> &'static str {
        let Some(to) = broadcasting(channel, &self.prefix) else {
            return "not_a_broadcasting";
        };
        let Some(relayed) = parse_broadcast(payload) else {
            return "malformed";
        };
        let room = match self.room(to).await {
            Ok(Some(room)) => room,
            Ok(None) => return "unknown_token",
            Err(err) => {
                tracing::warn!(%err, "a Rails broadcast is lost: its token cannot be looked up");
                return "failed";
            }
        };
        let event = pb::Event {
            id: uuid::Uuid::new_v4().to_string(),
            name: relayed.name,
            account_id: relayed.account_id,
            occurred_at_ms: crate::connection::unix_ms() as i64,
            json: relayed.data,
            ..Default::default()
        };
        let result = if is_typing(&event.name) {
            let frame = pb::ServerFrame {
                kind: Some(pb::server_frame::Kind::Ephemeral(pb::Ephemeral {
                    room: room.to_string(),
                    event: Some(event),
                })),
            };
            with_timeout(
                self.node
                    .engine
                    .publish_ephemeral(&room, frame.encode_to_vec().into(), None, false),
            )
            .await
        } else {
            with_timeout(self.node.engine.publish(&room, &event.encode_to_vec(), None))
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => "published",
            Err(err) => {
                tracing::warn!(%err, %room, "a Rails broadcast is lost: it cannot be published");
                "failed"
            }
        }
    }
}

/// Relays until shutdown.
pub async fn run(
    node: Arc<Node>,
    cable: Arc<Cable>,
    config: RelayConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = match redis::Client::open(config.url.as_str()) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(%err, "the Rails broadcast relay cannot use its Redis URL");
            return;
        }
    };
    let renew = redis::Script::new(crate::events::queue::LEASE_RENEW);
    let node_id = node.session.node_id.clone();
    let holds = |lease: &Option<(Arc<RedisCommands>, String)>| {
        let renew = &renew;
        let node_id = node_id.clone();
        let lease = lease.clone();
        async move {
            let Some((commands, key)) = lease else { return true };
            let mut inv = renew.prepare_invoke();
            inv.key(key).arg(node_id).arg(LEASE.as_millis() as u64);
            // 1: renewed, 2: taken now.
            matches!(commands.call::<i64>(inv).await, Ok(1 | 2))
        }
    };
    let mut relay = Relay {
        node,
        cable,
        prefix: config.channel_prefix.clone(),
        tokens: HashMap::new(),
    };
    metrics::gauge!("rtgate_cable_relay_active").set(0.0);
    let pattern = format!("{}:*", config.channel_prefix);
    let mut tick = tokio::time::interval(LEASE / 3);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !holds(&config.lease).await {
            tokio::select! {
                _ = tick.tick() => continue,
                _ = shutdown.changed() => return,
            }
        }
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(err) => {
                tracing::warn!(%err, "the Rails broadcast relay cannot reach Rails' Redis");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        if let Err(err) = pubsub.psubscribe(&pattern).await {
            tracing::warn!(%err, "the Rails broadcast relay cannot subscribe");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = shutdown.changed() => return,
            }
        }
        tracing::info!(pattern, "relaying Rails' ActionCable broadcasts");
        metrics::gauge!("rtgate_cable_relay_active").set(1.0);
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        tracing::warn!("the Rails broadcast relay lost Rails' Redis; reconnecting");
                        break;
                    };
                    let outcome = relay.relay(message.get_channel_name(), message.get_payload_bytes()).await;
                    metrics::counter!("rtgate_cable_relayed_total", "outcome" => outcome).increment(1);
                }
                _ = tick.tick() => {
                    if !holds(&config.lease).await {
                        tracing::info!("another node relays Rails' broadcasts now");
                        break;
                    }
                }
                _ = shutdown.changed() => {
                    metrics::gauge!("rtgate_cable_relay_active").set(0.0);
                    release(&config.lease, &node_id).await;
                    return;
                }
            }
        }
        metrics::gauge!("rtgate_cable_relay_active").set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "chatwoot_production_action_cable";

    #[test]
    fn channels_name_an_account_or_a_token_under_the_prefix() {
        let c = |s: &str| format!("{PREFIX}:{s}");
        assert_eq!(
            broadcasting(&c("account_12"), PREFIX),
            Some(Broadcasting::Account(12))
        );
        assert_eq!(
            broadcasting(&c("Xy12abc"), PREFIX),
            Some(Broadcasting::Token("Xy12abc"))
        );
        assert_eq!(broadcasting(&c("account_0"), PREFIX), None);
        assert_eq!(broadcasting(&c("account_x"), PREFIX), None);
        assert_eq!(broadcasting(&c(""), PREFIX), None);
        assert_eq!(broadcasting("other_prefix:tok", PREFIX), None);
        assert_eq!(broadcasting(&format!("{PREFIX}tok"), PREFIX), None);
    }

    #[test]
    fn broadcasts_are_parsed_as_chatwoot_makes_them() {
        let b =
            parse_broadcast(br#"{"event":"message.created","data":{"id":9,"account_id":3,"content":"hi"}}"#)
                .unwrap();
        assert_eq!(b.name, "message.created");
        assert_eq!(b.account_id, 3);
        assert_eq!(b.data, r#"{"id":9,"account_id":3,"content":"hi"}"#);
        assert_eq!(
            parse_broadcast(br#"{"event":"x","data":{"account_id":"4"}}"#)
                .unwrap()
                .account_id,
            4
        );
        assert_eq!(
            parse_broadcast(br#"{"event":"x","data":[]}"#).unwrap().account_id,
            0
        );
        for bad in [
            &b""[..],
            b"{}",
            b"[]",
            br#"{"event":"x"}"#,
            br#"{"data":{}}"#,
            br#"{"event":"","data":{}}"#,
        ] {
            assert_eq!(parse_broadcast(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_token_record_names_its_room() {
        let user = pb::PubsubToken {
            user_id: 7,
            ..Default::default()
        };
        let contact = pb::PubsubToken {
            contact_inbox_id: 501,
            account_id: 1,
            ..Default::default()
        };
        assert_eq!(room_of(&user), Some(RoomName::user(7)));
        assert_eq!(room_of(&contact), Some(RoomName::contact(501)));
        assert_eq!(room_of(&pb::PubsubToken::default()), None);
        assert!(is_typing("conversation.typing_on") && !is_typing("message.created"));
    }
}
