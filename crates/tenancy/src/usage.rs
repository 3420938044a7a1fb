//! Usage metering: one durable row per request, written by one task that commits the
//! rows of concurrent requests together (group commit: never a transaction per request
//! on the hot path, never a wait on the engine thread).

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

/// Hands rows to the writer task.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
}

/// Rows per transaction at most.
const BATCH: usize = 512;

impl Recorder {
    pub fn start(store: Store) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        parlance_core::task::spawn("usage writer", async move {
            let mut batch: Vec<Pending> = Vec::new();
            let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
            while let Some(first) = rx.recv().await {
                match first {
                    Msg::Row(p) => batch.push(*p),
                    Msg::Flush(f) => flushes.push(f),
                }
                // Everything that queued while the last commit ran goes into this one.
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Row(p)) => batch.push(*p),
                        Ok(Msg::Flush(f)) => flushes.push(f),
                        Err(_) => break,
                    }
                }
                // Waiters that gave up (a timed-out flush, a request that ended) leave
                // closed channels: sends to them are dropped.
                if batch.is_empty() {
                    for f in flushes.drain(..) {
                        f.send(()).ok();
                    }
                    continue;
                }
                let rows: Vec<UsageRow> = batch.iter().map(|(r, _)| r.clone()).collect();
                let mut result = store.insert_usage(&rows).await;
                for attempt in 1..=5 {
                    if result.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                    result = store.insert_usage(&rows).await;
                }
                if let Err(e) = &result {
                    // Not silently lost: the rows go to the log, whole.
                    for r in &rows {
                        tracing::error!(row = %serde_json::to_string(r).unwrap_or_default(), "usage row not stored: {e}");
                    }
                }
                for (_, ack) in batch.drain(..) {
                    if let Some(ack) = ack {
                        ack.send(result.clone()).ok();
                    }
                }
                for f in flushes.drain(..) {
                    f.send(()).ok();
                }
            }
        });
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
