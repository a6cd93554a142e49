//! One `/cable` connection as a translation between ActionCable and rtgate's own session:
//! the client's commands become what the session understands (an authenticated principal,
//! pings, unsubscribes), and the session's frames become what `@rails/actioncable`
//! expects (`confirm_subscription`, broadcasts, `disconnect`). A plain state machine: the
//! transport does the lookups and the writing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rtgate_protocol::DisconnectCode;
use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};

use super::tokens::Rejection;
use super::wire::{self, Command, RoomParams};

/// The channel Chatwoot's frontend subscribes to.
pub const ROOM_CHANNEL: &str = "RoomChannel";

/// `update_presence` is answered at most this often (Chatwoot's clients send it every 20
/// or 60 s); more often it only keeps the session alive.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(1);

/// Rejected subscriptions a connection may make; beyond, its subscribes are ignored (each
/// costs a store read).
pub const MAX_REJECTED: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    /// Nothing subscribed yet (or the last attempt was rejected).
    None,
    /// Waiting for the token lookup, then for the rooms to be joined.
    Pending(String),
    /// Confirmed: broadcasts flow. The identifier, and it as a JSON string literal.
    Live(String, String),
    /// Unsubscribed: nothing flows; one subscription per connection.
    Ended,
}

/// What the transport does for a client message, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this text to the client.
    Send(String),
    /// Look the token up, resolve who subscribes, and call [`CableAdapter::resolved`].
    Resolve(RoomParams),
    /// Hand this frame to the session.
    Native(Box<pb::ClientFrame>),
    /// Read the account's presence and send [`CableAdapter::presence_update`].
    Presence,
    /// Nothing is done (counted, as Rails logs it), for this reason.
    Ignored(&'static str),
}

/// One `/cable` connection's translation state.
#[derive(Debug)]
pub struct CableAdapter {
    subscription: Subscription,
    /// The last position delivered in each room joined: what a resume starts from.
    positions: BTreeMap<String, pb::StreamPosition>,
    account_id: u64,
    contact: bool,
    rejected: u32,
    presence_at: Option<Instant>,
}

impl Default for CableAdapter {
    fn default() -> Self {
        CableAdapter {
            subscription: Subscription::None,
            positions: BTreeMap::new(),
            account_id: 0,
            contact: false,
            rejected: 0,
            presence_at: None,
        }
    }
}

impl CableAdapter {
    /// Whether a subscription is confirmed and live.
    pub fn is_live(&self) -> bool {
        matches!(self.subscription, Subscription::Live(..))
    }

    /// Whether `identifier`'s subscription is the live one.
    fn is_live_as(&self, identifier: &str) -> bool {
        matches!(&self.subscription, Subscription::Live(id, _) if id == identifier)
    }

    /// The account of the subscriber (0 before one resolved).
    pub fn account(&self) -> u64 {
        self.account_id
    }

    /// One text message from the client, received at `now`.
    pub fn on_text(&mut self, text: &str, now: Instant) -> Vec<Step> {
        let command = match wire::parse_command(text) {
            Ok(c) => c,
            Err(e) => return vec![Step::Ignored(e.0)],
        };
        match command {
            Command::Subscribe { identifier } => self.subscribe(identifier),
            Command::Unsubscribe { identifier } => {
                if !self.is_live_as(&identifier) {
                    return vec![Step::Ignored("not subscribed")];
                }
                self.subscription = Subscription::Ended;
                // Id 0: no reply is wanted.
                self.positions
                    .keys()
                    .map(|room| {
                        Step::Native(Box::new(pb::ClientFrame {
                            id: 0,
                            kind: Some(C::Unsubscribe(pb::Unsubscribe { room: room.clone() })),
                        }))
                    })
                    .collect()
            }
            Command::Message { identifier, action } => {
                if !self.is_live_as(&identifier) {
                    return vec![Step::Ignored("not subscribed")];
                }
                if action != "update_presence" {
                    return vec![Step::Ignored("unknown action")];
                }
                let keepalive = Step::Native(Box::new(ping()));
                if self
                    .presence_at
                    .is_some_and(|at| now.saturating_duration_since(at) < PRESENCE_INTERVAL)
                {
                    return vec![keepalive, Step::Ignored("presence asked too often")];
                }
                self.presence_at = Some(now);
                vec![keepalive, Step::Presence]
            }
        }
    }

    fn subscribe(&mut self, identifier: String) -> Vec<Step> {
        match &self.subscription {
            Subscription::Pending(id) | Subscription::Live(id, _) if *id == identifier => {
                return vec![Step::Ignored("already subscribed")];
            }
            Subscription::None if self.rejected >= MAX_REJECTED => {
                return vec![Step::Ignored("too many rejected subscriptions")];
            }
            Subscription::None => {}
            // One identity per connection: a second subscription is refused.
            _ => return vec![Step::Send(wire::reject(&identifier))],
        }
        match wire::parse_identifier(&identifier) {
            Ok((channel, params)) if channel == ROOM_CHANNEL => {
                self.subscription = Subscription::Pending(identifier);
                vec![Step::Resolve(params)]
            }
            _ => vec![Step::Send(wire::reject(&identifier))],
        }
    }

    /// The lookup of a [`Step::Resolve`] ended: `Ok` with who subscribes (the transport
    /// then authenticates the session), or the rejection. Returns the text to send.
    pub fn resolved(&mut self, result: Result<(u64, bool), Rejection>) -> Option<String> {
        let Subscription::Pending(identifier) = &self.subscription else {
            return None;
        };
        match result {
            Ok((account_id, contact)) => {
                self.account_id = account_id;
                self.contact = contact;
                None
            }
            Err(_) => {
                let text = wire::reject(identifier);
                self.subscription = Subscription::None;
                self.rejected += 1;
                Some(text)
            }
        }
    }

    /// A frame of the session, translated for the client (`None`: nothing to send).
    pub fn on_server_frame(&mut self, frame: pb::ServerFrame) -> Option<String> {
        match frame.kind? {
            S::Welcome(welcome) => {
                for room in welcome.rooms {
                    self.positions.insert(
                        room.room,
                        pb::StreamPosition {
                            epoch: room.epoch,
                            offset: room.offset,
                        },
                    );
                }
                let Subscription::Pending(identifier) = &self.subscription else {
                    return None;
                };
                let text = wire::confirm(identifier);
                self.subscription = Subscription::Live(identifier.clone(), wire::identifier_json(identifier));
                Some(text)
            }
            S::Event(event) => {
                let pos = pb::StreamPosition {
                    epoch: event.epoch,
                    offset: event.offset,
                };
                if let Some(known) = self.positions.get_mut(&event.room) {
                    *known = pos;
                }
                let Subscription::Live(_, identifier) = &self.subscription else {
                    return None;
                };
                let e = event.event?;
                Some(wire::broadcast_to(identifier, &e.name, &e.json))
            }
            S::Ephemeral(ephemeral) => {
                let Subscription::Live(_, identifier) = &self.subscription else {
                    return None;
                };
                let e = ephemeral.event?;
                Some(wire::broadcast_to(identifier, &e.name, &e.json))
            }
            S::Reset(reset) => {
                if let (Some(known), Some(pos)) = (self.positions.get_mut(&reset.room), reset.position) {
                    *known = pos;
                }
                None
            }
            S::Disconnect(d) => {
                let reason = DisconnectCode::from_code(d.code).map_or("remote", rails_reason);
                Some(wire::disconnect(reason, d.reconnect))
            }
            S::Reply(_) | S::Pong(_) | S::Unsubscribed(_) => None,
        }
    }

    /// Chatwoot's `presence.update` for the subscriber: the account's users online with
    /// their availability, and (for users) the contacts online.
    pub fn presence_update(&self, presence: &pb::Presence) -> Option<String> {
        let Subscription::Live(_, identifier) = &self.subscription else {
            return None;
        };
        let status = |a: i32| match pb::Availability::try_from(a) {
            Ok(pb::Availability::Online) => "online",
            Ok(pb::Availability::Busy) => "busy",
            _ => "offline",
        };
        let users: serde_json::Map<String, serde_json::Value> = presence
            .users
            .iter()
            .filter(|u| u.online)
            .map(|u| (u.id.to_string(), status(u.availability).into()))
            .collect();
        let mut data = serde_json::json!({"account_id": self.account_id, "users": users});
        if !self.contact {
            let contacts: serde_json::Map<String, serde_json::Value> = presence
                .contacts
                .iter()
                .filter(|c| c.online)
                .map(|c| (c.id.to_string(), "online".into()))
                .collect();
            data["contacts"] = contacts.into();
        }
        Some(wire::broadcast_to(
            identifier,
            "presence.update",
            &data.to_string(),
        ))
    }

    /// The positions to resume from on a later subscription with the same token: the
    /// last one delivered in each room (`None` before a subscription was confirmed).
    pub fn resume_entry(&self) -> Option<String> {
        if self.positions.is_empty() || !self.is_live() {
            return None;
        }
        let entry: BTreeMap<&str, (&str, u64)> = self
            .positions
            .iter()
            .map(|(room, p)| (room.as_str(), (p.epoch.as_str(), p.offset)))
            .collect();
        serde_json::to_string(&entry).ok()
    }
}

/// Decodes a [`CableAdapter::resume_entry`] into recovery positions (none if malformed).
pub fn parse_resume(entry: &str) -> Vec<pb::RoomPosition> {
    let parsed: BTreeMap<String, (String, u64)> = serde_json::from_str(entry).unwrap_or_default();
    parsed
        .into_iter()
        .map(|(room, (epoch, offset))| pb::RoomPosition {
            room,
            position: Some(pb::StreamPosition { epoch, offset }),
        })
        .collect()
}

fn ping() -> pb::ClientFrame {
    pb::ClientFrame {
        id: 0,
        kind: Some(C::Ping(pb::Ping::default())),
    }
}

/// A native frame that keeps the session alive (the client answered a WebSocket ping).
pub fn keepalive() -> pb::ClientFrame {
    ping()
}

/// Rails' disconnect reasons for rtgate's codes.
fn rails_reason(code: DisconnectCode) -> &'static str {
    match code {
        DisconnectCode::Shutdown => "server_restart",
        DisconnectCode::Unauthorized | DisconnectCode::TokenExpired | DisconnectCode::HelloTimeout => {
            "unauthorized"
        }
        DisconnectCode::BadFrame | DisconnectCode::FrameTooLarge | DisconnectCode::ProtocolViolation => {
            "invalid_request"
        }
        _ => "remote",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl CableAdapter {
        fn on_text_now(&mut self, text: &str) -> Vec<Step> {
            self.on_text(text, Instant::now())
        }
    }

    const ID: &str = r#"{"channel":"RoomChannel","pubsub_token":"tok","account_id":1,"user_id":7}"#;

    fn command(command: &str, extra: serde_json::Value) -> String {
        let mut c = serde_json::json!({"command": command, "identifier": ID});
        if let serde_json::Value::Object(more) = extra {
            c.as_object_mut().unwrap().extend(more);
        }
        c.to_string()
    }

    fn welcome(rooms: &[(&str, u64)]) -> pb::ServerFrame {
        pb::ServerFrame {
            kind: Some(S::Welcome(pb::Welcome {
                rooms: rooms
                    .iter()
                    .map(|(room, offset)| pb::SubscribeResult {
                        room: room.to_string(),
                        epoch: "e1".into(),
                        offset: *offset,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
        }
    }

    fn event(room: &str, offset: u64, name: &str, json: &str) -> pb::ServerFrame {
        pb::ServerFrame {
            kind: Some(S::Event(pb::RoomEvent {
                room: room.into(),
                epoch: "e1".into(),
                offset,
                event: Some(pb::Event {
                    name: name.into(),
                    json: json.into(),
                    ..Default::default()
                }),
            })),
        }
    }

    fn live() -> CableAdapter {
        let mut a = CableAdapter::default();
        let steps = a.on_text_now(&command("subscribe", serde_json::json!({})));
        assert!(matches!(steps.as_slice(), [Step::Resolve(p)] if p.user_id == Some(7)));
        assert_eq!(a.resolved(Ok((1, false))), None);
        assert_eq!(
            a.on_server_frame(welcome(&[("user:7", 0), ("account:1", 4)])),
            Some(wire::confirm(ID))
        );
        a
    }

    #[test]
    fn a_subscription_is_confirmed_once_its_rooms_are_joined_and_then_broadcasts_flow() {
        let mut a = CableAdapter::default();
        a.on_text_now(&command("subscribe", serde_json::json!({})));
        // Nothing flows before the confirmation.
        assert_eq!(
            a.on_server_frame(event("user:7", 1, "message.created", "{}")),
            None
        );
        a.resolved(Ok((1, false)));
        assert_eq!(
            a.on_server_frame(welcome(&[("user:7", 1)])),
            Some(wire::confirm(ID))
        );
        let text = a
            .on_server_frame(event("user:7", 2, "message.created", r#"{"id":5}"#))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["identifier"], ID);
        assert_eq!(
            v["message"],
            serde_json::json!({"event": "message.created", "data": {"id": 5}})
        );
    }

    #[test]
    fn a_rejected_token_is_rejected_and_may_be_tried_again() {
        let mut a = CableAdapter::default();
        a.on_text_now(&command("subscribe", serde_json::json!({})));
        assert_eq!(a.resolved(Err(Rejection::UnknownToken)), Some(wire::reject(ID)));
        assert!(matches!(
            a.on_text_now(&command("subscribe", serde_json::json!({})))
                .as_slice(),
            [Step::Resolve(_)]
        ));
    }

    #[test]
    fn other_channels_second_subscriptions_and_strays_are_refused_or_ignored() {
        let mut a = CableAdapter::default();
        let other = serde_json::json!({"command": "subscribe", "identifier": r#"{"channel":"ChatChannel"}"#})
            .to_string();
        assert_eq!(
            a.on_text_now(&other),
            vec![Step::Send(wire::reject(r#"{"channel":"ChatChannel"}"#))]
        );
        assert_eq!(
            a.on_text_now(&command(
                "message",
                serde_json::json!({"data": r#"{"action":"update_presence"}"#})
            )),
            vec![Step::Ignored("not subscribed")]
        );
        let mut a = live();
        assert_eq!(
            a.on_text_now(&command("subscribe", serde_json::json!({}))),
            vec![Step::Ignored("already subscribed")]
        );
        let second = r#"{"channel":"RoomChannel","pubsub_token":"other"}"#;
        let text = serde_json::json!({"command": "subscribe", "identifier": second}).to_string();
        assert_eq!(a.on_text_now(&text), vec![Step::Send(wire::reject(second))]);
        assert_eq!(
            a.on_text_now("garbage"),
            vec![Step::Ignored("not a JSON command")]
        );
        assert_eq!(
            a.on_text_now(&command(
                "message",
                serde_json::json!({"data": r#"{"action":"speak"}"#})
            )),
            vec![Step::Ignored("unknown action")]
        );
    }

    #[test]
    fn update_presence_keeps_the_session_alive_and_answers_with_presence() {
        let mut a = live();
        let steps = a.on_text_now(&command(
            "message",
            serde_json::json!({"data": r#"{"action":"update_presence"}"#}),
        ));
        assert_eq!(steps, vec![Step::Native(Box::new(ping())), Step::Presence]);
        let presence = pb::Presence {
            users: vec![
                pb::PresenceEntry {
                    id: 7,
                    online: true,
                    availability: pb::Availability::Busy as i32,
                    ..Default::default()
                },
                pb::PresenceEntry {
                    id: 8,
                    online: false,
                    ..Default::default()
                },
            ],
            contacts: vec![pb::PresenceEntry {
                id: 501,
                online: true,
                ..Default::default()
            }],
        };
        let v: serde_json::Value = serde_json::from_str(&a.presence_update(&presence).unwrap()).unwrap();
        assert_eq!(v["message"]["event"], "presence.update");
        assert_eq!(
            v["message"]["data"],
            serde_json::json!({"account_id": 1, "users": {"7": "busy"}, "contacts": {"501": "online"}})
        );
    }

    #[test]
    fn presence_is_answered_at_most_once_a_second_and_rejections_are_bounded() {
        let mut a = live();
        let t0 = Instant::now();
        let ask = command(
            "message",
            serde_json::json!({"data": r#"{"action":"update_presence"}"#}),
        );
        assert_eq!(a.on_text(&ask, t0)[1], Step::Presence);
        assert_eq!(
            a.on_text(&ask, t0 + Duration::from_millis(999))[1],
            Step::Ignored("presence asked too often")
        );
        assert_eq!(a.on_text(&ask, t0 + PRESENCE_INTERVAL)[1], Step::Presence);

        let mut a = CableAdapter::default();
        let subscribe = command("subscribe", serde_json::json!({}));
        for _ in 0..MAX_REJECTED {
            assert!(matches!(a.on_text(&subscribe, t0).as_slice(), [Step::Resolve(_)]));
            a.resolved(Err(Rejection::UnknownToken));
        }
        assert_eq!(
            a.on_text(&subscribe, t0),
            vec![Step::Ignored("too many rejected subscriptions")]
        );
    }

    #[test]
    fn unsubscribing_leaves_every_room_and_stops_broadcasts() {
        let mut a = live();
        let steps = a.on_text_now(&command("unsubscribe", serde_json::json!({})));
        let rooms: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::Native(frame) => match &frame.kind {
                    Some(C::Unsubscribe(u)) => u.room.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(rooms, ["account:1", "user:7"]);
        assert_eq!(a.on_server_frame(event("user:7", 1, "x", "{}")), None);
    }

    #[test]
    fn resume_entries_hold_the_last_position_delivered_per_room() {
        let mut a = live();
        a.on_server_frame(event("user:7", 3, "x", "{}"));
        let entry = a.resume_entry().unwrap();
        let mut positions: Vec<(String, u64)> = parse_resume(&entry)
            .into_iter()
            .map(|p| (p.room, p.position.unwrap().offset))
            .collect();
        positions.sort();
        assert_eq!(
            positions,
            [("account:1".to_string(), 4), ("user:7".to_string(), 3)]
        );
        assert!(parse_resume("garbage").is_empty());
        assert_eq!(CableAdapter::default().resume_entry(), None);
    }

    #[test]
    fn disconnects_carry_rails_reasons_and_the_reconnect_advice() {
        let mut a = live();
        let frame = |code: DisconnectCode| pb::ServerFrame {
            kind: Some(S::Disconnect(code.frame("why"))),
        };
        assert_eq!(
            a.on_server_frame(frame(DisconnectCode::Shutdown)),
            Some(wire::disconnect("server_restart", true))
        );
        assert_eq!(
            a.on_server_frame(frame(DisconnectCode::Kicked)),
            Some(wire::disconnect("remote", false))
        );
        assert_eq!(
            a.on_server_frame(frame(DisconnectCode::HelloTimeout)),
            Some(wire::disconnect("unauthorized", false))
        );
    }
}
