//! One storage suite, run against SQLite (a temporary file) and PostgreSQL
//! (a fresh database per test).
//!
//! PostgreSQL comes from `STOMPLINE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the role must be allowed to
//! create databases. When it cannot be reached the `pg_*` tests print a notice
//! and pass, unless `STOMPLINE_REQUIRE_SERVICES=1`, which makes them fail.
//! Select them with `cargo test --test store pg_`.

use std::sync::Arc;
use std::time::Duration;

use stompline::store::{
    self, NewRefreshToken, NewUser, OtpCode, RefreshToken, Session, Store, StoreError, User,
    UserChanges,
};
use time::OffsetDateTime;

#[path = "support/backends.rs"]
mod backends;
#[path = "support/pg.rs"]
mod pg;

// ---------------------------------------------------------------------------
// Harness

on_both_backends! {
    migrate_is_repeatable_and_ping_answers => sqlite_migrate_and_ping, pg_migrate_and_ping;
    users_round_trip_and_lookups_ignore_case => sqlite_users_round_trip, pg_users_round_trip;
    duplicate_username_email_or_phone_conflicts => sqlite_user_conflicts, pg_user_conflicts;
    many_users_without_email_or_phone => sqlite_users_without_email, pg_users_without_email;
    concurrent_user_creation => sqlite_concurrent_user_creation, pg_concurrent_user_creation;
    refresh_tokens_round_trip => sqlite_refresh_tokens_round_trip, pg_refresh_tokens_round_trip;
    spending_is_compare_and_set => sqlite_spending_is_compare_and_set, pg_spending_is_compare_and_set;
    concurrent_spends_have_one_winner => sqlite_concurrent_spends, pg_concurrent_spends;
    revoking_a_family_spares_other_families => sqlite_revoke_family, pg_revoke_family;
    revoking_a_session_revokes_its_tokens => sqlite_revoke_session, pg_revoke_session;
    references_are_enforced => sqlite_references_are_enforced, pg_references_are_enforced;
    otp_codes_round_trip_count_and_spend_once => sqlite_otp_codes, pg_otp_codes;
    concurrent_otp_spends_have_one_winner => sqlite_concurrent_otp_spends, pg_concurrent_otp_spends;
    users_change_and_other_sessions_are_revoked => sqlite_user_changes, pg_user_changes;
}

// ---------------------------------------------------------------------------
// Fixtures

fn new_user(username: &str, email: Option<&str>) -> NewUser {
    NewUser {
        id: store::new_id(),
        username: username.to_string(),
        display_name: format!("{username} display"),
        email: email.map(str::to_string),
        phone: None,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string()),
        created_at: OffsetDateTime::now_utc(),
    }
}

async fn user_with_session(store: &dyn Store, username: &str) -> (User, Session) {
    let user = store
        .create_user(new_user(username, None))
        .await
        .expect("create user");
    let session = Session {
        id: store::new_id(),
        user_id: user.id.clone(),
        created_at: store::now(),
        revoked_at: None,
    };
    store
        .create_session(session.clone())
        .await
        .expect("create session");
    (user, session)
}

fn new_token(session: &Session, family_id: &str, hash: &str) -> NewRefreshToken {
    let now = store::now();
    NewRefreshToken {
        token_hash: hash.to_string(),
        family_id: family_id.to_string(),
        session_id: session.id.clone(),
        user_id: session.user_id.clone(),
        expires_at: now + time::Duration::days(30),
        created_at: now,
    }
}

async fn token(store: &dyn Store, hash: &str) -> RefreshToken {
    store
        .refresh_token_by_hash(hash)
        .await
        .expect("lookup")
        .expect("token exists")
}

// ---------------------------------------------------------------------------
// Checks

async fn migrate_is_repeatable_and_ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    store.migrate().await.expect("second migrate is a no-op");
    store.ping().await.expect("ping");
}

async fn users_round_trip_and_lookups_ignore_case(store: Arc<dyn Store>) {
    let mut new = new_user("Alice.B-c_9", Some("Alice@Example.ORG"));
    new.phone = Some("+15551234567".into());
    let created = store.create_user(new.clone()).await.expect("create");

    assert_eq!(created.id, new.id);
    assert_eq!(created.username, "Alice.B-c_9", "kept as given");
    assert_eq!(created.email.as_deref(), Some("Alice@Example.ORG"));
    assert_eq!(created.created_at.nanosecond() % 1_000, 0, "microseconds");
    assert!((new.created_at - created.created_at).abs() < time::Duration::microseconds(1));

    let by_id = store.user_by_id(&new.id).await.unwrap();
    assert_eq!(
        by_id.as_ref(),
        Some(&created),
        "a lookup reads what create returned"
    );
    for name in ["alice.b-c_9", "ALICE.B-C_9", "Alice.B-c_9"] {
        assert_eq!(
            store.user_by_username(name).await.unwrap().as_ref(),
            Some(&created),
            "{name}"
        );
    }
    for email in ["alice@example.org", "ALICE@EXAMPLE.ORG"] {
        assert_eq!(
            store.user_by_email(email).await.unwrap().as_ref(),
            Some(&created),
            "{email}"
        );
    }
    assert_eq!(store.user_by_id("missing").await.unwrap(), None);
    assert_eq!(store.user_by_username("alice").await.unwrap(), None);
    assert_eq!(store.user_by_email("bob@example.org").await.unwrap(), None);

    let no_password = NewUser {
        password_hash: None,
        ..new_user("otp_only", None)
    };
    let created = store.create_user(no_password).await.unwrap();
    assert_eq!(created.password_hash, None);
    assert_eq!(store.user_by_id(&created.id).await.unwrap(), Some(created));
}

async fn duplicate_username_email_or_phone_conflicts(store: Arc<dyn Store>) {
    let mut first = new_user("alice", Some("alice@example.org"));
    first.phone = Some("+15550000001".into());
    store.create_user(first).await.unwrap();

    let clash = store.create_user(new_user("ALICE", None)).await;
    assert!(
        matches!(&clash, Err(StoreError::Conflict { field }) if field == "username"),
        "{clash:?}"
    );
    let clash = store
        .create_user(new_user("bob", Some("ALICE@example.ORG")))
        .await;
    assert!(
        matches!(&clash, Err(StoreError::Conflict { field }) if field == "email"),
        "{clash:?}"
    );
    let mut carol = new_user("carol", None);
    carol.phone = Some("+15550000001".into());
    let clash = store.create_user(carol).await;
    assert!(
        matches!(&clash, Err(StoreError::Conflict { field }) if field == "phone"),
        "{clash:?}"
    );
    // Non-ASCII addresses fold the same way on both backends.
    store
        .create_user(new_user("dora", Some("ÄRGER@example.org")))
        .await
        .unwrap();
    let clash = store
        .create_user(new_user("erik", Some("ärger@EXAMPLE.org")))
        .await;
    assert!(
        matches!(clash, Err(StoreError::Conflict { .. })),
        "{clash:?}"
    );

    // Nothing of the refused attempts was written.
    assert_eq!(store.user_by_username("bob").await.unwrap(), None);
    assert_eq!(store.user_by_username("carol").await.unwrap(), None);
}

async fn many_users_without_email_or_phone(store: Arc<dyn Store>) {
    for name in ["u_one", "u_two", "u_three"] {
        store.create_user(new_user(name, None)).await.unwrap();
    }
    for name in ["u_one", "u_two", "u_three"] {
        assert!(store.user_by_username(name).await.unwrap().is_some());
    }
}

async fn concurrent_user_creation(store: Arc<dyn Store>) {
    // 16 distinct users plus 8 racers for one name: all distinct ones land,
    // exactly one racer wins, the others get a conflict.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_user(new_user(&format!("user{i}"), None))
                .await
                .map(|_| ())
        }));
    }
    let mut racers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            store
                .create_user(new_user("contested", None))
                .await
                .map(|_| ())
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("distinct users never conflict");
    }
    let mut wins = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::Conflict { field }) => assert_eq!(field, "username"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1);
}

async fn refresh_tokens_round_trip(store: Arc<dyn Store>) {
    let (user, session) = user_with_session(&*store, "alice").await;
    assert_eq!(
        store.session_by_id(&session.id).await.unwrap().as_ref(),
        Some(&session)
    );
    assert_eq!(store.session_by_id("missing").await.unwrap(), None);

    let new = new_token(&session, "family-1", "hash-1");
    store.insert_refresh_token(new.clone()).await.unwrap();
    let stored = token(&*store, "hash-1").await;
    assert_eq!(
        stored,
        RefreshToken {
            token_hash: "hash-1".into(),
            family_id: "family-1".into(),
            session_id: session.id.clone(),
            user_id: user.id.clone(),
            expires_at: new.expires_at,
            spent_at: None,
            revoked_at: None,
            created_at: new.created_at,
        }
    );
    assert_eq!(store.refresh_token_by_hash("hash-2").await.unwrap(), None);

    let twice = store.insert_refresh_token(new).await;
    assert!(
        matches!(twice, Err(StoreError::Conflict { .. })),
        "{twice:?}"
    );
}

async fn spending_is_compare_and_set(store: Arc<dyn Store>) {
    let (_, session) = user_with_session(&*store, "alice").await;
    store
        .insert_refresh_token(new_token(&session, "family-1", "hash-1"))
        .await
        .unwrap();
    let at = store::now();
    assert!(store.mark_refresh_token_spent("hash-1", at).await.unwrap());
    assert!(!store
        .mark_refresh_token_spent("hash-1", store::now())
        .await
        .unwrap());
    assert_eq!(token(&*store, "hash-1").await.spent_at, Some(at));
    assert!(!store.mark_refresh_token_spent("missing", at).await.unwrap());

    // A revoked token cannot be spent.
    store
        .insert_refresh_token(new_token(&session, "family-2", "hash-2"))
        .await
        .unwrap();
    assert_eq!(
        store.revoke_refresh_family("family-2", at).await.unwrap(),
        1
    );
    assert!(!store.mark_refresh_token_spent("hash-2", at).await.unwrap());
    assert_eq!(token(&*store, "hash-2").await.spent_at, None);
}

async fn concurrent_spends_have_one_winner(store: Arc<dyn Store>) {
    let (_, session) = user_with_session(&*store, "alice").await;
    store
        .insert_refresh_token(new_token(&session, "family-1", "hash-1"))
        .await
        .unwrap();
    let spends: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { store.mark_refresh_token_spent("hash-1", store::now()).await },
            )
        })
        .collect();
    let mut wins = 0;
    for spend in spends {
        if spend.await.unwrap().unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
}

async fn revoking_a_family_spares_other_families(store: Arc<dyn Store>) {
    let (_, session) = user_with_session(&*store, "alice").await;
    for (family, hash) in [("f1", "a"), ("f1", "b"), ("f1", "c"), ("f2", "d")] {
        store
            .insert_refresh_token(new_token(&session, family, hash))
            .await
            .unwrap();
    }
    store
        .mark_refresh_token_spent("a", store::now())
        .await
        .unwrap();
    let at = store::now();
    assert_eq!(store.revoke_refresh_family("f1", at).await.unwrap(), 3);
    for hash in ["a", "b", "c"] {
        assert_eq!(token(&*store, hash).await.revoked_at, Some(at), "{hash}");
    }
    assert_eq!(token(&*store, "d").await.revoked_at, None);
    // Revoking again changes nothing and keeps the first revocation time.
    assert_eq!(
        store
            .revoke_refresh_family("f1", store::now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(token(&*store, "a").await.revoked_at, Some(at));
    assert_eq!(store.revoke_refresh_family("nope", at).await.unwrap(), 0);
}

async fn revoking_a_session_revokes_its_tokens(store: Arc<dyn Store>) {
    let (user, first) = user_with_session(&*store, "alice").await;
    let second = Session {
        id: store::new_id(),
        user_id: user.id.clone(),
        created_at: store::now(),
        revoked_at: None,
    };
    store.create_session(second.clone()).await.unwrap();
    store
        .insert_refresh_token(new_token(&first, "f1", "first-a"))
        .await
        .unwrap();
    store
        .insert_refresh_token(new_token(&first, "f1", "first-b"))
        .await
        .unwrap();
    store
        .insert_refresh_token(new_token(&second, "f2", "second"))
        .await
        .unwrap();

    let at = store::now();
    assert!(store.revoke_session(&first.id, at).await.unwrap());
    assert!(
        !store.revoke_session(&first.id, store::now()).await.unwrap(),
        "already revoked"
    );
    assert!(!store.revoke_session("missing", at).await.unwrap());

    let revoked = store.session_by_id(&first.id).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
    assert_eq!(token(&*store, "first-a").await.revoked_at, Some(at));
    assert_eq!(token(&*store, "first-b").await.revoked_at, Some(at));

    let untouched = store.session_by_id(&second.id).await.unwrap().unwrap();
    assert_eq!(untouched.revoked_at, None);
    assert_eq!(token(&*store, "second").await.revoked_at, None);
}

async fn references_are_enforced(store: Arc<dyn Store>) {
    let orphan_session = Session {
        id: store::new_id(),
        user_id: "no-such-user".into(),
        created_at: store::now(),
        revoked_at: None,
    };
    let result = store.create_session(orphan_session.clone()).await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");

    let (_, session) = user_with_session(&*store, "alice").await;
    let mut orphan_token = new_token(&session, "f", "h");
    orphan_token.session_id = orphan_session.id;
    let result = store.insert_refresh_token(orphan_token).await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
}

// ---------------------------------------------------------------------------
// Opening

#[tokio::test]
async fn empty_url_opens_sqlite_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a/b");
    let store = store::open("", &data, 1).await.unwrap();
    store.migrate().await.unwrap();
    store.create_user(new_user("alice", None)).await.unwrap();
    assert!(data.join("stompline.db").is_file());
    drop(store);

    // Reopening finds the data again.
    let store = store::open("", &data, 1).await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.user_by_username("alice").await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_url_opens_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sub/custom.db");
    let url = format!("sqlite://{}", file.display());
    let store = store::open(&url, dir.path(), 2).await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert!(file.is_file());
    assert!(!dir.path().join("stompline.db").exists());
}

#[tokio::test]
async fn unknown_scheme_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "mysql://localhost/db",
        "redis://x",
        "sqlite://",
        "sqlite::memory:",
    ] {
        let result = store::open(url, dir.path(), 1).await;
        assert!(matches!(result, Err(StoreError::InvalidUrl(_))), "{url}");
    }
}

#[tokio::test]
async fn unreachable_postgres_reports_unavailable() {
    // Nothing listens on port 1; opening succeeds (connections are made on
    // demand) and the readiness ping reports the database unavailable.
    let dir = tempfile::tempdir().unwrap();
    let store = store::open("postgres://postgres@127.0.0.1:1/none", dir.path(), 1)
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), store.ping())
        .await
        .expect("ping gives up by itself");
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
}

#[test]
fn database_name_is_replaced_in_urls() {
    assert_eq!(
        pg::with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        pg::with_database("postgresql://u:p@h/db?sslmode=disable", "t1"),
        "postgresql://u:p@h/t1?sslmode=disable"
    );
    assert_eq!(
        pg::with_database("postgres://h:5432", "t1"),
        "postgres://h:5432/t1"
    );
}

// ---------------------------------------------------------------------------
// One-time codes and account changes

fn otp(key: &str, hash: &str, ttl_secs: i64) -> OtpCode {
    let now = store::now();
    OtpCode {
        key: key.to_string(),
        code_hash: hash.to_string(),
        target: None,
        attempts: 0,
        created_at: now,
        expires_at: now + time::Duration::seconds(ttl_secs),
    }
}

async fn otp_codes_round_trip_count_and_spend_once(store: Arc<dyn Store>) {
    assert_eq!(store.otp("login:email:a@x.org").await.unwrap(), None);
    assert_eq!(
        store
            .count_otp_attempt("login:email:a@x.org")
            .await
            .unwrap(),
        None
    );

    let mut code = otp("login:email:a@x.org", "h1", 300);
    code.target = Some("new@x.org".into());
    store.put_otp(code.clone()).await.unwrap();
    assert_eq!(store.otp(&code.key).await.unwrap(), Some(code.clone()));
    for n in 1..=3 {
        assert_eq!(store.count_otp_attempt(&code.key).await.unwrap(), Some(n));
    }
    assert_eq!(store.otp(&code.key).await.unwrap().unwrap().attempts, 3);

    // A new code replaces the old one and starts its attempts again.
    let replacement = otp("login:email:a@x.org", "h2", 300);
    store.put_otp(replacement.clone()).await.unwrap();
    assert_eq!(store.otp(&code.key).await.unwrap(), Some(replacement));
    assert!(!store.consume_otp(&code.key, "h1").await.unwrap());
    assert!(store.consume_otp(&code.key, "h2").await.unwrap());
    assert!(!store.consume_otp(&code.key, "h2").await.unwrap());
    assert_eq!(store.otp(&code.key).await.unwrap(), None);

    // Expired codes are swept; live ones stay.
    store.put_otp(otp("old", "h", -10)).await.unwrap();
    store.put_otp(otp("live", "h", 300)).await.unwrap();
    assert_eq!(store.delete_expired_otps(store::now()).await.unwrap(), 1);
    assert!(store.otp("old").await.unwrap().is_none());
    assert!(store.otp("live").await.unwrap().is_some());
}

async fn concurrent_otp_spends_have_one_winner(store: Arc<dyn Store>) {
    store.put_otp(otp("race", "h", 300)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.consume_otp("race", "h").await.unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
}

async fn users_change_and_other_sessions_are_revoked(store: Arc<dyn Store>) {
    let (user, first) = user_with_session(store.as_ref(), "changer").await;
    let mut phone_user = new_user("phoner", None);
    phone_user.phone = Some("+15551234567".into());
    phone_user.password_hash = None;
    let phone_user = store.create_user(phone_user).await.unwrap();
    assert_eq!(
        store.user_by_phone("+15551234567").await.unwrap(),
        Some(phone_user.clone())
    );
    assert_eq!(store.user_by_phone("+15550000000").await.unwrap(), None);

    let updated = store
        .update_user(
            &user.id,
            UserChanges {
                display_name: Some("New Name".into()),
                email: Some("Changer@Example.org".into()),
                password_hash: Some("$argon2id$new".into()),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.display_name, "New Name");
    assert_eq!(updated.email.as_deref(), Some("Changer@Example.org"));
    assert_eq!(updated.password_hash.as_deref(), Some("$argon2id$new"));
    assert_eq!(
        store.user_by_email("changer@example.org").await.unwrap(),
        Some(updated)
    );
    assert!(matches!(
        store
            .update_user(
                &phone_user.id,
                UserChanges {
                    email: Some("CHANGER@example.org".into()),
                    ..Default::default()
                },
            )
            .await,
        Err(StoreError::Conflict { field }) if field == "email"
    ));
    assert_eq!(
        store
            .update_user("no-such-user", UserChanges::default())
            .await
            .unwrap(),
        None
    );

    let mut others = Vec::new();
    for _ in 0..2 {
        let s = Session {
            id: store::new_id(),
            user_id: user.id.clone(),
            created_at: store::now(),
            revoked_at: None,
        };
        store.create_session(s.clone()).await.unwrap();
        store
            .insert_refresh_token(new_token(&s, &store::new_id(), &s.id))
            .await
            .unwrap();
        others.push(s.id);
    }
    let mut revoked = store
        .revoke_other_sessions(&user.id, Some(&first.id), store::now())
        .await
        .unwrap();
    revoked.sort();
    others.sort();
    assert_eq!(revoked, others);
    assert!(store
        .session_by_id(&first.id)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
    for id in &others {
        assert!(token(store.as_ref(), id).await.revoked_at.is_some());
    }
    assert!(store
        .revoke_other_sessions(&user.id, Some(&first.id), store::now())
        .await
        .unwrap()
        .is_empty());
}
