//! The one error type of the crate: what is wrong with an inbound payload or a provider answer.

/// Why a payload was refused. Messages are lowercase and safe to put in an HTTP 4xx JSON body:
/// they never echo secrets, and quote at most a short piece of the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("signature header is missing")]
    MissingSignature,
    #[error("signature does not match")]
    BadSignature,
    #[error("verification token does not match")]
    BadVerifyToken,
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("payload is not valid utf-8")]
    InvalidUtf8,
    #[error("payload is larger than the {limit} bytes allowed")]
    TooLarge { limit: usize },
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ChannelError {
    /// A stable snake_case code for machine-readable error bodies and metrics labels.
    pub const fn code(&self) -> &'static str {
        match self {
            ChannelError::MissingSignature => "missing_signature",
            ChannelError::BadSignature => "bad_signature",
            ChannelError::BadVerifyToken => "bad_verify_token",
            ChannelError::Malformed(_) => "malformed",
            ChannelError::InvalidUtf8 => "invalid_utf8",
            ChannelError::TooLarge { .. } => "too_large",
            ChannelError::Unsupported(_) => "unsupported",
        }
    }

    /// The HTTP status a webhook endpoint answers with. Signature failures are 401/403 so a
    /// provider (which retries 5xx) does not keep hammering with forged or misconfigured calls.
    pub const fn http_status(&self) -> u16 {
        match self {
            ChannelError::MissingSignature => 401,
            ChannelError::BadSignature | ChannelError::BadVerifyToken => 403,
            ChannelError::Malformed(_) | ChannelError::InvalidUtf8 => 400,
            ChannelError::TooLarge { .. } => 413,
            ChannelError::Unsupported(_) => 422,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        ChannelError::Malformed(what.into())
    }
}

/// At most the first 40 characters of a piece of input, for messages and `Ignored`
/// reasons that name it.
pub(crate) fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A message of at most 200 characters: a longer one keeps its start and its end, which is
/// where serde says what was wrong and where (between them it may quote a string whole).
fn clip(message: &str) -> String {
    let n = message.chars().count();
    if n <= 200 {
        return message.to_owned();
    }
    let head: String = message.chars().take(100).collect();
    let tail: String = message.chars().skip(n - 99).collect();
    format!("{head}…{tail}")
}

/// Maps a JSON error to `Malformed`, keeping serde's position and reason, clipped (a value
/// of the wrong type is quoted whole, and could be the whole input).
impl From<serde_json::Error> for ChannelError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Eof => {
                ChannelError::Malformed(format!("truncated json at line {} column {}", e.line(), e.column()))
            }
            Category::Syntax => ChannelError::Malformed(format!("invalid json: {}", clip(&e.to_string()))),
            Category::Data => ChannelError::Malformed(format!("unexpected json shape: {}", clip(&e.to_string()))),
            Category::Io => ChannelError::Malformed("unreadable json".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`parley-fuzz`): serde quotes a string of the wrong type whole, so a
    /// 4 MiB body came back in the 400 answer and the log line.
    #[test]
    fn json_errors_quote_a_short_piece_of_the_input() {
        let body = format!(r#"{{"n": "{}"}}"#, "x".repeat(100_000));
        let e: ChannelError = serde_json::from_str::<std::collections::HashMap<String, i64>>(&body).unwrap_err().into();
        let message = e.to_string();
        assert!(message.chars().count() < 300, "{message}");
        assert!(message.contains("invalid type") && message.ends_with("at line 1 column 100008"), "{message}");
    }
}
