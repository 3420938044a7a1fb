//! `parlance keys ...` and `parlance usage`: keys and usage straight from the store
//! the server uses (`--db`), so they work with the server running or not.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use parlance_tenancy::keys::{now_ms, parse_duration_ms};
use parlance_tenancy::usage::{UsageFilter, UsageGroup};
use parlance_tenancy::{KeySpec, Tenancy};
use std::sync::Arc;

/// Where usage and keys live unless `--db` says otherwise.
pub(crate) const DEFAULT_DB: &str = "sqlite://parlance.db";

#[derive(Args, Debug, Clone)]
pub(crate) struct DbArg {
    /// The store: sqlite://PATH (default sqlite://parlance.db) or postgres://...
    #[arg(long = "db", env = "PARLANCE_DB", default_value = DEFAULT_DB)]
    pub db: String,
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Make a key; prints it once.
    Create(CreateArgs),
    /// List keys (never their secrets).
    List(DbArg),
    /// Revoke a key by id; it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    #[arg(long)]
    pub name: String,
    /// Allowed models, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    #[arg(long)]
    pub rpm: Option<u32>,
    #[arg(long)]
    pub tpm: Option<u32>,
    #[arg(long = "max-concurrent")]
    pub max_concurrent: Option<u32>,
    #[arg(long = "budget-tokens")]
    pub budget_tokens: Option<u64>,
    #[arg(long = "budget-usd")]
    pub budget_usd: Option<f64>,
    /// Lifetime: 30d, 12h, 45m.
    #[arg(long)]
    pub expires: Option<String>,
    #[command(flatten)]
    pub db: DbArg,
}

#[derive(Args, Debug)]
pub(crate) struct UsageArgs {
    #[arg(long = "key")]
    pub key: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// How far back: 7d, 24h (default: everything).
    #[arg(long)]
    pub since: Option<String>,
    /// key, model or day.
    #[arg(long = "by", default_value = "model")]
    pub by: String,
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub db: DbArg,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn open(db: &DbArg) -> anyhow::Result<Arc<Tenancy>> {
    Tenancy::open(&db.db, None)
        .await
        .map_err(anyhow::Error::msg)
}

fn cell(v: Option<impl ToString>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub(crate) fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            KeysCommand::Create(a) => {
                let t = open(&a.db).await?;
                let expires_at_ms = match &a.expires {
                    Some(e) => Some(
                        now_ms()
                            + parse_duration_ms(e)
                                .with_context(|| format!("--expires {e:?}: use 30d, 12h or 45m"))?,
                    ),
                    None => None,
                };
                let (rec, key) = t
                    .create_key(KeySpec {
                        name: a.name,
                        models: a.models,
                        rpm: a.rpm,
                        tpm: a.tpm,
                        max_concurrent: a.max_concurrent,
                        budget_tokens: a.budget_tokens,
                        budget_usd: a.budget_usd,
                        expires_at_ms,
                        metadata: Default::default(),
                        user_id: None,
                        team_id: None,
                    })
                    .await
                    .map_err(anyhow::Error::msg)?;
                eprintln!(
                    "key `{}` ({}) created; it is shown only this once:",
                    rec.name, rec.id
                );
                println!("{key}");
            }
            KeysCommand::List(db) => {
                let t = open(&db).await?;
                println!(
                    "{:<14} {:<20} {:>6} {:>8} {:>5} {:>12} {:>10} {:<8} MODELS",
                    "ID", "NAME", "RPM", "TPM", "CONC", "TOKENS USED", "USD USED", "STATE"
                );
                for k in t.store.list_keys().await.map_err(anyhow::Error::msg)? {
                    let (tokens, usd) = t.spent(&k.id).await;
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else if k.expired(now_ms()) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<14} {:<20} {:>6} {:>8} {:>5} {:>12} {:>10.4} {:<8} {}",
                        k.id,
                        k.name,
                        cell(k.rpm),
                        cell(k.tpm),
                        cell(k.max_concurrent),
                        tokens,
                        usd,
                        state,
                        if k.models.is_empty() {
                            "all".into()
                        } else {
                            k.models.join(",")
                        }
                    );
                }
            }
            KeysCommand::Revoke { id, db } => {
                let t = open(&db).await?;
                if t.store
                    .get_key(&id)
                    .await
                    .map_err(anyhow::Error::msg)?
                    .is_none()
                {
                    bail!("no key with id {id}");
                }
                t.store.revoke_key(&id).await.map_err(anyhow::Error::msg)?;
                println!("revoked {id}");
            }
        }
        Ok(())
    })
}

pub(crate) fn usage(a: UsageArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let t = open(&a.db).await?;
        let group = match a.by.as_str() {
            "key" => UsageGroup::Key,
            "model" => UsageGroup::Model,
            "day" => UsageGroup::Day,
            other => bail!("--by {other}: use key, model or day"),
        };
        let from = match &a.since {
            Some(s) => Some(
                now_ms()
                    - parse_duration_ms(s)
                        .with_context(|| format!("--since {s:?}: use 7d or 24h"))?,
            ),
            None => None,
        };
        let filter = UsageFilter {
            key_id: a.key,
            user_id: None,
            team_id: None,
            model: a.model,
            from,
            to: None,
        };
        let rows = t
            .store
            .usage_totals(&filter, group)
            .await
            .map_err(anyhow::Error::msg)?;
        if a.csv {
            print!("{}", parlance_server::usage_csv(&rows));
            return Ok(());
        }
        println!(
            "{:<28} {:>9} {:>12} {:>12} {:>10} {:>11} {:>7} {:>9}",
            a.by.to_uppercase(),
            "REQUESTS",
            "PROMPT",
            "COMPLETION",
            "CACHED",
            "COST USD",
            "ERRORS",
            "CANCELLED"
        );
        for r in rows {
            println!(
                "{:<28} {:>9} {:>12} {:>12} {:>10} {:>11.4} {:>7} {:>9}",
                r.group,
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.cost_usd,
                r.errors,
                r.cancelled
            );
        }
        Ok(())
    })
}
