//! Load generator for bench/gateway.py: `CONC` connections POST one JSON body to a URL
//! for `SECS` seconds, each reading the whole answer (streams to their end). With a total
//! `RATE` (req/s) the requests are paced, and a request sent late because the previous
//! one stalled counts from its planned start, so a stall is not hidden; `RATE` 0 is flat out.
//! Prints one JSON line: rps, p50/p99/p999 in ms, errors.
//!
//! `loadgen URL KEY BODY_FILE CONC SECS RATE`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test and example code"
)]

use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 6 {
        eprintln!("usage: loadgen URL KEY BODY_FILE CONC SECS RATE");
        std::process::exit(2);
    }
    let (url, key) = (a[0].clone(), a[1].clone());
    let body = bytes::Bytes::from(std::fs::read(&a[2]).expect("body file"));
    let conc: usize = a[3].parse().unwrap();
    let secs: f64 = a[4].parse().unwrap();
    let rate: f64 = a[5].parse().unwrap();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(conc * 2)
        .build()
        .unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for i in 0..conc {
        let (client, url, key, body) = (client.clone(), url.clone(), key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let interval = (rate > 0.0).then(|| Duration::from_secs_f64(conc as f64 / rate));
            // Spread the connections' first sends over one interval.
            let mut planned =
                start + interval.map_or(Duration::ZERO, |d| d.mul_f64(i as f64 / conc as f64));
            loop {
                if interval.is_some() {
                    tokio::time::sleep_until(planned.into()).await;
                } else {
                    planned = Instant::now();
                }
                let sent = Instant::now();
                if planned >= end || sent >= end {
                    break;
                }
                // tokio's timer wakes up to ~1 ms late: that is the generator's lateness,
                // not the server's; a request more behind than that is a real stall.
                let origin = if sent.duration_since(planned) > Duration::from_millis(2) {
                    planned
                } else {
                    sent
                };
                let ok = match client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    lat.push(origin.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
                if let Some(d) = interval {
                    planned += d;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{{\"rps\": {:.1}, \"p50\": {:.4}, \"p99\": {:.4}, \"p999\": {:.4}, \"n\": {}, \"errors\": {}}}",
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        all.len(),
        errors
    );
}
