//! GigaChat-style access tokens (`POST /api/v2/oauth`): `prl-at-<key id>.<expiry ms>.<mac>`,
//! signed with HMAC-SHA256 under a secret kept in the store, so every replica can check a
//! token another one issued, and the key behind it is looked up on every use (revoking
//! the key revokes its tokens).

use sha2::{Digest, Sha256};

pub const PREFIX: &str = "prl-at-";
/// GigaChat's tokens live 30 minutes.
pub const LIFETIME_MS: i64 = 30 * 60 * 1000;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn issue(secret: &str, key_id: &str, expires_ms: i64) -> String {
    let body = format!("{key_id}.{expires_ms}");
    format!(
        "{PREFIX}{body}.{}",
        hex(&hmac(secret.as_bytes(), body.as_bytes()))
    )
}

/// `(key id, expiry ms)` of a genuine token (expired or not).
pub fn verify(secret: &str, token: &str) -> Option<(String, i64)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (body, mac) = rest.rsplit_once('.')?;
    let expected = hex(&hmac(secret.as_bytes(), body.as_bytes()));
    if !crate::keys::same(mac, &expected) {
        return None;
    }
    let (id, expires) = body.split_once('.')?;
    Some((id.to_string(), expires.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_secret_and_body() {
        let t = issue("s3cret", "abc123", 42);
        assert_eq!(verify("s3cret", &t), Some(("abc123".into(), 42)));
        assert_eq!(verify("other", &t), None);
        assert_eq!(verify("s3cret", &t.replace(".42.", ".43.")), None);
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
