//! Path and query extraction whose failures answer in the API error shape,
//! plus the number parsing the chat endpoints share.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `axum::extract::Path` whose rejection is a 400 [`ApiError`].
#[derive(Debug)]
pub(super) struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::bad_request("invalid_path", e.body_text())),
        }
    }
}

/// The query string as a map (the last value wins for a repeated key);
/// a malformed query string is a 400.
#[derive(Debug, Default)]
pub(super) struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
        {
            Ok(axum::extract::Query(map)) => Ok(Self(map)),
            Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
        }
    }
}

impl Params {
    /// The value of `name`, if present (an empty value counts as absent).
    pub(super) fn text(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A non-negative integer (`before`, `after`, `offset`…).
    pub(super) fn seq(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.text(name)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| not_a_number(name))
            })
            .transpose()
    }

    /// A positive count, clamped to `max`; absent gives `default`.
    pub(super) fn limit(&self, name: &str, default: u32, max: u32) -> Result<u32, ApiError> {
        let Some(v) = self.text(name) else {
            return Ok(default);
        };
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_a_number(name));
        }
        // All digits: anything too big for u64 is simply "more than max".
        let n = v.parse::<u64>().unwrap_or(u64::MAX);
        if n == 0 {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{name} must be at least 1"),
            ));
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX).min(max))
    }

    /// A non-negative offset, at most `max`.
    pub(super) fn offset(&self, name: &str, max: u32) -> Result<u32, ApiError> {
        Ok(self
            .seq(name)?
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX).min(max)))
    }
}

fn not_a_number(name: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("{name} must be a non-negative integer"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn limits_clamp_and_reject_nonsense() {
        let p = params(&[
            ("a", "500"),
            ("b", "7"),
            ("c", "0"),
            ("d", "-1"),
            ("e", "x"),
            ("f", "99999999999999999999999"),
            ("g", ""),
        ]);
        assert_eq!(p.limit("a", 50, 100).unwrap(), 100);
        assert_eq!(p.limit("b", 50, 100).unwrap(), 7);
        assert_eq!(p.limit("missing", 50, 100).unwrap(), 50);
        assert_eq!(p.limit("g", 50, 100).unwrap(), 50);
        assert_eq!(p.limit("f", 50, 100).unwrap(), 100);
        for bad in ["c", "d", "e"] {
            assert_eq!(p.limit(bad, 50, 100).unwrap_err().code(), "invalid_query");
        }
    }

    #[test]
    fn seqs_are_non_negative_integers() {
        let p = params(&[("a", "0"), ("b", "12"), ("c", "-3"), ("d", "1.5")]);
        assert_eq!(p.seq("a").unwrap(), Some(0));
        assert_eq!(p.seq("b").unwrap(), Some(12));
        assert_eq!(p.seq("missing").unwrap(), None);
        assert!(p.seq("c").is_err());
        assert!(p.seq("d").is_err());
    }
}
