//! Bearer tokens: HS256 JWTs with `sub` (the user's UUID), `exp` (required)
//! and `role` (`service_role` makes an administrator). Anything else is 401.

use crate::problem::Problem;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use terrace_domain::UserId;

/// The role claim that makes an administrator.
pub const ADMIN_ROLE: &str = "service_role";

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub admin: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

/// Signs and checks tokens with one HS256 secret.
#[derive(Clone)]
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jwt(HS256, secret hidden)")
    }
}

impl Jwt {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Mints a token for `user`, valid for `ttl`.
    pub fn mint(&self, user: UserId, admin: bool, ttl: Duration) -> String {
        let exp = std::time::SystemTime::now()
            .checked_add(ttl)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| d.as_secs());
        let claims = Claims { sub: user.to_string(), exp, role: admin.then(|| ADMIN_ROLE.to_owned()) };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a small claim set cannot fail")
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, Problem> {
        let header =
            header.ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidSignature => "the token's signature is invalid",
                ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (sub, exp)",
                _ => "the token is malformed",
            };
            Problem::unauthorized(why)
        })?;
        let user = data
            .claims
            .sub
            .parse::<UserId>()
            .map_err(|_| Problem::unauthorized("the token's subject must be a UUID"))?;
        Ok(Caller { user, admin: data.claims.role.as_deref() == Some(ADMIN_ROLE) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_authenticate_and_others_do_not() {
        let jwt = Jwt::new(b"secret");
        let user = UserId::new_random();
        let t = jwt.mint(user, true, Duration::from_secs(60));
        let c = jwt.authenticate(Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(c, Caller { user, admin: true });
        assert!(jwt.authenticate(None).is_err());
        assert!(jwt.authenticate(Some(&t)).is_err());
        assert!(Jwt::new(b"other").authenticate(Some(&format!("Bearer {t}"))).is_err());
        let past = Claims { sub: user.to_string(), exp: 1_000_000, role: None };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &past, &jwt.encoding).unwrap();
        assert_eq!(jwt.authenticate(Some(&format!("Bearer {expired}"))).unwrap_err().code, "unauthorized");
    }
}
