//! The local-folder blob store: the embedded default.
//!
//! A put moves the spool file into place (or copies it into a temporary file
//! of the blob folder when it is on another file system), fsyncs it, renames
//! it to its key and fsyncs the folder, so an acknowledged blob survives a
//! crash and a half-written one is never under its key.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{BlobKey, BlobStore, ByteStream, SpoolFile, StoreError};

const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Open (creating) the folder. Temporary files older than an hour are
    /// left by a crash in the middle of a put and are removed.
    pub async fn open(root: PathBuf) -> Result<Self, StoreError> {
        let tmp = root.join(".tmp");
        tokio::fs::create_dir_all(&tmp).await?;
        let mut entries = tokio::fs::read_dir(&tmp).await?;
        while let Some(entry) = entries.next_entry().await? {
            let stale = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .is_ok_and(|t| {
                    t.elapsed().unwrap_or_default() > std::time::Duration::from_secs(3600)
                });
            if stale {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(FsStore { root })
    }

    async fn open_blob(&self, key: &BlobKey) -> Result<tokio::fs::File, StoreError> {
        match tokio::fs::File::open(key.path_under(&self.root)).await {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

#[async_trait::async_trait]
impl BlobStore for FsStore {
    async fn put(&self, key: &BlobKey, file: SpoolFile) -> Result<(), StoreError> {
        let dest = key.path_under(&self.root);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&parent).await?;
        let src = file.take_path();
        let tmp = self
            .root
            .join(".tmp")
            .join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        // Same file system: a rename; otherwise copy into the blob folder.
        if tokio::fs::rename(&src, &tmp).await.is_err() {
            let copied = tokio::fs::copy(&src, &tmp).await;
            let _ = tokio::fs::remove_file(&src).await;
            copied?;
        }
        let result = async {
            tokio::fs::OpenOptions::new()
                .write(true)
                .open(&tmp)
                .await?
                .sync_all()
                .await?;
            tokio::fs::rename(&tmp, &dest).await?;
            sync_dir(&parent).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        Ok(result?)
    }

    async fn get(&self, key: &BlobKey) -> Result<ByteStream, StoreError> {
        let file = self.open_blob(key).await?;
        Ok(Box::pin(ReaderStream::with_capacity(file, READ_CHUNK)))
    }

    async fn get_range(
        &self,
        key: &BlobKey,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StoreError> {
        let mut file = self.open_blob(key).await?;
        let size = file.metadata().await?.len();
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "range past the end of the blob",
            )));
        }
        file.seek(SeekFrom::Start(offset)).await?;
        let limited = file.take(length);
        Ok(Box::pin(
            ReaderStream::with_capacity(limited, READ_CHUNK).map_err(std::io::Error::from),
        ))
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        match tokio::fs::remove_file(key.path_under(&self.root)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        tokio::fs::metadata(&self.root).await?;
        Ok(())
    }
}
