//! People: contacts, blocks, user search and presence.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Json};
use super::params::{Params, Path};
use super::{ApiState, Authenticated, UserView};
use crate::chat::events::rfc3339;
use crate::store::{self, User};

/// Most users a search returns.
const MAX_USERS: u32 = 100;
/// User search page size without `limit`.
const DEFAULT_USERS: u32 = 20;
/// Most ids one presence request may name.
const MAX_PRESENCE_IDS: usize = 500;

fn users_json(users: Vec<User>) -> Json<Value> {
    let items: Vec<UserView> = users.into_iter().map(UserView::from).collect();
    Json(json!({ "items": items }))
}

/// The other user named by a contacts/blocks request: 400 for oneself,
/// 404 when there is no such account.
async fn other_user(state: &ApiState, me: &str, user_id: &str) -> Result<User, ApiError> {
    if user_id == me {
        return Err(ApiError::bad_request(
            "invalid_user",
            "this cannot be done to yourself",
        ));
    }
    state
        .store
        .user_by_id(user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such user".into()))
}

/// `GET /api/contacts` → explicit contacts plus everyone sharing a
/// conversation, by username.
pub(super) async fn list(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
) -> Result<Json<Value>, ApiError> {
    Ok(users_json(state.chat.store.contacts(&me.user_id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UserRequest {
    user_id: String,
}

/// `POST /api/contacts` `{userId}` → 201 with the user when they were not
/// in the caller's contacts yet, 200 when they already were (explicitly or
/// as a co-member; either way they are now an explicit contact).
pub(super) async fn add(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Json(req): Json<UserRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let user = other_user(&state, &me.user_id, &req.user_id).await?;
    let before = state.chat.store.contacts(&me.user_id).await?;
    let known = before.iter().any(|u| u.id == user.id);
    state
        .chat
        .store
        .add_contact(&me.user_id, &user.id, store::now())
        .await?;
    let status = if known {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(UserView::from(user))))
}

/// `DELETE /api/contacts/{userId}` → 204 (also when there was no explicit
/// contact; co-members stay in the list while they share a conversation).
pub(super) async fn remove(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .chat
        .store
        .remove_contact(&me.user_id, &user_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/blocks` `{userId}` → 204: the blocked user can no longer
/// open a direct conversation with the caller or message them there.
pub(super) async fn block(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Json(req): Json<UserRequest>,
) -> Result<StatusCode, ApiError> {
    let user = other_user(&state, &me.user_id, &req.user_id).await?;
    state.chat.set_block(&me.user_id, &user.id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/blocks/{userId}` → 204 (also when there was no block).
pub(super) async fn unblock(
    State(state): State<ApiState>,
    Authenticated(me): Authenticated,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.chat.set_block(&me.user_id, &user_id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/users?query=TEXT&limit=N` → users whose username or display
/// name contains the text, by username.
pub(super) async fn search(
    State(state): State<ApiState>,
    Authenticated(_): Authenticated,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let query = params.text("query").map(str::trim).unwrap_or_default();
    if query.is_empty() {
        return Err(ApiError::bad_request("invalid_query", "query is required"));
    }
    let limit = params.limit("limit", DEFAULT_USERS, MAX_USERS)?;
    Ok(users_json(
        state.chat.store.search_users(query, limit).await?,
    ))
}

/// `GET /api/presence?userIds=a,b` → `{items:[{userId, status,
/// lastSeenAt}]}` in the order asked (duplicates once).
pub(super) async fn presence(
    State(state): State<ApiState>,
    Authenticated(_): Authenticated,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let Some(raw) = params.0.get("userIds") else {
        return Err(ApiError::bad_request(
            "invalid_query",
            "userIds is required",
        ));
    };
    let mut seen = HashSet::new();
    let ids: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty() && seen.insert(*id))
        .map(str::to_owned)
        .collect();
    if ids.len() > MAX_PRESENCE_IDS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("at most {MAX_PRESENCE_IDS} userIds per request"),
        ));
    }
    let items: Vec<Value> = state
        .presence
        .get(&ids)
        .await?
        .into_iter()
        .map(|(id, status, seen)| {
            json!({
                "userId": id,
                "status": status.as_str(),
                "lastSeenAt": seen.map(rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}
