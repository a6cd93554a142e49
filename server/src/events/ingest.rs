//! What makes a domain event acceptable. Pure: an event in, a verdict out, the same on
//! the HTTP path and the Redis Stream path. A refused event is answered with its reason
//! (HTTP) or dead-lettered with it (stream): never a crash, never a stalled stream.

use prost::Message;
use rtgate_protocol::pb;

use super::{catalogue, routing};

/// Longest accepted event id.
pub const MAX_ID_LEN: usize = 128;

/// Why an event is refused, when it is.
pub fn check(event: &pb::DomainEvent, max_size: usize) -> Result<(), String> {
    if event.id.is_empty() {
        return Err("id is required (the idempotency key)".into());
    }
    if event.id.len() > MAX_ID_LEN {
        return Err(format!("id is longer than {MAX_ID_LEN} bytes"));
    }
    if !catalogue::is_known(&event.name) {
        return Err(format!("unknown event name {:?}", event.name));
    }
    if event.account_id == 0 {
        return Err("account_id is required".into());
    }
    let size = event.encoded_len();
    if size > max_size {
        return Err(format!("{size} bytes encoded, more than the {max_size} allowed"));
    }
    for (field, json) in [
        ("payload", &event.payload),
        ("webhook_payload", &event.webhook_payload),
        ("event_info", &event.event_info),
    ] {
        if !json.is_empty() && !is_json_object(json) {
            return Err(format!("{field} is not a JSON object"));
        }
    }
    if let Some(m) = &event.message
        && !m.content_attributes.is_empty()
        && !is_json_object(&m.content_attributes)
    {
        return Err("message.content_attributes is not a JSON object".into());
    }
    if !event.changed_attributes.is_empty()
        && serde_json::from_str::<serde::de::IgnoredAny>(&event.changed_attributes).is_err()
    {
        return Err("changed_attributes is not JSON".into());
    }
    if let Some(missing) = routing::missing_facts(event) {
        return Err(format!("{:?} needs {missing}", event.name));
    }
    Ok(())
}

/// Whether `json` is one JSON object (checked without building it).
fn is_json_object(json: &str) -> bool {
    json.trim_start().starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(json).is_ok()
}

/// Decodes an event as it travels in a queue entry: protobuf (`pb`), or its JSON mapping
/// (`json`, what a backend writes to the stream by hand).
pub fn decode(format: EntryFormat, bytes: &[u8]) -> Result<pb::DomainEvent, String> {
    match format {
        EntryFormat::Protobuf => {
            pb::DomainEvent::decode(bytes).map_err(|e| format!("undecodable protobuf: {e}"))
        }
        EntryFormat::Json => serde_json::from_slice(bytes).map_err(|e| format!("undecodable json: {e}")),
    }
}

/// How an event is encoded in a queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFormat {
    /// Field `pb`: the protobuf encoding.
    Protobuf,
    /// Field `json`: the protobuf-JSON mapping.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> pb::DomainEvent {
        pb::DomainEvent {
            id: "e-1".into(),
            name: "contact.created".into(),
            account_id: 1,
            payload: r#"{"id":5}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_events_are_refused_with_a_reason() {
        assert_eq!(check(&event(), 1024), Ok(()));
        type Change = Box<dyn Fn(&mut pb::DomainEvent)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|e| e.id.clear()), "id is required"),
            (Box::new(|e| e.id = "x".repeat(200)), "longer than"),
            (
                Box::new(|e| e.name = "contact.create".into()),
                "unknown event name",
            ),
            (Box::new(|e| e.account_id = 0), "account_id"),
            (
                Box::new(|e| e.payload = "[1,2]".into()),
                "payload is not a JSON object",
            ),
            (
                Box::new(|e| e.webhook_payload = "{".into()),
                "webhook_payload is not",
            ),
            (Box::new(|e| e.event_info = "[]".into()), "event_info is not"),
            (
                Box::new(|e| e.changed_attributes = "[{".into()),
                "changed_attributes is not JSON",
            ),
            (
                Box::new(|e| {
                    e.message = Some(pb::MessageFacts {
                        content_attributes: "[]".into(),
                        ..Default::default()
                    })
                }),
                "content_attributes is not a JSON object",
            ),
            (Box::new(|e| e.payload = "x".repeat(2000)), "allowed"),
            (
                Box::new(|e| e.name = "message.created".into()),
                "needs message facts",
            ),
        ];
        for (change, reason) in cases {
            let mut e = event();
            change(&mut e);
            let err = check(&e, 1024).unwrap_err();
            assert!(err.contains(reason), "{err:?} should say {reason:?}");
        }
    }

    #[test]
    fn entries_decode_from_either_encoding_and_garbage_is_an_error() {
        let e = event();
        assert_eq!(decode(EntryFormat::Protobuf, &e.encode_to_vec()), Ok(e.clone()));
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(decode(EntryFormat::Json, &json), Ok(e));
        assert!(decode(EntryFormat::Json, b"{\"id\": 5").is_err());
        assert!(decode(EntryFormat::Protobuf, &[0xff, 0xff, 0xff]).is_err());
        let camel = br#"{"id":"a","name":"contact.created","accountId":"3","occurredAtMs":"1"}"#;
        assert_eq!(decode(EntryFormat::Json, camel).unwrap().account_id, 3);
    }
}
