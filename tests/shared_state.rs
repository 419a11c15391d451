//! Shared state in Redis (`shared_state = "redis"`): presence, typing,
//! revocations and the send rate, first as two instances of each Redis
//! implementation sharing one key prefix, then as two `stompline` processes
//! sharing PostgreSQL and Redis.
//!
//! Redis comes from `STOMPLINE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). When it cannot be reached the tests pass
//! without running, unless `STOMPLINE_REQUIRE_SERVICES=1`, which makes them
//! fail. Each test uses a key prefix of its own.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stompline::auth::{Auth, AuthError, AuthSettings, Registration};
use stompline::chat::{SendRate, TypingState};
use stompline::presence::{PresenceState, Status};
use stompline::shared_state::{
    RedisPresence, RedisRevocations, RedisSendRate, RedisShared, RedisTyping,
};
use stompline::store::{self, Store};
use support::pg::PgDatabase;
use support::process::{get_json, register, ServerProcess};
use support::Client;
use tokio_util::sync::CancellationToken;

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Generous bound for anything that crosses instances.
const PATIENCE: Duration = Duration::from_secs(20);

fn redis_url() -> String {
    std::env::var("STOMPLINE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())
}

fn unique_prefix() -> String {
    format!("stompline-test:{}:", uuid::Uuid::new_v4().simple())
}

/// A connection under `prefix`, or `None` when Redis is unreachable and not
/// required.
async fn redis(prefix: &str) -> Option<RedisShared> {
    let url = redis_url();
    match RedisShared::connect(&url, prefix, 4).await {
        Ok(r) => Some(r),
        Err(e) => {
            if std::env::var("STOMPLINE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("Redis at {url} is required (STOMPLINE_REQUIRE_SERVICES=1) but unreachable: {e}");
            }
            eprintln!("SKIPPED: Redis at {url} unreachable ({e}); set STOMPLINE_TEST_REDIS_URL");
            None
        }
    }
}

/// Polls `check` until it yields a value or [`PATIENCE`] passes.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- presence -------------------------------------------------------------

/// The user's status as `p` reads it (`None`: offline).
async fn status_of(p: &RedisPresence, user: &str) -> Option<Status> {
    p.get(&[user.to_owned()]).await.unwrap()[0].map(|(s, _)| s)
}

fn presence(redis: &RedisShared, instance: &str, ttl_ms: u64, grace_ms: u64) -> Arc<RedisPresence> {
    Arc::new(RedisPresence::new(
        redis.clone(),
        instance,
        Duration::from_millis(ttl_ms),
        Duration::from_millis(grace_ms),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_on_two_instances_is_one_online_and_one_offline() {
    let Some(r) = redis(&unique_prefix()).await else {
        return;
    };
    let a = presence(&r, "a", 60_000, 200);
    let b = presence(&r, "b", 60_000, 200);
    let user = "user-1";

    // Many tabs on both instances at once: exactly one `online`.
    let mut joins = Vec::new();
    for i in 0..20 {
        let p = if i % 2 == 0 { a.clone() } else { b.clone() };
        joins.push(tokio::spawn(
            async move { p.connected(user).await.unwrap() },
        ));
    }
    let mut onlines = 0;
    for j in joins {
        onlines += usize::from(j.await.unwrap().is_some());
    }
    assert_eq!(onlines, 1);
    let seen = b
        .get(&[user.to_owned(), "nobody".to_owned()])
        .await
        .unwrap();
    assert_eq!(seen[0].map(|(s, _)| s), Some(Status::Online));
    assert!(seen[1].is_none());

    // Every connection on `a` closes: `b` still holds the user.
    for _ in 0..10 {
        assert_eq!(a.disconnected(user).await.unwrap(), None);
    }
    // The last one anywhere starts the grace.
    for _ in 0..9 {
        assert_eq!(b.disconnected(user).await.unwrap(), None);
    }
    let wait = b
        .disconnected(user)
        .await
        .unwrap()
        .expect("last connection");
    assert_eq!(
        a.settle(user).await.unwrap(),
        None,
        "settled before the grace"
    );
    tokio::time::sleep(wait).await;

    // Both instances settle at once: exactly one `offline`.
    let (x, y) = tokio::join!(a.settle(user), b.settle(user));
    let offlines = usize::from(x.unwrap().is_some()) + usize::from(y.unwrap().is_some());
    assert_eq!(offlines, 1);
    assert_eq!(a.get(&[user.to_owned()]).await.unwrap()[0], None);
    assert!(a.tick().await.unwrap().is_empty());
    assert!(b.tick().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_within_the_grace_on_another_instance_keeps_the_user_online() {
    let Some(r) = redis(&unique_prefix()).await else {
        return;
    };
    let a = presence(&r, "a", 60_000, 300);
    let b = presence(&r, "b", 60_000, 300);
    let user = "user-2";
    assert!(a.connected(user).await.unwrap().is_some());
    let wait = a
        .disconnected(user)
        .await
        .unwrap()
        .expect("last connection");
    assert_eq!(b.connected(user).await.unwrap(), None, "still online");
    tokio::time::sleep(wait).await;
    assert_eq!(a.settle(user).await.unwrap(), None);
    assert_eq!(b.settle(user).await.unwrap(), None);
    assert_eq!(status_of(&a, user).await, Some(Status::Online));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instances_users_go_offline_once() {
    let Some(r) = redis(&unique_prefix()).await else {
        return;
    };
    let crashed = presence(&r, "crashed", 300, 200);
    let b = presence(&r, "b", 300, 200);
    let c = presence(&r, "c", 300, 200);
    assert!(crashed.connected("user-3").await.unwrap().is_some());
    // A live user of `b` stays online through the same sweeps.
    assert!(b.connected("user-4").await.unwrap().is_some());
    drop(crashed);

    let mut offline = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while offline.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the crashed instance's user stayed online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (x, y) = tokio::join!(b.tick(), c.tick());
        offline.extend(
            x.unwrap()
                .into_iter()
                .chain(y.unwrap())
                .filter(|(_, s, _)| *s == Status::Offline),
        );
    }
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].0, "user-3");
    // Once only, and the live user is untouched.
    for p in [&b, &c] {
        assert!(p.tick().await.unwrap().is_empty());
    }
    assert_eq!(status_of(&c, "user-4").await, Some(Status::Online));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn away_and_last_seen_are_shared() {
    let Some(r) = redis(&unique_prefix()).await else {
        return;
    };
    let a = presence(&r, "a", 60_000, 200);
    let b = presence(&r, "b", 60_000, 200);
    let user = "user-5";
    let online_at = a.connected(user).await.unwrap().expect("online");
    let away_at = b
        .set_status(user, Status::Away)
        .await
        .unwrap()
        .expect("changed");
    assert!(away_at >= online_at);
    assert_eq!(b.set_status(user, Status::Away).await.unwrap(), None);
    let (status, seen) = a.get(&[user.to_owned()]).await.unwrap()[0].expect("present");
    assert_eq!((status, seen), (Status::Away, away_at));
    // Not connected anywhere: nothing to set.
    assert_eq!(a.set_status("user-6", Status::Away).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lost_by_redis_comes_back_with_the_next_refresh() {
    let prefix = unique_prefix();
    let Some(r) = redis(&prefix).await else {
        return;
    };
    let a = presence(&r, "a", 60_000, 200);
    assert!(a.connected("user-7").await.unwrap().is_some());
    let mut conn = redis::Client::open(redis_url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}presence:user:user-7"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(a.get(&["user-7".to_owned()]).await.unwrap()[0], None);
    let changes = a.tick().await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].0.as_str(), changes[0].1),
        ("user-7", Status::Online)
    );
}

// ---- typing ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_expires_once_even_without_the_instance_that_set_it() {
    let Some(r) = redis(&unique_prefix()).await else {
        return;
    };
    let expiry = Duration::from_millis(200);
    let a = RedisTyping::new(r.clone(), expiry);
    let b = RedisTyping::new(r.clone(), expiry);
    assert!(a.set("conv-1", "user-1", true).await.unwrap());
    assert!(!b.set("conv-1", "user-1", true).await.unwrap(), "a renewal");
    assert!(b.set("conv-1", "user-2", true).await.unwrap());
    assert!(b.set("conv-1", "user-2", false).await.unwrap());
    assert!(!a.set("conv-1", "user-2", false).await.unwrap());
    drop(a);

    let c = RedisTyping::new(r.clone(), expiry);
    let mut expired = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while expired.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the typing indicator never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (x, y) = tokio::join!(b.expire(), c.expire());
        expired.extend(x.unwrap());
        expired.extend(y.unwrap());
    }
    assert_eq!(
        expired,
        vec![("conv-1".to_owned(), "user-1".to_owned())],
        "expired exactly once"
    );
    assert!(b.expire().await.unwrap().is_empty());
    assert!(c.expire().await.unwrap().is_empty());
}

// ---- send rate ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_rate_is_one_allowance_across_instances() {
    let Some(r) = redis(&unique_prefix()).await else {
        return;
    };
    // 1 per second sustained, a burst of 4: the fifth send in quick
    // succession is refused whichever instance takes it.
    let a = RedisSendRate::new(r.clone(), 1, 4);
    let b = RedisSendRate::new(r.clone(), 1, 4);
    let mut allowed = 0;
    let mut refused = None;
    for i in 0..5 {
        let rate: &dyn SendRate = if i % 2 == 0 { &a } else { &b };
        match rate.take("sender").await.unwrap() {
            Ok(()) => allowed += 1,
            Err(retry) => refused = Some(retry),
        }
    }
    assert_eq!(allowed, 4);
    let retry = refused.expect("the fifth send is refused");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // Another user has an allowance of their own.
    assert_eq!(a.take("someone-else").await.unwrap(), Ok(()));
    // Refilled with time.
    tokio::time::sleep(retry).await;
    eventually("a refilled token", || async {
        b.take("sender").await.unwrap().ok()
    })
    .await;
}

// ---- revocations ----------------------------------------------------------

async fn auth(store: Arc<dyn Store>, dir: &std::path::Path) -> Arc<Auth> {
    Arc::new(
        Auth::new(
            AuthSettings {
                jwt_secret: Some("shared-state-test-secret-of-32-bytes-or-more".into()),
                data_dir: dir.to_path_buf(),
                argon2_memory_kib: 1024,
                argon2_iterations: 1,
                ..AuthSettings::default()
            },
            store,
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_instance_is_seen_by_the_others() {
    let Some(r) = redis(&unique_prefix()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store::open("", dir.path(), 4).await.unwrap();
    store.migrate().await.unwrap();
    let a = auth(store.clone(), dir.path()).await;
    let b = auth(store.clone(), dir.path()).await;
    let stop = CancellationToken::new();
    let on_a = Arc::new(RedisRevocations::new(r.clone()));
    a.share_revocations(on_a.clone());
    tokio::spawn(on_a.follow(a.clone(), stop.clone()));
    let on_b = Arc::new(RedisRevocations::new(r.clone()));
    b.share_revocations(on_b.clone());
    tokio::spawn(on_b.clone().follow(b.clone(), stop.clone()));
    let mut closed_on_b = b.subscribe_revocations();

    let pair = a
        .register(Registration {
            username: "revoked-user".into(),
            password: "password-revoked-user".into(),
            ..Registration::default()
        })
        .await
        .unwrap();
    // Both instances accept the token; B hears of the logout only through
    // Redis (on the channel, or from the set right after subscribing).
    assert!(b.verify_access_token(&pair.access_token).is_ok());
    a.logout(&pair.session_id).await.unwrap();
    let sid = tokio::time::timeout(PATIENCE, closed_on_b.recv())
        .await
        .expect("B hears of the revocation")
        .unwrap();
    assert_eq!(sid, pair.session_id);
    assert!(matches!(
        b.verify_access_token(&pair.access_token),
        Err(AuthError::SessionRevoked)
    ));

    // An instance started later reads the revoked set.
    let c = auth(store.clone(), dir.path()).await;
    assert!(c.verify_access_token(&pair.access_token).is_ok());
    RedisRevocations::new(r.clone()).load(&c).await.unwrap();
    assert!(matches!(
        c.verify_access_token(&pair.access_token),
        Err(AuthError::SessionRevoked)
    ));
    stop.cancel();
}

// ---- two processes --------------------------------------------------------

struct Cluster {
    db: Option<PgDatabase>,
    env: Vec<(&'static str, String)>,
    instances: Vec<ServerProcess>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts one more instance.
    fn add(&mut self) -> &ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.instances.push(ServerProcess::start(dir.path(), &env));
        self.dirs.push(dir);
        &self.instances[self.instances.len() - 1]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.instances.clear();
        if let Some(db) = self.db.take() {
            db.drop_database_blocking();
        }
    }
}

/// `n` instances on one fresh PostgreSQL database, sharing state in Redis
/// under a prefix of their own.
async fn cluster(n: usize) -> Option<Cluster> {
    let prefix = unique_prefix();
    redis(&prefix).await?;
    let db = PgDatabase::create().await?;
    let env = vec![
        ("STOMPLINE_DATABASE_URL", db.url.clone()),
        ("STOMPLINE_SHARED_STATE", "redis".to_owned()),
        ("STOMPLINE_REDIS__URL", redis_url()),
        ("STOMPLINE_REDIS__KEY_PREFIX", prefix),
        (
            "STOMPLINE_AUTH__JWT_SECRET",
            "shared-state-cluster-secret-of-32-bytes-or-more".to_owned(),
        ),
        ("STOMPLINE_PRESENCE__OFFLINE_GRACE_MS", "300".to_owned()),
        ("STOMPLINE_PRESENCE__REFRESH_MS", "200".to_owned()),
    ];
    let mut c = Cluster {
        db: Some(db),
        env,
        instances: Vec::new(),
        dirs: Vec::new(),
    };
    for _ in 0..n {
        c.add();
    }
    Some(c)
}

async fn me_status(http: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{http}/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_one_instance_closes_the_session_on_another() {
    let Some(mut c) = cluster(2).await else {
        return;
    };
    let (a, b) = (&c.instances[0], &c.instances[1]);
    let (_, token) = register(&a.http, "logout-user").await;
    let mut on_b = Client::tcp(&b.stomp).await;
    on_b.connect_token(&token).await;
    assert_eq!(me_status(&b.http, &token).await, 200);
    let ready: serde_json::Value = reqwest::get(format!("http://{}/readyz", b.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["shared_state"], "ok", "{ready}");

    let res = reqwest::Client::new()
        .post(format!("http://{}/api/auth/logout", a.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    on_b.expect_error("session revoked").await;
    assert_eq!(me_status(&b.http, &token).await, 401);
    let mut again = Client::tcp(&b.stomp).await;
    again
        .send(
            format!("CONNECT\naccept-version:1.2\nhost:localhost\npasscode:{token}\n\n\0")
                .as_bytes(),
        )
        .await;
    again.expect(stomp_codec::Command::Error).await;

    // An instance started after the logout refuses the token too.
    let late = c.add().http.clone();
    assert_eq!(me_status(&late, &token).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_read_across_instances() {
    let Some(c) = cluster(2).await else {
        return;
    };
    let (a, b) = (&c.instances[0], &c.instances[1]);
    let (alice, alice_token) = register(&a.http, "presence-alice").await;
    let (_, bob_token) = register(&b.http, "presence-bob").await;
    let presence_on_b = |who: String| {
        let (http, token) = (b.http.clone(), bob_token.clone());
        async move {
            let v = get_json(&format!("http://{http}/api/presence?userIds={who}"), &token).await;
            v["items"][0]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    assert_eq!(presence_on_b(alice.clone()).await, "offline");

    let status_becomes = |want: &'static str| {
        let alice = alice.clone();
        let presence_on_b = &presence_on_b;
        async move {
            eventually(&format!("alice to be {want} on B"), || {
                let f = presence_on_b(alice.clone());
                async move { (f.await == want).then_some(()) }
            })
            .await
        }
    };

    let mut on_a = Client::tcp(&a.stomp).await;
    on_a.connect_token(&alice_token).await;
    status_becomes("online").await;
    on_a.send(b"SEND\ndestination:/app/presence.set\nreceipt:r1\n\n{\"status\":\"away\"}\0")
        .await;
    on_a.await_receipt("r1").await;
    status_becomes("away").await;

    drop(on_a);
    status_becomes("offline").await;
}

async fn refresh(http: &str, refresh_token: &str) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .post(format!("http://{http}/api/auth/refresh"))
        .json(&serde_json::json!({ "refreshToken": refresh_token }))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_on_one_instance_closes_the_session_on_another() {
    let Some(c) = cluster(2).await else {
        return;
    };
    let (a, b) = (&c.instances[0], &c.instances[1]);
    let res = reqwest::Client::new()
        .post(format!("http://{}/api/auth/register", a.http))
        .json(&serde_json::json!({"username": "reuse-user", "password": "password-reuse-user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let first: serde_json::Value = res.json().await.unwrap();
    let spent = first["refreshToken"].as_str().unwrap().to_owned();

    // Rotated on B; the new access token is live on B.
    let (status, second) = refresh(&b.http, &spent).await;
    assert_eq!(status, 200, "{second}");
    let token = second["accessToken"].as_str().unwrap().to_owned();
    let mut on_b = Client::tcp(&b.stomp).await;
    on_b.connect_token(&token).await;

    // The spent token presented again on A: the session is revoked there,
    // and B closes its connection.
    let (status, body) = refresh(&a.http, &spent).await;
    assert_eq!(status, 401, "{body}");
    on_b.expect_error("session revoked").await;
    assert_eq!(me_status(&b.http, &token).await, 401);
}
