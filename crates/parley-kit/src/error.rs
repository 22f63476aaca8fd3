//! The errors a Parley API returns, each mapped to one gRPC status code with a message that
//! says what is wrong. Internal failures are logged with their cause and returned without
//! it (only the trace id, to quote to an operator of the installation).

use tonic::Status;

/// An API error, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong; retrying it unchanged will fail again.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the state does not allow it now.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A concurrent change won; re-read and retry.
    #[error("{0}")]
    Aborted(String),
    /// A dependency (NATS, Redis, PostgreSQL) is down; retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::FailedPrecondition(message.into())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::Aborted(m) => Status::aborted(m),
            ApiError::Unavailable(m) => {
                tracing::warn!(error = %m, "dependency unavailable");
                Status::unavailable(m)
            }
            ApiError::Internal(e) => {
                let trace = crate::telemetry::current_trace_id();
                tracing::error!(error = format!("{e:#}"), trace_id = %trace, "internal error");
                Status::internal(format!("internal error (trace id {trace})"))
            }
        }
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_map_one_to_one() {
        let s: Status = ApiError::invalid("text is empty").into();
        assert_eq!((s.code(), s.message()), (tonic::Code::InvalidArgument, "text is empty"));
        let s: Status = ApiError::Internal(anyhow::anyhow!("db password wrong")).into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("password"), "internal causes are not returned");
    }
}
