//! GigaChat-style access tokens (`POST /api/v2/oauth`): `prl-at-<key id>.<expiry ms>.<mac>`,
//! signed with HMAC-SHA256 under a secret kept in the store, so every replica can check a
//! token another one issued, and the key behind it is looked up on every use (revoking
//! the key revokes its tokens).

use sha2::{Digest, Sha256};

pub const PREFIX: &str = "prl-at-";
/// GigaChat's tokens live 30 minutes.
pub const LIFETIME_MS: i64 = 30 * 60 * 1000;

pub(crate) fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC's key block: the key, or its digest when longer than the block, zero-padded.
    let mut k = [0u8; 64];
    let digest;
    let key = if key.len() > k.len() {
        digest = Sha256::digest(key);
        digest.as_slice()
    } else {
        key
    };
    for (slot, &b) in k.iter_mut().zip(key) {
        *slot = b;
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signing key for tokens, derived from a server secret (never stored): a copy of
/// the database alone cannot mint tokens.
pub fn signing_key(server_secret: &str) -> String {
    hex(&hmac(
        server_secret.as_bytes(),
        b"parlance access tokens v1",
    ))
}

/// 256 random bits as hex: a server secret made here.
pub fn fresh_secret() -> String {
    (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect()
}

/// The server secret when none is configured: kept in a file beside a SQLite store
/// (`<db>.secret`, owner-only), made on first use.
pub fn secret_beside(db_path: &std::path::Path) -> Result<String, crate::OpenError> {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".secret");
    let path = std::path::PathBuf::from(name);
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    let fresh = fresh_secret();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(fresh.as_bytes())
                .map_err(|source| secret_err(&path, source))?;
            Ok(fresh)
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| secret_err(&path, source)),
        Err(source) => Err(secret_err(&path, source)),
    }
}

fn secret_err(path: &std::path::Path, source: std::io::Error) -> crate::OpenError {
    crate::OpenError::Secret {
        path: path.to_path_buf(),
        source,
    }
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
