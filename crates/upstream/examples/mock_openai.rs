//! A fast OpenAI-compatible mock upstream for the gateway benchmark: a fixed answer,
//! whole or as an SSE stream of `CHUNKS` deltas, with no model behind it.
//!
//! `cargo run --release -p parlance-upstream --example mock_openai -- PORT [CHUNKS]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use axum::routing::post;

fn completion() -> Bytes {
    Bytes::from(
        r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1,"model":"mock","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}"#,
    )
}

fn stream(chunks: usize) -> Bytes {
    let mut s = String::new();
    for i in 0..chunks {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    s.push_str("data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":16,\"total_tokens\":28}}\n\n");
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

fn wants_stream(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("\"stream\":true") || text.contains("\"stream\": true")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9100);
    let chunks: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(16);
    let (whole, sse) = (completion(), stream(chunks));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: Bytes| {
            let (whole, sse) = (whole.clone(), sse.clone());
            async move {
                let (ct, b) = if wants_stream(&body) {
                    ("text/event-stream", sse)
                } else {
                    ("application/json", whole)
                };
                Response::builder()
                    .header(header::CONTENT_TYPE, ct)
                    .body(Body::from(b))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    println!("mock upstream on http://127.0.0.1:{port}/v1");
    axum::serve(listener, app).await.unwrap();
}
