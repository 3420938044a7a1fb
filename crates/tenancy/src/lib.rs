//! Tenancy: API keys of Parlance's own, their limits and budgets, and usage metering,
//! kept in a SQL store. No HTTP here: the server crate turns this into routes,
//! headers and error bodies.

pub mod keys;
pub mod limits;
pub mod responses;
pub mod shared_limits;
pub mod store;
pub mod tokens;
pub mod usage;
pub mod usage_stats;

use keys::{now_ms, KeyRecord};
use limits::Limiter;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::Store;
use usage::{Recorder, UsageRow};

/// How long a looked-up key is trusted before it is read again: revocation and edits
/// made elsewhere (another replica, the CLI) take effect within this.
const KEY_TTL: Duration = Duration::from_secs(1);

/// Why a presented Parlance key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefused {
    Unknown,
    Revoked,
    Expired,
}

/// What `POST /admin/keys` and `parlance keys create` ask for.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub name: String,
    #[serde(default)]
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub budget_tokens: Option<u64>,
    pub budget_usd: Option<f64>,
    /// Unix milliseconds.
    #[serde(skip)]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

pub struct Tenancy {
    pub store: Store,
    pub recorder: Recorder,
    pub limiter: Arc<Limiter>,
    /// Limits kept in Redis for several replicas (`--redis`).
    shared: Option<Arc<shared_limits::SharedLimiter>>,
    /// Bearer key of the admin API; `None`: the admin API is off.
    pub admin_key: Option<String>,
    cache: Mutex<HashMap<String, (Option<KeyRecord>, Instant)>>,
    /// Tokens and dollars spent per key, loaded once from the store, then kept current.
    spent: Mutex<HashMap<String, (u64, f64)>>,
    /// Whether the store holds any usable key: then every request needs one.
    has_keys: std::sync::atomic::AtomicBool,
    /// Signs access tokens; shared by every replica through the store.
    token_secret: String,
}

impl Tenancy {
    pub async fn open(db_url: &str, admin_key: Option<String>) -> Result<Arc<Tenancy>, String> {
        Tenancy::open_with(db_url, admin_key, None).await
    }

    /// Also keeps the limits in Redis when `redis_url` is given.
    pub async fn open_with(
        db_url: &str,
        admin_key: Option<String>,
        redis_url: Option<&str>,
    ) -> Result<Arc<Tenancy>, String> {
        let store = Store::open(db_url).await?;
        let limiter = Arc::new(Limiter::default());
        let shared = match redis_url {
            Some(url) => {
                Some(shared_limits::SharedLimiter::connect(url, Arc::clone(&limiter)).await?)
            }
            None => None,
        };
        let fresh: String = (0..4)
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        let token_secret = store.setting_or_insert("token_secret", fresh).await?;
        Ok(Arc::new(Tenancy {
            token_secret,
            recorder: Recorder::start(store.clone()),
            store,
            limiter,
            shared,
            admin_key,
            cache: Mutex::new(HashMap::new()),
            spent: Mutex::new(HashMap::new()),
            has_keys: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Lets a request of `key` through its limits (in Redis when configured).
    pub async fn admit(
        &self,
        key: &KeyRecord,
        estimate: u64,
    ) -> Result<(limits::Ticket, limits::RateHeaders), limits::Denied> {
        match &self.shared {
            Some(s) => s.admit(key, estimate).await,
            None => self.limiter.admit(key, estimate),
        }
    }

    /// Whether callers must present a key: once an admin key is set or any key exists.
    pub fn requires_keys(&self) -> bool {
        self.admin_key.is_some() || self.has_keys.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads again whether any unrevoked key exists (keys made by the CLI or another
    /// replica close an open server within the refresh period).
    pub async fn refresh_has_keys(&self) {
        if let Ok(any) = self.store.any_active_key().await {
            self.has_keys
                .store(any, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub async fn create_key(&self, spec: KeySpec) -> Result<(KeyRecord, String), String> {
        if spec.name.trim().is_empty() {
            return Err("a key needs a name".into());
        }
        let new = keys::generate();
        let record = KeyRecord {
            id: new.id,
            name: spec.name,
            models: spec.models,
            rpm: spec.rpm,
            tpm: spec.tpm,
            max_concurrent: spec.max_concurrent,
            budget_tokens: spec.budget_tokens,
            budget_usd: spec.budget_usd,
            expires_at: spec.expires_at_ms,
            metadata: spec.metadata,
            created_at: now_ms(),
            revoked_at: None,
            secret_hash: new.secret_hash,
        };
        self.store.insert_key(&record).await?;
        self.has_keys
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok((record, new.key))
    }

    /// The record of a presented key: `Ok(None)` when it is not a Parlance key at all
    /// (a static key, perhaps), an error when it is one that may not be used.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<KeyRecord>, KeyRefused> {
        if presented.starts_with(tokens::PREFIX) {
            let (id, expires) =
                tokens::verify(&self.token_secret, presented).ok_or(KeyRefused::Unknown)?;
            if expires <= now_ms() {
                return Err(KeyRefused::Expired);
            }
            let record = self.key(&id).await.ok_or(KeyRefused::Unknown)?;
            return usable(record).map(Some);
        }
        let Some((id, secret)) = keys::parse(presented) else {
            return Ok(None);
        };
        let record = self.key(id).await.ok_or(KeyRefused::Unknown)?;
        if !keys::same(&keys::hash(secret), &record.secret_hash) {
            return Err(KeyRefused::Unknown);
        }
        usable(record).map(Some)
    }

    /// GigaChat's OAuth: an access token for a key (never for another token), valid 30
    /// minutes or until the key expires, as `(token, expires_at ms)`.
    pub async fn issue_token(&self, presented_key: &str) -> Result<(String, i64), KeyRefused> {
        if presented_key.starts_with(tokens::PREFIX) {
            return Err(KeyRefused::Unknown);
        }
        let record = self
            .authenticate(presented_key)
            .await?
            .ok_or(KeyRefused::Unknown)?;
        let mut expires = now_ms() + tokens::LIFETIME_MS;
        if let Some(e) = record.expires_at {
            expires = expires.min(e);
        }
        Ok((
            tokens::issue(&self.token_secret, &record.id, expires),
            expires,
        ))
    }

    /// A key by id, from a cache at most [`KEY_TTL`] old.
    pub async fn key(&self, id: &str) -> Option<KeyRecord> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((k, at)) = cache.get(id) {
                if at.elapsed() < KEY_TTL {
                    return k.clone();
                }
            }
        }
        let fetched = match self.store.get_key(id).await {
            Ok(k) => k,
            Err(e) => {
                tracing::error!("key lookup failed: {e}");
                return None;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(id.to_string(), (fetched.clone(), Instant::now()));
        }
        fetched
    }

    /// Drops a key from the cache after it changed here.
    pub fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id);
        }
    }

    /// Tokens and dollars a key has spent.
    pub async fn spent(&self, id: &str) -> (u64, f64) {
        if let Some(s) = self.spent.lock().ok().and_then(|m| m.get(id).copied()) {
            return s;
        }
        let from_db = self.store.spent(id).await.unwrap_or_default();
        if let Ok(mut m) = self.spent.lock() {
            return *m.entry(id.to_string()).or_insert(from_db);
        }
        from_db
    }

    /// The budget a key has left: `Err` naming the one used up.
    pub async fn check_budget(&self, k: &KeyRecord) -> Result<(), String> {
        if k.budget_tokens.is_none() && k.budget_usd.is_none() {
            return Ok(());
        }
        let (tokens, usd) = self.spent(&k.id).await;
        if let Some(b) = k.budget_tokens.filter(|&b| tokens >= b) {
            return Err(format!(
                "this key's token budget of {b} is used up ({tokens} spent)"
            ));
        }
        if let Some(b) = k.budget_usd.filter(|&b| usd >= b) {
            return Err(format!(
                "this key's budget of ${b:.2} is used up (${usd:.4} spent)"
            ));
        }
        Ok(())
    }

    /// Queues a row without waiting and without needing a runtime (for `Drop`): its
    /// spend is counted now when the key's total is loaded, else read with it later.
    pub fn record_detached(&self, row: UsageRow) {
        if let Some(id) = &row.key_id {
            if let Ok(mut m) = self.spent.lock() {
                if let Some(e) = m.get_mut(id) {
                    e.0 += u64::from(row.prompt_tokens) + u64::from(row.completion_tokens);
                    e.1 += row.cost_usd;
                }
            }
        }
        self.recorder.record_later(row);
    }

    /// Stores a usage row (waiting for its commit when `wait`) and counts its spend.
    pub async fn record(&self, row: UsageRow, wait: bool) -> Result<(), String> {
        if let Some(id) = &row.key_id {
            let tokens = u64::from(row.prompt_tokens) + u64::from(row.completion_tokens);
            let current = self.spent(id).await;
            if let Ok(mut m) = self.spent.lock() {
                let e = m.entry(id.clone()).or_insert(current);
                e.0 += tokens;
                e.1 += row.cost_usd;
            }
        }
        if wait {
            self.recorder.record(row).await
        } else {
            self.recorder.record_later(row);
            Ok(())
        }
    }
}

/// A found key that may be used now.
fn usable(record: KeyRecord) -> Result<KeyRecord, KeyRefused> {
    if record.revoked_at.is_some() {
        return Err(KeyRefused::Revoked);
    }
    if record.expired(now_ms()) {
        return Err(KeyRefused::Expired);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_round_trip_through_sqlite_and_usage_is_grouped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let t = Tenancy::open(&url, None).await.unwrap();
        let (rec, key) = t
            .create_key(KeySpec {
                name: "alice".into(),
                models: vec!["m".into()],
                rpm: Some(5),
                budget_tokens: Some(100),
                ..KeySpec::default()
            })
            .await
            .unwrap();
        let got = t.authenticate(&key).await.unwrap().unwrap();
        assert_eq!(got.id, rec.id);
        assert_eq!(got.rpm, Some(5));
        assert!(got.may_use("m") && !got.may_use("other"));
        // The last character changed (to one it is not: a key may end in `x`).
        let last = if key.ends_with('x') { 'y' } else { 'x' };
        let wrong = format!("{}{last}", &key[..key.len() - 1]);
        assert_eq!(
            t.authenticate(&wrong).await.unwrap_err(),
            KeyRefused::Unknown
        );
        assert_eq!(t.authenticate("not-ours").await.unwrap(), None);

        for (i, status) in ["ok", "cancelled", "error:boom"].iter().enumerate() {
            let row = UsageRow {
                at: now_ms() - i as i64 * 86_400_000,
                request_id: format!("r{i}"),
                key_id: Some(rec.id.clone()),
                model: "m".into(),
                status: status.to_string(),
                prompt_tokens: 30,
                completion_tokens: 10,
                cost_usd: 0.5,
                ..UsageRow::default()
            };
            t.record(row, true).await.unwrap();
        }
        assert_eq!(t.spent(&rec.id).await, (120, 1.5));
        assert!(t
            .check_budget(&got)
            .await
            .unwrap_err()
            .contains("token budget"));
        let by_model = t
            .store
            .usage_totals(&usage::UsageFilter::default(), usage::UsageGroup::Model)
            .await
            .unwrap();
        assert_eq!(by_model.len(), 1);
        assert_eq!(
            (
                by_model[0].requests,
                by_model[0].errors,
                by_model[0].cancelled
            ),
            (3, 1, 1)
        );
        let by_day = t
            .store
            .usage_totals(&usage::UsageFilter::default(), usage::UsageGroup::Day)
            .await
            .unwrap();
        assert_eq!(by_day.len(), 3);
        assert!(by_day[0].group.starts_with("20"), "{:?}", by_day[0]);

        assert!(t.store.revoke_key(&rec.id).await.unwrap());
        t.forget(&rec.id);
        assert_eq!(t.authenticate(&key).await.unwrap_err(), KeyRefused::Revoked);
        // The secret is nowhere in the database file.
        let secret = key.rsplit('-').next().unwrap();
        drop(t);
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }
}
