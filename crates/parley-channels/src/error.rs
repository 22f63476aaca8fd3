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

/// Maps a JSON error to `Malformed`, keeping serde's position and reason (it never echoes the
/// whole input) but not its suggestion-laden wording of our internal type names.
impl From<serde_json::Error> for ChannelError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Eof => {
                ChannelError::Malformed(format!("truncated json at line {} column {}", e.line(), e.column()))
            }
            Category::Syntax => ChannelError::Malformed(format!("invalid json: {e}")),
            Category::Data => ChannelError::Malformed(format!("unexpected json shape: {e}")),
            Category::Io => ChannelError::Malformed("unreadable json".to_owned()),
        }
    }
}
