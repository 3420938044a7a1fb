//! Accounts: people who sign in (password or single sign-on), their sessions, the
//! access requests of people who want one, one-time links to set a password, and the
//! audit log of administrative actions. The server turns this into pages and cookies.

pub mod password;
mod sql;
pub mod teams;

use crate::keys::{hash, now_ms, random_text};
use crate::tokens::{hex, hmac};
use crate::{CreateKeyError, Tenancy};
use serde::Serialize;

/// How long a console session lasts from sign-in.
pub const SESSION_TTL_MS: i64 = 7 * 86_400_000;
/// How long a set-password link works.
pub const LINK_TTL_MS: i64 = 3 * 86_400_000;
const SESSION_PREFIX: &str = "prl_s_";
const LINK_PREFIX: &str = "prl_l_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

/// Who may become a user without an operator making the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignupMode {
    /// Only admins make accounts.
    #[default]
    Closed,
    /// Anyone may ask; an admin approves.
    Approval,
    /// Anyone gets an account and a first key at once.
    Open,
}

/// A sign-up mode's name that is none of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a sign-up mode: closed, approval or open")]
pub struct UnknownSignupMode(pub String);

impl std::str::FromStr for SignupMode {
    type Err = UnknownSignupMode;
    fn from_str(s: &str) -> Result<Self, UnknownSignupMode> {
        match s {
            "closed" => Ok(SignupMode::Closed),
            "approval" => Ok(SignupMode::Approval),
            "open" => Ok(SignupMode::Open),
            other => Err(UnknownSignupMode(other.to_string())),
        }
    }
}

impl SignupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SignupMode::Closed => "closed",
            SignupMode::Approval => "approval",
            SignupMode::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    /// Lowercased: one account per address however it is typed.
    pub email: String,
    pub name: String,
    pub role: Role,
    pub organization: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    /// Argon2id PHC string; `None` until a password is set.
    #[serde(skip)]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessRequest {
    pub id: String,
    pub email: String,
    pub name: String,
    pub organization: String,
    pub intended_use: String,
    /// `pending`, `approved` or `denied`.
    pub status: String,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: i64,
    /// `admin-key`, or the acting user's email.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub address: String,
}

/// What a sign-in or a session check finds.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    /// Sent back as a header on every state-changing call (CSRF).
    pub csrf: String,
    pub expires_at: i64,
}

/// Why an accounts operation is refused, each a sentence a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("An account with this email already exists.")]
    EmailTaken,
    #[error("Wrong email or password.")]
    BadCredentials,
    #[error("Too many failed sign-ins: try again in {0} seconds.")]
    Throttled(u64),
    #[error("This link is unknown, used or expired: ask for a new one.")]
    BadLink,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Store(#[from] crate::StoreError),
    /// Hashing a password failed (no randomness for a salt, or its worker died).
    #[error("password hashing: {0}")]
    Hashing(String),
}

impl From<CreateKeyError> for AccountError {
    fn from(e: CreateKeyError) -> Self {
        match e {
            CreateKeyError::NoName => AccountError::Invalid {
                field: "name",
                message: "A key needs a 'name'.".into(),
            },
            CreateKeyError::Store(e) => AccountError::Store(e),
        }
    }
}

/// A trimmed, lowercased address with one `@` and a dot after it.
pub fn normalize_email(raw: &str) -> Result<String, AccountError> {
    let e = raw.trim().to_lowercase();
    let ok = e.len() <= 254
        && !e.contains(char::is_whitespace)
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if ok {
        Ok(e)
    } else {
        Err(AccountError::Invalid {
            field: "email",
            message: "'email' must be an email address.".into(),
        })
    }
}

/// Free text a person typed: non-empty (when `required`), at most `max` bytes, no NUL.
pub fn text(
    raw: &str,
    field: &'static str,
    max: usize,
    required: bool,
) -> Result<String, AccountError> {
    let t = raw.trim();
    if (required && t.is_empty()) || t.len() > max || t.contains('\0') {
        let need = if required { "a non-empty" } else { "a" };
        return Err(AccountError::Invalid {
            field,
            message: format!("'{field}' must be {need} text of at most {max} bytes."),
        });
    }
    Ok(t.to_string())
}

/// Hashes on the blocking pool: Argon2 takes tens of milliseconds of CPU by design.
async fn hash_password(password: String) -> Result<String, AccountError> {
    password::check_new(&password).map_err(|e| AccountError::Invalid {
        field: "password",
        message: e.to_string(),
    })?;
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| AccountError::Hashing(e.to_string()))?
        .map_err(|e| AccountError::Hashing(e.to_string()))
}

async fn verify_password(password: String, stored: String) -> bool {
    tokio::task::spawn_blocking(move || password::verify(&password, &stored))
        .await
        .unwrap_or(false)
}

/// What an account is made from.
pub struct NewUser {
    pub email: String,
    pub name: String,
    pub role: Role,
    pub organization: String,
    pub password: Option<String>,
}

impl Tenancy {
    pub async fn create_user(&self, new: NewUser) -> Result<User, AccountError> {
        let password_hash = match new.password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        let user = User {
            id: format!("usr_{}", random_text(16)),
            email: normalize_email(&new.email)?,
            name: text(&new.name, "name", 200, true)?,
            role: new.role,
            organization: text(&new.organization, "organization", 200, false)?,
            created_at: now_ms(),
            disabled_at: None,
            password_hash,
        };
        if !self.store.insert_user(&user).await? {
            return Err(AccountError::EmailTaken);
        }
        Ok(user)
    }

    pub async fn set_password(
        &self,
        user: &mut User,
        password: String,
    ) -> Result<(), AccountError> {
        user.password_hash = Some(hash_password(password).await?);
        self.store.update_user(user).await?;
        Ok(())
    }

    /// Checks a password (throttled per account and per `address`) and opens a session:
    /// `(session, token)`; the token goes in the cookie and nowhere else.
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        address: &str,
    ) -> Result<(Session, String), AccountError> {
        let email = email.trim().to_lowercase();
        if let Some(wait) = self.throttle.wait(&email, address) {
            return Err(AccountError::Throttled(wait));
        }
        let user = self.store.user_by_email(&email).await?;
        let stored = user
            .as_ref()
            .filter(|u| u.disabled_at.is_none())
            .and_then(|u| u.password_hash.clone());
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| password::decoy().to_string());
        let matched = verify_password(password.to_string(), stored).await && known;
        match user.filter(|_| matched) {
            Some(user) => {
                self.throttle.succeeded(&email);
                self.open_session(user, address).await
            }
            None => {
                self.throttle.failed(&email, address);
                Err(AccountError::BadCredentials)
            }
        }
    }

    /// A new session for a user who has just proven who they are.
    pub async fn open_session(
        &self,
        user: User,
        address: &str,
    ) -> Result<(Session, String), AccountError> {
        let token = format!("{SESSION_PREFIX}{}", random_text(40));
        let expires_at = now_ms() + SESSION_TTL_MS;
        self.store
            .insert_session(&hash(&token), &user.id, expires_at, address)
            .await?;
        let csrf = self.csrf_of(&token);
        Ok((
            Session {
                user,
                csrf,
                expires_at,
            },
            token,
        ))
    }

    /// The CSRF token of a session: derived from its token under the server secret, so
    /// it is never stored and another session's is useless.
    fn csrf_of(&self, token: &str) -> String {
        let mac = hmac(
            self.token_secret.as_bytes(),
            format!("csrf:{token}").as_bytes(),
        );
        hex(&mac[..16])
    }

    /// The live session a cookie token names.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, AccountError> {
        if !token.starts_with(SESSION_PREFIX) || token.len() > 100 {
            return Ok(None);
        }
        Ok(self
            .store
            .session_user(&hash(token))
            .await?
            .map(|(user, expires_at)| Session {
                user,
                csrf: self.csrf_of(token),
                expires_at,
            }))
    }

    pub async fn sign_out(&self, token: &str) -> Result<(), AccountError> {
        Ok(self.store.revoke_session(&hash(token)).await?)
    }

    /// A one-time link token that lets `user_id` set a password.
    pub async fn password_link(&self, user_id: &str) -> Result<String, AccountError> {
        let token = format!("{LINK_PREFIX}{}", random_text(40));
        self.store
            .insert_link(
                &hash(&token),
                user_id,
                "set_password",
                now_ms() + LINK_TTL_MS,
            )
            .await?;
        Ok(token)
    }

    /// Sets the password a link was made for; the link then never works again.
    pub async fn redeem_password_link(
        &self,
        token: &str,
        password: String,
    ) -> Result<User, AccountError> {
        password::check_new(&password).map_err(|e| AccountError::Invalid {
            field: "password",
            message: e.to_string(),
        })?;
        let user_id = self
            .store
            .use_link(&hash(token), "set_password")
            .await?
            .ok_or(AccountError::BadLink)?;
        let mut user = self
            .store
            .user(&user_id)
            .await?
            .filter(|u| u.disabled_at.is_none())
            .ok_or(AccountError::BadLink)?;
        self.set_password(&mut user, password).await?;
        // A new password ends every session the old one opened.
        self.store.revoke_sessions_of(&user.id).await?;
        Ok(user)
    }

    /// Records an access request (one pending per email).
    pub async fn request_access(
        &self,
        email: &str,
        name: &str,
        organization: &str,
        intended_use: &str,
    ) -> Result<AccessRequest, AccountError> {
        let email = normalize_email(email)?;
        let req = AccessRequest {
            id: format!("req_{}", random_text(16)),
            name: text(name, "name", 200, true)?,
            organization: text(organization, "organization", 200, false)?,
            intended_use: text(intended_use, "intended_use", 2000, false)?,
            status: "pending".into(),
            created_at: now_ms(),
            decided_at: None,
            decided_by: None,
            user_id: None,
            email,
        };
        if self.store.user_by_email(&req.email).await?.is_some() {
            return Err(AccountError::EmailTaken);
        }
        if self.store.pending_request_for(&req.email).await? {
            return Err(AccountError::Conflict(
                "A request for this email is already waiting for an administrator.".into(),
            ));
        }
        self.store.insert_access_request(&req).await?;
        Ok(req)
    }

    /// Approves (making the account, member role, no password yet) or denies a pending
    /// request; `actor` is who decided.
    pub async fn decide_access(
        &self,
        id: &str,
        approve: bool,
        actor: &str,
    ) -> Result<(AccessRequest, Option<User>), AccountError> {
        let mut req =
            self.store.access_request(id).await?.ok_or_else(|| {
                AccountError::NotFound(format!("No access request with id `{id}`."))
            })?;
        if req.status != "pending" {
            return Err(AccountError::Conflict(format!(
                "This request was already {}.",
                req.status
            )));
        }
        let user = if approve {
            Some(
                self.create_user(NewUser {
                    email: req.email.clone(),
                    name: req.name.clone(),
                    role: Role::Member,
                    organization: req.organization.clone(),
                    password: None,
                })
                .await?,
            )
        } else {
            None
        };
        req.status = if approve { "approved" } else { "denied" }.into();
        req.decided_at = Some(now_ms());
        req.decided_by = Some(actor.to_string());
        req.user_id = user.as_ref().map(|u| u.id.clone());
        if !self.store.decide_access_request(&req).await? {
            return Err(AccountError::Conflict(
                "This request was already decided.".into(),
            ));
        }
        Ok((req, user))
    }

    /// Disables an account: its sessions end and its keys are revoked at once.
    pub async fn disable_user(&self, user: &mut User) -> Result<Vec<String>, AccountError> {
        user.disabled_at = Some(now_ms());
        self.store.update_user(user).await?;
        self.store.revoke_sessions_of(&user.id).await?;
        let keys = self.store.revoke_keys_of(&user.id).await?;
        for k in &keys {
            self.forget(k);
        }
        Ok(keys)
    }

    /// Appends to the audit log; a failure is logged, never the caller's problem.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
        address: &str,
    ) {
        let entry = AuditEntry {
            at: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail: detail.to_string(),
            address: address.to_string(),
        };
        if let Err(e) = self.store.insert_audit(&entry).await {
            tracing::error!("audit log: {e}: {entry:?}");
        }
    }
}

#[cfg(test)]
mod tests;
