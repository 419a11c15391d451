//! The built web app served at `/` (`web_dir`): files, the SPA fallback to
//! `index.html`, the page shown when the app is not built, and the routes
//! the fallback must not shadow.

mod support;

use std::path::Path;

use support::TestServer;

const INDEX: &str = "<!doctype html><title>app</title><div id=root></div>";

fn write_app(dir: &Path) {
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), INDEX).unwrap();
    std::fs::write(dir.join("assets/app-1234.js"), "console.log('app')").unwrap();
}

async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{}{path}", server.http))
        .await
        .expect("request")
}

#[tokio::test]
async fn serves_the_app_with_spa_fallback_and_leaves_other_routes_alone() {
    let web = tempfile::tempdir().unwrap();
    write_app(web.path());
    let dir = web.path().to_path_buf();
    let server = TestServer::start_with(move |c| c.web_dir = dir).await;

    let res = get(&server, "/").await;
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    assert_eq!(res.text().await.unwrap(), INDEX);

    let res = get(&server, "/assets/app-1234.js").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(res.text().await.unwrap(), "console.log('app')");

    // The app's own routes get index.html.
    for path in ["/chats/42", "/settings"] {
        let res = get(&server, path).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.text().await.unwrap(), INDEX, "{path}");
    }

    // What the server owns is not shadowed.
    let res = get(&server, "/healthz").await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("ok"));
    let res = get(&server, "/readyz").await;
    assert_eq!(res.status(), 200);
    let res = get(&server, "/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(!res.text().await.unwrap().contains("<!doctype"));
    let res = get(&server, "/api/no-such-route").await;
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    let res = get(&server, "/api/me").await;
    assert_eq!(res.status(), 401);
    let res = get(&server, "/ws").await;
    assert_ne!(res.status(), 200, "a plain GET /ws is not the app");

    // Only GET and HEAD reach the files.
    let res = reqwest::Client::new()
        .post(format!("http://{}/chats/42", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
}

#[tokio::test]
async fn explains_how_to_build_when_the_app_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().join("dist");
    let server = TestServer::start_with(move |c| c.web_dir = dir).await;
    for path in ["/", "/chats/1"] {
        let res = get(&server, path).await;
        assert_eq!(res.status(), 503, "{path}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let text = res.text().await.unwrap();
        assert!(text.contains("has not been built"), "{text}");
        assert!(text.contains("npm run build"), "{text}");
    }
    // The API works regardless.
    assert_eq!(get(&server, "/healthz").await.status(), 200);
}
