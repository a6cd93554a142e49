//! The four delivery listeners, Chatwoot's Webhook, AgentBot, Hook and
//! InstallationWebhook listeners ported: from an event and the mirrored destinations they
//! decide which deliveries to queue, with which body. Sans-IO; the delivery engine makes
//! the requests.
//!
//! Bodies are the event's `webhook_payload` with `event` (the underscore name) and the
//! extras of the reference added: `changed_attributes` for updates and status changes,
//! `event_info` for widget events, `is_private` for typing.

use std::sync::Arc;

use bytes::Bytes;
use rtgate_protocol::pb::{self, ConversationStatus, DestinationKind, MessageType};
use serde_json::{Map, Value};

use super::directory::{Directory, hook_events};
use super::store::Destinations;
use crate::events::{Action, Listener, Skip, StateView};

/// Where listeners read the destinations from.
pub trait DirectorySource: Send + Sync {
    /// The destinations now.
    fn directory(&self) -> Arc<Directory>;
}

impl DirectorySource for Arc<Destinations> {
    fn directory(&self) -> Arc<Directory> {
        self.current()
    }
}

impl DirectorySource for Arc<Directory> {
    fn directory(&self) -> Arc<Directory> {
        self.clone()
    }
}

/// The stable id of the delivery of `event_id` to a destination, UUID-shaped (what
/// Chatwoot's `X-Chatwoot-Delivery` carries): the same however often the event is handled.
pub fn delivery_id(event_id: &str, kind: DestinationKind, destination_id: u64) -> String {
    crate::ids::derived_uuid(&[
        b"delivery",
        event_id.as_bytes(),
        kind.as_str_name().as_bytes(),
        &destination_id.to_be_bytes(),
    ])
}

/// The underscore name Chatwoot puts in `event`.
pub fn underscore(name: &str) -> String {
    name.replace('.', "_")
}

/// The event's `webhook_payload` with `extras` set on it; `None` when it has none.
fn compose(event: &pb::DomainEvent, extras: Vec<(&str, Value)>) -> Option<Bytes> {
    with_extras(payload(event)?, extras)
}

/// The event's `webhook_payload`, parsed; `None` when it has none.
fn payload(event: &pb::DomainEvent) -> Option<Map<String, Value>> {
    if event.webhook_payload.is_empty() {
        return None;
    }
    serde_json::from_str(&event.webhook_payload).ok()
}

/// A body: `payload` with `extras` set on it.
fn with_extras(mut payload: Map<String, Value>, extras: Vec<(&str, Value)>) -> Option<Bytes> {
    for (key, value) in extras {
        payload.insert(key.to_string(), value);
    }
    serde_json::to_vec(&payload).ok().map(Bytes::from)
}

/// `changed_attributes` as a JSON value (null when none were given, as Chatwoot's).
fn changed_attributes(event: &pb::DomainEvent) -> Value {
    serde_json::from_str(&event.changed_attributes).unwrap_or(Value::Null)
}

/// Whether the update changed nothing.
fn nothing_changed(event: &pb::DomainEvent) -> bool {
    match changed_attributes(event) {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn event_info(event: &pb::DomainEvent) -> Value {
    serde_json::from_str(&event.event_info).unwrap_or_else(|_| Value::Object(Map::new()))
}

/// Incoming, outgoing or template: the messages webhooks and bots receive (Chatwoot's
/// `webhook_sendable?`); activity messages are not.
fn sendable_message(event: &pb::DomainEvent) -> bool {
    event.message.as_ref().is_some_and(|m| {
        matches!(
            m.message_type(),
            MessageType::Incoming | MessageType::Outgoing | MessageType::Template
        )
    })
}

/// The inbox of the event: its conversation's, else its own.
fn inbox_of(event: &pb::DomainEvent) -> u64 {
    match event.conversation.as_ref().map(|c| c.inbox_id) {
        Some(id) if id > 0 => id,
        _ => event.inbox_id,
    }
}

/// One delivery of `event` with `body` to a destination.
pub(crate) struct To<'a> {
    pub kind: DestinationKind,
    pub id: u64,
    pub url: &'a str,
    pub secret: &'a str,
    pub headers: &'a [pb::Header],
}

/// The delivery of `event` with `body` to `to`.
pub(crate) fn delivery(event: &pb::DomainEvent, to: To<'_>, body: Bytes) -> pb::Delivery {
    pb::Delivery {
        id: delivery_id(&event.id, to.kind, to.id),
        kind: to.kind as i32,
        destination_id: to.id,
        url: to.url.to_string(),
        secret: to.secret.to_string(),
        headers: to.headers.to_vec(),
        body,
        event_id: event.id.clone(),
        event: underscore(&event.name),
        account_id: event.account_id,
        conversation_display_id: event.conversation.as_ref().map_or(0, |c| c.display_id),
        message_id: event.message.as_ref().map_or(0, |m| m.id),
        occurred_at_ms: event.occurred_at_ms,
        ..Default::default()
    }
}

fn deliveries(list: Vec<pb::Delivery>) -> Result<Vec<Action>, Skip> {
    if list.is_empty() {
        Err(Skip::NoDestination)
    } else {
        Ok(vec![Action::Deliver(list)])
    }
}

/// Chatwoot's WebhookListener: account webhooks by subscription, and the API inbox's
/// webhook for every inbox-scoped event.
pub struct WebhookListener<D> {
    source: D,
}

impl<D: DirectorySource> WebhookListener<D> {
    /// The listener over these destinations.
    pub fn new(source: D) -> Self {
        WebhookListener { source }
    }
}

/// Whether an event webhooks receive goes to the API inbox's webhook too.
fn inbox_scoped(name: &str) -> Option<bool> {
    Some(match name {
        "conversation.created"
        | "conversation.status_changed"
        | "conversation.updated"
        | "message.created"
        | "message.updated"
        | "webwidget.triggered"
        | "conversation.typing_on"
        | "conversation.typing_off" => true,
        "contact.created" | "contact.updated" | "inbox.created" | "inbox.updated" => false,
        _ => return None,
    })
}

impl<D: DirectorySource> Listener for WebhookListener<D> {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn handles(&self, event_name: &str) -> bool {
        inbox_scoped(event_name).is_some()
    }

    fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
        let Some(to_inbox) = inbox_scoped(&event.name) else {
            return Err(Skip::NotRouted);
        };
        let name = underscore(&event.name);
        let mut extras = vec![("event", Value::String(name.clone()))];
        match event.name.as_str() {
            "message.created" | "message.updated" if !sendable_message(event) => return Err(Skip::Filtered),
            "contact.updated" | "inbox.updated" if nothing_changed(event) => {
                return Err(Skip::NothingChanged);
            }
            "conversation.status_changed" | "conversation.updated" | "contact.updated" | "inbox.updated" => {
                extras.push(("changed_attributes", changed_attributes(event)));
            }
            "webwidget.triggered" => extras.push(("event_info", event_info(event))),
            "conversation.typing_on" | "conversation.typing_off" => extras.push((
                "is_private",
                Value::Bool(event.typing.as_ref().is_some_and(|t| t.private)),
            )),
            _ => {}
        }
        // Destinations first: most events of most accounts have none, and the body is
        // built only for those that do.
        let dir = self.source.directory();
        let mut targets: Vec<To<'_>> = dir
            .webhooks(event.account_id)
            .iter()
            .filter(|w| w.subscriptions.contains(&name))
            .map(|w| To {
                kind: DestinationKind::Webhook,
                id: w.id,
                url: &w.url,
                secret: &w.secret,
                headers: &w.headers,
            })
            .collect();
        if to_inbox
            && let Some(w) = dir.inbox_webhook(inbox_of(event))
            && w.account_id == event.account_id
        {
            targets.push(To {
                kind: DestinationKind::InboxWebhook,
                id: w.inbox_id,
                url: &w.url,
                secret: &w.secret,
                headers: &w.headers,
            });
        }
        if targets.is_empty() {
            return Err(Skip::NoDestination);
        }
        let body = compose(event, extras).ok_or(Skip::NoPayload)?;
        deliveries(
            targets
                .into_iter()
                .map(|to| delivery(event, to, body.clone()))
                .collect(),
        )
    }
}

/// Chatwoot's AgentBotListener: the conversation's assigned bot and the inbox's active
/// bot, once each.
pub struct AgentBotListener<D> {
    source: D,
}

impl<D: DirectorySource> AgentBotListener<D> {
    /// The listener over these destinations.
    pub fn new(source: D) -> Self {
        AgentBotListener { source }
    }
}

const AGENT_BOT_EVENTS: [&str; 7] = [
    "conversation.resolved",
    "conversation.opened",
    "conversation.status_changed",
    "conversation.updated",
    "message.created",
    "message.updated",
    "webwidget.triggered",
];

impl<D: DirectorySource> Listener for AgentBotListener<D> {
    fn name(&self) -> &'static str {
        "agent_bot"
    }

    fn handles(&self, event_name: &str) -> bool {
        AGENT_BOT_EVENTS.contains(&event_name)
    }

    fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
        if !self.handles(&event.name) {
            return Err(Skip::NotRouted);
        }
        let mut extras = vec![("event", Value::String(underscore(&event.name)))];
        match event.name.as_str() {
            "message.created" | "message.updated" if !sendable_message(event) => return Err(Skip::Filtered),
            "conversation.status_changed" | "conversation.updated" => {
                extras.push(("changed_attributes", changed_attributes(event)))
            }
            "webwidget.triggered" => extras.push(("event_info", event_info(event))),
            _ => {}
        }
        let dir = self.source.directory();
        let mut bots = Vec::with_capacity(2);
        // The widget's event goes to the inbox's bot only.
        if event.name != "webwidget.triggered"
            && let Some(bot) = event
                .conversation
                .as_ref()
                .filter(|c| c.assignee_bot_id > 0)
                .and_then(|c| dir.agent_bot(c.assignee_bot_id))
        {
            bots.push(bot);
        }
        if let Some(bot) = dir.inbox_bot(inbox_of(event))
            && !bots.iter().any(|b| b.id == bot.id)
        {
            bots.push(bot);
        }
        bots.retain(|b| !b.url.is_empty() && (b.account_id == 0 || b.account_id == event.account_id));
        if bots.is_empty() {
            return Err(Skip::NoDestination);
        }
        let body = compose(event, extras).ok_or(Skip::NoPayload)?;
        let out = bots
            .into_iter()
            .map(|b| {
                let to = To {
                    kind: DestinationKind::AgentBot,
                    id: b.id,
                    url: &b.url,
                    secret: &b.secret,
                    headers: &b.headers,
                };
                delivery(event, to, body.clone())
            })
            .collect();
        deliveries(out)
    }
}

/// Chatwoot's HookListener: integration hooks of the account, each only for the events
/// its app supports; the vendor calls are the endpoint's business.
pub struct HookListener<D> {
    source: D,
}

impl<D: DirectorySource> HookListener<D> {
    /// The listener over these destinations.
    pub fn new(source: D) -> Self {
        HookListener { source }
    }
}

impl<D: DirectorySource> Listener for HookListener<D> {
    fn name(&self) -> &'static str {
        "hook"
    }

    fn handles(&self, event_name: &str) -> bool {
        matches!(
            event_name,
            "message.created"
                | "message.updated"
                | "contact.created"
                | "contact.updated"
                | "conversation.created"
                | "conversation.resolved"
        )
    }

    fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
        if !self.handles(&event.name) {
            return Err(Skip::NotRouted);
        }
        let name = underscore(&event.name);
        // Messages go to inbox-bound hooks of their inbox too; the rest to account-level
        // hooks only.
        let messages = event.name.starts_with("message.");
        if event.name == "conversation.resolved"
            && event.conversation.as_ref().map(|c| c.status()) != Some(ConversationStatus::Resolved)
        {
            return Err(Skip::Filtered);
        }
        let inbox = inbox_of(event);
        let dir = self.source.directory();
        let hooks: Vec<&pb::Hook> = dir
            .hooks(event.account_id)
            .iter()
            .filter(|h| h.enabled)
            .filter(|h| h.inbox_id == 0 || (messages && h.inbox_id == inbox))
            .filter(|h| hook_events(h).contains(&name.as_str()))
            .collect();
        if hooks.is_empty() {
            return Err(Skip::NoDestination);
        }
        // Parsed once; each hook's body differs only in its `hook` key.
        let base = payload(event).ok_or(Skip::NoPayload)?;
        let mut out = Vec::with_capacity(hooks.len());
        for h in hooks {
            let mut extras = vec![
                ("event", Value::String(name.clone())),
                (
                    "hook",
                    serde_json::json!({"id": h.id, "app_id": h.app_id, "inbox_id": h.inbox_id}),
                ),
            ];
            if event.name == "contact.updated" {
                extras.push(("changed_attributes", changed_attributes(event)));
            }
            let body = with_extras(base.clone(), extras).ok_or(Skip::NoPayload)?;
            let to = To {
                kind: DestinationKind::Hook,
                id: h.id,
                url: &h.url,
                secret: &h.secret,
                headers: &h.headers,
            };
            out.push(delivery(event, to, body));
        }
        deliveries(out)
    }
}

/// Chatwoot's InstallationWebhookListener: `account_created` to the installation's URL,
/// unsigned.
pub struct InstallationWebhookListener<D> {
    source: D,
}

impl<D: DirectorySource> InstallationWebhookListener<D> {
    /// The listener over these destinations.
    pub fn new(source: D) -> Self {
        InstallationWebhookListener { source }
    }
}

impl<D: DirectorySource> Listener for InstallationWebhookListener<D> {
    fn name(&self) -> &'static str {
        "installation_webhook"
    }

    fn handles(&self, event_name: &str) -> bool {
        event_name == "account.created"
    }

    fn decide(&mut self, event: &pb::DomainEvent, _state: &StateView) -> Result<Vec<Action>, Skip> {
        if !self.handles(&event.name) {
            return Err(Skip::NotRouted);
        }
        let dir = self.source.directory();
        let Some(target) = dir.installation().filter(|i| !i.url.is_empty()) else {
            return Err(Skip::NoDestination);
        };
        let body =
            compose(event, vec![("event", Value::String(underscore(&event.name)))]).ok_or(Skip::NoPayload)?;
        let to = To {
            kind: DestinationKind::Installation,
            id: 0,
            url: &target.url,
            secret: "",
            headers: &target.headers,
        };
        deliveries(vec![delivery(event, to, body)])
    }
}

#[cfg(test)]
mod tests;
