//! The DICOMweb (PS3.18) HTTP surface: the route table and thin handlers
//! (parse the request, call `archive`, encode the answer).

use axum::Router;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::{header, request::Parts as RequestParts};
use axum::routing::get;

use crate::app::AppState;
use crate::error::ApiError;

pub mod accept;
pub mod multipart;
pub mod qido;
pub mod query;
pub mod stow;
pub mod wado;

/// Every PS3.18 resource, in one table. Mounted at `/dicom-web` (the
/// caller's hospital) and `/tenants/{hospital_id}/dicom-web`.
#[rustfmt::skip]
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/studies",                                                               get(qido::search_studies).post(stow::store_instances))
        .route("/studies/{study}",                                                       get(wado::retrieve_study).post(stow::store_instances_in_study).delete(wado::delete_study))
        .route("/studies/{study}/metadata",                                              get(wado::retrieve_study_metadata))
        .route("/studies/{study}/series",                                                get(qido::search_study_series))
        .route("/studies/{study}/instances",                                             get(qido::search_study_instances))
        .route("/studies/{study}/series/{series}",                                       get(wado::retrieve_series).delete(wado::delete_series))
        .route("/studies/{study}/series/{series}/metadata",                              get(wado::retrieve_series_metadata))
        .route("/studies/{study}/series/{series}/instances",                             get(qido::search_series_instances))
        .route("/studies/{study}/series/{series}/instances/{instance}",                  get(wado::retrieve_instance).delete(wado::delete_instance))
        .route("/studies/{study}/series/{series}/instances/{instance}/metadata",         get(wado::retrieve_instance_metadata))
        .route("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",  get(wado::retrieve_frames))
        .route("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{*path}", get(wado::retrieve_bulkdata))
        .route("/series",                                                                get(qido::search_series))
        .route("/instances",                                                             get(qido::search_instances))
}

/// Path parameters of the study, series and instance resources.
#[derive(serde::Deserialize)]
pub struct StudyPath {
    pub study: String,
}

#[derive(serde::Deserialize)]
pub struct SeriesPath {
    pub study: String,
    pub series: String,
}

#[derive(serde::Deserialize)]
pub struct InstancePath {
    pub study: String,
    pub series: String,
    pub instance: String,
}

/// The absolute (or, failing a trustworthy origin, root-relative) URL of the
/// DICOMweb root this request addressed, for RetrieveURL and BulkDataURI.
///
/// The origin is `--public-url` when set; otherwise the request's `Host`
/// only when it carries a port (dicomweb-client sends `Host: 127.0.0.1`
/// without one, which would point at the wrong port).
#[derive(Debug, Clone)]
pub struct WebRoot(pub String);

impl WebRoot {
    pub fn study(&self, study: &str) -> String {
        format!("{}/studies/{study}", self.0)
    }

    pub fn instance(&self, study: &str, series: &str, sop: &str) -> String {
        format!("{}/studies/{study}/series/{series}/instances/{sop}", self.0)
    }
}

impl FromRequestParts<AppState> for WebRoot {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut RequestParts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("malformed path".into()))?;
        let path = match params.iter().find(|(k, _)| *k == "hospital_id") {
            Some((_, hospital)) => format!("/tenants/{hospital}/dicom-web"),
            None => "/dicom-web".to_owned(),
        };
        let origin = match &state.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| host_has_port(h))
                .map(|h| format!("http://{h}"))
                .unwrap_or_default(),
        };
        Ok(WebRoot(format!("{origin}{path}")))
    }
}

fn host_has_port(host: &str) -> bool {
    // "[::1]:8080", "127.0.0.1:8080", "pacs:80"; not "127.0.0.1" or "[::1]"
    let after_bracket = host.rsplit_once(']').map_or(host, |(_, rest)| rest);
    after_bracket
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        && host.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_without_port_are_not_trusted() {
        assert!(super::host_has_port("127.0.0.1:8080"));
        assert!(super::host_has_port("[::1]:8080"));
        assert!(!super::host_has_port("127.0.0.1"));
        assert!(!super::host_has_port("[::1]"));
        assert!(!super::host_has_port("evil host:80"));
    }
}
