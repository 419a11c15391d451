//! The whole server on PostgreSQL: migrations at start, accounts over REST,
//! STOMP CONNECT by password and by token, readiness. Named `pg_` so CI's
//! PostgreSQL step selects them; skipped (with a notice) when PostgreSQL is
//! unreachable unless `STOMPLINE_REQUIRE_SERVICES=1`.

mod support;

use stomp_codec::Command;
use support::pg::PgDatabase;
use support::TestServer;

#[tokio::test]
async fn pg_server_runs_accounts_and_stomp_on_postgres() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let url = db.url.clone();
    let outcome = tokio::spawn(async move {
        let mut srv = TestServer::start_with(|c| c.database_url = url).await;
        let ready = reqwest::get(format!("http://{}/readyz", srv.http))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        let (_, token, _) = srv.register("pgalice").await;
        let (mut bob, _) = srv.user("pgbob").await;
        bob.subscribe("1", "/topic/pg", "auto").await;
        let mut alice = srv.tcp().await;
        alice.connect_token(&token).await;
        alice.send_to("/topic/pg", "over postgres").await;
        assert_eq!(bob.expect(Command::Message).await.body, "over postgres");
        // Same answer for a wrong password on this backend too.
        let mut bad = srv.tcp().await;
        bad.send(
            b"CONNECT\naccept-version:1.2\nhost:h\nlogin:pgalice\npasscode:wrong-password\n\n\0",
        )
        .await;
        bad.expect_error("authentication failed").await;
        srv.running.shutdown();
        srv.running.wait().await;
    })
    .await;
    db.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
