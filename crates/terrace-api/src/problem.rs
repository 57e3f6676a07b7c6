//! Errors on the wire: `application/problem+json` (RFC 9457) with the
//! contract's fields `type`, `title`, `status`, `detail`, `code`,
//! `request_id`, and `errors` for validation.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use terrace_domain::{BlobError, CreateError, InvalidInput, LedgerError, StoreError};

tokio::task_local! {
    /// The request id of the request being answered; set by the edge so that
    /// every problem names it.
    pub(crate) static REQUEST_ID: String;
}

/// The request id of the request this task answers, if any.
pub(crate) fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

pub use terrace_wire::FieldError;

/// A rejected input as the field error it answers with.
pub fn field_error(e: InvalidInput) -> FieldError {
    FieldError { field: e.field, message: e.message }
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Option<Vec<FieldError>>,
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), errors: None, retry_after: None }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// At most this many field errors are listed in one answer (CONTRACT §5).
    pub const MAX_FIELD_ERRORS: usize = 50;

    /// 400 `validation_failed`, naming the bad fields (the first
    /// [`Problem::MAX_FIELD_ERRORS`] of them).
    pub fn validation(mut errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many if many.len() > Self::MAX_FIELD_ERRORS => {
                format!("{} fields are invalid; the first {} are listed", many.len(), Self::MAX_FIELD_ERRORS)
            }
            many => format!("{} fields are invalid", many.len()),
        };
        errors.truncate(Self::MAX_FIELD_ERRORS);
        Self { errors: Some(errors), ..Self::new(StatusCode::BAD_REQUEST, "validation_failed", detail) }
    }

    pub fn too_many_requests(retry_after: u32) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "you have too many requests in flight; retry shortly",
        )
        .retry_after(retry_after)
    }

    pub fn invalid_cursor() -> Self {
        Self::validation(vec![FieldError {
            field: "cursor".into(),
            message: "is not a cursor this API gave".into(),
        }])
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "this route is for administrators")
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred")
    }

    pub fn timeout() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request did not finish in time")
            .retry_after(1)
    }

    pub fn overloaded() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many requests in flight; retry shortly")
            .retry_after(1)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be application/json",
        )
    }

    /// The answer to a store failure outside the create path.
    pub fn from_store(e: &StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found(),
            StoreError::InvalidCursor => Self::invalid_cursor(),
            StoreError::Busy => Self::account_busy(),
            StoreError::Timeout { .. } => {
                tracing::warn!(error = %e, "store timed out");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_timeout",
                    "the database did not answer in time",
                )
                .retry_after(1)
            }
            StoreError::Unavailable { .. } => {
                tracing::warn!(error = %e, "store unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the database is unavailable")
                    .retry_after(1)
            }
            StoreError::LeaseLost | StoreError::Finished | StoreError::Internal { .. } => {
                tracing::error!(error = %e, "store failure");
                Self::internal()
            }
        }
    }

    pub fn from_ledger(e: &LedgerError) -> Self {
        match e {
            LedgerError::AccountBusy => Self::account_busy(),
            LedgerError::Store(e) => Self::from_store(e),
        }
    }

    pub fn from_create(e: &CreateError) -> Self {
        match e {
            CreateError::InsufficientCredits { needed, available } => Self::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_credits",
                format!("{needed} credits needed, {available} available"),
            ),
            CreateError::AccountBusy => Self::account_busy(),
            CreateError::IdempotencyKeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ),
            CreateError::Store(e) => Self::from_store(e),
        }
    }

    pub fn from_blob(e: &BlobError) -> Self {
        match e {
            BlobError::NotFound => Self::not_found(),
            BlobError::Timeout | BlobError::Unavailable { .. } => {
                tracing::warn!(error = %e, "blob store failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "blob_store_unavailable",
                    "the image store did not answer",
                )
                .retry_after(1)
            }
            BlobError::Internal { .. } => {
                tracing::error!(error = %e, "blob store failure");
                Self::internal()
            }
        }
    }

    pub fn account_busy() -> Self {
        Self::new(StatusCode::CONFLICT, "account_busy", "the account is busy with another request; retry")
            .retry_after(1)
    }
}

impl Problem {
    /// The problem document, naming `request_id`.
    pub(crate) fn to_json(&self, request_id: Option<&str>) -> Vec<u8> {
        let body = terrace_wire::Problem {
            kind: format!("/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            request_id: request_id.map(str::to_owned),
            errors: self.errors.clone(),
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let json = self.to_json(current_request_id().as_deref());
        let mut res = (self.status, json).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read: this connection cannot carry another request.
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(s) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a problem document, field order included.
    #[test]
    fn a_problem_document_is_pinned() {
        let p = Problem::validation(vec![
            FieldError { field: "address".into(), message: "must be 5 to 200 characters".into() },
            FieldError { field: "areas[0].style".into(), message: "must be one of: a, b".into() },
        ]);
        assert_eq!(
            String::from_utf8(p.to_json(Some("r-1"))).unwrap(),
            concat!(
                r#"{"type":"/problems/validation_failed","title":"Bad Request","status":400,"#,
                r#""detail":"2 fields are invalid","code":"validation_failed","request_id":"r-1","#,
                r#""errors":[{"field":"address","message":"must be 5 to 200 characters"},"#,
                r#"{"field":"areas[0].style","message":"must be one of: a, b"}]}"#
            )
        );
        assert_eq!(
            String::from_utf8(Problem::account_busy().to_json(None)).unwrap(),
            concat!(
                r#"{"type":"/problems/account_busy","title":"Conflict","status":409,"#,
                r#""detail":"the account is busy with another request; retry","code":"account_busy","#,
                r#""request_id":null}"#
            )
        );
    }
}
