//! Input rules for accounts, shared by the REST API and anything else that
//! creates or changes accounts.

/// Why a registration field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Username not 3–32 characters of `[a-z0-9_.-]` (letter case ignored).
    #[error("username must be 3 to 32 characters of a-z, 0-9, '_', '.' or '-'")]
    InvalidUsername,
    /// Password shorter than [`MIN_PASSWORD_CHARS`].
    #[error("password must be at least 8 characters")]
    PasswordTooShort,
    /// Password longer than [`MAX_PASSWORD_BYTES`].
    #[error("password must be at most 1024 bytes")]
    PasswordTooLong,
    /// Not something that looks like an email address.
    #[error("email address is not valid")]
    InvalidEmail,
    /// Display name empty after trimming, too long, or with control characters.
    #[error("display name must be 1 to 64 characters without control characters")]
    InvalidDisplayName,
    /// The password is on the list of the most common passwords.
    #[error("this password is among the most common ones; choose another")]
    PasswordTooCommon,
    /// Not a phone number in international form.
    #[error("phone number must be in international form, e.g. +15551234567")]
    InvalidPhone,
}

impl ValidationError {
    /// Stable snake_case code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUsername => "invalid_username",
            Self::PasswordTooShort => "password_too_short",
            Self::PasswordTooLong => "password_too_long",
            Self::InvalidEmail => "invalid_email",
            Self::InvalidDisplayName => "invalid_display_name",
            Self::PasswordTooCommon => "password_too_common",
            Self::InvalidPhone => "invalid_phone",
        }
    }
}

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes; bounds the hashing work per request.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest accepted display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// Checks a username: 3–32 characters of `[a-z0-9_.-]`, upper-case ASCII
/// letters allowed too (uniqueness ignores letter case). Usernames are stored
/// and returned as given.
pub fn validate_username(username: &str) -> Result<(), ValidationError> {
    let ok_len = (3..=32).contains(&username.len());
    let ok_chars = username
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(ValidationError::InvalidUsername)
    }
}

/// Checks a new password: at least 8 characters, at most 1024 bytes.
pub fn validate_password(password: &str) -> Result<(), ValidationError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ValidationError::PasswordTooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ValidationError::PasswordTooShort);
    }
    Ok(())
}

/// The shipped list of the most common passwords (lower case).
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

fn common_passwords() -> &'static std::collections::HashSet<&'static str> {
    static SET: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Whether `password` is on the common-passwords list (letter case
/// ignored).
pub fn is_common_password(password: &str) -> bool {
    common_passwords().contains(password.to_lowercase().as_str())
}

/// Checks a password being set (registration, password change): the
/// length rules of [`validate_password`] and not on the common list.
pub fn validate_new_password(password: &str) -> Result<(), ValidationError> {
    validate_password(password)?;
    if is_common_password(password) {
        return Err(ValidationError::PasswordTooCommon);
    }
    Ok(())
}

/// Normalises a phone number to `+` and 8–15 digits, dropping spaces,
/// dashes, dots and parentheses; a leading `00` counts as `+`.
pub fn normalize_phone(phone: &str) -> Result<String, ValidationError> {
    let compact: String = phone
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = compact
        .strip_prefix('+')
        .or_else(|| compact.strip_prefix("00"))
        .ok_or(ValidationError::InvalidPhone)?;
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(format!("+{digits}"))
    } else {
        Err(ValidationError::InvalidPhone)
    }
}

/// Loosely checks an email address and returns it trimmed: one `@`, a
/// non-empty local part of at most 64 bytes, a dotted domain, no whitespace
/// or control characters, at most 254 bytes. Deliverability is proven by OTP
/// mail, not by syntax.
pub fn normalize_email(email: &str) -> Result<String, ValidationError> {
    let email = email.trim();
    let (local, domain) = email.split_once('@').ok_or(ValidationError::InvalidEmail)?;
    let ok = email.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(email.to_string())
    } else {
        Err(ValidationError::InvalidEmail)
    }
}

/// Checks a display name and returns it trimmed: 1–64 characters, no
/// control characters.
pub fn normalize_display_name(name: &str) -> Result<String, ValidationError> {
    let name = name.trim();
    let len = name.chars().count();
    if len == 0 || len > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ValidationError::InvalidDisplayName);
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["abc", "alice", "Alice", "a.b-c_d", "x123", &"a".repeat(32)] {
            assert_eq!(validate_username(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "ab",
            &"a".repeat(33),
            "with space",
            "émile",
            "a@b",
            "semi;colon",
            "new\nline",
        ] {
            assert_eq!(
                validate_username(bad),
                Err(ValidationError::InvalidUsername),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passwords() {
        assert_eq!(validate_password("12345678"), Ok(()));
        // Characters, not bytes: eight two-byte letters are enough.
        assert_eq!(validate_password("éééééééé"), Ok(()));
        assert_eq!(
            validate_password("1234567"),
            Err(ValidationError::PasswordTooShort)
        );
        assert_eq!(
            validate_password(""),
            Err(ValidationError::PasswordTooShort)
        );
        assert_eq!(
            validate_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(ValidationError::PasswordTooLong)
        );
    }

    #[test]
    fn common_passwords_are_refused_for_new_passwords() {
        assert!(common_passwords().len() > 3000);
        for common in [
            "password",
            "Password123",
            "qwertyuiop",
            "12345678",
            "iloveyou",
        ] {
            assert_eq!(
                validate_new_password(common),
                Err(ValidationError::PasswordTooCommon),
                "{common}"
            );
        }
        assert_eq!(validate_new_password("correct horse"), Ok(()));
        assert_eq!(
            validate_new_password("short"),
            Err(ValidationError::PasswordTooShort)
        );
    }

    #[test]
    fn phones() {
        assert_eq!(
            normalize_phone(" +1 (555) 123-4567 ").as_deref(),
            Ok("+15551234567")
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958").as_deref(),
            Ok("+442079460958")
        );
        for bad in [
            "",
            "5551234567",
            "+1",
            "+1555abc4567",
            "+0123456789",
            "+1234567890123456",
        ] {
            assert_eq!(
                normalize_phone(bad),
                Err(ValidationError::InvalidPhone),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email("  Alice@Example.org ").as_deref(),
            Ok("Alice@Example.org")
        );
        assert!(normalize_email("a+tag@sub.example.co.uk").is_ok());
        for bad in [
            "",
            "alice",
            "@example.org",
            "alice@",
            "alice@localhost",
            "alice@.org",
            "alice@example.",
            "alice@exa..mple",
            "a b@example.org",
            "a@b@example.org",
        ] {
            assert_eq!(
                normalize_email(bad),
                Err(ValidationError::InvalidEmail),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn display_names() {
        assert_eq!(normalize_display_name("  Ada L. ").as_deref(), Ok("Ada L."));
        assert!(normalize_display_name("   ").is_err());
        assert!(normalize_display_name("bell\u{7}").is_err());
        assert!(normalize_display_name(&"é".repeat(64)).is_ok());
        assert!(normalize_display_name(&"é".repeat(65)).is_err());
    }

    #[test]
    fn codes_are_snake_case() {
        for e in [
            ValidationError::InvalidUsername,
            ValidationError::PasswordTooShort,
            ValidationError::PasswordTooLong,
            ValidationError::InvalidEmail,
            ValidationError::InvalidDisplayName,
            ValidationError::PasswordTooCommon,
            ValidationError::InvalidPhone,
        ] {
            assert!(e
                .code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
