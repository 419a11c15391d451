//! The web app: the built single-page app (`client-js/web/dist`) served at
//! `/` from the configured `web_dir`.
//!
//! It is the router's fallback, so `/api`, `/ws`, `/healthz`, `/readyz` and
//! `/metrics` keep their own handlers. Files are served as they are; any
//! other `GET` path gets `index.html` so the app's own routes survive a
//! reload. When the app has not been built, `/` answers a short HTML page
//! that says how to build it.

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any_service, MethodRouter};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

/// Content-Security-Policy for the app's HTML: scripts and styles from the
/// server only, WebSocket back to it; message text can never run as code.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// Vite puts content-hashed files under `assets/`: they never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The page `/` shows when `web_dir` has no `index.html`.
const NOT_BUILT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stompline</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem">
<h1>stompline is running</h1>
<p>The web app has not been built, so there is nothing to show here yet.
The server itself works: REST under <code>/api</code>, STOMP at <code>/ws</code>.</p>
<p>Build the app and reload this page:</p>
<pre>cd client-js &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>or start the server with <code>scripts/run.sh</code>, which builds it first.
The app is served from the directory named by the <code>web_dir</code> setting.</p>
</body></html>
"#;

/// A fallback service serving the app in `dir`.
pub fn service(dir: &Path) -> MethodRouter {
    let dir = dir.to_path_buf();
    any_service(tower::service_fn(move |req: Request| {
        let dir = dir.clone();
        async move { Ok::<_, Infallible>(serve(&dir, req).await) }
    }))
}

async fn serve(dir: &Path, req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let index = dir.join("index.html");
    if !tokio::fs::try_exists(&index).await.unwrap_or(false) {
        return not_built(dir);
    }
    let immutable = req.uri().path().starts_with("/assets/");
    let served = ServeDir::new(dir)
        .append_index_html_on_directories(true)
        .fallback(ServeFile::new(index))
        .oneshot(req)
        .await;
    let mut res = match served {
        Ok(res) => res.map(Body::new),
        Err(e) => match e {},
    };
    let headers = res.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let is_html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    let cache = if immutable && res.status().is_success() {
        IMMUTABLE
    } else {
        "no-cache"
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    res
}

fn not_built(dir: &Path) -> Response {
    tracing::debug!(dir = %dir.display(), "web app not built");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        NOT_BUILT,
    )
        .into_response()
}

/// The directory as configured, for the startup log.
pub fn describe(dir: &Path) -> String {
    let index: PathBuf = dir.join("index.html");
    if index.is_file() {
        format!("serving the web app from {}", dir.display())
    } else {
        format!(
            "the web app is not built ({} missing); / explains how to build it",
            index.display()
        )
    }
}
