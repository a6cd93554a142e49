//! The ActionCable v1 JSON wire protocol (subprotocol `actioncable-v1-json`), as Rails'
//! server speaks it and `@rails/actioncable` expects it: the client's commands in, the
//! server's messages out. Pure functions, no I/O.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The subprotocol a client offers and the server picks.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";

/// What a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Subscribe to the channel named in `identifier` (a JSON object, as a string).
    Subscribe {
        /// The identifier, byte for byte as sent: every answer repeats it.
        identifier: String,
    },
    /// Unsubscribe.
    Unsubscribe {
        /// As subscribed.
        identifier: String,
    },
    /// Perform an action of a subscribed channel.
    Message {
        /// As subscribed.
        identifier: String,
        /// The action's name (`data.action`).
        action: String,
    },
}

/// Why a client message was not understood (it is ignored and counted, as Rails does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unrecognized(pub &'static str);

#[derive(Deserialize)]
struct RawCommand<'a> {
    command: Option<&'a str>,
    #[serde(borrow)]
    identifier: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawData {
    action: Option<String>,
}

/// Parses one text message of the client.
pub fn parse_command(text: &str) -> Result<Command, Unrecognized> {
    let raw: RawCommand = serde_json::from_str(text).map_err(|_| Unrecognized("not a JSON command"))?;
    let identifier = raw.identifier.ok_or(Unrecognized("no identifier"))?.into_owned();
    match raw.command {
        Some("subscribe") => Ok(Command::Subscribe { identifier }),
        Some("unsubscribe") => Ok(Command::Unsubscribe { identifier }),
        Some("message") => {
            let data = raw.data.ok_or(Unrecognized("a message without data"))?;
            let data: RawData =
                serde_json::from_str(&data).map_err(|_| Unrecognized("data is not a JSON object"))?;
            Ok(Command::Message {
                identifier,
                action: data.action.ok_or(Unrecognized("data without an action"))?,
            })
        }
        _ => Err(Unrecognized("unknown command")),
    }
}

/// The parameters of a `RoomChannel` identifier, as Chatwoot's frontend sends them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomParams {
    /// The `pubsub_token`.
    pub pubsub_token: String,
    /// `account_id` (agents: the account the dashboard shows).
    pub account_id: Option<u64>,
    /// `user_id`: present for agents, absent or blank for contacts.
    pub user_id: Option<u64>,
}

/// An id as the frontend may send it: a number, a numeric string, or blank.
fn id_param(value: Option<&serde_json::Value>) -> Result<Option<u64>, Unrecognized> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or(Unrecognized("an id is not a positive integer")),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => s
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or(Unrecognized("an id is not a positive integer")),
        Some(_) => Err(Unrecognized("an id is not a positive integer")),
    }
}

/// The channel an identifier names, and its `RoomChannel` parameters when it is that one.
pub fn parse_identifier(identifier: &str) -> Result<(String, RoomParams), Unrecognized> {
    let value: serde_json::Value =
        serde_json::from_str(identifier).map_err(|_| Unrecognized("the identifier is not JSON"))?;
    let object = value
        .as_object()
        .ok_or(Unrecognized("the identifier is not an object"))?;
    let channel = object
        .get("channel")
        .and_then(|c| c.as_str())
        .ok_or(Unrecognized("the identifier names no channel"))?
        .to_string();
    let pubsub_token = object
        .get("pubsub_token")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    Ok((
        channel,
        RoomParams {
            pubsub_token,
            account_id: id_param(object.get("account_id"))?,
            user_id: id_param(object.get("user_id"))?,
        },
    ))
}

/// A JSON string literal of `s`.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// `{"type":"welcome"}`: the connection is open.
pub fn welcome() -> String {
    r#"{"type":"welcome"}"#.to_string()
}

/// `{"type":"ping","message":<unix seconds>}`, every 3 s: the client's connection
/// monitor counts the link as stale after 6 s without one.
pub fn ping(unix_secs: u64) -> String {
    format!(r#"{{"type":"ping","message":{unix_secs}}}"#)
}

/// The subscription is confirmed.
pub fn confirm(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
        quoted(identifier)
    )
}

/// The subscription is refused.
pub fn reject(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"reject_subscription"}}"#,
        quoted(identifier)
    )
}

/// A broadcast to a subscription: `{"identifier":…,"message":{"event":…,"data":…}}`,
/// Chatwoot's shape. `data` is inserted as is when it is JSON, else as a string.
pub fn broadcast(identifier: &str, event: &str, data: &str) -> String {
    broadcast_to(&quoted(identifier), event, data)
}

/// [`broadcast`] with the identifier already a JSON string literal ([`identifier_json`]),
/// as a subscription keeps it: nothing of the subscription is encoded again per event.
pub fn broadcast_to(identifier_json: &str, event: &str, data: &str) -> String {
    let raw = !data.is_empty() && serde_json::from_str::<&RawValue>(data).is_ok();
    let mut out = String::with_capacity(identifier_json.len() + event.len() + data.len() + 48);
    out.push_str(r#"{"identifier":"#);
    out.push_str(identifier_json);
    out.push_str(r#","message":{"event":"#);
    out.push_str(&quoted(event));
    out.push_str(r#","data":"#);
    if raw {
        out.push_str(data);
    } else {
        out.push_str(&quoted(data));
    }
    out.push_str("}}");
    out
}

/// An identifier as the JSON string literal every answer to its subscription repeats.
pub fn identifier_json(identifier: &str) -> String {
    quoted(identifier)
}

/// The server closes the connection: `reason` is one of Rails' (`server_restart`,
/// `unauthorized`, `invalid_request`, `remote`); `reconnect` tells the client whether to.
pub fn disconnect(reason: &str, reconnect: bool) -> String {
    format!(
        r#"{{"type":"disconnect","reason":{},"reconnect":{reconnect}}}"#,
        quoted(reason)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed_as_the_client_sends_them() {
        let id = r#"{"channel":"RoomChannel","pubsub_token":"tok","account_id":1,"user_id":7}"#;
        let subscribe = serde_json::json!({"command": "subscribe", "identifier": id}).to_string();
        assert_eq!(
            parse_command(&subscribe),
            Ok(Command::Subscribe {
                identifier: id.into()
            })
        );
        let perform = serde_json::json!({
            "command": "message", "identifier": id, "data": r#"{"action":"update_presence"}"#
        })
        .to_string();
        assert_eq!(
            parse_command(&perform),
            Ok(Command::Message {
                identifier: id.into(),
                action: "update_presence".into()
            })
        );
        let unsubscribe = serde_json::json!({"command": "unsubscribe", "identifier": id}).to_string();
        assert_eq!(
            parse_command(&unsubscribe),
            Ok(Command::Unsubscribe {
                identifier: id.into()
            })
        );
    }

    #[test]
    fn anything_else_is_unrecognized_never_a_panic() {
        for text in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"command":"subscribe"}"#,
            r#"{"command":"dance","identifier":"{}"}"#,
            r#"{"command":"message","identifier":"{}"}"#,
            r#"{"command":"message","identifier":"{}","data":"[1]"}"#,
            r#"{"command":"message","identifier":"{}","data":"{}"}"#,
            r#"{"command":1,"identifier":"{}"}"#,
        ] {
            assert!(parse_command(text).is_err(), "{text}");
        }
    }

    #[test]
    fn room_channel_parameters_take_numbers_numeric_strings_and_blanks() {
        let (channel, params) =
            parse_identifier(r#"{"channel":"RoomChannel","pubsub_token":"t","account_id":"3","user_id":""}"#)
                .unwrap();
        assert_eq!(channel, "RoomChannel");
        assert_eq!(
            params,
            RoomParams {
                pubsub_token: "t".into(),
                account_id: Some(3),
                user_id: None
            }
        );
        assert!(parse_identifier(r#"{"channel":"RoomChannel","user_id":-1}"#).is_err());
        assert!(parse_identifier(r#"{"channel":"RoomChannel","user_id":"x"}"#).is_err());
        assert!(parse_identifier(r#"{"pubsub_token":"t"}"#).is_err());
        assert!(parse_identifier("nope").is_err());
    }

    #[test]
    fn server_messages_are_rails_own() {
        let id = r#"{"channel":"RoomChannel"}"#;
        assert_eq!(welcome(), r#"{"type":"welcome"}"#);
        assert_eq!(ping(5), r#"{"type":"ping","message":5}"#);
        assert_eq!(
            confirm(id),
            r#"{"identifier":"{\"channel\":\"RoomChannel\"}","type":"confirm_subscription"}"#
        );
        assert_eq!(
            reject(id),
            r#"{"identifier":"{\"channel\":\"RoomChannel\"}","type":"reject_subscription"}"#
        );
        assert_eq!(
            disconnect("server_restart", true),
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
        );
        let b: serde_json::Value =
            serde_json::from_str(&broadcast(id, "message.created", r#"{"id":1}"#)).unwrap();
        assert_eq!(b["identifier"], id);
        assert_eq!(
            b["message"],
            serde_json::json!({"event": "message.created", "data": {"id": 1}})
        );
        // Data that is not JSON goes as a string, never as broken JSON.
        let b: serde_json::Value = serde_json::from_str(&broadcast(id, "x", "not json")).unwrap();
        assert_eq!(b["message"]["data"], "not json");
        let b: serde_json::Value = serde_json::from_str(&broadcast(id, "x", "")).unwrap();
        assert_eq!(b["message"]["data"], "");
    }
}
