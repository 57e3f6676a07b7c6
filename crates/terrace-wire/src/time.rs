//! Timestamps on the wire: RFC 3339 in UTC with `Z`, to the millisecond
//! (`2026-01-01T00:00:42.999Z`). A subscription's period end is Stripe's
//! time, in whole seconds, and has always been sent without fractions
//! ([`seconds`]). Any RFC 3339 time is read, whatever its precision or
//! offset.
//!
//! Fields use these as `#[serde(with = "crate::time")]`, or
//! `crate::time::option` for an `Option`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer, de};

/// A timestamp as the API writes it.
pub fn format(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Any RFC 3339 timestamp, in UTC.
pub fn parse(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    raw.map(|s| parse(&s).map_err(|e| de::Error::custom(format_args!("{s:?} is not an RFC 3339 time: {e}"))))
        .transpose()
}

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    read(d)?.ok_or_else(|| de::Error::custom("a time is required here, not null"))
}

/// An optional timestamp: `null` when absent.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        read(d)
    }
}

/// An optional timestamp in whole seconds (`2033-05-18T03:33:20Z`): a
/// subscription's period end.
pub mod seconds {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        read(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_with_z_out_any_rfc_3339_in() {
        let t = DateTime::from_timestamp(1_767_225_642, 999_999_999).unwrap();
        assert_eq!(format(&t), "2026-01-01T00:00:42.999Z");
        assert_eq!(
            parse("2026-01-01T00:00:42.999Z").unwrap(),
            DateTime::from_timestamp_millis(1_767_225_642_999).unwrap()
        );
        assert_eq!(
            parse("2026-01-01T01:00:42+01:00").unwrap(),
            DateTime::from_timestamp(1_767_225_642, 0).unwrap()
        );
        assert!(parse("2026-01-01 00:00:42").is_err());
    }
}
