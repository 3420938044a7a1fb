//! Stored Responses API turns (`store: true`), read back for `previous_response_id`,
//! `GET /v1/responses/{id}` and its input items.

use crate::store::{db_err, Store};
use crate::StoreError;
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
    pub async fn save_response(&self, r: &StoredResponse) -> Result<(), StoreError> {
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

    pub async fn get_response(&self, id: &str) -> Result<Option<StoredResponse>, StoreError> {
        let row = sqlx::query(
            "SELECT id, key_id, created_at, previous_id, input, response FROM responses WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(row_to_response).transpose()
    }

    /// The turn `id` and the ones before it, newest first, at most `limit`, in one
    /// query (a recursive walk of `previous_id`) instead of one round trip a turn.
    pub async fn response_chain(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<StoredResponse>, StoreError> {
        let rows = sqlx::query(
            "WITH RECURSIVE chain (id, key_id, created_at, previous_id, input, response, depth) AS (
                SELECT id, key_id, created_at, previous_id, input, response, CAST(0 AS BIGINT) FROM responses WHERE id = $1
                UNION ALL
                SELECT r.id, r.key_id, r.created_at, r.previous_id, r.input, r.response, c.depth + 1
                FROM responses r JOIN chain c ON r.id = c.previous_id WHERE c.depth + 1 < CAST($2 AS BIGINT)
             )
             SELECT id, key_id, created_at, previous_id, input, response FROM chain ORDER BY depth",
        )
        .bind(id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(row_to_response).collect()
    }

    pub async fn delete_response(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM responses WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }
}

fn row_to_response(r: &sqlx::any::AnyRow) -> Result<StoredResponse, StoreError> {
    Ok(StoredResponse {
        id: r.try_get(0).map_err(db_err)?,
        key_id: r.try_get(1).map_err(db_err)?,
        created_at: r.try_get(2).map_err(db_err)?,
        previous_id: r.try_get(3).map_err(db_err)?,
        input: r.try_get(4).map_err(db_err)?,
        response: r.try_get(5).map_err(db_err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(id: &str, previous: Option<&str>) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            key_id: Some("k".into()),
            created_at: 1,
            previous_id: previous.map(str::to_string),
            input: "[]".into(),
            response: "{}".into(),
        }
    }

    #[tokio::test]
    async fn a_chain_comes_back_newest_first_in_one_query() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display()))
            .await
            .unwrap();
        for t in [
            turn("r1", None),
            turn("r2", Some("r1")),
            turn("r3", Some("r2")),
        ] {
            store.save_response(&t).await.unwrap();
        }
        let ids = |v: Vec<StoredResponse>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.response_chain("r3", 10).await.unwrap()),
            ["r3", "r2", "r1"]
        );
        assert_eq!(
            ids(store.response_chain("r3", 2).await.unwrap()),
            ["r3", "r2"]
        );
        assert!(store.response_chain("nope", 10).await.unwrap().is_empty());
        assert!(store.delete_response("r2").await.unwrap());
        // The walk stops where a turn is missing; the caller sees `previous_id`.
        let left = store.response_chain("r3", 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].previous_id.as_deref(), Some("r2"));
    }
}
