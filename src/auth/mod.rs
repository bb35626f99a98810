//! Who acts on which hospital. The [`Tenant`] extractor is the only
//! constructor of the hospital-scoped index handle.
//!
//! Until credentials exist, every request acts on the hospital named in a
//! `/tenants/{hospital_id}/…` URL, or on `default`.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use crate::app::AppState;
use crate::db::{DEFAULT_HOSPITAL, DbError, HospitalDb};
use crate::error::ApiError;

/// The index scoped to the hospital this request acts on.
pub struct Tenant(pub HospitalDb);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("malformed path".into()))?;
        let id = params
            .iter()
            .find(|(k, _)| *k == "hospital_id")
            .map_or(DEFAULT_HOSPITAL, |(_, v)| v);
        let hospital = match state.archive.db.find_hospital(id).await {
            Ok(h) => h,
            Err(DbError::NotFound) => return Err(ApiError::NotFound),
            Err(e) => return Err(ApiError::Unavailable(e.to_string())),
        };
        Ok(Tenant(state.archive.db.scoped(hospital)))
    }
}
