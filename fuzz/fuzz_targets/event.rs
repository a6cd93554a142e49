//! Domain events (`pb::Event`), as backends publish them and clients receive them: protobuf
//! (prost) and JSON (serde_json with the pbjson mapping).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtgate_protocol::pb;

#[path = "common/codec.rs"]
mod codec;

fuzz_target!(|data: &[u8]| {
    codec::check::<pb::Event>(data, |_| {}, codec::event_is_finite, codec::event_without_floats);
});
