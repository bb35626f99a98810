//! The domain: ingest an instance, (later) find and open instances and
//! frames, delete. Knows hospitals and DICOM; knows nothing of HTTP.

use std::sync::Arc;
use std::time::Duration;

use crate::config::DuplicatePolicy;
use crate::db::Db;
use crate::store::{BlobKey, BlobStore, Spool};

mod ingest;
mod retrieve;
pub mod search;

pub use ingest::{FailedInstance, FailureReason, PartOutcome, StoredInstance};
pub use retrieve::{
    Bulk, EXPLICIT_VR_LE, Frames, InstanceBlob, InstanceMetadata, Level, Located, PIXEL_DATA_PATH,
    Ranges, RetrieveError, can_convert, is_encapsulated,
};

/// The archive: the index, the blob store and the spool folder.
#[derive(Clone)]
pub struct Archive {
    pub db: Db,
    pub store: Arc<dyn BlobStore>,
    pub spool: Spool,
    pub duplicate_policy: DuplicatePolicy,
}

impl Archive {
    /// Delete blobs whose ingest never reached the index (a crash between
    /// writing the blob and committing the index), and spool files left by a
    /// crashed process. Safe with several replicas: only journal entries
    /// older than `age` are touched, and a blob the index references is
    /// never deleted.
    pub async fn sweep_orphans(&self, age: Duration) -> Result<usize, crate::db::DbError> {
        let mut removed = 0;
        for key in self.db.stale_pending_blobs(age).await? {
            if self.sweep_blob(&key, &mut removed).await? {
                self.db.remove_pending_blob(&key).await?;
            }
        }
        match self.store.stale_journals(age).await {
            Ok(journals) => {
                for journal in journals {
                    let mut settled = true;
                    for key in &journal.keys {
                        settled &= self.sweep_blob(key, &mut removed).await?;
                    }
                    if settled && let Err(e) = self.store.close_journal(journal).await {
                        tracing::warn!(error = %e, "could not remove a journal of the blob store");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the journals of the blob store"),
        }
        if let Err(e) = self.spool.sweep(age).await {
            tracing::warn!(error = %e, "could not sweep the spool folder");
        }
        Ok(removed)
    }

    /// Delete the journaled blob `key` unless the index references it;
    /// whether it is settled (referenced, or deleted and counted in
    /// `removed`).
    async fn sweep_blob(&self, key: &str, removed: &mut usize) -> Result<bool, crate::db::DbError> {
        if self.db.blob_referenced(key).await? {
            return Ok(true);
        }
        if let Err(e) = self
            .store
            .delete(&BlobKey::from_stored(key.to_owned()))
            .await
        {
            tracing::warn!(error = %e, "could not delete an orphan blob; will retry");
            return Ok(false);
        }
        *removed += 1;
        Ok(true)
    }

    /// Delete a blob the index does not reference, keeping it journaled
    /// until it is gone so a crash cannot leak it. Whether it is gone or
    /// journaled in the index (false: only a journal of the caller's still
    /// covers it).
    async fn discard_blob(&self, key: &BlobKey) -> bool {
        let journaled = self.db.add_pending_blob(key.as_str()).await.is_ok();
        match self.store.delete(key).await {
            Ok(()) => {
                let _ = self.db.remove_pending_blob(key.as_str()).await;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not delete a superseded blob; the sweeper will");
                journaled
            }
        }
    }
}
