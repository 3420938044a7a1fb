//! API keys: `sk-prl-<public id>-<secret>`. The public id finds the record; only a
//! SHA-256 of the secret is stored, compared in constant time; the whole key is shown
//! once, when it is made.

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "sk-prl-";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

pub(crate) fn random_text(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .filter_map(|_| ALPHABET.get(rng.random_range(0..ALPHABET.len())))
        .map(|&b| b as char)
        .collect()
}

/// A newly made key: the text the holder uses, and what the store keeps.
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub secret_hash: String,
}

pub fn generate() -> NewKey {
    let id = random_text(ID_LEN);
    let secret = random_text(SECRET_LEN);
    NewKey {
        key: format!("{PREFIX}{id}-{secret}"),
        secret_hash: hash(&secret),
        id,
    }
}

/// `(public id, secret)` of a presented Parlance key; `None` for anything else.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let ok = id.len() == ID_LEN
        && secret.len() == SECRET_LEN
        && id
            .bytes()
            .chain(secret.bytes())
            // `ALPHABET` is exactly the ASCII letters and digits (a test says so).
            .all(|b| b.is_ascii_alphanumeric());
    ok.then_some((id, secret))
}

/// Lower-case hex of the secret's SHA-256 (every request with a key hashes it once).
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        // Nibbles are below 16: `from_digit` always has a digit for them.
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// Compares without an early exit, so timing does not tell how much matched.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Everything a key may do, as stored (never the secret).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Catalog models this key may use; empty: all.
    #[serde(default)]
    pub models: Vec<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub budget_tokens: Option<u64>,
    pub budget_usd: Option<f64>,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// The account that owns it (self-service keys); `None`: the operator's.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The team that owns it (a team key: the team pays for it).
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(skip)]
    pub secret_hash: String,
}

impl KeyRecord {
    pub fn may_use(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_ms)
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `30d`, `12h`, `45m`, `3600s` -> milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    let per = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_sha256_in_lower_case_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ALPHABET.len(), 62);
        assert!(ALPHABET.iter().all(u8::is_ascii_alphanumeric));
        // Only the key alphabet parses.
        let id = "a".repeat(ID_LEN);
        assert!(parse(&format!("{PREFIX}{id}-{}", "Z9".repeat(SECRET_LEN / 2))).is_some());
        assert!(parse(&format!("{PREFIX}{id}-{}", "é".repeat(SECRET_LEN / 2))).is_none());
        assert!(parse(&format!("{PREFIX}{id}-{}_", "b".repeat(SECRET_LEN - 1))).is_none());
    }

    #[test]
    fn generated_keys_parse_and_hash_to_their_record() {
        let k = generate();
        assert!(k.key.starts_with("sk-prl-"));
        let (id, secret) = parse(&k.key).unwrap();
        assert_eq!(id, k.id);
        assert!(same(&hash(secret), &k.secret_hash));
        assert!(!k.secret_hash.contains(secret));
        assert!(parse("sk-prl-short-x").is_none());
        assert!(parse("sk-other").is_none());
        assert_ne!(generate().key, generate().key);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30d"), Some(30 * 86_400_000));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("x"), None);
        assert_eq!(parse_duration_ms("5y"), None);
    }
}
