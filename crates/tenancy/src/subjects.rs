//! Who a request counts against besides its key. A key of an account is also held to
//! its user's limits, a team key to its team's, and, with prepaid balances, the payer's
//! credit is a dollar budget. Each is a "subject": a limit set with an id of its own
//! (`u:ID`, `t:ID`, `pay:u:ID`, `pay:t:ID`), admitted by the same limiter and budget
//! code as keys, so the strictest of them refuses, exactly under concurrency and, with
//! Redis, across replicas.

use crate::keys::KeyRecord;
use crate::{budget, limits, Tenancy};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Subjects read from the store are trusted this long (as keys are).
const SUBJECT_TTL: Duration = Duration::from_secs(1);

/// Limits of a user or a team, stored as JSON beside it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// Models allowed; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

impl Limits {
    pub fn parse(text: &str) -> Limits {
        serde_json::from_str(text).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    fn subject(&self, id: String, name: &str) -> KeyRecord {
        KeyRecord {
            id,
            name: name.to_string(),
            models: self.models.clone(),
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            budget_tokens: self.budget_tokens,
            budget_usd: self.budget_usd,
            ..KeyRecord::default()
        }
    }
}

/// How a subject is named to the caller whose request it refused.
pub fn whose(subject_id: &str) -> &'static str {
    if subject_id.starts_with("pay:") {
        "the prepaid balance's"
    } else if subject_id.starts_with("u:") {
        "your account's"
    } else if subject_id.starts_with("t:") {
        "your team's"
    } else {
        "this key's"
    }
}

/// The usage rows a subject's spend is summed over, as a condition with one `$1`.
pub(crate) fn spend_condition(id: &str) -> (&'static str, String) {
    if let Some(u) = id.strip_prefix("pay:u:") {
        (
            "key_id IN (SELECT id FROM keys WHERE user_id = $1 AND team_id IS NULL)",
            u.into(),
        )
    } else if let Some(t) = id.strip_prefix("pay:t:").or_else(|| id.strip_prefix("t:")) {
        (
            "key_id IN (SELECT id FROM keys WHERE team_id = $1)",
            t.into(),
        )
    } else if let Some(u) = id.strip_prefix("u:") {
        (
            "key_id IN (SELECT id FROM keys WHERE user_id = $1)",
            u.into(),
        )
    } else {
        ("key_id = $1", id.into())
    }
}

impl Tenancy {
    /// Every subject besides the key itself that has a limit: empty (and nothing
    /// allocated or read) for the keys of no account, which most are.
    pub async fn subjects(&self, key: &KeyRecord) -> Vec<KeyRecord> {
        let mut out = Vec::new();
        if key.user_id.is_none() && key.team_id.is_none() {
            return out;
        }
        let ids = [
            key.user_id.as_ref().map(|u| format!("u:{u}")),
            key.team_id.as_ref().map(|t| format!("t:{t}")),
            self.prepaid()
                .then(|| match (&key.team_id, &key.user_id) {
                    (Some(t), _) => Some(format!("pay:t:{t}")),
                    (None, Some(u)) => Some(format!("pay:u:{u}")),
                    (None, None) => None,
                })
                .flatten(),
        ];
        for id in ids.into_iter().flatten() {
            if let Some(s) = self.subject(&id).await {
                out.push(s);
            }
        }
        out
    }

    /// One subject's limits, from a cache at most [`SUBJECT_TTL`] old; `None` when it
    /// limits nothing. A store failure limits nothing but is logged, as for keys.
    async fn subject(&self, id: &str) -> Option<KeyRecord> {
        if let Ok(cache) = self.subject_cache.lock() {
            if let Some((s, at)) = cache.get(id) {
                if at.elapsed() < SUBJECT_TTL {
                    return s.clone();
                }
            }
        }
        let found = match self.load_subject(id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("subject {id}: {e}");
                return None;
            }
        };
        if let Ok(mut cache) = self.subject_cache.lock() {
            if cache.len() >= 10_000 {
                cache.retain(|_, (_, at)| at.elapsed() < SUBJECT_TTL);
            }
            cache.insert(id.to_string(), (found.clone(), Instant::now()));
        }
        found
    }

    async fn load_subject(&self, id: &str) -> Result<Option<KeyRecord>, crate::StoreError> {
        if let Some(payer) = id.strip_prefix("pay:") {
            let credit = self.store.credits(payer).await?;
            let limits = Limits {
                budget_usd: Some(credit.max(0.0)),
                ..Limits::default()
            };
            return Ok(Some(limits.subject(id.to_string(), "balance")));
        }
        let limits = if let Some(u) = id.strip_prefix("u:") {
            self.store.user_limits(u).await?
        } else if let Some(t) = id.strip_prefix("t:") {
            self.store.team(t).await?.map(|t| t.limits)
        } else {
            None
        };
        Ok(limits
            .filter(|l| !l.is_empty())
            .map(|l| l.subject(id.to_string(), id)))
    }

    /// Admits a request for `key`, then against each of its `others` subjects in turn;
    /// when one refuses, the admissions already made are taken back, so no subject
    /// counts a request that did not happen. The refusal names its subject's id.
    pub async fn admit_all(
        &self,
        key: &KeyRecord,
        others: &[KeyRecord],
        estimate: u64,
    ) -> Result<(limits::Ticket, limits::RateHeaders), (limits::Denied, String)> {
        let (first, headers) = self
            .admit(key, estimate)
            .await
            .map_err(|d| (d, key.id.clone()))?;
        if others.is_empty() {
            return Ok((first, headers));
        }
        let mut tickets = vec![first];
        for s in others {
            match self.admit(s, estimate).await {
                Ok((t, _)) => tickets.push(t),
                Err(d) => {
                    tickets.into_iter().for_each(limits::Ticket::cancel);
                    return Err((d, s.id.clone()));
                }
            }
        }
        Ok((limits::Ticket::chain(tickets), headers))
    }

    /// Holds `want` against `key`'s budgets, then each of its `others` subjects'; when
    /// one is used up, the holds already taken are let go. The refusal names its
    /// subject's id.
    pub async fn reserve_budget_all(
        &self,
        key: &KeyRecord,
        others: &[KeyRecord],
        want: budget::Estimate,
    ) -> Result<budget::Hold, (budget::Exhausted, String)> {
        let first = self
            .reserve_budget(key, want)
            .await
            .map_err(|e| (e, key.id.clone()))?;
        if others.is_empty() {
            return Ok(first);
        }
        let mut holds = vec![(key.id.clone(), first)];
        for s in others {
            match self.reserve_budget(s, want).await {
                Ok(h) => holds.push((s.id.clone(), h)),
                Err(e) => return Err((e, s.id.clone())),
            }
        }
        Ok(budget::Hold(budget::HoldKind::Chain(holds)))
    }

    /// Drops cached subjects after they changed here (limits edited, credit added).
    pub fn forget_subjects(&self) {
        if let Ok(mut cache) = self.subject_cache.lock() {
            cache.clear();
        }
    }

    pub fn prepaid(&self) -> bool {
        self.prepaid.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Prepaid balances on: every key of an account spends its payer's credit.
    pub fn set_prepaid(&self, on: bool) {
        self.prepaid.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}
