//! Mail for one-time links (`[accounts.smtp]`): an approved request, an account made
//! without a password, a team invitation, a new link. The admin always sees the link
//! too, so a mail that cannot be sent loses nothing; the answer says whether it went.

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use parlance_gateway::accounts::SmtpSettings;
use std::time::Duration;

/// A send that takes longer is given up (the link is in the answer anyway).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(s: &SmtpSettings) -> Result<Mailer, String> {
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e| format!("[accounts.smtp] from: {e}"))?;
        let mut b = match s.security.as_str() {
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                .map_err(|e| e.to_string())?,
            "tls" => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host).map_err(|e| e.to_string())?
            }
            "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
            other => {
                return Err(format!(
                    "[accounts.smtp] security: `{other}` is not starttls, tls or none"
                ))
            }
        };
        if let Some(port) = s.port {
            b = b.port(port);
        }
        if let Some(user) = &s.username {
            let var = s
                .password_env
                .as_deref()
                .unwrap_or("PARLANCE_SMTP_PASSWORD");
            let pw = std::env::var(var).map_err(|_| {
                format!("[accounts.smtp]: the environment variable {var} is not set")
            })?;
            b = b.credentials(Credentials::new(user.clone(), pw));
        }
        Ok(Mailer {
            transport: b.timeout(Some(SEND_TIMEOUT)).build(),
            from,
        })
    }

    /// Sends a plain-text mail; `false` (and a log line) when it could not be sent.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> bool {
        let to: Mailbox = match to.parse() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("mail to {to}: {e}");
                return false;
            }
        };
        let msg = match Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .body(body)
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("mail: {e}");
                return false;
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(msg)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!("mail could not be sent: {e}");
                false
            }
            Err(_) => {
                tracing::warn!("mail could not be sent in {SEND_TIMEOUT:?}");
                false
            }
        }
    }
}

/// Mails a set-password link when a mailer is configured; whether it went.
pub(crate) async fn link(
    state: &crate::AppState,
    to: &str,
    name: &str,
    url: &str,
    why: &str,
) -> bool {
    let Some(m) = &state.mailer else {
        return false;
    };
    let body = format!(
        "Hello {name},\n\n{why}\n\nChoose your password here (the link works once, for 3 days):\n{url}\n\nIf you did not expect this, ignore this mail.\n"
    );
    m.send(to, "Your access", body).await
}
