//! `/api/conversations` (create, list, get, rename, members), read
//! watermarks and `/api/unread`.
//!
//! Every call goes through [`crate::chat::Chat`], which checks membership:
//! a conversation that does not exist and one the caller is not a member of
//! both answer 404.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Json};
use super::params::Path;
use super::{ApiState, Authenticated};
use crate::chat::events::conversation_json_for;
use crate::store::{ConversationKind, ConversationSummary, Unread};

/// The `conversation` object with the caller's unread count and last
/// message.
fn summary_json(s: &ConversationSummary) -> Value {
    conversation_json_for(&s.conversation, s.unread_count, s.last_message.as_ref())
}

fn unread_json(u: &Unread) -> Value {
    json!({
        "conversationId": u.conversation_id,
        "unreadCount": u.unread_count,
        "lastSeq": u.last_seq,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateRequest {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    member_ids: Vec<String>,
}

/// `POST /api/conversations`: a direct conversation → 201 when created,
/// 200 with the existing one; a group → 201.
pub(super) async fn create(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Json(req): Json<CreateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let me = me.user_id;
    let (conversation, created) = match ConversationKind::parse(&req.kind) {
        Some(ConversationKind::Direct) => {
            let mut others: Vec<&String> = req.member_ids.iter().filter(|id| **id != me).collect();
            others.sort_unstable();
            others.dedup();
            let [other] = others[..] else {
                return Err(ApiError::bad_request(
                    "invalid_members",
                    "a direct conversation has exactly one other member",
                ));
            };
            state.chat.create_direct(&me, other).await?
        }
        Some(ConversationKind::Group) => {
            let name = req.name.as_deref().unwrap_or_default();
            let c = state.chat.create_group(&me, name, &req.member_ids).await?;
            (c, true)
        }
        None => {
            return Err(ApiError::bad_request(
                "invalid_type",
                "type must be \"direct\" or \"group\"",
            ))
        }
    };
    let summary = state.chat.get(&me, &conversation.id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(summary_json(&summary))))
}

/// `GET /api/conversations`: most recent activity first.
pub(super) async fn list(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = state
        .chat
        .list(&me.user_id)
        .await?
        .iter()
        .map(summary_json)
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /api/conversations/{id}`.
pub(super) async fn get(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(cid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let summary = state.chat.get(&me.user_id, &cid).await?;
    Ok(Json(summary_json(&summary)))
}

#[derive(Debug, Deserialize)]
pub(super) struct RenameRequest {
    name: String,
}

/// `PATCH /api/conversations/{id}` `{name}` (owner/admin) → 200 with the
/// updated conversation.
pub(super) async fn rename(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(cid): Path<String>,
    Json(req): Json<RenameRequest>,
) -> Result<Json<Value>, ApiError> {
    state.chat.rename(&me.user_id, &cid, &req.name).await?;
    let summary = state.chat.get(&me.user_id, &cid).await?;
    Ok(Json(summary_json(&summary)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AddMembersRequest {
    user_ids: Vec<String>,
}

/// `POST /api/conversations/{id}/members` `{userIds}` (owner/admin) → 200
/// with the conversation.
pub(super) async fn add_members(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(cid): Path<String>,
    Json(req): Json<AddMembersRequest>,
) -> Result<Json<Value>, ApiError> {
    state
        .chat
        .add_members(&me.user_id, &cid, &req.user_ids)
        .await?;
    let summary = state.chat.get(&me.user_id, &cid).await?;
    Ok(Json(summary_json(&summary)))
}

/// `DELETE /api/conversations/{id}/members/{userId}` (owner/admin, or the
/// caller's own id to leave) → 204.
pub(super) async fn remove_member(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path((cid, target)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.chat.remove_member(&me.user_id, &cid, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReadRequest {
    up_to_seq: i64,
}

/// `POST /api/conversations/{id}/read` `{upToSeq}` → 204.
pub(super) async fn read(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(cid): Path<String>,
    Json(req): Json<ReadRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .chat
        .mark_read(&me.user_id, &cid, req.up_to_seq)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/unread` → `{items:[{conversationId, unreadCount, lastSeq}]}`.
pub(super) async fn unread(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = state
        .chat
        .unread(&me.user_id)
        .await?
        .iter()
        .map(unread_json)
        .collect();
    Ok(Json(json!({ "items": items })))
}
