//! Tenancy: API keys of Parlance's own, their limits and budgets, and usage metering,
//! kept in a SQL store. No HTTP here: the server crate turns this into routes,
//! headers and error bodies.

// An index out of range is a panic in a request; outside tests, use `get` or a pattern.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod accounts;
pub mod budget;
mod error;
pub mod keys;
pub mod limits;
mod migrations;
pub mod responses;
pub mod shared_limits;
pub mod store;
pub mod subjects;
pub mod tokens;
pub mod usage;
pub mod usage_stats;
mod wal;

pub use error::{CreateKeyError, OpenError, StoreError};

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

/// Found keys cached at most: beyond this, stale ones are dropped, then lookups go
/// uncached until the cache has room (every entry is at most [`KEY_TTL`] old).
const KEY_CACHE_MAX: usize = 10_000;

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
    /// The account it is made for (self-service); set by the server, never by a body.
    #[serde(skip)]
    pub user_id: Option<String>,
    /// The team it is made for (a team key); set by the server.
    #[serde(skip)]
    pub team_id: Option<String>,
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
    /// Tokens and dollars spent per key (loaded once from the store, then kept current)
    /// and held by requests in flight.
    spent: budget::SpendMap,
    /// Whether the store has ever held a key: then every request needs one.
    has_keys: std::sync::atomic::AtomicBool,
    /// Signs access tokens; derived from the server secret, never stored.
    token_secret: String,
    /// Failed sign-ins per account and address.
    pub throttle: accounts::password::Throttle,
    /// Users', teams' and balances' limits as subjects (see [`subjects`]), briefly cached.
    subject_cache: Mutex<HashMap<String, (Option<KeyRecord>, Instant)>>,
    /// Keys of accounts spend their payer's prepaid credit.
    prepaid: std::sync::atomic::AtomicBool,
}

impl Tenancy {
    pub async fn open(db_url: &str, admin_key: Option<String>) -> Result<Arc<Tenancy>, OpenError> {
        Tenancy::open_with(db_url, admin_key, None, None).await
    }

    /// Also keeps the limits in Redis when `redis_url` is given. `secret` signs access
    /// tokens (every replica needs the same); without one it is the admin key, else a
    /// file beside a SQLite store, else made for this process alone.
    pub async fn open_with(
        db_url: &str,
        admin_key: Option<String>,
        redis_url: Option<&str>,
        secret: Option<String>,
    ) -> Result<Arc<Tenancy>, OpenError> {
        let store = Store::open(db_url).await?;
        let limiter = Arc::new(Limiter::default());
        let shared = match redis_url {
            Some(url) => {
                Some(shared_limits::SharedLimiter::connect(url, Arc::clone(&limiter)).await?)
            }
            None => None,
        };
        let server_secret = match (secret, &admin_key, store.sqlite_path()) {
            (Some(s), _, _) => s,
            (None, Some(admin), _) => admin.clone(),
            (None, None, Some(path)) => tokens::secret_beside(&path)?,
            (None, None, None) => {
                tracing::warn!("no --secret: access tokens (GigaChat OAuth) are accepted only by the replica that issued them, until it restarts");
                tokens::fresh_secret()
            }
        };
        let token_secret = tokens::signing_key(&server_secret);
        Ok(Arc::new(Tenancy {
            token_secret,
            recorder: Recorder::start(store.clone()),
            store,
            limiter,
            shared,
            admin_key,
            cache: Mutex::new(HashMap::new()),
            spent: budget::SpendMap::default(),
            has_keys: std::sync::atomic::AtomicBool::new(false),
            throttle: accounts::password::Throttle::default(),
            subject_cache: Mutex::new(HashMap::new()),
            prepaid: std::sync::atomic::AtomicBool::new(false),
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

    /// Whether callers must present a key: once an admin key is set or the store has
    /// ever held a key (revoking or expiring the last one never reopens the server).
    pub fn requires_keys(&self) -> bool {
        self.admin_key.is_some() || self.has_keys.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads again whether the store requires keys (keys made by the CLI or another
    /// replica close an open server within the refresh period). Only ever closes: a
    /// failed or stale read never opens a server that was closed.
    pub async fn refresh_has_keys(&self) {
        if let Ok(true) = self.store.keys_required().await {
            self.has_keys
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub async fn create_key(&self, spec: KeySpec) -> Result<(KeyRecord, String), CreateKeyError> {
        if spec.name.trim().is_empty() {
            return Err(CreateKeyError::NoName);
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
            user_id: spec.user_id,
            team_id: spec.team_id,
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
            // Never issued for longer: a token claiming more was not made here.
            if expires > now_ms() + tokens::LIFETIME_MS + 60_000 {
                return Err(KeyRefused::Unknown);
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
        // Only found keys are cached: ids are the caller's choice, and caching misses let
        // random ids grow memory without bound. Stale entries go when the cache is full.
        if let (Some(found), Ok(mut cache)) = (&fetched, self.cache.lock()) {
            if cache.len() >= KEY_CACHE_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < KEY_TTL);
            }
            if cache.len() < KEY_CACHE_MAX {
                cache.insert(id.to_string(), (Some(found.clone()), Instant::now()));
            }
        }
        fetched
    }

    /// How many key lookups are cached (bounded by [`KEY_CACHE_MAX`]).
    pub fn cached_keys(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }

    /// Drops a key from the cache after it changed here.
    pub fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id);
        }
    }

    /// Tokens and dollars a key has spent.
    pub async fn spent(&self, id: &str) -> (u64, f64) {
        let s = self.spend(id).await;
        (s.tokens, s.usd)
    }

    /// A key's spend, loaded from the store the first time.
    async fn spend(&self, id: &str) -> budget::Spend {
        if let Some(s) = self.spent.lock().ok().and_then(|m| m.get(id).copied()) {
            return s;
        }
        let (tokens, usd) = self.store.spent(id).await.unwrap_or_default();
        let loaded = budget::Spend {
            tokens,
            usd,
            ..budget::Spend::default()
        };
        match self.spent.lock() {
            Ok(mut m) => *m.entry(id.to_string()).or_insert(loaded),
            Err(_) => loaded,
        }
    }

    /// Holds `want` (capped at what is left) against the key's budgets until the hold
    /// drops, or says which budget is used up. Keys without budgets hold nothing.
    pub async fn reserve_budget(
        &self,
        k: &KeyRecord,
        want: budget::Estimate,
    ) -> Result<budget::Hold, budget::Exhausted> {
        if k.budget_tokens.is_none() && k.budget_usd.is_none() {
            return Ok(budget::Hold::none());
        }
        let mut mirror = None;
        if let Some(shared) = &self.shared {
            if let Some(answer) = shared.reserve_budget(k, want, &self.store).await {
                return answer;
            }
            // Redis unreachable: this replica's own counters, as for the rate limits,
            // and the spend sent to Redis when the request ends.
            mirror = Some(shared.spend_mirror(&k.id));
        }
        self.spend(&k.id).await;
        let mut m = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.entry(k.id.clone()).or_default();
        let budgets = budget::Budgets::of(k);
        let held = budget::hold_for(
            &budgets,
            (s.tokens, s.usd),
            (s.held_tokens, s.held_usd),
            want,
            false,
        )?;
        s.held_tokens += held.tokens;
        s.held_usd += held.usd;
        Ok(budget::Hold(budget::HoldKind::Local {
            spent: std::sync::Arc::clone(&self.spent),
            key: k.id.clone(),
            budgets,
            held,
            mirror,
            actual: budget::Estimate::default(),
            counts_spend: k.id.contains(':'),
        }))
    }

    /// Queues a row without waiting and without needing a runtime (for `Drop`): its
    /// spend is counted now when the key's total is loaded, else read with it later.
    pub fn record_detached(&self, row: UsageRow) {
        if let Some(id) = &row.key_id {
            if let Ok(mut m) = self.spent.lock() {
                if let Some(e) = m.get_mut(id) {
                    e.tokens += u64::from(row.prompt_tokens) + u64::from(row.completion_tokens);
                    e.usd += row.cost_usd;
                }
            }
        }
        self.recorder.record_later(row);
    }

    /// Stores a usage row (waiting for its commit when `wait`) and counts its spend.
    pub async fn record(&self, row: UsageRow, wait: bool) -> Result<(), StoreError> {
        if let Some(id) = &row.key_id {
            let tokens = u64::from(row.prompt_tokens) + u64::from(row.completion_tokens);
            self.spend(id).await;
            if let Ok(mut m) = self.spent.lock() {
                let e = m.entry(id.clone()).or_default();
                e.tokens += tokens;
                e.usd += row.cost_usd;
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
    async fn concurrent_holds_never_promise_more_than_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        let t = Tenancy::open(&url, None).await.unwrap();
        let (rec, _) = t
            .create_key(KeySpec {
                name: "b".into(),
                budget_tokens: Some(300),
                ..KeySpec::default()
            })
            .await
            .unwrap();
        let want = budget::Estimate {
            tokens: 120,
            usd: 0.0,
        };
        let mut held = Vec::new();
        for _ in 0..30 {
            if let Ok(h) = t.reserve_budget(&rec, want).await {
                held.push(h);
            }
        }
        // 120 + 120 + the 60 left.
        assert_eq!(held.len(), 3);
        // Grown past what is left while others hold some: refused.
        assert!(held[2].resize(want).await.is_err());
        held.pop();
        assert!(t.reserve_budget(&rec, want).await.is_ok());
        // Spend counted by its row, then the hold ends: what is left is what was not spent.
        let row = UsageRow {
            key_id: Some(rec.id.clone()),
            prompt_tokens: 250,
            ..UsageRow::default()
        };
        t.record(row, true).await.unwrap();
        held.clear();
        let h = t.reserve_budget(&rec, want).await.unwrap();
        let budget::HoldKind::Local { held: got, .. } = &h.0 else {
            panic!("a local hold")
        };
        assert_eq!(got.tokens, 50);
    }

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
        let want = budget::Estimate {
            tokens: 10,
            usd: 0.0,
        };
        assert!(t
            .reserve_budget(&got, want)
            .await
            .err()
            .unwrap()
            .to_string()
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
        // A genuine signature on a lifetime longer than any issued is refused.
        let ten_years = tokens::issue(&t.token_secret, &rec.id, now_ms() + 315_360_000_000);
        assert_eq!(
            t.authenticate(&ten_years).await.unwrap_err(),
            KeyRefused::Unknown
        );
        // Unknown ids are not cached (callers choose them).
        for i in 0..50 {
            let fake = format!("sk-prl-{:012}-{}", i, "a".repeat(32));
            assert_eq!(
                t.authenticate(&fake).await.unwrap_err(),
                KeyRefused::Unknown
            );
        }
        assert_eq!(t.cached_keys(), 1);
        // Its only key revoked, the store still requires keys, also when opened again.
        t.refresh_has_keys().await;
        assert!(t.requires_keys());
        let again = Tenancy::open(&url, None).await.unwrap();
        assert!(!again.requires_keys());
        again.refresh_has_keys().await;
        assert!(again.requires_keys());
        drop(again);
        // The secret is nowhere in the database file.
        let secret = key.rsplit('-').next().unwrap();
        // Nor is the token-signing key (a copy of the database must not mint tokens).
        let signing = t.token_secret.clone();
        drop(t);
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
            assert!(!bytes
                .windows(signing.len())
                .any(|w| w == signing.as_bytes()));
        }
    }
}
