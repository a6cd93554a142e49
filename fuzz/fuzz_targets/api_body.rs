//! The server API request bodies, in both formats the API accepts: protobuf (prost) and
//! JSON (serde_json with the pbjson mapping). Every body type is tried on every input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtgate_protocol::{RoomName, pb};

#[path = "common/codec.rs"]
mod codec;

fuzz_target!(|data: &[u8]| {
    codec::check::<pb::PublishRequest>(
        data,
        |req| {
            // The publish handler validates every room name next.
            for room in &req.rooms {
                if let Ok(name) = RoomName::parse(room) {
                    assert_eq!(name.as_str(), room);
                    let _ = name.kind();
                }
            }
        },
        |req| req.event.as_ref().is_none_or(codec::event_is_finite),
        |req| {
            if let Some(event) = &mut req.event {
                codec::event_without_floats(event);
            }
        },
    );
    codec::check::<pb::DisconnectUserRequest>(data, |_| {}, |_| true, |_| {});
    codec::check::<pb::SetAvailabilityRequest>(
        data,
        |req| {
            let _ = pb::Availability::try_from(req.availability);
        },
        |_| true,
        |_| {},
    );
});
