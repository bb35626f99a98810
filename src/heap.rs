//! The process heap (glibc malloc): fewer arenas, and freed memory given
//! back to the system once ingest goes quiet. Ingest allocates and frees a
//! lot (parts of 10 KB to 1 MiB, metadata, SQL), and glibc keeps the pages
//! of freed chunks: after the benchmark's mixed 512 KB / 10 KB loads the
//! SQLite process sat at 103 MiB, and a 2 GB STOW started from there; with
//! the trim it starts from 67 MiB.
//!
//! The heap is process-wide, and so is this module's state.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// STOW requests in progress.
static INGESTING: AtomicUsize = AtomicUsize::new(0);
/// Whether a STOW ran since the last trim.
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
/// now, give the heap's free pages back to the system (at most once a
/// second, never under load).
pub async fn trim_when_idle() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if INGESTING.load(Ordering::Acquire) == 0 && INGESTED.swap(false, Ordering::AcqRel) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Return the free pages of every arena to the system.
#[allow(unsafe_code)]
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes each arena's lock and only releases free
    // memory; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc gives each thread that allocates its own malloc arena (up to 8 per
/// core), and memory freed in one arena is not reused by the others: after
/// a long ingest the process kept ~20 MiB more than it used. Two arenas,
/// unless `MALLOC_ARENA_MAX` says otherwise. Call before any thread starts.
#[allow(unsafe_code)]
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; no thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
