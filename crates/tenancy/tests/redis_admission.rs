//! Group admission against a real Redis (`redis-server` on a loopback port, started
//! here with no persistence): requests that meet in one round go in one script call and
//! are still admitted one after another, exactly to the limit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code"
)]

use parlance_tenancy::keys::KeyRecord;
use parlance_tenancy::limits::{Limiter, Refused};
use parlance_tenancy::shared_limits::SharedLimiter;
use std::sync::Arc;

struct Redis {
    child: std::process::Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is not installed: scripts/setup.sh --test installs it");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Redis {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    }
}

/// A replica's limiter on `r` (its own local fallback).
async fn limiter(r: &Redis) -> Arc<SharedLimiter> {
    SharedLimiter::connect(&r.url, Arc::new(Limiter::default()))
        .await
        .unwrap()
}

/// Script calls Redis ran (loading a script on first use is not counted).
async fn script_calls(url: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let field = |line: &str, name: &str| -> u64 {
        line.split([':', ','])
            .find_map(|f| f.strip_prefix(name)?.parse().ok())
            .unwrap_or(0)
    };
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .map_or(0, |l| field(l, "calls=") - field(l, "failed_calls="))
}

fn key(id: &str, rpm: Option<u32>, tpm: Option<u32>) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        rpm,
        tpm,
        ..KeyRecord::default()
    }
}

#[tokio::test]
async fn requests_that_meet_go_in_one_call_and_stop_exactly_at_the_limit() {
    let r = redis().await;
    let shared = limiter(&r).await;
    let k = key("rpm5", Some(5), None);
    // One runtime thread: all 40 queue before the admission task runs, so they make
    // one round.
    let answers = futures::future::join_all((0..40).map(|_| shared.admit(&k, 1))).await;
    let admitted = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(admitted, 5);
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(refused.which, Refused::Requests);
        assert_eq!(refused.headers.requests.map(|r| r.1), Some(0));
    }
    // The first five in arrival order got in, each told how many are left.
    let left: Vec<u64> = answers
        .iter()
        .take(5)
        .map(|a| a.as_ref().unwrap().1.requests.unwrap().1)
        .collect();
    assert_eq!(left, [4, 3, 2, 1, 0]);
    assert_eq!(script_calls(&r.url).await, 1);
    // Another replica (its own limiter, the same Redis) finds the window full.
    let other = limiter(&r).await;
    assert!(other.admit(&k, 1).await.is_err());
}

#[tokio::test]
async fn token_reservations_settle_to_the_actual_count_in_a_later_round() {
    let r = redis().await;
    let shared = limiter(&r).await;
    let k = key("tpm100", None, Some(100));
    let answers = futures::future::join_all((0..5).map(|_| shared.admit(&k, 30))).await;
    let tickets: Vec<_> = answers.into_iter().filter_map(Result::ok).collect();
    // 3 x 30 reserved; a fourth would make 120.
    assert_eq!(tickets.len(), 3);
    for (ticket, _) in &tickets {
        ticket.settle(10);
    }
    // The settlements queued first: this admission sees 30 used, not 90.
    let (_, headers) = shared.admit(&k, 70).await.unwrap();
    assert_eq!(headers.tokens.map(|t| t.1), Some(0));
    let refused = shared.admit(&k, 1).await.err().unwrap();
    assert_eq!(refused.which, Refused::Tokens);
}
