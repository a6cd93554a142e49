//! The HTTP side of the gateway: the server API for backends (bearer API key), the
//! WebSocket endpoint, health and, in development mode, the certificate hash.
//!
//! API bodies are protobuf (`Content-Type: application/x-protobuf`) or the protobuf JSON
//! mapping (anything else); answers use the format asked for by `Accept`, else the
//! request's.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, FromRequest, Path, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use prost::Message;
use rtgate_protocol::{ErrorCode, RoomName, pb};
use sha2::{Digest, Sha256};

mod delivery;

use crate::engine::{EngineError, with_timeout};
use crate::node::Node;
use crate::transport::{httpstream, websocket};

/// Most rooms one publish may target.
pub const MAX_PUBLISH_ROOMS: usize = 1000;

/// Largest request body of the server API.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Development credentials: when set, `/dev/token` mints tokens with them.
    pub dev: Option<crate::dev::DevCredentials>,
    /// The node.
    pub node: Arc<Node>,
    /// SHA-256 of the API key.
    pub api_key_sha256: [u8; 32],
    /// Hex SHA-256 of the development certificate, when one is in use.
    pub dev_cert_sha256: Option<String>,
    /// The WebTransport (UDP) port, announced with the development certificate.
    pub wt_port: u16,
    /// Largest encoded event accepted.
    pub max_event_size: usize,
    /// Where domain events are queued for the bus.
    pub events: Arc<dyn crate::events::queue::EventQueue>,
    /// The delivery destinations.
    pub destinations: Arc<crate::delivery::store::Destinations>,
    /// The delivery queue (dead letters, replay).
    pub deliveries: Arc<dyn crate::delivery::queue::DeliveryQueue>,
    /// The business listeners' state (participants mirrored by the backend).
    pub listener_state: Arc<dyn crate::events::state::ListenerState>,
    /// What `/cable` connections need.
    pub cable: Arc<crate::actioncable::Cable>,
}

/// What the router serves besides the API, WebSocket and health.
#[derive(Debug, Clone, Default)]
pub struct RouterOptions {
    /// Serve `/metrics` here (off when metrics have a listener of their own).
    pub metrics: bool,
    /// Serve the demo page from these directories (page, browser package): development only.
    pub demo: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Request bodies must arrive within this.
    pub body_timeout: std::time::Duration,
    /// Serve the admin console at `/admin/`, its browser package from this directory.
    pub console: Option<std::path::PathBuf>,
}

/// The router serving `/ws`, `/api/v1/*`, `/healthz`, `/readyz`, `/dev/*`, and as
/// configured `/metrics` and `/demo`.
pub fn router(state: HttpState, options: RouterOptions) -> Router {
    // The API key is checked before any body is read; every answer under /api/v1,
    // unknown paths and methods included, is an ApiError.
    let api = Router::new()
        .route("/publish", post(publish))
        .route("/events", post(publish_events))
        .route("/rooms/{room}", get(room_info))
        .route("/disconnect", post(disconnect))
        .route("/presence/{account}", get(presence))
        .route("/availability", post(availability))
        .route(
            "/destinations/installation",
            put(delivery::put_installation)
                .delete(delivery::delete_installation)
                .get(delivery::get_installation),
        )
        .route("/destinations/{collection}", get(delivery::list))
        .route(
            "/destinations/{collection}/{id}",
            put(delivery::put).delete(delivery::delete),
        )
        .route(
            "/mirror/participants/{account}/{conversation}",
            put(delivery::put_participants),
        )
        .route(
            "/mirror/pubsub-tokens",
            put(delivery::put_pubsub_token).delete(delivery::delete_pubsub_token),
        )
        .route("/mirror/{collection}", get(delivery::list_mirror))
        .route(
            "/mirror/{collection}/{id}",
            put(delivery::put_mirror).delete(delivery::delete_mirror),
        )
        .route("/console/token", get(console_token))
        .route("/console/rooms", get(console_rooms))
        .route("/console/history/{room}", get(console_history))
        .route("/deliveries/dead", get(delivery::dead_letters))
        .route("/deliveries/dead/{id}", axum::routing::delete(delivery::discard))
        .route("/deliveries/dead/{id}/replay", post(delivery::replay))
        .fallback(api_not_found)
        .method_not_allowed_fallback(api_method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_api_key))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            options.body_timeout,
        ));
    let mut app = Router::new()
        .nest("/api/v1", api)
        .route("/dev/token", get(dev_token))
        .route("/ws", get(ws_upgrade))
        .route("/cable", get(cable_upgrade))
        .merge(http_fallback_routes(options.body_timeout))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/dev/cert-hash", get(cert_hash));
    if options.metrics {
        app = app.route("/metrics", get(metrics_text));
    }
    if let Some(pkg_dir) = &options.console {
        use tower_http::services::ServeDir;
        let asset = |body: &'static str, kind: &'static str| {
            move || async move {
                (
                    [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-store")],
                    body,
                )
            }
        };
        app = app
            .route(
                "/admin",
                get(|| async { axum::response::Redirect::permanent("/admin/") }),
            )
            .route(
                "/admin/",
                get(asset(crate::console::PAGE, "text/html; charset=utf-8")),
            )
            .route(
                "/admin/console.js",
                get(asset(crate::console::SCRIPT, "text/javascript; charset=utf-8")),
            )
            .route(
                "/admin/console.css",
                get(asset(crate::console::STYLE, "text/css; charset=utf-8")),
            )
            .nest_service("/admin/pkg", ServeDir::new(pkg_dir));
    }
    if let Some((demo_dir, pkg_dir)) = &options.demo {
        use tower_http::services::ServeDir;
        app = app
            .nest_service("/demo/pkg", ServeDir::new(pkg_dir))
            .nest_service(
                "/demo",
                ServeDir::new(demo_dir).append_index_html_on_directories(true),
            );
    }
    app.with_state(state)
}

/// The router of a metrics-only listener.
pub fn metrics_router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn require_api_key(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let (_, format) = formats(request.headers());
    match authorize(&state, request.headers(), format) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

async fn api_not_found(headers: HeaderMap) -> ApiError {
    ApiError::new(
        formats(&headers).1,
        StatusCode::NOT_FOUND,
        ErrorCode::BadRequest,
        "no such API endpoint",
    )
}

async fn api_method_not_allowed(headers: HeaderMap) -> ApiError {
    ApiError::new(
        formats(&headers).1,
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest,
        "method not allowed on this endpoint",
    )
}

/// A request body of the server API, read only after the key was checked, within
/// [`MAX_BODY_BYTES`] and the body timeout; failures are `ApiError`s (413, 408, 400).
struct ApiBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let format = formats(req.headers()).1;
        let too_large = || {
            ApiError::new(
                format,
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadRequest,
                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            )
        };
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > MAX_BODY_BYTES as u64
        {
            return Err(too_large());
        }
        let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES);
        match http_body_util::BodyExt::collect(limited).await {
            Ok(collected) => Ok(ApiBody(collected.to_bytes())),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(err) if is_timeout(&*err) => Err(ApiError::new(
                format,
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                "the request body did not arrive in time",
            )),
            Err(err) => Err(ApiError::bad_request(
                format,
                format!("cannot read the request body: {err}"),
            )),
        }
    }
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

async fn ws_upgrade(
    State(state): State<HttpState>,
    client: Option<Extension<crate::http::ClientConn>>,
    ws: WebSocketUpgrade,
) -> Response {
    let node = state.node.clone();
    let client = client.map(|Extension(c)| c);
    sized(ws, &node).on_upgrade(move |socket| websocket::serve(node, socket, client))
}

/// `/cable`: ActionCable's protocol, for clients written for Rails.
async fn cable_upgrade(
    State(state): State<HttpState>,
    client: Option<Extension<crate::http::ClientConn>>,
    ws: WebSocketUpgrade,
) -> Response {
    let node = state.node.clone();
    let cable = state.cable.clone();
    let client = client.map(|Extension(c)| c);
    sized(ws.protocols([crate::actioncable::wire::SUBPROTOCOL]), &node)
        .on_upgrade(move |socket| crate::transport::actioncable::serve(node, cable, socket, client))
}

/// The HTTP fallback transport, open to pages of any origin: the session id in the
/// stream's response header is the only credential a send carries. Sends go to one fixed
/// URL (their session and number in headers), so a browser's preflight is cached.
fn http_fallback_routes(body_timeout: std::time::Duration) -> Router<HttpState> {
    use tower_http::cors::{Any, CorsLayer};
    let name = header::HeaderName::from_static;
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            name(httpstream::SESSION_HEADER),
            name(httpstream::SEQ_HEADER),
        ])
        .expose_headers([name(httpstream::SESSION_HEADER)])
        .max_age(std::time::Duration::from_secs(600));
    Router::new()
        .route("/http/stream", get(http_stream))
        .route("/http/send", post(http_send))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_timeout))
        .layer(cors)
}

/// `GET /http/stream`: a response that carries the session's frames until it closes.
async fn http_stream(
    State(state): State<HttpState>,
    client: Option<Extension<crate::http::ClientConn>>,
) -> Response {
    let opened = httpstream::open(state.node.clone(), client.map(|Extension(c)| c));
    let mut response = Response::new(opened.body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store, no-transform"),
    );
    // Tells nginx (and proxies that follow it) not to buffer the stream.
    headers.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    if let Some(session) = opened.session
        && let Ok(value) = header::HeaderValue::from_str(&session)
    {
        headers.insert(httpstream::SESSION_HEADER, value);
    }
    response
}

/// `POST /http/send` with `rtgate-session: ID` and `rtgate-seq: N`: batch `N` (from 0) of
/// the session's frames, each length-prefixed (docs/protocol.md, section 2, has the
/// answers).
async fn http_send(
    State(state): State<HttpState>,
    client: Option<Extension<crate::http::ClientConn>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    use httpstream::Delivered;
    let text = |status: StatusCode, message: &str| (status, message.to_string()).into_response();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(session), Some(seq)) = (
        header(httpstream::SESSION_HEADER),
        header(httpstream::SEQ_HEADER).and_then(|v| v.parse::<u64>().ok()),
    ) else {
        return text(
            StatusCode::BAD_REQUEST,
            "rtgate-session and rtgate-seq (a number) are required",
        );
    };
    let node = &state.node;
    let Some(owner) = node.http_streams.owner_of(session) else {
        return text(StatusCode::NOT_FOUND, "no such session");
    };
    let body = match axum::body::to_bytes(body, httpstream::max_send_bytes(node)).await {
        Ok(body) => body,
        Err(err) if is_timeout(&err) => {
            return text(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time");
        }
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "a send carries at most four frames' worth",
            );
        }
    };
    if owner != node.session.node_id {
        use httpstream::PassedOn;
        let ip = client.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |Extension(c)| c.addr.ip());
        return match node
            .http_streams
            .pass_on(node, owner, session, seq, &body, ip)
            .await
        {
            PassedOn::Sent => StatusCode::ACCEPTED.into_response(),
            PassedOn::OverBudget => text(
                StatusCode::TOO_MANY_REQUESTS,
                "too much sent through this node; send again later",
            ),
            PassedOn::NoOtherNode => text(StatusCode::NOT_FOUND, "no such session"),
            PassedOn::Unreachable => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot reach the node holding the stream",
            ),
        };
    }
    let max = node.session.max_frame_size;
    match node.http_streams.deliver(session, seq, &body, max, false) {
        Delivered::Taken | Delivered::Duplicate => StatusCode::NO_CONTENT.into_response(),
        Delivered::Early => text(StatusCode::CONFLICT, "an earlier batch is still on its way"),
        Delivered::Busy => text(StatusCode::TOO_MANY_REQUESTS, "the session is behind"),
        Delivered::Malformed => text(StatusCode::BAD_REQUEST, "not a batch of frames"),
        Delivered::TooMany => text(StatusCode::PAYLOAD_TOO_LARGE, "a send carries at most 64 frames"),
        Delivered::Lost | Delivered::Unknown => text(StatusCode::NOT_FOUND, "no such session"),
    }
}

/// A WebSocket's buffers: small, grown only for large frames (idle connections stay
/// cheap), and messages up to the socket's hard limit (4× the frame limit).
fn sized(ws: WebSocketUpgrade, node: &Node) -> WebSocketUpgrade {
    let max = node.session.max_frame_size;
    ws.read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(max * 4)
        .max_frame_size(max * 4)
}

/// A room name from a path, or the API's 422 `invalid_room`.
fn parse_room(format: Format, room: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(room).map_err(|e| {
        ApiError::new(
            format,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRoom,
            e.to_string(),
        )
    })
}

/// `GET /api/v1/console/token`: a connection token for the admin console, which joins the
/// console room with it.
async fn console_token(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let now = crate::connection::unix_ms() / 1000;
    let token = state.node.auth.console_token(now).ok_or_else(|| {
        ApiError::new(
            answer_format(&headers),
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            "this gateway mints no console tokens",
        )
    })?;
    Ok(axum::Json(serde_json::json!({
        "token": token,
        "room": crate::auth::console_room().as_str(),
        "expiresAt": now + crate::auth::CONSOLE_TOKEN_SECS,
    }))
    .into_response())
}

/// `GET /api/v1/console/rooms`: the rooms with subscribers on the node that answers, and
/// who they are.
async fn console_rooms(State(state): State<HttpState>) -> Response {
    let rooms: Vec<serde_json::Value> = state
        .node
        .engine
        .hub()
        .members()
        .into_iter()
        .map(|(room, members)| {
            let members: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
            serde_json::json!({ "room": room.as_str(), "members": members })
        })
        .collect();
    axum::Json(serde_json::json!({ "node": state.node.session.node_id, "rooms": rooms })).into_response()
}

/// Query of `/api/v1/console/history/{room}`.
#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    limit: Option<u64>,
}

/// `GET /api/v1/console/history/{room}?limit=N`: the room's position, subscribers and its
/// newest N events (20 by default, at most 100) still in history.
async fn console_history(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    query: Result<axum::extract::Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let format = answer_format(&headers);
    let axum::extract::Query(query) =
        query.map_err(|_| ApiError::bad_request(format, "limit must be a number"))?;
    let room = parse_room(format, &room)?;
    let engine = &state.node.engine;
    let info = with_timeout(engine.room_info(&room))
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let top = info.pos.offset;
    let mut events = Vec::new();
    let mut lost = false;
    if top > 0 {
        let cursor = crate::hub::ReplayCursor {
            epoch: info.pos.epoch.clone(),
            next: top.saturating_sub(limit - 1).max(1),
            until: top,
            after_id: None,
        };
        match with_timeout(engine.replay_page(&room, &cursor, 1 << 20)).await {
            Ok(crate::hub::ReplayPage::Events(publications, _)) => {
                for p in publications {
                    if let Ok(pb::ServerFrame {
                        kind: Some(pb::server_frame::Kind::Event(e)),
                    }) = pb::ServerFrame::decode(&p.frame[..])
                    {
                        let event = e.event.unwrap_or_default();
                        events.push(serde_json::json!({
                            "offset": e.offset,
                            "id": event.id,
                            "name": event.name,
                            "json": event.json,
                            "occurredAtMs": event.occurred_at_ms,
                        }));
                    }
                }
            }
            Ok(crate::hub::ReplayPage::Lost(_)) => lost = true,
            Err(e) => return Err(ApiError::engine(format, &e)),
        }
    }
    Ok(axum::Json(serde_json::json!({
        "room": room.as_str(),
        "epoch": info.pos.epoch.to_string(),
        "offset": top,
        "subscribers": info.subscribers,
        "events": events,
        "lost": lost,
    }))
    .into_response())
}

/// Query of `/dev/token`.
#[derive(Debug, serde::Deserialize)]
struct DevTokenQuery {
    user: Option<u64>,
    account: Option<u64>,
    role: Option<String>,
    inboxes: Option<String>,
    conversation: Option<u64>,
    ttl: Option<u64>,
}

/// Development only: a connection token (and a subscription token for a conversation).
/// Answers 404 unless the gateway runs with generated development credentials.
async fn dev_token(
    State(state): State<HttpState>,
    axum::extract::Query(q): axum::extract::Query<DevTokenQuery>,
) -> Response {
    use crate::dev::{ConnectionClaims, SubscriptionClaims};
    let Some(dev) = &state.dev else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let user = q.user.unwrap_or(1).max(1);
    let role = q.role.unwrap_or_else(|| "agent".into());
    if !matches!(role.as_str(), "agent" | "admin" | "contact") {
        return (StatusCode::BAD_REQUEST, "role is agent, admin or contact").into_response();
    }
    let exp = crate::connection::unix_ms() / 1000 + q.ttl.unwrap_or(3600).clamp(1, 86_400);
    let inboxes = q
        .inboxes
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let own = if role == "contact" {
        RoomName::contact(user)
    } else {
        RoomName::user(user)
    };
    let token = dev.sign(&ConnectionClaims {
        sub: user.to_string(),
        account_id: q.account.unwrap_or(1).max(1),
        role,
        inboxes,
        exp,
    });
    let subscription = q.conversation.map(|c| {
        dev.sign(&SubscriptionClaims {
            sub: own.to_string(),
            room: RoomName::conversation(c).to_string(),
            exp,
        })
    });
    axum::Json(serde_json::json!({ "token": token, "subscription_token": subscription, "exp": exp }))
        .into_response()
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.node),
    )
        .into_response()
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.node.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if state.node.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !state.node.engine.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "engine unavailable").into_response()
    } else if !state.node.auth.revocations().is_known() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading revocations").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

async fn cert_hash(State(state): State<HttpState>) -> Response {
    match &state.dev_cert_sha256 {
        Some(hex) => {
            let bytes = hex::decode(hex).unwrap_or_default();
            axum::Json(serde_json::json!({
                "algorithm": "sha-256",
                "hex": hex,
                "bytes": bytes,
                "webtransport_port": state.wt_port,
            }))
            .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Protobuf,
}

fn is_protobuf(value: Option<&header::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("protobuf"))
}

fn formats(headers: &HeaderMap) -> (Format, Format) {
    let req = if is_protobuf(headers.get(header::CONTENT_TYPE)) {
        Format::Protobuf
    } else {
        Format::Json
    };
    let resp = match headers.get(header::ACCEPT) {
        Some(v) if is_protobuf(Some(v)) => Format::Protobuf,
        Some(v) if v.to_str().is_ok_and(|v| v.contains("json")) => Format::Json,
        _ => req,
    };
    (req, resp)
}

fn respond<T: Message + serde::Serialize>(format: Format, status: StatusCode, body: &T) -> Response {
    match format {
        Format::Protobuf => (
            status,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            body.encode_to_vec(),
        )
            .into_response(),
        Format::Json => (status, axum::Json(body)).into_response(),
    }
}

/// A failed API call.
struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    format: Format,
}

impl ApiError {
    fn bad_request(format: Format, message: impl Into<String>) -> Self {
        ApiError::new(format, StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    fn new(format: Format, status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            format,
        }
    }

    fn engine(format: Format, err: &EngineError) -> Self {
        match err {
            EngineError::Unavailable(_) => ApiError::new(
                format,
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "engine unavailable; retry with the same event id (receivers drop duplicates by id)",
            ),
            EngineError::Internal(_) => ApiError::new(
                format,
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "engine failure",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = pb::ApiError {
            code: self.code.code(),
            message: self.message,
        };
        let mut resp = respond(self.format, self.status, &body);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

fn authorize(state: &HttpState, headers: &HeaderMap, format: Format) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Comparing digests keeps the comparison independent of where the key differs.
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if presented.is_empty() || digest != state.api_key_sha256 {
        return Err(ApiError::new(
            format,
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong API key",
        ));
    }
    Ok(())
}

fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    format: Format,
    body: &[u8],
) -> Result<T, ApiError> {
    let result = match format {
        Format::Protobuf => T::decode(body).map_err(|e| e.to_string()),
        Format::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
    };
    result.map_err(|e| ApiError::new(format, StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e))
}

/// Decodes a request body (the key was checked by the API's middleware); returns it with
/// the answer format.
fn decode_body<T: Message + Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(T, Format), ApiError> {
    let (req_format, format) = formats(headers);
    let req = decode(req_format, body).map_err(|e| ApiError { format, ..e })?;
    Ok((req, format))
}

/// The answer format of a request without a body.
fn answer_format(headers: &HeaderMap) -> Format {
    formats(headers).1
}

async fn publish(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let (req, format): (pb::PublishRequest, _) = decode_body(&headers, &body)?;
    let bad = |msg: String, code| ApiError::new(format, StatusCode::BAD_REQUEST, code, msg);
    let Some(mut event) = req.event else {
        return Err(bad("event is required".into(), ErrorCode::BadRequest));
    };
    if event.name.is_empty() {
        return Err(bad("event.name is required".into(), ErrorCode::BadRequest));
    }
    if event.encoded_len() > state.max_event_size {
        return Err(ApiError::new(
            format,
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BadRequest,
            format!("events are limited to {} bytes (encoded)", state.max_event_size),
        ));
    }
    if req.rooms.is_empty() || req.rooms.len() > MAX_PUBLISH_ROOMS {
        return Err(bad(
            format!("between 1 and {MAX_PUBLISH_ROOMS} rooms"),
            ErrorCode::BadRequest,
        ));
    }
    let mut rooms = Vec::with_capacity(req.rooms.len());
    for r in &req.rooms {
        let room = RoomName::parse(r).map_err(|e| {
            ApiError::new(
                format,
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidRoom,
                format!("{r:?}: {e}"),
            )
        })?;
        rooms.push(room);
    }
    // An id given by the backend is the idempotency key: a retry of a publish that failed
    // (503) or whose answer was lost is not delivered twice.
    let key = (!event.id.is_empty()).then(|| event.id.clone());
    if key.is_none() {
        event.id = uuid::Uuid::new_v4().to_string();
    }
    if event.occurred_at_ms == 0 {
        event.occurred_at_ms = crate::connection::unix_ms() as i64;
    }
    let started = std::time::Instant::now();
    // Encoded once for every room.
    let encoded = event.encode_to_vec();
    let mut positions = Vec::with_capacity(rooms.len());
    for room in &rooms {
        let published = with_timeout(state.node.engine.publish(room, &encoded, key.as_deref()))
            .await
            .map_err(|e| ApiError::engine(format, &e))?;
        positions.push(pb::PublishedRoom {
            room: room.to_string(),
            position: Some(published.pos.to_pb()),
            duplicate: published.duplicate,
        });
    }
    Ok(respond(format, StatusCode::OK, &{
        metrics::counter!("rtgate_events_published_total", "source" => "api")
            .increment(positions.len() as u64);
        metrics::histogram!("rtgate_publish_seconds").record(started.elapsed().as_secs_f64());
        pb::PublishResponse { positions }
    }))
}

/// Most events in one `POST /api/v1/events`.
const MAX_EVENTS_PER_BATCH: usize = 500;

async fn publish_events(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    use crate::events::{ingest, queue::Appended};
    use pb::event_outcome::Status;
    let (req, format): (pb::PublishEventsRequest, _) = decode_body(&headers, &body)?;
    if req.events.is_empty() || req.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(ApiError::bad_request(
            format,
            format!("between 1 and {MAX_EVENTS_PER_BATCH} events"),
        ));
    }
    let mut outcomes: Vec<pb::EventOutcome> = Vec::with_capacity(req.events.len());
    let mut accepted = Vec::with_capacity(req.events.len());
    for event in req.events {
        let outcome = match ingest::check(&event, state.max_event_size) {
            Ok(()) => Status::Accepted,
            Err(reason) => {
                metrics::counter!("rtgate_events_ingested_total", "source" => "http", "outcome" => "rejected")
                    .increment(1);
                outcomes.push(pb::EventOutcome {
                    id: event.id.clone(),
                    status: Status::Rejected as i32,
                    reason,
                });
                continue;
            }
        };
        outcomes.push(pb::EventOutcome {
            id: event.id.clone(),
            status: outcome as i32,
            reason: String::new(),
        });
        accepted.push((outcomes.len() - 1, event));
    }
    if !accepted.is_empty() {
        let events: Vec<pb::DomainEvent> = accepted.iter().map(|(_, e)| e.clone()).collect();
        let appended = state
            .events
            .append(&events)
            .await
            .map_err(|e| ApiError::engine(format, &e))?;
        for ((i, _), appended) in accepted.iter().zip(appended) {
            let label = match appended {
                Appended::Accepted => "accepted",
                Appended::Duplicate => {
                    outcomes[*i].status = Status::Duplicate as i32;
                    "duplicate"
                }
            };
            metrics::counter!("rtgate_events_ingested_total", "source" => "http", "outcome" => label)
                .increment(1);
        }
    }
    Ok(respond(
        format,
        StatusCode::OK,
        &pb::PublishEventsResponse { outcomes },
    ))
}

async fn room_info(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let format = answer_format(&headers);
    let room = parse_room(format, &room)?;
    let info = state
        .node
        .engine
        .room_info(&room)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    Ok(respond(
        format,
        StatusCode::OK,
        &pb::RoomInfo {
            room: room.to_string(),
            subscribers: info.subscribers,
            epoch: info.pos.epoch.to_string(),
            offset: info.pos.offset,
        },
    ))
}

async fn presence(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(account): Path<u64>,
) -> Result<Response, ApiError> {
    let format = answer_format(&headers);
    let presence = state
        .node
        .presence
        .snapshot(account)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    Ok(respond(format, StatusCode::OK, &presence))
}

async fn availability(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let (req, format): (pb::SetAvailabilityRequest, _) = decode_body(&headers, &body)?;
    if req.account_id == 0 || req.user_id == 0 {
        return Err(ApiError::bad_request(
            format,
            "account_id and user_id are required",
        ));
    }
    let availability = pb::Availability::try_from(req.availability)
        .map_err(|_| ApiError::bad_request(format, "unknown availability"))?;
    let entry = state
        .node
        .presence
        .set_availability(req.account_id, req.user_id, availability)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    Ok(respond(format, StatusCode::OK, &entry))
}

async fn disconnect(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let (req, format): (pb::DisconnectUserRequest, _) = decode_body(&headers, &body)?;
    let (contact, id) = match req.user_id.strip_prefix("contact:") {
        Some(rest) => (true, rest),
        None => (false, req.user_id.as_str()),
    };
    let id: u64 = id
        .parse()
        .ok()
        .filter(|n: &u64| *n > 0 && n.to_string() == id)
        .ok_or(())
        .map_err(|_| {
            ApiError::new(
                format,
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "user_id is a user id (\"7\") or a contact (\"contact:7\")",
            )
        })?;
    let reason = if req.reason.is_empty() {
        "disconnected by the server"
    } else {
        &req.reason
    };
    let node = &state.node;
    let now = crate::connection::unix_ms() / 1000;
    let revoke_before = if req.revoke_tokens {
        // Tokens issued (`iat`) up to this second are refused, here and (through the
        // engine) on every node, for as long as any of them could still be valid.
        let before = now + 1;
        let until = before + node.auth.max_validity_secs();
        node.auth.revocations().revoke(contact, id, before, until);
        with_timeout(node.engine.store_revocation(contact, id, before, until))
            .await
            .map_err(|e| ApiError::engine(format, &e))?;
        before
    } else {
        0
    };
    let n = node.kick(contact, id, reason);
    let message = crate::engine::bus::ControlMessage::Kick {
        origin: node.session.node_id.clone(),
        contact,
        id,
        revoke_before,
        reason: reason.to_string(),
    };
    let nodes = with_timeout(node.engine.broadcast_control(&message))
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    Ok(respond(
        format,
        StatusCode::OK,
        &pb::DisconnectUserResponse {
            connections: n as u32,
            nodes,
        },
    ))
}
