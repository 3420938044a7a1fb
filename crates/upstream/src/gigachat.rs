//! GigaChat's OAuth 2.0 client-credentials flow: the configured authorization key is
//! exchanged for an access token (~30 min), cached, and refreshed shortly before it
//! expires (a tenth of its lifetime, at most a minute), or when the API answers 401.
//! Refreshes are single-flight: requests that see the same token rejected together
//! wait for one new token instead of each fetching their own.

use crate::GigaChatAuth;
use parlance_core::Code;
use parlance_core::{Error, ErrorKind};
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// Refresh at most this long before the token's stated expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// How long before expiry a token of this lifetime is refreshed: a tenth of the
/// lifetime, at most [`REFRESH_MARGIN`], so short-lived tokens are still reused.
fn refresh_margin_ms(lifetime_ms: u64) -> u64 {
    (lifetime_ms / 10).min(REFRESH_MARGIN.as_millis() as u64)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Unix milliseconds.
    expires_at: u64,
}

struct Token {
    value: String,
    expires_at_ms: u64,
    margin_ms: u64,
}

pub(crate) struct TokenSource {
    auth: GigaChatAuth,
    /// Held only to read or swap the token, never across HTTP.
    current: std::sync::Mutex<Option<Token>>,
    /// One refresh at a time; requests holding a still-valid token do not wait for it.
    refreshing: Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl TokenSource {
    pub(crate) fn new(auth: GigaChatAuth) -> Self {
        TokenSource {
            auth,
            current: std::sync::Mutex::new(None),
            refreshing: Mutex::new(()),
        }
    }

    /// The cached token unless it was just rejected; `fresh`: only if it is outside its
    /// refresh margin, else while it has not expired.
    fn cached(&self, rejected: Option<&str>, fresh: bool) -> Option<String> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let t = current.as_ref()?;
        let margin = if fresh { t.margin_ms } else { 0 };
        (t.expires_at_ms > now_ms() + margin && rejected != Some(t.value.as_str()))
            .then(|| t.value.clone())
    }

    /// A token valid for at least its refresh margin. `rejected`: the token the API
    /// just refused; a different cached one (another request already refreshed) is
    /// used as it is.
    pub(crate) async fn token(
        &self,
        client: &reqwest::Client,
        key: &str,
        provider: &str,
        rejected: Option<&str>,
    ) -> Result<String, Error> {
        if let Some(v) = self.cached(rejected, true) {
            return Ok(v);
        }
        let _refresh = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another request is refreshing: a token inside its margin still works.
                if let Some(v) = self.cached(rejected, false) {
                    return Ok(v);
                }
                self.refreshing.lock().await
            }
        };
        // The refresh that just ended may have made one.
        if let Some(v) = self.cached(rejected, true) {
            return Ok(v);
        }
        let fail = |msg: String| {
            Error::new(
                ErrorKind::Upstream,
                format!("upstream `{provider}`: getting an access token failed: {msg}"),
            )
            .with_code(Code::UpstreamAuthFailed)
        };
        let resp = client
            .post(&self.auth.auth_url)
            .header("Authorization", format!("Basic {key}"))
            .header("RqUID", uuid::Uuid::new_v4().to_string())
            .header("Accept", "application/json")
            .form(&[("scope", self.auth.scope.as_str())])
            .send()
            .await
            .map_err(|e| fail(e.to_string()).retryable())?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(e.to_string()).retryable())?;
        if !status.is_success() {
            let e = fail(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(body.get(..300).unwrap_or(&body))
            ));
            return Err(if status.is_server_error() {
                e.retryable()
            } else {
                e
            });
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("unexpected token response: {e}")))?;
        let value = t.access_token.clone();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Token {
            value: t.access_token,
            expires_at_ms: t.expires_at,
            margin_ms: refresh_margin_ms(t.expires_at.saturating_sub(now_ms())),
        });
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_scales_with_the_lifetime() {
        assert_eq!(refresh_margin_ms(30 * 60_000), 60_000);
        assert_eq!(refresh_margin_ms(60_000), 6_000);
        assert_eq!(refresh_margin_ms(0), 0);
    }
}
