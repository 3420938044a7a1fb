//! The web console: the playground at `/`, the admin dashboard at `/admin`, and their
//! assets under `/console/`, all compiled into the binary (no CDN: the browser may be
//! offline). Scripts are files, never inline, so the Content-Security-Policy can
//! forbid inline code; the pages talk only to this server's own APIs.

use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, OnceLock};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// (name, content type, bytes) of every asset under `/console/`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/style.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/common.js"),
    ),
    (
        "markdown.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/markdown.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/chart.js"),
    ),
    (
        "playground.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/playground.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/admin.js"),
    ),
    (
        "account.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/account.js"),
    ),
    (
        "teams.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/teams.js"),
    ),
    (
        "embeddings.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/embeddings.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../console/favicon.svg"),
    ),
];

const PLAYGROUND: &str = include_str!("../console/playground.html");
const ADMIN: &str = include_str!("../console/admin.html");
const ACCOUNT: &str = include_str!("../console/account.html");
const EMBEDDINGS: &str = include_str!("../console/embeddings.html");

/// FNV-1a: a stable validator for content that changes only with the binary.
fn etag_of(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| ASSETS.iter().map(|(_, _, b)| etag_of(b)).collect())
}

pub(crate) fn security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `GET /console/{file}`: revalidated on every load (`no-cache` + ETag), so a new
/// binary's assets are never mixed with an old page's.
pub(crate) async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let found = ASSETS
        .iter()
        .zip(etags())
        .find(|((name, _, _), _)| *name == file);
    let Some((&(_, mime, bytes), tag)) = found else {
        return crate::openai::not_found().await.into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, mime)], bytes).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    security_headers(&mut resp);
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(html: String) -> Response {
    let mut resp = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response();
    security_headers(&mut resp);
    resp
}

/// `GET /`: the playground; without scripts, a summary of the server and its models.
pub(crate) async fn playground(State(state): State<Arc<AppState>>) -> Response {
    // Model names are no secret on an open server; behind keys, /v1/models tells them.
    let models = if state.is_open() {
        let items: String = state
            .router
            .models()
            .iter()
            .map(|m| {
                format!(
                    "<li><code>{}</code> &middot; context {} tokens</li>",
                    escape(&m.id),
                    m.context_length
                )
            })
            .collect();
        format!("<h2>Models</h2><ul>{items}</ul>")
    } else {
        "<p>This server needs an API key: <code>GET /v1/models</code> with it lists the models.</p>"
            .to_string()
    };
    page(
        PLAYGROUND
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{models}}", &models),
    )
}

/// `GET /admin`: the dashboard; it asks for the admin key and calls `/admin/...` with it.
pub(crate) async fn admin() -> Response {
    page(ADMIN.replace("{{version}}", env!("CARGO_PKG_VERSION")))
}

/// `GET /account`, `/signin`, `/signup`: sign-in, the access request form, setting a
/// password from a one-time link, *My keys* and *My usage* (one page; the script shows
/// the part the path and the session call for).
pub(crate) async fn account() -> Response {
    page(ACCOUNT.replace("{{version}}", env!("CARGO_PKG_VERSION")))
}

/// `GET /embeddings`: texts in, a cosine similarity matrix out.
pub(crate) async fn embeddings() -> Response {
    page(EMBEDDINGS.replace("{{version}}", env!("CARGO_PKG_VERSION")))
}
