//! The administrative JSON API (`/api/…`): login, hospitals, API keys,
//! users, sharing. The same functions serve the CLI. Errors are
//! `{"error": {"code", "message"}}` like everywhere.

mod policy;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use entity::hospital;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::{HospitalAdmin, Origin, Principal, Role, check_ip, keys};
use crate::db::{Db, DbError, HospitalPatch, NewHospital, NewUser, is_conflict};
use crate::dicom::Uid;
use crate::error::ApiError;

/// The admin API, in one table.
#[rustfmt::skip]
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login",                                        post(login))
        .route("/auth/mfa/enroll",                                   post(policy::enroll_totp))
        .route("/auth/mfa/verify",                                   post(policy::verify_totp))
        .route("/audit",                                             get(policy::audit_trail))
        .route("/hospitals",                                         post(create_hospital_route).get(list_hospitals))
        .route("/hospitals/{id}",                                    get(show_hospital).patch(patch_hospital))
        .route("/hospitals/{id}/usage",                              get(policy::hospital_usage))
        .route("/hospitals/{id}/api-keys",                           post(create_key_route))
        .route("/hospitals/{id}/api-keys/{key_id}",                  delete(revoke_key))
        .route("/hospitals/{id}/users",                              post(create_user_route))
        .route("/hospitals/{id}/studies/{study}/shares",             post(share_study))
        .route("/hospitals/{id}/studies/{study}/shares/{target}",    delete(unshare_study))
}

/// Subscription plans: (maxUsers, maxStorage bytes).
pub fn plan_limits(plan: &str) -> Option<(i32, i64)> {
    const GIB: i64 = 1 << 30;
    match plan {
        "basic" => Some((10, 100 * GIB)),
        "professional" => Some((50, 1024 * GIB)),
        "enterprise" => Some((1000, 10 * 1024 * GIB)),
        _ => None,
    }
}

fn db_error(e: DbError) -> ApiError {
    ApiError::from(e)
}

/// The hospital as the API shows it (never any key material).
pub fn hospital_json(h: &hospital::Model) -> Value {
    json!({
        "hospitalId": h.hospital_id,
        "name": h.name,
        "contactEmail": h.contact_email,
        "contactPhone": h.contact_phone,
        "address": h.address,
        "plan": h.plan,
        "maxUsers": h.max_users,
        "maxStorage": h.max_storage_bytes,
        "status": h.status,
        "settings": serde_json::from_str::<Value>(&h.settings).unwrap_or(json!({})),
        "createdAt": chrono::DateTime::from_timestamp_millis(h.created_at).map(|t| t.to_rfc3339()),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HospitalRequest {
    pub name: String,
    pub contact_email: Option<String>,
    pub contact_phone: Option<String>,
    pub address: Option<String>,
    pub plan: Option<String>,
}

/// Register a hospital with its admin API key (shown only here).
pub async fn create_hospital(
    db: &Db,
    req: HospitalRequest,
) -> Result<(hospital::Model, String), ApiError> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(ApiError::BadRequest("name is required".into()));
    }
    let plan = req.plan.unwrap_or_else(|| "basic".into());
    let (max_users, max_storage_bytes) = plan_limits(&plan).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "plan must be basic, professional or enterprise, not {plan:?}"
        ))
    })?;
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let model = db
        .create_hospital(NewHospital {
            hospital_id: format!("hosp_{}", hex::encode(id)),
            name: name.to_owned(),
            contact_email: req.contact_email,
            contact_phone: req.contact_phone,
            address: req.address,
            plan,
            max_users,
            max_storage_bytes,
        })
        .await
        .map_err(db_error)?;
    let (_, key) = create_key(db, &model.hospital_id, Role::Admin, "admin").await?;
    Ok((model, key))
}

/// A new API key of a hospital: (key id, key). The key is shown only here.
pub async fn create_key(
    db: &Db,
    hospital_id: &str,
    role: Role,
    name: &str,
) -> Result<(String, String), ApiError> {
    let hospital = db.find_hospital(hospital_id).await.map_err(db_error)?;
    let new = keys::generate();
    db.create_key(hospital.pk, &new.key_id, name, role.as_str(), &new.hash)
        .await
        .map_err(db_error)?;
    Ok((new.key_id, new.key))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRequest {
    pub username: String,
    pub password: String,
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub accessible_hospitals: Vec<String>,
    #[serde(default)]
    pub superadmin: bool,
}

/// Create a user of a hospital; returns the user id.
pub async fn create_user(db: &Db, hospital_id: &str, req: UserRequest) -> Result<i64, ApiError> {
    let hospital = db.hospital_model(hospital_id).await.map_err(db_error)?;
    if req.username.trim().is_empty() || req.password.len() < 8 {
        return Err(ApiError::BadRequest(
            "username is required and the password needs at least 8 characters".into(),
        ));
    }
    let roles = if req.roles.is_empty() {
        vec!["reader".to_owned()]
    } else {
        req.roles
    };
    if let Some(bad) = roles.iter().find(|r| {
        !matches!(
            Role::parse(r),
            Some(Role::Reader | Role::Writer | Role::Admin)
        )
    }) {
        return Err(ApiError::BadRequest(format!(
            "unknown role {bad:?} (reader, writer, admin)"
        )));
    }
    for h in &req.accessible_hospitals {
        db.find_hospital(h)
            .await
            .map_err(|_| ApiError::BadRequest(format!("unknown hospital {h:?}")))?;
    }
    // maxUsers is enforced by `create_user` (409 quota_exceeded), atomically.
    let password = req.password;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(ApiError::internal)??;
    let user = db
        .create_user(NewUser {
            hospital_pk: hospital.id,
            username: req.username.trim().to_owned(),
            email: req.email,
            password_hash: hash,
            roles: roles.join(","),
            accessible_hospitals: req.accessible_hospitals,
            is_superadmin: req.superadmin,
        })
        .await
        .map_err(|e| {
            if is_conflict(&e) {
                ApiError::Conflict("this username exists".into())
            } else {
                db_error(e)
            }
        })?;
    Ok(user.id)
}

fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::internal)
}

fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

fn require_superadmin(p: &Principal) -> Result<(), ApiError> {
    if p.is_superadmin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("this needs the superadmin role".into()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginRequest {
    username: String,
    password: String,
    hospital_id: Option<String>,
    /// The current TOTP code, when the user has MFA.
    totp: Option<String>,
}

async fn login(
    State(app): State<AppState>,
    origin: Origin,
    Json(req): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let db = &app.archive.db;
    let mut users = db
        .users_named(req.username.trim())
        .await
        .map_err(db_error)?;
    if let Some(h) = &req.hospital_id {
        let hospital = db
            .find_hospital(h)
            .await
            .map_err(|_| ApiError::Unauthorized)?;
        users.retain(|u| u.hospital_id == hospital.pk);
    }
    if users.len() > 1 {
        return Err(ApiError::BadRequest(
            "several hospitals have this user name: give hospitalId".into(),
        ));
    }
    let user = users.pop().filter(|u| u.is_active);
    let password = req.password;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // Verify even for an unknown user, so timing does not tell users apart.
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => verify_password(&password, &h),
        None => {
            let _ = hash_password(&password);
            false
        }
    })
    .await
    .map_err(ApiError::internal)?;
    let user = user.filter(|_| ok).ok_or(ApiError::Unauthorized)?;
    let hospital = db
        .hospital_by_pk(user.hospital_id)
        .await
        .map_err(db_error)?;
    origin.note_user(&user, &hospital);
    if hospital.status != "active" && !user.is_superadmin {
        return Err(ApiError::Forbidden(format!(
            "hospital {} is {}",
            hospital.id, hospital.status
        )));
    }
    check_ip(&hospital, origin.ip)?;
    let mfa = policy::second_factor(&app, &user, &hospital, req.totp.as_deref()).await?;
    db.touch_login(user.id).await.map_err(db_error)?;
    let issued = if mfa {
        app.jwt.issue_mfa(user.id, &hospital.id)
    } else {
        app.jwt.issue(user.id, &hospital.id)
    };
    let (token, exp) = issued.map_err(ApiError::internal)?;
    let expires = chrono::DateTime::from_timestamp(exp, 0).map(|t| t.to_rfc3339());
    Ok(
        Json(json!({"token": token, "expiresAt": expires, "hospitalId": hospital.id}))
            .into_response(),
    )
}

async fn create_hospital_route(
    State(app): State<AppState>,
    p: Principal,
    Json(req): Json<HospitalRequest>,
) -> Result<Response, ApiError> {
    require_superadmin(&p)?;
    let (h, key) = create_hospital(&app.archive.db, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"hospitalId": h.hospital_id, "apiKey": key})),
    )
        .into_response())
}

async fn list_hospitals(State(app): State<AppState>, p: Principal) -> Result<Response, ApiError> {
    require_superadmin(&p)?;
    let all = app.archive.db.list_hospitals().await.map_err(db_error)?;
    Ok(Json(Value::Array(all.iter().map(hospital_json).collect())).into_response())
}

async fn show_hospital(
    State(app): State<AppState>,
    HospitalAdmin {
        hospital_id: id, ..
    }: HospitalAdmin,
) -> Result<Response, ApiError> {
    let h = app.archive.db.hospital_model(&id).await.map_err(db_error)?;
    Ok(Json(hospital_json(&h)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatchRequest {
    status: Option<String>,
    plan: Option<String>,
    /// Overrides of the plan's limits (superadmin); 0: no limit.
    max_users: Option<i64>,
    max_storage: Option<i64>,
    /// A JSON merge patch of the settings (`null` removes a key).
    settings: Option<Value>,
}

async fn patch_hospital(
    State(app): State<AppState>,
    HospitalAdmin {
        principal: p,
        hospital_id: id,
    }: HospitalAdmin,
    Json(req): Json<PatchRequest>,
) -> Result<Response, ApiError> {
    let mut patch = HospitalPatch::default();
    if let Some(status) = req.status {
        require_superadmin(&p)?;
        if !matches!(status.as_str(), "active" | "inactive" | "suspended") {
            return Err(ApiError::BadRequest(
                "status must be active, inactive or suspended".into(),
            ));
        }
        patch.status = Some(status);
    }
    if let Some(plan) = req.plan {
        require_superadmin(&p)?;
        let (users, storage) = plan_limits(&plan)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown plan {plan:?}")))?;
        patch.plan = Some((plan, users, storage));
    }
    if let Some(n) = req.max_users {
        require_superadmin(&p)?;
        patch.max_users = Some(
            i32::try_from(n)
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::BadRequest("maxUsers must be 0 or more".into()))?,
        );
    }
    if let Some(n) = req.max_storage {
        require_superadmin(&p)?;
        if n < 0 {
            return Err(ApiError::BadRequest(
                "maxStorage (bytes) must be 0 or more".into(),
            ));
        }
        patch.max_storage_bytes = Some(n);
    }
    if let Some(settings) = req.settings {
        let current = app.archive.db.hospital_model(&id).await.map_err(db_error)?;
        let (merged, policy) = crate::policy::merge_settings(&current.settings, &settings)
            .map_err(|why| ApiError::BadRequest(format!("invalid settings: {why}")))?;
        if !p.is_superadmin() && !policy.allowed_ips.allows(p.client_ip) {
            return Err(ApiError::BadRequest(
                "invalid settings: allowedIPs would lock out the address of this request".into(),
            ));
        }
        patch.settings = Some(merged.to_string());
    }
    let h = app
        .archive
        .db
        .update_hospital(&id, patch)
        .await
        .map_err(db_error)?;
    Ok(Json(hospital_json(&h)).into_response())
}

#[derive(Deserialize)]
struct KeyRequest {
    name: Option<String>,
    role: Option<String>,
}

async fn create_key_route(
    State(app): State<AppState>,
    HospitalAdmin {
        principal: p,
        hospital_id: id,
    }: HospitalAdmin,
    Json(req): Json<KeyRequest>,
) -> Result<Response, ApiError> {
    let role = match req.role.as_deref() {
        None => Role::Reader,
        Some(r) => {
            Role::parse(r).ok_or_else(|| ApiError::BadRequest(format!("unknown role {r:?}")))?
        }
    };
    if role > p.role {
        return Err(ApiError::Forbidden(
            "a key cannot have more rights than its creator".into(),
        ));
    }
    let (key_id, key) = create_key(
        &app.archive.db,
        &id,
        role,
        req.name.as_deref().unwrap_or("api key"),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"keyId": key_id, "apiKey": key, "role": role.as_str()})),
    )
        .into_response())
}

async fn revoke_key(
    State(app): State<AppState>,
    HospitalAdmin {
        hospital_id: id, ..
    }: HospitalAdmin,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let db = &app.archive.db;
    let hospital = db.find_hospital(&id).await.map_err(db_error)?;
    db.revoke_key(hospital.pk, &key_id)
        .await
        .map_err(db_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_user_route(
    State(app): State<AppState>,
    HospitalAdmin {
        principal: p,
        hospital_id: id,
    }: HospitalAdmin,
    Json(req): Json<UserRequest>,
) -> Result<Response, ApiError> {
    if req.superadmin {
        require_superadmin(&p)?;
    }
    let username = req.username.clone();
    let user_id = create_user(&app.archive.db, &id, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"userId": user_id, "username": username})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShareRequest {
    hospital_id: String,
    access_level: Option<String>,
}

async fn share_study(
    State(app): State<AppState>,
    HospitalAdmin {
        hospital_id: id, ..
    }: HospitalAdmin,
    Path((_, study)): Path<(String, String)>,
    Json(req): Json<ShareRequest>,
) -> Result<Response, ApiError> {
    let study =
        Uid::parse(&study).map_err(|e| ApiError::BadRequest(format!("invalid study UID: {e}")))?;
    let level = req.access_level.unwrap_or_else(|| "read".into());
    if level != "read" {
        return Err(ApiError::BadRequest(
            "accessLevel must be \"read\" (shared studies are read-only)".into(),
        ));
    }
    let db = &app.archive.db;
    let owner = db.find_hospital(&id).await.map_err(db_error)?;
    let target = db
        .find_hospital(&req.hospital_id)
        .await
        .map_err(|_| ApiError::BadRequest(format!("unknown hospital {:?}", req.hospital_id)))?;
    if target.pk == owner.pk {
        return Err(ApiError::BadRequest(
            "a study cannot be shared with its own hospital".into(),
        ));
    }
    if !db
        .hospital_holds_study(owner.pk, study.as_str())
        .await
        .map_err(db_error)?
    {
        return Err(ApiError::NotFound);
    }
    db.share_study(owner.pk, study.as_str(), target.pk, &level)
        .await
        .map_err(db_error)?;
    Ok((StatusCode::CREATED, Json(json!({"studyInstanceUID": study.as_str(), "hospitalId": target.id, "accessLevel": level})))
        .into_response())
}

async fn unshare_study(
    State(app): State<AppState>,
    HospitalAdmin {
        hospital_id: id, ..
    }: HospitalAdmin,
    Path((_, study, target)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let db = &app.archive.db;
    let owner = db.find_hospital(&id).await.map_err(db_error)?;
    let target = db.find_hospital(&target).await.map_err(db_error)?;
    db.unshare_study(owner.pk, &study, target.pk)
        .await
        .map_err(db_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
