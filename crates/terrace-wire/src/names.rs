//! The contract's names for the domain's closed sets (`front_yard`,
//! `partially_completed`, `past_due`): written with the domain's `as_str`,
//! read with its `parse`, so that the domain's serde derives play no part
//! in the API's JSON. Fields use `#[serde(with = "crate::names")]`, or
//! `crate::names::option`.

use serde::{Deserialize, Deserializer, Serializer, de};
use terrace_domain::billing::SubscriptionStatus;
use terrace_domain::state::{AreaStage, AreaStatus};
use terrace_domain::{AreaKind, CreditSource, GenerationStatus, LedgerKind, Style};

/// A value the wire shows by its name.
pub(crate) trait Name: Copy + Sized {
    /// What a name of this set is, for errors: "an area".
    const WHAT: &'static str;
    fn name(self) -> &'static str;
    fn from_name(s: &str) -> Option<Self>;
}

macro_rules! names {
    ($($t:ty, $what:literal, $parse:expr;)+) => {$(
        impl Name for $t {
            const WHAT: &'static str = $what;
            fn name(self) -> &'static str {
                self.as_str()
            }
            fn from_name(s: &str) -> Option<Self> {
                $parse(s)
            }
        }
    )+};
}

names! {
    AreaKind, "an area of the contract", |s| AreaKind::parse(s).ok();
    Style, "a style of the contract", |s| Style::parse(s).ok();
    GenerationStatus, "a generation status", GenerationStatus::parse;
    AreaStatus, "an area status", AreaStatus::parse;
    AreaStage, "an area stage", AreaStage::parse;
    LedgerKind, "a transaction kind", LedgerKind::parse;
    CreditSource, "a credit source", CreditSource::parse;
    SubscriptionStatus, "a subscription status", SubscriptionStatus::parse;
}

fn named<'de, T: Name, D: Deserializer<'de>>(s: &str) -> Result<T, D::Error> {
    T::from_name(s).ok_or_else(|| de::Error::invalid_value(de::Unexpected::Str(s), &T::WHAT))
}

pub(crate) fn serialize<T: Name, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.name())
}

pub(crate) fn deserialize<'de, T: Name, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    named::<T, D>(&String::deserialize(d)?)
}

/// An optional name: `null` when absent.
pub(crate) mod option {
    use super::*;

    pub(crate) fn serialize<T: Name, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(v.name()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, T: Name, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| named::<T, D>(&s)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Name + PartialEq + std::fmt::Debug>(all: &[T]) {
        for v in all {
            assert_eq!(T::from_name(v.name()), Some(*v), "{v:?}");
        }
    }

    #[test]
    fn every_name_reads_back() {
        round_trips(AreaKind::ALL);
        round_trips(Style::ALL);
        round_trips(GenerationStatus::ALL);
        round_trips(AreaStatus::ALL);
        round_trips(AreaStage::ALL);
        round_trips(&[LedgerKind::Credit, LedgerKind::Hold, LedgerKind::Capture, LedgerKind::Void]);
        round_trips(&[CreditSource::Trial, CreditSource::Token, CreditSource::Subscription]);
        round_trips(&[
            SubscriptionStatus::None,
            SubscriptionStatus::Active,
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Cancelled,
        ]);
        assert_eq!(AreaKind::from_name("roof"), None);
    }
}
