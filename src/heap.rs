//! The process heap: jemalloc, for every allocation in the process (Rust's,
//! and SQLite's: its `malloc` is the one this crate links).
//!
//! Measured with the benchmark (`bench/ANALYSIS.md`), same machine, same
//! run conditions, 100,000 studies loaded by STOW: with glibc's malloc the
//! server's CPU per small instance grew from 0.54 ms at 1,000 studies to
//! 0.79 ms at 100,000, and a search there cost 3.6 ms of CPU: the
//! heap fragments under ingest (parts of 10 KB to 1 MiB, metadata, SQL,
//! page-cache pages), and glibc's `malloc` then spends its time walking
//! and consolidating free chunks (30 % of the server's CPU in `perf`).
//! With jemalloc (the options below): 0.48 → 0.59 ms, 2.3 ms per search,
//! and the 2 GB STOW after that load peaked at 99 instead of 110 MiB.
//!
//! The configuration below is jemalloc's built-in default for this process
//! (`MALLOC_CONF` in the environment still overrides it): two arenas (a
//! core each; more kept memory that one thread freed away from the
//! others); thread caches only for objects up to 4 KiB (with the default
//! 32 KiB, the blocking pool's threads — 150 during a load — each kept
//! freed buffers: 101 instead of 76 MiB before a 2 GB STOW); and freed
//! pages given back to the system by a background thread after one second
//! instead of ten (at once, `dirty_decay_ms:0`, cost 3.4 instead of
//! 1.6 ms of CPU per clinical instance), so the memory of a finished
//! ingest does not stay with the process.

#[global_allocator]
static HEAP: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's `malloc_conf`: a C string it reads at start-up.
#[repr(transparent)]
pub struct MallocConf(*const u8);

// SAFETY: a pointer to a static, immutable C string.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static malloc_conf: MallocConf = MallocConf(
    c"narenas:2,tcache_max:4096,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
        .to_bytes_with_nul()
        .as_ptr(),
);
