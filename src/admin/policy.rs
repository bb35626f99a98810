//! The admin API of the hospital policies: usage against the quota, the
//! audit trail, and TOTP enrollment (plus the second factor of a login).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use entity::{audit_log, user};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::{HospitalAdmin, MfaUser, Principal, Role, totp};
use crate::db::{AuditQuery, Hospital};
use crate::error::ApiError;

/// `GET /api/hospitals/{id}/usage`: what the hospital holds, and its limits
/// (0: none).
pub(super) async fn hospital_usage(
    State(app): State<AppState>,
    admin: HospitalAdmin,
) -> Result<Response, ApiError> {
    let db = &app.archive.db;
    let hospital = db.find_hospital(&admin.hospital_id).await?;
    let u = db.usage(hospital.pk).await?;
    Ok(Json(json!({
        "hospitalId": hospital.id,
        "studies": u.studies,
        "series": u.series,
        "instances": u.instances,
        "bytes": u.bytes,
        "maxStorage": u.max_storage_bytes,
        "users": u.users,
        "maxUsers": u.max_users,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuditParams {
    hospital_id: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

const AUDIT_DEFAULT_LIMIT: u64 = 100;
const AUDIT_MAX_LIMIT: u64 = 1000;

/// An RFC 3339 time or Unix milliseconds.
fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name} must be an RFC 3339 time or Unix milliseconds"
            ))
        })
}

fn parse_count(name: &str, value: Option<&str>, default: u64) -> Result<u64, ApiError> {
    value.map_or(Ok(default), |v| {
        v.parse()
            .map_err(|_| ApiError::BadRequest(format!("{name} must be a whole number")))
    })
}

impl AuditParams {
    /// The query, scoped to what `p` may read: superadmins any hospital
    /// (or all), a hospital's admins their own hospital only.
    fn into_query(self, p: &Principal) -> Result<AuditQuery, ApiError> {
        if p.role < Role::Admin {
            return Err(ApiError::Forbidden("this needs the admin role".into()));
        }
        let hospital = match self.hospital_id {
            Some(h) if p.is_superadmin() || h == p.home.id => Some(h),
            Some(_) => return Err(ApiError::NotFound),
            None if p.is_superadmin() => None,
            None => Some(p.home.id.clone()),
        };
        Ok(AuditQuery {
            hospital,
            action: self.action,
            since: self
                .since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()?,
            limit: parse_count("limit", self.limit.as_deref(), AUDIT_DEFAULT_LIMIT)?
                .clamp(1, AUDIT_MAX_LIMIT),
            offset: parse_count("offset", self.offset.as_deref(), 0)?,
        })
    }
}

fn audit_json(r: &audit_log::Model) -> Value {
    json!({
        "id": r.id,
        "time": chrono::DateTime::from_timestamp_millis(r.at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "hospitalId": r.hospital_id,
        "actor": {"type": r.actor_kind, "id": r.actor_id, "name": r.actor_name},
        "action": r.action,
        "method": r.method,
        "studyInstanceUID": r.study_uid,
        "seriesInstanceUID": r.series_uid,
        "sopInstanceUID": r.instance_uid,
        "status": r.status,
        "clientIp": r.client_ip,
    })
}

/// `GET /api/audit?hospitalId=&action=&since=&until=&limit=&offset=`,
/// newest first.
pub(super) async fn audit_trail(
    State(app): State<AppState>,
    p: Principal,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let q = params.into_query(&p)?;
    // This replica's queued rows first: a caller reads its own actions.
    app.audit.flush().await;
    let rows = app.archive.db.audit_page(&q).await?;
    Ok(Json(json!({
        "items": rows.iter().map(audit_json).collect::<Vec<_>>(),
        "limit": q.limit,
        "offset": q.offset,
    }))
    .into_response())
}

/// The second factor of a login: a user with TOTP enrolled must send a
/// fresh valid code; a user of a hospital requiring MFA without one gets an
/// enrollment-only token instead of a login token. Returns whether a code
/// was checked.
pub(super) async fn second_factor(
    app: &AppState,
    user: &user::Model,
    hospital: &Hospital,
    code: Option<&str>,
) -> Result<bool, ApiError> {
    let Some(secret) = &user.totp_secret else {
        if hospital.policy.require_mfa {
            let token = app
                .jwt
                .issue_enrollment(user.id, &hospital.id)
                .map_err(ApiError::internal)?;
            return Err(ApiError::MfaEnrollmentRequired {
                hospital: hospital.id.clone(),
                token,
            });
        }
        return Ok(false);
    };
    let code = code.ok_or(ApiError::MfaCodeRequired)?;
    let step =
        totp::verify(secret, code, chrono::Utc::now().timestamp()).ok_or(ApiError::Unauthorized)?;
    if !app.archive.db.use_totp_step(user.id, step).await? {
        // This code was used already.
        return Err(ApiError::Unauthorized);
    }
    Ok(true)
}

/// `POST /api/auth/mfa/enroll`: a new TOTP secret for the caller, active
/// once confirmed by `POST /api/auth/mfa/verify`.
pub(super) async fn enroll_totp(
    State(app): State<AppState>,
    MfaUser { user }: MfaUser,
) -> Result<Response, ApiError> {
    let db = &app.archive.db;
    let hospital = db.hospital_by_pk(user.hospital_id).await?;
    let secret = totp::generate_secret();
    db.set_totp_pending(user.id, &secret).await?;
    let account = format!("{}@{}", user.username, hospital.id);
    Ok(Json(json!({
        "secret": secret,
        "otpauthUri": totp::otpauth_uri(&secret, &account, "cloudpacs"),
        "algorithm": "SHA1",
        "digits": totp::DIGITS,
        "period": totp::STEP_SECS,
    }))
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct VerifyRequest {
    code: String,
}

/// `POST /api/auth/mfa/verify {"code"}`: confirm the enrolled secret with
/// its current code; from then on a login needs a code.
pub(super) async fn verify_totp(
    State(app): State<AppState>,
    MfaUser { user }: MfaUser,
    Json(req): Json<VerifyRequest>,
) -> Result<Response, ApiError> {
    let db = &app.archive.db;
    let pending = user.totp_pending.ok_or_else(|| {
        ApiError::BadRequest("no enrollment in progress: POST /api/auth/mfa/enroll first".into())
    })?;
    let step =
        totp::verify(&pending, &req.code, chrono::Utc::now().timestamp()).ok_or_else(|| {
            ApiError::BadRequest("the code does not match the enrolled secret".into())
        })?;
    if !db.activate_totp(user.id, &pending, step).await? {
        return Err(ApiError::Conflict(
            "the enrollment changed meanwhile: enroll again".into(),
        ));
    }
    Ok(Json(json!({"mfaEnabled": true})).into_response())
}
