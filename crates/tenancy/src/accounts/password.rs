//! Passwords (Argon2id, OWASP's parameters) and the sign-in throttle. Hashing is
//! deliberately slow: callers run it on the blocking pool, never on a tokio worker.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest password accepted (NIST SP 800-63B's floor for chosen secrets).
pub const MIN_LEN: usize = 8;
/// Longest: Argon2 reads it all, and a megabyte password is a denial of service.
pub const MAX_LEN: usize = 256;

/// Why a new password is refused; its text is a sentence for the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("A password needs at least {MIN_LEN} characters.")]
    TooShort,
    #[error("A password may have at most {MAX_LEN} bytes.")]
    TooLong,
    /// Argon2 could not hash it (a salt or parameter failure, not the caller's fault).
    #[error("password hash: {0}")]
    Hashing(String),
}

pub fn check_new(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_LEN {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

/// The PHC string of `password` under a fresh salt (`$argon2id$v=19$m=19456,t=2,p=1$...`).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt: [u8; 16] = rand::random();
    let hashing = |e: argon2::password_hash::Error| PasswordError::Hashing(e.to_string());
    let salt = SaltString::encode_b64(&salt).map_err(hashing)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(hashing)
}

/// Whether `password` matches a stored PHC string; a malformed one matches nothing.
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_LEN {
        return false;
    }
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash of nothing anyone knows: an unknown email is checked against it, so a
/// sign-in takes as long whether the account exists or not.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(&crate::tokens::fresh_secret()).unwrap_or_default())
}

/// Failed sign-ins counted per account and per address over a window; past the limit
/// the next attempt is refused before the password is even checked.
pub struct Throttle {
    window: Duration,
    per_account: u32,
    per_address: u32,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// At most this many (account or address) entries are kept; older windows go first.
const THROTTLE_MAX: usize = 100_000;

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            window: Duration::from_secs(15 * 60),
            per_account: 5,
            per_address: 20,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl Throttle {
    /// Seconds until `account` from `address` may try again; `None`: it may now.
    pub fn wait(&self, account: &str, address: &str) -> Option<u64> {
        let map = self.failures.lock().ok()?;
        let over = |key: String, limit: u32| {
            map.get(&key)
                .filter(|(n, at)| *n >= limit && at.elapsed() < self.window)
                .map(|(_, at)| (self.window - at.elapsed()).as_secs().max(1))
        };
        over(format!("a:{account}"), self.per_account)
            .or_else(|| over(format!("ip:{address}"), self.per_address))
    }

    pub fn failed(&self, account: &str, address: &str) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= THROTTLE_MAX {
            let window = self.window;
            map.retain(|_, (_, at)| at.elapsed() < window);
        }
        for key in [format!("a:{account}"), format!("ip:{address}")] {
            let e = map.entry(key).or_insert((0, Instant::now()));
            if e.1.elapsed() >= self.window {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }

    /// A correct password clears the account's count (not the address's).
    pub fn succeeded(&self, account: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&format!("a:{account}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password_and_are_argon2id() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct"));
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horsf", &h));
        assert!(!verify("x", "not a hash"));
        assert_ne!(h, hash("correct horse").unwrap());
        assert!(check_new("short").is_err());
        assert!(check_new(&"x".repeat(300)).is_err());
        assert!(check_new("long enough").is_ok());
    }

    #[test]
    fn the_throttle_counts_accounts_and_addresses_apart() {
        let t = Throttle::default();
        for _ in 0..5 {
            assert_eq!(t.wait("a@x", "1.1.1.1"), None);
            t.failed("a@x", "1.1.1.1");
        }
        assert!(t.wait("a@x", "2.2.2.2").is_some(), "per account");
        assert_eq!(t.wait("b@x", "1.1.1.1"), None);
        for i in 0..20 {
            t.failed(&format!("u{i}@x"), "3.3.3.3");
        }
        assert!(t.wait("fresh@x", "3.3.3.3").is_some(), "per address");
        t.succeeded("a@x");
        assert_eq!(t.wait("a@x", "2.2.2.2"), None);
    }
}
