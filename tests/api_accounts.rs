//! The account REST API over real HTTP: the real server (`server::start`)
//! on ephemeral ports with a SQLite store in a temporary directory.

mod support;

use std::time::{Duration, Instant};

use reqwest::{header, Client, Response, StatusCode};
use serde_json::{json, Value};
use stompline::api::{self, ApiState};
use stompline::store;

struct TestServer {
    base: String,
    http: Client,
    _server: support::TestServer,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(Duration::from_secs(600), None).await
    }

    /// `database_url` `None` serves the real server's SQLite store. With a
    /// URL, the API is served over a store opened from that URL (without
    /// migrating, so an unreachable database still gives a running API)
    /// next to the real server's other parts.
    async fn start_with(access_ttl: Duration, database_url: Option<&str>) -> Self {
        let server = support::TestServer::start_with(|c| {
            c.auth.access_token_ttl_secs = access_ttl.as_secs();
            // Smaller memory keeps the suite quick; the algorithm and the
            // code path are the production ones.
            c.auth.argon2_memory_kib = 4096;
            c.auth.argon2_iterations = 1;
        })
        .await;
        let Some(url) = database_url else {
            return Self {
                base: format!("http://{}", server.http),
                http: Client::new(),
                _server: server,
                _dir: None,
            };
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store::open(url, dir.path(), 2).await.expect("open store");
        let shared = &server.running.shared;
        let app = api::router(ApiState {
            auth: shared.auth.clone(),
            store,
            metrics: None,
            chat: shared.chat.clone(),
            presence: shared.presence.clone(),
            cookie_secure: false,
            events: None,
            shared_state: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            base: format!("http://{addr}"),
            http: Client::new(),
            _server: server,
            _dir: Some(dir),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    async fn register(&self, username: &str, password: &str) -> Value {
        let response = self
            .post(
                "/api/auth/register",
                json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }
}

async fn read_json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.expect("JSON body");
    (status, body)
}

/// Asserts the `{"error":{"code","message"}}` shape and returns the code.
fn error_code(body: &Value) -> &str {
    let error = body["error"].as_object().expect("error object");
    assert_eq!(error.len(), 2, "exactly code and message: {body}");
    assert!(
        !error["message"].as_str().expect("message").is_empty(),
        "{body}"
    );
    let code = error["code"].as_str().expect("code");
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "snake_case: {code}"
    );
    code
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn register_answers_201_with_the_documented_shape() {
    let server = TestServer::start().await;
    let response = server
        .post(
            "/api/auth/register",
            json!({
                "username": "Alice",
                "password": "correct horse",
                "email": "alice@example.org",
                "displayName": "Alice A."
            }),
        )
        .await;
    let (status, body) = read_json(response).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        keys(&body),
        ["accessToken", "expiresIn", "refreshToken", "user"]
    );
    assert_eq!(body["expiresIn"], 600);
    assert!(body["accessToken"].as_str().unwrap().len() > 20);
    assert!(body["refreshToken"].as_str().unwrap().len() > 20);

    let user = &body["user"];
    assert_eq!(
        keys(user),
        ["createdAt", "displayName", "email", "id", "username"]
    );
    assert_eq!(user["username"], "Alice", "kept as given");
    assert_eq!(user["displayName"], "Alice A.");
    assert_eq!(user["email"], "alice@example.org");
    let created_at = user["createdAt"].as_str().unwrap();
    assert!(created_at.ends_with('Z'), "UTC: {created_at}");
    time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");

    // Without email or display name: no email key, display name = username.
    let body = server.register("bob", "hunter2hunter2").await;
    assert_eq!(
        keys(&body["user"]),
        ["createdAt", "displayName", "id", "username"]
    );
    assert_eq!(body["user"]["displayName"], "bob");
    assert_ne!(body["user"]["id"], user["id"]);
}

#[tokio::test]
async fn taken_username_or_email_answers_409() {
    let server = TestServer::start().await;
    server
        .post(
            "/api/auth/register",
            json!({ "username": "alice", "password": "correct horse", "email": "a@example.org" }),
        )
        .await;
    for (request, code) in [
        (
            json!({ "username": "ALICE", "password": "another one" }),
            "username_taken",
        ),
        (
            json!({ "username": "Alice", "password": "another one" }),
            "username_taken",
        ),
        (
            json!({ "username": "other", "password": "another one", "email": "A@Example.org" }),
            "email_taken",
        ),
    ] {
        let (status, body) = read_json(server.post("/api/auth/register", request).await).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(error_code(&body), code);
    }
}

#[tokio::test]
async fn invalid_registrations_answer_400() {
    let server = TestServer::start().await;
    for (request, code) in [
        (
            json!({ "username": "al", "password": "correct horse" }),
            "invalid_username",
        ),
        (
            json!({ "username": "a".repeat(33), "password": "correct horse" }),
            "invalid_username",
        ),
        (
            json!({ "username": "al ice", "password": "correct horse" }),
            "invalid_username",
        ),
        (
            json!({ "username": "alice!", "password": "correct horse" }),
            "invalid_username",
        ),
        (
            json!({ "username": "alice", "password": "short" }),
            "password_too_short",
        ),
        (
            json!({ "username": "alice", "password": "correct horse", "email": "nope" }),
            "invalid_email",
        ),
        (
            json!({ "username": "alice", "password": "correct horse", "displayName": "  " }),
            "invalid_display_name",
        ),
        (json!({ "username": "alice" }), "invalid_request"),
        (
            json!({ "username": 5, "password": "correct horse" }),
            "invalid_request",
        ),
        (json!([1, 2, 3]), "invalid_request"),
    ] {
        let (status, body) =
            read_json(server.post("/api/auth/register", request.clone()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request} → {body}");
        assert_eq!(error_code(&body), code, "{request}");
    }
    // Nothing was created by the refused attempts.
    server.register("alice", "correct horse").await;
}

#[tokio::test]
async fn malformed_bodies_get_the_error_shape() {
    let server = TestServer::start().await;
    for raw in ["{", "{\"username\": }", "not json", ""] {
        let response = server
            .http
            .post(server.url("/api/auth/register"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let (status, body) = read_json(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw:?}");
        assert_eq!(error_code(&body), "invalid_json", "{raw:?}");
    }

    let response = server
        .http
        .post(server.url("/api/auth/login"))
        .body(r#"{"username":"a","password":"b"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = read_json(response).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&body), "unsupported_media_type");

    let huge = json!({ "username": "alice", "password": "x".repeat(100 * 1024) });
    let (status, body) = read_json(server.post("/api/auth/register", huge).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "payload_too_large");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_the_error_shape() {
    let server = TestServer::start().await;
    let (status, body) = read_json(server.get("/api/nope", None).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");

    let (status, body) = read_json(server.get("/api/auth/login", None).await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method_not_allowed");
}

#[tokio::test]
async fn login_by_username_or_email() {
    let server = TestServer::start().await;
    let registered = server
        .post(
            "/api/auth/register",
            json!({ "username": "Alice", "password": "correct horse", "email": "alice@example.org" }),
        )
        .await;
    let registered: Value = registered.json().await.unwrap();

    for request in [
        json!({ "username": "alice", "password": "correct horse" }),
        json!({ "username": "ALICE", "password": "correct horse" }),
        json!({ "email": "Alice@Example.org", "password": "correct horse" }),
        json!({ "username": "alice@example.org", "password": "correct horse" }),
    ] {
        let (status, body) = read_json(server.post("/api/auth/login", request.clone()).await).await;
        assert_eq!(status, StatusCode::OK, "{request} → {body}");
        assert_eq!(
            keys(&body),
            ["accessToken", "expiresIn", "refreshToken", "user"]
        );
        assert_eq!(body["user"], registered["user"]);
        assert_ne!(body["refreshToken"], registered["refreshToken"]);
    }

    let (status, body) = read_json(
        server
            .post("/api/auth/login", json!({ "password": "x" }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_request");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_answer_the_same_401() {
    let server = TestServer::start().await;
    server.register("alice", "correct horse").await;

    let wrong_password = server
        .post(
            "/api/auth/login",
            json!({ "username": "alice", "password": "wrong horse" }),
        )
        .await;
    let unknown_user = server
        .post(
            "/api/auth/login",
            json!({ "username": "mallory", "password": "wrong horse" }),
        )
        .await;
    let unknown_email = server
        .post(
            "/api/auth/login",
            json!({ "email": "m@example.org", "password": "wrong horse" }),
        )
        .await;

    let wrong_password_headers = wrong_password.headers().clone();
    let unknown_user_headers = unknown_user.headers().clone();
    let (s1, b1) = read_json(wrong_password).await;
    let (s2, b2) = read_json(unknown_user).await;
    let (s3, b3) = read_json(unknown_email).await;
    assert_eq!(s1, StatusCode::UNAUTHORIZED);
    assert_eq!((s1, &b1), (s2, &b2));
    assert_eq!((s1, &b1), (s3, &b3));
    assert_eq!(error_code(&b1), "invalid_credentials");
    assert_eq!(
        wrong_password_headers.get(header::WWW_AUTHENTICATE),
        unknown_user_headers.get(header::WWW_AUTHENTICATE)
    );
    assert_eq!(
        wrong_password_headers.get(header::CONTENT_LENGTH),
        unknown_user_headers.get(header::CONTENT_LENGTH)
    );

    // Failures are counted by reason.
    let metrics = server.get("/metrics", None).await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("stompline_auth_failures_total{reason=\"invalid_credentials\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn me_needs_a_valid_bearer_token() {
    let server = TestServer::start().await;
    let registered = server.register("alice", "correct horse").await;
    let token = registered["accessToken"].as_str().unwrap();

    let (status, me) = read_json(server.get("/api/me", Some(token)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, registered["user"]);

    let response = server.get("/api/me", None).await;
    assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    let (status, body_missing) = read_json(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body_missing), "missing_credentials");

    let mut tampered = token.to_string();
    tampered.push('x');
    for bad in ["garbage", tampered.as_str()] {
        let (status, body) = read_json(server.get("/api/me", Some(bad)).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "invalid_token");
    }

    let response = server
        .http
        .get(server.url("/api/me"))
        .header(header::AUTHORIZATION, format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    let (status, body) = read_json(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "invalid_token");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let server = TestServer::start().await;
    let first = server.register("alice", "correct horse").await;
    let first_refresh = first["refreshToken"].as_str().unwrap();

    let (status, second) = read_json(
        server
            .post(
                "/api/auth/refresh",
                json!({ "refreshToken": first_refresh }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        keys(&second),
        ["accessToken", "expiresIn", "refreshToken", "user"]
    );
    assert_eq!(second["user"], first["user"]);
    let second_refresh = second["refreshToken"].as_str().unwrap();
    let second_access = second["accessToken"].as_str().unwrap();
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(
        server.get("/api/me", Some(second_access)).await.status(),
        StatusCode::OK
    );

    // An unrelated session of the same user, to see that it survives.
    let other: Value = server
        .post(
            "/api/auth/login",
            json!({ "username": "alice", "password": "correct horse" }),
        )
        .await
        .json()
        .await
        .unwrap();

    // Replaying the spent token revokes the whole family...
    let (status, body_reuse) = read_json(
        server
            .post(
                "/api/auth/refresh",
                json!({ "refreshToken": first_refresh }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body_reuse), "refresh_token_reused");

    // ...so the newer refresh token and the session's access token die too.
    let (status, body_newer) = read_json(
        server
            .post(
                "/api/auth/refresh",
                json!({ "refreshToken": second_refresh }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body_newer), "session_revoked");
    let (status, body_me) = read_json(server.get("/api/me", Some(second_access)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body_me), "session_revoked");

    // The other session is untouched.
    let other_access = other["accessToken"].as_str().unwrap();
    assert_eq!(
        server.get("/api/me", Some(other_access)).await.status(),
        StatusCode::OK
    );
    let response = server
        .post(
            "/api/auth/refresh",
            json!({ "refreshToken": other["refreshToken"] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    for bad in [
        json!({ "refreshToken": "nope" }),
        json!({ "refreshToken": "A".repeat(43) }),
    ] {
        let (status, body) = read_json(server.post("/api/auth/refresh", bad).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "invalid_token");
    }
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let server = TestServer::start().await;
    let session = server.register("alice", "correct horse").await;
    let access = session["accessToken"].as_str().unwrap();

    let response = server
        .http
        .post(server.url("/api/auth/logout"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let (status, me) = read_json(server.get("/api/me", Some(access)).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&me), "session_revoked");
    let (status, refreshed) = read_json(
        server
            .post(
                "/api/auth/refresh",
                json!({ "refreshToken": session["refreshToken"] }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&refreshed), "session_revoked");

    // Logging out by refresh token works without an access token.
    let other: Value = server
        .post(
            "/api/auth/login",
            json!({ "username": "alice", "password": "correct horse" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let response = server
        .post(
            "/api/auth/logout",
            json!({ "refreshToken": other["refreshToken"] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _) = read_json(
        server
            .get("/api/me", Some(other["accessToken"].as_str().unwrap()))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, anonymous) = read_json(
        server
            .http
            .post(server.url("/api/auth/logout"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&anonymous), "missing_credentials");
}

#[tokio::test]
async fn expired_access_tokens_are_refused() {
    let server = TestServer::start_with(Duration::from_secs(1), None).await;
    let session = server.register("alice", "correct horse").await;
    assert_eq!(session["expiresIn"], 1);
    let access = session["accessToken"].as_str().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let response = server.get("/api/me", Some(access)).await;
        if response.status() == StatusCode::UNAUTHORIZED {
            break response.json::<Value>().await.unwrap();
        }
        assert_eq!(response.status(), StatusCode::OK);
        assert!(Instant::now() < deadline, "token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(error_code(&body), "token_expired");

    // The refresh token still gets a fresh access token.
    let response = server
        .post(
            "/api/auth/refresh",
            json!({ "refreshToken": session["refreshToken"] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    let (status, body_health) = read_json(server.get("/healthz", None).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body_health["status"], "ok");
    let (status, ready) = read_json(server.get("/readyz", None).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["checks"]["database"], "ok");
}

#[tokio::test]
async fn readiness_names_the_failed_dependency() {
    // Nothing listens on port 1.
    let server = TestServer::start_with(
        Duration::from_secs(60),
        Some("postgres://postgres@127.0.0.1:1/x"),
    )
    .await;
    assert_eq!(server.get("/healthz", None).await.status(), StatusCode::OK);
    let (status, body) = read_json(server.get("/readyz", None).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["checks"]["database"].as_str().is_some(), "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["error"]["code"], "dependency_unavailable");
}
