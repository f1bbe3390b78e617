//! The keys a table accepts, read from the serde struct that deserializes it, so each key
//! is declared once (as a field) and in the struct's order.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::forward_to_deserialize_any;

/// The keys `T` deserializes, in declaration order (serde's names, so renames count).
/// `T` is a struct deriving `Deserialize` without `#[serde(flatten)]` (which hides its
/// field list); anything else panics, at the first parse of such a table.
pub fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(FieldNames(&mut fields));
    fields.unwrap_or_else(|| {
        panic!(
            "{} has no field list: a struct without #[serde(flatten)]",
            std::any::type_name::<T>()
        )
    })
}

/// A deserializer that only notes the field names a struct asks for, then stops.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only a struct's field names are read"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("field names read"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::keys_of;

    #[derive(serde::Deserialize)]
    #[allow(dead_code, reason = "only its keys are read")]
    struct Sample {
        zeta: u32,
        #[serde(rename = "alpha_key")]
        alpha: Option<String>,
        #[serde(skip)]
        hidden: bool,
    }

    /// Keys come in declaration order, under their serde names, without skipped fields.
    #[test]
    fn keys_are_the_fields_in_order_under_their_serde_names() {
        assert_eq!(keys_of::<Sample>(), ["zeta", "alpha_key"]);
    }
}
