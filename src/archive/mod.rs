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
            if !self.db.blob_referenced(&key).await? {
                if let Err(e) = self.store.delete(&BlobKey::from_stored(key.clone())).await {
                    tracing::warn!(error = %e, "could not delete an orphan blob; will retry");
                    continue;
                }
                removed += 1;
            }
            self.db.remove_pending_blob(&key).await?;
        }
        if let Err(e) = self.spool.sweep(age).await {
            tracing::warn!(error = %e, "could not sweep the spool folder");
        }
        Ok(removed)
    }

    /// Delete a blob the index does not reference, keeping it journaled
    /// until it is gone so a crash cannot leak it.
    async fn discard_blob(&self, key: &BlobKey) {
        // (already journaled when this ingest wrote it)
        let _ = self.db.add_pending_blob(key.as_str()).await;
        match self.store.delete(key).await {
            Ok(()) => {
                let _ = self.db.remove_pending_blob(key.as_str()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not delete a superseded blob; the sweeper will")
            }
        }
    }
}
