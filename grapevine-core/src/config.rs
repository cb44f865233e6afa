//! Configuration errors shared by the core's configs.

/// A configuration value is out of range. The message says which value and
/// how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is outside its allowed range.
    #[error("{field} = {value} is invalid: {hint}")]
    OutOfRange {
        /// The setting's name.
        field: &'static str,
        /// The rejected value, as text.
        value: String,
        /// What would be accepted.
        hint: &'static str,
    },
    /// Keys were given to a publisher or subscriber configured without
    /// authentication.
    #[error("new keys given, but authentication is off: configure a key from the start")]
    NotAuthenticated,
    /// Something the configuration needs could not be had.
    #[error("{what} failed; nothing is sent without it")]
    Unavailable {
        /// What failed.
        what: &'static str,
    },
}

impl ConfigError {
    pub(crate) fn out_of_range(
        field: &'static str,
        value: impl ToString,
        hint: &'static str,
    ) -> Self {
        ConfigError::OutOfRange {
            field,
            value: value.to_string(),
            hint,
        }
    }
}
