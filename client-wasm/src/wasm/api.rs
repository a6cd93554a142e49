//! The JavaScript API: the `RtgateClient` class and its TypeScript types.

use futures::channel::{mpsc, oneshot};
use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, spawn_local};

use super::driver::{Command, Driver, Input};
use super::js::{error, field, from_js, provide};
use super::options::Options;
use rtgate_protocol::pb;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** Options of a client. At least one URL is needed. */
export interface ClientOptions {
  /** WebTransport URL, e.g. "https://127.0.0.1:4433/wt". */
  webTransportUrl?: string;
  /** WebSocket URL, e.g. "ws://127.0.0.1:8080/ws". */
  webSocketUrl?: string;
  /**
   * HTTP fallback URL, e.g. "http://127.0.0.1:8080/http", for networks that let neither
   * QUIC nor WebSocket through. Default: beside a webSocketUrl ending in "/ws".
   */
  httpUrl?: string;
  /** false: no HTTP fallback unless httpUrl is given (default true). */
  httpFallback?: boolean;
  /** SHA-256 of a development certificate to trust (32 bytes, or 64 hex digits). */
  certificateHash?: Uint8Array | number[] | string;
  /** Returns a connection token; called at every connect and before the token expires. */
  token: () => Promise<string> | string;
  /**
   * "auto" (default: WebTransport, falling back to WebSocket, then HTTP, and moving back up
   * when a better one connects again), "webtransport", "websocket" or "http".
   */
  transport?: "auto" | "webtransport" | "websocket" | "http";
  /** How long a transport may take to open before the next one is tried (default 3000). */
  connectTimeoutMs?: number;
  /**
   * After a transport failed to open and a later one worked, how long reconnects skip it;
   * then it is tried beside the running connection, which moves over if it opens
   * (default 300000).
   */
  fallbackCooldownMs?: number;
  /** Refresh the token this long before it expires, at most half its remaining life (default 60000). */
  refreshMarginMs?: number;
  /** Name announced to the gateway. */
  clientName?: string;
  /** Called whenever the connection state changes. */
  onStateChange?: (state: ConnectionState) => void;
  /** A room's missed events could not be recovered: refetch its state from the backend. */
  onRoomReset?: (room: string) => void;
  /** Events of rooms without a handler of their own (e.g. the automatic user: and account: rooms). */
  onEvent?: (event: RoomEvent) => void;
  /** Presence events ("presence.*"), wherever they arrive (also given to the room's handler). */
  onPresence?: (event: RoomEvent) => void;
}

/** The connection state. */
export interface ConnectionState {
  state: "connecting" | "connected" | "waiting" | "offline" | "stopped";
  /** The transport being opened or in use. */
  transport: "webtransport" | "websocket" | "http" | null;
  /** Consecutive failed attempts. */
  attempt: number;
  /** While waiting: time until the next attempt. */
  retryInMs?: number;
  /** Why the last connection ended: the server's disconnect code, if any. */
  code?: number;
  /** Why the last connection ended. */
  reason?: string;
}

/** A room's position: its epoch and the offset of the last event seen. */
export interface StreamPosition { epoch: string; offset: string | number; }

/** An event of a room (or, with `ephemeral`, a typing indicator). */
export interface RoomEvent {
  room: string;
  /** The event's offset in its room; absent for ephemeral events. */
  offset?: number;
  ephemeral: boolean;
  /** The event, in the protobuf JSON mapping of rtgate.v1.Event (as in the server API). */
  event: RtgateEvent;
}

/** rtgate.v1.Event in its protobuf JSON mapping; the typed payload is one of its fields. */
export interface RtgateEvent {
  id?: string;
  name: string;
  accountId?: string;
  occurredAtMs?: string;
  performer?: { id?: string; name?: string; availableName?: string; avatarUrl?: string; availability?: string };
  /** Opaque JSON document. */
  json?: string;
  typing?: { room?: string; on?: boolean; private?: boolean; sender?: { kind?: string; id?: string } };
  presence?: Presence;
  [payload: string]: unknown;
}

/** An agent's availability. */
export type Availability = "online" | "busy" | "offline";

/** rtgate.v1.Presence: who in the account is online, with availability and last seen. */
export interface Presence { users?: PresenceEntry[]; contacts?: PresenceEntry[]; }

/** One user's or contact's presence. */
export interface PresenceEntry { id?: string; availability?: string; online?: boolean; lastSeenAtMs?: string; }

/** Options of a subscription. */
export interface SubscribeOptions {
  /** A subscription token, or a function returning one (called again at every reconnect). */
  token?: string | (() => Promise<string> | string);
  /** Resume from a position kept by the application. */
  since?: StreamPosition;
}

/** How a subscription became live. */
export interface SubscribeResult {
  room: string;
  /** The subscription resumed from a known position. */
  resumed: boolean;
  /** Every missed event is being replayed (meaningful when resumed). */
  recovered: boolean;
  /** How many events are replayed. */
  replayed: number;
}

/** Where a published event landed. */
export interface PublishResult { epoch: string; offset: string; }
"#;

#[wasm_bindgen]
extern "C" {
    /// The options object (see the `ClientOptions` interface).
    #[wasm_bindgen(typescript_type = "ClientOptions")]
    pub type ClientOptions;
    /// The options of a subscription (see the `SubscribeOptions` interface).
    #[wasm_bindgen(typescript_type = "SubscribeOptions")]
    pub type SubscribeOptions;
}

/// A realtime client: one connection to an rtgate gateway, kept alive over WebTransport
/// or WebSocket, that resumes every room after a reconnect without losing or repeating
/// events.
#[wasm_bindgen]
pub struct RtgateClient {
    inputs: mpsc::UnboundedSender<Input>,
}

impl RtgateClient {
    fn send(&self, command: Command) -> bool {
        self.inputs.unbounded_send(Input::Command(command)).is_ok()
    }

    /// A promise settled by the driver.
    fn request(&self, make: impl FnOnce(oneshot::Sender<Result<JsValue, JsValue>>) -> Command) -> Promise {
        let (done, rx) = oneshot::channel();
        let sent = self.send(make(done));
        future_to_promise(async move {
            if !sent {
                return Err(error(0, "client closed"));
            }
            rx.await.unwrap_or_else(|_| Err(error(0, "client closed")))
        })
    }
}

#[wasm_bindgen]
impl RtgateClient {
    /// Creates a client and starts connecting.
    #[wasm_bindgen(constructor)]
    pub fn new(options: ClientOptions) -> Result<RtgateClient, JsError> {
        let options = Options::parse(&options).map_err(|e| JsError::new(&e))?;
        let (driver, inputs) = Driver::new(options);
        spawn_local(driver.run());
        Ok(RtgateClient { inputs })
    }

    /// Joins a room; `handler` receives its events (and typing indicators). Resolves once
    /// the room is live, which waits for the connection if there is none yet.
    #[wasm_bindgen(unchecked_return_type = "Promise<SubscribeResult>")]
    pub fn subscribe(
        &self,
        room: String,
        #[wasm_bindgen(unchecked_param_type = "(event: RoomEvent) => void")] handler: Function,
        options: Option<SubscribeOptions>,
    ) -> Promise {
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        let token = field(&options, "token");
        let since = field(&options, "since");
        let inputs = self.inputs.clone();
        future_to_promise(async move {
            let since = since.map(|s| from_js::<pb::StreamPosition>(&s)).transpose()?;
            let token_provider = token.as_ref().and_then(|t| t.dyn_ref::<Function>().cloned());
            let token = match (&token_provider, token) {
                (Some(provider), _) => Some(provide(provider).await.map_err(|e| error(0, &e))?),
                (None, token) => token.and_then(|t| t.as_string()),
            };
            let (done, rx) = oneshot::channel();
            inputs
                .unbounded_send(Input::Command(Command::Subscribe {
                    room,
                    token,
                    token_provider,
                    since,
                    handler,
                    done,
                }))
                .map_err(|_| error(0, "client closed"))?;
            rx.await.unwrap_or_else(|_| Err(error(0, "client closed")))
        })
    }

    /// Leaves a room.
    pub fn unsubscribe(&self, room: String) {
        self.send(Command::Unsubscribe { room });
    }

    /// Publishes a client event (protobuf JSON mapping of rtgate.v1.Event, e.g.
    /// `{name: "client.note", json: "{}"}`) to a joined room.
    #[wasm_bindgen(unchecked_return_type = "Promise<PublishResult>")]
    pub fn publish(
        &self,
        room: String,
        #[wasm_bindgen(unchecked_param_type = "RtgateEvent")] event: JsValue,
    ) -> Promise {
        match from_js::<pb::Event>(&event) {
            Ok(event) => self.request(|done| Command::Publish {
                room,
                event: Box::new(event),
                done,
            }),
            Err(e) => Promise::reject(&e),
        }
    }

    /// Typing on or off in a joined conversation room (a datagram over WebTransport; may
    /// be lost; at most one per room every 300 ms is accepted).
    pub fn typing(&self, room: String, on: bool, private_note: Option<bool>) {
        self.send(Command::Typing {
            room,
            on,
            private: private_note.unwrap_or(false),
        });
    }

    /// Sets the agent's availability in the account: "online", "busy" or "offline".
    /// Everyone in the account room then gets a `presence.update` event.
    #[wasm_bindgen(js_name = setAvailability, unchecked_return_type = "Promise<void>")]
    pub fn set_availability(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Availability")] availability: String,
    ) -> Promise {
        let availability = match availability.as_str() {
            "online" => pb::Availability::Online,
            "busy" => pb::Availability::Busy,
            "offline" => pb::Availability::Offline,
            _ => return Promise::reject(&error(400, "availability is online, busy or offline")),
        };
        self.request(|done| Command::SetAvailability { availability, done })
    }

    /// The presence of the account's users and contacts (agents and admins only).
    #[wasm_bindgen(unchecked_return_type = "Promise<Presence>")]
    pub fn presence(&self) -> Promise {
        self.request(|done| Command::Presence { done })
    }

    /// The last position seen in a room, to resume from later with `since`.
    #[wasm_bindgen(unchecked_return_type = "Promise<StreamPosition | undefined>")]
    pub fn position(&self, room: String) -> Promise {
        self.request(|done| Command::Position { room, done })
    }

    /// Closes the connection and stops reconnecting.
    pub fn close(&self) {
        self.send(Command::Close);
    }
}

impl Drop for RtgateClient {
    fn drop(&mut self) {
        self.send(Command::Close);
    }
}
