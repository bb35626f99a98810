//! Independent clients against the real binary: Python dicomweb-client's
//! STOW and QIDO calls (the full Orthanc/OHIF suite lives in conformance/).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_dicomweb_client_stores_and_searches() {
    let python = std::env::var("CLOUDPACS_TEST_PYTHON")
        .expect("CLOUDPACS_TEST_PYTHON is not set: run `eval \"$(tests/setup-python.sh)\"` first");
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database().await;
    let key = cli_key(dir.path(), db.as_deref(), "default", "writer");
    let addr = free_addr();
    let mut server = start_server(dir.path(), db.as_deref(), addr);
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/dwc_qido.py"
        ))
        .arg(format!("http://{addr}/dicom-web"))
        .arg(corpus_dir())
        .arg(&key)
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dicomweb-client failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}
