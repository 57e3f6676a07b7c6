//! Bearer tokens (CONTRACT §4): HS256 JWTs as Supabase Auth issues them.
//! `sub` is the user's UUID in its canonical form, `exp` is required (a
//! NumericDate, fractions allowed), `nbf` is honoured, `aud` must name the
//! configured audience when present, and `role: service_role` makes an
//! administrator. Unknown claims are ignored; anything else is 401.
//!
//! jsonwebtoken checks the signature and the algorithm; the claims are
//! checked here, so that each rule of the contract is written once.

use crate::problem::Problem;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use terrace_domain::UserId;

/// The role claim that makes an administrator.
pub const ADMIN_ROLE: &str = "service_role";

/// The audience Supabase Auth puts in its access tokens (the default of
/// `TERRACE_JWT_AUDIENCE`).
pub const DEFAULT_AUDIENCE: &str = "authenticated";

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub admin: bool,
}

/// `aud`: one string or several (RFC 7519 §4.1.3).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(all) => all.iter().any(|a| a == wanted),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

/// Signs and checks tokens with one HS256 secret.
#[derive(Clone)]
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    audience: String,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwt(HS256, audience {:?}, secret hidden)", self.audience)
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The subject as a user id, in its canonical form only (lowercase,
/// hyphenated): `{…}`, `urn:uuid:`, upper case and undashed spellings of one
/// UUID would otherwise all name the same account.
fn canonical_user(sub: &str) -> Option<UserId> {
    let id = uuid::Uuid::try_parse(sub).ok()?;
    (id.hyphenated().to_string() == sub).then_some(UserId(id))
}

impl Jwt {
    /// Checks tokens against `secret`, expecting [`DEFAULT_AUDIENCE`].
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // The claims are checked in `authenticate`.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            audience: DEFAULT_AUDIENCE.to_owned(),
        }
    }

    /// The audience a token with an `aud` claim must name.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Mints a token for `user`, valid for `ttl`, naming this audience.
    pub fn mint(&self, user: UserId, admin: bool, ttl: Duration) -> String {
        let exp = std::time::SystemTime::now()
            .checked_add(ttl)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| d.as_secs());
        let claims = Claims {
            sub: user.to_string(),
            exp: exp as f64,
            nbf: None,
            aud: Some(Audience::One(self.audience.clone())),
            role: Some(if admin { ADMIN_ROLE } else { DEFAULT_AUDIENCE }.to_owned()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a small claim set cannot fail")
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, Problem> {
        let header =
            header.ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::InvalidSignature => "the token's signature is invalid",
                ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                ErrorKind::Json(_) => {
                    "the token lacks a required claim (sub, exp) or has one of the wrong type"
                }
                _ => "the token is malformed",
            };
            Problem::unauthorized(why)
        })?;
        let claims = data.claims;
        let now = now_secs();
        if !claims.exp.is_finite() || claims.exp <= now {
            return Err(Problem::unauthorized("the token has expired"));
        }
        if claims.nbf.is_some_and(|nbf| !nbf.is_finite() || nbf > now) {
            return Err(Problem::unauthorized("the token is not valid yet"));
        }
        if claims.aud.as_ref().is_some_and(|aud| !aud.names(&self.audience)) {
            return Err(Problem::unauthorized("the token is for another audience"));
        }
        let user = canonical_user(&claims.sub).ok_or_else(|| {
            Problem::unauthorized("the token's subject must be a UUID in lowercase hyphenated form")
        })?;
        Ok(Caller { user, admin: claims.role.as_deref() == Some(ADMIN_ROLE) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"secret-secret-secret";

    fn sign(claims: &serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET);
        format!("Bearer {}", jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap())
    }

    fn later(secs: f64) -> f64 {
        now_secs() + secs
    }

    /// An access token exactly as Supabase Auth issues one.
    fn supabase(user: UserId) -> serde_json::Value {
        let iat = now_secs().floor();
        json!({
            "aud": "authenticated", "exp": iat + 3600.0, "iat": iat,
            "iss": "https://project.supabase.co/auth/v1", "sub": user.to_string(),
            "email": "gardener@example.com", "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {"email_verified": true},
            "role": "authenticated", "aal": "aal1",
            "amr": [{"method": "password", "timestamp": iat}],
            "session_id": "6b1c4a3e-9f3c-4a57-8d0c-7f5e2b1d9a10", "is_anonymous": false,
        })
    }

    fn code_of(jwt: &Jwt, header: &str) -> Result<Caller, String> {
        jwt.authenticate(Some(header)).map_err(|p| p.detail)
    }

    #[test]
    fn minted_tokens_authenticate_and_others_do_not() {
        let jwt = Jwt::new(SECRET);
        let user = UserId::new_random();
        let t = jwt.mint(user, true, Duration::from_secs(60));
        let c = jwt.authenticate(Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(c, Caller { user, admin: true });
        assert!(jwt.authenticate(None).is_err());
        assert!(jwt.authenticate(Some(&t)).is_err());
        assert!(Jwt::new(b"other").authenticate(Some(&format!("Bearer {t}"))).is_err());
        let expired = sign(&json!({"sub": user.to_string(), "exp": 1_000_000}));
        assert_eq!(jwt.authenticate(Some(&expired)).unwrap_err().code, "unauthorized");
    }

    #[test]
    fn supabase_access_tokens_are_accepted_as_issued() {
        let jwt = Jwt::new(SECRET);
        let user = UserId::new_random();
        assert_eq!(code_of(&jwt, &sign(&supabase(user))), Ok(Caller { user, admin: false }));
        let mut admin = supabase(user);
        admin["role"] = json!("service_role");
        assert_eq!(code_of(&jwt, &sign(&admin)), Ok(Caller { user, admin: true }));
        // `aud` as a list naming the audience is fine too.
        let mut many = supabase(user);
        many["aud"] = json!(["other", "authenticated"]);
        assert!(code_of(&jwt, &sign(&many)).is_ok());
    }

    #[test]
    fn the_audience_must_match_when_present() {
        let user = UserId::new_random();
        let jwt = Jwt::new(SECRET).with_audience("terrace");
        assert_eq!(code_of(&jwt, &sign(&supabase(user))), Err("the token is for another audience".into()));
        let mut ours = supabase(user);
        ours["aud"] = json!("terrace");
        assert!(code_of(&jwt, &sign(&ours)).is_ok());
        let none = json!({"sub": user.to_string(), "exp": later(60.0)});
        assert!(code_of(&jwt, &sign(&none)).is_ok(), "a token without aud is accepted");
    }

    #[test]
    fn time_claims_are_numeric_dates_with_fractions() {
        let jwt = Jwt::new(SECRET);
        let sub = UserId::new_random().to_string();
        assert!(code_of(&jwt, &sign(&json!({"sub": sub, "exp": later(30.5)}))).is_ok());
        assert_eq!(
            code_of(&jwt, &sign(&json!({"sub": sub, "exp": later(-0.5)}))),
            Err("the token has expired".into())
        );
        let future = json!({"sub": sub, "exp": later(600.0), "nbf": later(120.25)});
        assert_eq!(code_of(&jwt, &sign(&future)), Err("the token is not valid yet".into()));
        let past = json!({"sub": sub, "exp": later(600.0), "nbf": later(-1.0)});
        assert!(code_of(&jwt, &sign(&past)).is_ok());
        let missing = code_of(&jwt, &sign(&json!({"sub": sub})));
        assert!(missing.unwrap_err().contains("required claim"));
        let text_exp = code_of(&jwt, &sign(&json!({"sub": sub, "exp": "tomorrow"})));
        assert!(text_exp.is_err());
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let jwt = Jwt::new(SECRET);
        let t = jwt.mint(UserId::new_random(), false, Duration::from_secs(60));
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert!(code_of(&jwt, &format!("{scheme} {t}")).is_ok(), "{scheme}");
        }
        for bad in [format!("Basic {t}"), format!("Bearer{t}"), "Bearer ".to_owned()] {
            assert!(code_of(&jwt, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_canonical_subject_names_an_account() {
        let jwt = Jwt::new(SECRET);
        let user = UserId::new_random();
        let canonical = user.to_string();
        assert!(code_of(&jwt, &sign(&json!({"sub": canonical, "exp": later(60.0)}))).is_ok());
        for other in [
            canonical.to_uppercase(),
            format!("{{{canonical}}}"),
            format!("urn:uuid:{canonical}"),
            user.0.simple().to_string(),
            "not-a-uuid".to_owned(),
        ] {
            let res = code_of(&jwt, &sign(&json!({"sub": other, "exp": later(60.0)})));
            assert!(res.unwrap_err().contains("lowercase hyphenated"), "{other}");
        }
    }
}
