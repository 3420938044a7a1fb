//! `parlance users ...`: accounts straight from the store (the first admin is made
//! here, before anyone can sign in). Every change goes to the audit log as `cli`.

use crate::tenancy_cli::DbArg;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use parlance_tenancy::accounts::{NewUser, Role};
use parlance_tenancy::Tenancy;
use std::io::BufRead;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub(crate) enum UsersCommand {
    /// Make an account; without --password-stdin it prints a one-time set-password link.
    Create(CreateUser),
    /// List accounts.
    List(DbArg),
    /// Disable an account: its sessions end and its keys are revoked.
    Disable {
        email: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Print a new one-time set-password link for an account.
    Link {
        email: String,
        /// Prefix of the link (https://llm.example.org).
        #[arg(long = "public-url", default_value = "")]
        public_url: String,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CreateUser {
    #[arg(long)]
    pub email: String,
    #[arg(long)]
    pub name: String,
    /// admin or member.
    #[arg(long, default_value = "member")]
    pub role: String,
    #[arg(long, default_value = "")]
    pub organization: String,
    /// Read the password from the first line of standard input (never an argument:
    /// arguments show in `ps` and shell history).
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    /// Prefix of the printed link (https://llm.example.org).
    #[arg(long = "public-url", default_value = "")]
    pub public_url: String,
    #[command(flatten)]
    pub db: DbArg,
}

async fn open(db: &DbArg) -> anyhow::Result<Arc<Tenancy>> {
    Tenancy::open(&db.db, None)
        .await
        .map_err(anyhow::Error::msg)
}

fn link(public_url: &str, token: &str) -> String {
    format!(
        "{}/account#set-password={token}",
        public_url.trim_end_matches('/')
    )
}

async fn find(t: &Tenancy, email: &str) -> anyhow::Result<parlance_tenancy::accounts::User> {
    let email = email.trim().to_lowercase();
    t.store
        .user_by_email(&email)
        .await
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("no account with the email {email}"))
}

async fn create(a: CreateUser) -> anyhow::Result<()> {
    let Some(role) = Role::parse(&a.role) else {
        bail!("--role must be admin or member");
    };
    let password = if a.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Some(line.trim_end_matches(['\r', '\n']).to_string())
    } else {
        None
    };
    let t = open(&a.db).await?;
    let user = t
        .create_user(NewUser {
            email: a.email,
            name: a.name,
            role,
            organization: a.organization,
            password: password.clone(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    t.audit(
        "cli",
        "user.create",
        &user.id,
        &format!("{} {}", user.email, role.as_str()),
        "-",
    )
    .await;
    println!("{} {} ({})", user.id, user.email, role.as_str());
    if password.is_none() {
        let token = t
            .password_link(&user.id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "set-password link (works once, for 3 days): {}",
            link(&a.public_url, &token)
        );
    }
    Ok(())
}

pub(crate) fn users(cmd: UsersCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            UsersCommand::Create(a) => create(a).await,
            UsersCommand::List(db) => {
                let t = open(&db).await?;
                println!(
                    "{:<22} {:<32} {:<7} {:<9} NAME",
                    "ID", "EMAIL", "ROLE", "STATE"
                );
                for u in t.store.list_users().await.map_err(anyhow::Error::msg)? {
                    let state = match (u.disabled_at, &u.password_hash) {
                        (Some(_), _) => "disabled",
                        (None, None) => "invited",
                        (None, Some(_)) => "active",
                    };
                    println!(
                        "{:<22} {:<32} {:<7} {:<9} {}",
                        u.id,
                        u.email,
                        u.role.as_str(),
                        state,
                        u.name
                    );
                }
                Ok(())
            }
            UsersCommand::Disable { email, db } => {
                let t = open(&db).await?;
                let mut u = find(&t, &email).await?;
                let keys = t
                    .disable_user(&mut u)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                t.audit("cli", "user.update", &u.id, "disabled=true", "-")
                    .await;
                println!("disabled {} ({} keys revoked)", u.email, keys.len());
                Ok(())
            }
            UsersCommand::Link {
                email,
                public_url,
                db,
            } => {
                let t = open(&db).await?;
                let u = find(&t, &email).await?;
                let token = t
                    .password_link(&u.id)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                t.audit("cli", "user.password_link", &u.id, "", "-").await;
                println!("{}", link(&public_url, &token));
                Ok(())
            }
        }
    })
}
