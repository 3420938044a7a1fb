//! Keys and usage in SQL: SQLite by default (`sqlite://PATH`, WAL), Postgres with the
//! same schema (`postgres://...`). sqlx's `Any` driver runs the same queries on both,
//! written in the dialect both share (`$N` placeholders, times as Unix milliseconds).

pub use crate::error::StoreError;
use crate::keys::{now_ms, KeyRecord};
use crate::migrations::MIGRATIONS;
use crate::usage::{
    usage_insert_sql, UsageFilter, UsageGroup, UsageRow, UsageTotals, UsageValue,
    USAGE_ROWS_PER_STATEMENT,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub url: String,
    /// SQLite: what the background checkpoint and the usage writer tell each other
    /// (see `wal`).
    pub(crate) wal: std::sync::Arc<crate::wal::WalFlags>,
}

pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::from(e)
}

/// A pool on `url`, each connection set up for SQLite's WAL when `is_sqlite`.
async fn connect(url: &str, is_sqlite: bool, max: u32) -> Result<AnyPool, StoreError> {
    AnyPoolOptions::new()
        .max_connections(max)
        // A SQLite connection is a file handle in this process: it cannot go stale, so
        // the round trip to its worker thread that sqlx makes before every checkout
        // (a ping) buys nothing; a network database keeps it.
        .test_before_acquire(!is_sqlite)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if is_sqlite {
                    // With WAL, NORMAL keeps every committed row through a killed
                    // process (only a power loss can take the last ones) and spares
                    // an fsync per group commit.
                    sqlx::query("PRAGMA synchronous=NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout=5000")
                        .execute(&mut *conn)
                        .await?;
                    // No checkpoint inside a commit: SQLite's automatic one runs in
                    // the committing call and its writes and fsync stalled every
                    // request waiting on that commit (p99 +10 ms at 1,000 req/s).
                    // A background task checkpoints instead (`wal`).
                    sqlx::query("PRAGMA wal_autocheckpoint=0")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query(crate::wal::WAL_SIZE_LIMIT)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| StoreError::Open {
            url: redact(url),
            source: std::sync::Arc::new(e),
        })
}

impl Store {
    /// Opens (creating if needed) the database at `url` and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let url = if is_sqlite && !url.contains("mode=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_string()
        };
        // Migrations run on a pool of their own, closed before serving: a connection
        // that has read the schema before an `ALTER TABLE` keeps it, and sqlx's SQLite
        // driver panics when such a connection's `SELECT *` is re-prepared with more
        // columns (a crashed worker and a lost query).
        let migrating = Store {
            pool: connect(&url, is_sqlite, 1).await?,
            url: url.clone(),
            wal: std::sync::Arc::default(),
        };
        if is_sqlite {
            // WAL: readers never wait for the usage writer, and a committed row survives
            // the process being killed.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&migrating.pool)
                .await
                .map_err(db_err)?;
        }
        migrating.migrate().await?;
        migrating.pool.close().await;
        let pool = connect(&url, is_sqlite, if is_sqlite { 4 } else { 16 }).await?;
        let store = Store {
            pool,
            url,
            wal: std::sync::Arc::default(),
        };
        if is_sqlite {
            crate::wal::checkpoint_in_background(
                store.pool.clone(),
                std::sync::Arc::clone(&store.wal),
            );
        }
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // Two replicas creating it at once can collide in Postgres' catalog: try again.
        let mut created = Ok(());
        for _ in 0..3 {
            created =
                sqlx::query("CREATE TABLE IF NOT EXISTS parlance_schema (version BIGINT NOT NULL)")
                    .execute(&self.pool)
                    .await
                    .map(|_| ());
            if created.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        created.map_err(db_err)?;
        let done: i64 = sqlx::query("SELECT COUNT(*) FROM parlance_schema")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db_err)?;
        for (i, step) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            if self.url.starts_with("postgres") {
                // Replicas starting together: one migrates, the others wait, then skip.
                sqlx::query("SELECT pg_advisory_xact_lock(7240573)")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let now_done: i64 = sqlx::query("SELECT COUNT(*) FROM parlance_schema")
                    .fetch_one(&mut *tx)
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(db_err)?;
                if now_done > i as i64 {
                    continue;
                }
            }
            for stmt in step.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *tx).await.map_err(db_err)?;
            }
            sqlx::query("INSERT INTO parlance_schema (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        }
        Ok(())
    }

    /// The file a SQLite store lives in; `None` for other stores.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        let rest = self
            .url
            .strip_prefix("sqlite://")
            .or_else(|| self.url.strip_prefix("sqlite:"))?;
        let path = rest
            .split('?')
            .next()
            .filter(|p| !p.is_empty() && *p != ":memory:")?;
        Some(std::path::PathBuf::from(path))
    }

    /// A setting, made from `make` the first time any replica asks for it.
    pub async fn setting_or_insert(&self, name: &str, make: String) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(make)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db_err)
    }

    /// Also marks the store as one that requires keys from now on.
    pub async fn insert_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        self.setting_or_insert("keys_required", "1".into()).await?;
        self.save_key(k).await
    }

    /// Writes every field but the id, the secret and the creation time.
    pub async fn update_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        self.save_key(k).await
    }

    /// One statement for both: a new key is inserted whole; an existing one keeps its
    /// secret and creation time.
    async fn save_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO keys (id, name, secret_hash, models, rpm, tpm, max_concurrent, budget_tokens, budget_usd, expires_at, metadata, created_at, revoked_at, user_id, team_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, models = excluded.models, rpm = excluded.rpm,
             tpm = excluded.tpm, max_concurrent = excluded.max_concurrent, budget_tokens = excluded.budget_tokens,
             budget_usd = excluded.budget_usd, expires_at = excluded.expires_at, metadata = excluded.metadata,
             revoked_at = excluded.revoked_at",
        )
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.secret_hash)
        .bind(serde_json::to_string(&k.models).unwrap_or_default())
        .bind(k.rpm.map(i64::from))
        .bind(k.tpm.map(i64::from))
        .bind(k.max_concurrent.map(i64::from))
        .bind(k.budget_tokens.map(|v| v as i64))
        .bind(k.budget_usd)
        .bind(k.expires_at)
        .bind(serde_json::to_string(&k.metadata).unwrap_or_default())
        .bind(k.created_at)
        .bind(k.revoked_at)
        .bind(k.user_id.clone())
        .bind(k.team_id.clone())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| key_from_row(&r)).transpose()
    }

    /// Whether callers need a key: once the store has held one, forever. A server whose
    /// last key was revoked, expired or deleted must not fall back to being open, so this
    /// is a marker written with the first key, not a count of the usable ones.
    pub async fn keys_required(&self) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT name FROM settings WHERE name = 'keys_required'
             UNION ALL SELECT id FROM keys LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(row.is_some())
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM keys ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(key_from_row).collect()
    }

    /// Writes rows in as few statements as the placeholder limits allow, each one
    /// atomic on its own (the usage writer's group commit: no BEGIN/COMMIT round trips).
    pub async fn insert_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        let mut conn = self.writer().await?;
        Store::insert_usage_on(&mut conn, rows).await
    }

    /// A connection of the pool's own to hold for a writer: one checkout for many
    /// statements, not one each.
    pub(crate) async fn writer(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        self.pool.acquire().await.map_err(db_err)
    }

    /// `insert_usage` on a connection the caller holds (the usage writer's).
    pub(crate) async fn insert_usage_on(
        conn: &mut sqlx::AnyConnection,
        rows: &[UsageRow],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(USAGE_ROWS_PER_STATEMENT) {
            let sql = usage_insert_sql(chunk.len());
            let mut q = sqlx::query(&sql);
            for u in chunk {
                for v in u.values() {
                    q = match v {
                        UsageValue::Int(i) => q.bind(i),
                        UsageValue::Real(f) => q.bind(f),
                        UsageValue::Text(t) => q.bind(t.to_string()),
                        UsageValue::MaybeText(t) => q.bind(t.map(str::to_string)),
                        UsageValue::MaybeInt(i) => q.bind(i),
                    };
                }
            }
            q.execute(&mut *conn).await.map_err(db_err)?;
        }
        Ok(())
    }

    /// Runs a query whose `$N` placeholders are a usage filter's binds.
    pub(crate) async fn fetch_filtered(
        &self,
        sql: &str,
        binds: &[crate::usage::Bind],
    ) -> Result<Vec<AnyRow>, StoreError> {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = b.bind_to(q);
        }
        q.fetch_all(&self.pool).await.map_err(db_err)
    }

    /// Rows matching `filter`, newest first (for tests and exports).
    pub async fn usage_rows(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError> {
        let (cond, binds) = filter.sql();
        let sql = format!("SELECT * FROM usage WHERE {cond} ORDER BY at DESC");
        let rows = self.fetch_filtered(&sql, &binds).await?;
        rows.iter().map(usage_from_row).collect()
    }

    /// Totals per group (`key`, `model` or `day`).
    pub async fn usage_totals(
        &self,
        filter: &UsageFilter,
        group: UsageGroup,
    ) -> Result<Vec<UsageTotals>, StoreError> {
        let (cond, binds) = filter.sql();
        let group_by = group;
        let by = match group {
            UsageGroup::Key => "COALESCE(key_id, '-')",
            UsageGroup::Model => "model",
            UsageGroup::Day => "CAST(at / 86400000 AS TEXT)",
        };
        let sql = format!(
            "SELECT {by} AS g, COUNT(*) AS requests, CAST(SUM(prompt_tokens) AS BIGINT) AS p,
             CAST(SUM(completion_tokens) AS BIGINT) AS c, CAST(SUM(cached_tokens) AS BIGINT) AS ca,
             CAST(SUM(reasoning_tokens) AS BIGINT) AS r, SUM(cost_usd) AS cost,
             CAST(SUM(CASE WHEN status LIKE 'error%' THEN 1 ELSE 0 END) AS BIGINT) AS errors,
             CAST(SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS BIGINT) AS cancelled
             FROM usage WHERE {cond} GROUP BY {by} ORDER BY {by}"
        );
        let rows = self.fetch_filtered(&sql, &binds).await?;
        rows.iter()
            .map(|r| {
                let int = |c: &str| -> Result<i64, sqlx::Error> {
                    r.try_get::<Option<i64>, _>(c)
                        .map(Option::unwrap_or_default)
                };
                let mut group: String = r.try_get("g").map_err(db_err)?;
                if group_by == UsageGroup::Day {
                    group = day_string(group.parse().unwrap_or_default());
                }
                Ok(UsageTotals {
                    group,
                    requests: int("requests").map_err(db_err)? as u64,
                    prompt_tokens: int("p").map_err(db_err)? as u64,
                    completion_tokens: int("c").map_err(db_err)? as u64,
                    cached_tokens: int("ca").map_err(db_err)? as u64,
                    reasoning_tokens: int("r").map_err(db_err)? as u64,
                    cost_usd: r
                        .try_get::<Option<f64>, _>("cost")
                        .map_err(db_err)?
                        .unwrap_or_default(),
                    errors: int("errors").map_err(db_err)? as u64,
                    cancelled: int("cancelled").map_err(db_err)? as u64,
                })
            })
            .collect()
    }

    /// Tokens and money spent so far by a key, or by a subject of several keys
    /// (see [`crate::subjects`]): `u:ID` all of a user's keys, `t:ID` a team's keys,
    /// `pay:u:ID` a user's own (non-team) keys.
    pub async fn spent(&self, id: &str) -> Result<(u64, f64), StoreError> {
        let (cond, bind) = crate::subjects::spend_condition(id);
        let r = sqlx::query(&format!(
            "SELECT CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT) AS t, SUM(cost_usd) AS c FROM usage WHERE {cond}"
        ))
        .bind(bind)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        let tokens: Option<i64> = r.try_get("t").map_err(db_err)?;
        let cost: Option<f64> = r.try_get("c").map_err(db_err)?;
        Ok((tokens.unwrap_or_default() as u64, cost.unwrap_or_default()))
    }
}

/// `YYYY-MM-DD` of a day number since the Unix epoch (civil-from-days, proleptic Gregorian).
/// Unix seconds as RFC 3339 in UTC (`2026-12-05T07:29:49Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        day_string(days),
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub fn day_string(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A database URL with its password hidden, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub(crate) fn key_from_row(r: &AnyRow) -> Result<KeyRecord, StoreError> {
    let opt_u32 = |c: &str| -> Result<Option<u32>, StoreError> {
        Ok(r.try_get::<Option<i64>, _>(c)
            .map_err(db_err)?
            .map(|v| v.clamp(0, i64::from(u32::MAX)) as u32))
    };
    let models: String = r.try_get("models").map_err(db_err)?;
    let metadata: String = r.try_get("metadata").map_err(db_err)?;
    Ok(KeyRecord {
        id: r.try_get("id").map_err(db_err)?,
        name: r.try_get("name").map_err(db_err)?,
        secret_hash: r.try_get("secret_hash").map_err(db_err)?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        rpm: opt_u32("rpm")?,
        tpm: opt_u32("tpm")?,
        max_concurrent: opt_u32("max_concurrent")?,
        budget_tokens: r
            .try_get::<Option<i64>, _>("budget_tokens")
            .map_err(db_err)?
            .map(|v| v.max(0) as u64),
        budget_usd: r.try_get("budget_usd").map_err(db_err)?,
        expires_at: r.try_get("expires_at").map_err(db_err)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        created_at: r.try_get("created_at").map_err(db_err)?,
        revoked_at: r.try_get("revoked_at").map_err(db_err)?,
        user_id: r.try_get("user_id").map_err(db_err)?,
        team_id: r.try_get("team_id").map_err(db_err)?,
    })
}

fn usage_from_row(r: &AnyRow) -> Result<UsageRow, StoreError> {
    let u32_of = |c: &str| -> Result<u32, StoreError> {
        Ok(r.try_get::<i64, _>(c)
            .map_err(db_err)?
            .clamp(0, i64::from(u32::MAX)) as u32)
    };
    Ok(UsageRow {
        at: r.try_get("at").map_err(db_err)?,
        request_id: r.try_get("request_id").map_err(db_err)?,
        key_id: r.try_get("key_id").map_err(db_err)?,
        model: r.try_get("model").map_err(db_err)?,
        deployment: r.try_get("deployment").map_err(db_err)?,
        front_door: r.try_get("front_door").map_err(db_err)?,
        streamed: r.try_get::<i64, _>("streamed").map_err(db_err)? != 0,
        status: r.try_get("status").map_err(db_err)?,
        prompt_tokens: u32_of("prompt_tokens")?,
        completion_tokens: u32_of("completion_tokens")?,
        cached_tokens: u32_of("cached_tokens")?,
        reasoning_tokens: u32_of("reasoning_tokens")?,
        cost_usd: r.try_get("cost_usd").map_err(db_err)?,
        latency_ms: r.try_get("latency_ms").map_err(db_err)?,
        ttft_ms: r.try_get("ttft_ms").map_err(db_err)?,
        estimated: r.try_get::<i64, _>("estimated").map_err(db_err)? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_dates() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(20_415), "2025-11-23");
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://***@h:5432/db"
        );
    }
}
