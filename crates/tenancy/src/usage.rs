//! Usage metering: one durable row per request, written by one task that commits the
//! rows of concurrent requests together (group commit: never a transaction per request
//! on the hot path, never a wait on the engine thread).

mod insert;
mod sqlite_writer;

pub(crate) use insert::{usage_insert_sql, UsageValue, USAGE_ROWS_PER_STATEMENT};

use crate::store::Store;
use crate::StoreError;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Unix milliseconds when the request arrived.
    pub at: i64,
    pub request_id: String,
    pub key_id: Option<String>,
    /// The public model name the caller asked for.
    pub model: String,
    /// What served it: `provider/upstream-model` or `local/<name>`.
    pub deployment: String,
    /// `openai`, ...
    pub front_door: String,
    pub streamed: bool,
    /// `ok`, `cancelled`, or `error:<code>`.
    pub status: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    pub reasoning_tokens: u32,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
    /// The counts are Parlance's estimate, not the backend's report.
    pub estimated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroup {
    Key,
    Model,
    Day,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageTotals {
    pub group: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_usd: f64,
    pub errors: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageFilter {
    pub key_id: Option<String>,
    /// Only the keys of this account.
    pub user_id: Option<String>,
    /// Only the keys of this team.
    pub team_id: Option<String>,
    pub model: Option<String>,
    /// Unix milliseconds, inclusive.
    pub from: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to: Option<i64>,
}

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone)]
pub enum Bind {
    Text(String),
    Int(i64),
}

impl Bind {
    pub fn bind_to<'q>(
        &self,
        q: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        match self {
            Bind::Text(s) => q.bind(s.clone()),
            Bind::Int(i) => q.bind(*i),
        }
    }
}

impl UsageFilter {
    /// The WHERE condition and its values, placeholders numbered in order.
    pub fn sql(&self) -> (String, Vec<Bind>) {
        let mut cond = vec!["1 = 1".to_string()];
        let mut binds = Vec::new();
        // `$` in a condition is its value's placeholder.
        let mut add = |c: &str, b: Bind| {
            binds.push(b);
            cond.push(c.replace('$', &format!("${}", binds.len())));
        };
        if let Some(k) = &self.key_id {
            add("key_id = $", Bind::Text(k.clone()));
        }
        if let Some(u) = &self.user_id {
            add(
                "key_id IN (SELECT id FROM keys WHERE user_id = $)",
                Bind::Text(u.clone()),
            );
        }
        if let Some(t) = &self.team_id {
            add(
                "key_id IN (SELECT id FROM keys WHERE team_id = $)",
                Bind::Text(t.clone()),
            );
        }
        if let Some(m) = &self.model {
            add("model = $", Bind::Text(m.clone()));
        }
        if let Some(f) = self.from {
            add("at >= $", Bind::Int(f));
        }
        if let Some(t) = self.to {
            add("at < $", Bind::Int(t));
        }
        (cond.join(" AND "), binds)
    }
}

type Pending = (UsageRow, Option<oneshot::Sender<Result<(), StoreError>>>);

enum Msg {
    Row(Box<Pending>),
    /// Answered once every row sent before it is stored.
    Flush(oneshot::Sender<()>),
}

/// Hands rows to the usage writer.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
}

/// Rows per transaction at most.
const BATCH: usize = 512;

/// The writer as a task on the store's pool: each round of rows is one commit, retried
/// for about three seconds before the rows go to the log.
async fn pooled_writer(store: Store, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut round = Round::default();
    let mut conn = None;
    while let Some(first) = rx.recv().await {
        round.gather(first, &mut rx);
        if round.rows.is_empty() {
            round.answer(Ok(()));
            continue;
        }
        let mut result = write(&store, &mut conn, &round.rows).await;
        for pause in retry_pauses() {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(pause).await;
            result = write(&store, &mut conn, &round.rows).await;
        }
        round.answer(result);
    }
}

/// Stores `rows` on the writer's own connection, checked out once and kept: a
/// checkout per commit cost a round trip (sqlx pings a connection it hands out) before
/// every INSERT. A connection that failed is given back, and the next try checks out
/// another.
async fn write(
    store: &Store,
    conn: &mut Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    rows: &[UsageRow],
) -> Result<(), StoreError> {
    let held = match conn {
        Some(c) => c,
        None => conn.insert(store.writer().await?),
    };
    let result = Store::insert_usage_on(held, rows).await;
    if result.is_err() {
        *conn = None;
    }
    result
}

/// What the writer does with one round of messages: the rows, their waiters (one per
/// row, in the same order) and the flushes that arrived together.
#[derive(Default)]
struct Round {
    rows: Vec<UsageRow>,
    acks: Vec<Option<oneshot::Sender<Result<(), StoreError>>>>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Round {
    /// `first`, and everything that queued while the last commit ran: one commit.
    fn gather(&mut self, first: Msg, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Row(p) => {
                    let (row, ack) = *p;
                    self.rows.push(row);
                    self.acks.push(ack);
                }
                Msg::Flush(f) => self.flushes.push(f),
            }
            next = if self.rows.len() < BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
    }

    /// Answers every waiter with the commit's `result`. Waiters that gave up (a
    /// timed-out flush, a request that ended) left closed channels: sends to them are
    /// dropped.
    fn answer(&mut self, result: Result<(), StoreError>) {
        if let Err(e) = &result {
            // Not silently lost: the rows go to the log, whole.
            for r in &self.rows {
                tracing::error!(row = %serde_json::to_string(r).unwrap_or_default(), "usage row not stored: {e}");
            }
        }
        self.rows.clear();
        for ack in self.acks.drain(..).flatten() {
            ack.send(result.clone()).ok();
        }
        for f in self.flushes.drain(..) {
            f.send(()).ok();
        }
    }
}

/// Tries after the first, and the pause before each: a locked or briefly unreachable
/// database gets about three seconds before the rows are given up to the log.
fn retry_pauses() -> impl Iterator<Item = std::time::Duration> {
    (1..=5).map(|attempt| std::time::Duration::from_millis(50 << attempt))
}

impl Recorder {
    /// The writer for `store`: on a SQLite file, a thread of its own with its own
    /// connection (see `sqlite_writer`); elsewhere a task on the store's pool.
    pub fn start(store: Store) -> Recorder {
        if let Some(path) = store.sqlite_path() {
            match sqlite_writer::spawn(&path, std::sync::Arc::clone(&store.wal)) {
                Ok(tx) => return Recorder { tx },
                Err(e) => tracing::warn!("usage writer: {e}; writing through the pool instead"),
            }
        }
        Recorder::pooled(store)
    }

    /// The writer as a task on the store's pool (Postgres, or where no thread starts).
    fn pooled(store: Store) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        parlance_core::task::spawn("usage writer", pooled_writer(store, rx));
        Recorder { tx }
    }

    /// Queues a row and waits until it is committed.
    pub async fn record(&self, row: UsageRow) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Row(Box::new((row, Some(ack)))))
            .map_err(|_| StoreError::WriterStopped)?;
        done.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Queues a row without waiting (the caller is gone: nobody to answer).
    pub fn record_later(&self, row: UsageRow) {
        if let Err(e) = self.tx.send(Msg::Row(Box::new((row, None)))) {
            // The writer stopped: not silently lost, the row goes to the log.
            if let Msg::Row(p) = e.0 {
                let row = serde_json::to_string(&p.0).unwrap_or_default();
                tracing::error!(row = %row, "usage row not stored: the usage writer has stopped");
            }
        }
    }

    /// Waits until every row queued so far is stored (at shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            // An error: the writer stopped, so nothing more will be stored anyway.
            rx.await.ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: i64, key: Option<&str>, ttft: Option<i64>) -> UsageRow {
        UsageRow {
            at: 1_700_000_000_000 + i,
            request_id: format!("req_{i}"),
            key_id: key.map(str::to_string),
            model: "m\u{e9}".into(),
            deployment: "local/m".into(),
            front_door: "openai".into(),
            streamed: i % 2 == 0,
            status: "ok".into(),
            prompt_tokens: 3,
            completion_tokens: u32::try_from(i).unwrap_or(0),
            cached_tokens: 1,
            reasoning_tokens: 2,
            cost_usd: 0.25,
            latency_ms: 7,
            ttft_ms: ttft,
            estimated: true,
        }
    }

    /// Every column (NULLs too) survives the SQLite thread's writer, concurrent rows
    /// share commits, and a flush answers once they are stored; the pool's writer
    /// (Postgres's) stores the same.
    #[tokio::test]
    async fn rows_round_trip_through_both_writers() {
        let dir = tempfile::tempdir().unwrap();
        for (name, start) in [
            ("thread", Recorder::start as fn(Store) -> Recorder),
            ("pool", Recorder::pooled),
        ] {
            let url = format!("sqlite://{}", dir.path().join(name).display());
            let store = Store::open(&url).await.unwrap();
            let recorder = start(store.clone());
            let rows: Vec<UsageRow> = (0..600)
                .map(|i| match i % 3 {
                    0 => row(i, None, None),
                    1 => row(i, Some("key_a"), Some(i)),
                    _ => row(i, Some("key_b"), None),
                })
                .collect();
            let waits = rows.iter().map(|r| recorder.record(r.clone()));
            for r in futures::future::join_all(waits).await {
                r.unwrap();
            }
            recorder.record_later(row(600, None, Some(1)));
            recorder.flush().await;
            let mut stored = store.usage_rows(&UsageFilter::default()).await.unwrap();
            stored.sort_by_key(|r| r.at);
            let mut want = rows;
            want.push(row(600, None, Some(1)));
            assert_eq!(stored, want, "{url}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_while_rows_keep_coming() {
        // Under a steady load the writer added frames during every background
        // checkpoint, so the WAL never started over (3 GB in 30 s flat out).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let rec = std::sync::Arc::new(Recorder::start(store));
        let stop = std::time::Instant::now() + std::time::Duration::from_millis(3500);
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let rec = std::sync::Arc::clone(&rec);
                parlance_core::task::spawn("test writer", async move {
                    let mut n = 0;
                    while std::time::Instant::now() < stop {
                        rec.record(row(w * 1_000_000 + n, None, None))
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // The WAL header's checkpoint sequence number (bytes 12..16) counts restarts;
        // the WAL the store opened with may have started over already.
        let wal_path = dir.path().join("w.db-wal");
        let restarts = || {
            let wal = std::fs::read(&wal_path).unwrap();
            (
                u32::from_be_bytes(wal[12..16].try_into().unwrap()),
                wal.len(),
            )
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (before, _) = restarts();
        let mut rows = 0;
        for w in writers {
            rows += w.await.unwrap().unwrap();
        }
        let (after, size) = restarts();
        // A checkpoint every 250 ms: up to 12 in the 3.2 s.
        assert!(
            after - before >= 3,
            "the WAL started over {} times in {rows} rows ({size} bytes)",
            after - before
        );
    }
}
