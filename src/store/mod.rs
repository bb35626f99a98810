//! Blob storage of the original DICOM bytes, behind [`BlobStore`].
//!
//! Nothing else in the crate touches blob files or S3. Keys are
//! built only by [`BlobKey`]; the index is the source of truth, so no request
//! ever lists the store.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use crate::dicom::Uid;

pub mod fs;
pub mod s3;
pub mod spool;

pub use spool::{Spool, SpoolFile};

/// Open the configured blob store.
pub async fn open(storage: &crate::config::Storage) -> Result<Box<dyn BlobStore>, StoreError> {
    match storage {
        crate::config::Storage::File(dir) => Ok(Box::new(fs::FsStore::open(dir.clone()).await?)),
        crate::config::Storage::S3(settings) => Ok(Box::new(s3::S3Store::connect(settings).await?)),
    }
}

/// A stream of bytes read from the store.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob not found")]
    NotFound,
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    #[error("blob store I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Where one stored object lives. Every upload gets a fresh key (a random
/// suffix), so a retried or concurrent upload never overwrites a blob the
/// index still points to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// The key of a new upload of an instance.
    pub fn new_instance(hospital: &str, study: &Uid, series: &Uid, sop: &Uid) -> Self {
        let nonce = uuid::Uuid::new_v4().simple();
        BlobKey(format!("{hospital}/{study}/{series}/{sop}.{nonce}.dcm"))
    }

    /// A key as recorded in the index.
    pub fn from_stored(key: String) -> Self {
        BlobKey(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Path of this blob under `root`. Keys only ever hold hospital ids and
    /// validated UIDs, so no component can climb out of `root`.
    fn path_under(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        p.extend(
            self.0
                .split('/')
                .filter(|c| !c.is_empty() && *c != "." && *c != ".."),
        );
        p
    }
}

/// The keys of blobs about to be written, recorded by the store itself
/// ([`BlobStore::journal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteJournal {
    /// The store's name for it.
    pub id: String,
    pub keys: Vec<String>,
}

/// Storage of immutable blobs.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Record durably, where [`BlobStore::stale_journals`] finds them
    /// after a crash, that the blobs of `keys` are about to be written.
    /// `None`: this store keeps no journal, the caller journals the keys in
    /// the index. The local folder keeps one (a file and two fsyncs, where
    /// the index's journal queues for SQLite's one writer); an S3 bucket
    /// does not (an object would cost a round trip to the bucket).
    async fn journal(&self, _keys: &[&str]) -> Result<Option<WriteJournal>, StoreError> {
        Ok(None)
    }
    /// Drop a journal whose blobs are all indexed or deleted.
    async fn close_journal(&self, _journal: WriteJournal) -> Result<(), StoreError> {
        Ok(())
    }
    /// Journals older than `age`, at most a hundred: writes that never
    /// finished, or whose close was lost.
    async fn stale_journals(
        &self,
        _age: std::time::Duration,
    ) -> Result<Vec<WriteJournal>, StoreError> {
        Ok(Vec::new())
    }
    /// Store a received part under `key`, durably: when this returns, the
    /// blob survives a crash. The part is consumed. A put cut short by a
    /// crash may leave a partial blob under `key`: callers journal the key
    /// first (see `Archive::sweep_orphans`).
    async fn put(&self, key: &BlobKey, file: SpoolFile) -> Result<(), StoreError>;
    /// Store several spooled files, each as [`BlobStore::put`] does; one
    /// result per item, in order. Stores override it to make the lot
    /// durable together (the local folder fsyncs them concurrently, so a
    /// batch costs about one journal commit instead of one per file).
    async fn put_many(&self, items: Vec<(BlobKey, SpoolFile)>) -> Vec<Result<(), StoreError>> {
        let mut out = Vec::with_capacity(items.len());
        for (key, file) in items {
            out.push(self.put(&key, file).await);
        }
        out
    }
    /// The whole blob, streamed.
    async fn get(&self, key: &BlobKey) -> Result<ByteStream, StoreError>;
    /// `length` bytes starting at `offset`, streamed.
    async fn get_range(
        &self,
        key: &BlobKey,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StoreError>;
    /// Remove a blob; removing a missing blob is not an error.
    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError>;
    /// Whether the store answers (for `/readyz`).
    async fn check(&self) -> Result<(), StoreError>;
}
