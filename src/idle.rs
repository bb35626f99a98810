//! Housekeeping once ingest goes quiet: the heap's free pages go back to
//! the system ([`crate::heap::trim`]) and the index folds its write-ahead
//! log into the database ([`Db::checkpoint`]). Both are cheap when there is
//! little to do, and neither runs while a STOW request does.
//!
//! The counter of running STOW requests is process-wide.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::db::Db;

/// STOW requests in progress.
static INGESTING: AtomicUsize = AtomicUsize::new(0);
/// Whether a STOW ran since the last housekeeping.
static INGESTED: AtomicBool = AtomicBool::new(false);

/// Held by a STOW request while it runs.
pub struct Ingesting(());

impl Ingesting {
    pub fn start() -> Self {
        INGESTING.fetch_add(1, Ordering::AcqRel);
        INGESTED.store(true, Ordering::Release);
        Ingesting(())
    }
}

impl Drop for Ingesting {
    fn drop(&mut self) {
        INGESTING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every second: when STOW requests ran since the last look and none runs
/// now, checkpoint the index and trim the heap (at most once a second,
/// never under load).
pub async fn housekeep_when_quiet(db: Db) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if INGESTING.load(Ordering::Acquire) == 0 && INGESTED.swap(false, Ordering::AcqRel) {
            if let Err(e) = db.checkpoint().await {
                tracing::warn!(error = %e, "index checkpoint failed");
            }
            let _ = tokio::task::spawn_blocking(crate::heap::trim).await;
        }
    }
}
