//! STOW-RS (PS3.18 §10.5, Annex I): store instances, part by part.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

use super::multipart::{Next, Parts};
use super::{StudyPath, WebRoot};
use crate::app::AppState;
use crate::archive::{FailureReason, PartOutcome};
use crate::audit::StoredStudies;
use crate::auth::Tenant;
use crate::dicom::Uid;
use crate::error::ApiError;
use crate::store::SpoolFile;

/// `POST /studies`
pub async fn store_instances(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    store(app, scope, root, headers, body, None).await
}

/// `POST /studies/{study}`: every instance must belong to that study.
pub async fn store_instances_in_study(
    State(app): State<AppState>,
    Tenant(scope): Tenant,
    root: WebRoot,
    Path(StudyPath { study }): Path<StudyPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let study = Uid::parse(&study)
        .map_err(|e| ApiError::BadRequest(format!("invalid study UID in the URL: {e}")))?;
    store(app, scope, root, headers, body, Some(study)).await
}

async fn store(
    app: AppState,
    scope: crate::db::HospitalDb,
    root: WebRoot,
    headers: HeaderMap,
    body: Body,
    study: Option<Uid>,
) -> Result<Response, ApiError> {
    let archive = app.archive.clone();
    let mut parts = Parts::new(&headers, body, app.max_request_bytes)?;
    // The body is read (parts spooled, in memory or on disk) while the parts already
    // read are ingested, a batch at a time (see `gather`): a fast client
    // gets batches (a few fsyncs, not four per instance), a slow one has
    // each part stored as soon as it is complete.
    let (tx, mut rx) = mpsc::channel::<Next>(STOW_BATCH_PARTS);
    let read = async move {
        loop {
            match parts.next(&app.archive.spool).await? {
                Next::End => return Ok(()),
                next => {
                    if tx.send(next).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    };
    let ingest = async {
        let mut outcomes = Vec::new();
        while let Some(first) = rx.recv().await {
            let (batch, bad) = gather(first, &mut rx).await;
            if !batch.is_empty() {
                outcomes.extend(archive.ingest_many(&scope, batch, study.as_ref()).await);
            }
            if let Some(why) = bad {
                outcomes.push(PartOutcome::failed(FailureReason::CannotUnderstand, why));
            }
        }
        outcomes
    };
    let (read, outcomes): (Result<(), ApiError>, _) = tokio::join!(read, ingest);
    read?;
    Ok(encode(&outcomes, &root))
}

/// Parts of one request ingested together, at most (and at most about
/// [`STOW_BATCH_BYTES`] of them).
const STOW_BATCH_PARTS: usize = 100;
const STOW_BATCH_BYTES: u64 = 256 << 20;

/// How long a batch waits for the request's next part before it is
/// ingested without it. A part of 512 KB takes ~4 ms at 1 Gbit/s: a client
/// that sends at that pace or faster gets one batch (one journal and one
/// index commit) for many parts, where taking only the parts already there
/// made the first batch of nearly every request a single part. A slower
/// client has each part stored when it is complete.
const STOW_LINGER: Duration = Duration::from_millis(10);

/// The batch that starts with `first`: the parts that follow it within
/// [`STOW_LINGER`] of each other, up to a full batch. A part that cannot
/// be stored ends the batch; its reason is returned, to be reported after
/// the batch (outcomes are in the order of the parts).
async fn gather(first: Next, rx: &mut mpsc::Receiver<Next>) -> (Vec<SpoolFile>, Option<String>) {
    let (mut batch, mut bytes) = (Vec::new(), 0);
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match item {
            Next::Part(file) => {
                bytes += file.size;
                batch.push(file);
            }
            Next::BadPart(why) => return (batch, Some(why)),
            Next::End => {}
        }
        if batch.len() < STOW_BATCH_PARTS && bytes < STOW_BATCH_BYTES {
            // None when the body has ended
            next = tokio::time::timeout(STOW_LINGER, rx.recv())
                .await
                .ok()
                .flatten();
        }
    }
    (batch, None)
}

/// The Store Instances Response Module (PS3.18 Table 10.5.3-3) and status:
/// 200 all stored, 202 some failed, 409 none stored because of a conflict,
/// 400 none stored because nothing could be understood.
///
/// The body is written item by item: as one `serde_json::Value` tree, the
/// response to a 4,000-instance STOW held 14.5 MB at once.
fn encode(outcomes: &[PartOutcome], root: &WebRoot) -> Response {
    let ui = |v: Option<&Uid>| match v {
        Some(uid) => json!({"vr": "UI", "Value": [uid.as_str()]}),
        None => json!({"vr": "UI"}),
    };
    let stored = || {
        outcomes.iter().filter_map(|o| match o {
            PartOutcome::Stored(s) => Some(s),
            PartOutcome::Failed(_) => None,
        })
    };
    let failed = || {
        outcomes.iter().filter_map(|o| match o {
            PartOutcome::Failed(f) => Some(f),
            PartOutcome::Stored(_) => None,
        })
    };
    let mut studies: Vec<&Uid> = Vec::new();
    for s in stored() {
        if !studies.contains(&&s.study_uid) {
            studies.push(&s.study_uid);
        }
    }
    let status = if failed().next().is_none() {
        StatusCode::OK
    } else if stored().next().is_some() {
        StatusCode::ACCEPTED
    } else if failed().any(|f| f.reason.is_conflict()) {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut body = Vec::with_capacity(256 * outcomes.len() + 256);
    body.push(b'{');
    if let [study] = studies.as_slice() {
        let url = json!({"vr": "UR", "Value": [root.study(study.as_str())]});
        write_member(&mut body, "00081190", &url.to_string());
    }
    write_sequence(
        &mut body,
        "00081198",
        failed().map(|f| {
            json!({
                "00000902": {"vr": "LO", "Value": [truncate(&f.comment, 64)]},
                "00081150": ui(f.sop_class_uid.as_ref()),
                "00081155": ui(f.sop_instance_uid.as_ref()),
                "00081197": {"vr": "US", "Value": [f.reason.code()]},
            })
        }),
    );
    write_sequence(
        &mut body,
        "00081199",
        stored().map(|s| {
            let url = root.instance(
                s.study_uid.as_str(),
                s.series_uid.as_str(),
                s.sop_instance_uid.as_str(),
            );
            json!({
                "00081150": ui(Some(&s.sop_class_uid)),
                "00081155": ui(Some(&s.sop_instance_uid)),
                "00081190": {"vr": "UR", "Value": [url]},
            })
        }),
    );
    body.push(b'}');
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/dicom+json"),
    );
    // For the audit trail.
    resp.extensions_mut().insert(StoredStudies(
        studies.iter().map(|s| s.as_str().to_owned()).collect(),
    ));
    resp
}

/// Append `"key":value` to a JSON object being written.
fn write_member(out: &mut Vec<u8>, key: &str, value: &str) {
    if out.len() > 1 {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value.as_bytes());
}

/// Append a sequence attribute of `items`, unless there is none.
fn write_sequence(out: &mut Vec<u8>, key: &str, items: impl Iterator<Item = Value>) {
    let mut items = items.peekable();
    if items.peek().is_none() {
        return;
    }
    write_member(out, key, r#"{"vr":"SQ","Value":["#);
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.to_string().as_bytes());
    }
    out.extend_from_slice(b"]}");
}

/// ErrorComment is LO: at most 64 characters.
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::store::Spool;

    /// `n` parts of 1 KiB, in memory.
    async fn parts(n: usize) -> (tempfile::TempDir, Vec<Next>) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::with_memory(dir.path().to_owned(), 1 << 20)
            .await
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let mut part = spool.create();
            part.write(bytes::Bytes::from(vec![7; 1024])).await.unwrap();
            out.push(Next::Part(part.finish().await.unwrap()));
        }
        (dir, out)
    }

    /// Send `items`, each after its delay.
    fn send(items: Vec<(Duration, Next)>) -> mpsc::Receiver<Next> {
        let (tx, rx) = mpsc::channel(STOW_BATCH_PARTS);
        tokio::spawn(async move {
            for (delay, item) in items {
                tokio::time::sleep(delay).await;
                tx.send(item).await.unwrap();
            }
        });
        rx
    }

    async fn next_batch(rx: &mut mpsc::Receiver<Next>) -> (usize, Option<String>) {
        let first = rx.recv().await.unwrap();
        let (batch, bad) = gather(first, rx).await;
        (batch.len(), bad)
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_the_parts_that_follow_within_the_linger() {
        let (_dir, parts) = parts(5).await;
        let gap = STOW_LINGER / 2;
        let delays = [Duration::ZERO, gap, gap, STOW_LINGER * 3, gap];
        let mut rx = send(delays.into_iter().zip(parts).collect());
        // the first three arrive within the linger of each other, after
        // the batch started: one batch
        assert_eq!(next_batch(&mut rx).await, (3, None));
        // then a pause longer than the linger: the next batch
        assert_eq!(next_batch(&mut rx).await, (2, None));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_that_cannot_be_stored_ends_the_batch() {
        let (_dir, mut parts) = parts(3).await;
        parts.insert(2, Next::BadPart("not DICOM".into()));
        let mut rx = send(parts.into_iter().map(|p| (Duration::ZERO, p)).collect());
        assert_eq!(next_batch(&mut rx).await, (2, Some("not DICOM".into())));
        assert_eq!(next_batch(&mut rx).await, (1, None));
    }
}
