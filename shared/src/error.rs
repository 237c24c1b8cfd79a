//! The error every `shared` validator returns: it names the bad value and
//! what would have been accepted, so the CLI can print it as one line.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A value outside its allowed set or range.
    #[error("invalid {what} {value}: {allowed}")]
    Invalid {
        what: String,
        value: String,
        allowed: String,
    },
    /// A well-formed request that a layout, kernel or backend does not support.
    #[error("{what} is not supported: {reason}")]
    Unsupported { what: String, reason: String },
    /// A size over one of the named limits of [`crate::limits`].
    #[error("invalid {what} {value}: over the limit {limit} ({basis}); raise it with {raise}")]
    Limit {
        what: String,
        value: String,
        limit: String,
        basis: String,
        raise: String,
    },
}

impl Error {
    pub fn invalid(
        what: impl Into<String>,
        value: impl ToString,
        allowed: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what: what.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
    pub fn unsupported(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks `lo <= value <= hi` and names the range when it fails.
pub fn check_range(what: &str, value: i64, lo: i64, hi: i64) -> Result<()> {
    if value < lo || value > hi {
        return Err(Error::invalid(
            what,
            value,
            format!("allowed range is [{lo}, {hi}]"),
        ));
    }
    Ok(())
}
