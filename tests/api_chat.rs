//! The chat REST API against the real server: conversations and roles,
//! durable idempotent messages, history cursors, edit and delete, unread
//! counters, contacts and blocks, search, presence and rate limits.

mod support;

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use stomp_codec::Command;
use stompline::config::Config;
use support::pg::PgDatabase;
use support::TestServer;

struct Api {
    server: TestServer,
    http: Client,
}

#[derive(Clone)]
struct User {
    id: String,
    token: String,
}

impl Api {
    fn with(server: TestServer) -> Api {
        Api {
            server,
            http: Client::new(),
        }
    }

    async fn user(&self, name: &str) -> User {
        let (id, token, _) = self.server.register(name).await;
        User { id, token }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.http)
    }

    /// One request; the body is `Null` when the answer has none.
    async fn call(
        &self,
        method: Method,
        path: &str,
        who: &User,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&who.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request");
        read(res).await
    }

    async fn get(&self, path: &str, who: &User) -> (StatusCode, Value) {
        self.call(Method::GET, path, who, None).await
    }

    async fn post(&self, path: &str, who: &User, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, who, Some(body)).await
    }

    async fn patch(&self, path: &str, who: &User, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, who, Some(body)).await
    }

    async fn delete(&self, path: &str, who: &User) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, who, None).await
    }

    async fn direct(&self, who: &User, other: &User) -> (StatusCode, Value) {
        self.post(
            "/api/conversations",
            who,
            json!({"type": "direct", "memberIds": [other.id]}),
        )
        .await
    }

    /// Creates a group and returns its id.
    async fn group(&self, owner: &User, name: &str, members: &[&User]) -> String {
        let ids: Vec<&str> = members.iter().map(|u| u.id.as_str()).collect();
        let (status, c) = self
            .post(
                "/api/conversations",
                owner,
                json!({"type": "group", "name": name, "memberIds": ids}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{c}");
        id(&c)
    }

    /// Sends a message, expecting 201; returns it.
    async fn send(&self, who: &User, cid: &str, body: &str) -> Value {
        let (status, m) = self
            .post(
                &format!("/api/conversations/{cid}/messages"),
                who,
                json!({ "body": body }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{m}");
        m
    }

    async fn history(&self, who: &User, cid: &str, query: &str) -> Vec<Value> {
        let (status, v) = self
            .get(&format!("/api/conversations/{cid}/messages{query}"), who)
            .await;
        assert_eq!(status, StatusCode::OK, "{query}: {v}");
        items(&v)
    }

    async fn conversation(&self, who: &User, cid: &str) -> Value {
        let (status, c) = self.get(&format!("/api/conversations/{cid}"), who).await;
        assert_eq!(status, StatusCode::OK, "{c}");
        c
    }

    async fn unread_of(&self, who: &User, cid: &str) -> i64 {
        let (status, v) = self.get("/api/unread", who).await;
        assert_eq!(status, StatusCode::OK);
        let item = items(&v)
            .into_iter()
            .find(|u| u["conversationId"] == cid)
            .unwrap_or_else(|| panic!("no unread entry for {cid}: {v}"));
        assert_eq!(keys(&item), ["conversationId", "lastSeq", "unreadCount"]);
        item["unreadCount"].as_i64().unwrap()
    }

    async fn search(&self, who: &User, query: &str) -> Vec<Value> {
        let (status, v) = self.get(&format!("/api/search?{query}"), who).await;
        assert_eq!(status, StatusCode::OK, "{query}: {v}");
        items(&v)
    }
}

async fn read(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let bytes = res.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, body)
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().expect("items").clone()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

/// Asserts the `{"error":{"code","message"}}` shape and returns the code.
fn code(body: &Value) -> &str {
    let e = body["error"].as_object().expect("error object");
    assert_eq!(e.len(), 2, "{body}");
    assert!(!e["message"].as_str().unwrap().is_empty());
    e["code"].as_str().unwrap()
}

/// `(lastReadSeq, lastDeliveredSeq)` of `user` in a conversation object.
fn marks_of(c: &Value, user: &User) -> (i64, i64) {
    let m = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["userId"] == user.id.as_str())
        .unwrap_or_else(|| panic!("{} is not a member: {c}", user.id));
    assert_eq!(
        keys(m),
        ["lastDeliveredSeq", "lastReadSeq", "role", "userId"],
        "{m}"
    );
    (
        m["lastReadSeq"].as_i64().unwrap(),
        m["lastDeliveredSeq"].as_i64().unwrap(),
    )
}

fn role_of<'a>(c: &'a Value, user: &User) -> Option<&'a str> {
    c["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["userId"] == user.id.as_str())
        .map(|m| m["role"].as_str().unwrap())
}

/// Polls `f` until it yields a value (at most ten seconds).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each scenario runs on SQLite and, as `pg_…`, on a scratch PostgreSQL
/// database (skipped with a notice when PostgreSQL is unreachable, unless
/// `STOMPLINE_REQUIRE_SERVICES=1`).
macro_rules! both {
    ($name:ident, $pg:ident, $config:expr) => {
        #[tokio::test]
        async fn $name() {
            let api = Api::with(TestServer::start_with($config).await);
            scenario::$name(api).await;
        }

        #[tokio::test]
        async fn $pg() {
            on_postgres($config, scenario::$name).await;
        }
    };
}

fn defaults(_: &mut Config) {}

fn tiny_rate(c: &mut Config) {
    c.chat.rate_per_sec = 1;
    c.chat.rate_burst = 2;
}

async fn on_postgres<F, Fut>(config: fn(&mut Config), scenario: F)
where
    F: FnOnce(Api) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let url = db.url.clone();
    let outcome = tokio::spawn(async move {
        let server = TestServer::start_with(|c| {
            config(c);
            c.database_url = url;
            c.database.pool_size = 4;
        })
        .await;
        scenario(Api::with(server)).await;
    })
    .await;
    db.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

both!(
    direct_conversations_are_one_per_pair,
    pg_direct_conversations_are_one_per_pair,
    defaults
);
both!(
    groups_have_roles_and_hand_ownership_on,
    pg_groups_have_roles_and_hand_ownership_on,
    defaults
);
both!(
    conversations_list_by_recent_activity_with_counters,
    pg_conversations_list_by_recent_activity_with_counters,
    defaults
);
both!(
    messages_are_sequenced_durable_and_idempotent,
    pg_messages_are_sequenced_durable_and_idempotent,
    defaults
);
both!(
    rest_sends_reach_stomp_subscribers,
    pg_rest_sends_reach_stomp_subscribers,
    defaults
);
both!(
    history_pages_with_cursors,
    pg_history_pages_with_cursors,
    defaults
);
both!(
    edit_and_delete_leave_tombstones,
    pg_edit_and_delete_leave_tombstones,
    defaults
);
both!(
    unread_counts_stay_exact_under_a_burst,
    pg_unread_counts_stay_exact_under_a_burst,
    defaults
);
both!(
    contacts_users_and_blocks,
    pg_contacts_users_and_blocks,
    defaults
);
both!(
    message_search_sees_only_my_conversations,
    pg_message_search_sees_only_my_conversations,
    defaults
);
both!(
    members_carry_read_and_delivered_positions,
    pg_members_carry_read_and_delivered_positions,
    defaults
);
both!(presence_in_batch, pg_presence_in_batch, defaults);
both!(
    sending_too_fast_answers_429_with_retry_after,
    pg_sending_too_fast_answers_429_with_retry_after,
    tiny_rate
);

mod scenario {
    use super::*;

    pub(super) async fn direct_conversations_are_one_per_pair(api: Api) {
        let (alice, bob, carol) = (
            api.user("alice").await,
            api.user("bob").await,
            api.user("carol").await,
        );

        let (status, c) = api.direct(&alice, &bob).await;
        assert_eq!(status, StatusCode::CREATED, "{c}");
        assert_eq!(
            keys(&c),
            [
                "createdAt",
                "id",
                "lastMessage",
                "lastSeq",
                "members",
                "name",
                "type",
                "unreadCount"
            ]
        );
        assert_eq!(c["type"], "direct");
        assert_eq!(c["lastSeq"], 0);
        assert_eq!(c["unreadCount"], 0);
        assert_eq!(c["lastMessage"], Value::Null);
        assert_eq!(role_of(&c, &alice), Some("owner"));
        assert_eq!(role_of(&c, &bob), Some("member"));
        let cid = id(&c);

        let (status, again) = api.direct(&alice, &bob).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(id(&again), cid);
        let (status, from_bob) = api.direct(&bob, &alice).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(id(&from_bob), cid);
        // The creator listed among the members changes nothing.
        let (status, both) = api
            .post(
                "/api/conversations",
                &bob,
                json!({"type": "direct", "memberIds": [bob.id, alice.id]}),
            )
            .await;
        assert_eq!((status, id(&both)), (StatusCode::OK, cid.clone()));

        // Someone else's conversation and a made-up id look the same.
        let (s1, b1) = api.get(&format!("/api/conversations/{cid}"), &carol).await;
        let (s2, b2) = api
            .get(
                "/api/conversations/0190a000-0000-7000-8000-000000000000",
                &carol,
            )
            .await;
        assert_eq!((s1, code(&b1)), (StatusCode::NOT_FOUND, "not_found"));
        assert_eq!((s1, &b1), (s2, &b2));

        for (body, expected) in [
            (
                json!({"type": "direct", "memberIds": [alice.id]}),
                "invalid_members",
            ),
            (
                json!({"type": "direct", "memberIds": []}),
                "invalid_members",
            ),
            (
                json!({"type": "direct", "memberIds": [bob.id, carol.id]}),
                "invalid_members",
            ),
            (
                json!({"type": "direct", "memberIds": ["nobody"]}),
                "unknown_user",
            ),
            (
                json!({"type": "channel", "memberIds": [bob.id]}),
                "invalid_type",
            ),
            (json!({"memberIds": [bob.id]}), "invalid_request"),
        ] {
            let (status, e) = api.post("/api/conversations", &alice, body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {e}");
            assert_eq!(code(&e), expected, "{body}");
        }

        // Direct conversations cannot be renamed or left.
        let (status, _) = api
            .patch(
                &format!("/api/conversations/{cid}"),
                &alice,
                json!({"name": "x"}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = api
            .delete(
                &format!("/api/conversations/{cid}/members/{}", alice.id),
                &alice,
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // No token, no answer.
        let res = api
            .http
            .get(api.url("/api/conversations"))
            .send()
            .await
            .unwrap();
        let (status, e) = read(res).await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::UNAUTHORIZED, "missing_credentials")
        );
    }

    pub(super) async fn groups_have_roles_and_hand_ownership_on(api: Api) {
        let (alice, bob, carol, dave) = (
            api.user("alice").await,
            api.user("bob").await,
            api.user("carol").await,
            api.user("dave").await,
        );
        let (status, c) = api
            .post(
                "/api/conversations",
                &alice,
                json!({"type": "group", "name": "Team", "memberIds": [bob.id, bob.id]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            (&c["type"], &c["name"], &c["lastSeq"]),
            (&json!("group"), &json!("Team"), &json!(0))
        );
        assert_eq!(c["members"].as_array().unwrap().len(), 2, "{c}");
        assert_eq!(role_of(&c, &alice), Some("owner"));
        assert_eq!(role_of(&c, &bob), Some("member"));
        let cid = id(&c);
        let conv = format!("/api/conversations/{cid}");
        let members = format!("{conv}/members");

        // Only owners and admins rename; outsiders learn nothing.
        let (status, e) = api.patch(&conv, &bob, json!({"name": "Mine"})).await;
        assert_eq!((status, code(&e)), (StatusCode::FORBIDDEN, "forbidden"));
        let (status, e) = api.patch(&conv, &carol, json!({"name": "Mine"})).await;
        assert_eq!((status, code(&e)), (StatusCode::NOT_FOUND, "not_found"));
        let (status, renamed) = api.patch(&conv, &alice, json!({"name": "  Team 2 "})).await;
        assert_eq!(status, StatusCode::OK, "{renamed}");
        assert_eq!(renamed["name"], "Team 2");
        assert_eq!(renamed["unreadCount"], 0);
        assert_eq!(api.conversation(&bob, &cid).await["name"], "Team 2");
        let (status, e) = api.patch(&conv, &alice, json!({"name": "  "})).await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_name")
        );
        let (status, _) = api.get(&conv, &carol).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = api.get("/api/conversations/nope", &alice).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Adding: owner yes, member no.
        let (status, e) = api
            .post(&members, &bob, json!({"userIds": [dave.id]}))
            .await;
        assert_eq!((status, code(&e)), (StatusCode::FORBIDDEN, "forbidden"));
        let (status, added) = api
            .post(&members, &alice, json!({"userIds": [carol.id]}))
            .await;
        assert_eq!(status, StatusCode::OK, "{added}");
        assert_eq!(role_of(&added, &carol), Some("member"));
        assert_eq!(api.conversation(&carol, &cid).await["id"], cid.as_str());
        let (status, e) = api
            .post(&members, &alice, json!({"userIds": ["nobody"]}))
            .await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "unknown_user")
        );

        // Removing: a member may not remove others; the owner may.
        let (status, _) = api.delete(&format!("{members}/{}", carol.id), &bob).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = api.delete(&format!("{members}/{}", carol.id), &alice).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        let (status, _) = api.get(&conv, &carol).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = api.delete(&format!("{members}/{}", carol.id), &alice).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Leaving: bob leaves by naming himself.
        api.post(&members, &alice, json!({"userIds": [carol.id]}))
            .await;
        let (status, _) = api.delete(&format!("{members}/{}", bob.id), &bob).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = api.get(&conv, &bob).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = api.delete(&format!("{members}/{}", bob.id), &bob).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The last owner leaving hands ownership on to the one who remains.
        let (status, _) = api.delete(&format!("{members}/{}", alice.id), &alice).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let after = api.conversation(&carol, &cid).await;
        assert_eq!(after["members"].as_array().unwrap().len(), 1, "{after}");
        assert_eq!(role_of(&after, &carol), Some("owner"));
        let (status, renamed) = api.patch(&conv, &carol, json!({"name": "Carol's"})).await;
        assert_eq!(
            (status, &renamed["name"]),
            (StatusCode::OK, &json!("Carol's"))
        );

        let (status, e) = api
            .post(
                "/api/conversations",
                &alice,
                json!({"type": "group", "memberIds": [bob.id]}),
            )
            .await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_name")
        );
    }

    pub(super) async fn conversations_list_by_recent_activity_with_counters(api: Api) {
        let (alice, bob) = (api.user("alice").await, api.user("bob").await);
        let first = api.group(&alice, "first", &[&bob]).await;
        let second = api.group(&alice, "second", &[&bob]).await;

        let (status, list) = api.get("/api/conversations", &bob).await;
        assert_eq!(status, StatusCode::OK);
        let order: Vec<String> = items(&list).iter().map(id).collect();
        assert_eq!(order, [second.clone(), first.clone()]);

        let m = api.send(&alice, &first, "hello").await;
        let (_, list) = api.get("/api/conversations", &bob).await;
        let list = items(&list);
        assert_eq!(id(&list[0]), first);
        assert_eq!(list[0]["lastSeq"], 1);
        assert_eq!(list[0]["unreadCount"], 1);
        assert_eq!(list[0]["lastMessage"], m);
        assert_eq!(list[1]["lastSeq"], 0);
        assert_eq!(list[1]["lastMessage"], Value::Null);
        let (_, mine) = api.get("/api/conversations", &alice).await;
        assert_eq!(items(&mine)[0]["unreadCount"], 0, "the sender has read it");
        assert_eq!(api.conversation(&bob, &first).await["unreadCount"], 1);
    }

    pub(super) async fn members_carry_read_and_delivered_positions(api: Api) {
        let (alice, bob, carol) = (
            api.user("alice").await,
            api.user("bob").await,
            api.user("carol").await,
        );
        let cid = api.group(&alice, "marks", &[&bob, &carol]).await;
        for text in ["one", "two", "three"] {
            api.send(&alice, &cid, text).await;
        }
        let c = api.conversation(&alice, &cid).await;
        assert_eq!(marks_of(&c, &alice), (3, 3), "the sender has read it");
        assert_eq!(marks_of(&c, &bob), (0, 0));
        assert_eq!(marks_of(&c, &carol), (0, 0));

        // Bob's session receives all three: delivered, not read.
        let mut stomp = api.server.tcp().await;
        stomp.connect_token(&bob.token).await;
        let sub = format!(
            "SUBSCRIBE\nid:s1\ndestination:/topic/chat/{cid}\nsince-seq:0\nreceipt:r1\n\n\0"
        );
        stomp.send(sub.as_bytes()).await;
        stomp.await_receipt("r1").await;
        for _ in 0..3 {
            stomp.expect(Command::Message).await;
        }
        eventually("bob's delivered mark", || async {
            let c = api.conversation(&alice, &cid).await;
            (marks_of(&c, &bob) == (0, 3)).then_some(())
        })
        .await;

        // Carol reads two over REST without receiving them: read counts as
        // delivered.
        let (status, _) = api
            .post(
                &format!("/api/conversations/{cid}/read"),
                &carol,
                json!({"upToSeq": 2}),
            )
            .await;
        assert!(status.is_success(), "{status}");
        let (status, list) = api.get("/api/conversations", &alice).await;
        assert_eq!(status, StatusCode::OK);
        let c = items(&list)
            .into_iter()
            .find(|c| id(c) == cid)
            .unwrap_or_else(|| panic!("{cid} not listed: {list}"));
        assert_eq!(marks_of(&c, &bob), (0, 3));
        assert_eq!(marks_of(&c, &carol), (2, 2));
        assert_eq!(marks_of(&c, &alice), (3, 3));
        // Every member sees the same positions.
        let seen_by_bob = api.conversation(&bob, &cid).await;
        assert_eq!(marks_of(&seen_by_bob, &carol), (2, 2));
    }

    pub(super) async fn messages_are_sequenced_durable_and_idempotent(api: Api) {
        let (alice, bob, carol) = (
            api.user("alice").await,
            api.user("bob").await,
            api.user("carol").await,
        );
        let cid = api.group(&alice, "g", &[&bob]).await;
        let path = format!("/api/conversations/{cid}/messages");

        let mut sent = Vec::new();
        for (i, body) in ["one", "two", "three"].into_iter().enumerate() {
            let m = api.send(&alice, &cid, body).await;
            assert_eq!(m["seq"], i as i64 + 1);
            sent.push(m);
        }
        let m = &sent[0];
        for k in [
            "id",
            "conversationId",
            "seq",
            "senderId",
            "body",
            "createdAt",
            "editedAt",
            "deletedAt",
        ] {
            assert!(m.get(k).is_some(), "{k} missing: {m}");
        }
        assert_eq!(m["conversationId"], cid.as_str());
        assert_eq!(m["senderId"], alice.id.as_str());
        assert_eq!(m["body"], "one");
        assert_eq!(
            (&m["editedAt"], &m["deletedAt"]),
            (&Value::Null, &Value::Null)
        );
        assert!(m["createdAt"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            api.history(&bob, &cid, "").await,
            sent,
            "durable before 201"
        );

        // Idempotency-Key: the replay answers 200 with the original.
        let keyed = |body: &str| {
            api.http
                .post(api.url(&path))
                .bearer_auth(&alice.token)
                .header("Idempotency-Key", "key-1")
                .json(&json!({ "body": body }))
                .send()
        };
        let (status, first) = read(keyed("keyed").await.unwrap()).await;
        assert_eq!((status, &first["seq"]), (StatusCode::CREATED, &json!(4)));
        let (status, replay) = read(keyed("changed").await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(replay, first);

        // clientMsgId in the body works the same way, per sender.
        let body = json!({"body": "cm", "clientMsgId": "c-1"});
        let (status, first) = api.post(&path, &alice, body.clone()).await;
        assert_eq!((status, &first["seq"]), (StatusCode::CREATED, &json!(5)));
        let (status, replay) = api.post(&path, &alice, body.clone()).await;
        assert_eq!((status, id(&replay)), (StatusCode::OK, id(&first)));
        let (status, bobs) = api.post(&path, &bob, body.clone()).await;
        assert_eq!((status, &bobs["seq"]), (StatusCode::CREATED, &json!(6)));
        // The same key in another conversation is not a replay of it.
        let other = api.group(&alice, "other", &[]).await;
        let (status, e) = api
            .post(
                &format!("/api/conversations/{other}/messages"),
                &alice,
                body,
            )
            .await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::CONFLICT, "idempotency_key_reused")
        );
        assert!(api.history(&alice, &other, "").await.is_empty());
        let seqs_now = seqs(&api.history(&alice, &cid, "").await);
        assert_eq!(seqs_now, [1, 2, 3, 4, 5, 6], "replays stored nothing");

        // Refusals.
        for (body, status, expected) in [
            (
                json!({"body": "  "}),
                StatusCode::BAD_REQUEST,
                "empty_message",
            ),
            (json!({}), StatusCode::BAD_REQUEST, "invalid_request"),
            (
                json!({"body": 5}),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                json!({"body": "x".repeat(16 * 1024 + 1)}),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                json!({"body": "x", "clientMsgId": "c".repeat(200)}),
                StatusCode::BAD_REQUEST,
                "invalid_client_msg_id",
            ),
        ] {
            let (s, e) = api.post(&path, &alice, body).await;
            assert_eq!((s, code(&e)), (status, expected), "{e}");
        }
        let (status, _) = api.post(&path, &carol, json!({"body": "hi"})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = api
            .post(
                "/api/conversations/nope/messages",
                &carol,
                json!({"body": "hi"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = api.get(&path, &carol).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let seqs_now = seqs(&api.history(&alice, &cid, "").await);
        assert_eq!(seqs_now, [1, 2, 3, 4, 5, 6]);
    }

    pub(super) async fn rest_sends_reach_stomp_subscribers(api: Api) {
        let (alice, bob) = (api.user("alice").await, api.user("bob").await);
        let cid = api.group(&alice, "g", &[&bob]).await;
        let mut stomp = api.server.tcp().await;
        stomp.connect_token(&bob.token).await;
        stomp
            .subscribe("s1", &format!("/topic/chat/{cid}"), "auto")
            .await;
        let m = api.send(&alice, &cid, "over REST").await;
        let f = stomp.expect(Command::Message).await;
        assert_eq!(f.header("event"), Some("message.created"));
        assert_eq!(f.header("seq"), Some("1"));
        let body: Value = serde_json::from_slice(&f.body).unwrap();
        assert_eq!(body["id"], m["id"]);
        assert_eq!(body["body"], "over REST");
    }

    pub(super) async fn history_pages_with_cursors(api: Api) {
        let (alice, bob) = (api.user("alice").await, api.user("bob").await);
        let cid = api.group(&alice, "g", &[&bob]).await;
        for i in 1..=7 {
            api.send(&alice, &cid, &format!("m{i}")).await;
        }
        for (query, expected) in [
            ("", vec![1, 2, 3, 4, 5, 6, 7]),
            ("?limit=3", vec![5, 6, 7]),
            ("?before=4", vec![1, 2, 3]),
            ("?before=4&limit=2", vec![2, 3]),
            ("?after=5", vec![6, 7]),
            ("?after=2&limit=2", vec![3, 4]),
            ("?after=1&before=5", vec![2, 3, 4]),
            ("?after=3&before=4", vec![]),
            ("?after=7", vec![]),
            ("?before=1", vec![]),
            ("?limit=500", vec![1, 2, 3, 4, 5, 6, 7]),
            ("?limit=", vec![1, 2, 3, 4, 5, 6, 7]),
        ] {
            assert_eq!(
                seqs(&api.history(&bob, &cid, query).await),
                expected,
                "{query}"
            );
        }
        for query in [
            "?limit=abc",
            "?limit=0",
            "?limit=-5",
            "?before=-1",
            "?after=x",
            "?before=1.5",
        ] {
            let (status, e) = api
                .get(&format!("/api/conversations/{cid}/messages{query}"), &bob)
                .await;
            assert_eq!(
                (status, code(&e)),
                (StatusCode::BAD_REQUEST, "invalid_query"),
                "{query}"
            );
        }
    }

    pub(super) async fn edit_and_delete_leave_tombstones(api: Api) {
        let (alice, bob, carol) = (
            api.user("alice").await,
            api.user("bob").await,
            api.user("carol").await,
        );
        let cid = api.group(&alice, "g", &[&bob]).await;
        let a1 = id(&api.send(&alice, &cid, "alice one").await);
        let b1 = id(&api.send(&bob, &cid, "bob one").await);
        let b2 = id(&api.send(&bob, &cid, "bob two").await);
        let a2 = id(&api.send(&alice, &cid, "alice two").await);

        let (status, edited) = api
            .patch(
                &format!("/api/messages/{b1}"),
                &bob,
                json!({"body": "bob one, edited"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{edited}");
        assert_eq!(edited["body"], "bob one, edited");
        assert_eq!(edited["seq"], 2);
        assert!(edited["editedAt"].as_str().unwrap().ends_with('Z'));
        let (status, e) = api
            .patch(
                &format!("/api/messages/{b1}"),
                &alice,
                json!({"body": "not mine"}),
            )
            .await;
        assert_eq!((status, code(&e)), (StatusCode::FORBIDDEN, "forbidden"));
        let (status, e) = api
            .patch(
                &format!("/api/messages/{b1}"),
                &carol,
                json!({"body": "outsider"}),
            )
            .await;
        assert_eq!((status, code(&e)), (StatusCode::NOT_FOUND, "not_found"));
        let (status, e) = api
            .patch(&format!("/api/messages/{b1}"), &bob, json!({"body": ""}))
            .await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "empty_message")
        );

        // A plain member may not delete someone else's message.
        let (status, _) = api.delete(&format!("/api/messages/{a1}"), &bob).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = api.delete(&format!("/api/messages/{a1}"), &carol).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The sender may; so may the owner, for anyone's message.
        let (status, tomb) = api.delete(&format!("/api/messages/{b2}"), &bob).await;
        assert_eq!(status, StatusCode::OK, "{tomb}");
        assert_eq!((&tomb["body"], &tomb["seq"]), (&json!(""), &json!(3)));
        assert!(tomb["deletedAt"].as_str().is_some());
        let (status, tomb) = api.delete(&format!("/api/messages/{b1}"), &alice).await;
        assert_eq!(status, StatusCode::OK, "{tomb}");
        assert_eq!((&tomb["body"], &tomb["seq"]), (&json!(""), &json!(2)));
        let (status, again) = api.delete(&format!("/api/messages/{b1}"), &alice).await;
        assert_eq!(
            (status, &again["deletedAt"]),
            (StatusCode::OK, &tomb["deletedAt"])
        );
        let (status, _) = api
            .patch(
                &format!("/api/messages/{b1}"),
                &bob,
                json!({"body": "back"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = api.delete("/api/messages/nope", &alice).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let history = api.history(&bob, &cid, "").await;
        assert_eq!(seqs(&history), [1, 2, 3, 4], "seqs are kept");
        for m in &history[1..3] {
            assert_eq!(m["body"], "", "{m}");
            assert!(m["deletedAt"].as_str().is_some(), "{m}");
        }
        for (m, mid) in [(&history[0], &a1), (&history[3], &a2)] {
            assert_eq!(&id(m), mid);
            assert_eq!(m["deletedAt"], Value::Null);
        }
    }

    pub(super) async fn unread_counts_stay_exact_under_a_burst(api: Api) {
        let (alice, bob, carol, dave) = (
            api.user("alice").await,
            api.user("bob").await,
            api.user("carol").await,
            api.user("dave").await,
        );
        let cid = api.group(&alice, "busy", &[&bob, &carol]).await;

        // 200 messages, 100 from each of two senders, ten in flight per sender.
        let mut tasks = tokio::task::JoinSet::new();
        for sender in [&alice, &bob] {
            for lane in 0..10 {
                let http = api.http.clone();
                let url = api.url(&format!("/api/conversations/{cid}/messages"));
                let token = sender.token.clone();
                tasks.spawn(async move {
                    for i in 0..10 {
                        let res = http
                            .post(&url)
                            .bearer_auth(&token)
                            .json(&json!({"body": format!("lane {lane} message {i}")}))
                            .send()
                            .await
                            .expect("send");
                        assert_eq!(res.status(), StatusCode::CREATED);
                    }
                });
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("sender task");
        }

        // Every seq once, without gaps.
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = api
                .history(&carol, &cid, &format!("?after={after}&limit=100"))
                .await;
            let Some(last) = page.last() else { break };
            after = last["seq"].as_i64().unwrap();
            all.extend(page);
        }
        assert_eq!(seqs(&all), (1..=200).collect::<Vec<_>>());
        let newest = api.history(&carol, &cid, "?limit=500").await;
        assert_eq!(
            seqs(&newest),
            (101..=200).collect::<Vec<_>>(),
            "limit clamped to 100"
        );

        // Sending marks everything up to one's own message read.
        let last_own = |u: &User| {
            all.iter()
                .filter(|m| m["senderId"] == u.id.as_str())
                .map(|m| m["seq"].as_i64().unwrap())
                .max()
                .unwrap()
        };
        assert_eq!(api.unread_of(&carol, &cid).await, 200);
        let (alice_unread, bob_unread) = (200 - last_own(&alice), 200 - last_own(&bob));
        assert_eq!(api.unread_of(&alice, &cid).await, alice_unread);
        assert_eq!(api.unread_of(&bob, &cid).await, bob_unread);
        assert_eq!(
            alice_unread.min(bob_unread),
            0,
            "the last sender has read everything"
        );
        let (_, list) = api.get("/api/conversations", &carol).await;
        let summary = &items(&list)[0];
        assert_eq!(
            (&summary["unreadCount"], &summary["lastSeq"]),
            (&json!(200), &json!(200))
        );
        let (_, unread) = api.get("/api/unread", &carol).await;
        assert_eq!(
            items(&unread),
            [json!({"conversationId": cid, "unreadCount": 200, "lastSeq": 200})]
        );

        // Reading moves the watermark forward only, up to the last seq.
        let read = format!("/api/conversations/{cid}/read");
        let (status, body) = api.post(&read, &carol, json!({"upToSeq": 150})).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        assert_eq!(api.unread_of(&carol, &cid).await, 50);
        api.post(&read, &carol, json!({"upToSeq": 10})).await;
        assert_eq!(api.unread_of(&carol, &cid).await, 50);
        api.post(&read, &carol, json!({"upToSeq": 100_000})).await;
        assert_eq!(api.unread_of(&carol, &cid).await, 0);
        api.send(&alice, &cid, "one more").await;
        assert_eq!(api.unread_of(&carol, &cid).await, 1);

        let (status, e) = api.post(&read, &carol, json!({"upToSeq": -1})).await;
        assert_eq!((status, code(&e)), (StatusCode::BAD_REQUEST, "invalid_seq"));
        let (status, e) = api.post(&read, &carol, json!({"upToSeq": "x"})).await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        let (status, _) = api.post(&read, &dave, json!({"upToSeq": 1})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, unread) = api.get("/api/unread", &dave).await;
        assert_eq!(unread, json!({"items": []}));
    }

    pub(super) async fn contacts_users_and_blocks(api: Api) {
        let (alice, bob, carol, dave) = (
            api.user("alice").await,
            api.user("bob").await,
            api.user("carol").await,
            api.user("dave").await,
        );
        let contact_ids = |v: &Value| -> Vec<String> { items(v).iter().map(id).collect() };

        // Co-members are contacts.
        api.group(&alice, "g", &[&bob]).await;
        let (status, list) = api.get("/api/contacts", &alice).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(contact_ids(&list), [bob.id.as_str()]);
        assert_eq!(
            keys(&items(&list)[0]),
            ["createdAt", "displayName", "id", "username"]
        );

        // Explicit contacts: 201 when new, 200 when already there.
        let (status, user) = api
            .post("/api/contacts", &alice, json!({"userId": carol.id}))
            .await;
        assert_eq!(
            (status, &user["username"]),
            (StatusCode::CREATED, &json!("carol"))
        );
        let (status, _) = api
            .post("/api/contacts", &alice, json!({"userId": carol.id}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = api
            .post("/api/contacts", &alice, json!({"userId": bob.id}))
            .await;
        assert_eq!(status, StatusCode::OK, "a co-member is already a contact");
        let (_, list) = api.get("/api/contacts", &alice).await;
        assert_eq!(contact_ids(&list), [bob.id.as_str(), carol.id.as_str()]);
        let (status, _) = api
            .delete(&format!("/api/contacts/{}", carol.id), &alice)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, list) = api.get("/api/contacts", &alice).await;
        assert_eq!(contact_ids(&list), [bob.id.as_str()]);
        let (status, e) = api
            .post("/api/contacts", &alice, json!({"userId": alice.id}))
            .await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_user")
        );
        let (status, _) = api
            .post("/api/contacts", &alice, json!({"userId": "nobody"}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // User search by username or display name, case-insensitively.
        let (status, found) = api.get("/api/users?query=AR", &dave).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(contact_ids(&found), [carol.id.as_str()]);
        let (_, found) = api.get("/api/users?query=a", &dave).await;
        assert_eq!(
            contact_ids(&found),
            [alice.id.as_str(), carol.id.as_str(), dave.id.as_str()]
        );
        let (_, found) = api.get("/api/users?query=zzz", &dave).await;
        assert_eq!(found, json!({"items": []}));
        let (status, e) = api.get("/api/users?query=", &dave).await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_query")
        );

        // dave blocks carol: she cannot open a direct conversation with him...
        let (status, body) = api
            .post("/api/blocks", &dave, json!({"userId": carol.id}))
            .await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        let (status, e) = api.direct(&carol, &dave).await;
        assert_eq!((status, code(&e)), (StatusCode::FORBIDDEN, "forbidden"));
        // ...and when he opens one, she cannot message him in it; he can.
        let (status, c) = api.direct(&dave, &carol).await;
        assert_eq!(status, StatusCode::CREATED);
        let cid = id(&c);
        let path = format!("/api/conversations/{cid}/messages");
        let (status, e) = api.post(&path, &carol, json!({"body": "hi"})).await;
        assert_eq!((status, code(&e)), (StatusCode::FORBIDDEN, "forbidden"));
        api.send(&dave, &cid, "hello carol").await;
        let (status, _) = api
            .delete(&format!("/api/blocks/{}", carol.id), &dave)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        api.send(&carol, &cid, "hi dave").await;

        // A block on an existing direct conversation stops the blocked side.
        let (_, c) = api.direct(&alice, &bob).await;
        let ab = id(&c);
        api.post("/api/blocks", &bob, json!({"userId": alice.id}))
            .await;
        let (status, _) = api
            .post(
                &format!("/api/conversations/{ab}/messages"),
                &alice,
                json!({"body": "?"}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = api
            .post("/api/blocks", &bob, json!({"userId": "nobody"}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    pub(super) async fn message_search_sees_only_my_conversations(api: Api) {
        let (alice, bob, carol) = (
            api.user("alice").await,
            api.user("bob").await,
            api.user("carol").await,
        );
        let mine = api.group(&alice, "mine", &[&bob]).await;
        let theirs = api.group(&carol, "theirs", &[]).await;
        let fox = id(&api.send(&alice, &mine, "the quick brown fox").await);
        let dog = id(&api.send(&bob, &mine, "a lazy dog jumps").await);
        api.send(&alice, &mine, "nothing to see").await;
        let banana = id(&api.send(&carol, &theirs, "banana bread and a fox").await);

        let ids = |v: Vec<Value>| -> Vec<String> { v.iter().map(id).collect() };
        assert_eq!(ids(api.search(&alice, "q=fox").await), [fox.as_str()]);
        assert_eq!(ids(api.search(&bob, "q=FOX").await), [fox.as_str()]);
        let found = api.search(&alice, "q=fox").await;
        assert_eq!(found[0]["conversationId"], mine.as_str());
        assert!(api.search(&alice, "q=banana").await.is_empty());
        assert_eq!(ids(api.search(&carol, "q=banana").await), [banana.as_str()]);
        assert_eq!(ids(api.search(&carol, "q=fox").await), [banana.as_str()]);
        assert_eq!(
            ids(api
                .search(&alice, &format!("q=fox&conversationId={mine}"))
                .await),
            [fox.as_str()]
        );
        let (status, _) = api
            .get(
                &format!("/api/search?q=banana&conversationId={theirs}"),
                &alice,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Edits are searchable by their new words only.
        let (status, _) = api
            .patch(
                &format!("/api/messages/{dog}"),
                &bob,
                json!({"body": "a sleepy cat naps"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        eventually("the edit to be searchable", || async {
            let hit = ids(api.search(&alice, "q=cat").await) == [dog.as_str()];
            let gone = api.search(&alice, "q=dog").await.is_empty();
            (hit && gone).then_some(())
        })
        .await;

        // Deleted messages are not found.
        let (status, _) = api.delete(&format!("/api/messages/{fox}"), &alice).await;
        assert_eq!(status, StatusCode::OK);
        eventually("the deleted message to leave the index", || async {
            api.search(&alice, "q=fox").await.is_empty().then_some(())
        })
        .await;
        assert_eq!(ids(api.search(&carol, "q=fox").await), [banana]);

        // Many hits come best first and honour the limit.
        for i in 0..5 {
            api.send(&alice, &mine, &format!("report {i} about the report"))
                .await;
        }
        assert_eq!(api.search(&alice, "q=report&limit=3").await.len(), 3);
        assert_eq!(api.search(&alice, "q=report").await.len(), 5);
        assert_eq!(api.search(&alice, "q=report&offset=4").await.len(), 1);

        // Search syntax is not a way to break the query.
        for q in [
            "%22unbalanced",
            "a%20OR",
            "NEAR(x",
            "*",
            "fox%22%20OR%20%22banana",
        ] {
            let (status, v) = api.get(&format!("/api/search?q={q}"), &alice).await;
            assert_eq!(status, StatusCode::OK, "{q}: {v}");
            for m in items(&v) {
                assert_eq!(m["conversationId"], mine.as_str(), "{q}");
            }
        }
        let (status, e) = api.get("/api/search?q=", &alice).await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_query")
        );
        let (status, e) = api.get("/api/search", &alice).await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_query")
        );
    }

    pub(super) async fn presence_in_batch(api: Api) {
        let (alice, bob) = (api.user("alice").await, api.user("bob").await);
        let mut stomp = api.server.tcp().await;
        stomp.connect_token(&alice.token).await;

        let path = format!("/api/presence?userIds={},{},{}", alice.id, bob.id, alice.id);
        let items = eventually("alice to be online", || async {
            let (status, v) = api.get(&path, &bob).await;
            assert_eq!(status, StatusCode::OK, "{v}");
            let list = items(&v);
            (list[0]["status"] == "online").then_some(list)
        })
        .await;
        assert_eq!(items.len(), 2, "each user once: {items:?}");
        for item in &items {
            assert_eq!(keys(item), ["lastSeenAt", "status", "userId"]);
        }
        assert_eq!(items[0]["userId"], alice.id.as_str());
        assert!(items[0]["lastSeenAt"].as_str().unwrap().ends_with('Z'));
        assert_eq!(items[1]["userId"], bob.id.as_str());
        assert_eq!(items[1]["status"], "offline");
        assert_eq!(items[1]["lastSeenAt"], Value::Null, "never seen");

        let (status, e) = api.get("/api/presence", &bob).await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::BAD_REQUEST, "invalid_query")
        );
        let (status, v) = api.get("/api/presence?userIds=", &bob).await;
        assert_eq!((status, v), (StatusCode::OK, json!({"items": []})));
    }

    pub(super) async fn sending_too_fast_answers_429_with_retry_after(api: Api) {
        let (alice, bob) = (api.user("alice").await, api.user("bob").await);
        let cid = api.group(&alice, "g", &[&bob]).await;
        let path = format!("/api/conversations/{cid}/messages");
        // A burst of two, then a refusal (a slow machine may earn one more
        // token on the way, never many).
        let mut accepted = HashSet::new();
        let res = loop {
            let n = accepted.len();
            let res = api
                .http
                .post(api.url(&path))
                .bearer_auth(&alice.token)
                .json(&json!({ "body": format!("m{n}") }))
                .send()
                .await
                .unwrap();
            if res.status() != StatusCode::CREATED {
                break res;
            }
            accepted.insert(format!("m{n}"));
            assert!(accepted.len() <= 4, "the rate limit never applied");
        };
        assert!(accepted.len() >= 2, "the burst is allowed");
        let retry_after: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .expect("whole seconds");
        assert!(retry_after >= 1);
        let (status, e) = read(res).await;
        assert_eq!(
            (status, code(&e)),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
        );
        // The limit is per user: bob still gets through, and nothing was stored
        // for the refused send.
        api.send(&bob, &cid, "bob").await;
        let bodies: HashSet<String> = api
            .history(&bob, &cid, "")
            .await
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect();
        accepted.insert("bob".into());
        assert_eq!(bodies, accepted);
    }
}
