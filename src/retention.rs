//! Data retention: studies of a hospital with `dataRetentionDays` are
//! deleted once they were received longer ago than that, by the same path
//! as `DELETE /studies/{study}` ([`Archive::delete`]: rows, counts, usage,
//! blobs) and recorded in the audit trail as `delete` by `system`
//! `retention`.
//!
//! Several replicas run the sweeper; a lease row lets one at a time work
//! (no double work), renewed between small batches and released at the
//! end, so a replica that dies mid-sweep only delays the next one until the
//! lease expires (no lost deletes). Each delete is a transaction that finds
//! the study's rows itself: should two sweepers still meet (an expired
//! lease), the second finds nothing and moves on.
//!
//! The clock is a parameter (a function returning Unix milliseconds, read
//! for each batch): `serve` passes the real time, tests a fake one.

use std::time::Duration;

use crate::app::AppState;
use crate::archive::{Level, RetrieveError};
use crate::audit::{Actor, Entry};
use crate::db::{DbError, Hospital};

/// The lease's name and lifetime.
const LEASE: &str = "retention";
const LEASE_MS: i64 = 5 * 60 * 1000;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The time, in Unix milliseconds.
pub type Clock = dyn Fn() -> i64 + Sync;

/// Run a sweep as `holder` (a name unique to this process): delete every
/// study past its hospital's retention, `batch` at a time. Returns the
/// number of studies deleted; 0 too when another replica holds the lease.
pub async fn sweep(
    app: &AppState,
    holder: &str,
    batch: u64,
    clock: &Clock,
) -> Result<usize, DbError> {
    let db = &app.archive.db;
    let mut deleted = 0;
    loop {
        let now = clock();
        if !db.claim_lease(LEASE, holder, now, LEASE_MS).await? {
            return Ok(deleted);
        }
        let due = due(app, now, batch).await?;
        let mut progress = false;
        for (hospital, study) in &due {
            let scope = crate::auth::system_scope(db, hospital.clone());
            let status = match app.archive.delete(&scope, Level::Study(study)).await {
                Ok(_) => {
                    deleted += 1;
                    progress = true;
                    204
                }
                // Deleted meanwhile (a DELETE, another sweeper).
                Err(RetrieveError::NotFound) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, hospital = %hospital.id, "retention could not delete a study; will retry");
                    500
                }
            };
            app.audit
                .record(Entry {
                    at: now,
                    hospital: Some(hospital.id.clone()),
                    actor: Actor {
                        kind: "system",
                        id: Some("retention".into()),
                        name: None,
                    },
                    action: "delete".into(),
                    method: "DELETE".into(),
                    study: Some(study.clone()),
                    series: None,
                    instance: None,
                    status,
                    client_ip: None,
                })
                .await;
        }
        if !progress {
            // Nothing (more) to do, or only failures: the next run retries.
            db.release_lease(LEASE, holder).await?;
            return Ok(deleted);
        }
    }
}

/// Up to `batch` studies past their hospital's retention at `now`.
async fn due(app: &AppState, now: i64, batch: u64) -> Result<Vec<(Hospital, String)>, DbError> {
    let db = &app.archive.db;
    let mut out = Vec::new();
    for model in db.list_hospitals().await? {
        let hospital = Hospital::from(model);
        let Some(days) = hospital.policy.retention_days else {
            continue;
        };
        let room = batch.saturating_sub(out.len() as u64);
        if room == 0 {
            break;
        }
        let cutoff = now.saturating_sub(i64::from(days) * DAY_MS);
        for uid in db
            .studies_received_before(hospital.pk, cutoff, room)
            .await?
        {
            out.push((hospital.clone(), uid));
        }
    }
    Ok(out)
}

/// The sweeper task of `serve`: a sweep every `interval` until `stop` is
/// notified (a sweep in progress finishes first).
pub async fn run(
    app: AppState,
    interval: Duration,
    batch: u64,
    stop: std::sync::Arc<tokio::sync::Notify>,
) {
    let holder = format!("retention-{}", uuid::Uuid::new_v4().simple());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.notified() => return,
        }
        match sweep(&app, &holder, batch, &crate::db::now_millis).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(studies = n, "retention deleted studies"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}
