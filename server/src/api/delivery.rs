//! The server API of what the backend mirrors into rtgate — the destinations
//! (`/api/v1/destinations/...`) and the business listeners' configuration
//! (`/api/v1/mirror/...`) — and of the dead deliveries (`/api/v1/deliveries/dead...`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use rtgate_protocol::{ErrorCode, pb};

use super::{ApiBody, ApiError, HttpState, answer_format, decode_body, respond};
use crate::delivery::directory::{self, Collection, Listed};
use crate::events::mirror;

fn collection(format: super::Format, label: &str) -> Result<Collection, ApiError> {
    match Collection::from_label(label) {
        Some(c) if c.is_mirror() => Err(ApiError::new(
            format,
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            format!("{label:?} is not a destination collection; it is under /api/v1/mirror/{label}"),
        )),
        Some(Collection::Installation) | None => Err(ApiError::new(
            format,
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            format!(
                "no destination collection {label:?} (webhooks, inbox-webhooks, agent-bots, hooks; or /installation)"
            ),
        )),
        Some(c) => Ok(c),
    }
}

fn invalid(format: super::Format, reason: String) -> ApiError {
    ApiError::new(
        format,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::BadRequest,
        reason,
    )
}

/// Decodes, checks and stores one record of `collection` with id `id` (the body's id, if
/// set, must be the path's); answers the record as listed.
async fn put_record(
    state: &HttpState,
    headers: &HeaderMap,
    body: &[u8],
    collection: Collection,
    id: u64,
) -> Result<Response, ApiError> {
    fn same(format: super::Format, body_id: &mut u64, id: u64) -> Result<(), ApiError> {
        if *body_id != 0 && *body_id != id {
            return Err(invalid(
                format,
                format!("the body's id {body_id} is not the path's {id}"),
            ));
        }
        *body_id = id;
        Ok(())
    }
    let format = answer_format(headers);
    let (encoded, listed) = match collection {
        Collection::Webhook => {
            let (mut w, format): (pb::Webhook, _) = decode_body(headers, body)?;
            same(format, &mut w.id, id)?;
            directory::check_webhook(&w).map_err(|e| invalid(format, e))?;
            (w.encode_to_vec(), Listed::Webhook(w))
        }
        Collection::InboxWebhook => {
            let (mut w, format): (pb::InboxWebhook, _) = decode_body(headers, body)?;
            same(format, &mut w.inbox_id, id)?;
            directory::check_inbox_webhook(&w).map_err(|e| invalid(format, e))?;
            (w.encode_to_vec(), Listed::InboxWebhook(w))
        }
        Collection::AgentBot => {
            let (mut b, format): (pb::AgentBot, _) = decode_body(headers, body)?;
            same(format, &mut b.id, id)?;
            directory::check_agent_bot(&b).map_err(|e| invalid(format, e))?;
            (b.encode_to_vec(), Listed::AgentBot(b))
        }
        Collection::Hook => {
            let (mut h, format): (pb::Hook, _) = decode_body(headers, body)?;
            same(format, &mut h.id, id)?;
            directory::check_hook(&h).map_err(|e| invalid(format, e))?;
            (h.encode_to_vec(), Listed::Hook(h))
        }
        Collection::Installation => {
            let (i, format): (pb::InstallationWebhook, _) = decode_body(headers, body)?;
            directory::check_installation(&i).map_err(|e| invalid(format, e))?;
            (i.encode_to_vec(), Listed::Installation(i))
        }
        Collection::Inbox => {
            let (mut i, format): (pb::InboxSettings, _) = decode_body(headers, body)?;
            same(format, &mut i.inbox_id, id)?;
            mirror::check_inbox(&i).map_err(|e| invalid(format, e))?;
            (i.encode_to_vec(), Listed::Inbox(i))
        }
        Collection::AccountUser => {
            let (mut u, format): (pb::AccountUser, _) = decode_body(headers, body)?;
            same(format, &mut u.id, id)?;
            mirror::check_account_user(&u).map_err(|e| invalid(format, e))?;
            (u.encode_to_vec(), Listed::AccountUser(u))
        }
        Collection::Team => {
            let (mut t, format): (pb::Team, _) = decode_body(headers, body)?;
            same(format, &mut t.id, id)?;
            mirror::check_team(&t).map_err(|e| invalid(format, e))?;
            (t.encode_to_vec(), Listed::Team(t))
        }
        Collection::Campaign => {
            let (mut c, format): (pb::Campaign, _) = decode_body(headers, body)?;
            same(format, &mut c.id, id)?;
            mirror::check_campaign(&c).map_err(|e| invalid(format, e))?;
            (c.encode_to_vec(), Listed::Campaign(c))
        }
        Collection::AutomationRule => {
            let (mut r, format): (pb::AutomationRule, _) = decode_body(headers, body)?;
            same(format, &mut r.id, id)?;
            mirror::check_rule(&r).map_err(|e| invalid(format, e))?;
            (r.encode_to_vec(), Listed::AutomationRule(r))
        }
    };
    state
        .destinations
        .put(collection, id, encoded)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    Ok(answer_listed(format, directory::redacted(listed)))
}

fn answer_listed(format: super::Format, listed: Listed) -> Response {
    match &listed {
        Listed::Webhook(w) => respond(format, StatusCode::OK, w),
        Listed::InboxWebhook(w) => respond(format, StatusCode::OK, w),
        Listed::AgentBot(b) => respond(format, StatusCode::OK, b),
        Listed::Hook(h) => respond(format, StatusCode::OK, h),
        Listed::Installation(i) => respond(format, StatusCode::OK, i),
        Listed::Inbox(i) => respond(format, StatusCode::OK, i),
        Listed::AccountUser(u) => respond(format, StatusCode::OK, u),
        Listed::Team(t) => respond(format, StatusCode::OK, t),
        Listed::Campaign(c) => respond(format, StatusCode::OK, c),
        Listed::AutomationRule(r) => respond(format, StatusCode::OK, r),
    }
}

async fn delete_record(
    state: &HttpState,
    headers: &HeaderMap,
    collection: Collection,
    id: u64,
) -> Result<Response, ApiError> {
    let format = answer_format(headers);
    let existed = state
        .destinations
        .delete(collection, id)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    if !existed {
        return Err(ApiError::new(
            format,
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            format!("no {} {id}", collection.label()),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Stores record `id` (not 0) of a numbered collection.
async fn put_numbered(
    state: &HttpState,
    headers: &HeaderMap,
    body: &[u8],
    collection: Collection,
    id: u64,
) -> Result<Response, ApiError> {
    if id == 0 {
        return Err(invalid(answer_format(headers), "the id must not be 0".into()));
    }
    put_record(state, headers, body, collection, id).await
}

/// `PUT /api/v1/destinations/{collection}/{id}`: create or replace.
pub(super) async fn put(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path((label, id)): Path<(String, u64)>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let c = collection(answer_format(&headers), &label)?;
    put_numbered(&state, &headers, &body, c, id).await
}

/// `DELETE /api/v1/destinations/{collection}/{id}`.
pub(super) async fn delete(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path((label, id)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let c = collection(answer_format(&headers), &label)?;
    delete_record(&state, &headers, c, id).await
}

/// `GET /api/v1/destinations/{collection}[?account_id=N]`: secrets left out.
pub(super) async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(label): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let c = collection(answer_format(&headers), &label)?;
    list_collection(&state, &headers, c, &query).await
}

/// Every record of `c`, of the account in `?account_id=N` if given, as its list message.
async fn list_collection(
    state: &HttpState,
    headers: &HeaderMap,
    c: Collection,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let format = answer_format(headers);
    let account = match query.get("account_id") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format, "account_id is a number"))?,
        ),
    };
    let listed = state
        .destinations
        .list(c)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    let mut webhooks = pb::WebhookList::default();
    let mut inbox_webhooks = pb::InboxWebhookList::default();
    let mut agent_bots = pb::AgentBotList::default();
    let mut hooks = pb::HookList::default();
    let mut inboxes = pb::InboxSettingsList::default();
    let mut users = pb::AccountUserList::default();
    let mut teams = pb::TeamList::default();
    let mut campaigns = pb::CampaignList::default();
    let mut rules = pb::AutomationRuleList::default();
    for record in listed {
        if account.is_some_and(|want| record.account_id() != want) {
            continue;
        }
        match record {
            Listed::Webhook(w) => webhooks.webhooks.push(w),
            Listed::InboxWebhook(w) => inbox_webhooks.inbox_webhooks.push(w),
            Listed::AgentBot(b) => agent_bots.agent_bots.push(b),
            Listed::Hook(h) => hooks.hooks.push(h),
            Listed::Installation(_) => {}
            Listed::Inbox(i) => inboxes.inboxes.push(i),
            Listed::AccountUser(u) => users.account_users.push(u),
            Listed::Team(t) => teams.teams.push(t),
            Listed::Campaign(x) => campaigns.campaigns.push(x),
            Listed::AutomationRule(r) => rules.automation_rules.push(r),
        }
    }
    let ok = StatusCode::OK;
    Ok(match c {
        Collection::Webhook => respond(format, ok, &webhooks),
        Collection::InboxWebhook => respond(format, ok, &inbox_webhooks),
        Collection::AgentBot => respond(format, ok, &agent_bots),
        Collection::Hook | Collection::Installation => respond(format, ok, &hooks),
        Collection::Inbox => respond(format, ok, &inboxes),
        Collection::AccountUser => respond(format, ok, &users),
        Collection::Team => respond(format, ok, &teams),
        Collection::Campaign => respond(format, ok, &campaigns),
        Collection::AutomationRule => respond(format, ok, &rules),
    })
}

fn mirror_collection(format: super::Format, label: &str) -> Result<Collection, ApiError> {
    match Collection::from_label(label) {
        Some(c) if c.is_mirror() => Ok(c),
        _ => Err(ApiError::new(
            format,
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            format!(
                "no mirror collection {label:?} (inboxes, account-users, teams, campaigns, automation-rules; or participants/ACCOUNT/CONVERSATION)"
            ),
        )),
    }
}

/// `PUT /api/v1/mirror/{collection}/{id}`: create or replace.
pub(super) async fn put_mirror(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path((label, id)): Path<(String, u64)>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let c = mirror_collection(answer_format(&headers), &label)?;
    put_numbered(&state, &headers, &body, c, id).await
}

/// `DELETE /api/v1/mirror/{collection}/{id}`.
pub(super) async fn delete_mirror(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path((label, id)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let c = mirror_collection(answer_format(&headers), &label)?;
    delete_record(&state, &headers, c, id).await
}

/// `GET /api/v1/mirror/{collection}[?account_id=N]`.
pub(super) async fn list_mirror(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(label): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let c = mirror_collection(answer_format(&headers), &label)?;
    list_collection(&state, &headers, c, &query).await
}

/// `PUT /api/v1/mirror/participants/{account_id}/{conversation_display_id}`: the
/// conversation's participants, replaced (an empty list clears them).
pub(super) async fn put_participants(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path((account, conversation)): Path<(u64, u64)>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let (p, format): (pb::Participants, _) = decode_body(&headers, &body)?;
    if account == 0 || conversation == 0 {
        return Err(invalid(
            format,
            "account and conversation ids must not be 0".into(),
        ));
    }
    if p.user_ids.len() > 10_000 || p.user_ids.contains(&0) {
        return Err(invalid(format, "user_ids: at most 10000 ids, none 0".into()));
    }
    let key = crate::events::notification::participants_key(account, conversation);
    state
        .listener_state
        .replace_members(&key, &p.user_ids)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    Ok(respond(format, StatusCode::OK, &p))
}

/// Closes the `/cable` connections of a token, here and on every other node; the counts.
async fn drop_cable_token(state: &HttpState, key: &str) -> pb::DisconnectUserResponse {
    let node = &state.node;
    let connections = node.kick_cable_token(key, crate::actioncable::TOKEN_DROPPED) as u32;
    let message = crate::engine::bus::ControlMessage::DropCableToken {
        origin: node.session.node_id.clone(),
        key: key.to_string(),
    };
    let nodes = match crate::engine::with_timeout(node.engine.broadcast_control(&message)).await {
        Ok(n) => n,
        Err(err) => {
            tracing::warn!(%err, "other nodes were not told of a dropped pubsub token");
            0
        }
    };
    pb::DisconnectUserResponse { connections, nodes }
}

/// `PUT /api/v1/mirror/pubsub-tokens`: whose a `pubsub_token` is. A token that changes
/// owner ends the `/cable` connections that subscribed with it.
pub(super) async fn put_pubsub_token(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let (record, format): (pb::PubsubToken, _) = decode_body(&headers, &body)?;
    crate::actioncable::tokens::check_token(&record).map_err(|e| invalid(format, e))?;
    let key = crate::actioncable::tokens::token_key(&record.token);
    let stored = crate::actioncable::tokens::encode_record(&record);
    let before = state
        .cable
        .store
        .put_token(&key, stored.clone())
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    let closed = match before {
        Some(before) if before != stored => drop_cable_token(&state, &key).await,
        _ => pb::DisconnectUserResponse::default(),
    };
    Ok(respond(format, StatusCode::OK, &closed))
}

/// `DELETE /api/v1/mirror/pubsub-tokens`: forgets a token (rotated or deleted) and ends
/// the `/cable` connections that subscribed with it. 404 when it was not known.
pub(super) async fn delete_pubsub_token(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let (removal, format): (pb::PubsubTokenRemoval, _) = decode_body(&headers, &body)?;
    let key = crate::actioncable::tokens::token_key(&removal.token);
    let existed = state
        .cable
        .store
        .delete_token(&key)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    if existed.is_none() {
        return Err(ApiError::new(
            format,
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            "no such pubsub token",
        ));
    }
    let closed = drop_cable_token(&state, &key).await;
    Ok(respond(format, StatusCode::OK, &closed))
}

/// `PUT /api/v1/destinations/installation`.
pub(super) async fn put_installation(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    put_record(&state, &headers, &body, Collection::Installation, 0).await
}

/// `DELETE /api/v1/destinations/installation`.
pub(super) async fn delete_installation(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_record(&state, &headers, Collection::Installation, 0).await
}

/// `GET /api/v1/destinations/installation`.
pub(super) async fn get_installation(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = answer_format(&headers);
    let listed = state
        .destinations
        .list(Collection::Installation)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    match listed.into_iter().next() {
        Some(l) => Ok(answer_listed(format, l)),
        None => Err(ApiError::new(
            format,
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            "no installation webhook",
        )),
    }
}

/// `GET /api/v1/deliveries/dead[?limit=N]`: newest first, at most 1000, secrets and
/// header values left out.
pub(super) async fn dead_letters(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let format = answer_format(&headers);
    let limit = match query.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request(format, "limit is 1 to 1000"))?,
    };
    let mut deliveries = state
        .deliveries
        .dead_letters(limit)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    for d in &mut deliveries {
        d.secret.clear();
        d.headers = directory::hidden_headers(&d.headers);
    }
    Ok(respond(
        format,
        StatusCode::OK,
        &pb::DeadDeliveryList { deliveries },
    ))
}

/// `POST /api/v1/deliveries/dead/{id}/replay`: back in the queue, attempts reset.
pub(super) async fn replay(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let format = answer_format(&headers);
    let replayed = state
        .deliveries
        .replay(&id, crate::connection::unix_ms() as i64)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    if !replayed {
        return Err(ApiError::new(
            format,
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            format!("no dead delivery {id}"),
        ));
    }
    metrics::counter!("rtgate_outbound_replayed_total").increment(1);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/v1/deliveries/dead/{id}`.
pub(super) async fn discard(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let format = answer_format(&headers);
    let discarded = state
        .deliveries
        .discard(&id)
        .await
        .map_err(|e| ApiError::engine(format, &e))?;
    if !discarded {
        return Err(ApiError::new(
            format,
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            format!("no dead delivery {id}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
