//! Users, sessions, access requests, one-time links and the audit log in the store.
//! Session and link tokens are kept only as SHA-256 hashes: a copy of the database
//! signs nobody in.

use super::{AccessRequest, AuditEntry, Role, User};
use crate::keys::now_ms;
use crate::store::{db_err, Store};
use crate::StoreError;
use sqlx::any::AnyRow;
use sqlx::Row;

fn user_from_row(r: &AnyRow) -> Result<User, StoreError> {
    let role: String = r.try_get("role").map_err(db_err)?;
    Ok(User {
        id: r.try_get("id").map_err(db_err)?,
        email: r.try_get("email").map_err(db_err)?,
        name: r.try_get("name").map_err(db_err)?,
        role: Role::parse(&role).unwrap_or(Role::Member),
        organization: r.try_get("organization").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        disabled_at: r.try_get("disabled_at").map_err(db_err)?,
        password_hash: r.try_get("password_hash").map_err(db_err)?,
    })
}

fn request_from_row(r: &AnyRow) -> Result<AccessRequest, StoreError> {
    Ok(AccessRequest {
        id: r.try_get("id").map_err(db_err)?,
        email: r.try_get("email").map_err(db_err)?,
        name: r.try_get("name").map_err(db_err)?,
        organization: r.try_get("organization").map_err(db_err)?,
        intended_use: r.try_get("intended_use").map_err(db_err)?,
        status: r.try_get("status").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        decided_at: r.try_get("decided_at").map_err(db_err)?,
        decided_by: r.try_get("decided_by").map_err(db_err)?,
        user_id: r.try_get("user_id").map_err(db_err)?,
    })
}

impl Store {
    /// `Ok(false)` when the email is taken.
    pub async fn insert_user(&self, u: &User) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO users (id, email, name, role, organization, password_hash, created_at, disabled_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (email) DO NOTHING",
        )
        .bind(&u.id)
        .bind(&u.email)
        .bind(&u.name)
        .bind(u.role.as_str())
        .bind(&u.organization)
        .bind(u.password_hash.clone())
        .bind(u.created_at)
        .bind(u.disabled_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    /// Writes name, role, organization, password hash and disabled time.
    pub async fn update_user(&self, u: &User) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE users SET name = $1, role = $2, organization = $3, password_hash = $4, disabled_at = $5 WHERE id = $6",
        )
        .bind(&u.name)
        .bind(u.role.as_str())
        .bind(&u.organization)
        .bind(u.password_hash.clone())
        .bind(u.disabled_at)
        .bind(&u.id)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn has_admin_user(&self) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM users WHERE role = 'admin' AND disabled_at IS NULL LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(row.is_some())
    }

    pub async fn insert_session(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_at: i64,
        address: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, created_at, expires_at, revoked_at, address) VALUES ($1, $2, $3, $4, NULL, $5)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(now_ms())
        .bind(expires_at)
        .bind(address)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// The user of a live session (not expired, not revoked, user not disabled).
    pub async fn session_user(&self, token_hash: &str) -> Result<Option<(User, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT u.*, s.expires_at AS session_expires FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.disabled_at IS NULL",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok((
                user_from_row(&r)?,
                r.try_get("session_expires").map_err(db_err)?,
            ))
        })
        .transpose()
    }

    pub async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE id_hash = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(token_hash)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Signs a user out everywhere; returns how many sessions ended.
    pub async fn revoke_sessions_of(&self, user_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now_ms())
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    pub async fn insert_link(
        &self,
        token_hash: &str,
        user_id: &str,
        purpose: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO one_time_links (token_hash, user_id, purpose, expires_at, used_at) VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(purpose)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Marks a live link used and returns its user id; one statement, so two redeemers
    /// racing for one link cannot both win.
    pub async fn use_link(
        &self,
        token_hash: &str,
        purpose: &str,
    ) -> Result<Option<String>, StoreError> {
        // RETURNING: marking it used and reading whose it is are one statement.
        let row = sqlx::query(
            "UPDATE one_time_links SET used_at = $1 WHERE token_hash = $2 AND purpose = $3 AND used_at IS NULL AND expires_at > $1 RETURNING user_id",
        )
        .bind(now_ms())
        .bind(token_hash)
        .bind(purpose)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| r.try_get("user_id").map_err(db_err))
            .transpose()
    }

    pub async fn insert_access_request(&self, r: &AccessRequest) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_requests (id, email, name, organization, intended_use, status, created_at, decided_at, decided_by, user_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&r.id)
        .bind(&r.email)
        .bind(&r.name)
        .bind(&r.organization)
        .bind(&r.intended_use)
        .bind(&r.status)
        .bind(r.created_at)
        .bind(r.decided_at)
        .bind(r.decided_by.clone())
        .bind(r.user_id.clone())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Decides a pending request; `Ok(false)` when it was not pending (decided twice).
    pub async fn decide_access_request(&self, r: &AccessRequest) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE access_requests SET status = $1, decided_at = $2, decided_by = $3, user_id = $4 WHERE id = $5 AND status = 'pending'",
        )
        .bind(&r.status)
        .bind(r.decided_at)
        .bind(r.decided_by.clone())
        .bind(r.user_id.clone())
        .bind(&r.id)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn access_request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        let row = sqlx::query("SELECT * FROM access_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| request_from_row(&r)).transpose()
    }

    /// Requests with `status` (all when `None`), newest first.
    pub async fn access_requests(
        &self,
        status: Option<&str>,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM access_requests WHERE $1 = '' OR status = $1 ORDER BY created_at DESC, id",
        )
        .bind(status.unwrap_or_default())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(request_from_row).collect()
    }

    pub async fn pending_request_for(&self, email: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM access_requests WHERE email = $1 AND status = 'pending' LIMIT 1",
        )
        .bind(email)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(row.is_some())
    }

    pub async fn insert_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, detail, address) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.detail)
        .bind(&e.address)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// The newest `limit` entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit ORDER BY at DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get("at").map_err(db_err)?,
                    actor: r.try_get("actor").map_err(db_err)?,
                    action: r.try_get("action").map_err(db_err)?,
                    target: r.try_get("target").map_err(db_err)?,
                    detail: r.try_get("detail").map_err(db_err)?,
                    address: r.try_get("address").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// Keys a user made (or was given), revoked ones too.
    pub async fn keys_of(&self, user_id: &str) -> Result<Vec<crate::keys::KeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM keys WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(crate::store::key_from_row).collect()
    }

    /// Revokes every live key of a user (a disabled account); returns their ids.
    pub async fn revoke_keys_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = self
            .keys_of(user_id)
            .await?
            .into_iter()
            .filter(|k| k.revoked_at.is_none())
            .map(|k| k.id)
            .collect();
        for id in &ids {
            self.revoke_key(id).await?;
        }
        Ok(ids)
    }
}
