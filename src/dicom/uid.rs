//! DICOM UIDs (PS3.5 §9.1): at most 64 characters, digits and dots, no
//! empty component. Every UID that reaches a path, a blob key or the index
//! goes through [`Uid::parse`].

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("the UID is empty")]
    Empty,
    #[error("the UID is longer than 64 characters")]
    TooLong,
    #[error("the UID contains a character other than digits and dots")]
    BadCharacter,
    #[error("the UID has an empty component")]
    EmptyComponent,
}

impl Uid {
    /// Validate a UID. Trailing NUL and space padding (as found in files) is
    /// removed first. Leading zeros in components are tolerated: they are
    /// invalid per PS3.5 but common in the wild.
    pub fn parse(raw: &str) -> Result<Self, UidError> {
        let s = raw.trim_end_matches(['\0', ' ']);
        if s.is_empty() {
            return Err(UidError::Empty);
        }
        if s.len() > 64 {
            return Err(UidError::TooLong);
        }
        if !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(UidError::BadCharacter);
        }
        if s.split('.').any(str::is_empty) {
            return Err(UidError::EmptyComponent);
        }
        Ok(Uid(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Uid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_valid_and_rejects_malformed() {
        assert_eq!(
            Uid::parse("1.2.840.10008.1.2.1\0").map(|u| u.0),
            Ok("1.2.840.10008.1.2.1".into())
        );
        assert_eq!(Uid::parse("1.2.3/../x"), Err(UidError::BadCharacter));
        assert_eq!(Uid::parse("1.2.abc"), Err(UidError::BadCharacter));
        assert_eq!(Uid::parse(&"1.".repeat(40)), Err(UidError::TooLong));
        assert_eq!(Uid::parse("1..2"), Err(UidError::EmptyComponent));
        assert_eq!(Uid::parse(".1"), Err(UidError::EmptyComponent));
        assert_eq!(Uid::parse(""), Err(UidError::Empty));
    }

    proptest! {
        #[test]
        fn a_parsed_uid_is_always_safe_in_a_path(s in ".{0,80}") {
            if let Ok(uid) = Uid::parse(&s) {
                prop_assert!(uid.as_str().len() <= 64);
                prop_assert!(uid.as_str().bytes().all(|b| b.is_ascii_digit() || b == b'.'));
                prop_assert!(!uid.as_str().contains(".."));
            }
        }
    }
}
