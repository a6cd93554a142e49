//! The client's session state machine, sans-IO: the same code runs natively and in the
//! browser. It remembers every room with the last position seen, so that after a
//! reconnect each room is joined again from where it stopped: missed events arrive first,
//! in order, without duplicates, or the app is told plainly that they cannot.
//!
//! It also keeps the connection's token fresh: it learns the token's expiry from the
//! Welcome and from refresh replies, and shortly before the expiry asks for a new token
//! ([`ClientEvent::TokenNeeded`]). Wall-clock time enters only through
//! [`ClientSession::connect`]; every later `Instant` is converted by its offset from that
//! anchor, so the session stays deterministic under hand-stepped time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use web_time::Instant;

use rtgate_protocol::pb::{self, client_frame::Kind as C, server_frame::Kind as S};
use rtgate_protocol::{DisconnectCode, RoomName};

/// What the application is told.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server accepted the Hello.
    Connected(pb::Welcome),
    /// A room is live. `recovered` is meaningful when `resumed` is true.
    Subscribed {
        /// The room.
        room: RoomName,
        /// Whether this subscription resumed from a known position.
        resumed: bool,
        /// Whether every missed event is being replayed.
        recovered: bool,
        /// How many events are replayed.
        replayed: u32,
    },
    /// A resumed room could not be recovered: events were missed and will not come.
    /// The application should refetch the room's state from the backend.
    RecoveryFailed {
        /// The room.
        room: RoomName,
    },
    /// The server refused a subscription, or ended one on its own (its grant was withdrawn
    /// by a token refresh); the room is forgotten.
    SubscribeFailed {
        /// The room.
        room: RoomName,
        /// Why.
        error: pb::Error,
    },
    /// An event of a room, in offset order, never twice.
    Event {
        /// The room.
        room: RoomName,
        /// Its offset.
        offset: u64,
        /// The event.
        event: pb::Event,
    },
    /// An ephemeral event (typing).
    Ephemeral {
        /// The room.
        room: RoomName,
        /// The event.
        event: pb::Event,
    },
    /// The connection's token expires soon: get a fresh one and pass it to
    /// [`ClientSession::refresh`], or call [`ClientSession::token_unavailable`] when none
    /// can be had (the session then asks again after a short delay).
    TokenNeeded,
    /// Answer to a publish, typing, unsubscribe or refresh request.
    Reply {
        /// The request id returned when the request was made.
        id: u32,
        /// The outcome.
        result: Result<pb::Reply, pb::Error>,
    },
    /// The connection ended.
    Disconnected {
        /// The server's code, if it sent one.
        code: Option<u32>,
        /// The server's reason.
        reason: String,
        /// `Some(delay)`: reconnect after at least this long. `None`: do not reconnect.
        reconnect: Option<Duration>,
    },
}

/// Where the client stands with one room.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SubscriptionState {
    /// Wanted; sent on the next (re)connect.
    Wanted,
    /// Subscribe sent with this request id.
    Joining(u32),
    Live,
}

#[derive(Debug, Clone)]
struct Room {
    state: SubscriptionState,
    position: Option<pb::StreamPosition>,
    token: String,
    /// Joined automatically by the server (own and account rooms).
    auto: bool,
    /// The current join resumes from a position.
    resuming: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    AwaitingWelcome,
    Ready,
}

/// Where the connection's token refresh stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    /// Nothing planned: not connected, or the token never expires.
    Idle,
    /// Ask for a token at this time.
    Due(Instant),
    /// [`ClientEvent::TokenNeeded`] was emitted; waiting for the token.
    Asked,
    /// The refresh request with this id awaits its reply.
    Sent(u32),
}

/// The wall-clock time (unix milliseconds) that corresponds to an `Instant`.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    at: Instant,
    unix_ms: i64,
}

impl WallClock {
    fn unix_ms(&self, now: Instant) -> i64 {
        match now.checked_duration_since(self.at) {
            Some(ahead) => self.unix_ms.saturating_add(ahead.as_millis() as i64),
            None => self
                .unix_ms
                .saturating_sub(self.at.duration_since(now).as_millis() as i64),
        }
    }
}

/// The client's session.
#[derive(Debug)]
pub struct ClientSession {
    state: State,
    next_id: u32,
    rooms: BTreeMap<RoomName, Room>,
    /// Request ids of unsubscribe/publish/typing/refresh awaiting a reply.
    requests: HashMap<u32, ()>,
    transmit: VecDeque<pb::ClientFrame>,
    events: VecDeque<ClientEvent>,
    heartbeat: Duration,
    last_tx: Instant,
    last_rx: Instant,
    client_name: String,
    client_version: String,
    /// Room events that arrived (on other streams) before the Welcome that names their room.
    early: Vec<pb::RoomEvent>,
    clock: WallClock,
    /// When the connection's token expires, unix milliseconds (0: never).
    expires_at_ms: i64,
    /// When that token was planned to be replaced (`None`: never).
    replace_at: Option<Instant>,
    refresh: Refresh,
    refresh_margin: Duration,
}

/// Most early events kept while waiting for the Welcome.
const MAX_EARLY_EVENTS: usize = 1024;

/// How long to wait before asking for a token again after a failed refresh (or one that
/// did not push the expiry back).
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// Why a request could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not connected (or not yet welcomed).
    #[error("not connected")]
    NotConnected,
    /// The room name is invalid.
    #[error("invalid room name")]
    InvalidRoom,
}

/// Validates a room argument.
fn room_name(room: &str) -> Result<RoomName, RequestError> {
    RoomName::parse(room).map_err(|_| RequestError::InvalidRoom)
}

impl ClientSession {
    /// How long before the token expires a fresh one is asked for, unless
    /// [`set_refresh_margin`](Self::set_refresh_margin) says otherwise.
    pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);

    /// A disconnected session.
    pub fn new(client_name: &str, client_version: &str, now: Instant) -> Self {
        ClientSession {
            state: State::Disconnected,
            next_id: 1,
            rooms: BTreeMap::new(),
            requests: HashMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            heartbeat: Duration::from_secs(25),
            last_tx: now,
            last_rx: now,
            client_name: client_name.into(),
            client_version: client_version.into(),
            early: Vec::new(),
            clock: WallClock { at: now, unix_ms: 0 },
            expires_at_ms: 0,
            replace_at: None,
            refresh: Refresh::Idle,
            refresh_margin: Self::DEFAULT_REFRESH_MARGIN,
        }
    }

    /// Asks for a fresh token `margin` before the current one expires (at most half of
    /// its remaining life).
    pub fn set_refresh_margin(&mut self, margin: Duration) {
        self.refresh_margin = margin;
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn send(&mut self, id: u32, kind: C) {
        self.transmit.push_back(pb::ClientFrame { id, kind: Some(kind) });
    }

    /// Whether the session is welcomed and usable.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The last position seen in a room.
    pub fn position(&self, room: &str) -> Option<&pb::StreamPosition> {
        self.rooms.get(&RoomName::parse(room).ok()?)?.position.as_ref()
    }

    /// Rooms the session keeps (live or to be joined).
    pub fn rooms(&self) -> impl Iterator<Item = &RoomName> {
        self.rooms.keys()
    }

    /// The transport is open: say Hello with `token`, resuming the automatic rooms.
    /// `unix_ms` is the wall-clock time (milliseconds since the Unix epoch) at `now`; the
    /// token's expiry is measured against it.
    pub fn connect(&mut self, token: &str, now: Instant, unix_ms: i64) {
        self.state = State::AwaitingWelcome;
        self.last_rx = now;
        self.last_tx = now;
        self.clock = WallClock { at: now, unix_ms };
        self.expires_at_ms = 0;
        self.replace_at = None;
        self.refresh = Refresh::Idle;
        let recover = self
            .rooms
            .iter()
            .filter(|(_, r)| r.auto)
            .filter_map(|(name, r)| {
                Some(pb::RoomPosition {
                    room: name.to_string(),
                    position: Some(r.position.clone()?),
                })
            })
            .collect();
        self.send(
            0,
            C::Hello(pb::Hello {
                token: token.into(),
                client_name: self.client_name.clone(),
                client_version: self.client_version.clone(),
                recover,
            }),
        );
    }

    fn send_subscribe(&mut self, name: &RoomName) {
        let id = self.id();
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        room.state = SubscriptionState::Joining(id);
        room.resuming = room.position.is_some();
        let since = room.position.clone();
        let token = room.token.clone();
        self.send(
            id,
            C::Subscribe(pb::Subscribe {
                room: name.to_string(),
                since,
                token,
            }),
        );
    }

    /// Whether a room is joined and live.
    pub fn is_live(&self, room: &str) -> bool {
        RoomName::parse(room)
            .ok()
            .and_then(|room| self.rooms.get(&room))
            .is_some_and(|r| r.state == SubscriptionState::Live)
    }

    /// Joins `room` (now if ready, else on connect), with an optional subscription token.
    /// Joining a room that is already live changes nothing.
    pub fn subscribe(&mut self, room: &str, token: Option<&str>) -> Result<(), RequestError> {
        let room = room_name(room)?;
        let entry = self.rooms.entry(room.clone()).or_insert(Room {
            state: SubscriptionState::Wanted,
            position: None,
            token: String::new(),
            auto: false,
            resuming: false,
        });
        entry.token = token.unwrap_or_default().to_string();
        if self.state == State::Ready && entry.state == SubscriptionState::Wanted {
            self.send_subscribe(&room);
        }
        Ok(())
    }

    /// Joins `room` resuming from a position the application kept (e.g. across restarts).
    pub fn subscribe_from(
        &mut self,
        room: &str,
        token: Option<&str>,
        since: pb::StreamPosition,
    ) -> Result<(), RequestError> {
        let room = room_name(room)?;
        self.rooms.insert(
            room.clone(),
            Room {
                state: SubscriptionState::Wanted,
                position: Some(since),
                token: token.unwrap_or_default().to_string(),
                auto: false,
                resuming: false,
            },
        );
        if self.state == State::Ready {
            self.send_subscribe(&room);
        }
        Ok(())
    }

    fn request(&mut self, kind: C) -> Result<u32, RequestError> {
        if self.state != State::Ready {
            return Err(RequestError::NotConnected);
        }
        let id = self.id();
        self.requests.insert(id, ());
        self.send(id, kind);
        Ok(id)
    }

    /// Leaves a room. Returns the request id when an Unsubscribe was sent.
    pub fn unsubscribe(&mut self, room: &str) -> Result<Option<u32>, RequestError> {
        let room = room_name(room)?;
        let Some(entry) = self.rooms.remove(&room) else {
            return Ok(None);
        };
        if self.state != State::Ready || entry.state == SubscriptionState::Wanted {
            return Ok(None);
        }
        self.request(C::Unsubscribe(pb::Unsubscribe {
            room: room.to_string(),
        }))
        .map(Some)
    }

    /// Publishes a client event to a joined room.
    pub fn publish(&mut self, room: &str, event: pb::Event) -> Result<u32, RequestError> {
        let room = room_name(room)?;
        self.request(C::Publish(pb::Publish {
            room: room.to_string(),
            event: Some(event),
        }))
    }

    /// Typing on/off in a conversation room. Returns the frame to send (callers may send
    /// it as a datagram); it is not queued.
    pub fn typing_frame(&self, room: &str, on: bool, private: bool) -> Result<pb::ClientFrame, RequestError> {
        let room = room_name(room)?;
        Ok(pb::ClientFrame {
            id: 0,
            kind: Some(C::Typing(pb::Typing {
                room: room.to_string(),
                on,
                private,
            })),
        })
    }

    /// Sets the agent's availability.
    pub fn set_availability(&mut self, availability: pb::Availability) -> Result<u32, RequestError> {
        self.request(C::SetAvailability(pb::SetAvailability {
            availability: availability as i32,
        }))
    }

    /// Asks for the account's presence (answered by a Reply with `presence`).
    pub fn query_presence(&mut self) -> Result<u32, RequestError> {
        self.request(C::Presence(pb::PresenceQuery {}))
    }

    /// Sends a fresh token for the live connection (the answer to
    /// [`ClientEvent::TokenNeeded`], or at any other time). Its reply plans the next
    /// refresh from the new expiry; when it is refused, the current token stays and a new
    /// one is asked for at the planned time, or after a short delay if that has passed.
    pub fn refresh(&mut self, token: &str) -> Result<u32, RequestError> {
        let id = self.request(C::Refresh(pb::RefreshToken { token: token.into() }))?;
        self.refresh = Refresh::Sent(id);
        Ok(id)
    }

    /// No token could be had after [`ClientEvent::TokenNeeded`]: it is asked for again
    /// after a short delay.
    pub fn token_unavailable(&mut self, now: Instant) {
        if self.refresh == Refresh::Asked {
            self.retry_refresh(now);
        }
    }

    /// The token expires at `expires_at_ms` (0: never): a replacement is asked for the
    /// margin ahead of that, at most half of the time it has left.
    fn plan_refresh(&mut self, expires_at_ms: i64, now: Instant) {
        self.expires_at_ms = expires_at_ms;
        self.replace_at = (expires_at_ms > 0).then(|| {
            let left_ms = expires_at_ms.saturating_sub(self.clock.unix_ms(now)).max(0);
            let left = Duration::from_millis(left_ms as u64);
            let lead = self.refresh_margin.min(left / 2);
            now + (left - lead)
        });
        self.refresh = self.replace_at.map_or(Refresh::Idle, Refresh::Due);
    }

    /// The last refresh got nowhere: the current token stays, and a new one is asked for
    /// at the planned time, or after a short delay if that has passed.
    fn retry_refresh(&mut self, now: Instant) {
        self.refresh = match self.replace_at {
            Some(at) => Refresh::Due(at.max(now + REFRESH_RETRY)),
            None => Refresh::Idle,
        };
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<pb::ClientFrame> {
        let frame = self.transmit.pop_front()?;
        self.last_tx = now;
        Some(frame)
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due: the next heartbeat, the
    /// silence deadline or the next token refresh.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Disconnected => None,
            State::AwaitingWelcome | State::Ready => {
                let alive = (self.last_tx + self.heartbeat).min(self.last_rx + self.dead_after());
                Some(match self.refresh {
                    Refresh::Due(at) => alive.min(at),
                    Refresh::Idle | Refresh::Asked | Refresh::Sent(_) => alive,
                })
            }
        }
    }

    fn dead_after(&self) -> Duration {
        self.heartbeat * 2 + Duration::from_secs(5)
    }

    /// Sends a heartbeat when due; reports the connection dead when the server has been
    /// silent too long (the caller then closes the transport and reconnects); asks for a
    /// fresh token when the refresh is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Disconnected {
            return;
        }
        if now >= self.last_rx + self.dead_after() {
            self.transport_closed();
            self.events.push_back(ClientEvent::Disconnected {
                code: None,
                reason: "no answer from the server".into(),
                reconnect: Some(Duration::ZERO),
            });
            return;
        }
        if now >= self.last_tx + self.heartbeat {
            let nonce = now.elapsed().as_nanos() as u64;
            self.send(0, C::Ping(pb::Ping { nonce }));
            self.last_tx = now;
        }
        if let Refresh::Due(at) = self.refresh
            && now >= at
        {
            self.refresh = Refresh::Asked;
            self.events.push_back(ClientEvent::TokenNeeded);
        }
    }

    /// The transport closed (or was found dead): requests in flight are lost, rooms are
    /// kept with their positions and joined again on the next connect; no refresh is
    /// planned until the next Welcome.
    pub fn transport_closed(&mut self) {
        self.state = State::Disconnected;
        self.refresh = Refresh::Idle;
        self.transmit.clear();
        self.early.clear();
        for id in std::mem::take(&mut self.requests).into_keys() {
            self.events.push_back(ClientEvent::Reply {
                id,
                result: Err(pb::Error {
                    code: 0,
                    message: "connection lost".into(),
                }),
            });
        }
        for room in self.rooms.values_mut() {
            room.state = SubscriptionState::Wanted;
        }
    }

    fn subscribed(&mut self, result: &pb::SubscribeResult) {
        let Ok(name) = RoomName::parse(&result.room) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&name) else {
            return;
        };
        room.state = SubscriptionState::Live;
        let resumed = room.resuming;
        if !result.recovered {
            let top = pb::StreamPosition {
                epoch: result.epoch.clone(),
                offset: result.offset,
            };
            room.position = match room.position.take() {
                Some(p) if p.epoch == top.epoch && p.offset > top.offset => Some(p),
                _ => Some(top),
            };
        } else if room.position.is_none() {
            room.position = Some(pb::StreamPosition {
                epoch: result.epoch.clone(),
                offset: result.offset,
            });
        }
        self.events.push_back(ClientEvent::Subscribed {
            room: name.clone(),
            resumed,
            recovered: result.recovered,
            replayed: result.replayed,
        });
        if resumed && !result.recovered {
            self.events.push_back(ClientEvent::RecoveryFailed { room: name });
        }
    }

    /// A frame from the server.
    pub fn handle_frame(&mut self, frame: pb::ServerFrame, now: Instant) {
        self.last_rx = now;
        match frame.kind {
            None => {}
            Some(S::Welcome(welcome)) => {
                self.state = State::Ready;
                self.heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(1000)));
                self.plan_refresh(welcome.token_expires_at_ms, now);
                for r in &welcome.rooms {
                    let Ok(name) = RoomName::parse(&r.room) else {
                        continue;
                    };
                    let room = self.rooms.entry(name).or_insert(Room {
                        state: SubscriptionState::Live,
                        position: None,
                        token: String::new(),
                        auto: true,
                        resuming: false,
                    });
                    room.auto = true;
                    room.resuming = room.position.is_some();
                    self.subscribed(r);
                }
                self.events.push_back(ClientEvent::Connected(welcome));
                for ev in std::mem::take(&mut self.early) {
                    self.handle_event(ev);
                }
                let wanted: Vec<RoomName> = self
                    .rooms
                    .iter()
                    .filter(|(_, r)| r.state == SubscriptionState::Wanted && !r.auto)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in wanted {
                    self.send_subscribe(&name);
                }
            }
            Some(S::Reply(reply)) => self.handle_reply(reply, now),
            Some(S::Event(ev)) => self.handle_event(ev),
            Some(S::Ephemeral(ep)) => {
                if let Some(event) = ep.event
                    && let Ok(room) = RoomName::parse(&ep.room)
                {
                    self.events.push_back(ClientEvent::Ephemeral { room, event });
                }
            }
            Some(S::Reset(reset)) => {
                if let Ok(name) = RoomName::parse(&reset.room)
                    && let Some(room) = self.rooms.get_mut(&name)
                {
                    room.position = reset.position;
                    self.events.push_back(ClientEvent::RecoveryFailed { room: name });
                }
            }
            Some(S::Unsubscribed(u)) => {
                if let Ok(name) = RoomName::parse(&u.room)
                    && self.rooms.remove(&name).is_some()
                {
                    self.events.push_back(ClientEvent::SubscribeFailed {
                        room: name,
                        error: u.error.unwrap_or_default(),
                    });
                }
            }
            Some(S::Pong(_)) => {}
            Some(S::Disconnect(d)) => {
                self.transport_closed();
                let advice = d
                    .reconnect
                    .then(|| Duration::from_millis(u64::from(d.reconnect_after_ms)));
                self.events.push_back(ClientEvent::Disconnected {
                    code: Some(d.code),
                    reason: d.reason,
                    reconnect: advice,
                });
            }
        }
    }

    fn handle_event(&mut self, ev: pb::RoomEvent) {
        let Ok(name) = RoomName::parse(&ev.room) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&name) else {
            // On WebTransport an automatic room's events may overtake the Welcome.
            if self.state == State::AwaitingWelcome && self.early.len() < MAX_EARLY_EVENTS {
                self.early.push(ev);
            }
            return;
        };
        let fresh = match &room.position {
            Some(p) if p.epoch == ev.epoch => ev.offset > p.offset,
            _ => true,
        };
        if !fresh {
            return;
        }
        room.position = Some(pb::StreamPosition {
            epoch: ev.epoch,
            offset: ev.offset,
        });
        if let Some(event) = ev.event {
            self.events.push_back(ClientEvent::Event {
                room: name,
                offset: ev.offset,
                event,
            });
        }
    }

    fn handle_reply(&mut self, reply: pb::Reply, now: Instant) {
        if let Some(result) = &reply.subscribed {
            let joining = RoomName::parse(&result.room)
                .ok()
                .and_then(|name| self.rooms.get(&name))
                .is_some_and(|r| r.state == SubscriptionState::Joining(reply.id));
            if joining {
                self.subscribed(result);
            }
            return;
        }
        let joining = self
            .rooms
            .iter()
            .find(|(_, r)| r.state == SubscriptionState::Joining(reply.id))
            .map(|(n, _)| n.clone());
        if let Some(room) = joining {
            let error = reply.error.unwrap_or_default();
            if error.code == rtgate_protocol::ErrorCode::AlreadySubscribed.code() {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.state = SubscriptionState::Live;
                }
                return;
            }
            self.rooms.remove(&room);
            self.events
                .push_back(ClientEvent::SubscribeFailed { room, error });
            return;
        }
        if self.requests.remove(&reply.id).is_some() {
            if self.refresh == Refresh::Sent(reply.id) {
                match (&reply.error, &reply.refreshed) {
                    (Some(_), _) => self.retry_refresh(now),
                    (None, refreshed) => {
                        let expires = refreshed.as_ref().map_or(0, |r| r.token_expires_at_ms);
                        let later = expires <= 0 || expires > self.expires_at_ms;
                        self.plan_refresh(expires, now);
                        if !later {
                            // The same token again (or an older one): asking at once would
                            // get the same answer.
                            self.retry_refresh(now);
                        }
                    }
                }
            }
            let id = reply.id;
            let result = match reply.error.clone() {
                Some(err) => Err(err),
                None => Ok(reply),
            };
            self.events.push_back(ClientEvent::Reply { id, result });
        }
    }
}

/// Whether a disconnect code means the credentials must be renewed before reconnecting.
pub fn needs_new_token(code: Option<u32>) -> bool {
    matches!(
        code.and_then(DisconnectCode::from_code),
        Some(DisconnectCode::TokenExpired | DisconnectCode::Unauthorized)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome(rooms: &[(&str, &str, u64, bool)]) -> pb::ServerFrame {
        pb::ServerFrame {
            kind: Some(S::Welcome(pb::Welcome {
                heartbeat_interval_ms: 10_000,
                rooms: rooms
                    .iter()
                    .map(|(room, epoch, offset, recovered)| pb::SubscribeResult {
                        room: room.to_string(),
                        epoch: epoch.to_string(),
                        offset: *offset,
                        recovered: *recovered,
                        replayed: 0,
                    })
                    .collect(),
                ..Default::default()
            })),
        }
    }

    fn event(room: &str, epoch: &str, offset: u64) -> pb::ServerFrame {
        pb::ServerFrame {
            kind: Some(S::Event(pb::RoomEvent {
                room: room.into(),
                epoch: epoch.into(),
                offset,
                event: Some(pb::Event {
                    name: format!("e{offset}"),
                    ..Default::default()
                }),
            })),
        }
    }

    fn sub_reply(id: u32, room: &str, epoch: &str, offset: u64, recovered: bool) -> pb::ServerFrame {
        pb::ServerFrame {
            kind: Some(S::Reply(pb::Reply {
                id,
                subscribed: Some(pb::SubscribeResult {
                    room: room.into(),
                    epoch: epoch.into(),
                    offset,
                    recovered,
                    replayed: 0,
                }),
                ..Default::default()
            })),
        }
    }

    const T0_MS: i64 = 1_700_000_000_000;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    /// A Welcome with a long heartbeat, so that only the refresh deadline matters.
    fn welcome_expiring(token_expires_at_ms: i64) -> pb::ServerFrame {
        pb::ServerFrame {
            kind: Some(S::Welcome(pb::Welcome {
                heartbeat_interval_ms: 3_600_000,
                token_expires_at_ms,
                ..Default::default()
            })),
        }
    }

    fn refreshed(id: u32, token_expires_at_ms: i64) -> pb::ServerFrame {
        pb::ServerFrame {
            kind: Some(S::Reply(pb::Reply {
                id,
                refreshed: Some(pb::RefreshResult { token_expires_at_ms }),
                ..Default::default()
            })),
        }
    }

    fn refused(id: u32) -> pb::ServerFrame {
        pb::ServerFrame {
            kind: Some(S::Reply(pb::Reply {
                id,
                error: Some(pb::Error {
                    code: 401,
                    message: "unauthorized".into(),
                }),
                ..Default::default()
            })),
        }
    }

    fn token_needed(s: &mut ClientSession) -> usize {
        drain(s)
            .iter()
            .filter(|e| matches!(e, ClientEvent::TokenNeeded))
            .count()
    }

    /// A session welcomed at `t0` with a token expiring at `expires_at_ms`.
    fn welcomed(t0: Instant, expires_at_ms: i64) -> ClientSession {
        let mut s = ClientSession::new("t", "0", t0);
        s.connect("tok", t0, T0_MS);
        s.handle_frame(welcome_expiring(expires_at_ms), t0);
        sent(&mut s, t0);
        drain(&mut s);
        s
    }

    fn drain(s: &mut ClientSession) -> Vec<ClientEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn sent(s: &mut ClientSession, now: Instant) -> Vec<pb::ClientFrame> {
        std::iter::from_fn(|| s.poll_transmit(now)).collect()
    }

    fn offsets(events: &[ClientEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Event { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rooms_resume_from_their_last_position_after_a_reconnect() {
        let t0 = Instant::now();
        let mut s = ClientSession::new("t", "0", t0);
        s.subscribe("public:1:a", None).unwrap();
        s.connect("tok", t0, T0_MS);
        assert!(matches!(sent(&mut s, t0)[0].kind, Some(C::Hello(_))));
        s.handle_frame(welcome(&[("user:1", "u", 0, false)]), t0);
        let subs = sent(&mut s, t0);
        let Some(C::Subscribe(sub)) = &subs[0].kind else {
            panic!()
        };
        assert_eq!((sub.room.as_str(), sub.since.is_none()), ("public:1:a", true));
        s.handle_frame(sub_reply(subs[0].id, "public:1:a", "E", 5, false), t0);
        for o in 6..=8 {
            s.handle_frame(event("public:1:a", "E", o), t0);
        }
        s.handle_frame(event("user:1", "u", 1), t0);
        assert_eq!(offsets(&drain(&mut s)), vec![6, 7, 8, 1]);

        s.transport_closed();
        s.connect("tok", t0, T0_MS);
        let hello = sent(&mut s, t0);
        let Some(C::Hello(h)) = &hello[0].kind else {
            panic!()
        };
        assert_eq!(h.recover.len(), 1, "the automatic room resumes through Hello");
        assert_eq!(h.recover[0].position.as_ref().unwrap().offset, 1);
        s.handle_frame(welcome(&[("user:1", "u", 1, true)]), t0);
        let subs = sent(&mut s, t0);
        let Some(C::Subscribe(sub)) = &subs[0].kind else {
            panic!()
        };
        assert_eq!(sub.since.as_ref().unwrap().offset, 8);
        // Replays, possibly overlapping what was seen: duplicates are dropped.
        s.handle_frame(event("public:1:a", "E", 8), t0);
        s.handle_frame(event("public:1:a", "E", 9), t0);
        s.handle_frame(sub_reply(subs[0].id, "public:1:a", "E", 10, true), t0);
        s.handle_frame(event("public:1:a", "E", 10), t0);
        s.handle_frame(event("public:1:a", "E", 9), t0);
        let events = drain(&mut s);
        assert_eq!(offsets(&events), vec![9, 10]);
        assert!(events.iter().any(|e| matches!(
            e,
            ClientEvent::Subscribed {
                resumed: true,
                recovered: true,
                ..
            }
        )));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ClientEvent::RecoveryFailed { .. }))
        );
    }

    #[test]
    fn an_unrecoverable_gap_is_reported_and_the_position_jumps_to_the_top() {
        let t0 = Instant::now();
        let mut s = ClientSession::new("t", "0", t0);
        s.subscribe_from(
            "public:1:a",
            None,
            pb::StreamPosition {
                epoch: "E".into(),
                offset: 3,
            },
        )
        .unwrap();
        s.connect("tok", t0, T0_MS);
        s.handle_frame(welcome(&[]), t0);
        let subs: Vec<_> = sent(&mut s, t0)
            .into_iter()
            .filter(|f| matches!(f.kind, Some(C::Subscribe(_))))
            .collect();
        s.handle_frame(sub_reply(subs[0].id, "public:1:a", "F", 40, false), t0);
        let events = drain(&mut s);
        assert!(events.contains(&ClientEvent::RecoveryFailed {
            room: room("public:1:a")
        }));
        assert_eq!(
            s.position("public:1:a").unwrap(),
            &pb::StreamPosition {
                epoch: "F".into(),
                offset: 40
            }
        );
        s.handle_frame(event("public:1:a", "F", 40), t0);
        s.handle_frame(event("public:1:a", "F", 41), t0);
        assert_eq!(offsets(&drain(&mut s)), vec![41]);
    }

    #[test]
    fn events_that_overtake_the_welcome_are_kept() {
        let t0 = Instant::now();
        let mut s = ClientSession::new("t", "0", t0);
        s.connect("tok", t0, T0_MS);
        s.handle_frame(event("user:1", "u", 1), t0);
        s.handle_frame(welcome(&[("user:1", "u", 0, false)]), t0);
        assert_eq!(offsets(&drain(&mut s)), vec![1]);
    }

    #[test]
    fn heartbeats_are_sent_and_a_silent_server_is_declared_dead() {
        let t0 = Instant::now();
        let mut s = ClientSession::new("t", "0", t0);
        s.connect("tok", t0, T0_MS);
        sent(&mut s, t0);
        s.handle_frame(welcome(&[]), t0);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        s.handle_timeout(t0 + Duration::from_secs(10));
        let ping = sent(&mut s, t0 + Duration::from_secs(10));
        assert!(matches!(ping[0].kind, Some(C::Ping(_))));
        // Dead after twice the heartbeat plus 5 s of silence.
        s.handle_timeout(t0 + Duration::from_millis(24_999));
        assert!(s.is_ready());
        s.handle_timeout(t0 + Duration::from_secs(25));
        assert!(!s.is_ready());
        assert!(drain(&mut s).iter().any(|e| matches!(
            e,
            ClientEvent::Disconnected {
                code: None,
                reconnect: Some(_),
                ..
            }
        )));
    }

    #[test]
    fn requests_in_flight_fail_when_the_connection_drops() {
        let t0 = Instant::now();
        let mut s = ClientSession::new("t", "0", t0);
        assert_eq!(
            s.publish("public:1:a", pb::Event::default()),
            Err(RequestError::NotConnected)
        );
        s.connect("tok", t0, T0_MS);
        s.handle_frame(welcome(&[]), t0);
        let id = s.publish("public:1:a", pb::Event::default()).unwrap();
        s.transport_closed();
        assert!(
            drain(&mut s)
                .iter()
                .any(|e| matches!(e, ClientEvent::Reply { id: i, result: Err(_) } if *i == id))
        );
    }

    #[test]
    fn server_disconnect_advice_is_passed_on() {
        let t0 = Instant::now();
        let mut s = ClientSession::new("t", "0", t0);
        s.connect("tok", t0, T0_MS);
        s.handle_frame(
            pb::ServerFrame {
                kind: Some(S::Disconnect(DisconnectCode::Shutdown.frame("bye"))),
            },
            t0,
        );
        assert_eq!(
            drain(&mut s),
            vec![ClientEvent::Disconnected {
                code: Some(3001),
                reason: "bye".into(),
                reconnect: Some(Duration::from_millis(500)),
            }]
        );
        assert!(needs_new_token(Some(DisconnectCode::TokenExpired.code())));
        assert!(!needs_new_token(Some(DisconnectCode::Shutdown.code())));
    }

    #[test]
    fn a_fresh_token_is_asked_for_ahead_of_expiry() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut s = ClientSession::new("t", "0", t0);
        // Wall-clock time is anchored at connect; the Welcome comes a second later.
        s.connect("tok", t0, T0_MS);
        s.handle_frame(welcome_expiring(T0_MS + 600_000), t0 + secs(1));
        drain(&mut s);
        // 599 s left: asked for 60 s (the default margin) before the expiry.
        assert_eq!(s.poll_timeout(), Some(t0 + secs(540)));
        s.handle_timeout(t0 + secs(540) - Duration::from_millis(1));
        assert_eq!(token_needed(&mut s), 0);
        s.handle_timeout(t0 + secs(540));
        assert_eq!(token_needed(&mut s), 1);
        // Asked once: nothing more until the token comes.
        assert_eq!(s.poll_timeout(), Some(t0 + secs(3600)));
        s.handle_timeout(t0 + secs(600));
        assert_eq!(token_needed(&mut s), 0);

        // A short-lived token is refreshed at half its remaining life.
        let s = welcomed(t0, T0_MS + 4_000);
        assert_eq!(s.poll_timeout(), Some(t0 + secs(2)));
        // The margin is configurable.
        let mut s = ClientSession::new("t", "0", t0);
        s.set_refresh_margin(secs(10));
        s.connect("tok", t0, T0_MS);
        s.handle_frame(welcome_expiring(T0_MS + 600_000), t0);
        assert_eq!(s.poll_timeout(), Some(t0 + secs(590)));
        // A token already expired is refreshed at once.
        let s = welcomed(t0, T0_MS - 1_000);
        assert_eq!(s.poll_timeout(), Some(t0));
    }

    #[test]
    fn a_failed_refresh_is_retried_after_a_delay() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut s = welcomed(t0, T0_MS + 600_000);
        s.handle_timeout(t0 + secs(540));
        assert_eq!(token_needed(&mut s), 1);
        let id = s.refresh("tok2").unwrap();
        let frames = sent(&mut s, t0 + secs(540));
        assert!(matches!(&frames[0].kind, Some(C::Refresh(r)) if r.token == "tok2"));
        // The server refuses it: the error is passed on and a token asked for again 5 s later.
        s.handle_frame(refused(id), t0 + secs(541));
        assert!(drain(&mut s).contains(&ClientEvent::Reply {
            id,
            result: Err(pb::Error {
                code: 401,
                message: "unauthorized".into()
            }),
        }));
        assert_eq!(s.poll_timeout(), Some(t0 + secs(546)));
        s.handle_timeout(t0 + secs(546));
        assert_eq!(token_needed(&mut s), 1);
        // No token to be had: asked for again 5 s after that.
        s.token_unavailable(t0 + secs(547));
        assert_eq!(s.poll_timeout(), Some(t0 + secs(552)));
        s.handle_timeout(t0 + secs(551));
        assert_eq!(token_needed(&mut s), 0);
        s.handle_timeout(t0 + secs(552));
        assert_eq!(token_needed(&mut s), 1);
        // Reporting a missing token when none was asked for changes nothing.
        let mut s = welcomed(t0, T0_MS + 600_000);
        s.token_unavailable(t0 + secs(10));
        assert_eq!(s.poll_timeout(), Some(t0 + secs(540)));
        // A refresh refused long before the expiry: the current token stays, and so does
        // the plan to replace it.
        let id = s.refresh("other").unwrap();
        s.handle_frame(refused(id), t0 + secs(11));
        assert_eq!(s.poll_timeout(), Some(t0 + secs(540)));
    }

    #[test]
    fn a_successful_refresh_plans_the_next_from_the_new_expiry() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut s = welcomed(t0, T0_MS + 600_000);
        s.handle_timeout(t0 + secs(540));
        assert_eq!(token_needed(&mut s), 1);
        let id = s.refresh("tok2").unwrap();
        s.handle_frame(refreshed(id, T0_MS + 1_200_000), t0 + secs(541));
        assert!(
            drain(&mut s)
                .iter()
                .any(|e| matches!(e, ClientEvent::Reply { id: i, result: Ok(_) } if *i == id))
        );
        assert_eq!(s.poll_timeout(), Some(t0 + secs(1140)));
        s.handle_timeout(t0 + secs(1140));
        assert_eq!(token_needed(&mut s), 1);
        // A refresh the application makes on its own also re-plans, and a new token that
        // never expires ends the refreshes.
        let id = s.refresh("tok3").unwrap();
        s.handle_frame(refreshed(id, 0), t0 + secs(1141));
        assert_eq!(s.poll_timeout(), Some(t0 + secs(3600)));
        s.handle_timeout(t0 + secs(3000));
        assert_eq!(token_needed(&mut s), 0);

        // A refresh that does not push the expiry back (the same token again) is not
        // repeated at once: the next one waits for the retry delay.
        let mut s = welcomed(t0, T0_MS + 4_000);
        s.handle_timeout(t0 + secs(2));
        assert_eq!(token_needed(&mut s), 1);
        let id = s.refresh("tok").unwrap();
        s.handle_frame(refreshed(id, T0_MS + 4_000), t0 + secs(2));
        assert_eq!(s.poll_timeout(), Some(t0 + secs(7)));
    }

    #[test]
    fn a_disconnect_clears_the_refresh() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut s = welcomed(t0, T0_MS + 600_000);
        s.transport_closed();
        assert_eq!(s.poll_timeout(), None);
        s.handle_timeout(t0 + secs(540));
        assert_eq!(token_needed(&mut s), 0);
        // Reconnected: nothing is planned before the new Welcome says when the token expires.
        s.connect("tok", t0 + secs(100), T0_MS + 100_000);
        assert_eq!(s.poll_timeout(), Some(t0 + secs(3700)));
        s.handle_timeout(t0 + secs(540));
        assert_eq!(token_needed(&mut s), 0);

        // A token asked for before the connection dropped is refused afterwards.
        let mut s = welcomed(t0, T0_MS + 600_000);
        s.handle_timeout(t0 + secs(540));
        assert_eq!(token_needed(&mut s), 1);
        s.transport_closed();
        assert_eq!(s.refresh("tok2"), Err(RequestError::NotConnected));
        s.token_unavailable(t0 + secs(541));
        assert_eq!(s.poll_timeout(), None);

        // A refresh in flight is lost with the connection and not retried on the next one.
        let mut s = welcomed(t0, T0_MS + 600_000);
        s.handle_timeout(t0 + secs(540));
        let id = s.refresh("tok2").unwrap();
        s.transport_closed();
        assert!(
            drain(&mut s)
                .iter()
                .any(|e| matches!(e, ClientEvent::Reply { id: i, result: Err(_) } if *i == id))
        );
        s.connect("tok", t0 + secs(541), T0_MS + 541_000);
        s.handle_frame(welcome_expiring(0), t0 + secs(541));
        s.handle_frame(refused(id), t0 + secs(542));
        assert_eq!(s.poll_timeout(), Some(t0 + secs(541 + 3600)));
    }

    #[test]
    fn a_token_that_never_expires_is_never_refreshed() {
        let t0 = Instant::now();
        let mut s = welcomed(t0, 0);
        let pong = || pb::ServerFrame {
            kind: Some(S::Pong(pb::Pong::default())),
        };
        for hour in 1..=48 {
            let now = t0 + Duration::from_secs(3600 * hour);
            assert_eq!(s.poll_timeout(), Some(now));
            s.handle_timeout(now);
            s.handle_frame(pong(), now);
            sent(&mut s, now);
            assert!(s.is_ready());
            assert_eq!(token_needed(&mut s), 0);
        }
    }

    #[test]
    fn room_arguments_are_validated_once_at_the_edge() {
        let t0 = Instant::now();
        let mut s = ClientSession::new("t", "0", t0);
        s.connect("tok", t0, T0_MS);
        s.handle_frame(welcome(&[]), t0);
        sent(&mut s, t0);
        drain(&mut s);
        let bad = "nope";
        assert_eq!(s.subscribe(bad, None), Err(RequestError::InvalidRoom));
        assert_eq!(
            s.subscribe_from(bad, None, pb::StreamPosition::default()),
            Err(RequestError::InvalidRoom)
        );
        assert_eq!(s.unsubscribe(bad), Err(RequestError::InvalidRoom));
        assert_eq!(
            s.publish(bad, pb::Event::default()),
            Err(RequestError::InvalidRoom)
        );
        assert_eq!(s.typing_frame(bad, true, false), Err(RequestError::InvalidRoom));
        assert!(!s.is_live(bad) && s.position(bad).is_none());
        assert!(sent(&mut s, t0).is_empty());
        s.subscribe("conversation:42", None).unwrap();
        assert_eq!(s.rooms().collect::<Vec<_>>(), [&room("conversation:42")]);
        // Frames naming a room that is not a room are ignored.
        s.handle_frame(event("nope", "E", 1), t0);
        assert!(drain(&mut s).is_empty());
    }
}
