//! The usage table's INSERT and a row's values in its column order, defined once for
//! both writers (the pool's and the SQLite thread's).

use super::UsageRow;

/// Columns of a usage row, in `usage_insert_sql`'s order.
pub(crate) const USAGE_COLUMNS: usize = 16;

/// Rows one usage INSERT holds at most: SQLite takes at most 32766 placeholders a
/// statement.
pub(crate) const USAGE_ROWS_PER_STATEMENT: usize = 1000;

/// The INSERT of `rows` usage rows, placeholders `$1`, `$2`... in row order (SQLite
/// numbers them the same way when they are bound by position).
pub(crate) fn usage_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO usage (at, request_id, key_id, model, deployment, front_door, streamed, status, prompt_tokens,
         completion_tokens, cached_tokens, reasoning_tokens, cost_usd, latency_ms, ttft_ms, estimated) VALUES ",
    );
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..USAGE_COLUMNS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * USAGE_COLUMNS + c + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// One column's value of a usage row, as both SQL drivers bind it.
pub(crate) enum UsageValue<'a> {
    Int(i64),
    Real(f64),
    Text(&'a str),
    MaybeText(Option<&'a str>),
    MaybeInt(Option<i64>),
}

impl UsageRow {
    /// The row's values in `usage_insert_sql`'s column order.
    pub(crate) fn values(&self) -> [UsageValue<'_>; USAGE_COLUMNS] {
        use UsageValue::{Int, MaybeInt, MaybeText, Real, Text};
        [
            Int(self.at),
            Text(&self.request_id),
            MaybeText(self.key_id.as_deref()),
            Text(&self.model),
            Text(&self.deployment),
            Text(&self.front_door),
            Int(i64::from(self.streamed)),
            Text(&self.status),
            Int(i64::from(self.prompt_tokens)),
            Int(i64::from(self.completion_tokens)),
            Int(i64::from(self.cached_tokens)),
            Int(i64::from(self.reasoning_tokens)),
            Real(self.cost_usd),
            Int(self.latency_ms),
            MaybeInt(self.ttft_ms),
            Int(i64::from(self.estimated)),
        ]
    }
}
