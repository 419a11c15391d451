//! The Redis rate limiter against a real Redis: counts are shared between
//! limiter instances and between server instances with
//! `shared_state = "redis"`.
//!
//! Redis comes from `STOMPLINE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). When it cannot be reached the tests print a
//! notice and pass, unless `STOMPLINE_REQUIRE_SERVICES=1`, which makes them
//! fail. Every test uses a key prefix of its own.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use stompline::auth::limiter::{Decision, Limiter, RedisLimiter};
use stompline::config::SharedStateKind;

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The Redis URL, or `None` (after a notice) when Redis is unreachable and
/// not required.
async fn redis_url() -> Option<String> {
    let url = std::env::var("STOMPLINE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_REDIS_URL.to_string());
    let probe = async {
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    let failure = match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(_)) => return Some(url),
        Ok(Err(e)) => e,
        Err(_) => "timed out".to_string(),
    };
    if std::env::var("STOMPLINE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!(
            "Redis at {url} is required (STOMPLINE_REQUIRE_SERVICES=1) but unreachable: {failure}"
        );
    }
    eprintln!("SKIPPED: Redis at {url} unreachable ({failure}); set STOMPLINE_TEST_REDIS_URL");
    None
}

fn new_prefix() -> String {
    format!("stompline_test_{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn two_limiters_share_one_window() {
    let Some(url) = redis_url().await else { return };
    let prefix = new_prefix();
    let a = RedisLimiter::new(&url, &prefix).unwrap();
    let b = RedisLimiter::new(&url, &prefix).unwrap();
    let window = Duration::from_secs(60);
    assert_eq!(
        a.hit("ip:1", 3, window).await.unwrap(),
        Decision::Allowed { count: 1 }
    );
    assert_eq!(
        b.hit("ip:1", 3, window).await.unwrap(),
        Decision::Allowed { count: 2 }
    );
    assert_eq!(
        a.hit("ip:1", 3, window).await.unwrap(),
        Decision::Allowed { count: 3 }
    );
    match b.hit("ip:1", 3, window).await.unwrap() {
        Decision::Limited { retry_after } => {
            assert!(retry_after > Duration::from_secs(55) && retry_after <= window)
        }
        other => panic!("fourth hit allowed: {other:?}"),
    }
    // Refused hits are not recorded; peek records nothing; other keys and
    // other prefixes are separate.
    assert!(!a.peek("ip:1", 3, window).await.unwrap().allowed());
    assert!(b.peek("ip:1", 4, window).await.unwrap().allowed());
    assert!(a.hit("ip:2", 3, window).await.unwrap().allowed());
    let other = RedisLimiter::new(&url, &new_prefix()).unwrap();
    assert!(other.hit("ip:1", 3, window).await.unwrap().allowed());

    assert_eq!(b.record("acct:x", window).await.unwrap(), 1);
    assert_eq!(a.record("acct:x", window).await.unwrap(), 2);
    a.clear("acct:x").await.unwrap();
    assert_eq!(
        b.peek("acct:x", 1, window).await.unwrap(),
        Decision::Allowed { count: 0 }
    );
}

#[tokio::test]
async fn concurrent_hits_never_pass_the_limit() {
    let Some(url) = redis_url().await else { return };
    let prefix = new_prefix();
    let limiters: Vec<_> = (0..4)
        .map(|_| std::sync::Arc::new(RedisLimiter::new(&url, &prefix).unwrap()))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let l = limiters[i % limiters.len()].clone();
        tasks.push(tokio::spawn(async move {
            l.hit("k", 10, Duration::from_secs(60))
                .await
                .unwrap()
                .allowed()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 10);
}

#[tokio::test]
async fn events_leave_the_window() {
    let Some(url) = redis_url().await else { return };
    let l = RedisLimiter::new(&url, &new_prefix()).unwrap();
    let window = Duration::from_millis(200);
    assert!(l.hit("k", 1, window).await.unwrap().allowed());
    assert!(!l.hit("k", 1, window).await.unwrap().allowed());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !l.peek("k", 1, window).await.unwrap().allowed() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unreachable_redis_is_an_error_not_a_hang() {
    let l = RedisLimiter::new("redis://127.0.0.1:1", "x:").unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        l.hit("k", 1, Duration::from_secs(1)),
    )
    .await
    .expect("answers");
    assert!(r.is_err());
    assert!(RedisLimiter::new("not a url", "x:").is_err());
}

#[tokio::test]
async fn two_servers_share_failed_login_counts() {
    let Some(url) = redis_url().await else { return };
    let prefix = new_prefix();
    let start = || {
        let (url, prefix) = (url.clone(), prefix.clone());
        support::TestServer::start_with(move |c| {
            c.shared_state = SharedStateKind::Redis;
            c.redis.url = url;
            c.redis.key_prefix = prefix;
            c.rate_limit.enabled = true;
            c.rate_limit.per_account = 3;
            c.rate_limit.failure_delay_max_ms = 2;
            c.rate_limit.failure_delay_ms = 1;
        })
    };
    let a = start().await;
    let b = start().await;
    let http = reqwest::Client::new();
    let login = |server: &support::TestServer| {
        http.post(format!("http://{}/api/auth/login", server.http))
            .json(&json!({"username": "target", "password": "not the password"}))
            .send()
    };
    assert_eq!(login(&a).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(&b).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(&a).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let refused = login(&b).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
}
