//! Durations in the config: a string of an integer and a unit, `ms`, `s`, `m` or `h`,
//! such as `"500ms"`, `"2s"`, `"1m"`. Nothing else is accepted: no spaces, signs,
//! fractions or combined units.

use std::fmt;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// How to write a duration, for error messages.
const HOW: &str = r#"an integer followed by ms, s, m or h, such as "500ms", "2s" or "1m""#;

/// Deserializes a [`Duration`] from its config spelling; use with
/// `#[serde(deserialize_with = "duration::deserialize")]`.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a duration string: {HOW}")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(|problem| E::custom(format!("invalid duration {text:?}: {problem}; write {HOW}")))
    }
}

/// Why a duration string is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum DurationProblem {
    /// The string does not start with a digit.
    #[error("it does not start with a number")]
    NoNumber,
    /// The number has no unit after it.
    #[error("the unit is missing")]
    NoUnit,
    /// What follows the number is not a unit.
    #[error("the unit is not one of ms, s, m, h")]
    UnknownUnit,
    /// The duration does not fit in 64-bit seconds or milliseconds.
    #[error("it is too large")]
    TooLarge,
}

/// Parses the config spelling of a duration.
pub(super) fn parse(text: &str) -> Result<Duration, DurationProblem> {
    let unit_start = text.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_start);
    if number.is_empty() {
        return Err(DurationProblem::NoNumber);
    }
    // Only ASCII digits, so the sole possible failure is overflow.
    let count: u64 = number.parse().map_err(|_| DurationProblem::TooLarge)?;
    let seconds_per_unit = match unit {
        "" => return Err(DurationProblem::NoUnit),
        "ms" => return Ok(Duration::from_millis(count)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(DurationProblem::UnknownUnit),
    };
    count.checked_mul(seconds_per_unit).map(Duration::from_secs).ok_or(DurationProblem::TooLarge)
}

/// Shows a duration in its config spelling, in the largest unit that divides it exactly
/// (`"90s"`, `"2m"`, `"1500ms"`); below a millisecond, in `Duration`'s debug form.
pub(super) struct Shown(pub Duration);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.subsec_nanos().is_multiple_of(1_000_000) {
            return write!(f, "{:?}", self.0);
        }
        let millis = self.0.as_millis();
        let (count, unit) = if millis == 0 {
            (0, "s")
        } else if millis.is_multiple_of(3_600_000) {
            (millis / 3_600_000, "h")
        } else if millis.is_multiple_of(60_000) {
            (millis / 60_000, "m")
        } else if millis.is_multiple_of(1000) {
            (millis / 1000, "s")
        } else {
            (millis, "ms")
        };
        write!(f, "{count}{unit}")
    }
}
