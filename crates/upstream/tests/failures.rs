//! Upstream failures: HTTP errors classified by status, broken streams ending in an
//! error, hanging upstreams timing out and dropped streams cancelling the call.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and example code"
)]

mod common;

use common::*;
use parlance_core::ErrorKind;
use parlance_upstream::{ProviderKind, Timeouts};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn upstream_http_errors_are_classified_with_their_status() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::OpenAi, &mock.url);
    let b = model(&p, "m");
    mock.push(Reply::Json(500, json!({"error": {"message": "boom"}})));
    let e = run(&b, ask("x", false)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Upstream);
    assert!(e.retryable);
    assert!(
        e.message.contains("HTTP 500") && e.message.contains("boom"),
        "{}",
        e.message
    );

    mock.push(Reply::Raw(
        429,
        vec![("retry-after", "7".into())],
        "slow down".into(),
    ));
    let e = run(&b, ask("x", false)).await.unwrap_err();
    assert_eq!(
        (e.kind, e.retry_after, e.retryable),
        (ErrorKind::RateLimited, Some(7), true)
    );
    assert!(e.message.contains("slow down"));

    mock.push(Reply::Json(
        400,
        json!({"error": {"message": "temperature too high", "type": "invalid_request_error"}}),
    ));
    let e = run(&b, ask("x", false)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(!e.retryable);
    assert!(e.message.contains("HTTP 400: temperature too high"));

    mock.push(Reply::Raw(200, vec![], "not json".into()));
    let e = run(&b, ask("x", false)).await.unwrap_err();
    assert!(e.message.contains("malformed"), "{}", e.message);
}

#[tokio::test]
async fn broken_streams_end_in_an_error_not_silence() {
    let mock = Mock::start().await;
    let p = provider(ProviderKind::OpenAi, &mock.url);
    let b = model(&p, "m");
    let first = sse(&[(
        None,
        json!({"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}),
    )]);

    mock.push(Reply::ResetAfter(first.clone()));
    let e = run(&b, ask("x", true)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Upstream, "{e:?}");

    mock.push(Reply::Sse(first.clone() + "data: {not json\n\n", 3));
    let e = run(&b, ask("x", true)).await.unwrap_err();
    assert!(e.message.contains("malformed"), "{}", e.message);

    // The body ends without a finish_reason and without [DONE].
    mock.push(Reply::Sse(first.clone(), 4));
    let e = run(&b, ask("x", true)).await.unwrap_err();
    assert!(
        e.message.contains("before every choice finished"),
        "{}",
        e.message
    );

    mock.push(Reply::Sse(
        first + "data: {\"error\": {\"message\": \"overloaded\"}}\n\n",
        64,
    ));
    let e = run(&b, ask("x", true)).await.unwrap_err();
    assert!(e.message.contains("overloaded"));
}

#[tokio::test]
async fn hanging_upstream_times_out_and_dropping_the_stream_cancels_it() {
    let mock = Mock::start().await;
    let t = Timeouts {
        first_token: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let p = provider_with(ProviderKind::OpenAi, &mock.url, t, None);
    let b = model(&p, "m");
    mock.push(Reply::Hang);
    let e = run(&b, ask("x", true)).await.unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::Timeout, true));

    // A caller that leaves mid-stream: the upstream sees its connection close.
    let body = sse(&[(
        None,
        json!({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}),
    )])
    .repeat(5000);
    mock.push(Reply::Sse(body, 16));
    let before = mock.cancelled.load(std::sync::atomic::Ordering::SeqCst);
    let mut events = b.chat(ask("x", true)).await.unwrap();
    use futures::StreamExt;
    events.next().await.unwrap().unwrap();
    drop(events);
    for _ in 0..100 {
        if mock.cancelled.load(std::sync::atomic::Ordering::SeqCst) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the upstream never saw the request cancelled");
}

/// A stream that goes on past the total timeout is cut off there with a timeout error
/// event, after the events that came in time.
#[tokio::test]
async fn a_stream_past_the_total_timeout_ends_in_a_timeout_error() {
    use futures::StreamExt;
    let mock = Mock::start().await;
    let t = Timeouts {
        total: Duration::from_millis(400),
        ..Timeouts::default()
    };
    let p = provider_with(ProviderKind::OpenAi, &mock.url, t, None);
    let b = model(&p, "m");
    // 5,000 deltas, 16 bytes a millisecond: several seconds of stream.
    let body = sse(&[(
        None,
        json!({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}),
    )])
    .repeat(5000);
    mock.push(Reply::Sse(body, 16));
    let started = std::time::Instant::now();
    let mut events = b.chat(ask("x", true)).await.unwrap();
    let mut deltas = 0;
    let e = loop {
        match events.next().await {
            Some(Ok(_)) => deltas += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without the timeout error"),
        }
    };
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:?}");
    assert!(e.message.contains("total timeout"), "{}", e.message);
    assert!(deltas > 0 && deltas < 5000, "{deltas}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(events.next().await.is_none(), "nothing after the error");
}
