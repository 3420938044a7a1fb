//! Limits shared by several replicas: the same sliding windows as [`crate::limits`],
//! kept in Redis and checked and updated by one Lua script, so a 100-RPM key gets 100
//! requests a minute across all replicas together, not 100 on each.
//!
//! While Redis cannot be reached (each call waits at most [`REDIS_TIMEOUT`]), every
//! replica falls back to its own in-memory limiter with the key's full limits: requests
//! keep flowing and are never stalled or lost (usage goes to the database either way),
//! at the price of up to N times the limit over N replicas until Redis is back.

use crate::keys::KeyRecord;
use crate::limits::{Denied, Limiter, RateHeaders, Refused, Ticket};
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
const WINDOW_MS: i64 = 60_000;

/// KEYS: requests zset, tokens zset, tokens hash, in-flight counter, tokens sum.
/// ARGV: rpm, tpm, max concurrent (0: none), tokens to reserve, reservation id.
/// Returns {verdict (0 ok, 1 rpm, 2 tpm, 3 concurrency), requests in window, tokens in
/// window, oldest request ms, oldest tokens ms, now ms}. Expired entries leave the
/// running sum as they go, so each call costs O(1) amortised, not O(window).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = 60000
local rpm, tpm, mc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve, id = tonumber(ARGV[4]), ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
local used = tonumber(redis.call('GET', KEYS[5]) or '0')
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - win)
if #old > 0 then
  for _, m in ipairs(old) do
    used = used - tonumber(redis.call('HGET', KEYS[3], m) or '0')
    redis.call('HDEL', KEYS[3], m)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - win)
  if used < 0 then used = 0 end
  redis.call('SET', KEYS[5], used, 'PX', win)
end
local nreq = redis.call('ZCARD', KEYS[1])
local inflight = tonumber(redis.call('GET', KEYS[4]) or '0')
local oreq = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or now)
local otok = tonumber(redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or now)
if mc > 0 and inflight >= mc then return {3, nreq, used, oreq, otok, now} end
if rpm > 0 and nreq >= rpm then return {1, nreq, used, oreq, otok, now} end
if tpm > 0 and used + reserve > tpm then return {2, nreq, used, oreq, otok, now} end
if mc > 0 then
  redis.call('INCR', KEYS[4])
  redis.call('PEXPIRE', KEYS[4], 600000)
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], win)
  nreq = nreq + 1
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('HSET', KEYS[3], id, reserve)
  redis.call('PEXPIRE', KEYS[2], win)
  redis.call('PEXPIRE', KEYS[3], win)
  used = used + reserve
  redis.call('SET', KEYS[5], used, 'PX', win)
end
return {0, nreq, used, oreq, otok, now}
";

/// KEYS: tokens hash, tokens sum. ARGV: reservation id, actual tokens.
const SETTLE: &str = r"
local r = redis.call('HGET', KEYS[1], ARGV[1])
if r then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  local sum = tonumber(redis.call('GET', KEYS[2]) or '0') - tonumber(r) + tonumber(ARGV[2])
  if sum < 0 then sum = 0 end
  redis.call('SET', KEYS[2], sum, 'KEEPTTL')
end
return 0
";

/// KEYS: in-flight counter.
const RELEASE: &str = r"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v > 0 then redis.call('DECR', KEYS[1]) end
return 0
";

pub struct SharedLimiter {
    conn: ConnectionManager,
    admit: redis::Script,
    settle: redis::Script,
    release: redis::Script,
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
        format!("parlance:{{{id}}}:inflight"),
        format!("parlance:{{{id}}}:toksum"),
    ]
}

impl SharedLimiter {
    pub async fn connect(url: &str, fallback: Arc<Limiter>) -> Result<Arc<SharedLimiter>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| format!("--redis {url}: no answer within 5 s"))?
        .map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(Arc::new(SharedLimiter {
            conn,
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            release: redis::Script::new(RELEASE),
            replica: rand::random(),
            next: AtomicU64::new(0),
            fallback,
        }))
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
        let id = format!(
            "{:x}-{}",
            self.replica,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let k = keys_of(&key.id);
        let mut conn = self.conn.clone();
        let mut inv = self.admit.prepare_invoke();
        for name in &k {
            inv.key(name);
        }
        inv.arg(key.rpm.unwrap_or(0))
            .arg(key.tpm.unwrap_or(0))
            .arg(key.max_concurrent.unwrap_or(0))
            .arg(reserve)
            .arg(&id);
        let answer: Result<Vec<i64>, String> =
            match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".into()),
            };
        let v = match answer {
            Ok(v) if v.len() == 6 => v,
            other => {
                tracing::warn!(
                    "Redis unavailable ({}): limiting with this replica's own counters",
                    other.err().unwrap_or_else(|| "bad answer".into())
                );
                return self.fallback.admit(key, estimate);
            }
        };
        let (verdict, nreq, used, oreq, otok, now) =
            (v[0], v[1] as u64, v[2] as u64, v[3], v[4], v[5]);
        let reset = |oldest: i64| {
            Duration::from_millis((oldest + WINDOW_MS - now).clamp(0, WINDOW_MS) as u64)
        };
        let headers = RateHeaders {
            requests: key
                .rpm
                .map(|l| (u64::from(l), u64::from(l).saturating_sub(nreq), reset(oreq))),
            tokens: key
                .tpm
                .map(|l| (u64::from(l), u64::from(l).saturating_sub(used), reset(otok))),
        };
        let denied = |which, limit: u64, wait: Duration| Denied {
            which,
            limit,
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            headers: headers.clone(),
        };
        match verdict {
            0 => {
                let this = Arc::clone(self);
                let tok_hash = k[2].clone();
                let tok_sum = k[4].clone();
                let inflight = k[3].clone();
                let settle_id = id.clone();
                let counts_tokens = key.tpm.is_some();
                let counts_flight = key.max_concurrent.is_some();
                let ticket = Ticket::remote(
                    Box::new(move |actual| {
                        if counts_tokens {
                            this.spawn_settle(&tok_hash, &tok_sum, &settle_id, actual);
                        }
                    }),
                    Box::new({
                        let this = Arc::clone(self);
                        move || {
                            if counts_flight {
                                this.spawn_release(inflight)
                            }
                        }
                    }),
                );
                Ok((ticket, headers))
            }
            1 => Err(denied(
                Refused::Requests,
                u64::from(key.rpm.unwrap_or(0)),
                reset(oreq),
            )),
            2 => Err(denied(
                Refused::Tokens,
                u64::from(key.tpm.unwrap_or(0)),
                reset(otok),
            )),
            _ => Err(denied(
                Refused::Concurrency,
                u64::from(key.max_concurrent.unwrap_or(0)),
                Duration::from_secs(1),
            )),
        }
    }

    fn spawn_settle(&self, tok_hash: &str, tok_sum: &str, id: &str, actual: u64) {
        let mut conn = self.conn.clone();
        let script = self.settle.clone();
        let (tok_hash, tok_sum, id) = (tok_hash.to_string(), tok_sum.to_string(), id.to_string());
        tokio::spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.key(tok_hash).key(tok_sum).arg(id).arg(actual);
            let _: Result<Result<i64, _>, _> =
                tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async(&mut conn)).await;
        });
    }

    fn spawn_release(&self, inflight: String) {
        let mut conn = self.conn.clone();
        let script = self.release.clone();
        tokio::spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.key(inflight);
            let _: Result<Result<i64, _>, _> =
                tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async(&mut conn)).await;
        });
    }
}
