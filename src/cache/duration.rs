//! Durations as users write them for `gc --older-than`: `30d`, `12h`, `90m`, `2w`, `45s`,
//! or several at once (`1d12h`).

use std::time::Duration;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub(crate) enum DurationError {
    #[error("`{text}` is not a duration")]
    #[diagnostic(help("write a number and a unit, e.g. 30d, 12h, 90m, 2w or 1d12h"))]
    NotADuration { text: String },
    #[error("unknown unit `{unit}` in the duration `{text}`")]
    #[diagnostic(help("units: s, m, h, d, w"))]
    UnknownUnit { unit: String, text: String },
}

const UNITS: &[(&str, u64)] = &[
    ("s", 1),
    ("m", 60),
    ("min", 60),
    ("h", 3600),
    ("d", 86_400),
    ("w", 7 * 86_400),
];

/// Parses `30d`, `12h`, `1.5h`, `1d12h`; every number needs a unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let not = || DurationError::NotADuration {
        text: text.to_string(),
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(not());
    }
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(not)?;
        let (number, tail) = rest.split_at(digits);
        let letters = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(letters);
        let value: f64 = number.parse().map_err(|_| not())?;
        let unit_lower = unit.to_ascii_lowercase();
        let (_, factor) = UNITS
            .iter()
            .find(|(name, _)| *name == unit_lower)
            .ok_or_else(|| DurationError::UnknownUnit {
                unit: unit.to_string(),
                text: text.to_string(),
            })?;
        seconds += value * *factor as f64;
        rest = tail.trim_start();
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| not())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        let day = 86_400;
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * day)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90min").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2w").unwrap(), Duration::from_secs(14 * day));
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration(" 1.5h ").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1d12h").unwrap(),
            Duration::from_secs(day + 12 * 3600)
        );
        assert_eq!(
            parse_duration("1d 12h").unwrap(),
            parse_duration("36H").unwrap()
        );
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "30",
            "d",
            "1..5h",
            "-3d",
            "3d-",
            "99999999999999999999999999999w",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::NotADuration { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            parse_duration("3y"),
            Err(DurationError::UnknownUnit {
                unit: "y".into(),
                text: "3y".into()
            })
        );
        assert!(parse_duration("3").unwrap_err().to_string().contains("`3`"));
    }
}
