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
//!
//! The hospitals' IP allow-lists are enforced here too, for every route:
//! the caller's home hospital's list on every authenticated request, and the
//! list of the hospital a request acts on ([`Tenant`] for DICOMweb,
//! [`HospitalAdmin`] for `/api/hospitals/{id}/…`, where superadmins are
//! exempt so that a wrong list can always be repaired).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use axum::http::{Method, header, request::Parts};
use base64::Engine;

use crate::app::AppState;
use crate::audit::{Actor, Slot};
use crate::db::{Db, DbError, Hospital, HospitalDb};
use crate::error::ApiError;

pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod roles;
pub mod totp;

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
    /// The user name or the key's name.
    pub name: Option<String>,
    /// The client address (see [`client_ip`]); `None` when unknown.
    pub client_ip: Option<IpAddr>,
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

/// The client address of a request: the socket peer (axum's `ConnectInfo`,
/// which `serve` installs), or behind a trusted proxy the right-most
/// untrusted `X-Forwarded-For` hop. `None` when the peer is unknown (a
/// request not from a socket): hospitals with an allow-list then refuse it.
pub fn client_ip(parts: &Parts, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let forwarded = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    crate::policy::client_ip(peer, forwarded, trusted)
}

/// The allow-list of `hospital` admits `ip`, or a 403 naming the hospital.
pub fn check_ip(hospital: &Hospital, ip: Option<IpAddr>) -> Result<(), ApiError> {
    if hospital.policy.allowed_ips.allows(ip) {
        Ok(())
    } else {
        Err(ApiError::IpNotAllowed(hospital.id.clone()))
    }
}

impl Principal {
    /// Resolve the credential of a request, note the caller for the audit
    /// trail, and check the home hospital's allow-list.
    pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
        let mut p = Self::resolve(state, parts).await?;
        p.client_ip = client_ip(parts, &state.trusted_proxies);
        Slot::note_actor(&parts.extensions, p.actor(), &p.home.id);
        check_ip(&p.home, p.client_ip)?;
        Ok(p)
    }

    /// The caller as the audit trail names it (never a secret).
    pub fn actor(&self) -> Actor {
        let (kind, id) = match &self.subject {
            Subject::Key(k) => ("key", k.clone()),
            Subject::User(u) => ("user", u.to_string()),
            Subject::External(s) => ("external", s.clone()),
        };
        Actor {
            kind,
            id: Some(id),
            name: self.name.clone(),
        }
    }

    async fn resolve(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
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
        let Some((key, home)) = db
            .find_active_key(key_id)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
        else {
            return Err(unauthorized());
        };
        if !keys::verify(secret, &key.secret_hash) {
            return Err(unauthorized());
        }
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
            name: Some(key.name),
            client_ip: None,
        })
    }

    async fn from_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
        let db = &state.archive.db;
        if let Ok(claims) = state.jwt.verify_local_claims(token) {
            let user_id: i64 = claims.sub.parse().map_err(|_| unauthorized())?;
            let (user, home) = db
                .active_user(user_id)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?
                .ok_or_else(unauthorized)?;
            // A token from before the hospital required MFA.
            if home.policy.require_mfa && !claims.mfa {
                return Err(ApiError::Forbidden(format!(
                    "hospital {} requires MFA: log in again (POST /api/auth/login) with a TOTP code",
                    home.id
                )));
            }
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
                name: Some(user.username),
                client_ip: None,
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
            name: None,
            client_ip: None,
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

/// A parameter of the matched route's path.
async fn path_param(
    parts: &mut Parts,
    state: &AppState,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::BadRequest("malformed path".into()))?;
    Ok(params
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned()))
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
        let hospital = match path_param(parts, state, "hospital_id").await? {
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
        // The home hospital's list was checked with the credential.
        if hospital.pk != principal.home.pk {
            check_ip(&hospital, principal.client_ip)?;
        }
        Slot::note_hospital(&parts.extensions, &hospital.id);
        Ok(Tenant(state.archive.db.scoped(hospital)))
    }
}

/// Where a request comes from, for handlers without a credential (the
/// login): its client address, and its audit slot.
pub struct Origin {
    pub ip: Option<IpAddr>,
    slot: Option<Slot>,
}

impl Origin {
    /// The user the request turned out to be (for the audit trail).
    pub fn note_user(&self, user: &entity::user::Model, home: &Hospital) {
        if let Some(slot) = &self.slot {
            slot.actor(
                Actor {
                    kind: "user",
                    id: Some(user.id.to_string()),
                    name: Some(user.username.clone()),
                },
                &home.id,
            );
        }
    }
}

impl FromRequestParts<AppState> for Origin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Origin {
            ip: client_ip(parts, &state.trusted_proxies),
            slot: Slot::of(&parts.extensions),
        })
    }
}

/// The index scoped to `hospital` for the server's own background work on
/// a hospital's data (the retention sweeper), outside any request.
pub fn system_scope(db: &Db, hospital: Hospital) -> HospitalDb {
    db.scoped(hospital)
}

/// An administrator of the hospital of the path's `{id}`
/// (`/api/hospitals/{id}/…`), after every check: access (404 when none),
/// the admin role (403), the caller's hospital status, and that hospital's
/// allow-list (superadmins exempt).
pub struct HospitalAdmin {
    pub principal: Principal,
    /// The public id of the administered hospital.
    pub hospital_id: String,
}

impl FromRequestParts<AppState> for HospitalAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::authenticate(state, parts).await?;
        let id = path_param(parts, state, "id")
            .await?
            .ok_or_else(|| ApiError::internal("HospitalAdmin on a route without {id}"))?;
        require_admin(&principal, &id)?;
        if !principal.is_superadmin() && id != principal.home.id {
            let hospital = state.archive.db.find_hospital(&id).await?;
            check_ip(&hospital, principal.client_ip)?;
        }
        Slot::note_hospital(&parts.extensions, &id);
        Ok(HospitalAdmin {
            principal,
            hospital_id: id,
        })
    }
}

/// 404 when the caller may not see the hospital, 403 when it may but is
/// not its administrator.
pub fn require_admin(p: &Principal, hospital_id: &str) -> Result<(), ApiError> {
    if !p.may_access(hospital_id) {
        return Err(ApiError::NotFound);
    }
    if !p.is_admin_of(hospital_id) {
        return Err(ApiError::Forbidden("this needs the admin role".into()));
    }
    if !p.is_superadmin() && p.home.status != "active" {
        return Err(ApiError::Forbidden(format!(
            "hospital {} is {}",
            p.home.id, p.home.status
        )));
    }
    Ok(())
}

/// The user enrolling a TOTP secret: a login token of a user, or the
/// short-lived enrollment token a login hands out when the hospital
/// requires MFA and the user has none yet (it is good for nothing else).
pub struct MfaUser {
    pub user: entity::user::Model,
}

impl FromRequestParts<AppState> for MfaUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if let Some(token) = bearer
            && let Ok(user_id) = state.jwt.verify_enrollment(token)
        {
            let (user, home) = state
                .archive
                .db
                .active_user(user_id)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            let origin = Origin::from_request_parts(parts, state).await?;
            origin.note_user(&user, &home);
            check_ip(&home, origin.ip)?;
            return Ok(MfaUser { user });
        }
        let p = Principal::authenticate(state, parts).await?;
        let Subject::User(user_id) = p.subject else {
            return Err(ApiError::Forbidden(
                "TOTP enrollment is for users who log in with a password".into(),
            ));
        };
        let user = state
            .archive
            .db
            .user_by_id(user_id)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(MfaUser { user })
    }
}
