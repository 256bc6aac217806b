//! Validation errors of client requests.

/// A request parameter that is missing or out of range; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct ValidationError {
    /// The offending field, as the client spelled it.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// A validation error on `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Checks that `value` (already lower-cased) is one of `allowed`.
pub(crate) fn one_of(
    field: &'static str,
    value: &str,
    allowed: &[&str],
) -> Result<(), ValidationError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("must be one of {} (got {value:?})", allowed.join(", ")),
        ))
    }
}

/// Checks that `value` is at most `max` characters long.
pub(crate) fn at_most_chars(
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<(), ValidationError> {
    let n = value.chars().count();
    if n > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters (got {n})"),
        ));
    }
    Ok(())
}

/// Reads an optional whole number of any sign and size for a field whose range the request's
/// validation checks: `-1` or `1e30` is then a 422 naming the field, like `0`, rather than a
/// malformed body because an unsigned type could not hold it. Numbers past `i64` keep their
/// sign at the end of its range, which every check refuses. Fractions, whole numbers written as
/// small floats (`2.0`) and non-numbers stay type errors.
pub fn whole_number<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct WholeNumber;

    impl serde::de::Visitor<'_> for WholeNumber {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            Ok(i64::try_from(v).unwrap_or(i64::MAX))
        }

        fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<i64, E> {
            Ok(v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
        }

        fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<i64, E> {
            Ok(i64::try_from(v).unwrap_or(i64::MAX))
        }

        // serde_json reads an integer literal past u64 as a float.
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            if v.is_finite() && v.fract() == 0.0 && v.abs() >= 9.223_372_036_854_776e18 {
                Ok(if v < 0.0 { i64::MIN } else { i64::MAX })
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
            }
        }
    }

    struct Optional;

    impl<'de> serde::de::Visitor<'de> for Optional {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(WholeNumber).map(Some)
        }
    }

    deserializer.deserialize_option(Optional)
}
