//! JSON Web Tokens for people: tokens this server issues at login (HS256,
//! key from config or generated at first start), and tokens of an external
//! OpenID Connect provider (RS256/ES256, keys from [`Jwks`]). Algorithms,
//! issuer, audience, `exp` and `nbf` are always checked; never
//! `Validation::default()`.

use std::sync::Arc;

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jwks::Jwks;

/// Issuer and audience of the tokens this server issues.
pub const LOCAL_ISSUER: &str = "cloudpacs";
pub const LOCAL_AUDIENCE: &str = "cloudpacs";
/// Audience of the enrollment-only tokens a login hands out when the
/// hospital requires MFA and the user has none enrolled: a different
/// audience, so they are never accepted as credentials.
pub const ENROLLMENT_AUDIENCE: &str = "cloudpacs-mfa-enrollment";
/// Lifetime of an enrollment token, in seconds.
pub const ENROLLMENT_TTL_SECS: i64 = 600;
const LEEWAY_SECS: u64 = 30;

/// Claims of a token issued at login. The user's roles and hospitals are
/// read fresh from the index on every request; the token says who.
#[derive(Debug, Serialize, Deserialize)]
pub struct LocalClaims {
    pub iss: String,
    pub aud: String,
    /// The user's id in the index.
    pub sub: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    /// Home hospital (informative).
    pub hospital: String,
    /// Whether the login passed a TOTP code (hospitals requiring MFA refuse
    /// tokens without it, e.g. issued before the policy was switched on).
    #[serde(default)]
    pub mfa: bool,
}

/// The user id of a token's `sub`.
fn user_id(claims: &LocalClaims) -> Result<i64, JwtError> {
    claims.sub.parse().map_err(|_| JwtError::Invalid)
}

/// An external OpenID Connect provider.
#[derive(Clone)]
pub struct Oidc {
    pub issuer: String,
    pub audience: String,
    pub keys: Arc<Jwks>,
    /// Claim holding the hospital id.
    pub hospital_claim: String,
    /// Claim holding the roles (array or space/comma-separated string).
    pub roles_claim: String,
}

/// What an external token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub subject: String,
    pub hospital: String,
    pub roles: Vec<String>,
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl_secs: i64,
    pub oidc: Option<Oidc>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("invalid token")]
    Invalid,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_secs: i64, oidc: Option<Oidc>) -> Self {
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs,
            oidc,
        }
    }

    /// A token for a user; returns it with its expiry (Unix seconds).
    pub fn issue(&self, user_id: i64, hospital: &str) -> Result<(String, i64), JwtError> {
        self.issue_for(LOCAL_AUDIENCE, self.ttl_secs, user_id, hospital, false)
    }

    /// [`JwtKeys::issue`] for a login that passed a TOTP code.
    pub fn issue_mfa(&self, user_id: i64, hospital: &str) -> Result<(String, i64), JwtError> {
        self.issue_for(LOCAL_AUDIENCE, self.ttl_secs, user_id, hospital, true)
    }

    /// A token that only enrolls a TOTP secret (see [`ENROLLMENT_AUDIENCE`]).
    pub fn issue_enrollment(&self, user_id: i64, hospital: &str) -> Result<String, JwtError> {
        self.issue_for(
            ENROLLMENT_AUDIENCE,
            ENROLLMENT_TTL_SECS,
            user_id,
            hospital,
            false,
        )
        .map(|(token, _)| token)
    }

    fn issue_for(
        &self,
        audience: &str,
        ttl_secs: i64,
        user_id: i64,
        hospital: &str,
        mfa: bool,
    ) -> Result<(String, i64), JwtError> {
        let now = chrono::Utc::now().timestamp();
        let claims = LocalClaims {
            iss: LOCAL_ISSUER.into(),
            aud: audience.into(),
            sub: user_id.to_string(),
            exp: now + ttl_secs,
            nbf: now,
            iat: now,
            hospital: hospital.into(),
            mfa,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| JwtError::Invalid)?;
        Ok((token, claims.exp))
    }

    /// Verify a token this server issued; returns the user id.
    pub fn verify_local(&self, token: &str) -> Result<i64, JwtError> {
        self.verify_local_claims(token).and_then(|c| user_id(&c))
    }

    /// Verify a token this server issued; returns its claims.
    pub fn verify_local_claims(&self, token: &str) -> Result<LocalClaims, JwtError> {
        self.verify_for(LOCAL_AUDIENCE, token)
    }

    /// Verify an enrollment-only token; returns the user id.
    pub fn verify_enrollment(&self, token: &str) -> Result<i64, JwtError> {
        self.verify_for(ENROLLMENT_AUDIENCE, token)
            .and_then(|c| user_id(&c))
    }

    fn verify_for(&self, audience: &str, token: &str) -> Result<LocalClaims, JwtError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[LOCAL_ISSUER]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = LEEWAY_SECS;
        decode::<LocalClaims>(token, &self.decoding, &v)
            .map(|data| data.claims)
            .map_err(|_| JwtError::Invalid)
    }

    /// Verify a token of the configured OpenID Connect provider.
    pub async fn verify_external(&self, token: &str) -> Result<ExternalIdentity, JwtError> {
        let oidc = self.oidc.as_ref().ok_or(JwtError::Invalid)?;
        let header = decode_header(token).map_err(|_| JwtError::Invalid)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtError::Invalid);
        }
        let jwk = oidc
            .keys
            .key(header.kid.as_deref())
            .await
            .ok_or(JwtError::Invalid)?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| JwtError::Invalid)?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&oidc.issuer]);
        v.set_audience(&[&oidc.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = LEEWAY_SECS;
        let data = decode::<Value>(token, &key, &v).map_err(|_| JwtError::Invalid)?;
        let claims = data.claims;
        let hospital = claims
            .get(&oidc.hospital_claim)
            .and_then(Value::as_str)
            .ok_or(JwtError::Invalid)?;
        let roles = match claims.get(&oidc.roles_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s
                .split([' ', ','])
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Ok(ExternalIdentity {
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            hospital: hospital.to_owned(),
            roles,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issued_tokens_verify_and_tampered_ones_do_not() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 3600, None);
        let (token, _) = keys.issue(42, "default").unwrap();
        assert_eq!(keys.verify_local(&token), Ok(42));
        let other = JwtKeys::new(b"another secret of enough length!", 3600, None);
        assert_eq!(other.verify_local(&token), Err(JwtError::Invalid));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"iss":"cloudpacs","aud":"cloudpacs","sub":"1","exp":9999999999,"nbf":0,"iat":0,"hospital":"x"}"#,
        );
        parts[1] = &forged;
        assert_eq!(keys.verify_local(&parts.join(".")), Err(JwtError::Invalid));
        assert_eq!(
            keys.verify_external(&token).await,
            Err(JwtError::Invalid),
            "no OIDC configured"
        );
    }

    #[test]
    fn enrollment_tokens_are_not_credentials() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 3600, None);
        let token = keys.issue_enrollment(7, "default").unwrap();
        assert_eq!(keys.verify_enrollment(&token), Ok(7));
        assert_eq!(keys.verify_local(&token), Err(JwtError::Invalid));
        let (login, _) = keys.issue(7, "default").unwrap();
        assert_eq!(keys.verify_enrollment(&login), Err(JwtError::Invalid));
        assert!(!keys.verify_local_claims(&login).unwrap().mfa);
        let (login, _) = keys.issue_mfa(7, "default").unwrap();
        assert!(keys.verify_local_claims(&login).unwrap().mfa);
    }
}
