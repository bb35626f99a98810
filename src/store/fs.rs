//! The local-folder blob store: the embedded default.
//!
//! A put moves the spool file into place (or copies it into a temporary file
//! of the blob folder when it is on another file system), fsyncs it, renames
//! it to its key and fsyncs the folder, so an acknowledged blob survives a
//! crash and a half-written one is never under its key.

use std::collections::BTreeSet;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt, stream};
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
        tokio::fs::File::open(key.path_under(&self.root))
            .await
            .map_err(open_error)
    }
}

/// Ranges up to this size are read into memory at once.
const WHOLE_READ_MAX: u64 = 4 * 1024 * 1024;

/// Opening a blob that is not there is [`StoreError::NotFound`].
fn open_error(e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound
    } else {
        e.into()
    }
}

fn check_range(size: u64, offset: u64, length: u64) -> Result<(), StoreError> {
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "range past the end of the blob",
        )));
    }
    Ok(())
}

/// Read `length` bytes at `offset` of a blob (blocking).
fn read_range(path: &Path, offset: u64, length: u64) -> Result<bytes::Bytes, StoreError> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).map_err(open_error)?;
    check_range(file.metadata()?.len(), offset, length)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; usize::try_from(length).unwrap_or(usize::MAX)];
    file.read_exact(&mut buf)?;
    Ok(buf.into())
}

/// Files fsynced at the same time by [`FsStore::put_many`].
const SYNC_CONCURRENCY: usize = 16;

/// Move a spool file to `dest` durably (blocking): into a temporary file of
/// the blob folder (a rename, or a copy across file systems), fsync, rename.
/// The caller fsyncs `dest`'s folder.
fn place(root: &Path, src: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = root
        .join(".tmp")
        .join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    if std::fs::rename(src, &tmp).is_err() {
        let copied = std::fs::copy(src, &tmp);
        let _ = std::fs::remove_file(src);
        copied?;
    }
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, dest));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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

    async fn put_many(&self, items: Vec<(BlobKey, SpoolFile)>) -> Vec<Result<(), StoreError>> {
        // Each file is moved, fsynced and renamed into place on the blocking
        // pool, several at a time: concurrent fsyncs share the file system's
        // journal commits. Then every folder that received a file is fsynced
        // once.
        let root = self.root.clone();
        let placed: Vec<Result<PathBuf, StoreError>> = stream::iter(items)
            .map(|(key, file)| {
                let root = root.clone();
                async move {
                    let dest = key.path_under(&root);
                    let src = file.take_path();
                    tokio::task::spawn_blocking(move || place(&root, &src, &dest).map(|()| dest))
                        .await
                        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
                        .map_err(StoreError::from)
                }
            })
            .buffered(SYNC_CONCURRENCY)
            .collect()
            .await;
        let folders: BTreeSet<PathBuf> = placed
            .iter()
            .filter_map(|p| p.as_ref().ok()?.parent().map(Path::to_path_buf))
            .collect();
        let failed: BTreeSet<PathBuf> = stream::iter(folders)
            .map(|dir| async move {
                let synced = tokio::task::spawn_blocking({
                    let dir = dir.clone();
                    move || std::fs::File::open(&dir)?.sync_all()
                })
                .await;
                match synced {
                    Ok(Ok(())) => None,
                    _ => Some(dir),
                }
            })
            .buffer_unordered(SYNC_CONCURRENCY)
            .filter_map(|d| async move { d })
            .collect()
            .await;
        placed
            .into_iter()
            .map(|p| match p {
                Ok(dest) if dest.parent().is_some_and(|d| failed.contains(d)) => Err(
                    StoreError::Io(std::io::Error::other("could not sync the blob's folder")),
                ),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            })
            .collect()
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
        // A frame or a small bulk value: open, check and read it in one trip
        // to the blocking pool (each tokio::fs call is a trip of its own).
        if length <= WHOLE_READ_MAX {
            let path = key.path_under(&self.root);
            let bytes = tokio::task::spawn_blocking(move || read_range(&path, offset, length))
                .await
                .map_err(std::io::Error::other)??;
            return Ok(Box::pin(stream::once(async move { Ok(bytes) })));
        }
        let mut file = self.open_blob(key).await?;
        check_range(file.metadata().await?.len(), offset, length)?;
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
