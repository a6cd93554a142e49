//! The client's options, read from the JavaScript object given to the constructor.

use std::time::Duration;

use js_sys::{Function, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

use super::js::field;
use crate::connector::TransportPreference;

/// What the application configured.
pub(crate) struct Options {
    pub(crate) webtransport_url: String,
    pub(crate) websocket_url: String,
    pub(crate) http_url: String,
    pub(crate) cert_hash: Option<Vec<u8>>,
    pub(crate) token: Function,
    pub(crate) prefer: TransportPreference,
    /// Which transports have a URL (WebTransport, WebSocket, HTTP).
    pub(crate) enabled: [bool; 3],
    pub(crate) connect_timeout: Duration,
    pub(crate) fallback_cooldown: Duration,
    pub(crate) refresh_margin: Duration,
    pub(crate) client_name: String,
    pub(crate) on_state_change: Option<Function>,
    pub(crate) on_room_reset: Option<Function>,
    pub(crate) on_event: Option<Function>,
    pub(crate) on_presence: Option<Function>,
}

fn string(object: &JsValue, name: &str) -> Option<String> {
    field(object, name).and_then(|v| v.as_string())
}

fn function(object: &JsValue, name: &str) -> Result<Option<Function>, String> {
    match field(object, name) {
        None => Ok(None),
        Some(v) => v
            .dyn_into::<Function>()
            .map(Some)
            .map_err(|_| format!("{name} must be a function")),
    }
}

fn millis(object: &JsValue, name: &str, default: u64) -> Duration {
    let ms = field(object, name)
        .and_then(|v| v.as_f64())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map_or(default, |ms| ms as u64);
    Duration::from_millis(ms)
}

/// A SHA-256 given as bytes (`Uint8Array` or an array of numbers) or as hex.
fn cert_hash(value: &JsValue) -> Result<Vec<u8>, String> {
    let bytes = if let Some(hex) = value.as_string() {
        (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_default()
    } else {
        Uint8Array::new(value).to_vec()
    };
    if bytes.len() == 32 {
        Ok(bytes)
    } else {
        Err("certificateHash must be 32 bytes (SHA-256)".into())
    }
}

/// The HTTP fallback beside a WebSocket endpoint: `ws(s)://host/…/ws` becomes
/// `http(s)://host/…/http`; `None` for any other WebSocket URL.
fn http_url_beside(websocket_url: &str) -> Option<String> {
    let rest = websocket_url.strip_suffix("/ws")?;
    if let Some(host) = rest.strip_prefix("wss://") {
        Some(format!("https://{host}/http"))
    } else {
        rest.strip_prefix("ws://")
            .map(|host| format!("http://{host}/http"))
    }
}

impl Options {
    /// Reads and checks the options object.
    pub(crate) fn parse(object: &JsValue) -> Result<Options, String> {
        let webtransport_url = string(object, "webTransportUrl").unwrap_or_default();
        let websocket_url = string(object, "webSocketUrl").unwrap_or_default();
        let http_url = match (string(object, "httpUrl"), field(object, "httpFallback")) {
            (Some(url), _) => url,
            (None, Some(off)) if off.is_falsy() => String::new(),
            (None, _) => http_url_beside(&websocket_url).unwrap_or_default(),
        };
        let have = [&webtransport_url, &websocket_url, &http_url].map(|u| !u.is_empty());
        let only = |kind: usize, preference| {
            if have[kind] {
                Ok(preference)
            } else {
                Err("the chosen transport has no URL".to_string())
            }
        };
        // `auto` uses the transports that have a URL (`enabled`), in order.
        let prefer = match string(object, "transport").as_deref() {
            None | Some("auto") if have == [false; 3] => {
                return Err("webTransportUrl, webSocketUrl or httpUrl is required".into());
            }
            None | Some("auto") => TransportPreference::Auto,
            Some("webtransport") => only(0, TransportPreference::WebTransport)?,
            Some("websocket") => only(1, TransportPreference::WebSocket)?,
            Some("http") => only(2, TransportPreference::Http)?,
            Some(other) => return Err(format!("unknown transport {other:?}")),
        };
        let token = function(object, "token")?.ok_or("token (a function) is required")?;
        Ok(Options {
            webtransport_url,
            websocket_url,
            http_url,
            enabled: have,
            cert_hash: field(object, "certificateHash")
                .map(|v| cert_hash(&v))
                .transpose()?,
            token,
            prefer,
            connect_timeout: millis(object, "connectTimeoutMs", 3000),
            fallback_cooldown: millis(object, "fallbackCooldownMs", 300_000),
            refresh_margin: millis(object, "refreshMarginMs", 60_000),
            client_name: string(object, "clientName").unwrap_or_else(|| "rtgate-wasm".into()),
            on_state_change: function(object, "onStateChange")?,
            on_room_reset: function(object, "onRoomReset")?,
            on_event: function(object, "onEvent")?,
            on_presence: function(object, "onPresence")?,
        })
    }
}
