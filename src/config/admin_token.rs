//! `--admin-token`: the admin endpoint's bearer token, a secret.

use std::fmt;

/// Longest `--admin-token`.
pub const MAX_ADMIN_TOKEN_LEN: usize = 4096;

/// The admin endpoint's bearer token. A secret: `Debug` does not show it, so a logged
/// configuration cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token itself, for the constant-time comparison.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// `--admin-token`: 1 to [`MAX_ADMIN_TOKEN_LEN`] visible ASCII characters, the bytes an
/// `Authorization: Bearer` header can carry.
pub fn parse_admin_token(s: &str) -> Result<AdminToken, String> {
    if s.is_empty() {
        return Err("the admin token must not be empty".to_string());
    }
    if s.len() > MAX_ADMIN_TOKEN_LEN {
        return Err(format!(
            "the admin token is too long; at most {MAX_ADMIN_TOKEN_LEN} characters"
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the admin token must be visible ASCII characters (no spaces or control characters)"
                .to_string(),
        );
    }
    Ok(AdminToken(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(
            parse_admin_token("abc.DEF-1_~").map(|t| t.expose().to_string()),
            Ok("abc.DEF-1_~".to_string())
        );
        assert!(parse_admin_token("").is_err());
        assert!(parse_admin_token("has space").is_err());
        assert!(parse_admin_token("tab\there").is_err());
        assert!(parse_admin_token("é").is_err());
        assert!(parse_admin_token(&"x".repeat(MAX_ADMIN_TOKEN_LEN + 1)).is_err());
    }
}
