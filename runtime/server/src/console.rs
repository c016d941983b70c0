//! The web console (`/ui` on the admin address): one page and its script and style sheet,
//! embedded in the binary (nothing is fetched at run time, nothing is built: plain HTML,
//! CSS and JavaScript in `runtime/server/ui/`).
//!
//! The page reads and writes through the admin API only (`/status`, `/v1/…`), with the same
//! rights, limits and audit as any client: a bearer token typed into the page is sent as
//! `Authorization` (it is kept in the tab's session storage, never in a URL or a cookie).
//! The assets themselves carry no data and need no token. They are served with a content
//! security policy that allows scripts and styles of this origin only, so nothing a record
//! holds can run as script even if it were put into the page as markup (the script puts
//! every value in as text).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// What the console's pages may load and do.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/ui` (and `/ui/`), `/ui/app.js`, `/ui/app.css`.
pub(crate) fn router() -> axum::Router {
    let page = || async { asset("text/html; charset=utf-8", INDEX) };
    axum::Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}
