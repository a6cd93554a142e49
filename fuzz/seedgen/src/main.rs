//! Writes the seed corpora of the fuzz targets into `fuzz/seeds/<target>/`: a handful of
//! valid inputs each, so that fuzzing starts from inputs that get past the decoders.
//! Run from `fuzz/`: `cargo run -p rtgate-fuzz-seeds`.

use std::path::{Path, PathBuf};

use prost::Message;
use rtgate_protocol::encode_frame;
use rtgate_protocol::pb::{self, client_frame::Kind as C};

#[path = "../../fuzz_targets/common/tokens.rs"]
mod tokens;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create seed dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn frame(id: u32, kind: C) -> pb::ClientFrame {
    pb::ClientFrame { id, kind: Some(kind) }
}

/// Control bytes of the session target (see `client_frame.rs`), then the framed stream.
fn session_input(flags: u8, step: u8, frames: &[pb::ClientFrame]) -> Vec<u8> {
    let mut out = vec![flags, step];
    for f in frames {
        out.extend_from_slice(&encode_frame(f));
    }
    out
}

fn hello(token: String, recover: Vec<pb::RoomPosition>) -> C {
    C::Hello(pb::Hello {
        token,
        client_name: "seed".into(),
        client_version: "1".into(),
        recover,
    })
}

fn subscribe(room: &str, token: String, since: Option<u64>) -> C {
    C::Subscribe(pb::Subscribe {
        room: room.into(),
        since: since.map(|offset| pb::StreamPosition {
            epoch: "3f9a0c11d2e4".into(),
            offset,
        }),
        token,
    })
}

fn typing(room: &str, on: bool, private: bool) -> C {
    C::Typing(pb::Typing {
        room: room.into(),
        on,
        private,
    })
}

fn publish(room: &str, name: &str) -> C {
    C::Publish(pb::Publish {
        room: room.into(),
        event: Some(pb::Event {
            name: name.into(),
            json: r#"{"note":"hi"}"#.into(),
            ..Default::default()
        }),
    })
}

fn message_event() -> pb::Event {
    pb::Event {
        id: "0b6c1f2e-4d1a-4a53-9a43-6f0e7c9d2a10".into(),
        name: "message.created".into(),
        account_id: 1,
        occurred_at_ms: 1_900_000_000_123,
        performer: Some(pb::User {
            id: 7,
            name: "Ada".into(),
            availability: pb::Availability::Online as i32,
            ..Default::default()
        }),
        payload: Some(pb::event::Payload::Message(pb::Message {
            id: 501,
            content: "Hello there".into(),
            message_type: pb::MessageType::Outgoing as i32,
            content_type: "text".into(),
            conversation_id: 42,
            inbox_id: 3,
            sender: Some(pb::Sender {
                kind: pb::sender::Kind::User as i32,
                id: 7,
                name: "Ada".into(),
                ..Default::default()
            }),
            created_at: 1_900_000_000,
            attachments: vec![pb::Attachment {
                id: 9,
                file_type: "image".into(),
                data_url: "https://example.com/a.png".into(),
                file_size: 1024,
                ..Default::default()
            }],
            ..Default::default()
        })),
        json: "{}".into(),
    }
}

fn events() -> Vec<(&'static str, pb::Event)> {
    vec![
        ("message", message_event()),
        (
            "conversation",
            pb::Event {
                name: "conversation.updated".into(),
                account_id: 1,
                payload: Some(pb::event::Payload::Conversation(pb::Conversation {
                    id: 42,
                    inbox_id: 3,
                    status: pb::ConversationStatus::Pending as i32,
                    labels: vec!["vip".into(), "billing".into()],
                    unread_count: 2,
                    updated_at: 1_900_000_000.25,
                    custom_attributes_json: r#"{"plan":"pro"}"#.into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
        ),
        (
            "typing",
            pb::Event {
                name: "conversation.typing_on".into(),
                account_id: 1,
                payload: Some(pb::event::Payload::Typing(pb::TypingIndicator {
                    room: "conversation:42".into(),
                    on: true,
                    private: false,
                    sender: Some(pb::Sender {
                        kind: pb::sender::Kind::Contact as i32,
                        id: 9,
                        ..Default::default()
                    }),
                })),
                ..Default::default()
            },
        ),
        (
            "presence",
            pb::Event {
                name: "presence.update".into(),
                account_id: 1,
                payload: Some(pb::event::Payload::Presence(pb::Presence {
                    users: vec![pb::PresenceEntry {
                        id: 7,
                        availability: pb::Availability::Busy as i32,
                        online: true,
                        last_seen_at_ms: 1_900_000_000_000,
                    }],
                    contacts: vec![pb::PresenceEntry {
                        id: 9,
                        online: false,
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            },
        ),
    ]
}

fn client_frame(dir: &Path) {
    let conv = "conversation:42";
    let grant = |holder: &str| tokens::subscription(holder, conv);
    // The input brings its own Hello, recovering its own room, then uses every request.
    write(
        dir,
        "hello_then_requests",
        &session_input(
            0,
            1,
            &[
                frame(
                    0,
                    hello(
                        tokens::connection("agent", 7, Some(600)),
                        vec![pb::RoomPosition {
                            room: "user:7".into(),
                            position: Some(pb::StreamPosition {
                                epoch: "3f9a0c11d2e4".into(),
                                offset: 10,
                            }),
                        }],
                    ),
                ),
                frame(1, subscribe(conv, grant("user:7"), Some(8))),
                frame(2, typing(conv, true, true)),
                frame(3, publish(conv, "client.note")),
                frame(4, C::Ping(pb::Ping { nonce: 99 })),
                frame(5, C::Presence(pb::PresenceQuery {})),
                frame(
                    6,
                    C::SetAvailability(pb::SetAvailability {
                        availability: pb::Availability::Busy as i32,
                    }),
                ),
                frame(
                    7,
                    C::Refresh(pb::RefreshToken {
                        token: tokens::connection("agent", 7, Some(3600)),
                    }),
                ),
                frame(8, typing(conv, false, true)),
                frame(9, C::Unsubscribe(pb::Unsubscribe { room: conv.into() })),
            ],
        ),
    );
    // The target says Hello as the agent; rooms of every kind.
    write(
        dir,
        "agent_rooms",
        &session_input(
            1,
            3,
            &[
                frame(1, subscribe("inbox:3", String::new(), None)),
                frame(2, subscribe("public:1:lobby", String::new(), None)),
                frame(3, subscribe(conv, grant("user:7"), None)),
                frame(4, subscribe("account:2", String::new(), None)),
                frame(5, typing(conv, true, false)),
                frame(6, publish("public:1:lobby", "client.hello")),
                frame(7, publish(conv, "message.created")),
                frame(
                    8,
                    C::Unsubscribe(pb::Unsubscribe {
                        room: "inbox:3".into(),
                    }),
                ),
            ],
        ),
    );
    // The admin; engine calls 2 and 3 (after the auto rooms) fail with internal errors.
    write(
        dir,
        "admin_engine_failures",
        &session_input(
            0b1100_0110,
            2,
            &[
                frame(1, subscribe("inbox:5", String::new(), None)),
                frame(2, C::Presence(pb::PresenceQuery {})),
                frame(3, C::SetAvailability(pb::SetAvailability { availability: 1 })),
                frame(4, publish("inbox:5", "client.x")),
            ],
        ),
    );
    // The contact, every second frame a datagram; it times out typing at the end.
    write(
        dir,
        "contact_datagrams",
        &session_input(
            0b1011,
            0,
            &[
                frame(1, subscribe(conv, grant("contact:9"), None)),
                frame(0, typing(conv, true, true)),
                frame(2, C::Ping(pb::Ping { nonce: 1 })),
                frame(0, C::Ping(pb::Ping { nonce: 2 })),
                frame(3, C::Presence(pb::PresenceQuery {})),
            ],
        ),
    );
    // A first frame that is not Hello; a length over the limit; a lone unprefixed frame.
    write(
        dir,
        "not_hello_first",
        &session_input(0, 0, &[frame(1, C::Ping(pb::Ping { nonce: 5 }))]),
    );
    write(dir, "oversized_length", &[1, 0, 0x81, 0x80, 0x04]);
    write(
        dir,
        "unprefixed_subscribe",
        &frame(7, subscribe("user:7", String::new(), Some(3))).encode_to_vec(),
    );
}

fn api_body(dir: &Path) {
    write(
        dir,
        "publish.json",
        br#"{"rooms":["account:1"],"event":{"name":"message.created","accountId":"1","json":"{}"}}"#,
    );
    let publish = pb::PublishRequest {
        rooms: vec!["conversation:42".into(), "inbox:3".into()],
        event: Some(message_event()),
    };
    write(
        dir,
        "publish_message.json",
        &serde_json::to_vec(&publish).unwrap(),
    );
    write(dir, "publish_message.pb", &publish.encode_to_vec());
    let disconnect = pb::DisconnectUserRequest {
        user_id: "contact:9".into(),
        reason: "blocked".into(),
    };
    write(dir, "disconnect.json", &serde_json::to_vec(&disconnect).unwrap());
    write(dir, "disconnect.pb", &disconnect.encode_to_vec());
    write(dir, "disconnect_user.json", br#"{"user_id":"7"}"#);
    let availability = pb::SetAvailabilityRequest {
        account_id: 1,
        user_id: 7,
        availability: pb::Availability::Busy as i32,
    };
    write(
        dir,
        "availability.json",
        &serde_json::to_vec(&availability).unwrap(),
    );
    write(dir, "availability.pb", &availability.encode_to_vec());
}

fn event(dir: &Path) {
    for (name, ev) in events() {
        write(dir, &format!("{name}.pb"), &ev.encode_to_vec());
        write(dir, &format!("{name}.json"), &serde_json::to_vec(&ev).unwrap());
    }
}

fn bus_message(dir: &Path) {
    let mut publication = b"P3f9a0c11d2e4:12:".to_vec();
    publication.extend_from_slice(&message_event().encode_to_vec());
    write(dir, "publication", &publication);
    let (_, typing) = events().remove(2);
    let frame = pb::ServerFrame {
        kind: Some(pb::server_frame::Kind::Ephemeral(pb::Ephemeral {
            room: "conversation:42".into(),
            event: Some(typing),
        })),
    }
    .encode_to_vec();
    for (name, head) in [
        ("ephemeral", &b"E0user:7|"[..]),
        ("ephemeral_private", b"E1contact:9|"),
    ] {
        let mut msg = head.to_vec();
        msg.extend_from_slice(&frame);
        write(dir, name, &msg);
    }
    write(dir, "channel", b"rtgate:{conversation:42}:c");
}

fn main() {
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    client_frame(&seeds.join("client_frame"));
    api_body(&seeds.join("api_body"));
    bus_message(&seeds.join("bus_message"));
    event(&seeds.join("event"));
    println!("seeds written to fuzz/seeds/");
}
