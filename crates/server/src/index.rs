//! `GET /`: a short page saying what this server is, until the web console lands.

use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub async fn page(State(state): State<Arc<AppState>>) -> Response {
    // Model names are no secret on an open server; behind keys, /v1/models tells them.
    let models = if state.is_open() {
        let items: String = state
            .router
            .models()
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
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Parlance {version}</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5">
<h1>Parlance {version}</h1>
<p>A self-hosted LLM API server. Point any OpenAI client at <code>/v1</code>.</p>
{models}
<h2>Endpoints</h2>
<ul>
<li><code>POST /v1/chat/completions</code> (OpenAI Chat Completions, also under <code>/api/v1</code>)</li>
<li><a href="/v1/models"><code>GET /v1/models</code></a></li>
<li><code>POST /v1/tokens/count</code></li>
<li><a href="/health"><code>GET /health</code></a></li>
</ul>
<pre>curl {{this server}}/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{{"model": "MODEL", "messages": [{{"role": "user", "content": "Hello!"}}]}}'</pre>
</body></html>"#,
        version = env!("CARGO_PKG_VERSION"),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        html,
    )
        .into_response()
}
