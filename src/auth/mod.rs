//! Who is calling, and on which hospital they act.
//!
//! [`Principal`] resolves the credential (API key as Bearer or as HTTP
//! Basic password, a JWT issued at login, or a token of the configured
//! OpenID Connect provider); [`Tenant`] picks the hospital (the URL's
//! `/tenants/{hospital_id}` or the caller's home), checks access, role and
//! hospital status, and is the only constructor of the hospital-scoped index
//! handle. Roles follow the HTTP method: GET/HEAD need `reader`, POST/PUT
//! `writer`, DELETE `admin`. Nothing is cached: a revoked key or a suspended
//! hospital takes effect on the next request, on every replica.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::{Method, header, request::Parts};
use base64::Engine;

use crate::app::AppState;
use crate::db::{DbError, Hospital, HospitalDb};
use crate::error::ApiError;

pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod roles;

pub use roles::Role;

/// Who authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Key(String),
    User(i64),
    External(String),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Subject,
    pub home: Hospital,
    pub role: Role,
    /// Other hospitals (public ids) the caller may access.
    pub access: Vec<String>,
}

impl Principal {
    pub fn is_superadmin(&self) -> bool {
        self.role == Role::Superadmin
    }

    pub fn may_access(&self, hospital_id: &str) -> bool {
        self.is_superadmin()
            || self.home.id == hospital_id
            || self.access.iter().any(|h| h == hospital_id)
    }

    /// Whether the caller administers `hospital_id`.
    pub fn is_admin_of(&self, hospital_id: &str) -> bool {
        self.is_superadmin() || (self.role >= Role::Admin && self.may_access(hospital_id))
    }
}

fn unauthorized() -> ApiError {
    ApiError::Unauthorized
}

impl Principal {
    /// Resolve the credential of a request.
    pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthorized)?;
        let (scheme, value) = header.trim().split_once(' ').ok_or_else(unauthorized)?;
        let value = value.trim();
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" if keys::is_api_key(value) => Self::from_key(state, value, None).await,
            "bearer" => Self::from_token(state, value).await,
            "basic" => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|_| unauthorized())?;
                let text = String::from_utf8(decoded).map_err(|_| unauthorized())?;
                let (user, key) = text.split_once(':').ok_or_else(unauthorized)?;
                Self::from_key(state, key, Some(user)).await
            }
            _ => Err(unauthorized()),
        }
    }

    async fn from_key(
        state: &AppState,
        presented: &str,
        basic_user: Option<&str>,
    ) -> Result<Principal, ApiError> {
        let db = &state.archive.db;
        let (key_id, secret) = keys::parse(presented).ok_or_else(unauthorized)?;
        let Some(key) = db
            .find_active_key(key_id)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
        else {
            return Err(unauthorized());
        };
        if !keys::verify(secret, &key.secret_hash) {
            return Err(unauthorized());
        }
        let home = db
            .hospital_by_pk(key.hospital_id)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        // HTTP Basic: the user name is the key's hospital id.
        if basic_user.is_some_and(|u| u != home.id) {
            return Err(unauthorized());
        }
        let role = Role::parse(&key.role).ok_or_else(unauthorized)?;
        Ok(Principal {
            subject: Subject::Key(key.key_id),
            home,
            role,
            access: Vec::new(),
        })
    }

    async fn from_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
        let db = &state.archive.db;
        if let Ok(user_id) = state.jwt.verify_local(token) {
            let user = db
                .user_by_id(user_id)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            let user = user.filter(|u| u.is_active).ok_or_else(unauthorized)?;
            let home = db
                .hospital_by_pk(user.hospital_id)
                .await
                .map_err(|_| unauthorized())?;
            let role = if user.is_superadmin {
                Role::Superadmin
            } else {
                Role::highest(user.roles.split(','))
                    .ok_or_else(unauthorized)?
                    .min(Role::Admin)
            };
            let access: Vec<String> =
                serde_json::from_str(&user.accessible_hospitals).unwrap_or_default();
            return Ok(Principal {
                subject: Subject::User(user.id),
                home,
                role,
                access,
            });
        }
        let ext = state
            .jwt
            .verify_external(token)
            .await
            .map_err(|_| unauthorized())?;
        let home = db
            .find_hospital(&ext.hospital)
            .await
            .map_err(|_| unauthorized())?;
        let role = Role::highest(ext.roles.iter().map(String::as_str))
            .ok_or_else(unauthorized)?
            .min(Role::Admin);
        Ok(Principal {
            subject: Subject::External(ext.subject),
            home,
            role,
            access: Vec::new(),
        })
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Principal::authenticate(state, parts).await
    }
}

/// The index scoped to the hospital this request acts on, after every
/// check. Another hospital's data is unreachable through it.
pub struct Tenant(pub HospitalDb);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::authenticate(state, parts).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("malformed path".into()))?;
        let target = params
            .iter()
            .find(|(k, _)| *k == "hospital_id")
            .map(|(_, v)| v.to_owned());
        let hospital = match target {
            None => principal.home.clone(),
            Some(id) if id == principal.home.id => principal.home.clone(),
            // Not allowed and not existing look the same.
            Some(id) if !principal.may_access(&id) => return Err(ApiError::NotFound),
            Some(id) => match state.archive.db.find_hospital(&id).await {
                Ok(h) => h,
                Err(DbError::NotFound) => return Err(ApiError::NotFound),
                Err(e) => return Err(ApiError::Unavailable(e.to_string())),
            },
        };
        let needed = match parts.method {
            Method::GET | Method::HEAD => Role::Reader,
            Method::DELETE => Role::Admin,
            _ => Role::Writer,
        };
        if principal.role < needed {
            return Err(ApiError::Forbidden(format!(
                "this needs the {} role",
                needed.as_str()
            )));
        }
        if hospital.status != "active" {
            return Err(ApiError::Forbidden(format!(
                "hospital {} is {}; its data is kept but cannot be accessed",
                hospital.id, hospital.status
            )));
        }
        Ok(Tenant(state.archive.db.scoped(hospital)))
    }
}
