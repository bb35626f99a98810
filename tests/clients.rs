//! Independent clients against the real binary: Python dicomweb-client's
//! STOW and QIDO calls (the full Orthanc/OHIF suite lives in conformance/).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_dicomweb_client_stores_and_searches() {
    println!("{}", run_python_client("dwc_qido.py").await);
}
