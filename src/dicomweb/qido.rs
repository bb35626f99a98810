//! QIDO-RS (PS3.18 §10.6): search for studies, series and instances.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::query::parse;
use super::{SeriesPath, StudyPath, WebRoot};
use crate::app::AppState;
use crate::archive::search::{RetrieveUrls, search};
use crate::auth::Tenant;
use crate::db::HospitalDb;
use crate::dicom::Uid;
use crate::dicom::query::Level;
use crate::error::ApiError;

impl RetrieveUrls for WebRoot {
    fn study_url(&self, study: &str) -> String {
        self.study(study)
    }
    fn series_url(&self, study: &str, series: &str) -> String {
        format!("{}/series/{series}", self.study(study))
    }
    fn instance_url(&self, study: &str, series: &str, sop: &str) -> String {
        self.instance(study, series, sop)
    }
}

fn path_uid(raw: &str) -> Result<String, ApiError> {
    Uid::parse(raw)
        .map(|u| u.to_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid UID in the URL: {e}")))
}

/// `GET /studies`
pub async fn search_studies(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    run(&app, &scope, &root, &headers, q, Level::Study, None, None).await
}

/// `GET /series`
pub async fn search_series(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    run(&app, &scope, &root, &headers, q, Level::Series, None, None).await
}

/// `GET /studies/{study}/series`
pub async fn search_study_series(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    Path(p): Path<StudyPath>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let study = path_uid(&p.study)?;
    run(
        &app,
        &scope,
        &root,
        &headers,
        q,
        Level::Series,
        Some(study),
        None,
    )
    .await
}

/// `GET /instances`
pub async fn search_instances(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    run(
        &app,
        &scope,
        &root,
        &headers,
        q,
        Level::Instance,
        None,
        None,
    )
    .await
}

/// `GET /studies/{study}/instances`
pub async fn search_study_instances(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    Path(p): Path<StudyPath>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let study = path_uid(&p.study)?;
    run(
        &app,
        &scope,
        &root,
        &headers,
        q,
        Level::Instance,
        Some(study),
        None,
    )
    .await
}

/// `GET /studies/{study}/series/{series}/instances`
pub async fn search_series_instances(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    Path(p): Path<SeriesPath>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (study, series) = (path_uid(&p.study)?, path_uid(&p.series)?);
    run(
        &app,
        &scope,
        &root,
        &headers,
        q,
        Level::Instance,
        Some(study),
        Some(series),
    )
    .await
}

/// QIDO answers DICOM JSON; `multipart/related; type="application/dicom+xml"`
/// is not implemented (406), as is any other type.
fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let ok = accept.split(',').any(|item| {
        let essence = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let q_zero = item
            .split(';')
            .skip(1)
            .any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
        !q_zero
            && matches!(
                essence.as_str(),
                "application/dicom+json" | "application/json" | "application/*" | "*/*" | ""
            )
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(
            "QIDO-RS answers application/dicom+json".into(),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    app: &AppState,
    scope: &HospitalDb,
    root: &WebRoot,
    headers: &HeaderMap,
    raw: Option<String>,
    level: Level,
    study: Option<String>,
    series: Option<String>,
) -> Result<Response, ApiError> {
    check_accept(headers)?;
    let mut q = parse(raw.as_deref(), level, app.paging)?;
    q.search.study_uid = study;
    q.search.series_uid = series;
    // One row more than asked tells whether the answer was cut short.
    let asked = q.search.limit;
    q.search.limit += 1;
    let mut rows = search(scope, level, &q.search, &q.include, root).await?;
    let truncated = rows.len() as u64 > asked;
    rows.truncate(asked as usize);

    // The array is written item by item as the body is sent.
    let n = rows.len();
    let chunks = std::iter::once(Bytes::from_static(b"["))
        .chain(rows.into_iter().enumerate().map(move |(i, obj)| {
            let mut s = serde_json::Value::Object(obj).to_string();
            if i + 1 < n {
                s.push(',');
            }
            Bytes::from(s)
        }))
        .chain(std::iter::once(Bytes::from_static(b"]")))
        .map(Ok::<_, std::io::Error>);
    let mut resp = Body::from_stream(futures_util::stream::iter(chunks)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/dicom+json"),
    );
    if truncated && q.server_limited {
        resp.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static("299 cloudpacs \"The number of results exceeded the server limit; use limit and offset to get the rest\""),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_clients_send() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::ACCEPT,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
            );
            m
        };
        for ok in [
            "application/dicom+json",
            "application/dicom+json, application/json",
            "*/*",
            "application/json",
        ] {
            assert!(check_accept(&h(ok)).is_ok(), "{ok}");
        }
        assert!(check_accept(&HeaderMap::new()).is_ok());
        for bad in [
            "multipart/related; type=\"application/dicom+xml\"",
            "text/html",
            "application/dicom+json;q=0",
        ] {
            assert!(check_accept(&h(bad)).is_err(), "{bad}");
        }
    }
}
