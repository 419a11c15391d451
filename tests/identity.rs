//! Identity over the real server: one-time codes delivered through a real
//! SMTP server on loopback (tests/support/smtp.rs) and an HTTP webhook,
//! browser sessions with CSRF, the WebSocket origin check, rate limits,
//! account changes, revocation closing live STOMP connections, and the
//! security headers.

mod support;

use std::time::Duration;

use reqwest::{header, Client, Response, StatusCode};
use serde_json::{json, Value};
use stompline::config::Config;
use support::smtp::SmtpSink;
use support::TestServer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Api {
    base: String,
    http: Client,
}

impl Api {
    fn new(server: &TestServer) -> Api {
        Api {
            base: format!("http://{}", server.http),
            http: Client::new(),
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

    async fn json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self.post(path, body).await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// `POST /api/auth/verify-otp` with `id` (`{"email"}` or `{"phone"}`) and
/// `code`.
async fn verify(api: &Api, mut id: Value, code: &str) -> (StatusCode, Value) {
    id["code"] = json!(code);
    api.json("/api/auth/verify-otp", id).await
}

/// `GET /api/me` with a bearer token.
async fn me_status(api: &Api, access: &str) -> StatusCode {
    api.http
        .get(api.url("/api/me"))
        .bearer_auth(access)
        .send()
        .await
        .expect("request")
        .status()
}

/// `PATCH /api/me` with a bearer token.
async fn patch_me(api: &Api, access: &str, body: Value) -> Response {
    api.http
        .patch(api.url("/api/me"))
        .bearer_auth(access)
        .json(&body)
        .send()
        .await
        .expect("request")
}

fn code_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// A server whose codes go to `sink`, with `f` applied on top.
async fn server_with_sink(sink: &SmtpSink, f: impl FnOnce(&mut Config)) -> TestServer {
    let url = sink.url();
    TestServer::start_with(move |c| {
        c.mail.smtp_url = url;
        c.mail.from = "codes@stompline.test".into();
        c.mail.retry_backoff_ms = 50;
        f(c);
    })
    .await
}

/// An SMTP sink, a server sending to it (with `f` applied) and a client.
async fn with_mail(f: impl FnOnce(&mut Config)) -> (SmtpSink, TestServer, Api) {
    let sink = SmtpSink::start().await;
    let server = server_with_sink(&sink, f).await;
    let api = Api::new(&server);
    (sink, server, api)
}

/// The answer must be 401 `invalid_code`.
fn assert_refused_code((status, body): (StatusCode, Value)) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(code_of(&body), "invalid_code");
}

async fn request_code(api: &Api, body: Value) {
    let response = api.post("/api/auth/request-otp", body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn code_by_mail_logs_in_and_creates_the_account_once() {
    let (sink, _server, api) = with_mail(|c| c.auth.otp_resend_secs = 0).await;

    request_code(&api, json!({"email": "Dora@Example.org"})).await;
    let mail = sink.next_mail().await;
    assert_eq!(mail.to, ["Dora@Example.org"]);
    assert_eq!(mail.from, "codes@stompline.test");
    assert!(mail.data.contains("text/html"), "{}", mail.data);
    let code = mail.code();
    assert!(mail.data.contains(&code));

    let (status, first) = verify(&api, json!({"email": "dora@example.org"}), &code).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["user"]["email"], "dora@example.org");
    let access = first["accessToken"].as_str().unwrap();
    assert_eq!(me_status(&api, access).await, StatusCode::OK);

    // The code is spent.
    let (status, body) = verify(&api, json!({"email": "dora@example.org"}), &code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code_of(&body), "invalid_code");

    // A second login finds the same account.
    request_code(&api, json!({"email": "dora@example.org"})).await;
    let code = sink.next_mail().await.code();
    let (status, second) = verify(&api, json!({"email": "DORA@example.org"}), &code).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["user"]["id"], first["user"]["id"]);
}

#[tokio::test]
async fn known_and_unknown_addresses_get_the_same_answer() {
    let (_sink, _server, api) = with_mail(|_| {}).await;
    let (status, _) = api
        .json(
            "/api/auth/register",
            json!({"username": "known", "password": "correct horse", "email": "known@example.org"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let mut answers = Vec::new();
    for email in ["known@example.org", "nobody@example.org"] {
        let response = api
            .post("/api/auth/request-otp", json!({ "email": email }))
            .await;
        answers.push((response.status(), response.text().await.unwrap()));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, StatusCode::ACCEPTED);

    for bad in [
        json!({}),
        json!({"email": "a@example.org", "phone": "+15551234567"}),
        json!({"email": "not an address"}),
        json!({"phone": "12"}),
    ] {
        let (status, body) = api.json("/api/auth/request-otp", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let (sink, _server, api) = with_mail(|c| c.auth.otp_ttl_secs = 1).await;
    request_code(&api, json!({"email": "late@example.org"})).await;
    let code = sink.next_mail().await.code();
    // The code lives one second; wait it out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_refused_code(verify(&api, json!({"email": "late@example.org"}), &code).await);
}

#[tokio::test]
async fn the_sixth_attempt_fails_even_with_the_right_code() {
    let (sink, _server, api) = with_mail(|_| {}).await;
    request_code(&api, json!({"email": "guess@example.org"})).await;
    let code = sink.next_mail().await.code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for attempt in 1..=5 {
        let (status, body) = verify(&api, json!({"email": "guess@example.org"}), wrong).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}: {body}"
        );
        assert_eq!(code_of(&body), "invalid_code");
    }
    assert_refused_code(verify(&api, json!({"email": "guess@example.org"}), &code).await);
}

#[tokio::test]
async fn a_second_request_within_the_resend_interval_sends_nothing() {
    let (sink, _server, api) = with_mail(|_| {}).await;
    request_code(&api, json!({"email": "twice@example.org"})).await;
    let first = sink.next_mail().await;
    assert_eq!(first.to, ["twice@example.org"]);

    request_code(&api, json!({"email": "twice@example.org"})).await;
    request_code(&api, json!({"email": "other@example.org"})).await;
    let next = sink.next_mail().await;
    assert_eq!(next.to, ["other@example.org"]);
    assert!(sink.try_mail().await.is_none());

    // The first code still works.
    let (status, body) = verify(&api, json!({"email": "twice@example.org"}), &first.code()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn smtp_down_is_retried_and_the_request_still_answers_202() {
    // A port with nothing listening yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = TestServer::start_with(move |c| {
        c.mail.smtp_url = format!("smtp://{addr}");
        c.mail.retry_backoff_ms = 100;
        c.mail.retry_attempts = 50;
    })
    .await;
    let api = Api::new(&server);
    let response = api
        .post(
            "/api/auth/request-otp",
            json!({"email": "patient@example.org"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // Wait until a failed attempt was retried, then bring the server up.
    let metrics = format!("{}/metrics", api.base);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = api
            .http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("stompline_mail_retried_total{channel=\"smtp\"}") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no retry counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sink = SmtpSink::start_on(addr).await;
    let mail = sink.next_mail().await;
    assert_eq!(mail.to, ["patient@example.org"]);
    let (status, body) = verify(&api, json!({"email": "patient@example.org"}), &mail.code()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// An HTTP endpoint that records the JSON bodies posted to it.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, rx)
}

#[tokio::test]
async fn phone_codes_go_through_the_webhook_and_make_a_phone_only_account() {
    let (url, mut texts) = webhook().await;
    let server = TestServer::start_with(move |c| c.mail.sms_webhook_url = url).await;
    let api = Api::new(&server);
    request_code(&api, json!({"phone": "+1 (555) 010-2030"})).await;
    let sms = tokio::time::timeout(Duration::from_secs(20), texts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sms["to"], "+15550102030");
    let text = sms["text"].as_str().unwrap();
    let code: String = text
        .split_whitespace()
        .find(|w| {
            w.trim_end_matches('.').len() == 6 && w.chars().take(6).all(|c| c.is_ascii_digit())
        })
        .unwrap()
        .chars()
        .take(6)
        .collect();
    let (status, body) = verify(&api, json!({"phone": "+15550102030"}), &code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["user"].get("email").is_none(), "{body}");
}

#[tokio::test]
async fn phone_codes_can_go_through_an_email_to_sms_gateway() {
    let (sink, _server, api) =
        with_mail(|c| c.mail.sms_gateway = "{phone}@sms.example.net".into()).await;
    request_code(&api, json!({"phone": "+44 20 7946 0958"})).await;
    let mail = sink.next_mail().await;
    assert_eq!(mail.to, ["442079460958@sms.example.net"]);
    let (status, body) = verify(&api, json!({"phone": "+442079460958"}), &mail.code()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn without_smtp_codes_land_in_the_development_mailbox() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    request_code(&api, json!({"email": "dev@example.org"})).await;
    let mailbox = server.running.shared.config.mailbox_dir();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let found = std::fs::read_dir(&mailbox)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read_to_string(e.path()).ok());
        if let Some(text) = found {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no mailbox file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.contains("development mailbox"), "{text}");
    assert!(text.contains("To: dev@example.org"), "{text}");
}

// ---- browser sessions

/// Logs in with `"session": true`; returns (session cookie, csrf cookie,
/// csrfToken from the body).
async fn browser_login(api: &Api, username: &str) -> (String, String, String) {
    let response = api
        .post(
            "/api/auth/login",
            json!({"username": username, "password": format!("password-{username}"), "session": true}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookies: Vec<String> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let find = |name: &str| {
        cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {cookies:?}"))
            .clone()
    };
    let session = find("stompline_session");
    let csrf = find("stompline_csrf");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "{session}"
    );
    assert!(!csrf.contains("HttpOnly"), "{csrf}");
    let value = |c: &str| {
        c.split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    };
    let body: Value = response.json().await.unwrap();
    let token = body["csrfToken"].as_str().unwrap().to_owned();
    assert_eq!(token, value(&csrf));
    (value(&session), value(&csrf), token)
}

#[tokio::test]
async fn cookie_requests_need_the_csrf_token_for_unsafe_methods() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    server.register("carol").await;
    let (bob, _, _) = server.register("bob").await;
    let (session, csrf, token) = browser_login(&api, "carol").await;
    let cookie = format!("stompline_session={session}; stompline_csrf={csrf}");

    // Reading needs no token.
    let me = api
        .http
        .get(api.url("/api/me"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    let create = json!({"type": "direct", "memberIds": [bob]});
    for (label, csrf_header) in [("missing", None), ("wrong", Some("forged"))] {
        let mut request = api
            .http
            .post(api.url("/api/conversations"))
            .header(header::COOKIE, &cookie)
            .json(&create);
        if let Some(v) = csrf_header {
            request = request.header("X-CSRF-Token", v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{label}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(code_of(&body), "csrf_failed");
    }
    let response = api
        .http
        .post(api.url("/api/conversations"))
        .header(header::COOKIE, &cookie)
        .header("X-CSRF-Token", &token)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // The session cookie is not a bearer token.
    assert_eq!(me_status(&api, &session).await, StatusCode::UNAUTHORIZED);

    // Logout by cookie ends the session and clears the cookies.
    let response = api
        .http
        .post(api.url("/api/auth/logout"))
        .header(header::COOKIE, &cookie)
        .header("X-CSRF-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.to_str().unwrap().contains("Max-Age=0")));
    let me = api
        .http
        .get(api.url("/api/me"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn websocket_cookie_counts_only_from_allowed_origins() {
    let server = TestServer::start_with(|c| {
        c.auth.allowed_origins = vec!["http://app.example".into()];
    })
    .await;
    let api = Api::new(&server);
    server.register("wendy").await;
    let (session, _, _) = browser_login(&api, "wendy").await;

    let upgrade = |origin: &'static str| {
        let mut req = format!("ws://{}/ws", server.http)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Cookie",
            format!("stompline_session={session}").parse().unwrap(),
        );
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "v12.stomp".parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(upgrade("http://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("foreign origin was not refused: {:?}", other.map(|r| r.1)),
    }

    let (ws, _) = tokio_tungstenite::connect_async(upgrade("http://app.example"))
        .await
        .expect("allowed origin upgrades");
    let mut client = support::Client::from_ws(ws);
    client
        .send(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0")
        .await;
    let connected = client.expect(stomp_codec::Command::Connected).await;
    assert!(connected.header("user-id").is_some());
}

// ---- revocation closes live connections

#[tokio::test]
async fn refresh_token_reuse_closes_the_familys_live_connection() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let (_, access, refresh) = server.register("rita").await;
    let mut live = server.tcp().await;
    live.connect_token(&access).await;
    let (status, _) = api
        .json("/api/auth/refresh", json!({"refreshToken": refresh}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .json("/api/auth/refresh", json!({"refreshToken": refresh}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code_of(&body), "refresh_token_reused");
    live.expect_error("session revoked").await;
}

// ---- account changes

#[tokio::test]
async fn password_change_needs_the_current_one_and_ends_other_sessions() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let (_, access, _) = server.register("paul").await;
    let (status, body) = api
        .json(
            "/api/auth/login",
            json!({"username": "paul", "password": "password-paul"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let other_access = body["accessToken"].as_str().unwrap().to_owned();
    let mut other = server.tcp().await;
    other.connect_token(&other_access).await;

    let response = patch_me(
        &api,
        &access,
        json!({"password": "new secret phrase", "currentPassword": "wrong"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = patch_me(
        &api,
        &access,
        json!({"password": "password123", "currentPassword": "password-paul"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(code_of(&body), "password_too_common");

    let response = patch_me(
        &api,
        &access,
        json!({
            "password": "new secret phrase",
            "currentPassword": "password-paul",
            "displayName": "Paul P."
        }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["displayName"], "Paul P.");

    // The other session is gone, with its live connection; this one stays.
    other.expect_error("session revoked").await;
    assert_eq!(
        me_status(&api, &other_access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me_status(&api, &access).await, StatusCode::OK);
    let (status, _) = api
        .json(
            "/api/auth/login",
            json!({"username": "paul", "password": "new secret phrase"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn email_change_is_confirmed_by_a_code_sent_to_the_new_address() {
    let (sink, server, api) = with_mail(|_| {}).await;
    let (_, access, _) = server.register("emma").await;
    let response = patch_me(&api, &access, json!({"email": "emma@example.org"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["pendingEmail"], "emma@example.org");
    assert!(body.get("email").is_none(), "not changed yet: {body}");

    let mail = sink.next_mail().await;
    assert_eq!(mail.to, ["emma@example.org"]);
    let response = patch_me(
        &api,
        &access,
        json!({"email": "emma@example.org", "emailCode": "000000"}),
    )
    .await;
    if mail.code() != "000000" {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = patch_me(
        &api,
        &access,
        json!({"email": "emma@example.org", "emailCode": mail.code()}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["email"], "emma@example.org");
}

// ---- rate limits

fn limited(c: &mut Config, per_ip: u32, per_account: u32) {
    c.rate_limit.enabled = true;
    c.rate_limit.per_ip = per_ip;
    c.rate_limit.per_account = per_account;
    c.rate_limit.failure_delay_ms = 1;
    c.rate_limit.failure_delay_max_ms = 2;
}

fn retry_after(response: &Response) -> u64 {
    response
        .headers()
        .get(header::RETRY_AFTER)
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn brute_force_against_one_account_gets_429_with_retry_after() {
    let server = TestServer::start_with(|c| limited(c, 1000, 5)).await;
    let api = Api::new(&server);
    let (status, _) = api
        .json(
            "/api/auth/register",
            json!({"username": "victim", "password": "password-victim", "email": "victim@example.org"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut statuses = Vec::new();
    for i in 0..8 {
        // Username and email name the same account and share its count.
        let login = if i % 2 == 0 {
            json!({"username": "victim", "password": format!("guess-{i}")})
        } else {
            json!({"email": "Victim@Example.org", "password": format!("guess-{i}")})
        };
        let response = api.post("/api/auth/login", login).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!((1..=60).contains(&retry_after(&response)));
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    // Even the right password waits for the window; other accounts do not.
    let response = api
        .post(
            "/api/auth/login",
            json!({"username": "victim", "password": "password-victim"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    server.register("bystander").await;
    let (status, _) = api
        .json(
            "/api/auth/login",
            json!({"username": "bystander", "password": "password-bystander"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // STOMP password logins count against the same account.
    let mut c = server.tcp().await;
    c.send(b"CONNECT\naccept-version:1.2\nhost:h\nlogin:victim\npasscode:password-victim\n\n\0")
        .await;
    c.expect_error("too many attempts").await;
}

#[tokio::test]
async fn brute_force_from_one_ip_gets_429_with_retry_after() {
    let server = TestServer::start_with(|c| limited(c, 4, 1000)).await;
    let api = Api::new(&server);
    for i in 0..4 {
        let (status, _) = api
            .json(
                "/api/auth/login",
                json!({"username": format!("user{i}"), "password": "whatever it is"}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = api
        .post(
            "/api/auth/login",
            json!({"username": "user9", "password": "whatever it is"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=60).contains(&retry_after(&response)));
    let body: Value = response.json().await.unwrap();
    assert_eq!(code_of(&body), "rate_limited");

    // Code requests and verifications have their own per-IP counts.
    for _ in 0..4 {
        let (status, _) = verify(&api, json!({"email": "x@example.org"}), "123456").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = api
        .post(
            "/api/auth/verify-otp",
            json!({"email": "x@example.org", "code": "123456"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    retry_after(&response);

    // So do STOMP password logins.
    for i in 0..5 {
        let mut c = server.tcp().await;
        let frame =
            format!("CONNECT\naccept-version:1.2\nhost:h\nlogin:nobody{i}\npasscode:nope\n\n\0");
        c.send(frame.as_bytes()).await;
        let expected = if i < 4 {
            "authentication failed"
        } else {
            "too many attempts"
        };
        c.expect_error(expected).await;
    }
}

#[tokio::test]
async fn code_requests_are_capped_per_ip_per_hour() {
    let (_sink, _server, api) = with_mail(|c| c.auth.otp_per_hour_per_ip = 3).await;
    for i in 0..3 {
        request_code(&api, json!({ "email": format!("n{i}@example.org") })).await;
    }
    let response = api
        .post("/api/auth/request-otp", json!({"email": "n9@example.org"}))
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&response) > 0);
}

// ---- headers

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    for path in ["/healthz", "/api/me", "/api/nowhere"] {
        let response = api.http.get(api.url(path)).send().await.unwrap();
        let h = response.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    }
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let server = TestServer::start_with(|c| {
        c.auth.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let api = Api::new(&server);
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let response = api
            .http
            .request(reqwest::Method::OPTIONS, api.url("/api/me"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PATCH")
            .header("Access-Control-Request-Headers", "x-csrf-token")
            .send()
            .await
            .unwrap();
        let allow = response.headers().get("access-control-allow-origin");
        assert_eq!(allow.is_some(), allowed, "{origin}");
        if allowed {
            assert_eq!(allow.unwrap(), origin);
            assert_eq!(
                response.headers()["access-control-allow-credentials"],
                "true"
            );
        }
    }
}
