//! kill -9 at any moment: no acknowledged instance is lost, nothing is
//! half-visible, and the next start sweeps what the crash left behind.
//! Runs the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sea_orm::{ConnectionTrait, Database, Statement};

/// POST one STOW body; the status code, or None when the connection died.
fn stow(addr: SocketAddr, key: &str, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    let head = format!(
        "POST /dicom-web/studies HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A large upload sent slowly, so the kill often lands inside it.
fn slow_stow(addr: SocketAddr, key: &str, body: Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let head = format!(
        "POST /dicom-web/studies HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: multipart/related; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    for chunk in body.chunks(64 * 1024) {
        if s.write_all(chunk).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database().await;
    let key = cli_key(dir.path(), db_url.as_deref(), "default", "writer");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut n = 0u32;
    for (round, delay_ms) in [40u64, 130, 260, 420].into_iter().enumerate() {
        let addr = free_addr();
        let mut server = start_server(dir.path(), db_url.as_deref(), addr);
        let big = multipart(&[Synth::new(
            "1.2.826.0.1.3680043.8.498.77",
            "1.2.826.0.1.3680043.8.498.77.1",
            &format!("1.2.826.0.1.3680043.8.498.77.1.{round}"),
        )
        .frames(400)
        .bytes()]);
        let slow_key = key.clone();
        let slow = std::thread::spawn(move || slow_stow(addr, &slow_key, big));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (acked, stop, key) = (acked.clone(), stop.clone(), key.clone());
            let start_n = n;
            std::thread::spawn(move || {
                let mut i = start_n;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let sop = format!("1.2.826.0.1.3680043.8.498.5.1.{i}");
                    let body = multipart(&[Synth::new(
                        "1.2.826.0.1.3680043.8.498.5",
                        "1.2.826.0.1.3680043.8.498.5.1",
                        &sop,
                    )
                    .frames(20)
                    .bytes()]);
                    match stow(addr, &key, &body) {
                        Some(200) => acked.lock().unwrap().push(sop),
                        Some(other) => panic!("unexpected status {other}"),
                        None => break,
                    }
                }
                i
            })
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        n = writer.join().unwrap();
        slow.join().unwrap();
    }
    assert!(
        !acked.lock().unwrap().is_empty(),
        "some uploads were acknowledged before the kills"
    );

    // Restart: the start-up sweep removes what the crashes left.
    let addr = free_addr();
    let mut server = start_server(dir.path(), db_url.as_deref(), addr);
    let url = db_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=ro",
            dir.path().join("index.sqlite").display()
        )
    });
    let db = Database::connect(url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT sop_uid, blob_key FROM instances",
        ))
        .await
        .unwrap();
    let stored: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "sop_uid").unwrap(),
                r.try_get("", "blob_key").unwrap(),
            )
        })
        .collect();
    for sop in acked.lock().unwrap().iter() {
        assert!(
            stored.iter().any(|(s, _)| s == sop),
            "acknowledged {sop} survived the crash"
        );
    }
    for (sop, key) in &stored {
        assert!(
            dir.path().join("blobs").join(key).is_file(),
            "the blob of indexed {sop} exists"
        );
    }
    let pending = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM pending_blobs",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(pending, 0, "the journal is empty after the sweep");
    let journals = std::fs::read_dir(dir.path().join("blobs/.journal"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(journals, 0, "so is the blob folder's");
    let mut files = 0;
    let mut stack = vec![dir.path().join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                if e.file_name() != ".journal" {
                    stack.push(e.path());
                }
            } else {
                files += 1;
            }
        }
    }
    assert_eq!(files, stored.len(), "no orphan blob");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// SIGTERM lets an upload in flight finish (and be acknowledged), then the
/// process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database().await;
    let key = cli_key(dir.path(), db_url.as_deref(), "default", "writer");
    let addr = free_addr();
    let mut server = start_server(dir.path(), db_url.as_deref(), addr);
    let body = multipart(&[Synth::new(
        "1.2.826.0.1.3680043.8.498.88",
        "1.2.826.0.1.3680043.8.498.88.1",
        "1.2.826.0.1.3680043.8.498.88.1.1",
    )
    .frames(300)
    .bytes()]);
    let upload = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /dicom-web/studies HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: multipart/related; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        for chunk in body.chunks(4096) {
            s.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    std::thread::sleep(Duration::from_millis(100));
    let killed = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let response = upload.join().unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "the upload in flight was acknowledged: {response}"
    );
    let status = server.wait().unwrap();
    assert!(status.success(), "clean exit: {status}");
}
