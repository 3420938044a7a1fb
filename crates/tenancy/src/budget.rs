//! Budgets reserved before the call and settled after it, as TPM is: a request takes a
//! hold on its estimated spend (capped at what is left), so concurrent requests cannot
//! all pass a budget that only one of them fits, and a key is never overdrawn by more
//! than one request's actual cost beyond its estimate.
//!
//! On one replica the holds live here, beside the key's committed spend; with Redis
//! ([`crate::shared_limits`]) both live there, each hold under a lease its replica
//! renews, so a killed replica's holds lapse in seconds.

use crate::keys::KeyRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Committed spend and open holds of one key.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spend {
    pub tokens: u64,
    pub usd: f64,
    pub held_tokens: u64,
    pub held_usd: f64,
}

/// What a request may spend at most, as estimated before the call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    pub tokens: u64,
    pub usd: f64,
}

/// The budget a key has used up, for its refusal.
#[derive(Debug, Clone, PartialEq)]
pub enum Exhausted {
    Tokens {
        budget: u64,
        spent: u64,
    },
    Usd {
        budget: f64,
        spent: f64,
    },
    /// Something is left, but less than this request may spend while others hold the
    /// rest (only refused once the prompt is counted; see [`hold_for`]).
    TokensInFlight {
        budget: u64,
        left: u64,
        want: u64,
    },
    UsdInFlight {
        budget: f64,
        left: f64,
        want: f64,
    },
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text("this key's"))
    }
}

impl Exhausted {
    /// The refusal, naming whose budget it is (`this key's`, `your team's`...).
    pub fn text(&self, whose: &str) -> String {
        let out = match self {
            Exhausted::Tokens { budget, spent } => format!(
                "this key's token budget of {budget} is used up ({spent} spent or reserved by requests in flight)"
            ),
            Exhausted::Usd { budget, spent } => format!(
                "this key's budget of ${budget:.2} is used up (${spent:.4} spent or reserved by requests in flight)"
            ),
            Exhausted::TokensInFlight { budget, left, want } => format!(
                "this request may use {want} tokens but only {left} of this key's token budget of {budget} are left while other requests are in flight; retry when they finish or lower max_tokens"
            ),
            Exhausted::UsdInFlight { budget, left, want } => format!(
                "this request may cost ${want:.4} but only ${left:.4} of this key's budget of ${budget:.2} is left while other requests are in flight; retry when they finish or lower max_tokens"
            ),
        };
        out.replace("this key's", whose)
    }
}

/// What a request may hold of `want` under a key's budgets, with `committed` spent and
/// `others` held by other requests in flight; `Err` when nothing is left. A request
/// bigger than what is left holds the rest when it is admitted (so a lone request may
/// still pass, and overdraw by at most its own actual cost); once its prompt is counted
/// (`recount`), it may keep such a capped hold only while no other request holds any,
/// so at most one request at a time can overdraw.
pub(crate) fn hold_for(
    key: &Budgets,
    committed: (u64, f64),
    others: (u64, f64),
    want: Estimate,
    recount: bool,
) -> Result<Estimate, Exhausted> {
    let mut hold = Estimate::default();
    if let Some(budget) = key.tokens {
        let used = committed.0.saturating_add(others.0);
        if used >= budget || (recount && others.0 > 0 && used + want.tokens > budget) {
            return Err(Exhausted::Tokens {
                budget,
                spent: used,
            });
        }
        hold.tokens = want.tokens.min(budget - used);
    }
    if let Some(budget) = key.usd {
        let used = committed.1 + others.1;
        if used >= budget || (recount && others.1 > 0.0 && used + want.usd > budget) {
            return Err(Exhausted::Usd {
                budget,
                spent: used,
            });
        }
        hold.usd = want.usd.clamp(0.0, budget - used);
    }
    Ok(hold)
}

/// A key's budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budgets {
    pub tokens: Option<u64>,
    pub usd: Option<f64>,
}

impl Budgets {
    pub fn of(key: &KeyRecord) -> Budgets {
        Budgets {
            tokens: key.budget_tokens,
            usd: key.budget_usd,
        }
    }
}

pub(crate) type SpendMap = Arc<Mutex<HashMap<String, Spend>>>;

/// A request's hold on its key's budget; dropping it ends the hold (its actual spend
/// is counted by the usage row, before the hold is dropped).
pub struct Hold(pub(crate) HoldKind);

pub(crate) type Release = Box<dyn FnOnce(Estimate) + Send + Sync>;
/// Holds a new amount in place of the old one; `None`: the store could not be reached.
pub(crate) type Resize = Box<
    dyn Fn(Estimate) -> futures::future::BoxFuture<'static, Option<Result<(), Exhausted>>>
        + Send
        + Sync,
>;

pub(crate) enum HoldKind {
    None,
    Local {
        spent: SpendMap,
        key: String,
        budgets: Budgets,
        held: Estimate,
        /// Held here because Redis could not be reached: the spend still goes to Redis
        /// when the hold ends, so the other replicas see it.
        mirror: Option<Release>,
        actual: Estimate,
        /// A subject of several keys (a user, a team, a balance): no usage row counts
        /// its spend, so the hold does when it ends.
        counts_spend: bool,
    },
    /// Several subjects' holds (a key, its user, its team, its payer), by subject id.
    Chain(Vec<(String, Hold)>),
    /// Held in Redis: the closures move it and settle it there.
    Remote {
        resize: Resize,
        release: Option<Release>,
        actual: Estimate,
    },
}

impl Hold {
    pub fn none() -> Hold {
        Hold(HoldKind::None)
    }

    /// Holds `want` instead of the first estimate, once the prompt is counted (see
    /// [`hold_for`]); `Err` when it no longer fits.
    pub async fn resize(&mut self, want: Estimate) -> Result<(), Exhausted> {
        match &mut self.0 {
            HoldKind::None => Ok(()),
            HoldKind::Local {
                spent,
                key,
                budgets,
                held,
                ..
            } => {
                let mut m = spent.lock().unwrap_or_else(|p| p.into_inner());
                let s = m.entry(key.clone()).or_default();
                let others = (
                    s.held_tokens.saturating_sub(held.tokens),
                    (s.held_usd - held.usd).max(0.0),
                );
                let new = hold_for(budgets, (s.tokens, s.usd), others, want, true)?;
                s.held_tokens = s.held_tokens.saturating_sub(held.tokens) + new.tokens;
                s.held_usd = (s.held_usd - held.usd).max(0.0) + new.usd;
                *held = new;
                Ok(())
            }
            // Redis unreachable now: the first hold stands.
            HoldKind::Remote { resize, .. } => resize(want).await.unwrap_or(Ok(())),
            HoldKind::Chain(_) => self.resize_naming(want).await.map_err(|(e, _)| e),
        }
    }

    /// Like [`Hold::resize`], naming the subject whose budget refused (empty: the key).
    pub async fn resize_naming(&mut self, want: Estimate) -> Result<(), (Exhausted, String)> {
        match &mut self.0 {
            HoldKind::Chain(all) => {
                for (subject, h) in all {
                    Box::pin(h.resize(want))
                        .await
                        .map_err(|e| (e, subject.clone()))?;
                }
                Ok(())
            }
            _ => Box::pin(self.resize(want))
                .await
                .map_err(|e| (e, String::new())),
        }
    }

    /// What the request really spent, for a hold kept elsewhere (Redis counts the spend
    /// when the hold ends; here the usage row counts it).
    pub fn set_actual(&mut self, actual: Estimate) {
        match &mut self.0 {
            HoldKind::Remote { actual: a, .. } | HoldKind::Local { actual: a, .. } => *a = actual,
            HoldKind::Chain(all) => all.iter_mut().for_each(|(_, h)| h.set_actual(actual)),
            HoldKind::None => {}
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        match &mut self.0 {
            HoldKind::None | HoldKind::Chain(_) => {}
            HoldKind::Local {
                spent,
                key,
                held,
                mirror,
                actual,
                counts_spend,
                ..
            } => {
                {
                    let mut m = spent.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(s) = m.get_mut(key.as_str()) {
                        s.held_tokens = s.held_tokens.saturating_sub(held.tokens);
                        s.held_usd = (s.held_usd - held.usd).max(0.0);
                        if *counts_spend {
                            s.tokens += actual.tokens;
                            s.usd += actual.usd;
                        }
                    }
                }
                if let Some(m) = mirror.take() {
                    m(*actual);
                }
            }
            HoldKind::Remote {
                release, actual, ..
            } => {
                if let Some(r) = release.take() {
                    r(*actual);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_capped_at_what_is_left_and_refused_when_nothing_is() {
        let k = Budgets {
            tokens: Some(300),
            usd: Some(1.0),
        };
        let want = Estimate {
            tokens: 120,
            usd: 0.5,
        };
        let none = (0, 0.0);
        assert_eq!(hold_for(&k, none, none, want, false), Ok(want));
        let h = hold_for(&k, (200, 0.5), (50, 0.3), want, false).unwrap();
        assert_eq!(h.tokens, 50);
        assert!((h.usd - 0.2).abs() < 1e-9);
        // Recounted: capped only when no other request holds anything.
        assert_eq!(
            hold_for(&k, (250, 0.8), none, want, true).unwrap().tokens,
            50
        );
        assert!(hold_for(&k, (200, 0.5), (50, 0.3), want, true).is_err());
        assert!(matches!(
            hold_for(&k, (300, 0.0), none, want, false),
            Err(Exhausted::Tokens { .. })
        ));
        assert!(matches!(
            hold_for(&k, none, (0, 1.0), want, false),
            Err(Exhausted::Usd { .. })
        ));
        let free = Budgets::default();
        assert_eq!(
            hold_for(&free, (u64::MAX, 1e9), none, want, true),
            Ok(Estimate::default())
        );
    }
}
