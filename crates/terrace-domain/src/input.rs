//! Parsed inputs. A value of any type here is valid by construction.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// A rejected input: which field, and why, in words a client can show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidInput {
    /// Dotted path of the field, e.g. `areas[1].style`.
    pub field: String,
    pub message: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    fn at(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
}

fn has_control(s: &str, allow_newlines: bool) -> bool {
    s.chars().any(|c| c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t')))
}

/// A street address as the user typed it: 5 to 200 characters after trimming,
/// no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Address(String);

impl Address {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let s = raw.trim();
        let n = s.chars().count();
        if !(5..=200).contains(&n) {
            return Err(InvalidInput::new("address", "must be 5 to 200 characters"));
        }
        if has_control(s, false) {
            return Err(InvalidInput::new("address", "must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! closed_enum {
    ($(#[$m:meta])* $name:ident, $field:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in the contract's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    _ => Err(InvalidInput::new(
                        $field,
                        format!("must be one of: {}", [$($text),+].join(", ")),
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, InvalidInput> {
                Self::parse(s)
            }
        }
    };
}

closed_enum!(
    /// An area of the property.
    AreaKind, "area", {
        FrontYard => "front_yard",
        Backyard => "backyard",
        Walkway => "walkway",
        SideYard => "side_yard",
        Patio => "patio",
        PoolArea => "pool_area",
    }
);

impl AreaKind {
    /// Front yard and walkway are seen from the street; the rest from above.
    pub fn uses_street_view(self) -> bool {
        matches!(self, AreaKind::FrontYard | AreaKind::Walkway)
    }
}

closed_enum!(
    /// A design style. Every style has a prompt for every area (see [`crate::prompt`]).
    Style, "style", {
        ModernMinimalist => "modern_minimalist",
        CaliforniaNative => "california_native",
        JapaneseZen => "japanese_zen",
        EnglishGarden => "english_garden",
        DesertLandscape => "desert_landscape",
        Mediterranean => "mediterranean",
        TropicalResort => "tropical_resort",
    }
);

/// Extra instructions from the user: at most 500 characters, no control
/// characters other than line breaks and tabs. Blank means none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CustomPrompt(String);

impl CustomPrompt {
    pub fn parse(raw: &str) -> Result<Option<Self>, InvalidInput> {
        let s = raw.trim();
        if s.chars().count() > 500 {
            return Err(InvalidInput::new("custom_prompt", "must be at most 500 characters"));
        }
        if has_control(s, true) {
            return Err(InvalidInput::new("custom_prompt", "must not contain control characters"));
        }
        Ok((!s.is_empty()).then(|| Self(s.to_owned())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How much of the existing property the design keeps, 0.0 to 1.0.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct PreservationStrength(f64);

impl PreservationStrength {
    pub const DEFAULT: PreservationStrength = PreservationStrength(0.5);

    pub fn parse(value: f64) -> Result<Self, InvalidInput> {
        if value.is_finite() && (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(InvalidInput::new("preservation_strength", "must be between 0.0 and 1.0"))
        }
    }
    pub fn get(self) -> f64 {
        self.0
    }
}

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let ok = (1..=255).contains(&raw.len()) && raw.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput::new("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id that ties a request to every log line of the work it started:
/// 1 to 128 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// The caller's id if it is well formed, else `None` (the edge then makes one).
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (1..=128).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| Self(raw.to_owned()))
    }
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(Uuid::new_v4().simple().to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, InvalidInput> {
        Self::parse(&s).ok_or_else(|| InvalidInput::new("request_id", "must be 1 to 128 of [A-Za-z0-9._-]"))
    }
}
impl From<RequestId> for String {
    fn from(r: RequestId) -> String {
        r.0
    }
}
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An admin grant: 1 to 100 000 credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GrantAmount(u64);

impl GrantAmount {
    pub fn parse(value: i64) -> Result<Self, InvalidInput> {
        if (1..=100_000).contains(&value) {
            Ok(Self(value as u64))
        } else {
            Err(InvalidInput::new("amount", "must be between 1 and 100000"))
        }
    }
    pub fn get(self) -> u64 {
        self.0
    }
}

/// The caller's reference for a grant (a payment id): 1 to 255 characters. A
/// reference applies once per account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CreditReference(String);

impl CreditReference {
    /// The reference of the trial credits an account opens with.
    pub const TRIAL: &'static str = "trial";
    /// Purchases are credited as `stripe:<payment_intent>`.
    pub const PURCHASE_PREFIX: &'static str = "stripe:";

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let n = raw.chars().count();
        if !(1..=255).contains(&n) || has_control(raw, false) {
            return Err(InvalidInput::new("reference", "must be 1 to 255 characters, no control characters"));
        }
        // Terrace's own credits use these; a grant under one would stop a
        // purchase (or the trial) from being credited.
        if raw.starts_with(Self::PURCHASE_PREFIX) || raw == Self::TRIAL {
            return Err(InvalidInput::new(
                "reference",
                "\"trial\" and \"stripe:…\" are reserved for Terrace's own credits",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! uuid_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A user (the JWT's `sub`).
    UserId
);
uuid_id!(
    /// A generation.
    GenerationId
);

/// One area of a create request, parsed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AreaRequest {
    pub area: AreaKind,
    pub style: Style,
    pub custom_prompt: Option<CustomPrompt>,
    pub preservation_strength: PreservationStrength,
}

/// A create request before parsing: what the caller gave, unchecked. How it
/// was sent is the caller's business; [`GenerationRequest::parse`] checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawGenerationRequest {
    pub address: String,
    pub areas: Vec<RawAreaRequest>,
}

/// One area before parsing. `None` is "not given": no custom prompt, the
/// default preservation strength.
#[derive(Debug, Clone, PartialEq)]
pub struct RawAreaRequest {
    pub area: String,
    pub style: String,
    pub custom_prompt: Option<String>,
    pub preservation_strength: Option<f64>,
}

/// A valid create request: an address and 1 to 5 distinct areas.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRequest {
    pub address: Address,
    pub areas: Vec<AreaRequest>,
}

impl GenerationRequest {
    pub const MAX_AREAS: usize = 5;

    /// Parses every field and reports every problem at once.
    pub fn parse(raw: &RawGenerationRequest) -> Result<Self, Vec<InvalidInput>> {
        let mut errors = Vec::new();
        let address = Address::parse(&raw.address).map_err(|e| errors.push(e)).ok();
        if raw.areas.is_empty() || raw.areas.len() > Self::MAX_AREAS {
            errors.push(InvalidInput::new("areas", "must list 1 to 5 areas"));
        }
        let mut areas = Vec::with_capacity(raw.areas.len());
        for (i, a) in raw.areas.iter().enumerate() {
            let at = |e: InvalidInput| {
                let f = format!("areas[{i}].{}", e.field);
                e.at(f)
            };
            let area = AreaKind::parse(&a.area).map_err(|e| errors.push(at(e))).ok();
            let style = Style::parse(&a.style).map_err(|e| errors.push(at(e))).ok();
            let custom = match a.custom_prompt.as_deref().map(CustomPrompt::parse).transpose() {
                Ok(c) => c.flatten(),
                Err(e) => {
                    errors.push(at(e));
                    None
                }
            };
            let strength = match a.preservation_strength.map(PreservationStrength::parse) {
                None => Some(PreservationStrength::DEFAULT),
                Some(Ok(s)) => Some(s),
                Some(Err(e)) => {
                    errors.push(at(e));
                    None
                }
            };
            if let Some(kind) = area {
                if areas.iter().any(|x: &AreaRequest| x.area == kind) {
                    errors.push(InvalidInput::new(format!("areas[{i}].area"), "lists an area twice"));
                }
            }
            if let (Some(area), Some(style), Some(preservation_strength)) = (area, style, strength) {
                areas.push(AreaRequest { area, style, custom_prompt: custom, preservation_strength });
            }
        }
        match address {
            Some(address) if errors.is_empty() => Ok(Self { address, areas }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(address: &str, areas: &[(&str, &str)]) -> RawGenerationRequest {
        RawGenerationRequest {
            address: address.into(),
            areas: areas
                .iter()
                .map(|(a, s)| RawAreaRequest {
                    area: (*a).into(),
                    style: (*s).into(),
                    custom_prompt: None,
                    preservation_strength: None,
                })
                .collect(),
        }
    }

    #[test]
    fn address_bounds() {
        assert!(Address::parse("1 Ab").is_err());
        assert!(Address::parse("  12 Main St  ").is_ok_and(|a| a.as_str() == "12 Main St"));
        assert!(Address::parse(&"x".repeat(200)).is_ok());
        assert!(Address::parse(&"x".repeat(201)).is_err());
        assert!(Address::parse("12 Main\u{0}St").is_err());
    }

    #[test]
    fn enums_round_trip_and_reject_unknowns() {
        for a in AreaKind::ALL {
            assert_eq!(AreaKind::parse(a.as_str()), Ok(*a));
        }
        for s in Style::ALL {
            assert_eq!(Style::parse(s.as_str()), Ok(*s));
        }
        let e = AreaKind::parse("roof").unwrap_err();
        assert!(e.message.contains("front_yard"));
        assert!(Style::parse("Japanese_Zen").is_err());
        assert_eq!(AreaKind::ALL.len(), 6);
        assert_eq!(Style::ALL.len(), 7);
    }

    #[test]
    fn small_values() {
        assert!(CustomPrompt::parse(&"a".repeat(500)).is_ok());
        assert!(CustomPrompt::parse(&"a".repeat(501)).is_err());
        assert_eq!(CustomPrompt::parse("   ").unwrap(), None);
        assert!(PreservationStrength::parse(1.0).is_ok());
        assert!(PreservationStrength::parse(1.01).is_err());
        assert!(PreservationStrength::parse(f64::NAN).is_err());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(RequestId::parse("abc-1.2_3").is_some());
        assert!(RequestId::parse("abc/1").is_none());
        assert!(RequestId::parse(&"a".repeat(129)).is_none());
        assert_eq!(RequestId::generate().as_str().len(), 32);
        assert!(GrantAmount::parse(0).is_err());
        assert!(GrantAmount::parse(100_001).is_err());
        assert!(GrantAmount::parse(100_000).is_ok());
        assert!(CreditReference::parse("").is_err());
        assert!(CreditReference::parse(&"r".repeat(256)).is_err());
        assert!(CreditReference::parse("trial").is_err());
        assert!(CreditReference::parse("stripe:pi_123").is_err());
        assert!(CreditReference::parse("trial-bonus").is_ok());
    }

    #[test]
    fn requests_report_every_problem() {
        let ok = GenerationRequest::parse(&raw("12 Main St", &[("front_yard", "japanese_zen")])).unwrap();
        assert_eq!(ok.areas[0].preservation_strength, PreservationStrength::DEFAULT);

        let errs = GenerationRequest::parse(&raw("x", &[("roof", "japanese_zen"), ("patio", "gothic")]))
            .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["address", "areas[0].area", "areas[1].style"]);

        let errs = GenerationRequest::parse(&raw("12 Main St", &[])).unwrap_err();
        assert_eq!(errs[0].field, "areas");
        let six = [("front_yard", "japanese_zen"); 6];
        assert!(GenerationRequest::parse(&raw("12 Main St", &six)).is_err());
        let twice = [("patio", "japanese_zen"), ("patio", "mediterranean")];
        let errs = GenerationRequest::parse(&raw("12 Main St", &twice)).unwrap_err();
        assert_eq!(errs[0].field, "areas[1].area");
    }
}
