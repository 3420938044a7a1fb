//! OpenID Connect ID tokens: the signature checked against the provider's JWKS (an
//! asymmetric algorithm only: never `none`, never a shared-secret HMAC a client could
//! forge), then issuer, audience, expiry and the nonce of this sign-in.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why an ID token is refused, as the person sees it.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(super) enum Refused {
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    #[error("the ID token is signed with {0:?}, which is not accepted")]
    Algorithm(Algorithm),
    /// The key id is not in the provider's key set (the caller may fetch it again).
    #[error("the ID token's key `{0}` is not one of the provider's")]
    UnknownKey(String),
    #[error("the ID token's {0} is wrong")]
    Invalid(&'static str),
}

/// What a valid token says (its claims), checked against `jwks`, `issuer`, `client_id`
/// and the `nonce` this sign-in sent.
pub(super) fn verify(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    client_id: &str,
    nonce: &str,
) -> Result<Map<String, Value>, Refused> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| Refused::Malformed(e.to_string()))?;
    if !ASYMMETRIC.contains(&header.alg) {
        return Err(Refused::Algorithm(header.alg));
    }
    let jwk = match &header.kid {
        Some(kid) => jwks
            .find(kid)
            .ok_or_else(|| Refused::UnknownKey(kid.clone()))?,
        // Without a kid, a set of one key is unambiguous.
        None => match jwks.keys.as_slice() {
            [only] => only,
            _ => return Err(Refused::UnknownKey("(none)".into())),
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| Refused::Malformed(e.to_string()))?;
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[client_id]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 60;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => Refused::Invalid("signature"),
            K::ExpiredSignature => Refused::Invalid("expiry (it has expired)"),
            K::InvalidIssuer => Refused::Invalid("issuer"),
            K::InvalidAudience => Refused::Invalid("audience"),
            K::ImmatureSignature => Refused::Invalid("start time"),
            other => Refused::Malformed(format!("{other:?}")),
        }
    })?;
    let claims = data.claims;
    // Several audiences: the authorized party must be this client.
    if claims.get("aud").is_some_and(Value::is_array)
        && claims
            .get("azp")
            .is_some_and(|a| a.as_str() != Some(client_id))
    {
        return Err(Refused::Invalid("authorized party (azp)"));
    }
    let sent = claims
        .get("nonce")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !parlance_tenancy::keys::same(sent, nonce) {
        return Err(Refused::Invalid("nonce (a replayed or foreign sign-in)"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const IDP_KEY: &[u8] = include_bytes!("../../testdata/oidc-idp-key.pem");
    const OTHER_KEY: &[u8] = include_bytes!("../../testdata/oidc-other-key.pem");
    const JWKS: &str = include_str!("../../testdata/oidc-idp-jwks.json");
    const ISS: &str = "https://idp.example";

    fn now() -> i64 {
        parlance_tenancy::keys::now_ms() / 1000
    }

    fn token(key: &[u8], kid: &str, claims: Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        encode(&h, &claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
    }

    fn good() -> Value {
        json!({"iss": ISS, "aud": "parlance", "sub": "alice", "exp": now() + 300, "iat": now(), "nonce": "n-1", "email": "alice@uni.example"})
    }

    fn with(field: &str, v: Value) -> Value {
        let mut c = good();
        c[field] = v;
        c
    }

    #[test]
    fn a_good_token_gives_its_claims_and_every_defect_is_named() {
        let jwks: JwkSet = serde_json::from_str(JWKS).unwrap();
        let check = |t: &str| verify(t, &jwks, ISS, "parlance", "n-1");
        let claims = check(&token(IDP_KEY, "idp-1", good())).unwrap();
        assert_eq!(claims["email"], "alice@uni.example");
        assert_eq!(
            check(&token(OTHER_KEY, "idp-1", good())),
            Err(Refused::Invalid("signature"))
        );
        assert_eq!(
            check(&token(IDP_KEY, "idp-1", with("aud", json!("someone-else")))),
            Err(Refused::Invalid("audience"))
        );
        assert_eq!(
            check(&token(
                IDP_KEY,
                "idp-1",
                with("iss", json!("https://evil.example"))
            )),
            Err(Refused::Invalid("issuer"))
        );
        assert_eq!(
            check(&token(IDP_KEY, "idp-1", with("exp", json!(now() - 3600)))),
            Err(Refused::Invalid("expiry (it has expired)"))
        );
        assert!(matches!(
            check(&token(IDP_KEY, "idp-1", with("nonce", json!("n-2")))),
            Err(Refused::Invalid(_))
        ));
        assert_eq!(
            check(&token(IDP_KEY, "idp-9", good())),
            Err(Refused::UnknownKey("idp-9".into()))
        );
        let many = with("aud", json!(["parlance", "other"]));
        let mut foreign = many.clone();
        foreign["azp"] = json!("other");
        assert!(check(&token(IDP_KEY, "idp-1", many)).is_ok());
        assert!(matches!(
            check(&token(IDP_KEY, "idp-1", foreign)),
            Err(Refused::Invalid(_))
        ));
        // A token "signed" with HS256 under the public key, or not at all, is refused
        // before any key is used.
        let hs = encode(
            &Header::new(Algorithm::HS256),
            &good(),
            &EncodingKey::from_secret(JWKS.as_bytes()),
        )
        .unwrap();
        assert_eq!(check(&hs), Err(Refused::Algorithm(Algorithm::HS256)));
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&good().to_string()));
        assert!(check(&unsigned).is_err());
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
