//! The service-account tokens the embedded API server hands out (TokenRequest) and
//! accepts without storing them: who and until when, signed with HMAC-SHA256 under the
//! lab's own token, so only a holder of that token can make one.
//!
//! `flatnet-sa.<base64url(namespace/name/expiry-unix-seconds)>.<base64url(HMAC of the middle part)>`

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

const PREFIX: &str = "flatnet-sa.";

/// The ServiceAccount a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountId {
    pub namespace: String,
    pub name: String,
}

/// Issues and checks tokens with one key.
pub struct TokenSigner {
    key: hmac::Key,
}

impl TokenSigner {
    /// A signer keyed by `secret` (the lab's bearer token).
    pub fn new(secret: &str) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()) }
    }

    /// A token for `namespace/name`, valid until `expires` (Unix seconds).
    pub fn issue(&self, namespace: &str, name: &str, expires: i64) -> String {
        let claims = URL_SAFE_NO_PAD.encode(format!("{namespace}/{name}/{expires}"));
        let tag = hmac::sign(&self.key, claims.as_bytes());
        format!("{PREFIX}{claims}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The ServiceAccount `token` was issued for, when this signer signed it and it has
    /// not expired at `now` (Unix seconds); None for anything else.
    pub fn verify(&self, token: &str, now: i64) -> Option<ServiceAccountId> {
        let (claims, tag) = token.strip_prefix(PREFIX)?.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // Constant time: a forger learns nothing from how long a refusal takes.
        hmac::verify(&self.key, claims.as_bytes(), &tag).ok()?;
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        // Namespaces and names are DNS names: no '/' in either.
        let mut parts = claims.splitn(3, '/');
        let (namespace, name, expires) = (parts.next()?, parts.next()?, parts.next()?);
        (expires.parse::<i64>().ok()? > now)
            .then(|| ServiceAccountId { namespace: namespace.to_string(), name: name.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(namespace: &str, name: &str) -> Option<ServiceAccountId> {
        Some(ServiceAccountId { namespace: namespace.into(), name: name.into() })
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let signer = TokenSigner::new("lab-token");
        let token = signer.issue("kube-system", "flatnet-node", 1_000);
        assert!(token.starts_with("flatnet-sa."));
        assert_eq!(signer.verify(&token, 999), id("kube-system", "flatnet-node"));
        assert_eq!(signer.verify(&token, 1_000), None);
        assert_eq!(signer.verify(&token, 5_000), None);
    }

    #[test]
    fn a_tampered_or_foreign_token_is_refused() {
        let signer = TokenSigner::new("lab-token");
        let token = signer.issue("default", "default", 1_000);
        let (_, tag) = token.rsplit_once('.').unwrap();
        // Another identity, or a later expiry, under the same signature.
        for claims in ["kube-system/default/1000", "default/default/99999"] {
            let forged = format!("{PREFIX}{}.{tag}", URL_SAFE_NO_PAD.encode(claims));
            assert_eq!(signer.verify(&forged, 0), None, "{claims}");
        }
        assert_eq!(TokenSigner::new("another-lab").verify(&token, 0), None);
        assert_eq!(signer.verify(&token.replace(PREFIX, ""), 0), None);
        assert_eq!(signer.verify("lab-token", 0), None);
        assert_eq!(signer.verify(&format!("{token}x"), 0), None);
    }
}
