//! Two `cloudpacs serve` replicas on one PostgreSQL database and one S3
//! bucket: what one stores the other finds, and concurrent STOWs of the same
//! study and of the same instances to both end consistent — one row per
//! instance, one object per row, nothing else in the bucket, counts right;
//! a replica killed mid-STOW loses nothing it acknowledged.
//! Runs when `TEST_DATABASE_URL` is set (the PostgreSQL pass of
//! `tests/run-all.sh`) and an S3 test server is configured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::s3::{S3Test, unique_prefix};
use common::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One HTTP/1.0 exchange (the answer is delimited by the connection's end,
/// never chunked): status and body.
fn http(addr: SocketAddr, key: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    try_http(addr, key, method, path, body).expect("an HTTP answer")
}

/// [`http`], or `None` when the connection fails or dies.
fn try_http(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}\r\n\
         Accept: application/dicom+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = String::from_utf8_lossy(out.get(9..12)?).parse().ok()?;
    Some((status, out[split + 4..].to_vec()))
}

fn json(addr: SocketAddr, key: &str, path: &str) -> Value {
    let (status, body) = http(addr, key, "GET", path, b"");
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

struct Replicas {
    a: SocketAddr,
    b: SocketAddr,
    children: Vec<Child>,
    db_url: String,
    s3: S3Test,
    prefix: String,
    storage: String,
    dirs: (tempfile::TempDir, tempfile::TempDir),
    /// An admin API key of the hospital `default`.
    key: String,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn replicas() -> Option<Replicas> {
    if std::env::var("TEST_DATABASE_URL").is_err() {
        eprintln!("TEST_DATABASE_URL is not set: the replica test runs on PostgreSQL only");
        return None;
    }
    let s3 = S3Test::from_env()?;
    let db_url = fresh_database().await.unwrap();
    let prefix = unique_prefix();
    let storage = format!("s3://{}/{prefix}", s3.bucket);
    let args = [
        "--storage",
        storage.as_str(),
        "--s3-endpoint",
        s3.endpoint.as_str(),
    ];
    let envs = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
        ("AWS_REGION", s3.region.as_str()),
    ];
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (free_addr(), free_addr());
    let children = vec![
        start_server_with(dirs.0.path(), Some(&db_url), a, &args, &envs),
        start_server_with(dirs.1.path(), Some(&db_url), b, &args, &envs),
    ];
    let key = cli_key(dirs.0.path(), Some(&db_url), "default", "admin");
    Some(Replicas {
        key,
        a,
        b,
        children,
        db_url,
        s3,
        prefix,
        storage,
        dirs,
    })
}

impl Replicas {
    async fn rows(&self, sql: &str) -> Vec<String> {
        let db = Database::connect(self.db_url.clone()).await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap();
        let out = rows
            .iter()
            .map(|r| r.try_get_by_index::<String>(0).unwrap())
            .collect();
        db.close().await.unwrap();
        out
    }

    /// Blob keys of the index, sorted, as object keys.
    async fn indexed_objects(&self) -> Vec<String> {
        self.rows("SELECT blob_key FROM instances ORDER BY blob_key")
            .await
            .into_iter()
            .map(|k| format!("{}{k}", self.prefix))
            .collect()
    }

    async fn objects(&self) -> Vec<String> {
        self.s3.list(&self.s3.bucket, &self.prefix).await
    }
}

fn study_attr(study: &Value, tag: &str) -> u64 {
    study[tag]["Value"][0].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_stores_the_other_finds() {
    let Some(r) = replicas().await else { return };
    let study = "1.2.3.6001"; // short UIDs: see store_contract.rs `s3_long_keys`
    let parts: Vec<Vec<u8>> = (1..=3)
        .map(|i| Synth::new(study, &format!("{study}.1"), &format!("{study}.1.{i}")).bytes())
        .collect();
    let (status, body) = http(
        r.a,
        &r.key,
        "POST",
        "/dicom-web/studies",
        &multipart(&parts),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let found = json(
        r.b,
        &r.key,
        &format!("/dicom-web/studies?StudyInstanceUID={study}"),
    );
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(study_attr(&found[0], "00201208"), 3);
    let instances = json(
        r.b,
        &r.key,
        &format!("/dicom-web/studies/{study}/instances"),
    );
    assert_eq!(instances.as_array().unwrap().len(), 3);

    // The objects are the bytes sent, one per row.
    let objects = r.objects().await;
    assert_eq!(objects, r.indexed_objects().await);
    let mut sent: Vec<_> = parts.iter().map(Sha256::digest).collect();
    let mut stored = Vec::new();
    for k in &objects {
        stored.push(Sha256::digest(r.s3.read(&r.s3.bucket, k).await));
    }
    sent.sort();
    stored.sort();
    assert_eq!(sent, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stows_to_both_replicas_end_consistent() {
    let Some(r) = replicas().await else { return };
    for round in 0..3 {
        let study = format!("1.2.3.6002.{round}");
        let series = format!("{study}.1");
        let synth = |sop: &str, fill: u8| Synth::new(&study, &series, sop).fill(fill).bytes();
        // Both send the same 8 instances (identical bytes), 3 of their own,
        // and one SOP Instance UID with different bytes.
        let shared: Vec<Vec<u8>> = (1..=8)
            .map(|i| synth(&format!("{series}.{i}"), 1))
            .collect();
        let body_for = |own: u32, fill: u8| {
            let mut parts = shared.clone();
            parts.extend((1..=3).map(|i| synth(&format!("{series}.{own}{i}"), 2)));
            parts.push(synth(&format!("{series}.99"), fill));
            multipart(&parts)
        };
        let (body_a, body_b) = (body_for(1, 10), body_for(2, 20));
        let (a, b, ka, kb) = (r.a, r.b, r.key.clone(), r.key.clone());
        let ta = std::thread::spawn(move || http(a, &ka, "POST", "/dicom-web/studies", &body_a));
        let tb = std::thread::spawn(move || http(b, &kb, "POST", "/dicom-web/studies", &body_b));
        let answers = [ta.join().unwrap(), tb.join().unwrap()];

        // The shared and own instances are stored by both; exactly one of
        // the two different objects under `.99` wins, the other is 0x0111.
        let mut conflicts = 0;
        for (status, body) in &answers {
            let resp: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(referenced(&resp).len() + failure_reasons(&resp).len(), 12);
            assert!(
                failure_reasons(&resp).iter().all(|&f| f == 0x0111),
                "{resp}"
            );
            conflicts += failure_reasons(&resp).len();
            assert!(*status == 200 || *status == 202, "{status}");
        }
        assert_eq!(conflicts, 1, "round {round}");

        // One row per instance; counts right as seen from either replica.
        let expected = 8 + 3 + 3 + 1;
        for addr in [r.a, r.b] {
            let found = json(
                addr,
                &r.key,
                &format!("/dicom-web/studies?StudyInstanceUID={study}"),
            );
            assert_eq!(study_attr(&found[0], "00201208"), expected, "round {round}");
            assert_eq!(study_attr(&found[0], "00201206"), 1);
            let series = json(addr, &r.key, &format!("/dicom-web/studies/{study}/series"));
            assert_eq!(study_attr(&series[0], "00201209"), expected);
            let instances = json(
                addr,
                &r.key,
                &format!("/dicom-web/studies/{study}/instances?limit=1000"),
            );
            assert_eq!(instances.as_array().unwrap().len() as u64, expected);
        }
    }
    let rows = r.rows("SELECT CAST(COUNT(*) AS TEXT) FROM instances").await;
    assert_eq!(rows, vec!["45".to_owned()]);
    let dup = r
        .rows("SELECT sop_uid FROM instances GROUP BY hospital_id, sop_uid HAVING COUNT(*) > 1")
        .await;
    assert!(dup.is_empty(), "{dup:?}");
    // No orphan: the bucket holds exactly the indexed objects, and no blob
    // is left in the journal of uploads in progress.
    assert_eq!(r.objects().await, r.indexed_objects().await);
    assert!(
        r.rows("SELECT blob_key FROM pending_blobs")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stow_loses_nothing_acknowledged() {
    let Some(mut r) = replicas().await else {
        return;
    };
    let study = "1.2.3.6003";
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    // STOWs to A, one after the other, each a few instances.
    let sender = {
        let (a, key, acked) = (r.a, r.key.clone(), acked.clone());
        std::thread::spawn(move || {
            for n in 0..400 {
                let sops: Vec<String> = (0..4).map(|i| format!("{study}.1.{n}{i}")).collect();
                let parts: Vec<Vec<u8>> = sops
                    .iter()
                    .map(|sop| {
                        Synth::new(study, &format!("{study}.1"), sop)
                            .frames(8)
                            .bytes()
                    })
                    .collect();
                match try_http(a, &key, "POST", "/dicom-web/studies", &multipart(&parts)) {
                    Some((200, _)) => acked.lock().unwrap().extend(sops),
                    _ => return,
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "no STOW acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    }
    r.children[0].kill().unwrap(); // SIGKILL, in the middle of a STOW
    r.children[0].wait().unwrap();
    sender.join().unwrap();
    let acked = acked.lock().unwrap().clone();

    // B serves every acknowledged instance; every row has its object.
    let found = json(
        r.b,
        &r.key,
        &format!("/dicom-web/studies/{study}/instances?limit=1000&includefield=00080018"),
    );
    let found: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["00080018"]["Value"][0].as_str().unwrap())
        .collect();
    for sop in &acked {
        assert!(found.contains(&sop.as_str()), "{sop} was acknowledged");
    }
    let objects = r.objects().await;
    let indexed = r.indexed_objects().await;
    assert!(
        indexed.iter().all(|k| objects.contains(k)),
        "a row without its object"
    );

    // A restarts (orphans older than 0 s swept at start): the bucket holds
    // exactly the indexed objects again.
    let args = [
        "--storage",
        r.storage.as_str(),
        "--s3-endpoint",
        r.s3.endpoint.as_str(),
    ];
    let envs = [
        ("AWS_ACCESS_KEY_ID", r.s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", r.s3.secret_key.as_str()),
        ("AWS_REGION", r.s3.region.as_str()),
    ];
    let restarted = start_server_with(r.dirs.0.path(), Some(&r.db_url), r.a, &args, &envs);
    r.children[0] = restarted;
    assert_eq!(r.objects().await, r.indexed_objects().await);
    assert!(
        r.rows("SELECT blob_key FROM pending_blobs")
            .await
            .is_empty()
    );
}

/// `--db-statement-timeout-secs` reaches PostgreSQL: a statement running
/// longer is cancelled by the server, and the pool stays usable.
#[tokio::test]
async fn statement_timeout_cancels_long_statements() {
    let Some(url) = fresh_database().await else {
        eprintln!("skipped: TEST_DATABASE_URL is not set");
        return;
    };
    let pool = cloudpacs::db::PoolOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Some(Duration::from_millis(500)),
    };
    let db = cloudpacs::db::Db::connect(&url, &pool).await.unwrap();
    let conn = db.conn();
    let backend = conn.get_database_backend();
    let err = conn
        .execute_raw(Statement::from_string(backend, "SELECT pg_sleep(5)"))
        .await
        .expect_err("cancelled");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    let row = conn
        .query_one_raw(Statement::from_string(backend, "SHOW statement_timeout"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get_by_index::<String>(0).unwrap(), "500ms");
}
