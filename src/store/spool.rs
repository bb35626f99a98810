//! Spool files: each received part is streamed to a local file while it is
//! hashed, so a request body is never held in memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

/// The folder spool files are written to.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// A fully received part on local disk, with its size and SHA-256. The file
/// is removed when this is dropped, unless a store took it.
#[derive(Debug)]
pub struct SpoolFile {
    path: Option<PathBuf>,
    pub size: u64,
    pub sha256: String,
}

/// A spool file being written.
pub struct SpoolWriter {
    path: PathBuf,
    out: BufWriter<tokio::fs::File>,
    hasher: Sha256,
    size: u64,
}

impl Spool {
    pub async fn open(dir: PathBuf) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(&dir).await?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub async fn create(&self) -> std::io::Result<SpoolWriter> {
        let path = self
            .dir
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::File::create(&path).await?;
        Ok(SpoolWriter {
            path,
            out: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Remove spool files left by a crashed process (older than `age`).
    pub async fn sweep(&self, age: Duration) -> std::io::Result<usize> {
        let mut removed = 0;
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        let now = SystemTime::now();
        while let Some(entry) = entries.next_entry().await? {
            let old = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() >= age)
                .unwrap_or(false);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl SpoolWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.out.write_all(chunk).await
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flush and close; the part is complete.
    pub async fn finish(mut self) -> std::io::Result<SpoolFile> {
        self.out.flush().await?;
        let file = SpoolFile {
            path: Some(self.path.clone()),
            size: self.size,
            sha256: hex::encode(self.hasher.clone().finalize()),
        };
        self.path = PathBuf::new();
        Ok(file)
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // an abandoned (failed) part
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Hand the file over to a store, which now owns it.
    pub fn take_path(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
