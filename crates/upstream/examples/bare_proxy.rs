//! The floor for bench/gateway.py: axum + reqwest forwarding the request body upstream
//! and streaming the answer's bytes back, with no parsing, mapping or routing. The gap
//! between it and Parlance is what Parlance's own work costs; the gap between it and
//! calling the mock directly is the HTTP stack's.
//!
//! `bare_proxy UPSTREAM_URL PORT`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test and example code"
)]

use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::routing::post;
use axum::serve::ListenerExt;
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(up), Some(port)) = (args.next(), args.next().and_then(|p| p.parse::<u16>().ok()))
    else {
        eprintln!("usage: bare_proxy UPSTREAM_URL PORT");
        std::process::exit(2);
    };
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: Bytes| {
            let (client, up) = (client.clone(), up.clone());
            async move {
                let r = client
                    .post(&up)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let ct = r.headers().get("content-type").cloned();
                let s = r.bytes_stream().map(|c| c.map_err(std::io::Error::other));
                let mut resp = Response::builder();
                if let Some(ct) = ct {
                    resp = resp.header("content-type", ct);
                }
                resp.body(Body::from_stream(s)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap()
        .tap_io(|t| {
            t.set_nodelay(true).unwrap();
        });
    axum::serve(listener, app).await.unwrap();
}
