//! Messages from the Redis pub/sub room channels (`engine::bus`), and the channel names
//! they arrive on. A publication is wrapped, undecoded, into the `ServerFrame` every local
//! subscriber receives; that frame must decode to the same event a client would read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rtgate_protocol::{RoomName, pb};
use rtgate_server::engine::bus::{self, BusMessage};
use rtgate_server::engine::encode_publication;
use rtgate_server::engine::redis::Keys;
use rtgate_server::ids::{Epoch, StreamPos};

fuzz_target!(|data: &[u8]| {
    match bus::decode(data) {
        Some(BusMessage::Publication { epoch, offset, event }) => {
            let again = bus::encode_publication(epoch, offset, event);
            assert_eq!(
                bus::decode(&again),
                Some(BusMessage::Publication { epoch, offset, event }),
                "publication does not survive re-encoding"
            );
            let room = RoomName::parse("conversation:42").expect("valid room");
            let pos = StreamPos {
                epoch: Epoch::from_wire(epoch),
                offset,
            };
            let publication = encode_publication(&room, pos, event);
            let frame = pb::ServerFrame::decode(publication.frame.as_ref());
            if let Ok(want) = pb::Event::decode(event) {
                let frame = frame.expect("a frame around a valid event decodes");
                let Some(pb::server_frame::Kind::Event(got)) = frame.kind else {
                    panic!("a publication frame carries a room event: {frame:?}");
                };
                assert_eq!(got.room, room.as_str());
                assert_eq!(got.epoch, epoch);
                assert_eq!(got.offset, offset);
                let got = got.event.expect("the room event carries the event");
                assert_eq!(
                    got.encode_to_vec(),
                    want.encode_to_vec(),
                    "event changed in its frame"
                );
            }
        }
        Some(BusMessage::Ephemeral {
            private,
            exclude,
            frame,
        }) => {
            let again = bus::encode_ephemeral(private, exclude, frame);
            assert_eq!(
                bus::decode(&again),
                Some(BusMessage::Ephemeral {
                    private,
                    exclude,
                    frame
                }),
                "ephemeral message does not survive re-encoding"
            );
            // Passed on to clients as is; they decode it as a ServerFrame.
            let _ = pb::ServerFrame::decode(frame);
        }
        None => {}
    }

    // The same bytes as a channel name.
    let keys = Keys::new("rtgate");
    if let Some(room) = keys.room_of_channel(data) {
        assert_eq!(keys.channel(&room).as_bytes(), data, "channel does not map back");
    }
});
