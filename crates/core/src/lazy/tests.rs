//! The lifecycle against fake models whose loads are counted.

use super::*;
use crate::ir::{StreamEvent, Usage};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Fake;

#[async_trait]
impl Backend for Fake {
    async fn chat(&self, _: ChatRequest) -> Result<EventStream, Error> {
        Ok(Box::pin(futures::stream::iter([Ok(StreamEvent::Usage(
            Usage::default(),
        ))])))
    }
}

/// A shelf of `n` fake models whose loads are counted (and fail for `broken`).
fn shelf(n: usize, max: usize, broken: Option<usize>) -> (Vec<LazyModel>, Arc<AtomicUsize>) {
    budget(n, max, 0, broken)
}

/// Each fake model is estimated at 1 GiB (far more than a load grows the process).
fn budget(
    n: usize,
    max: usize,
    max_bytes: u64,
    broken: Option<usize>,
) -> (Vec<LazyModel>, Arc<AtomicUsize>) {
    let shelf = Shelf::new(max, max_bytes, Duration::from_millis(300), 8);
    let loads = Arc::new(AtomicUsize::new(0));
    let models = (0..n)
        .map(|i| {
            let loads = Arc::clone(&loads);
            let load: Loader = Arc::new(move |_| {
                loads.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                if broken == Some(i) {
                    return Err("not a GGUF file".into());
                }
                Ok(Arc::new(Fake) as Arc<dyn Backend>)
            });
            shelf.add(
                format!("m{i}"),
                1,
                1 << 30,
                KeepAlive::For(Duration::from_secs(60)),
                load,
            )
        })
        .collect();
    (models, loads)
}

fn ask() -> ChatRequest {
    ChatRequest::default()
}

#[tokio::test]
async fn concurrent_first_requests_load_once() {
    let (m, loads) = shelf(1, 0, None);
    let calls = (0..8).map(|_| m[0].chat(ask()));
    for r in futures::future::join_all(calls).await {
        r.unwrap().collect::<Vec<_>>().await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let r = m[0].residency();
    assert!(r.loaded && r.in_flight == 0 && r.load_ms.is_some(), "{r:?}");
}

#[tokio::test]
async fn the_least_recently_used_idle_model_makes_room_never_a_busy_one() {
    let (m, loads) = shelf(3, 2, None);
    let busy = m[0].chat(ask()).await.unwrap(); // m0 held: an answer not yet read
    m[1].chat(ask()).await.unwrap().collect::<Vec<_>>().await;
    m[2].chat(ask()).await.unwrap().collect::<Vec<_>>().await;
    let loaded: Vec<bool> = m.iter().map(|x| x.residency().loaded).collect();
    assert_eq!(loaded, [true, false, true], "m1 was idle, m0 busy");
    drop(busy);
    // m0's answer ended after m2's: m2 is now the least recently used.
    m[1].chat(ask()).await.unwrap().collect::<Vec<_>>().await;
    let loaded: Vec<bool> = m.iter().map(|x| x.residency().loaded).collect();
    assert_eq!(loaded, [true, true, false]);
    assert_eq!(loads.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_memory_budget_unloads_idle_models_and_refuses_one_too_big() {
    // Room for two 1 GiB models, no count limit.
    let (m, _) = budget(3, 0, (2 << 30) + (1 << 29), None);
    for x in &m {
        x.chat(ask()).await.unwrap().collect::<Vec<_>>().await;
    }
    let loaded: Vec<bool> = m.iter().map(|x| x.residency().loaded).collect();
    assert_eq!(loaded, [false, true, true]);
    assert_eq!(m[1].residency().memory_bytes, 1 << 30);
    let (m, _) = budget(1, 0, 1 << 29, None);
    let e = match m[0].chat(ask()).await {
        Err(e) => e,
        Ok(_) => panic!("a model over the budget loaded"),
    };
    assert!(e.message.contains("--max-memory"), "{e}");
    assert!(!e.retryable, "it will never fit");
}

#[tokio::test]
async fn with_every_place_busy_a_load_waits_then_gives_up() {
    let (m, _) = shelf(2, 1, None);
    let busy = m[0].chat(ask()).await.unwrap();
    let e = match m[1].chat(ask()).await {
        Err(e) => e,
        Ok(_) => panic!("m1 loaded beside a busy m0 past the limit"),
    };
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("busy"), "{e}");
    drop(busy);
    m[1].chat(ask()).await.unwrap().collect::<Vec<_>>().await;
}

#[tokio::test]
async fn keep_alive_zero_unloads_after_the_answer_and_sweeps_unload_expired() {
    let (m, _) = shelf(2, 0, None);
    let mut req = ask();
    req.context.keep_alive = Some(KeepAlive::For(Duration::ZERO));
    let answer = m[0].chat(req).await.unwrap();
    assert!(m[0].residency().loaded, "loaded while its answer is read");
    answer.collect::<Vec<_>>().await;
    assert!(!m[0].residency().loaded);

    let mut req = ask();
    req.context.keep_alive = Some(KeepAlive::For(Duration::from_millis(100)));
    m[1].chat(req).await.unwrap().collect::<Vec<_>>().await;
    m[1].0.shelf.sweep();
    assert!(m[1].residency().loaded, "not expired yet");
    tokio::time::sleep(Duration::from_millis(150)).await;
    m[1].0.shelf.sweep();
    assert!(!m[1].residency().loaded);
}

#[tokio::test]
async fn a_failed_load_names_why_and_is_tried_again_on_the_next_request() {
    let (m, loads) = shelf(2, 0, Some(0));
    for _ in 0..2 {
        let e = match m[0].chat(ask()).await {
            Err(e) => e,
            Ok(_) => panic!("a broken model answered"),
        };
        assert_eq!(e.status(), 503);
        assert!(e.message.contains("not a GGUF file"), "{e}");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(
        m[0].residency().last_error.as_deref(),
        Some("not a GGUF file")
    );
    assert!(m[0].health().is_ok(), "the server stays healthy");
    m[1].chat(ask()).await.unwrap().collect::<Vec<_>>().await;
}

#[test]
fn keep_alive_reads_ollamas_forms() {
    let secs = |v| match KeepAlive::parse(&v).unwrap() {
        KeepAlive::For(d) => d.as_secs_f64(),
        KeepAlive::Forever => -1.0,
    };
    assert_eq!(secs(json!(0)), 0.0);
    assert_eq!(secs(json!(30)), 30.0);
    assert_eq!(secs(json!(-1)), -1.0);
    assert_eq!(secs(json!("-1")), -1.0);
    assert_eq!(secs(json!("-1m")), -1.0);
    assert_eq!(secs(json!("5m")), 300.0);
    assert_eq!(secs(json!("1h30m")), 5400.0);
    assert_eq!(secs(json!("1.5s")), 1.5);
    assert_eq!(secs(json!("0")), 0.0);
    for bad in [json!("soon"), json!("5x"), json!(true), json!("m")] {
        assert!(KeepAlive::parse(&bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn beyond_the_waiting_room_a_load_is_refused_at_once() {
    let (m, _) = shelf(2, 1, None);
    let busy = m[0].chat(ask()).await.unwrap();
    let waiting: Vec<_> = (0..8).map(|_| m[1].chat(ask())).collect();
    let mut waiting: Vec<_> = waiting.into_iter().map(Box::pin).collect();
    // Let both take their places in the waiting room.
    for w in &mut waiting {
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    let started = Instant::now();
    let e = match m[1].chat(ask()).await {
        Err(e) => e,
        Ok(_) => panic!("a third waiter got in"),
    };
    assert_eq!((e.status(), e.retry_after), (429, Some(1)), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused at once"
    );
    drop(busy);
    for w in waiting {
        w.await.unwrap().collect::<Vec<_>>().await;
    }
}

#[tokio::test]
async fn a_failed_check_unloads_nothing_to_make_room() {
    let shelf = Shelf::new(1, 0, Duration::from_millis(300), 8);
    let good: Loader = Arc::new(|_| Ok(Arc::new(Fake) as Arc<dyn Backend>));
    let never: Loader = Arc::new(|_| panic!("a model whose check failed was loaded"));
    let check: Check = Arc::new(|| Err("bad magic".into()));
    let keep = KeepAlive::For(Duration::from_secs(60));
    let a = shelf.add("a", 1, 1, keep, good);
    let b = shelf.add_checked("b", 1, 1, keep, never, Some(check));
    a.chat(ask()).await.unwrap().collect::<Vec<_>>().await;
    let e = b.chat(ask()).await.err().unwrap();
    assert_eq!(e.status(), 503);
    assert!(e.message.contains("bad magic"), "{e}");
    assert!(a.residency().loaded, "the loaded model stayed");
    assert_eq!(b.residency().last_error.as_deref(), Some("bad magic"));
}

#[tokio::test]
async fn another_context_size_loads_an_idle_model_again() {
    let shelf = Shelf::new(0, 0, Duration::from_millis(300), 8);
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&sizes);
    let load: Loader = Arc::new(move |ctx| {
        seen.lock().unwrap().push(ctx);
        Ok(Arc::new(Fake) as Arc<dyn Backend>)
    });
    let m = shelf.add("m", 1, 1, KeepAlive::For(Duration::from_secs(60)), load);
    let asking = |ctx: Option<u32>| {
        let mut r = ask();
        r.context.context_window = ctx;
        r
    };
    for ctx in [Some(1024), Some(1024), None, Some(2048)] {
        m.chat(asking(ctx)).await.unwrap().collect::<Vec<_>>().await;
    }
    // The same size, or none asked, keeps the loaded model.
    assert_eq!(*sizes.lock().unwrap(), [Some(1024), Some(2048)]);
    assert_eq!(m.residency().context, Some(2048));
}
