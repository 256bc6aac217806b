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
