//! What the backend mirrors into rtgate: the destinations deliveries go to (account
//! webhooks, API inbox webhooks, agent bots and the inboxes where each is active,
//! integration hooks, the installation webhook) and the configuration of the business
//! listeners ([`Mirror`]). Pure: records in, indexes out, and the checks a record
//! passes before it is stored.

use std::collections::HashMap;

use prost::Message;
use rtgate_protocol::pb;

use crate::events::mirror::Mirror;

/// The underscore event names an account webhook may subscribe to (Chatwoot's allowed
/// list).
pub const WEBHOOK_EVENTS: [&str; 12] = [
    "conversation_created",
    "conversation_status_changed",
    "conversation_updated",
    "contact_created",
    "contact_updated",
    "message_created",
    "message_updated",
    "webwidget_triggered",
    "inbox_created",
    "inbox_updated",
    "conversation_typing_on",
    "conversation_typing_off",
];

/// The integration apps rtgate knows, and the events each supports (Chatwoot's hook
/// listener); other apps say theirs in `Hook.events`.
pub const HOOK_APPS: [(&str, &[&str]); 5] = [
    ("slack", &["message_created", "message_updated"]),
    ("dialogflow", &["message_created", "message_updated"]),
    ("google_translate", &["message_created"]),
    (
        "leadsquared",
        &["contact_updated", "conversation_created", "conversation_resolved"],
    ),
    ("linear", &["message_created"]),
];

/// What a stored record is: its collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    /// Account webhooks, by webhook id.
    Webhook,
    /// API inbox webhooks, by inbox id.
    InboxWebhook,
    /// Agent bots, by bot id.
    AgentBot,
    /// Integration hooks, by hook id.
    Hook,
    /// The installation webhook (one, id 0).
    Installation,
    /// Inbox settings (members, business hours, CSAT), by inbox id.
    Inbox,
    /// Account users (role, notification settings), by account-user id.
    AccountUser,
    /// Teams, by team id.
    Team,
    /// Campaigns, by campaign id.
    Campaign,
    /// Automation rules, by rule id.
    AutomationRule,
}

impl Collection {
    /// Every collection.
    pub const ALL: [Collection; 10] = [
        Collection::Webhook,
        Collection::InboxWebhook,
        Collection::AgentBot,
        Collection::Hook,
        Collection::Installation,
        Collection::Inbox,
        Collection::AccountUser,
        Collection::Team,
        Collection::Campaign,
        Collection::AutomationRule,
    ];

    /// Whether it is configuration the business listeners read (`/api/v1/mirror/...`)
    /// rather than a destination (`/api/v1/destinations/...`).
    pub fn is_mirror(self) -> bool {
        matches!(
            self,
            Collection::Inbox
                | Collection::AccountUser
                | Collection::Team
                | Collection::Campaign
                | Collection::AutomationRule
        )
    }

    /// Its name in store keys and API paths.
    pub fn label(self) -> &'static str {
        match self {
            Collection::Webhook => "webhooks",
            Collection::InboxWebhook => "inbox-webhooks",
            Collection::AgentBot => "agent-bots",
            Collection::Hook => "hooks",
            Collection::Installation => "installation",
            Collection::Inbox => "inboxes",
            Collection::AccountUser => "account-users",
            Collection::Team => "teams",
            Collection::Campaign => "campaigns",
            Collection::AutomationRule => "automation-rules",
        }
    }

    /// The collection named `label`.
    pub fn from_label(label: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.label() == label)
    }

    /// The store key of record `id`.
    pub fn key(self, id: u64) -> String {
        format!("{}:{id}", self.label())
    }
}

/// Splits a store key into its collection and id.
pub fn parse_key(key: &str) -> Option<(Collection, u64)> {
    let (label, id) = key.split_once(':')?;
    Some((Collection::from_label(label)?, id.parse().ok()?))
}

/// Where an event's deliveries may go, indexed for the listeners.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    webhooks: HashMap<u64, Vec<pb::Webhook>>,
    inbox_webhooks: HashMap<u64, pb::InboxWebhook>,
    agent_bots: HashMap<u64, pb::AgentBot>,
    inbox_bots: HashMap<u64, u64>,
    hooks: HashMap<u64, Vec<pb::Hook>>,
    installation: Option<pb::InstallationWebhook>,
    mirror: Mirror,
}

impl Directory {
    /// The directory of these stored records (`(key, protobuf)`); records that do not
    /// decode are left out and returned by key.
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (Directory, Vec<String>) {
        let mut dir = Directory::default();
        let mut bad = Vec::new();
        for (key, bytes) in records {
            let ok = match parse_key(key) {
                Some((Collection::Webhook, _)) => {
                    pb::Webhook::decode(bytes).map(|w| dir.add_webhook(w)).is_ok()
                }
                Some((Collection::InboxWebhook, _)) => pb::InboxWebhook::decode(bytes)
                    .map(|w| {
                        dir.inbox_webhooks.insert(w.inbox_id, w);
                    })
                    .is_ok(),
                Some((Collection::AgentBot, _)) => {
                    pb::AgentBot::decode(bytes).map(|b| dir.add_bot(b)).is_ok()
                }
                Some((Collection::Hook, _)) => pb::Hook::decode(bytes)
                    .map(|h| dir.hooks.entry(h.account_id).or_default().push(h))
                    .is_ok(),
                Some((Collection::Installation, _)) => pb::InstallationWebhook::decode(bytes)
                    .map(|i| dir.installation = Some(i))
                    .is_ok(),
                Some((Collection::Inbox, _)) => pb::InboxSettings::decode(bytes)
                    .map(|i| dir.mirror.add_inbox(i))
                    .is_ok(),
                Some((Collection::AccountUser, _)) => pb::AccountUser::decode(bytes)
                    .map(|u| dir.mirror.add_account_user(u))
                    .is_ok(),
                Some((Collection::Team, _)) => {
                    pb::Team::decode(bytes).map(|t| dir.mirror.add_team(t)).is_ok()
                }
                Some((Collection::Campaign, _)) => pb::Campaign::decode(bytes)
                    .map(|c| dir.mirror.add_campaign(c))
                    .is_ok(),
                Some((Collection::AutomationRule, _)) => pb::AutomationRule::decode(bytes)
                    .map(|r| dir.mirror.add_rule(r))
                    .is_ok(),
                None => false,
            };
            if !ok {
                bad.push(key.to_string());
            }
        }
        // Lists in id order, whatever order the store gave.
        for list in dir.webhooks.values_mut() {
            list.sort_by_key(|w| w.id);
        }
        for list in dir.hooks.values_mut() {
            list.sort_by_key(|h| h.id);
        }
        (dir, bad)
    }

    /// A directory holding only this mirror (no destinations), for the listeners' tests.
    #[cfg(test)]
    pub fn from_mirror(mirror: Mirror) -> Directory {
        Directory {
            mirror,
            ..Directory::default()
        }
    }

    fn add_webhook(&mut self, webhook: pb::Webhook) {
        self.webhooks.entry(webhook.account_id).or_default().push(webhook);
    }

    fn add_bot(&mut self, bot: pb::AgentBot) {
        for inbox in &bot.inbox_ids {
            // One active bot per inbox: the lowest id wins if the mirror lists two.
            let slot = self.inbox_bots.entry(*inbox).or_insert(bot.id);
            *slot = (*slot).min(bot.id);
        }
        self.agent_bots.insert(bot.id, bot);
    }

    /// The account's webhooks, in id order.
    pub fn webhooks(&self, account_id: u64) -> &[pb::Webhook] {
        self.webhooks.get(&account_id).map_or(&[], Vec::as_slice)
    }

    /// The API inbox webhook of an inbox.
    pub fn inbox_webhook(&self, inbox_id: u64) -> Option<&pb::InboxWebhook> {
        self.inbox_webhooks.get(&inbox_id)
    }

    /// An agent bot.
    pub fn agent_bot(&self, id: u64) -> Option<&pb::AgentBot> {
        self.agent_bots.get(&id)
    }

    /// The bot active in an inbox.
    pub fn inbox_bot(&self, inbox_id: u64) -> Option<&pb::AgentBot> {
        self.inbox_bots
            .get(&inbox_id)
            .and_then(|id| self.agent_bots.get(id))
    }

    /// The account's hooks, in id order.
    pub fn hooks(&self, account_id: u64) -> &[pb::Hook] {
        self.hooks.get(&account_id).map_or(&[], Vec::as_slice)
    }

    /// The installation webhook.
    pub fn installation(&self) -> Option<&pb::InstallationWebhook> {
        self.installation.as_ref()
    }

    /// The mirrored configuration of the business listeners.
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// Every record of a collection, in id order, secrets and header values left out.
    pub fn list(&self, collection: Collection) -> Vec<Listed> {
        let mut out: Vec<Listed> = match collection {
            Collection::Webhook => self
                .webhooks
                .values()
                .flatten()
                .cloned()
                .map(Listed::Webhook)
                .collect(),
            Collection::InboxWebhook => self
                .inbox_webhooks
                .values()
                .cloned()
                .map(Listed::InboxWebhook)
                .collect(),
            Collection::AgentBot => self.agent_bots.values().cloned().map(Listed::AgentBot).collect(),
            Collection::Hook => self.hooks.values().flatten().cloned().map(Listed::Hook).collect(),
            Collection::Installation => self
                .installation
                .iter()
                .cloned()
                .map(Listed::Installation)
                .collect(),
            Collection::Inbox => self.mirror.inboxes().into_iter().map(Listed::Inbox).collect(),
            Collection::AccountUser => self
                .mirror
                .account_users()
                .into_iter()
                .map(Listed::AccountUser)
                .collect(),
            Collection::Team => self.mirror.teams().into_iter().map(Listed::Team).collect(),
            Collection::Campaign => self
                .mirror
                .campaigns()
                .into_iter()
                .map(Listed::Campaign)
                .collect(),
            Collection::AutomationRule => self
                .mirror
                .rules()
                .into_iter()
                .map(Listed::AutomationRule)
                .collect(),
        };
        out.sort_by_key(Listed::id);
        out.into_iter().map(redacted).collect()
    }
}

/// Header names kept, values left out (they may carry credentials).
pub fn hidden_headers(headers: &[pb::Header]) -> Vec<pb::Header> {
    headers
        .iter()
        .map(|h| pb::Header {
            name: h.name.clone(),
            value: String::new(),
        })
        .collect()
}

/// A record as answered by the API: secret and header values left out, `has_secret` set.
pub fn redacted(listed: Listed) -> Listed {
    match listed {
        Listed::Webhook(w) => Listed::Webhook(pb::Webhook {
            has_secret: !w.secret.is_empty(),
            secret: String::new(),
            headers: hidden_headers(&w.headers),
            ..w
        }),
        Listed::InboxWebhook(w) => Listed::InboxWebhook(pb::InboxWebhook {
            has_secret: !w.secret.is_empty(),
            secret: String::new(),
            headers: hidden_headers(&w.headers),
            ..w
        }),
        Listed::AgentBot(b) => Listed::AgentBot(pb::AgentBot {
            has_secret: !b.secret.is_empty(),
            secret: String::new(),
            headers: hidden_headers(&b.headers),
            ..b
        }),
        Listed::Hook(h) => Listed::Hook(pb::Hook {
            has_secret: !h.secret.is_empty(),
            secret: String::new(),
            headers: hidden_headers(&h.headers),
            ..h
        }),
        Listed::Installation(i) => Listed::Installation(pb::InstallationWebhook {
            headers: hidden_headers(&i.headers),
            ..i
        }),
        mirrored => mirrored,
    }
}

/// A record of any collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    /// An account webhook.
    Webhook(pb::Webhook),
    /// An API inbox webhook.
    InboxWebhook(pb::InboxWebhook),
    /// An agent bot.
    AgentBot(pb::AgentBot),
    /// A hook.
    Hook(pb::Hook),
    /// The installation webhook.
    Installation(pb::InstallationWebhook),
    /// An inbox's settings.
    Inbox(pb::InboxSettings),
    /// An account user.
    AccountUser(pb::AccountUser),
    /// A team.
    Team(pb::Team),
    /// A campaign.
    Campaign(pb::Campaign),
    /// An automation rule.
    AutomationRule(pb::AutomationRule),
}

impl Listed {
    /// Its account (0 for the installation webhook, and for agent bots of any account).
    pub fn account_id(&self) -> u64 {
        match self {
            Listed::Webhook(w) => w.account_id,
            Listed::InboxWebhook(w) => w.account_id,
            Listed::AgentBot(b) => b.account_id,
            Listed::Hook(h) => h.account_id,
            Listed::Installation(_) => 0,
            Listed::Inbox(i) => i.account_id,
            Listed::AccountUser(u) => u.account_id,
            Listed::Team(t) => t.account_id,
            Listed::Campaign(c) => c.account_id,
            Listed::AutomationRule(r) => r.account_id,
        }
    }

    /// Its id in its collection.
    pub fn id(&self) -> u64 {
        match self {
            Listed::Webhook(w) => w.id,
            Listed::InboxWebhook(w) => w.inbox_id,
            Listed::AgentBot(b) => b.id,
            Listed::Hook(h) => h.id,
            Listed::Installation(_) => 0,
            Listed::Inbox(i) => i.inbox_id,
            Listed::AccountUser(u) => u.id,
            Listed::Team(t) => t.id,
            Listed::Campaign(c) => c.id,
            Listed::AutomationRule(r) => r.id,
        }
    }
}

/// Longest URL, secret, header value accepted.
const MAX_URL: usize = 2048;
const MAX_SECRET: usize = 256;
const MAX_HEADERS: usize = 16;
const MAX_HEADER_VALUE: usize = 1024;

/// Headers a destination may not set: those rtgate sets or that would change the request.
const RESERVED_HEADERS: [&str; 12] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "accept",
    "user-agent",
    "te",
    "upgrade",
    "x-chatwoot-delivery",
    "x-chatwoot-timestamp",
    "x-chatwoot-signature",
];

/// Checks a destination URL: absolute http(s), a host, no credentials, bounded length.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("url is longer than {MAX_URL} bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url is not valid: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("url must be http or https".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("url has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not carry credentials (use headers)".into());
    }
    Ok(())
}

fn check_common(url: &str, secret: &str, headers: &[pb::Header]) -> Result<(), String> {
    check_url(url)?;
    check_secret_and_headers(secret, headers)
}

fn check_secret_and_headers(secret: &str, headers: &[pb::Header]) -> Result<(), String> {
    if secret.len() > MAX_SECRET {
        return Err(format!("secret is longer than {MAX_SECRET} bytes"));
    }
    if headers.len() > MAX_HEADERS {
        return Err(format!("at most {MAX_HEADERS} headers"));
    }
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("header name {:?} is not valid", h.name));
        }
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!("header {:?} is set by rtgate", h.name));
        }
        if h.value.len() > MAX_HEADER_VALUE || reqwest::header::HeaderValue::from_str(&h.value).is_err() {
            return Err(format!("header {:?} has an invalid value", h.name));
        }
    }
    Ok(())
}

/// Checks an account webhook before it is stored.
pub fn check_webhook(w: &pb::Webhook) -> Result<(), String> {
    if w.id == 0 || w.account_id == 0 {
        return Err("id and account_id are required".into());
    }
    check_common(&w.url, &w.secret, &w.headers)?;
    if let Some(bad) = w
        .subscriptions
        .iter()
        .find(|s| !WEBHOOK_EVENTS.contains(&s.as_str()))
    {
        return Err(format!(
            "unknown subscription {bad:?} (one of {})",
            WEBHOOK_EVENTS.join(", ")
        ));
    }
    Ok(())
}

/// Checks an API inbox webhook before it is stored.
pub fn check_inbox_webhook(w: &pb::InboxWebhook) -> Result<(), String> {
    if w.inbox_id == 0 || w.account_id == 0 {
        return Err("inbox_id and account_id are required".into());
    }
    check_common(&w.url, &w.secret, &w.headers)
}

/// Checks an agent bot before it is stored.
pub fn check_agent_bot(b: &pb::AgentBot) -> Result<(), String> {
    if b.id == 0 {
        return Err("id is required".into());
    }
    // A bot without an outgoing URL is skipped by the listener, as in Chatwoot.
    if !b.url.is_empty() {
        check_url(&b.url)?;
    }
    check_secret_and_headers(&b.secret, &b.headers)?;
    if b.inbox_ids.len() > 10_000 {
        return Err("at most 10000 inbox_ids".into());
    }
    Ok(())
}

/// Checks a hook before it is stored.
pub fn check_hook(h: &pb::Hook) -> Result<(), String> {
    if h.id == 0 || h.account_id == 0 || h.app_id.is_empty() {
        return Err("id, account_id and app_id are required".into());
    }
    check_common(&h.url, &h.secret, &h.headers)?;
    if h.events.len() > 32 || h.events.iter().any(|e| e.is_empty() || e.len() > 64) {
        return Err("events: at most 32 names of 1 to 64 bytes".into());
    }
    Ok(())
}

/// Checks the installation webhook before it is stored.
pub fn check_installation(i: &pb::InstallationWebhook) -> Result<(), String> {
    check_common(&i.url, "", &i.headers)
}

/// The events a hook takes: its app's, or its own list for an app rtgate does not know.
pub fn hook_events(hook: &pb::Hook) -> Vec<&str> {
    match HOOK_APPS.iter().find(|(app, _)| *app == hook.app_id) {
        Some((_, events)) => events.to_vec(),
        None => hook.events.iter().map(String::as_str).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(id: u64, account: u64) -> pb::Webhook {
        pb::Webhook {
            id,
            account_id: account,
            url: "https://example.com/hook".into(),
            subscriptions: vec!["message_created".into()],
            secret: "s3cret".into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_are_indexed_and_listed_without_secrets() {
        let w2 = webhook(2, 1).encode_to_vec();
        let w1 = webhook(1, 1).encode_to_vec();
        let bot = pb::AgentBot {
            id: 9,
            url: "https://bot.example/in".into(),
            inbox_ids: vec![3, 4],
            ..Default::default()
        }
        .encode_to_vec();
        let records = [
            ("webhooks:2", w2.as_slice()),
            ("webhooks:1", w1.as_slice()),
            ("agent-bots:9", bot.as_slice()),
            ("hooks:5", b"\xff\xff".as_slice()),
            ("nonsense", b"".as_slice()),
        ];
        let (dir, bad) = Directory::from_records(records);
        assert_eq!(bad, ["hooks:5", "nonsense"]);
        assert_eq!(dir.webhooks(1).iter().map(|w| w.id).collect::<Vec<_>>(), [1, 2]);
        assert!(dir.webhooks(2).is_empty());
        assert_eq!(dir.inbox_bot(4).map(|b| b.id), Some(9));
        assert!(dir.inbox_bot(5).is_none());
        let listed = dir.list(Collection::Webhook);
        assert_eq!(listed.len(), 2);
        let Listed::Webhook(first) = &listed[0] else {
            panic!()
        };
        assert!(first.secret.is_empty() && first.has_secret);
    }

    #[test]
    fn keys_round_trip() {
        for c in Collection::ALL {
            assert_eq!(parse_key(&c.key(42)), Some((c, 42)));
        }
        assert_eq!(parse_key("webhooks:x"), None);
        assert_eq!(parse_key("bots:1"), None);
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        type Change = Box<dyn Fn(&mut pb::Webhook)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|w| w.url = "ftp://x/".into()), "http or https"),
            (Box::new(|w| w.url = "not a url".into()), "not valid"),
            (Box::new(|w| w.url = "https://u:p@x/".into()), "credentials"),
            (
                Box::new(|w| w.subscriptions = vec!["message.created".into()]),
                "unknown subscription",
            ),
            (Box::new(|w| w.account_id = 0), "required"),
            (
                Box::new(|w| {
                    w.headers = vec![pb::Header {
                        name: "Host".into(),
                        value: "x".into(),
                    }]
                }),
                "set by rtgate",
            ),
            (
                Box::new(|w| {
                    w.headers = vec![pb::Header {
                        name: "X-Ok".into(),
                        value: "a\nb".into(),
                    }]
                }),
                "invalid value",
            ),
        ];
        for (change, expected) in cases {
            let mut w = webhook(1, 1);
            change(&mut w);
            let err = check_webhook(&w).unwrap_err();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
        assert_eq!(check_webhook(&webhook(1, 1)), Ok(()));
    }

    #[test]
    fn known_apps_take_their_events_and_others_their_list() {
        let mut hook = pb::Hook {
            app_id: "leadsquared".into(),
            events: vec!["message_created".into()],
            ..Default::default()
        };
        assert_eq!(
            hook_events(&hook),
            ["contact_updated", "conversation_created", "conversation_resolved"]
        );
        hook.app_id = "crm_sync".into();
        assert_eq!(hook_events(&hook), ["message_created"]);
    }
}
