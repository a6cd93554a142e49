//! What `/cable` clients send (ActionCable JSON commands) and what an unchanged Rails
//! publishes on its Redis (broadcasts), through the wire parser, a `CableAdapter` and the
//! relay's parsers. Nothing may panic; whatever the adapter answers must be JSON text
//! (syntax: a number beyond f64 is still JSON, and browsers read it as Infinity).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use rtgate_server::actioncable::adapter::{CableAdapter, Step};
use rtgate_server::actioncable::{relay, wire};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(wire::Command::Subscribe { identifier }) = wire::parse_command(text) {
            let _ = wire::parse_identifier(&identifier);
        }
        let mut adapter = CableAdapter::default();
        for step in adapter.on_text(text, std::time::Instant::now()) {
            if let Step::Send(reply) = step {
                serde_json::from_str::<&RawValue>(&reply).expect("replies are JSON");
            }
        }
        // Any text as an event's data, and as an identifier, still makes JSON.
        let broadcast = wire::broadcast(text, text, text);
        serde_json::from_str::<&RawValue>(&broadcast).expect("broadcasts are JSON");
        let _ = relay::broadcasting(text, "chatwoot_production_action_cable");
    }
    if let Some(b) = relay::parse_broadcast(data) {
        serde_json::from_str::<&RawValue>(&b.data).expect("relayed data is JSON");
    }
});
