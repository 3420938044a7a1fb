//! Per-key limits: requests and tokens per minute over a sliding 60-second window, and
//! requests in flight. Every check and reservation for a key happens under one lock, so
//! concurrent requests can never get more through than the limit (the overshoot of
//! check-then-increment limiters). Tokens are reserved before the call (an estimate)
//! and settled to the actual count after it.

use crate::keys::KeyRecord;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
struct KeyState {
    /// (when, reservation id): a cancelled admission takes its own entry back.
    requests: VecDeque<(Instant, u64)>,
    /// (when, tokens, reservation id): reservations are settled in place.
    tokens: VecDeque<(Instant, u64, u64)>,
    /// The sum of `tokens`, kept current so a check costs O(1), not O(window).
    tokens_sum: u64,
    in_flight: u32,
}

impl KeyState {
    fn expire(&mut self, now: Instant) {
        while self
            .requests
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) >= WINDOW)
        {
            self.requests.pop_front();
        }
        while self
            .tokens
            .front()
            .is_some_and(|&(t, _, _)| now.duration_since(t) >= WINDOW)
        {
            if let Some((_, n, _)) = self.tokens.pop_front() {
                self.tokens_sum -= n;
            }
        }
    }

    fn tokens_used(&self) -> u64 {
        self.tokens_sum
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Requests,
    Tokens,
    Concurrency,
}

#[derive(Debug, Clone)]
pub struct Denied {
    pub which: Refused,
    pub limit: u64,
    /// Seconds until a retry can succeed.
    pub retry_after: u64,
    pub headers: RateHeaders,
}

/// OpenAI's `x-ratelimit-*` values, for every answer to a limited key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateHeaders {
    pub requests: Option<(u64, u64, Duration)>,
    pub tokens: Option<(u64, u64, Duration)>,
}

impl RateHeaders {
    /// `(name, value)` pairs.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some((limit, remaining, reset)) = self.requests {
            out.push(("x-ratelimit-limit-requests", limit.to_string()));
            out.push(("x-ratelimit-remaining-requests", remaining.to_string()));
            out.push(("x-ratelimit-reset-requests", reset_text(reset)));
        }
        if let Some((limit, remaining, reset)) = self.tokens {
            out.push(("x-ratelimit-limit-tokens", limit.to_string()));
            out.push(("x-ratelimit-remaining-tokens", remaining.to_string()));
            out.push(("x-ratelimit-reset-tokens", reset_text(reset)));
        }
        out
    }
}

/// OpenAI writes resets as `1s`, `6m0s`, `120ms`.
fn reset_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs_f64().ceil() as u64;
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

#[derive(Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, KeyState>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A request let through: holds its concurrency place and token reservation until
/// settled or dropped.
pub struct Ticket(TicketKind);

type Settle = Box<dyn Fn(u64) + Send + Sync>;
type Release = Box<dyn FnOnce() + Send + Sync>;
/// Moves a reservation to a new estimate; `Err(limit)` when it no longer fits.
pub(crate) type ResizeTokens =
    Box<dyn Fn(u64) -> futures::future::BoxFuture<'static, Result<(), u64>> + Send + Sync>;

enum TicketKind {
    Local {
        limiter: Arc<Limiter>,
        key: String,
        reservation: u64,
        counts_tokens: bool,
        tpm: u64,
    },
    /// Counted elsewhere (Redis): what settling and releasing do there.
    Remote {
        resize: Option<ResizeTokens>,
        settle: Settle,
        release: Option<Release>,
        /// Takes the request's place in the requests window back.
        uncount: Option<Release>,
    },
    /// Several subjects' tickets (a key, its user, its team): all or none.
    Chain(Vec<Ticket>),
}

impl Limiter {
    /// Lets a request of `key` through, reserving `estimate` tokens, or says which limit
    /// refuses it. Keys without limits pass untouched.
    pub fn admit(
        self: &Arc<Self>,
        key: &KeyRecord,
        estimate: u64,
    ) -> Result<(Ticket, RateHeaders), Denied> {
        let now = Instant::now();
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let st = keys.entry(key.id.clone()).or_default();
        st.expire(now);
        let reset_of = |oldest: Option<Instant>| {
            oldest.map_or(Duration::ZERO, |t| {
                WINDOW.saturating_sub(now.duration_since(t))
            })
        };
        let headers_now = |st: &KeyState| RateHeaders {
            requests: key.rpm.map(|l| {
                let l = u64::from(l);
                (
                    l,
                    l.saturating_sub(st.requests.len() as u64),
                    reset_of(st.requests.front().map(|r| r.0)),
                )
            }),
            tokens: key.tpm.map(|l| {
                let l = u64::from(l);
                (
                    l,
                    l.saturating_sub(st.tokens_used()),
                    reset_of(st.tokens.front().map(|t| t.0)),
                )
            }),
        };
        let deny = |which, limit: u64, wait: Duration, st: &KeyState| Denied {
            which,
            limit,
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            headers: headers_now(st),
        };
        if let Some(max) = key.max_concurrent {
            if st.in_flight >= max {
                return Err(deny(
                    Refused::Concurrency,
                    u64::from(max),
                    Duration::from_secs(1),
                    st,
                ));
            }
        }
        if let Some(rpm) = key.rpm {
            if st.requests.len() as u64 >= u64::from(rpm) {
                let wait = reset_of(st.requests.front().map(|r| r.0));
                return Err(deny(Refused::Requests, u64::from(rpm), wait, st));
            }
        }
        // A request bigger than the whole limit could never pass: it reserves the limit.
        let reserve = key.tpm.map_or(0, |tpm| estimate.min(u64::from(tpm)));
        if let Some(tpm) = key.tpm {
            let used = st.tokens_used();
            if used + reserve > u64::from(tpm) {
                // The earliest time enough tokens leave the window.
                let mut freed = 0;
                let mut wait = WINDOW;
                for &(t, n, _) in &st.tokens {
                    freed += n;
                    if used - freed + reserve <= u64::from(tpm) {
                        wait = WINDOW.saturating_sub(now.duration_since(t));
                        break;
                    }
                }
                return Err(deny(Refused::Tokens, u64::from(tpm), wait, st));
            }
        }
        st.in_flight += 1;
        if key.rpm.is_some() {
            st.requests.push_back((now, id));
        }
        if key.tpm.is_some() {
            st.tokens.push_back((now, reserve, id));
            st.tokens_sum += reserve;
        }
        let headers = headers_now(st);
        Ok((
            Ticket(TicketKind::Local {
                limiter: Arc::clone(self),
                key: key.id.clone(),
                reservation: id,
                counts_tokens: key.tpm.is_some(),
                tpm: key.tpm.map_or(0, u64::from),
            }),
            headers,
        ))
    }
}

impl Limiter {
    /// Runs `f` on a key's token sum and one reservation's tokens, under the lock;
    /// `None` when the reservation has left the window.
    fn with_reservation<T>(
        &self,
        key: &str,
        reservation: u64,
        f: impl FnOnce(&mut u64, &mut u64) -> T,
    ) -> Option<T> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let st = keys.get_mut(key)?;
        // Ids grow with time: search from the newest end, where it usually is.
        let entry = st.tokens.iter_mut().rev().find(|e| e.2 == reservation)?;
        Some(f(&mut st.tokens_sum, &mut entry.1))
    }
}

impl Ticket {
    pub(crate) fn remote(
        resize: Option<ResizeTokens>,
        settle: Settle,
        release: Release,
        uncount: Release,
    ) -> Ticket {
        Ticket(TicketKind::Remote {
            resize,
            settle,
            release: Some(release),
            uncount: Some(uncount),
        })
    }

    pub(crate) fn chain(tickets: Vec<Ticket>) -> Ticket {
        Ticket(TicketKind::Chain(tickets))
    }

    /// Takes an admission back as if it never happened (another subject refused the
    /// request): its place in the request and token windows, and in flight.
    pub(crate) fn cancel(mut self) {
        match &mut self.0 {
            TicketKind::Local {
                limiter,
                key,
                reservation,
                ..
            } => {
                let mut keys = limiter.keys.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(st) = keys.get_mut(key.as_str()) {
                    st.requests.retain(|r| r.1 != *reservation);
                    if let Some(i) = st.tokens.iter().position(|t| t.2 == *reservation) {
                        if let Some((_, n, _)) = st.tokens.remove(i) {
                            st.tokens_sum -= n;
                        }
                    }
                }
            }
            TicketKind::Remote {
                settle, uncount, ..
            } => {
                settle(0);
                if let Some(u) = uncount.take() {
                    u();
                }
            }
            TicketKind::Chain(all) => {
                for t in std::mem::take(all) {
                    t.cancel();
                }
            }
        }
    }

    /// Reserves `estimate` instead of the first estimate (once the prompt is counted),
    /// capped at the limit as when admitted; `Err(limit)` when the larger reservation no
    /// longer fits the window (a smaller one always does).
    pub async fn resize(&self, estimate: u64) -> Result<(), u64> {
        match &self.0 {
            TicketKind::Local {
                limiter,
                key,
                reservation,
                counts_tokens: true,
                tpm,
            } => {
                let new = estimate.min(*tpm);
                limiter
                    .with_reservation(key, *reservation, |sum, held| {
                        let others = *sum - *held;
                        if new > *held && others + new > *tpm {
                            return Err(*tpm);
                        }
                        *sum = others + new;
                        *held = new;
                        Ok(())
                    })
                    .unwrap_or(Ok(()))
            }
            TicketKind::Local { .. } => Ok(()),
            TicketKind::Remote {
                resize: Some(r), ..
            } => r(estimate).await,
            TicketKind::Remote { .. } => Ok(()),
            TicketKind::Chain(all) => {
                for t in all {
                    Box::pin(t.resize(estimate)).await?;
                }
                Ok(())
            }
        }
    }

    /// Replaces the token reservation with what the request really used.
    pub fn settle(&self, actual: u64) {
        match &self.0 {
            TicketKind::Local {
                limiter,
                key,
                reservation,
                counts_tokens: true,
                ..
            } => {
                limiter.with_reservation(key, *reservation, |sum, held| {
                    *sum = *sum - *held + actual;
                    *held = actual;
                });
            }
            TicketKind::Local { .. } => {}
            TicketKind::Remote { settle, .. } => settle(actual),
            TicketKind::Chain(all) => all.iter().for_each(|t| t.settle(actual)),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match &mut self.0 {
            TicketKind::Local { limiter, key, .. } => {
                let mut keys = limiter.keys.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(st) = keys.get_mut(key.as_str()) {
                    st.in_flight = st.in_flight.saturating_sub(1);
                }
            }
            TicketKind::Remote { release, .. } => {
                if let Some(r) = release.take() {
                    r();
                }
            }
            TicketKind::Chain(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u32>, tpm: Option<u32>, conc: Option<u32>) -> KeyRecord {
        KeyRecord {
            id: "k".into(),
            rpm,
            tpm,
            max_concurrent: conc,
            ..KeyRecord::default()
        }
    }

    #[test]
    fn exactly_rpm_requests_pass_under_contention() {
        let l = Arc::new(Limiter::default());
        let k = key(Some(100), None, None);
        let passed = std::sync::atomic::AtomicUsize::new(0);
        let tickets = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..40 {
                        if let Ok((t, _)) = l.admit(&k, 0) {
                            passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tickets.lock().unwrap().push(t);
                        }
                    }
                });
            }
        });
        assert_eq!(passed.into_inner(), 100);
        let e = l.admit(&k, 0).err().unwrap();
        assert_eq!(e.which, Refused::Requests);
        assert!(e.retry_after >= 59, "{}", e.retry_after);
        assert_eq!(e.headers.requests.unwrap().1, 0);
    }

    #[test]
    fn tokens_are_reserved_then_settled() {
        let l = Arc::new(Limiter::default());
        let k = key(None, Some(100), None);
        let (a, h) = l.admit(&k, 60).unwrap();
        assert_eq!(h.tokens.unwrap().1, 40);
        assert_eq!(l.admit(&k, 60).err().unwrap().which, Refused::Tokens);
        a.settle(10);
        let (_b, h) = l.admit(&k, 60).unwrap();
        assert_eq!(h.tokens.unwrap().1, 30);
        // Bigger than the limit: reserves the whole limit instead of never passing.
        let l2 = Arc::new(Limiter::default());
        assert!(l2.admit(&k, 10_000).is_ok());
    }

    #[tokio::test]
    async fn a_reservation_grows_only_while_it_fits() {
        let l = Arc::new(Limiter::default());
        let k = key(None, Some(100), None);
        let (a, _) = l.admit(&k, 10).unwrap();
        let (b, _) = l.admit(&k, 10).unwrap();
        assert_eq!(a.resize(60).await, Ok(()));
        assert_eq!(b.resize(50).await, Err(100));
        assert_eq!(b.resize(40).await, Ok(()));
        assert_eq!(a.resize(5).await, Ok(()));
        let (_c, h) = l.admit(&k, 50).unwrap();
        assert_eq!(h.tokens.unwrap().1, 5);
    }

    #[test]
    fn concurrency_is_released_when_the_ticket_drops() {
        let l = Arc::new(Limiter::default());
        let k = key(None, None, Some(1));
        let t = l.admit(&k, 0).unwrap();
        assert_eq!(l.admit(&k, 0).err().unwrap().which, Refused::Concurrency);
        drop(t);
        assert!(l.admit(&k, 0).is_ok());
        assert_eq!(reset_text(Duration::from_millis(120)), "120ms");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    }
}
