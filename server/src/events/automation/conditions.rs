//! Automation rule conditions, evaluated over an event's conversation, message and
//! changed attributes as Chatwoot's ConditionsFilterService does in SQL: each condition
//! joins the next with its `query_operator`, `and` binding tighter than `or`; an absent
//! attribute matches no comparison (SQL's NULL) but `is_not_present` (and
//! `not_equal_to` on labels: a conversation without labels has none of them);
//! `attribute_changed` conditions are applied after the others, as Chatwoot's are.

use chrono::{DateTime, NaiveDate};
use rtgate_protocol::pb;
use serde_json::Value;

/// The standard attributes conditions may name (custom ones set `custom_attribute_type`).
pub const ATTRIBUTES: [&str; 18] = [
    "status",
    "priority",
    "inbox_id",
    "assignee_id",
    "team_id",
    "labels",
    "browser_language",
    "conversation_language",
    "country_code",
    "referer",
    "mail_subject",
    "email",
    "phone_number",
    "message_type",
    "content",
    "private_note",
    "created_at",
    "last_activity_at",
];

/// One value of an attribute.
#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Text(String),
    /// Unix milliseconds.
    Time(i64),
}

/// What conditions are evaluated over: the event, and its conversation's webhook data.
pub struct Subject<'a> {
    event: &'a pb::DomainEvent,
    conversation: Value,
    changed: Vec<(String, Value, Value)>,
}

impl<'a> Subject<'a> {
    /// The subject of `event`: its conversation is the webhook payload (conversation
    /// events) or the payload's `conversation` (message events).
    pub fn new(event: &'a pb::DomainEvent) -> Self {
        let payload: Value = serde_json::from_str(&event.webhook_payload).unwrap_or(Value::Null);
        let conversation = if event.name.starts_with("message.") {
            payload.get("conversation").cloned().unwrap_or(Value::Null)
        } else {
            payload
        };
        Subject {
            event,
            conversation,
            changed: changed_attributes(&event.changed_attributes),
        }
    }

    /// The conversation's webhook data, if the event carries it.
    pub fn conversation(&self) -> Option<&serde_json::Map<String, Value>> {
        self.conversation.as_object()
    }

    fn lookup(&self, c: &pb::RuleCondition) -> Vec<Attr> {
        static NO_FACTS: std::sync::LazyLock<pb::ConversationFacts> =
            std::sync::LazyLock::new(Default::default);
        let facts = self.event.conversation.as_ref().unwrap_or(&NO_FACTS);
        let message = self.event.message.as_ref();
        let text = |s: String| if s.is_empty() { vec![] } else { vec![Attr::Text(s)] };
        let id = |n: u64| {
            if n == 0 {
                vec![]
            } else {
                vec![Attr::Text(n.to_string())]
            }
        };
        let json = |v: &Value| json_attrs(v);
        let conv = &self.conversation;
        match c.custom_attribute_type.as_str() {
            "conversation_attribute" => return json(&conv["custom_attributes"][&c.attribute_key]),
            "contact_attribute" => {
                return json(&conv["meta"]["sender"]["custom_attributes"][&c.attribute_key]);
            }
            _ => {}
        }
        match c.attribute_key.as_str() {
            "status" => text(
                facts
                    .status()
                    .as_str_name()
                    .trim_start_matches("CONVERSATION_STATUS_")
                    .to_ascii_lowercase(),
            ),
            "priority" => text(facts.priority.clone()),
            "inbox_id" => id(facts.inbox_id),
            "assignee_id" => id(facts.assignee_id),
            "team_id" => id(facts.team_id),
            "labels" => facts.labels.iter().cloned().map(Attr::Text).collect(),
            "browser_language" | "conversation_language" | "country_code" | "referer" | "mail_subject" => {
                json(&conv["additional_attributes"][&c.attribute_key])
            }
            "email" | "phone_number" => json(&conv["meta"]["sender"][&c.attribute_key]),
            "message_type" => message.map_or(vec![], |m| {
                text(
                    m.message_type()
                        .as_str_name()
                        .trim_start_matches("MESSAGE_TYPE_")
                        .to_ascii_lowercase(),
                )
            }),
            "content" => message.map_or(vec![], |m| text(m.content.clone())),
            "private_note" => message.map_or(vec![], |m| vec![Attr::Text(m.private.to_string())]),
            "created_at" if facts.created_at_ms > 0 => vec![Attr::Time(facts.created_at_ms)],
            "last_activity_at" => match &conv["last_activity_at"] {
                Value::Number(n) => n.as_i64().map_or(vec![], |s| vec![Attr::Time(s * 1000)]),
                other => json(other),
            },
            _ => vec![],
        }
    }

    /// Whether one condition (not `attribute_changed`) holds.
    fn holds(&self, c: &pb::RuleCondition) -> bool {
        let attrs = self.lookup(c);
        let labels = c.attribute_key == "labels" && c.custom_attribute_type.is_empty();
        let equal = || attrs.iter().any(|a| c.values.iter().any(|v| same(a, v)));
        let contains = || {
            attrs.iter().any(|a| {
                let a = as_text(a).to_lowercase();
                c.values.iter().any(|v| a.contains(&v.to_lowercase()))
            })
        };
        let present = !attrs.is_empty();
        match c.filter_operator.as_str() {
            "equal_to" => equal(),
            "not_equal_to" if labels => !equal(),
            "not_equal_to" => present && !equal(),
            "contains" => contains(),
            "does_not_contain" => present && !contains(),
            "is_present" => attrs.iter().any(|a| !as_text(a).is_empty()),
            "is_not_present" => attrs.iter().all(|a| as_text(a).is_empty()),
            "is_greater_than" | "is_less_than" => {
                let (Some(a), Some(v)) = (attrs.first(), c.values.first()) else {
                    return false;
                };
                match compare(a, v) {
                    Some(order) if c.filter_operator == "is_greater_than" => order.is_gt(),
                    Some(order) => order.is_lt(),
                    None => false,
                }
            }
            "days_before" => {
                let (Some(a), Some(days)) = (
                    attrs.first(),
                    c.values.first().and_then(|v| v.trim().parse::<f64>().ok()),
                ) else {
                    return false;
                };
                let limit = self.event.occurred_at_ms - (days * 86_400_000.0) as i64;
                as_time(a).is_some_and(|t| t < limit)
            }
            _ => false,
        }
    }

    /// Whether an `attribute_changed` condition's change happened: the attribute changed,
    /// from one of `changed_from` to one of `changed_to`.
    fn changed(&self, c: &pb::RuleCondition) -> Option<bool> {
        let (_, from, to) = self.changed.iter().find(|(k, _, _)| *k == c.attribute_key)?;
        Some(c.changed_from.contains(&to_s(from)) && c.changed_to.contains(&to_s(to)))
    }

    /// Whether the rule's conditions hold.
    pub fn matches(&self, conditions: &[pb::RuleCondition]) -> bool {
        let (changes, plain): (Vec<_>, Vec<_>) = conditions
            .iter()
            .partition(|c| c.filter_operator == "attribute_changed");
        // `a AND b OR c`: any group of and-joined conditions that all hold.
        let mut any = false;
        let mut all = true;
        for (i, c) in plain.iter().enumerate() {
            all &= self.holds(c);
            let last = i + 1 == plain.len();
            if last || c.query_operator.eq_ignore_ascii_case("or") {
                any |= all;
                all = true;
            }
        }
        let base = plain.is_empty() || any;
        if changes.is_empty() {
            return base;
        }
        // Chatwoot's attribute-changed pass: each change that happened adds (and: what
        // matched so far and the rest; otherwise: either); what matched so far is then
        // the result.
        let (mut matched, mut current) = (false, true);
        for c in changes {
            let Some(happened) = self.changed(c) else {
                continue;
            };
            if happened {
                let and = c.query_operator.eq_ignore_ascii_case("and");
                matched |= if and { current && base } else { current || base };
            }
            current = matched;
        }
        matched
    }
}

/// `changed_attributes` as (attribute, previous, current), from the webhook form
/// (`[{"status": {"previous_value": …, "current_value": …}}]`) or an object of either
/// that form or `[previous, current]` pairs.
fn changed_attributes(json: &str) -> Vec<(String, Value, Value)> {
    let value: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let entries: Vec<(String, Value)> = match value {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| match i {
                Value::Object(o) => Some(o.into_iter().collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Object(o) => o.into_iter().collect(),
        _ => vec![],
    };
    entries
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::Object(mut o) => Some((
                k,
                o.remove("previous_value").unwrap_or(Value::Null),
                o.remove("current_value").unwrap_or(Value::Null),
            )),
            Value::Array(mut pair) if pair.len() == 2 => {
                let current = pair.pop().unwrap_or(Value::Null);
                Some((k, pair.pop().unwrap_or(Value::Null), current))
            }
            _ => None,
        })
        .collect()
}

/// Ruby's `to_s` of a JSON value (nil is "").
fn to_s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn json_attrs(v: &Value) -> Vec<Attr> {
    match v {
        Value::Null => vec![],
        Value::Array(items) => items.iter().flat_map(json_attrs).collect(),
        Value::String(s) if s.is_empty() => vec![],
        other => vec![Attr::Text(to_s(other))],
    }
}

fn as_text(a: &Attr) -> String {
    match a {
        Attr::Text(s) => s.clone(),
        Attr::Time(ms) => ms.to_string(),
    }
}

/// A time: Unix milliseconds, or a text date or RFC 3339 time.
fn as_time(a: &Attr) -> Option<i64> {
    match a {
        Attr::Time(ms) => Some(*ms),
        Attr::Text(s) => parse_time(s),
    }
}

/// A date (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 time, in Unix milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

/// Equality as the filters compare: numbers by value, text without regard to case.
fn same(a: &Attr, v: &str) -> bool {
    let a = as_text(a);
    match (a.trim().parse::<f64>(), v.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(v.trim()),
    }
}

/// Order of an attribute and a value: as numbers, else as times.
fn compare(a: &Attr, v: &str) -> Option<std::cmp::Ordering> {
    if let Attr::Text(t) = a
        && let (Ok(x), Ok(y)) = (t.trim().parse::<f64>(), v.trim().parse::<f64>())
    {
        return x.partial_cmp(&y);
    }
    Some(as_time(a)?.cmp(&parse_time(v)?))
}

#[cfg(test)]
#[path = "conditions_tests.rs"]
mod tests;
