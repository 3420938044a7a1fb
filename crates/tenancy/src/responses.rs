//! Stored Responses API turns (`store: true`), read back for `previous_response_id`,
//! `GET /v1/responses/{id}` and its input items.

use crate::store::{db_err, Store};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub id: String,
    /// The stored key that made it; `None` for static keys and open servers.
    pub key_id: Option<String>,
    pub created_at: i64,
    pub previous_id: Option<String>,
    /// This turn's input items, a JSON array.
    pub input: String,
    /// The response object, JSON.
    pub response: String,
}

impl Store {
    /// Inserts or replaces (a streamed response is saved once, when it ends).
    pub async fn save_response(&self, r: &StoredResponse) -> Result<(), String> {
        sqlx::query(
            "INSERT INTO responses (id, key_id, created_at, previous_id, input, response)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET response = excluded.response",
        )
        .bind(&r.id)
        .bind(&r.key_id)
        .bind(r.created_at)
        .bind(&r.previous_id)
        .bind(&r.input)
        .bind(&r.response)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn get_response(&self, id: &str) -> Result<Option<StoredResponse>, String> {
        let row = sqlx::query(
            "SELECT id, key_id, created_at, previous_id, input, response FROM responses WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok(StoredResponse {
                id: r.try_get(0).map_err(db_err)?,
                key_id: r.try_get(1).map_err(db_err)?,
                created_at: r.try_get(2).map_err(db_err)?,
                previous_id: r.try_get(3).map_err(db_err)?,
                input: r.try_get(4).map_err(db_err)?,
                response: r.try_get(5).map_err(db_err)?,
            })
        })
        .transpose()
    }

    pub async fn delete_response(&self, id: &str) -> Result<bool, String> {
        let done = sqlx::query("DELETE FROM responses WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }
}
