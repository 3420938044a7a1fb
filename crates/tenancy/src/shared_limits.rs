//! Limits shared by several replicas: the same sliding windows as [`crate::limits`],
//! kept in Redis and checked and updated by one Lua script, so a 100-RPM key gets 100
//! requests a minute across all replicas together, not 100 on each.
//!
//! While Redis cannot be reached (each call waits at most [`REDIS_TIMEOUT`]), every
//! replica falls back to its own in-memory limiter with the key's full limits: requests
//! keep flowing and are never stalled or lost (usage goes to the database either way),
//! at the price of up to N times the limit over N replicas until Redis is back.

use crate::budget::{Budgets, Estimate, Exhausted, Hold, HoldKind};
use crate::keys::KeyRecord;
use crate::limits::{Denied, Limiter, RateHeaders, Refused, ResizeTokens, Ticket};
use crate::store::Store;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
const WINDOW_MS: i64 = 60_000;

mod batch;
mod scripts;
use batch::{AdmitArgs, Batcher};
pub use scripts::LEASE;
use scripts::{RENEW, RESERVE, RESIZE, SETTLE_BUDGET};

pub struct SharedLimiter {
    conn: ConnectionManager,
    /// Admissions and token settlements, grouped per round to Redis.
    batcher: Batcher,
    reserve: redis::Script,
    settle_budget: redis::Script,
    resize: redis::Script,
    renew: redis::Script,
    /// Leases this replica holds, as (zset, member): renewed until released.
    leases: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Makes reservation ids unique across replicas.
    replica: u64,
    next: AtomicU64,
    fallback: Arc<Limiter>,
}

fn keys_of(id: &str) -> [String; 5] {
    [
        format!("parlance:{{{id}}}:req"),
        format!("parlance:{{{id}}}:tok"),
        format!("parlance:{{{id}}}:tokv"),
        format!("parlance:{{{id}}}:flight"),
        format!("parlance:{{{id}}}:toksum"),
    ]
}

fn budget_keys_of(id: &str) -> [String; 3] {
    [
        format!("parlance:{{{id}}}:spent"),
        format!("parlance:{{{id}}}:holds"),
        format!("parlance:{{{id}}}:holdlease"),
    ]
}

impl SharedLimiter {
    pub async fn connect(
        url: &str,
        fallback: Arc<Limiter>,
    ) -> Result<Arc<SharedLimiter>, crate::OpenError> {
        let failed = |why: String| crate::OpenError::Redis {
            url: url.to_string(),
            why,
        };
        let client = redis::Client::open(url).map_err(|e| failed(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| failed("no answer within 5 s".into()))?
        .map_err(|e| failed(e.to_string()))?;
        Ok(Arc::new(SharedLimiter {
            batcher: Batcher::start(conn.clone(), LEASE.as_millis() as u64),
            conn,
            reserve: redis::Script::new(RESERVE),
            settle_budget: redis::Script::new(SETTLE_BUDGET),
            renew: redis::Script::new(RENEW),
            resize: redis::Script::new(RESIZE),
            leases: std::sync::Mutex::default(),
            replica: rand::random(),
            next: AtomicU64::new(0),
            fallback,
        })
        .start_renewing())
    }

    /// Renews this replica's leases a few times per [`LEASE`], while it lives.
    fn start_renewing(self: Arc<Self>) -> Arc<Self> {
        let weak = Arc::downgrade(&self);
        parlance_core::task::spawn("redis lease renewal", async move {
            let mut tick = tokio::time::interval(LEASE / 4);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let held: Vec<(String, String)> = this
                    .leases
                    .lock()
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default();
                if held.is_empty() {
                    continue;
                }
                let mut inv = this.renew.prepare_invoke();
                inv.arg(LEASE.as_millis() as u64);
                for (zset, member) in &held {
                    inv.key(zset).arg(member);
                }
                let mut conn = this.conn.clone();
                background("lease renewal", inv.invoke_async::<i64>(&mut conn)).await;
            }
        });
        self
    }

    fn hold_lease(&self, zset: &str, member: &str) {
        if let Ok(mut l) = self.leases.lock() {
            l.insert((zset.to_string(), member.to_string()));
        }
    }

    fn drop_lease(&self, zset: &str, member: &str) {
        if let Ok(mut l) = self.leases.lock() {
            l.remove(&(zset.to_string(), member.to_string()));
        }
    }

    fn new_id(&self) -> String {
        format!(
            "{:x}-{}",
            self.replica,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub async fn admit(
        self: &Arc<Self>,
        key: &KeyRecord,
        estimate: u64,
    ) -> Result<(Ticket, RateHeaders), Denied> {
        if key.rpm.is_none() && key.tpm.is_none() && key.max_concurrent.is_none() {
            return self.fallback.admit(key, estimate);
        }
        let reserve = key.tpm.map_or(0, |tpm| estimate.min(u64::from(tpm)));
        let id = self.new_id();
        let k = Arc::new(keys_of(&key.id));
        let args = AdmitArgs {
            rpm: key.rpm.unwrap_or(0),
            tpm: key.tpm.unwrap_or(0),
            max_concurrent: key.max_concurrent.unwrap_or(0),
            reserve,
            id: id.clone(),
        };
        let v = match self.batcher.admit(Arc::clone(&k), args).await {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!(
                    "Redis unavailable ({why}): limiting with this replica's own counters"
                );
                return self.fallback.admit(key, estimate);
            }
        };
        let reset = |oldest: i64| {
            Duration::from_millis((oldest + WINDOW_MS - v.now).clamp(0, WINDOW_MS) as u64)
        };
        let headers = RateHeaders {
            requests: key.rpm.map(|l| {
                (
                    u64::from(l),
                    u64::from(l).saturating_sub(v.requests),
                    reset(v.oldest_request),
                )
            }),
            tokens: key.tpm.map(|l| {
                (
                    u64::from(l),
                    u64::from(l).saturating_sub(v.tokens),
                    reset(v.oldest_tokens),
                )
            }),
        };
        let denied = |which, limit: u64, wait: Duration| Denied {
            which,
            limit,
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            headers: headers.clone(),
        };
        match v.verdict {
            0 => Ok((self.admitted_ticket(key, &k, id), headers)),
            1 => Err(denied(
                Refused::Requests,
                u64::from(key.rpm.unwrap_or(0)),
                reset(v.oldest_request),
            )),
            2 => Err(denied(
                Refused::Tokens,
                u64::from(key.tpm.unwrap_or(0)),
                reset(v.oldest_tokens),
            )),
            _ => Err(denied(
                Refused::Concurrency,
                u64::from(key.max_concurrent.unwrap_or(0)),
                Duration::from_secs(1),
            )),
        }
    }

    /// The ticket of an admitted request: it settles its tokens, gives back its place in
    /// flight, and takes its request back when cancelled.
    fn admitted_ticket(self: &Arc<Self>, key: &KeyRecord, k: &[String; 5], id: String) -> Ticket {
        let this = Arc::clone(self);
        // The tokens hash and sum, as the settlement script takes them.
        let tokens = Arc::new([k[2].clone(), k[4].clone()]);
        let inflight = k[3].clone();
        let settle_id = id.clone();
        let counts_tokens = key.tpm.is_some();
        let counts_flight = key.max_concurrent.is_some();
        if counts_flight {
            self.hold_lease(&inflight, &id);
        }
        let release_id = id.clone();
        let resize = counts_tokens.then(|| self.resizer(k, &id, key.tpm.unwrap_or(0)));
        Ticket::remote(
            resize,
            Box::new(move |actual| {
                if counts_tokens {
                    this.batcher
                        .settle(Arc::clone(&tokens), settle_id.clone(), actual);
                }
            }),
            Box::new({
                let this = Arc::clone(self);
                move || {
                    if counts_flight {
                        this.spawn_release(inflight, release_id)
                    }
                }
            }),
            Box::new({
                let this = Arc::clone(self);
                let (requests, id) = (k[0].clone(), id.clone());
                move || this.spawn_zrem(requests, id)
            }),
        )
    }

    fn resizer(self: &Arc<Self>, k: &[String; 5], id: &str, tpm: u32) -> ResizeTokens {
        let this = Arc::clone(self);
        let (tok_hash, tok_sum, id) = (k[2].clone(), k[4].clone(), id.to_string());
        Box::new(move |estimate| {
            let new = estimate.min(u64::from(tpm));
            let mut conn = this.conn.clone();
            let script = this.resize.clone();
            let (tok_hash, tok_sum, id) = (tok_hash.clone(), tok_sum.clone(), id.clone());
            Box::pin(async move {
                let mut inv = script.prepare_invoke();
                inv.key(&tok_hash).key(&tok_sum).arg(&id).arg(new).arg(tpm);
                match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async::<Vec<i64>>(&mut conn))
                    .await
                {
                    Ok(Ok(v)) if v.first() == Some(&1) => Err(u64::from(tpm)),
                    // Unreachable: the first reservation stands.
                    _ => Ok(()),
                }
            })
        })
    }

    fn spawn_release(&self, inflight: String, id: String) {
        self.drop_lease(&inflight, &id);
        self.spawn_zrem(inflight, id);
    }

    /// Removes one member from a sorted set, in the background.
    fn spawn_zrem(&self, set: String, id: String) {
        let (inflight, id) = (set, id);
        let mut conn = self.conn.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left (shutting down): the lease lapses by itself
        };
        rt.spawn(async move {
            let cmd = redis::cmd("ZREM").arg(&inflight).arg(&id).clone();
            background("place release", cmd.query_async::<i64>(&mut conn)).await;
        });
    }

    /// Holds a budget in Redis; `None` when Redis cannot be reached (the caller falls
    /// back to this replica's own counters).
    pub(crate) async fn reserve_budget(
        self: &Arc<Self>,
        key: &KeyRecord,
        want: Estimate,
        store: &Store,
    ) -> Option<Result<Hold, Exhausted>> {
        let id = self.new_id();
        let budgets = Budgets::of(key);
        if let Err(e) = self
            .hold_in_redis(&key.id, budgets, want, &id, store)
            .await?
        {
            return Some(Err(e));
        }
        self.hold_lease(&budget_keys_of(&key.id)[2], &id);
        Some(Ok(self.remote_hold(
            key.id.clone(),
            budgets,
            id,
            store.clone(),
        )))
    }

    /// Runs [`RESERVE`] for hold `id` (a new one, or one to resize), loading the key's
    /// spend from the store when Redis has none.
    async fn hold_in_redis(
        &self,
        key_id: &str,
        budgets: Budgets,
        want: Estimate,
        id: &str,
        store: &Store,
    ) -> Option<Result<(), Exhausted>> {
        let names = budget_keys_of(key_id);
        let mut loaded: Option<(u64, f64)> = None;
        for _ in 0..2 {
            let mut inv = self.reserve.prepare_invoke();
            for n in &names {
                inv.key(n);
            }
            inv.arg(budgets.tokens.map_or(-1.0, |b| b as f64))
                .arg(budgets.usd.unwrap_or(-1.0))
                .arg(want.tokens)
                .arg(want.usd)
                .arg(id)
                .arg(LEASE.as_millis() as u64);
            if let Some((t, u)) = loaded {
                inv.arg(t).arg(u);
            }
            let mut conn = self.conn.clone();
            let v: Vec<String> =
                match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async(&mut conn)).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => return self.unreachable(&e.to_string()),
                    Err(_) => return self.unreachable("timed out"),
                };
            let spent = || v.get(1).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            return match v.first().map(String::as_str) {
                Some("-1") => {
                    loaded = Some(store.spent(key_id).await.ok()?);
                    continue;
                }
                Some("0") => Some(Ok(())),
                Some("1") => Some(Err(Exhausted::Tokens {
                    budget: budgets.tokens.unwrap_or(0),
                    spent: spent() as u64,
                })),
                Some("2") => Some(Err(Exhausted::Usd {
                    budget: budgets.usd.unwrap_or(0.0),
                    spent: spent(),
                })),
                Some("3") => {
                    let budget = budgets.tokens.unwrap_or(0);
                    Some(Err(Exhausted::TokensInFlight {
                        budget,
                        left: budget.saturating_sub(spent() as u64),
                        want: want.tokens,
                    }))
                }
                Some("4") => {
                    let budget = budgets.usd.unwrap_or(0.0);
                    Some(Err(Exhausted::UsdInFlight {
                        budget,
                        left: (budget - spent()).max(0.0),
                        want: want.usd,
                    }))
                }
                _ => self.unreachable("bad answer"),
            };
        }
        None
    }

    /// Counts a spend held locally (Redis was unreachable at admission) in Redis once
    /// the request ends: [`SETTLE_BUDGET`] with an id that holds nothing.
    pub(crate) fn spend_mirror(self: &Arc<Self>, key_id: &str) -> crate::budget::Release {
        let this = Arc::clone(self);
        let names = budget_keys_of(key_id);
        let id = self.new_id();
        Box::new(move |actual: Estimate| this.spawn_settle_budget(names, id, actual))
    }

    /// Runs [`SETTLE_BUDGET`] for hold `id` without waiting for it (from `Drop`).
    fn spawn_settle_budget(&self, names: [String; 3], id: String, actual: Estimate) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left (shutting down): the hold lapses by itself
        };
        let mut conn = self.conn.clone();
        let script = self.settle_budget.clone();
        rt.spawn(async move {
            let mut inv = script.prepare_invoke();
            for n in &names {
                inv.key(n);
            }
            inv.arg(&id).arg(actual.tokens).arg(actual.usd);
            background("budget settlement", inv.invoke_async::<i64>(&mut conn)).await;
        });
    }

    fn unreachable<T>(&self, why: &str) -> Option<T> {
        tracing::warn!("Redis unavailable ({why}): budgets held in this replica's own counters");
        None
    }

    fn remote_hold(
        self: &Arc<Self>,
        key_id: String,
        budgets: Budgets,
        id: String,
        store: Store,
    ) -> Hold {
        let names = budget_keys_of(&key_id);
        let resize = {
            let (this, id) = (Arc::clone(self), id.clone());
            move |want: Estimate| {
                let (this, id, key_id, store) =
                    (Arc::clone(&this), id.clone(), key_id.clone(), store.clone());
                Box::pin(async move {
                    this.hold_in_redis(&key_id, budgets, want, &id, &store)
                        .await
                }) as futures::future::BoxFuture<'static, _>
            }
        };
        let this = Arc::clone(self);
        let release = move |actual: Estimate| {
            this.drop_lease(&names[2], &id);
            this.spawn_settle_budget(names, id, actual);
        };
        Hold(HoldKind::Remote {
            resize: Box::new(resize),
            release: Some(Box::new(release)),
            actual: Estimate::default(),
        })
    }
}

/// Runs a background Redis call whose answer nobody waits for. A failure is logged:
/// what it would have renewed, settled or released lapses with its lease or TTL.
async fn background<T>(what: &str, call: impl std::future::Future<Output = redis::RedisResult<T>>) {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "Redis {what} failed; it lapses with its lease"),
        Err(_) => tracing::warn!("Redis {what} timed out; it lapses with its lease"),
    }
}
