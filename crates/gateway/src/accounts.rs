//! `[accounts]` in the config file: sign-up, the self-service plan, single sign-on and
//! mail. Plain settings; the server's account module acts on them.

use parlance_tenancy::accounts::SignupMode;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[accounts]` in the config file (`--signup` wins over `signup`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `closed` (default), `approval` or `open`.
    #[serde(default, deserialize_with = "mode")]
    pub signup: Option<SignupMode>,
    /// How people reach this server (`https://llm.example.org`), for the links shown to
    /// admins; without it links are relative (`/account#set-password=...`).
    pub public_url: Option<String>,
    /// What a self-service key may have at most, and what it gets when it asks for nothing.
    #[serde(default)]
    pub plan: Plan,
    /// Keys of accounts spend a prepaid balance (their team's for team keys, else their
    /// user's); an empty balance is a 429 `insufficient_quota`.
    #[serde(default)]
    pub prepaid: bool,
    /// Single sign-on with OpenID Connect (`[accounts.oidc]`).
    pub oidc: Option<OidcSettings>,
    /// Mail one-time links (`[accounts.smtp]`).
    pub smtp: Option<SmtpSettings>,
}

fn mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SignupMode>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// The default plan: the limits of keys people make for themselves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub budget_tokens: Option<u64>,
    pub budget_usd: Option<f64>,
    /// Models a self-service key may use; empty: all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Live keys one person (or one team) may hold.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
    /// Credit a new account starts with, with prepaid balances.
    pub credit_usd: Option<f64>,
}

fn default_max_keys() -> u32 {
    10
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            rpm: None,
            tpm: None,
            max_concurrent: None,
            budget_tokens: None,
            budget_usd: None,
            models: Vec::new(),
            max_keys: default_max_keys(),
            credit_usd: None,
        }
    }
}

impl Settings {
    pub fn signup(&self) -> SignupMode {
        self.signup.unwrap_or_default()
    }
}

/// `[accounts.oidc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The provider's issuer URL; `{issuer}/.well-known/openid-configuration` is read.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Email domains whose people may sign in; empty: any the provider vouches for.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// The claim listing a person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Members of these groups are admins (and others are not).
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// Group -> team name: members of the group join the team (made if missing).
    #[serde(default)]
    pub teams: BTreeMap<String, String>,
    /// The sign-in button's text.
    #[serde(default = "default_label")]
    pub label: String,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_label() -> String {
    "Sign in with single sign-on".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: Option<u16>,
    pub username: Option<String>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// `Parlance <noreply@example.org>`.
    pub from: String,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (a relay on
    /// loopback only).
    #[serde(default = "default_security")]
    pub security: String,
}

fn default_security() -> String {
    "starttls".into()
}
