//! Who may open a session: a JWT in the Socket.IO handshake (`auth.token`), verified with
//! the configured key. Off when no key is set (the one-machine default); required in
//! production (ARCHITECTURE.md, threat model).
//!
//! Verification is `jsonwebtoken`'s (a well-kept crate, pure-Rust crypto): the algorithm is
//! pinned by the key (HS256 for a secret; RS256 or ES256 from the public key's PEM), `exp`
//! is required (5 s of leeway), `alg: none` and every other algorithm are refused.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

use super::error::{ApiError, ErrorCode};
use crate::config::AuthConfig;

/// Why the authenticator could not be built (a startup error naming the setting).
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("SANDPOOL_AUTH_PUBLIC_KEY_FILE: cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "SANDPOOL_AUTH_PUBLIC_KEY_FILE: {path} is neither an RSA nor an EC (P-256) public key in PEM"
    )]
    BadKey { path: String },
    #[error("SANDPOOL_AUTH_HS256_SECRET and SANDPOOL_AUTH_PUBLIC_KEY_FILE are both set; set one")]
    Both,
    #[error("SANDPOOL_AUTH_HS256_SECRET must be at least 32 bytes")]
    ShortSecret,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`, when it has one.
    pub subject: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

/// Verifies handshake tokens.
pub struct Authenticator {
    key: Option<(DecodingKey, Validation)>,
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let key = match (&config.hs256_secret, &config.public_key_file) {
            (Some(_), Some(_)) => return Err(AuthSetupError::Both),
            (Some(secret), None) => {
                if secret.len() < 32 {
                    return Err(AuthSetupError::ShortSecret);
                }
                Some((
                    DecodingKey::from_secret(secret.as_bytes()),
                    validation(Algorithm::HS256),
                ))
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|source| AuthSetupError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, validation(Algorithm::RS256))
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, validation(Algorithm::ES256))
                } else {
                    return Err(AuthSetupError::BadKey {
                        path: path.display().to_string(),
                    });
                };
                Some(key)
            }
            (None, None) => None,
        };
        Ok(Self { key })
    }

    /// Whether tokens are required.
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Verifies the handshake's token. With auth off, everyone is anonymous (a token, if
    /// sent, is ignored).
    pub fn verify(&self, token: Option<&str>) -> Result<Identity, ApiError> {
        let Some((key, validation)) = &self.key else {
            return Ok(Identity { subject: None });
        };
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "this service needs a token: pass a JWT as auth.token",
            )
        })?;
        let data = decode::<Claims>(token, key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::MissingRequiredClaim(_) => "the token has no exp claim",
                ErrorKind::InvalidSignature => "the token's signature is not valid",
                ErrorKind::InvalidAlgorithm => "the token's algorithm is not the one configured",
                _ => "the token is not a valid JWT",
            };
            ApiError::new(ErrorCode::Unauthorized, why)
        })?;
        Ok(Identity {
            subject: data.claims.sub.filter(|s| !s.is_empty()),
        })
    }
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_required_spec_claims(&["exp"]);
    v.validate_exp = true;
    v.leeway = 5;
    // No audience is configured: a token's `aud`, if any, is not checked.
    v.validate_aud = false;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

    fn auth() -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            hs256_secret: Some(SECRET.into()),
            public_key_file: None,
            max_sessions_per_subject: 0,
        })
        .unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str, alg: Algorithm) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn valid_tokens_pass_with_their_subject() {
        let t = token(
            serde_json::json!({"exp": now() + 60, "sub": "alice"}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(
            auth().verify(Some(&t)).unwrap().subject.as_deref(),
            Some("alice")
        );
        let t = token(
            serde_json::json!({"exp": now() + 60}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(auth().verify(Some(&t)).unwrap().subject, None);
    }

    #[test]
    fn missing_expired_forged_and_unexpiring_tokens_are_refused() {
        let a = auth();
        for bad in [
            None,
            Some(String::new()),
            Some("not.a.jwt".to_string()),
            Some(token(
                serde_json::json!({"exp": now() - 60}),
                SECRET,
                Algorithm::HS256,
            )),
            Some(token(
                serde_json::json!({"exp": now() + 60}),
                "another-secret-of-at-least-32-bytes",
                Algorithm::HS256,
            )),
            Some(token(
                serde_json::json!({"exp": now() + 60}),
                SECRET,
                Algorithm::HS384,
            )),
            Some(token(
                serde_json::json!({"sub": "no-exp"}),
                SECRET,
                Algorithm::HS256,
            )),
            // alg: none, hand-made.
            Some(format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                "eyJleHAiOjk5OTk5OTk5OTl9"
            )),
        ] {
            let e = a.verify(bad.as_deref()).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized, "{bad:?}");
        }
    }

    #[test]
    fn off_without_a_key() {
        let a = Authenticator::from_config(&AuthConfig {
            hs256_secret: None,
            public_key_file: None,
            max_sessions_per_subject: 0,
        })
        .unwrap();
        assert!(!a.enabled());
        assert_eq!(a.verify(None).unwrap().subject, None);
    }
}
