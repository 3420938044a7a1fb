//! The usage writer on a SQLite file: an OS thread with a connection of its own. Through
//! the pool, each commit went request task -> writer task -> sqlx's worker thread and
//! back, four wake-ups on a path that runs once per request; here it is request task ->
//! this thread -> request task. The file, its schema and WAL mode are the store's
//! (opened, migrated and switched to WAL before this starts).

use super::{
    retry_pauses, usage_insert_sql, Msg, Round, UsageRow, UsageValue, USAGE_ROWS_PER_STATEMENT,
};
use crate::wal::WalFlags;
use crate::StoreError;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OpenFlags, Statement};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Starts the writer thread on the SQLite file at `path`; its sender takes the rows.
pub(super) fn spawn(path: &Path, wal: Arc<WalFlags>) -> Result<mpsc::UnboundedSender<Msg>, String> {
    let conn = open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("usage-writer".into())
        .spawn(move || run(&conn, rx, &wal))
        .map_err(|e| format!("cannot start its thread: {e}"))?;
    Ok(tx)
}

/// The store's file with the store's settings (see `store::connect`): NORMAL sync under
/// WAL keeps every committed row through a killed process, and checkpoints are the
/// store's background task's, never a commit's.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.execute_batch(crate::wal::WAL_SIZE_LIMIT)?;
    // One statement per batch size seen; sizes repeat under a steady load.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Ends when every sender (the server's tenancy) is gone.
fn run(conn: &Connection, mut rx: mpsc::UnboundedReceiver<Msg>, wal: &WalFlags) {
    let mut round = Round::default();
    let mut kept = Kept::default();
    while let Some(first) = rx.blocking_recv() {
        round.gather(first, &mut rx);
        if round.rows.is_empty() {
            round.answer(Ok(()));
            continue;
        }
        let mut result = insert(conn, &mut kept, &round.rows);
        for pause in retry_pauses() {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(pause);
            result = insert(conn, &mut kept, &round.rows);
        }
        if result.is_ok() {
            wal.written.store(true, Ordering::Release);
        }
        round.answer(result.map_err(|e| StoreError::Sqlite(Arc::new(e))));
        if wal.checkpointed.swap(false, Ordering::AcqRel) {
            // The store's checkpoint copied and synced the WAL up to where it began
            // and found it past `wal::CATCH_UP_FRAMES`; with the frames written since
            // copied too (few: the fsync is most of it), the next commit starts the
            // WAL over from its beginning instead of growing it.
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!("WAL checkpoint after the store's: {e}");
            }
        }
    }
}

/// Batches of up to this many rows keep their statement for the writer's life.
const KEPT_SIZES: usize = 16;

/// The statements of the small batches a steady load repeats, prepared once: writing
/// out the SQL and looking it up in rusqlite's cache cost more per commit than
/// binding a row (callgrind).
#[derive(Default)]
struct Kept<'c> {
    by_rows: [Option<Statement<'c>>; KEPT_SIZES],
}

/// The rows in as few statements as the placeholder limit allows, each atomic on its
/// own.
fn insert<'c>(
    conn: &'c Connection,
    kept: &mut Kept<'c>,
    rows: &[UsageRow],
) -> rusqlite::Result<()> {
    for chunk in rows.chunks(USAGE_ROWS_PER_STATEMENT) {
        let mut cached;
        let stmt: &mut Statement<'c> = match kept.by_rows.get_mut(chunk.len() - 1) {
            Some(slot) => match slot {
                Some(stmt) => stmt,
                None => slot.insert(conn.prepare(&usage_insert_sql(chunk.len()))?),
            },
            None => {
                cached = conn.prepare_cached(&usage_insert_sql(chunk.len()))?;
                &mut cached
            }
        };
        let values = chunk.iter().flat_map(UsageRow::values);
        for (i, v) in values.enumerate() {
            stmt.raw_bind_parameter(i + 1, sql_value(v))?;
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

fn sql_value(v: UsageValue<'_>) -> ToSqlOutput<'_> {
    use rusqlite::types::ValueRef;
    match v {
        UsageValue::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(i)),
        UsageValue::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(f)),
        UsageValue::Text(t) | UsageValue::MaybeText(Some(t)) => {
            ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes()))
        }
        UsageValue::MaybeInt(Some(i)) => ToSqlOutput::Borrowed(ValueRef::Integer(i)),
        UsageValue::MaybeText(None) | UsageValue::MaybeInt(None) => {
            ToSqlOutput::Borrowed(ValueRef::Null)
        }
    }
}
