//! The store's one error type.

use std::sync::Arc;

/// Why a store operation failed. Cheap to clone: the usage writer hands one result to
/// every request whose row was in the failed commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (its URL shown without a password).
    #[error("cannot open the database {url}: {source}")]
    Open {
        url: String,
        source: Arc<sqlx::Error>,
    },
    /// A query failed, or a row did not have the columns it should.
    #[error("database: {0}")]
    Database(Arc<sqlx::Error>),
    /// The usage writer's own SQLite connection failed.
    #[error("database: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    /// The usage writer's task has stopped (the server is shutting down).
    #[error("the usage writer has stopped")]
    WriterStopped,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(Arc::new(e))
    }
}

/// Why tenancy could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis (`--redis`) could not be reached or its URL is malformed.
    #[error("--redis {url}: {why}")]
    Redis { url: String, why: String },
    /// The server secret's file beside the SQLite store could not be read or made.
    #[error("{path}: {source}")]
    Secret {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Why a key could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CreateKeyError {
    #[error("a key needs a name")]
    NoName,
    #[error(transparent)]
    Store(#[from] StoreError),
}
