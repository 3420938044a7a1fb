//! The image fetcher against a loopback image server: what it fetches, and every way
//! a URL can try to reach an address it must not (literal, by name, by redirect).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test and example code"
)]

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use parlance_core::ir::{ChatRequest, ContentPart, ImageSource, Message, Role};
use parlance_upstream::images::{parse_ranges, ImageFetcher, ImagePolicy};
use std::time::{Duration, Instant};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR-not-a-real-png-but-the-magic-is";

async fn serve() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route(
            "/red.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG) }),
        )
        .route(
            "/untyped",
            get(|| async { ([(header::CONTENT_TYPE, "application/octet-stream")], PNG) }),
        )
        .route(
            "/page",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<html></html>") }),
        )
        .route(
            "/big",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], vec![0u8; 2 << 20]) }),
        )
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                PNG
            }),
        )
        .route(
            "/to-ok",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/red.png")]).into_response() }),
        )
        .route(
            "/loop",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]).into_response() }),
        )
        .route(
            "/to-private",
            get(move || async move {
                let to = format!("http://127.0.0.2:{port}/red.png");
                (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
            }),
        )
        .route(
            "/to-metadata",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://169.254.169.254/latest/meta-data/")],
                )
                    .into_response()
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn allowing_loopback_one() -> std::sync::Arc<ImageFetcher> {
    ImageFetcher::new(ImagePolicy {
        allow_private: parse_ranges(&["127.0.0.1".into()]).unwrap(),
        max_bytes: 1 << 20,
        total_timeout: Duration::from_secs(2),
        ..ImagePolicy::default()
    })
    .unwrap()
}

#[tokio::test]
async fn fetches_images_and_refuses_what_is_not_one() {
    let port = serve().await;
    let f = allowing_loopback_one();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let (mime, data) = f.fetch(&url("/red.png")).await.unwrap();
    assert_eq!(mime, "image/png");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
        PNG
    );
    assert_eq!(
        f.fetch(&url("/untyped")).await.unwrap().0,
        "image/png",
        "sniffed"
    );
    assert_eq!(
        f.fetch(&url("/to-ok")).await.unwrap().0,
        "image/png",
        "a redirect"
    );
    let e = f.fetch(&url("/page")).await.unwrap_err();
    assert!(e.contains("not an image") && e.contains("text/html"), "{e}");
    assert!(f
        .fetch(&url("/big"))
        .await
        .unwrap_err()
        .contains("larger than 1048576 bytes"));
    assert!(f.fetch(&url("/gone")).await.unwrap_err().contains("404"));
    assert!(f
        .fetch(&url("/loop"))
        .await
        .unwrap_err()
        .contains("redirects"));
    let started = Instant::now();
    assert!(f
        .fetch(&url("/slow"))
        .await
        .unwrap_err()
        .contains("timed out"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(f
        .fetch("ftp://127.0.0.1/x.png")
        .await
        .unwrap_err()
        .contains("http(s)"));
}

#[tokio::test]
async fn private_addresses_are_refused_literal_by_name_and_after_redirects() {
    let port = serve().await;
    let strict = ImageFetcher::new(ImagePolicy::default()).unwrap();
    for (url, why) in [
        (format!("http://127.0.0.1:{port}/red.png"), "loopback"),
        (format!("http://[::1]:{port}/red.png"), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "link-local",
        ),
        ("http://10.0.0.1/x.png".to_string(), "private"),
        ("http://[::ffff:10.0.0.1]/x.png".to_string(), "private"),
        (format!("http://localhost:{port}/red.png"), "loopback"),
    ] {
        let started = Instant::now();
        let e = strict.fetch(&url).await.unwrap_err();
        assert!(e.contains(why), "{url}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{url} took {:?}",
            started.elapsed()
        );
    }
    // Allowed host, redirected to an address that is not.
    let f = allowing_loopback_one();
    let e = f
        .fetch(&format!("http://127.0.0.1:{port}/to-private"))
        .await
        .unwrap_err();
    assert!(e.contains("127.0.0.2") && e.contains("loopback"), "{e}");
    let e = f
        .fetch(&format!("http://127.0.0.1:{port}/to-metadata"))
        .await
        .unwrap_err();
    assert!(e.contains("169.254.169.254"), "{e}");
}

#[tokio::test]
async fn a_refused_image_is_a_400_naming_its_part() {
    let port = serve().await;
    let f = allowing_loopback_one();
    let mut req = ChatRequest::default();
    req.messages.push(Message::text(Role::User, "look"));
    req.messages[0]
        .content
        .push(ContentPart::Image(ImageSource::Url(format!(
            "http://127.0.0.1:{port}/red.png"
        ))));
    let mut second = Message::text(Role::User, "and");
    second.content.push(ContentPart::Image(ImageSource::Url(
        "http://10.1.1.1/a.png".into(),
    )));
    req.messages.push(second);
    let e = f.inline_images(&mut req.clone()).await.unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(e.param.as_deref(), Some("messages[1].content[1]"));
    assert!(
        e.message.contains("10.1.1.1") && e.message.contains("private"),
        "{}",
        e.message
    );
    req.messages.pop();
    f.inline_images(&mut req).await.unwrap();
    assert!(
        matches!(&req.messages[0].content[1], ContentPart::Image(ImageSource::Base64 { media_type, .. }) if media_type == "image/png")
    );
}
