//! Spooling: each received part is hashed as it arrives and kept in memory
//! while it is small and the spool's memory budget allows; otherwise it is
//! streamed to a local file. A request body is never held in memory beyond
//! that budget, and a small part costs no file of its own before the store
//! writes it once, to its place.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Parts up to this size may be kept in memory.
const PART_IN_MEMORY_MAX: u64 = 1 << 20;

/// Bytes of received parts kept in memory at once, over all requests, by
/// [`Spool::open`]; the parts beyond it go to files.
pub const MEMORY_BUDGET: usize = 8 << 20;

/// Where received parts are kept: a folder, and a memory budget.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    memory: Arc<Semaphore>,
}

/// What the index records of a part's bytes: `blake3:` and the hex BLAKE3
/// hash (several times cheaper than SHA-256 on large images). Instances
/// indexed before BLAKE3 hold the hex SHA-256 alone; [`SpoolFile::has_digest`]
/// compares with either.
const DIGEST_PREFIX: &str = "blake3:";

/// A fully received part, with its size and digest. A spool file is
/// removed when this is dropped, unless a store took it.
#[derive(Debug)]
pub struct SpoolFile {
    content: Content,
    pub size: u64,
    /// See [`DIGEST_PREFIX`].
    pub digest: String,
}

#[derive(Debug)]
enum Content {
    /// Held in memory, within the spool's budget (an empty part holds
    /// none of it).
    Memory {
        chunks: Vec<Bytes>,
        _budget: Option<OwnedSemaphorePermit>,
    },
    /// In a spool file; `None` once a store took it.
    File(Option<PathBuf>),
}

/// Where the bytes of a [`SpoolFile`] are, to read them on another thread.
#[derive(Debug, Clone)]
pub enum Source {
    Memory(ChunkReader),
    File(PathBuf),
}

/// Reads a part held in memory, as the chunks it arrived in (they are
/// never copied into one buffer).
#[derive(Debug, Clone)]
pub struct ChunkReader {
    chunks: Vec<Bytes>,
    /// Offset of each chunk in the part.
    starts: Vec<u64>,
    len: u64,
    pos: u64,
}

impl ChunkReader {
    fn new(chunks: Vec<Bytes>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut len = 0;
        for c in &chunks {
            starts.push(len);
            len += c.len() as u64;
        }
        ChunkReader {
            chunks,
            starts,
            len,
            pos: 0,
        }
    }
}

impl io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        // the last chunk starting at or before `pos`: not an empty one,
        // since the next chunk would start there too
        let i = self.starts.partition_point(|s| *s <= self.pos) - 1;
        let chunk = &self.chunks[i][(self.pos - self.starts[i]) as usize..];
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for ChunkReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let target = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// A part being received.
pub struct SpoolWriter {
    spool: Spool,
    state: State,
    hasher: blake3::Hasher,
    size: u64,
}

enum State {
    Memory {
        chunks: Vec<Bytes>,
        permit: Option<OwnedSemaphorePermit>,
    },
    File {
        path: PathBuf,
        out: BufWriter<tokio::fs::File>,
    },
    /// Finished, or failed half-way into a file.
    Done,
}

impl Spool {
    /// The folder `dir` (created), and [`MEMORY_BUDGET`].
    pub async fn open(dir: PathBuf) -> io::Result<Self> {
        Self::with_memory(dir, MEMORY_BUDGET).await
    }

    /// The folder `dir` (created), keeping up to `budget` bytes of parts
    /// in memory (0: every part goes to a file).
    pub async fn with_memory(dir: PathBuf, budget: usize) -> io::Result<Self> {
        tokio::fs::create_dir_all(&dir).await?;
        Ok(Spool {
            dir,
            memory: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start receiving a part.
    pub fn create(&self) -> SpoolWriter {
        SpoolWriter {
            spool: self.clone(),
            state: State::Memory {
                chunks: Vec::new(),
                permit: None,
            },
            hasher: blake3::Hasher::new(),
            size: 0,
        }
    }

    /// Remove spool files left by a crashed process (older than `age`).
    pub async fn sweep(&self, age: Duration) -> io::Result<usize> {
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
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        if let State::Memory { chunks, permit } = &mut self.state {
            let granted = (self.size <= PART_IN_MEMORY_MAX)
                .then(|| u32::try_from(chunk.len()).ok())
                .flatten()
                .and_then(|n| self.spool.memory.clone().try_acquire_many_owned(n).ok());
            if let Some(more) = granted {
                match permit {
                    Some(held) => held.merge(more),
                    None => *permit = Some(more),
                }
                chunks.push(chunk);
                return Ok(());
            }
            // too large, or the budget is spent: on to a file
            let received = std::mem::take(chunks);
            self.spill(received).await?;
        }
        match &mut self.state {
            State::File { out, .. } => out.write_all(&chunk).await,
            _ => Err(io::Error::other("the part was already finished")),
        }
    }

    /// Move to a spool file, starting with the chunks received so far.
    async fn spill(&mut self, received: Vec<Bytes>) -> io::Result<()> {
        let path = self
            .spool
            .dir
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        self.state = State::Done;
        let file = tokio::fs::File::create(&path).await?;
        // from here on, dropping the writer removes the file
        self.state = State::File {
            path,
            out: BufWriter::with_capacity(256 * 1024, file),
        };
        if let State::File { out, .. } = &mut self.state {
            for chunk in received {
                out.write_all(&chunk).await?;
            }
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The part is complete.
    pub async fn finish(mut self) -> io::Result<SpoolFile> {
        let content = match std::mem::replace(&mut self.state, State::Done) {
            State::Memory { chunks, permit } => Content::Memory {
                chunks,
                _budget: permit,
            },
            State::File { path, mut out } => {
                if let Err(e) = out.flush().await {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
                Content::File(Some(path))
            }
            State::Done => return Err(io::Error::other("the part was already finished")),
        };
        Ok(SpoolFile {
            content,
            size: self.size,
            digest: format!("{DIGEST_PREFIX}{}", self.hasher.finalize().to_hex()),
        })
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // an abandoned (failed) part
        if let State::File { path, .. } = &self.state {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl SpoolFile {
    /// The bytes, as they arrived, when the part is held in memory.
    pub fn chunks(&self) -> Option<&[Bytes]> {
        match &self.content {
            Content::Memory { chunks, .. } => Some(chunks),
            Content::File(_) => None,
        }
    }

    /// The spool file, when the part is in one.
    pub fn path(&self) -> Option<&Path> {
        match &self.content {
            Content::File(path) => path.as_deref(),
            Content::Memory { .. } => None,
        }
    }

    /// Where the bytes are, for a reader on another thread.
    pub fn source(&self) -> Source {
        match &self.content {
            Content::Memory { chunks, .. } => Source::Memory(ChunkReader::new(chunks.clone())),
            Content::File(path) => Source::File(path.clone().unwrap_or_default()),
        }
    }

    /// Whether `stored`, a digest from the index, is of these bytes. A
    /// SHA-256 digest (from before BLAKE3) is checked by hashing the part
    /// again, on the blocking pool: rare, a retry of an instance indexed
    /// then.
    pub async fn has_digest(&self, stored: &str) -> bool {
        if stored.starts_with(DIGEST_PREFIX) {
            return stored == self.digest;
        }
        let source = self.source();
        let sha256 = tokio::task::spawn_blocking(move || -> io::Result<String> {
            use io::Read;
            let mut reader: Box<dyn Read> = match source {
                Source::Memory(chunks) => Box::new(chunks),
                Source::File(path) => Box::new(std::fs::File::open(path)?),
            };
            let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            let mut buf = vec![0; 256 * 1024];
            loop {
                match reader.read(&mut buf)? {
                    0 => break,
                    n => hasher.update(&buf[..n]),
                }
            }
            Ok(hex::encode(hasher.finish()))
        })
        .await;
        matches!(sha256, Ok(Ok(h)) if h == stored)
    }

    /// Hand the spool file over to a store, which now owns it (`None` for
    /// a part held in memory).
    pub fn take_path(&mut self) -> Option<PathBuf> {
        match &mut self.content {
            Content::File(path) => path.take(),
            Content::Memory { .. } => None,
        }
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Some(p) = self.take_path() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read, Seek, SeekFrom};

    use super::*;

    proptest::proptest! {
        /// Reads and seeks over the chunks see what they would see over
        /// the whole part in one buffer.
        #[test]
        fn chunk_reader_reads_like_one_buffer(
            chunks in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..40), 0..8),
            ops in proptest::collection::vec((0u64..200, 0usize..50), 1..12),
        ) {
            let whole: Vec<u8> = chunks.concat();
            let mut reader = ChunkReader::new(chunks.into_iter().map(Bytes::from).collect());
            let mut cursor = Cursor::new(&whole);
            for (at, n) in ops {
                let (a, b) = (reader.seek(SeekFrom::Start(at)), cursor.seek(SeekFrom::Start(at)));
                proptest::prop_assert_eq!(a.ok(), b.ok());
                let (mut x, mut y) = (Vec::new(), Vec::new());
                reader.by_ref().take(n as u64).read_to_end(&mut x).ok();
                cursor.by_ref().take(n as u64).read_to_end(&mut y).ok();
                proptest::prop_assert_eq!(&x, &y);
                proptest::prop_assert_eq!(
                    reader.seek(SeekFrom::Current(-3)).ok(),
                    cursor.seek(SeekFrom::Current(-3)).ok()
                );
                proptest::prop_assert_eq!(
                    reader.stream_position().ok(),
                    cursor.stream_position().ok()
                );
            }
            proptest::prop_assert_eq!(reader.seek(SeekFrom::End(-1)).ok(), cursor.seek(SeekFrom::End(-1)).ok());
        }
    }
}
