//! The one error type of the HTTP layer, and the only place an HTTP status is
//! chosen for an error. Internal details are logged once, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A missing resource, or one of another hospital: same answer.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    /// Missing or invalid credentials (401 + WWW-Authenticate).
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with existing data (admin API).
    #[error("{0}")]
    Conflict(String),
    /// A plan limit is reached (e.g. maxUsers).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The client address is outside the hospital's allowedIPs.
    #[error("requests to hospital {0} are not allowed from this address (allowedIPs)")]
    IpNotAllowed(String),
    /// The hospital requires MFA: the login needs a valid `totp` code.
    #[error("this account needs a TOTP code: send the current 6-digit code as \"totp\"")]
    MfaCodeRequired,
    /// The hospital requires MFA and the user has none enrolled. The body
    /// carries a short-lived token that only enrolls.
    #[error(
        "hospital {hospital} requires MFA and this user has no TOTP enrolled: call POST /api/auth/mfa/enroll with the enrollmentToken as Bearer, add the secret to an authenticator app, confirm with POST /api/auth/mfa/verify {{\"code\"}}, then log in with \"totp\""
    )]
    MfaEnrollmentRequired { hospital: String, token: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    /// A `Range` that starts past the end of a value of this many bytes.
    #[error("the requested range is outside the {0} bytes of the value")]
    RangeNotSatisfiable(u64),
    #[error("the request body is larger than the configured limit of {0} bytes")]
    PayloadTooLarge(u64),
    /// A dependency (index, blob store) does not answer; detail is logged.
    #[error("the service is temporarily unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) | ApiError::QuotaExceeded(_) => StatusCode::CONFLICT,
            ApiError::IpNotAllowed(_) | ApiError::MfaEnrollmentRequired { .. } => {
                StatusCode::FORBIDDEN
            }
            ApiError::MfaCodeRequired => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Conflict(_) => "conflict",
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::IpNotAllowed(_) => "ip_not_allowed",
            ApiError::MfaCodeRequired => "mfa_code_required",
            ApiError::MfaEnrollmentRequired { .. } => "mfa_enrollment_required",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::NotAcceptable(_) => "not_acceptable",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        match e {
            crate::db::DbError::NotFound => ApiError::NotFound,
            e @ crate::db::DbError::UserQuota(_) => ApiError::QuotaExceeded(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) | ApiError::Unavailable(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let size = match &self {
            ApiError::RangeNotSatisfiable(size) => Some(*size),
            _ => None,
        };
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let ApiError::MfaEnrollmentRequired { token, .. } = &self {
            body["enrollmentToken"] = json!(token);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cloudpacs\", Basic realm=\"cloudpacs\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Some(size) = size
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}
