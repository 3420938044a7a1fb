//! The pool over real HTTP deployments: retries before the first byte, fallbacks,
//! cooldown and recovery, balancing, and no retry once a stream has started.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test and example code"
)]

mod common;

use common::*;
use futures::StreamExt;
use parlance_core::pool::{Balance, Deployment, Pool, PoolPolicy};
use parlance_core::{Backend, ErrorKind};
use parlance_upstream::ProviderKind;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn ok_body(text: &str) -> serde_json::Value {
    json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
}

/// A weight that makes the weighted pick choose its deployment first while healthy: the
/// other's chance (1 in 10^9) is too small to flake a test; 1000:1 failed one CI run.
const FIRST: u32 = 1_000_000_000;

fn deployment(mock: &Mock, name: &str, weight: u32) -> Deployment {
    let p = provider(ProviderKind::OpenAi, &mock.url);
    Deployment {
        name: name.into(),
        backend: model(&p, "m"),
        weight,
    }
}

fn fast_policy() -> PoolPolicy {
    PoolPolicy {
        backoff: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        cooldown: Duration::from_millis(300),
        ..PoolPolicy::default()
    }
}

#[tokio::test]
async fn retryable_failures_move_to_the_next_deployment_and_bad_input_does_not() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.always(Reply::Json(
        503,
        json!({"error": {"message": "overloaded"}}),
    ));
    b.always(Reply::Json(200, ok_body("from b")));
    let pool: Arc<dyn Backend> = Arc::new(Pool::new(
        "m",
        vec![deployment(&a, "a", FIRST), deployment(&b, "b", 1)],
        fast_policy(),
    ));
    for _ in 0..6 {
        let done = run(&pool, ask("x", false)).await.unwrap();
        assert_eq!(done.choices[0].content, "from b");
    }
    assert_eq!(a.count(), 3, "a cools down after 3 failures");

    let c = Mock::start().await;
    c.always(Reply::Json(
        400,
        json!({"error": {"message": "bad temperature"}}),
    ));
    let d = Mock::start().await;
    d.always(Reply::Json(200, ok_body("never")));
    let pool: Arc<dyn Backend> = Arc::new(Pool::new(
        "m",
        vec![deployment(&c, "c", 1), deployment(&d, "d", 0)],
        fast_policy(),
    ));
    let e = run(&pool, ask("x", false)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert_eq!(d.count(), 0, "a 400 is the caller's fault: no retry");
}

#[tokio::test]
async fn unreachable_deployment_then_fallback_model() {
    // A port nothing listens on: connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        url
    };
    let fb = Mock::start().await;
    fb.always(Reply::Json(200, ok_body("fallback answered")));
    let main = Pool::new(
        "main",
        vec![Deployment {
            name: "dead".into(),
            backend: model(&provider(ProviderKind::OpenAi, &dead), "m"),
            weight: 1,
        }],
        fast_policy(),
    );
    let backup = Arc::new(Pool::new(
        "backup",
        vec![deployment(&fb, "fb", 1)],
        fast_policy(),
    ));
    main.set_fallbacks(vec![backup]);
    let main: Arc<dyn Backend> = Arc::new(main);
    let done = run(&main, ask("x", false)).await.unwrap();
    assert_eq!(done.choices[0].content, "fallback answered");
    assert_eq!(fb.count(), 1);
}

#[tokio::test]
async fn cooled_down_deployment_recovers() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    b.always(Reply::Json(200, ok_body("b")));
    for _ in 0..3 {
        a.push(Reply::Json(500, json!({"error": {"message": "down"}})));
    }
    let policy = PoolPolicy {
        retries: 1,
        failure_threshold: 3,
        ..fast_policy()
    };
    // `a` weighs [`FIRST`]: it is picked first while healthy.
    let pool: Arc<dyn Backend> = Arc::new(Pool::new(
        "m",
        vec![deployment(&a, "a", FIRST), deployment(&b, "b", 1)],
        policy,
    ));
    while a.count() < 3 {
        run(&pool, ask("x", false)).await.unwrap();
    }
    let before = a.count();
    for _ in 0..5 {
        run(&pool, ask("x", false)).await.unwrap();
    }
    assert_eq!(a.count(), before, "no traffic to a deployment in cooldown");
    a.always(Reply::Json(200, ok_body("a again")));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let done = run(&pool, ask("x", false)).await.unwrap();
    assert_eq!(
        done.choices[0].content, "a again",
        "after the cooldown it is tried again"
    );
}

/// Two healthy deployments answering "a" and "b", weighted 3:1.
async fn three_to_one() -> (Mock, Mock, Arc<dyn Backend>) {
    let (a, b) = (Mock::start().await, Mock::start().await);
    a.always(Reply::Json(200, ok_body("a")));
    b.always(Reply::Json(200, ok_body("b")));
    let pool: Arc<dyn Backend> = Arc::new(Pool::new(
        "m",
        vec![deployment(&a, "a", 3), deployment(&b, "b", 1)],
        fast_policy(),
    ));
    (a, b, pool)
}

#[tokio::test]
async fn weighted_split_and_least_in_flight() {
    let (a, _b, pool) = three_to_one().await;
    for _ in 0..400 {
        run(&pool, ask("x", false)).await.unwrap();
    }
    // Expected 300/100; 240..360 is over 7 standard deviations wide.
    assert!((240..=360).contains(&a.count()), "a got {}", a.count());

    let (c, d) = (Mock::start().await, Mock::start().await);
    c.always(Reply::Hang);
    d.always(Reply::Hang);
    let pool = Arc::new(Pool::new(
        "m",
        vec![deployment(&c, "c", 1), deployment(&d, "d", 1)],
        PoolPolicy {
            balance: Balance::LeastInFlight,
            ..fast_policy()
        },
    ));
    // Hanging streams: each started request stays in flight while its task runs.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let p: Arc<dyn Backend> = pool.clone();
        tasks.push(tokio::spawn(async move {
            p.chat(ask("x", true)).await.map(|_| ())
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((c.count(), d.count()), (2, 2), "least-in-flight alternates");
    assert_eq!(pool.in_flight(), vec![2, 2]);
    for t in tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        pool.in_flight(),
        vec![0, 0],
        "cancelled requests leave the count"
    );
}

#[tokio::test]
async fn failure_after_the_first_event_is_not_retried() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let first = sse(&[(
        None,
        json!({"choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": null}]}),
    )]);
    a.always(Reply::ResetAfter(first));
    b.always(Reply::Json(200, ok_body("b")));
    let pool: Arc<dyn Backend> = Arc::new(Pool::new(
        "m",
        vec![deployment(&a, "a", FIRST), deployment(&b, "b", 1)],
        fast_policy(),
    ));
    let mut events = pool.chat(ask("x", true)).await.unwrap();
    let mut items = Vec::new();
    while let Some(i) = events.next().await {
        items.push(i);
    }
    assert!(items[0].is_ok(), "the first delta went out");
    assert!(
        items.last().unwrap().is_err(),
        "the stream ends in an error"
    );
    assert_eq!(
        b.count(),
        0,
        "bytes already reached the caller: no retry elsewhere"
    );
}

#[tokio::test]
async fn streams_that_break_midway_bench_their_deployment() {
    let (a, b) = (Mock::start().await, Mock::start().await);
    let first = sse(&[(
        None,
        json!({"choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": null}]}),
    )]);
    a.always(Reply::ResetAfter(first));
    b.always(Reply::Json(200, ok_body("b")));
    let pool: Arc<dyn Backend> = Arc::new(Pool::new(
        "m",
        vec![deployment(&a, "a", FIRST), deployment(&b, "b", 1)],
        fast_policy(),
    ));
    for _ in 0..3 {
        let mut events = pool.chat(ask("x", true)).await.unwrap();
        let mut last = None;
        while let Some(i) = events.next().await {
            last = Some(i);
        }
        assert!(last.unwrap().is_err());
    }
    assert_eq!((a.count(), b.count()), (3, 0));
    let done = run(&pool, ask("x", false)).await.unwrap();
    assert_eq!(
        done.choices[0].content, "b",
        "after 3 broken streams `a` cools down"
    );
    assert_eq!(a.count(), 3);
}

#[tokio::test]
async fn a_bad_key_or_model_is_not_retried_on_the_same_deployment_and_benches_it() {
    // One deployment: a 401 is tried once, not `retries` more times.
    let a = Mock::start().await;
    a.always(Reply::Json(401, json!({"error": {"message": "bad key"}})));
    let lone: Arc<dyn Backend> =
        Arc::new(Pool::new("m", vec![deployment(&a, "a", 1)], fast_policy()));
    let e = run(&lone, ask("x", false)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Upstream);
    assert_eq!(a.count(), 1, "a 401 is not retried on the same deployment");

    // Two: the one answering 404 is skipped at once and benched for the next requests.
    let (bad, good) = (Mock::start().await, Mock::start().await);
    bad.always(Reply::Json(
        404,
        json!({"error": {"message": "no such model"}}),
    ));
    good.always(Reply::Json(200, ok_body("good")));
    let pool: Arc<dyn Backend> = Arc::new(Pool::new(
        "m",
        vec![deployment(&bad, "bad", FIRST), deployment(&good, "good", 1)],
        fast_policy(),
    ));
    for _ in 0..5 {
        assert_eq!(
            run(&pool, ask("x", false)).await.unwrap().choices[0].content,
            "good"
        );
    }
    assert_eq!(bad.count(), 1, "benched after its first 404");
}

#[tokio::test]
async fn a_session_stays_on_its_deployment_and_sessions_spread_by_weight() {
    let (a, _b, pool) = three_to_one().await;
    let with_session = |s: &str| {
        let mut r = ask("x", false);
        r.context.session = Some(s.to_string());
        r
    };
    // Every turn of one conversation reaches the same deployment.
    for s in ["conv-1", "conv-2", "conv-3"] {
        let first = run(&pool, with_session(s)).await.unwrap().choices[0]
            .content
            .clone();
        for _ in 0..10 {
            assert_eq!(
                run(&pool, with_session(s)).await.unwrap().choices[0].content,
                first
            );
        }
    }
    // Different conversations still spread 3:1 (expected 300 of 400 turns on `a`).
    let before = a.count();
    for i in 0..400 {
        run(&pool, with_session(&format!("s{i}"))).await.unwrap();
    }
    let on_a = a.count() - before;
    assert!((240..=360).contains(&on_a), "a got {on_a}");
}
