//! Checks shared by the targets that decode protobuf messages in both API formats.

use prost::Message;
use rtgate_protocol::pb;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Whether the floating-point fields of an event are finite. Protobuf carries any bit
/// pattern, but JSON has no number for NaN or infinity, so only finite ones are expected to
/// survive a trip through JSON.
pub fn event_is_finite(event: &pb::Event) -> bool {
    match &event.payload {
        Some(pb::event::Payload::Conversation(c)) => c.updated_at.is_finite(),
        _ => true,
    }
}

/// Clears the floating-point fields of an event before two decodings are compared:
/// serde_json parses floats to within one unit in the last place, not always exactly.
pub fn event_without_floats(event: &mut pb::Event) {
    if let Some(pb::event::Payload::Conversation(c)) = &mut event.payload {
        c.updated_at = 0.0;
    }
}

/// Decodes `data` as `M` with prost and with serde_json (the pbjson mapping the server API
/// uses); whatever decodes must re-encode in both formats and decode back to the same
/// message. `inspect` runs on each decoded message (the checks the server makes next);
/// `comparable` says whether the message may go through JSON (see [`event_is_finite`]);
/// `normalize` clears what JSON does not carry exactly (see [`event_without_floats`]).
pub fn check<M>(data: &[u8], inspect: fn(&M), comparable: fn(&M) -> bool, normalize: fn(&mut M))
where
    M: Message + Default + Serialize + DeserializeOwned,
{
    if let Ok(msg) = M::decode(data) {
        inspect(&msg);
        round_trip(&msg, comparable, normalize);
    }
    if let Ok(msg) = serde_json::from_slice::<M>(data) {
        inspect(&msg);
        round_trip(&msg, comparable, normalize);
    }
}

fn round_trip<M>(msg: &M, comparable: fn(&M) -> bool, normalize: fn(&mut M))
where
    M: Message + Default + Serialize + DeserializeOwned,
{
    // Protobuf: the encoding of a decoded message decodes to the same message. Compared
    // as bytes, so that a NaN equals itself.
    let bytes = msg.encode_to_vec();
    let again = M::decode(bytes.as_slice()).expect("an encoded message decodes");
    assert_eq!(
        again.encode_to_vec(),
        bytes,
        "protobuf round trip changed the message"
    );

    if !comparable(msg) {
        // Still must not panic.
        let _ = serde_json::to_vec(msg);
        return;
    }
    // JSON: an enum number without a name has no JSON form; anything else must read back.
    let Ok(json) = serde_json::to_vec(msg) else {
        return;
    };
    let back: M = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "JSON written for a decoded message does not read back: {e}: {}",
            String::from_utf8_lossy(&json)
        )
    });
    let (mut want, mut got) = (M::decode(bytes.as_slice()).expect("decodes"), back);
    normalize(&mut want);
    normalize(&mut got);
    assert_eq!(
        got.encode_to_vec(),
        want.encode_to_vec(),
        "JSON round trip changed the message: {}",
        String::from_utf8_lossy(&json)
    );
}
