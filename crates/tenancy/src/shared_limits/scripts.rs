//! The Lua scripts behind [`super::SharedLimiter`]: each check-and-update runs as one
//! script so replicas never interleave between a read and its write.

use std::time::Duration;

/// KEYS: requests zset, tokens zset, tokens hash, in-flight leases zset, tokens sum.
/// ARGV: lease ms, then for each request in turn: rpm, tpm, max concurrent (0: none),
/// tokens to reserve, reservation id. A place in flight is a lease (member: reservation
/// id, score: expiry) that its replica renews; a killed replica's places lapse within
/// [`LEASE`]. Returns, per request, {verdict (0 ok, 1 rpm, 2 tpm, 3 concurrency),
/// requests in window, tokens in window}, then {oldest request ms, oldest tokens ms, now
/// ms}. Expired entries leave the running sum as they go, so each call costs O(1)
/// amortised, not O(window); the requests of one call share the trimming and the TTLs.
pub(super) const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = 60000
local lease = tonumber(ARGV[1])
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
local oreq = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or now)
local otok = tonumber(redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or now)
local inflight = -1
local added_req, added_tok, added_flight = false, false, false
local out = {}
for b = 2, #ARGV - 4, 5 do
  local rpm, tpm, mc = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local reserve, id = tonumber(ARGV[b + 3]), ARGV[b + 4]
  if mc > 0 and inflight < 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    inflight = redis.call('ZCARD', KEYS[4])
  end
  local v = 0
  if mc > 0 and inflight >= mc then v = 3
  elseif rpm > 0 and nreq >= rpm then v = 1
  elseif tpm > 0 and used + reserve > tpm then v = 2
  else
    if mc > 0 then
      redis.call('ZADD', KEYS[4], now + lease, id)
      inflight = inflight + 1
      added_flight = true
    end
    if rpm > 0 then
      redis.call('ZADD', KEYS[1], now, id)
      nreq = nreq + 1
      added_req = true
    end
    if tpm > 0 then
      redis.call('ZADD', KEYS[2], now, id)
      redis.call('HSET', KEYS[3], id, reserve)
      used = used + reserve
      added_tok = true
    end
  end
  out[#out + 1] = v
  out[#out + 1] = nreq
  out[#out + 1] = used
end
if added_flight then redis.call('PEXPIRE', KEYS[4], 3600000) end
if added_req then redis.call('PEXPIRE', KEYS[1], win) end
if added_tok then
  redis.call('PEXPIRE', KEYS[2], win)
  redis.call('PEXPIRE', KEYS[3], win)
  redis.call('SET', KEYS[5], used, 'PX', win)
end
out[#out + 1] = oreq
out[#out + 1] = otok
out[#out + 1] = now
return out
";

/// KEYS: tokens hash, tokens sum. ARGV: reservation id, new reservation, TPM limit.
/// Grows a reservation only while it fits (returns 1 and the tokens used when not);
/// shrinking always succeeds.
pub(super) const RESIZE: &str = r"
local r = redis.call('HGET', KEYS[1], ARGV[1])
if not r then return {0, 0} end
local sum = tonumber(redis.call('GET', KEYS[2]) or '0')
local new, old, tpm = tonumber(ARGV[2]), tonumber(r), tonumber(ARGV[3])
if new > old and sum - old + new > tpm then return {1, sum} end
redis.call('HSET', KEYS[1], ARGV[1], new)
redis.call('SET', KEYS[2], math.max(0, sum - old + new), 'KEEPTTL')
return {0, sum - old + new}
";

/// KEYS: tokens hash, tokens sum. ARGV: pairs of reservation id and actual tokens. A
/// reservation that already left the window is not counted again.
pub(super) const SETTLE: &str = r"
local sum = tonumber(redis.call('GET', KEYS[2]) or '0')
local changed = false
for i = 1, #ARGV - 1, 2 do
  local r = redis.call('HGET', KEYS[1], ARGV[i])
  if r then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    sum = sum - tonumber(r) + tonumber(ARGV[i + 1])
    changed = true
  end
end
if changed then
  if sum < 0 then sum = 0 end
  redis.call('SET', KEYS[2], sum, 'KEEPTTL')
end
return 0
";

/// How long a place in flight or a budget hold outlives its replica's last renewal.
pub const LEASE: Duration = Duration::from_secs(6);

/// KEYS: spent hash (`t`, `u`), holds hash (`ID:t`, `ID:u`, totals `_t`, `_u`), hold
/// leases zset. ARGV: token budget (-1: none), USD budget (-1: none), tokens wanted, USD
/// wanted, hold id, lease ms, then the store's spent tokens and USD when loading.
/// Returns {'-1'} when the spend must be loaded from the store first, {'1', spent} or
/// {'2', spent} when a budget is used up, {'3', used} or {'4', used} when a recounted
/// hold no longer fits while others hold the rest, {'0', tokens held, USD held}.
pub(super) const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bt, bu = tonumber(ARGV[1]), tonumber(ARGV[2])
local wt, wu = tonumber(ARGV[3]), tonumber(ARGV[4])
local id, lease = ARGV[5], tonumber(ARGV[6])
if redis.call('EXISTS', KEYS[1]) == 0 then
  if not ARGV[7] then return {'-1'} end
  redis.call('HSET', KEYS[1], 't', ARGV[7], 'u', ARGV[8])
  -- Reloaded from the store now and then, so a lost settle cannot drift for long.
  redis.call('PEXPIRE', KEYS[1], 3600000)
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
-- The same id again: a recount, so its old hold is taken back first.
local recount = redis.call('HEXISTS', KEYS[2], id .. ':t') == 1
if recount then table.insert(dead, id) end
for _, m in ipairs(dead) do
  local ht = tonumber(redis.call('HGET', KEYS[2], m .. ':t') or '0')
  local hu = tonumber(redis.call('HGET', KEYS[2], m .. ':u') or '0')
  -- 0 - x, never -x: Lua writes minus zero as -0, which HINCRBY refuses.
  redis.call('HINCRBY', KEYS[2], '_t', 0 - ht)
  redis.call('HINCRBYFLOAT', KEYS[2], '_u', 0 - hu)
  redis.call('HDEL', KEYS[2], m .. ':t', m .. ':u')
end
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZREM', KEYS[3], id)
end
local ot = tonumber(redis.call('HGET', KEYS[2], '_t') or '0')
local ou = tonumber(redis.call('HGET', KEYS[2], '_u') or '0')
local st = tonumber(redis.call('HGET', KEYS[1], 't') or '0') + ot
local su = tonumber(redis.call('HGET', KEYS[1], 'u') or '0') + ou
-- As budget::hold_for: a recounted hold is capped only while no other is held.
if bt >= 0 and st >= bt then return {'1', tostring(st)} end
if bu >= 0 and su >= bu then return {'2', tostring(su)} end
if bt >= 0 and recount and ot > 0 and st + wt > bt then return {'3', tostring(st)} end
if bu >= 0 and recount and ou > 1e-12 and su + wu > bu then return {'4', tostring(su)} end
local ht, hu = 0, 0
if bt >= 0 then ht = math.min(wt, bt - st) end
if bu >= 0 then hu = math.max(0, math.min(wu, bu - su)) end
redis.call('HSET', KEYS[2], id .. ':t', ht, id .. ':u', tostring(hu))
redis.call('HINCRBY', KEYS[2], '_t', ht)
redis.call('HINCRBYFLOAT', KEYS[2], '_u', tostring(hu))
redis.call('ZADD', KEYS[3], now + lease, id)
redis.call('PEXPIRE', KEYS[2], 3600000)
redis.call('PEXPIRE', KEYS[3], 3600000)
return {'0', tostring(ht), tostring(hu)}
";

/// KEYS: lease zsets. ARGV: lease ms, then each zset's member. Renews leases not yet
/// released (XX), on Redis' clock as every other script.
pub(super) const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', k, 3600000)
end
return 0
";

/// KEYS: as [`RESERVE`]. ARGV: hold id, actual tokens, actual USD. Ends the hold and
/// counts the actual spend (also when the hold had lapsed).
pub(super) const SETTLE_BUDGET: &str = r"
local ht = redis.call('HGET', KEYS[2], ARGV[1] .. ':t')
if ht then
  local hu = redis.call('HGET', KEYS[2], ARGV[1] .. ':u') or '0'
  redis.call('HINCRBY', KEYS[2], '_t', 0 - tonumber(ht))
  redis.call('HINCRBYFLOAT', KEYS[2], '_u', 0 - tonumber(hu))
  redis.call('HDEL', KEYS[2], ARGV[1] .. ':t', ARGV[1] .. ':u')
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 't', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], 'u', ARGV[3])
end
return 0
";
