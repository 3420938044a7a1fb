//! Teams, their members, per-user and per-team limits, the prepaid credit ledger and
//! redemption codes, in the store. A payer is `u:USER` or `t:TEAM`.

use crate::keys::{hash, now_ms, random_text};
use crate::store::{db_err, Store};
use crate::subjects::Limits;
use crate::StoreError;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub limits: Limits,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    /// `admin` (team admin) or `member`.
    pub role: String,
    pub added_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    pub id: String,
    pub at: i64,
    pub payer: String,
    pub amount_usd: f64,
    /// `topup` or `code`.
    pub kind: String,
    pub note: String,
    pub actor: String,
}

fn team_from_row(r: &AnyRow) -> Result<Team, StoreError> {
    let limits: String = r.try_get("limits").map_err(db_err)?;
    Ok(Team {
        id: r.try_get("id").map_err(db_err)?,
        name: r.try_get("name").map_err(db_err)?,
        limits: Limits::parse(&limits),
        created_at: r.try_get("created_at").map_err(db_err)?,
    })
}

impl Store {
    pub async fn insert_team(&self, name: &str, limits: &Limits) -> Result<Team, StoreError> {
        let team = Team {
            id: format!("team_{}", random_text(12)),
            name: name.to_string(),
            limits: limits.clone(),
            created_at: now_ms(),
        };
        sqlx::query("INSERT INTO teams (id, name, limits, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&team.id)
            .bind(&team.name)
            .bind(serde_json::to_string(&team.limits).unwrap_or_default())
            .bind(team.created_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(team)
    }

    pub async fn update_team(&self, t: &Team) -> Result<(), StoreError> {
        sqlx::query("UPDATE teams SET name = $1, limits = $2 WHERE id = $3")
            .bind(&t.name)
            .bind(serde_json::to_string(&t.limits).unwrap_or_default())
            .bind(&t.id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn team(&self, id: &str) -> Result<Option<Team>, StoreError> {
        let row = sqlx::query("SELECT * FROM teams WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| team_from_row(&r)).transpose()
    }

    pub async fn team_by_name(&self, name: &str) -> Result<Option<Team>, StoreError> {
        let row = sqlx::query("SELECT * FROM teams WHERE name = $1 ORDER BY created_at LIMIT 1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| team_from_row(&r)).transpose()
    }

    /// Records a single sign-on in progress (its state stored hashed).
    pub async fn insert_oidc_flow(
        &self,
        state: &str,
        nonce: &str,
        verifier: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oidc_flows (state_hash, nonce, verifier, expires_at, used_at) VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(hash(state))
        .bind(nonce)
        .bind(verifier)
        .bind(now_ms() + ttl_ms)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// `(nonce, PKCE verifier)` of a live, unused sign-in, marking it used in the same
    /// statement: a replayed callback finds nothing.
    pub async fn take_oidc_flow(
        &self,
        state: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "UPDATE oidc_flows SET used_at = $1 WHERE state_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING nonce, verifier",
        )
        .bind(now_ms())
        .bind(hash(state))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok((
                r.try_get("nonce").map_err(db_err)?,
                r.try_get("verifier").map_err(db_err)?,
            ))
        })
        .transpose()
    }

    pub async fn list_teams(&self) -> Result<Vec<Team>, StoreError> {
        let rows = sqlx::query("SELECT * FROM teams ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(team_from_row).collect()
    }

    /// Adds a member or changes their role.
    pub async fn set_member(
        &self,
        team_id: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, added_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(role)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn remove_member(&self, team_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn members(&self, team_id: &str) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.email, u.name, m.role, m.added_at FROM team_members m JOIN users u ON u.id = m.user_id
             WHERE m.team_id = $1 ORDER BY m.added_at, u.email",
        )
        .bind(team_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(Member {
                    user_id: r.try_get("user_id").map_err(db_err)?,
                    email: r.try_get("email").map_err(db_err)?,
                    name: r.try_get("name").map_err(db_err)?,
                    role: r.try_get("role").map_err(db_err)?,
                    added_at: r.try_get("added_at").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// The teams a user belongs to, with their role in each.
    pub async fn teams_of(&self, user_id: &str) -> Result<Vec<(Team, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.*, m.role AS member_role FROM team_members m JOIN teams t ON t.id = m.team_id
             WHERE m.user_id = $1 ORDER BY t.created_at, t.id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((team_from_row(r)?, r.try_get("member_role").map_err(db_err)?)))
            .collect()
    }

    pub async fn user_limits(&self, user_id: &str) -> Result<Option<Limits>, StoreError> {
        let row = sqlx::query("SELECT limits FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| r.try_get::<String, _>("limits").map(|l| Limits::parse(&l)))
            .transpose()
            .map_err(db_err)
    }

    pub async fn set_user_limits(&self, user_id: &str, limits: &Limits) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET limits = $1 WHERE id = $2")
            .bind(serde_json::to_string(limits).unwrap_or_default())
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Keys of a team, revoked ones too.
    pub async fn team_keys(
        &self,
        team_id: &str,
    ) -> Result<Vec<crate::keys::KeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM keys WHERE team_id = $1 ORDER BY created_at, id")
            .bind(team_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(crate::store::key_from_row).collect()
    }

    /// Everything ever credited to a payer.
    pub async fn credits(&self, payer: &str) -> Result<f64, StoreError> {
        let r = sqlx::query("SELECT SUM(amount_usd) AS c FROM ledger WHERE payer = $1")
            .bind(payer)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.try_get::<Option<f64>, _>("c")
            .map_err(db_err)?
            .unwrap_or_default())
    }

    pub async fn credit(
        &self,
        payer: &str,
        amount_usd: f64,
        kind: &str,
        note: &str,
        actor: &str,
    ) -> Result<LedgerEntry, StoreError> {
        let e = LedgerEntry {
            id: format!("cr_{}", random_text(16)),
            at: now_ms(),
            payer: payer.to_string(),
            amount_usd,
            kind: kind.to_string(),
            note: note.to_string(),
            actor: actor.to_string(),
        };
        sqlx::query(
            "INSERT INTO ledger (id, at, payer, amount_usd, kind, note, actor) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.id)
        .bind(e.at)
        .bind(&e.payer)
        .bind(e.amount_usd)
        .bind(&e.kind)
        .bind(&e.note)
        .bind(&e.actor)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(e)
    }

    pub async fn ledger(&self, payer: &str) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM ledger WHERE payer = $1 ORDER BY at DESC, id")
            .bind(payer)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(LedgerEntry {
                    id: r.try_get("id").map_err(db_err)?,
                    at: r.try_get("at").map_err(db_err)?,
                    payer: r.try_get("payer").map_err(db_err)?,
                    amount_usd: r.try_get("amount_usd").map_err(db_err)?,
                    kind: r.try_get("kind").map_err(db_err)?,
                    note: r.try_get("note").map_err(db_err)?,
                    actor: r.try_get("actor").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// Makes `count` codes worth `amount_usd` each; returns them (the only time they
    /// exist in clear).
    pub async fn make_codes(
        &self,
        count: u32,
        amount_usd: f64,
        note: &str,
        actor: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let code = format!("PRL-{}", random_text(20));
            sqlx::query(
                "INSERT INTO codes (code_hash, id, amount_usd, note, created_at, created_by, redeemed_at, redeemed_by)
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)",
            )
            .bind(hash(&code))
            .bind(format!("code_{}", random_text(10)))
            .bind(amount_usd)
            .bind(note)
            .bind(now_ms())
            .bind(actor)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
            out.push(code);
        }
        Ok(out)
    }

    /// Marks a code redeemed by `payer` and returns its value; one statement, so two
    /// people racing for one code cannot both get it. `None`: unknown or used.
    pub async fn redeem_code(
        &self,
        code: &str,
        payer: &str,
    ) -> Result<Option<(String, f64)>, StoreError> {
        let row = sqlx::query(
            "UPDATE codes SET redeemed_at = $1, redeemed_by = $2 WHERE code_hash = $3 AND redeemed_at IS NULL RETURNING id, amount_usd",
        )
        .bind(now_ms())
        .bind(payer)
        .bind(hash(code.trim()))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok((
                r.try_get("id").map_err(db_err)?,
                r.try_get("amount_usd").map_err(db_err)?,
            ))
        })
        .transpose()
    }

    /// Codes as admins see them: never the code itself.
    pub async fn list_codes(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows = sqlx::query("SELECT * FROM codes ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "id": r.try_get::<String, _>("id").map_err(db_err)?,
                    "amount_usd": r.try_get::<f64, _>("amount_usd").map_err(db_err)?,
                    "note": r.try_get::<String, _>("note").map_err(db_err)?,
                    "created_at": r.try_get::<i64, _>("created_at").map_err(db_err)? / 1000,
                    "created_by": r.try_get::<String, _>("created_by").map_err(db_err)?,
                    "redeemed_at": r.try_get::<Option<i64>, _>("redeemed_at").map_err(db_err)?.map(|t| t / 1000),
                    "redeemed_by": r.try_get::<Option<String>, _>("redeemed_by").map_err(db_err)?,
                }))
            })
            .collect()
    }
}
