//! Random ids for requests and answers: a prefix, then a v4 UUID's 32 hex digits.

/// `prefix` then 32 lowercase hex digits (`chatcmpl-…`, `req_…`). Encoded into a
/// buffer: `format!` with the UUID's `Display` cost more than making the UUID.
pub(crate) fn random(prefix: &str) -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    let hex = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    let mut id = String::with_capacity(prefix.len() + hex.len());
    id.push_str(prefix);
    id.push_str(hex);
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_and_32_hex_digits_new_each_time() {
        let a = super::random("chatcmpl-");
        let hex = a.strip_prefix("chatcmpl-").unwrap_or_default();
        assert_eq!(hex.len(), 32);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(a, super::random("chatcmpl-"));
    }
}
