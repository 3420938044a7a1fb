//! `parlance teams ...` and `parlance codes ...`: teams, credit and redemption codes
//! straight from the store, audited as `cli`.

use crate::tenancy_cli::DbArg;
use anyhow::Context;
use clap::Subcommand;
use parlance_tenancy::subjects::Limits;
use parlance_tenancy::Tenancy;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub(crate) enum TeamsCommand {
    /// Make a team, with optional limits over all its keys.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        rpm: Option<u32>,
        #[arg(long)]
        tpm: Option<u32>,
        #[arg(long = "max-concurrent")]
        max_concurrent: Option<u32>,
        #[arg(long = "budget-usd")]
        budget_usd: Option<f64>,
        #[command(flatten)]
        db: DbArg,
    },
    /// List teams with their members and balances.
    List(DbArg),
    /// Add a person (by email) to a team, or change their role.
    Add {
        #[arg(long)]
        team: String,
        #[arg(long)]
        email: String,
        /// admin (team admin) or member.
        #[arg(long, default_value = "member")]
        role: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Credit a team's (or with --user, a person's) prepaid balance.
    Credit {
        /// Team id; or --user EMAIL.
        #[arg(long, required_unless_present = "user")]
        team: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        usd: f64,
        #[arg(long)]
        note: String,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum CodesCommand {
    /// Make redemption codes worth USD each; prints them once (only hashes are kept).
    Create {
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        usd: f64,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        db: DbArg,
    },
}

async fn open(db: &DbArg) -> anyhow::Result<Arc<Tenancy>> {
    Tenancy::open(&db.db, None)
        .await
        .map_err(anyhow::Error::msg)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The account of this email, or an error naming it.
async fn account(t: &Tenancy, email: &str) -> anyhow::Result<parlance_tenancy::accounts::User> {
    t.store
        .user_by_email(&email.trim().to_lowercase())
        .await
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("no account with the email {email}"))
}

async fn payer(t: &Tenancy, team: Option<String>, user: Option<String>) -> anyhow::Result<String> {
    if let Some(email) = user {
        let u = account(t, &email).await?;
        return Ok(format!("u:{}", u.id));
    }
    let id = team.context("--team or --user")?;
    t.store
        .team(&id)
        .await
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("no team {id}"))?;
    Ok(format!("t:{id}"))
}

pub(crate) fn teams(cmd: TeamsCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            TeamsCommand::Create {
                name,
                rpm,
                tpm,
                max_concurrent,
                budget_usd,
                db,
            } => {
                let t = open(&db).await?;
                let limits = Limits {
                    rpm,
                    tpm,
                    max_concurrent,
                    budget_usd,
                    ..Limits::default()
                };
                let team = t
                    .store
                    .insert_team(&name, &limits)
                    .await
                    .map_err(anyhow::Error::msg)?;
                t.audit("cli", "team.create", &team.id, &name, "-").await;
                println!("{} {}", team.id, team.name);
            }
            TeamsCommand::List(db) => {
                list(&db).await?;
            }
            TeamsCommand::Add {
                team,
                email,
                role,
                db,
            } => {
                add(&team, &email, &role, &db).await?;
            }
            TeamsCommand::Credit {
                team,
                user,
                usd,
                note,
                db,
            } => {
                let t = open(&db).await?;
                anyhow::ensure!(
                    usd.is_finite() && usd != 0.0,
                    "--usd must be a non-zero number"
                );
                let payer = payer(&t, team, user).await?;
                t.store
                    .credit(&payer, usd, "topup", &note, "cli")
                    .await
                    .map_err(anyhow::Error::msg)?;
                t.audit(
                    "cli",
                    "balance.top_up",
                    &payer,
                    &format!("{usd:+.2} USD: {note}"),
                    "-",
                )
                .await;
                let credits = t.store.credits(&payer).await.map_err(anyhow::Error::msg)?;
                println!("{payer}: ${credits:.4} credited in all");
            }
        }
        Ok(())
    })
}

async fn list(db: &DbArg) -> anyhow::Result<()> {
    let t = open(db).await?;
    for team in t.store.list_teams().await.map_err(anyhow::Error::msg)? {
        let members = t
            .store
            .members(&team.id)
            .await
            .map_err(anyhow::Error::msg)?;
        let payer = format!("t:{}", team.id);
        let credits = t.store.credits(&payer).await.map_err(anyhow::Error::msg)?;
        let (_, spent) = t
            .store
            .spent(&format!("pay:{payer}"))
            .await
            .map_err(anyhow::Error::msg)?;
        let who: Vec<String> = members
            .iter()
            .map(|m| format!("{} ({})", m.email, m.role))
            .collect();
        println!(
            "{} {:<20} ${:.4} left  {}",
            team.id,
            team.name,
            credits - spent,
            who.join(", ")
        );
    }
    Ok(())
}

async fn add(team: &str, email: &str, role: &str, db: &DbArg) -> anyhow::Result<()> {
    let t = open(db).await?;
    anyhow::ensure!(
        role == "admin" || role == "member",
        "--role must be admin or member"
    );
    let u = account(&t, email).await?;
    t.store
        .team(team)
        .await
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("no team {team}"))?;
    t.store
        .set_member(team, &u.id, role)
        .await
        .map_err(anyhow::Error::msg)?;
    t.audit(
        "cli",
        "team.set_member",
        team,
        &format!("{} {role}", u.email),
        "-",
    )
    .await;
    let what = if role == "admin" {
        "an admin"
    } else {
        "a member"
    };
    println!("{} is {what} of {team}", u.email);
    Ok(())
}

pub(crate) fn codes(cmd: CodesCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let CodesCommand::Create {
            count,
            usd,
            note,
            db,
        } = cmd;
        anyhow::ensure!((1..=1000).contains(&count), "--count must be 1 to 1000");
        anyhow::ensure!(usd.is_finite() && usd > 0.0, "--usd must be positive");
        let t = open(&db).await?;
        let codes = t
            .store
            .make_codes(count, usd, &note, "cli")
            .await
            .map_err(anyhow::Error::msg)?;
        t.audit(
            "cli",
            "codes.create",
            "-",
            &format!("{count} x {usd:.2} USD {note}"),
            "-",
        )
        .await;
        for c in codes {
            println!("{c}");
        }
        Ok(())
    })
}
