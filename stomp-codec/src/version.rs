//! Protocol versions and their negotiation.

use std::fmt;

/// A STOMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: no header escaping.
    V1_0,
    /// STOMP 1.1: escapes `\n`, `\c` and `\\`.
    V1_1,
    /// STOMP 1.2: escapes `\r` as well; CRLF line endings.
    V1_2,
}

impl Version {
    /// All versions, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` and `version` headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses `1.0`, `1.1` or `1.2`.
    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// The version a WebSocket subprotocol (`v12.stomp`, `v11.stomp`,
    /// `v10.stomp`) stands for.
    pub fn from_subprotocol(s: &str) -> Option<Version> {
        match s.trim() {
            "v12.stomp" => Some(Version::V1_2),
            "v11.stomp" => Some(Version::V1_1),
            "v10.stomp" => Some(Version::V1_0),
            _ => None,
        }
    }

    /// The WebSocket subprotocol name of this version.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Version::V1_0 => "v10.stomp",
            Version::V1_1 => "v11.stomp",
            Version::V1_2 => "v12.stomp",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec's version negotiation: the highest version in the client's
/// `accept-version` that the server supports. A CONNECT without
/// `accept-version` is a 1.0 client. `None` means no common version: the
/// server answers ERROR with a `version` header listing its own.
pub fn negotiate_version(accept_version: Option<&str>, supported: &[Version]) -> Option<Version> {
    match accept_version {
        None => supported.contains(&Version::V1_0).then_some(Version::V1_0),
        Some(list) => list
            .split(',')
            .filter_map(Version::parse)
            .filter(|v| supported.contains(v))
            .max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(
            negotiate_version(Some("1.0,1.1,1.2"), &Version::ALL),
            Some(Version::V1_2)
        );
        assert_eq!(
            negotiate_version(Some("1.2,1.0"), &[Version::V1_0, Version::V1_1]),
            Some(Version::V1_0)
        );
    }

    #[test]
    fn negotiation_without_accept_version_means_1_0() {
        assert_eq!(negotiate_version(None, &Version::ALL), Some(Version::V1_0));
        assert_eq!(negotiate_version(None, &[Version::V1_2]), None);
    }

    #[test]
    fn negotiation_fails_when_nothing_is_common() {
        assert_eq!(negotiate_version(Some("2.0,3.1"), &Version::ALL), None);
        assert_eq!(negotiate_version(Some(""), &Version::ALL), None);
    }
}
