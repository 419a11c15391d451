//! Messages: history, send (durable, idempotent), edit, delete and search.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Json};
use super::params::{Params, Path};
use super::{ApiState, Authenticated};
use crate::chat::events::message_json;
use crate::store::Message;

/// Most messages one history or search page returns.
const MAX_PAGE: u32 = 100;
/// History page size without `limit`.
const DEFAULT_HISTORY: u32 = 50;
/// Search page size without `limit`.
const DEFAULT_SEARCH: u32 = 20;
/// Deepest search offset accepted.
const MAX_SEARCH_OFFSET: u32 = 10_000;
/// Longest search text accepted.
const MAX_QUERY_CHARS: usize = 256;

fn items(messages: &[Message]) -> Json<Value> {
    let items: Vec<Value> = messages.iter().map(message_json).collect();
    Json(json!({ "items": items }))
}

/// `GET /api/conversations/{id}/messages?before=&after=&limit=` → ascending
/// seq; the latest 50 by default, at most 100; `before` and `after` together
/// give the open range between them.
pub(super) async fn history(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(cid): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let before = params.seq("before")?;
    let after = params.seq("after")?;
    let limit = params.limit("limit", DEFAULT_HISTORY, MAX_PAGE)?;
    let messages = state
        .chat
        .history(&me.user_id, &cid, before, after, Some(limit))
        .await?;
    Ok(items(&messages))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SendRequest {
    body: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

/// `POST /api/conversations/{id}/messages` `{body, clientMsgId?}` with an
/// optional `Idempotency-Key` header (the client message id when the body
/// has none) → 201 once durable; a replay → 200 with the original; the
/// same key in another conversation → 409.
pub(super) async fn send(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(cid): Path<String>,
    headers: HeaderMap,
    Json(req): Json<SendRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be visible ASCII",
                    )
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let client_msg_id = req.client_msg_id.or(key);
    let (message, is_new) = state
        .chat
        .send_and_wait(&me.user_id, &cid, req.body, client_msg_id)
        .await?;
    if message.conversation_id != cid {
        // The key is the sender's across conversations: naming another
        // conversation is a different request, not a replay.
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "this key was already used for a message in another conversation".into(),
        });
    }
    let status = if is_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(message_json(&message))))
}

#[derive(Debug, Deserialize)]
pub(super) struct EditRequest {
    body: String,
}

/// `PATCH /api/messages/{id}` `{body}` (sender only) → 200 with the message.
pub(super) async fn edit(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(id): Path<String>,
    Json(req): Json<EditRequest>,
) -> Result<Json<Value>, ApiError> {
    let message = state.chat.edit(&me.user_id, &id, req.body).await?;
    Ok(Json(message_json(&message)))
}

/// `DELETE /api/messages/{id}` (sender, or an admin/owner of the
/// conversation) → 200 with the tombstone (`deletedAt` set, body empty,
/// seq kept). Deleting a tombstone again answers the same.
pub(super) async fn delete(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let message = state.chat.delete(&me.user_id, &id).await?;
    Ok(Json(message_json(&message)))
}

/// `GET /api/search?q=TEXT&conversationId=&limit=&offset=` → best match
/// first, over the caller's conversations only.
pub(super) async fn search(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let q = params.text("q").map(str::trim).unwrap_or_default();
    if q.is_empty() {
        return Err(ApiError::bad_request("invalid_query", "q is required"));
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("q is at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let limit = params.limit("limit", DEFAULT_SEARCH, MAX_PAGE)?;
    let offset = params.offset("offset", MAX_SEARCH_OFFSET)?;
    let cid = params.text("conversationId");
    if let Some(cid) = cid {
        state.chat.ensure_member(&me.user_id, cid).await?;
    }
    let messages = state
        .chat
        .store
        .search_messages(&me.user_id, q, cid, limit, offset)
        .await?;
    Ok(items(&messages))
}
