//! WADO-RS (PS3.18 §10.4): retrieve instances, metadata, frames and bulk
//! data, plus the (non-standard, but expected: Azure, Google, dcm4chee)
//! DELETE of studies, series and instances.
//!
//! Handlers are thin: validate the path, locate through `archive`, negotiate
//! with `accept`, and encode. Every body is a stream: blobs are read part by
//! part, frames and bulk values by byte ranges, metadata a page of index rows
//! at a time. multipart/related responses are written for what OHIF's and
//! dicomweb-client's decoders need (INTEROP §1.4, §4): the body starts with
//! `--boundary`, the boundary is unquoted in the header, every part header
//! is spelled `Content-Type:` and frames carry `transfer-syntax=`.

use std::io;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use serde::Deserialize;

use super::accept::{self, BulkRep, FramesRep, Packaging};
use super::{InstancePath, SeriesPath, StudyPath, WebRoot};
use crate::app::AppState;
use crate::archive::{Bulk, Frames, Level, Located, RetrieveError, can_convert};
use crate::auth::Tenant;
use crate::db::HospitalDb;
use crate::dicom::Uid;
use crate::error::ApiError;
use crate::store::{ByteStream, StoreError};

/// At most this many frames in one request (a 1,3,5 list); more is a 400.
const MAX_FRAMES_PER_REQUEST: usize = 10_000;

impl From<RetrieveError> for ApiError {
    fn from(e: RetrieveError) -> Self {
        match e {
            RetrieveError::NotFound | RetrieveError::NoSuchFrame(_) => ApiError::NotFound,
            RetrieveError::NoFrameIndex => ApiError::NotAcceptable(e.to_string()),
            RetrieveError::Db(db) => ApiError::from(db),
            RetrieveError::Transcode(m) => ApiError::Internal(m),
            RetrieveError::Store(StoreError::Unavailable(m)) => ApiError::Unavailable(m),
            // The index points at a blob the store does not have, or the
            // store failed: ours, not the caller's.
            RetrieveError::Store(other) => ApiError::internal(other),
        }
    }
}

#[derive(Deserialize)]
pub struct FramesPath {
    study: String,
    series: String,
    instance: String,
    frames: String,
}

#[derive(Deserialize)]
pub struct BulkPath {
    study: String,
    series: String,
    instance: String,
    path: String,
}

fn uid(raw: &str, what: &str) -> Result<(), ApiError> {
    Uid::parse(raw)
        .map(|_| ())
        .map_err(|e| ApiError::BadRequest(format!("invalid {what} UID in the URL: {e}")))
}

impl StudyPath {
    fn level(&self) -> Result<Level<'_>, ApiError> {
        uid(&self.study, "study")?;
        Ok(Level::Study(&self.study))
    }
}

impl SeriesPath {
    fn level(&self) -> Result<Level<'_>, ApiError> {
        uid(&self.study, "study")?;
        uid(&self.series, "series")?;
        Ok(Level::Series(&self.study, &self.series))
    }
}

impl InstancePath {
    fn level(&self) -> Result<Level<'_>, ApiError> {
        uid(&self.study, "study")?;
        uid(&self.series, "series")?;
        uid(&self.instance, "SOP instance")?;
        Ok(Level::Instance(&self.study, &self.series, &self.instance))
    }
}

// ---------------------------------------------------------------- retrieve

/// `GET /studies/{study}`
pub async fn retrieve_study(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    Path(p): Path<StudyPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    retrieve(app, scope, p.level()?, &headers).await
}

/// `GET /studies/{study}/series/{series}`
pub async fn retrieve_series(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    Path(p): Path<SeriesPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    retrieve(app, scope, p.level()?, &headers).await
}

/// `GET /studies/{study}/series/{series}/instances/{instance}`
pub async fn retrieve_instance(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    Path(p): Path<InstancePath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    retrieve(app, scope, p.level()?, &headers).await
}

async fn retrieve(
    app: AppState,
    scope: HospitalDb,
    level: Level<'_>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let located = app.archive.locate(&scope, level).await?;
    let stored = app.archive.transfer_syntaxes(&scope, &located).await?;
    let single_allowed = matches!(level, Level::Instance(..));
    let rep = accept::instances(
        &accept::parse_accept(headers),
        &stored,
        single_allowed,
        can_convert,
    )?;
    let blobs = app.archive.instance_blobs(scope, &located, rep.target);
    match rep.packaging {
        Packaging::Multipart => {
            let parts = blobs.map_ok(|b| Part {
                content_type: format!("application/dicom; transfer-syntax={}", b.transfer_syntax),
                bytes: b.bytes,
            });
            Ok(multipart("application/dicom", parts))
        }
        Packaging::Single => {
            let mut blobs = std::pin::pin!(blobs);
            let blob = blobs.next().await.ok_or(ApiError::NotFound)??;
            Ok(single(
                format!(
                    "application/dicom; transfer-syntax={}",
                    blob.transfer_syntax
                ),
                Some(blob.size_bytes),
                blob.bytes,
            ))
        }
    }
}

// ---------------------------------------------------------------- metadata

/// `GET /studies/{study}/metadata`
pub async fn retrieve_study_metadata(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    Path(p): Path<StudyPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(app, scope, root, p.level()?, &headers).await
}

/// `GET /studies/{study}/series/{series}/metadata`
pub async fn retrieve_series_metadata(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    Path(p): Path<SeriesPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(app, scope, root, p.level()?, &headers).await
}

/// `GET /studies/{study}/series/{series}/instances/{instance}/metadata`
pub async fn retrieve_instance_metadata(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    Path(p): Path<InstancePath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    metadata(app, scope, root, p.level()?, &headers).await
}

async fn metadata(
    app: AppState,
    scope: HospitalDb,
    root: WebRoot,
    level: Level<'_>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    accept::metadata(&accept::parse_accept(headers))?;
    let located = app.archive.locate(&scope, level).await?;
    let tag = etag(&scope, &located, &root);
    let tag_value = HeaderValue::from_str(&tag).map_err(ApiError::internal)?;
    if if_none_match(headers, &tag) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, tag_value);
        return Ok(resp);
    }
    let study_uid = located.study.uid.clone();
    let items = app.archive.instance_metadata(scope, &located).await?;
    // `[`, the items separated by commas, `]`: one chunk per instance.
    let mut first = true;
    let items = items
        .map_ok(move |item| {
            let url = root.instance(&study_uid, &item.series_uid, &item.sop_uid);
            let mut chunk = String::with_capacity(item.json.len() + 256);
            if !std::mem::take(&mut first) {
                chunk.push(',');
            }
            chunk.push_str(&complete_bulk_uris(&item.json, &format!("{url}/bulkdata/")));
            Bytes::from(chunk)
        })
        .map_err(to_io);
    let body = stream::once(async { Ok(Bytes::from_static(b"[")) })
        .chain(items)
        .chain(stream::once(async { Ok(Bytes::from_static(b"]")) }));
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/dicom+json"),
    );
    h.insert(header::ETAG, tag_value);
    Ok(resp)
}

/// Make the stored relative BulkDataURIs absolute. The pattern cannot occur
/// inside a JSON string value (its quotes would be escaped there), so a
/// plain replacement is exact.
fn complete_bulk_uris(json: &str, prefix: &str) -> String {
    // The prefix goes into a JSON string: escape it as such.
    let escaped = serde_json::to_string(prefix).unwrap_or_default();
    let escaped = escaped
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_default();
    json.replace(
        "\"BulkDataURI\":\"",
        &format!("\"BulkDataURI\":\"{escaped}"),
    )
}

/// A weak entity tag: the response depends on the study's last change, the
/// hospital, the level asked and the root URL the BulkDataURIs are built on.
/// Weak because gzip changes the bytes, not the meaning.
fn etag(scope: &HospitalDb, located: &Located, root: &WebRoot) -> String {
    let f = located.filter;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!(
            "{}|{}|{}|{:?}|{:?}|{}",
            scope.hospital().pk,
            f.study_pk,
            located.study.updated_at,
            f.series_pk,
            f.instance_pk,
            root.0
        )
        .as_bytes(),
    );
    format!("W/\"{}\"", hex::encode(&digest.as_ref()[..16]))
}

/// RFC 9110 §13.1.2: weak comparison against every listed tag, or `*`.
fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    let ours = tag.trim_start_matches("W/");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
}

// ------------------------------------------------------------------ frames

/// `GET /studies/{study}/series/{series}/instances/{instance}/frames/{frames}`
pub async fn retrieve_frames(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    Path(p): Path<FramesPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    uid(&p.study, "study")?;
    uid(&p.series, "series")?;
    uid(&p.instance, "SOP instance")?;
    let numbers = parse_frame_list(&p.frames)?;
    let frames = app
        .archive
        .frames(&scope, &p.study, &p.series, &p.instance, &numbers)
        .await?;
    let rep = accept::frames(
        &accept::parse_accept(&headers),
        &frames.transfer_syntax,
        frames.encapsulated,
    )?;
    Ok(frames_response(&app, frames, &rep))
}

/// A frame list: `1` or `1,3,5`, numbered from 1.
fn parse_frame_list(raw: &str) -> Result<Vec<u32>, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "the frame list must be frame numbers from 1, separated by commas, at most {MAX_FRAMES_PER_REQUEST}"
        ))
    };
    let numbers = raw
        .split(',')
        .map(|n| n.trim().parse::<u32>().ok().filter(|n| *n >= 1))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(bad)?;
    if numbers.len() > MAX_FRAMES_PER_REQUEST {
        return Err(bad());
    }
    Ok(numbers)
}

fn frames_response(app: &AppState, frames: Frames, rep: &FramesRep) -> Response {
    let content_type = rep.content_type();
    let archive = app.archive.clone();
    let key = frames.blob_key;
    let parts = stream::iter(frames.frames).map(move |ranges| {
        Ok::<_, RetrieveError>(Part {
            content_type: content_type.clone(),
            bytes: archive.read_ranges(&key, ranges),
        })
    });
    multipart(rep.media_type, parts)
}

// ---------------------------------------------------------------- bulkdata

/// `GET /studies/{study}/series/{series}/instances/{instance}/bulkdata/{*path}`:
/// the targets of the BulkDataURIs in metadata.
pub async fn retrieve_bulkdata(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    Path(p): Path<BulkPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    uid(&p.study, "study")?;
    uid(&p.series, "series")?;
    uid(&p.instance, "SOP instance")?;
    let path = p.path.trim_matches('/');
    let bulk = app
        .archive
        .bulk(&scope, &p.study, &p.series, &p.instance, path)
        .await?;
    let ranges = accept::parse_accept(&headers);
    match bulk {
        Bulk::Frames(frames) => {
            let rep = accept::frames(&ranges, &frames.transfer_syntax, true)?;
            Ok(frames_response(&app, frames, &rep))
        }
        Bulk::Value {
            blob_key,
            range: (offset, length),
            transfer_syntax,
        } => {
            let (rep, label) = accept::bulk(&ranges, transfer_syntax.as_deref())?;
            let content_type = match label {
                Some(ts) => format!("application/octet-stream; transfer-syntax={ts}"),
                None => "application/octet-stream".to_owned(),
            };
            match rep {
                BulkRep::Multipart => {
                    let bytes = app.archive.read_ranges(&blob_key, vec![(offset, length)]);
                    let part = Part {
                        content_type,
                        bytes,
                    };
                    Ok(multipart(
                        "application/octet-stream",
                        stream::once(async { Ok::<_, RetrieveError>(part) }),
                    ))
                }
                BulkRep::Single => match byte_range(&headers, length)? {
                    None => {
                        let bytes = app.archive.read_ranges(&blob_key, vec![(offset, length)]);
                        let mut resp = single(content_type, Some(length), bytes);
                        resp.headers_mut()
                            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                        Ok(resp)
                    }
                    Some((start, len)) => {
                        let bytes = app
                            .archive
                            .read_ranges(&blob_key, vec![(offset + start, len)]);
                        let mut resp = single(content_type, Some(len), bytes);
                        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                        let h = resp.headers_mut();
                        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                        let range = format!("bytes {start}-{}/{length}", start + len - 1);
                        h.insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&range).map_err(ApiError::internal)?,
                        );
                        Ok(resp)
                    }
                },
            }
        }
    }
}

/// The one byte range of a `Range: bytes=…` header within a value of `size`
/// bytes, as `(start, length)`. `None` serves the whole value: no Range, an
/// `If-Range` (not tracked), several ranges or a malformed header, all of
/// which RFC 9110 §14.2 lets a server answer with the full representation.
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    if headers.contains_key(header::IF_RANGE) {
        return Ok(None);
    }
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    let (start, end) = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => {
            let Some(n) = parse(last) else {
                return Ok(None);
            };
            if n == 0 || size == 0 {
                return Err(ApiError::RangeNotSatisfiable(size));
            }
            (size.saturating_sub(n), size - 1)
        }
        (false, _) => {
            let Some(start) = parse(first) else {
                return Ok(None);
            };
            let end = if last.is_empty() {
                size.saturating_sub(1)
            } else {
                match parse(last) {
                    Some(end) if end >= start => end.min(size.saturating_sub(1)),
                    _ => return Ok(None),
                }
            };
            if start >= size {
                return Err(ApiError::RangeNotSatisfiable(size));
            }
            (start, end)
        }
        (true, true) => return Ok(None),
    };
    Ok(Some((start, end - start + 1)))
}

// ------------------------------------------------------------------ delete

/// `DELETE /studies/{study}`
pub async fn delete_study(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    Path(p): Path<StudyPath>,
) -> Result<StatusCode, ApiError> {
    app.archive.delete(&scope, p.level()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /studies/{study}/series/{series}`
pub async fn delete_series(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    Path(p): Path<SeriesPath>,
) -> Result<StatusCode, ApiError> {
    app.archive.delete(&scope, p.level()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /studies/{study}/series/{series}/instances/{instance}`
pub async fn delete_instance(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    Path(p): Path<InstancePath>,
) -> Result<StatusCode, ApiError> {
    app.archive.delete(&scope, p.level()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --------------------------------------------------------------- encoding

/// One part of a multipart/related response.
struct Part {
    /// The part's Content-Type value.
    content_type: String,
    bytes: ByteStream,
}

fn to_io(e: RetrieveError) -> io::Error {
    // The status line is gone by now: the body is cut short, and the
    // detail is logged here, once.
    tracing::error!(error = %e, "a response body failed while streaming");
    io::Error::other(e.to_string())
}

/// A `multipart/related` response whose parts are `root_type`, streamed.
/// The body starts with the first delimiter (no preamble) and the boundary
/// is a bare token, unquoted in the header: OHIF reads it from the body,
/// dicomweb-client from the header.
fn multipart<S>(root_type: &str, parts: S) -> Response
where
    S: Stream<Item = Result<Part, RetrieveError>> + Send + 'static,
{
    let boundary = uuid::Uuid::new_v4().simple().to_string();
    let content_type = format!("multipart/related; type=\"{root_type}\"; boundary={boundary}");
    let closing = Bytes::from(format!("--{boundary}--\r\n"));
    let body = parts
        .map_err(to_io)
        .map_ok(move |part| {
            let head = Bytes::from(format!(
                "--{boundary}\r\nContent-Type: {}\r\n\r\n",
                part.content_type
            ));
            stream::once(async { Ok(head) })
                .chain(part.bytes)
                .chain(stream::once(async { Ok(Bytes::from_static(b"\r\n")) }))
        })
        .try_flatten()
        .chain(stream::once(async { Ok(closing) }));
    single(content_type, None, Box::pin(body))
}

/// A 200 response of one streamed body.
fn single(content_type: String, length: Option<u64>, bytes: ByteStream) -> Response {
    let mut resp = Response::new(Body::from_stream(bytes));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(n) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lists() {
        assert_eq!(parse_frame_list("1").ok(), Some(vec![1]));
        assert_eq!(parse_frame_list("1,3, 5").ok(), Some(vec![1, 3, 5]));
        for bad in ["0", "", "1,", "a", "-1", "1;2", "1,0"] {
            assert!(parse_frame_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn byte_ranges() {
        let range = |v: &str, size| {
            let mut h = HeaderMap::new();
            h.insert(
                header::RANGE,
                HeaderValue::from_str(v).unwrap_or_else(|_| panic!()),
            );
            byte_range(&h, size)
        };
        assert_eq!(range("bytes=0-9", 100).ok(), Some(Some((0, 10))));
        assert_eq!(range("bytes=90-", 100).ok(), Some(Some((90, 10))));
        assert_eq!(range("bytes=-10", 100).ok(), Some(Some((90, 10))));
        assert_eq!(range("bytes=-200", 100).ok(), Some(Some((0, 100))));
        assert_eq!(range("bytes=50-500", 100).ok(), Some(Some((50, 50))));
        assert_eq!(range("bytes=0-1,5-6", 100).ok(), Some(None));
        assert_eq!(range("items=0-1", 100).ok(), Some(None));
        assert_eq!(range("bytes=9-1", 100).ok(), Some(None));
        assert!(matches!(
            range("bytes=100-", 100),
            Err(ApiError::RangeNotSatisfiable(100))
        ));
        assert!(matches!(
            range("bytes=-0", 100),
            Err(ApiError::RangeNotSatisfiable(100))
        ));
    }

    #[test]
    fn bulk_uris_become_absolute() {
        let json = r#"{"7FE00010":{"vr":"OW","BulkDataURI":"7FE00010"},"00100010":{"vr":"PN","Value":[{"Alphabetic":"x\"BulkDataURI\":\""}]}}"#;
        let out = complete_bulk_uris(
            json,
            "http://h:1/dicom-web/studies/1/series/2/instances/3/bulkdata/",
        );
        assert!(out.contains(r#""BulkDataURI":"http://h:1/dicom-web/studies/1/series/2/instances/3/bulkdata/7FE00010""#));
        assert!(
            out.contains(r#"x\"BulkDataURI\":\""#),
            "string values are untouched: {out}"
        );
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static(r#""x", "abc""#),
        );
        assert!(if_none_match(&h, r#"W/"abc""#));
        assert!(!if_none_match(&h, r#"W/"abd""#));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, r#"W/"abd""#));
        assert!(!if_none_match(&HeaderMap::new(), r#"W/"abd""#));
    }
}
