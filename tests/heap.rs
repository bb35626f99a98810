//! The server's heap is jemalloc with the configuration of `src/heap.rs`
//! (the benchmark measures what that buys; this checks that it is in
//! effect and that jemalloc accepts every option).
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_process_runs_on_jemalloc_with_its_configuration() {
    // stats_print: jemalloc prints its options at exit
    let out = Command::new(env!("CARGO_BIN_EXE_cloudpacs"))
        .arg("--version")
        .env("MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stats.contains("jemalloc statistics"), "{stats}");
    assert!(!stats.contains("Invalid conf"), "{stats}");
    for option in [
        "opt.narenas: 2",
        "opt.tcache_max: 4096",
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(stats.contains(option), "{option} not in:\n{stats}");
    }
}
