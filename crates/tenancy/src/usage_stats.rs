//! What the admin console charts: usage per time bucket and group, and latency
//! percentiles per model. Same SQL on SQLite and Postgres.

use crate::store::{db_err, Store};
use crate::usage::{UsageFilter, UsageGroup};
use crate::StoreError;
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;

/// One group's usage in one time bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsagePoint {
    /// Unix seconds at the start of the bucket.
    pub t: i64,
    pub group: String,
    pub requests: u64,
    pub tokens: u64,
    pub cost_usd: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub model: String,
    /// Requests the percentiles were taken over (the newest rows first).
    pub requests: u64,
    pub latency_ms: Percentiles,
    /// Over the requests that produced a first token.
    pub ttft_ms: Option<Percentiles>,
}

/// Rows looked at for percentiles: enough for a dashboard, bounded for a big table.
const LATENCY_ROWS: i64 = 50_000;

/// Nearest-rank percentile of sorted values.
fn rank(sorted: &[i64], p: f64) -> i64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(i.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(0)
}

fn percentiles(mut v: Vec<i64>) -> Percentiles {
    v.sort_unstable();
    Percentiles {
        p50: rank(&v, 50.0),
        p90: rank(&v, 90.0),
        p99: rank(&v, 99.0),
    }
}

impl Store {
    /// Requests, tokens, cost and errors per `bucket_secs` and group (`key` or
    /// `model`; `day` groups by model), oldest bucket first.
    pub async fn usage_series(
        &self,
        filter: &UsageFilter,
        bucket_secs: i64,
        group: UsageGroup,
    ) -> Result<Vec<UsagePoint>, StoreError> {
        let (cond, binds) = filter.sql();
        let by = match group {
            UsageGroup::Key => "COALESCE(key_id, '-')",
            UsageGroup::Model | UsageGroup::Day => "model",
        };
        // The bucket is a number this code chose, so it is written into the query.
        let bucket_ms = bucket_secs.max(1) * 1000;
        let sql = format!(
            "SELECT at / {bucket_ms} AS b, {by} AS g, COUNT(*) AS requests,
             CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT) AS tokens,
             SUM(cost_usd) AS cost,
             CAST(SUM(CASE WHEN status LIKE 'error%' THEN 1 ELSE 0 END) AS BIGINT) AS errors
             FROM usage WHERE {cond} GROUP BY at / {bucket_ms}, {by} ORDER BY b, g"
        );
        let rows = self.fetch_filtered(&sql, &binds).await?;
        rows.iter()
            .map(|r| {
                let int = |c: &str| -> Result<i64, StoreError> {
                    r.try_get::<Option<i64>, _>(c)
                        .map(Option::unwrap_or_default)
                        .map_err(db_err)
                };
                Ok(UsagePoint {
                    t: int("b")? * bucket_secs.max(1),
                    group: r.try_get("g").map_err(db_err)?,
                    requests: int("requests")? as u64,
                    tokens: int("tokens")? as u64,
                    cost_usd: r
                        .try_get::<Option<f64>, _>("cost")
                        .map_err(db_err)?
                        .unwrap_or_default(),
                    errors: int("errors")? as u64,
                })
            })
            .collect()
    }

    /// Latency and time-to-first-token percentiles per model over the newest rows.
    pub async fn usage_latency(&self, filter: &UsageFilter) -> Result<Vec<Latency>, StoreError> {
        let (cond, binds) = filter.sql();
        let sql = format!(
            "SELECT model, latency_ms, ttft_ms FROM usage WHERE {cond} ORDER BY at DESC LIMIT {LATENCY_ROWS}"
        );
        let rows = self.fetch_filtered(&sql, &binds).await?;
        let mut by_model: BTreeMap<String, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
        for r in &rows {
            let model: String = r.try_get("model").map_err(db_err)?;
            let entry = by_model.entry(model).or_default();
            entry
                .0
                .push(r.try_get::<i64, _>("latency_ms").map_err(db_err)?);
            if let Some(t) = r.try_get::<Option<i64>, _>("ttft_ms").map_err(db_err)? {
                entry.1.push(t);
            }
        }
        Ok(by_model
            .into_iter()
            .map(|(model, (lat, ttft))| Latency {
                model,
                requests: lat.len() as u64,
                latency_ms: percentiles(lat),
                ttft_ms: (!ttft.is_empty()).then(|| percentiles(ttft)),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=100).rev().collect());
        assert_eq!((p.p50, p.p90, p.p99), (50, 90, 99));
        let one = percentiles(vec![7]);
        assert_eq!((one.p50, one.p99), (7, 7));
        assert_eq!(rank(&[], 50.0), 0);
    }
}
