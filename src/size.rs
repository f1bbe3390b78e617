//! Byte sizes as users write them: `"6GiB"`, `"512MB"`, `"1.5 GiB"` or a plain integer of bytes.

use serde::de::{self, Deserializer, Visitor};

/// Why a text is not a size. The messages say how to write one: they are shown inside a
/// pipeline's span errors, which carry the message alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum SizeError {
    #[error("`{text}` is not a size (write e.g. \"6GiB\" or \"512MiB\")")]
    NotASize { text: String },
    #[error("unknown size unit `{unit}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")]
    UnknownUnit { unit: String },
    #[error("`{text}` is not a size")]
    OutOfRange { text: String },
}

/// A size in bytes, parsed from `"6GiB"`-style strings or integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ByteSize(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("k", 1 << 10),
    ("m", 1 << 20),
    ("g", 1 << 30),
    ("t", 1 << 40),
];

impl ByteSize {
    /// Parses `"6GiB"`, `"6 GiB"`, `"1.5G"`, `"1000"`.
    pub fn parse(text: &str) -> Result<Self, SizeError> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let not_a_size = || SizeError::NotASize {
            text: text.to_string(),
        };
        if number.is_empty() {
            return Err(not_a_size());
        }
        let unit = unit.trim().to_ascii_lowercase();
        let factor = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, factor)| *factor)
                .ok_or_else(|| SizeError::UnknownUnit { unit: unit.clone() })?
        };
        let value: f64 = number.parse().map_err(|_| not_a_size())?;
        if !value.is_finite() || value < 0.0 {
            return Err(SizeError::OutOfRange {
                text: text.to_string(),
            });
        }
        Ok(ByteSize((value * factor as f64).round() as u64))
    }

    /// Human form: `6.0 GiB`.
    pub fn display(self) -> String {
        const STEPS: &[(&str, u64)] = &[
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, factor) in STEPS {
            if self.0 >= *factor {
                return format!("{:.1} {name}", self.0 as f64 / *factor as f64);
            }
        }
        format!("{} B", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as \"6GiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: \"6GiB\", \"512MiB\", \"2GB\", or an integer number of bytes.",
            "anyOf": [
                { "type": "string", "pattern": "^\\s*[0-9.]+\\s*([KMGT]i?B?|B)?\\s*$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("6GiB").unwrap().0, 6 << 30);
        assert_eq!(ByteSize::parse("1.5 GiB").unwrap().0, 3 << 29);
        assert_eq!(ByteSize::parse("512MB").unwrap().0, 512_000_000);
        assert_eq!(ByteSize::parse("1024").unwrap().0, 1024);
    }

    #[test]
    fn rejects_nonsense() {
        assert!(
            ByteSize::parse("six gigs")
                .unwrap_err()
                .to_string()
                .contains("is not a size")
        );
        assert!(
            ByteSize::parse("6XB")
                .unwrap_err()
                .to_string()
                .contains("unknown size unit")
        );
    }
}
