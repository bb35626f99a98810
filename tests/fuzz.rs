//! Property tests: random and mutated request bodies never make the STOW
//! parser panic or answer 500, and never leave an index row without its blob.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn post(app: &TestApp, content_type: &str, body: Vec<u8>) -> StatusCode {
    let req = Request::post("/dicom-web/studies")
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap();
    app.request(req).await.status()
}

/// Every instance row points at a blob that exists, and no spool file or
/// journal entry is left behind.
async fn consistent(app: &TestApp) {
    let blobs = app.blob_files().len() as i64;
    assert_eq!(app.instance_count().await, blobs);
    assert_eq!(app.open_journals().await, 0);
    assert_eq!(app.spool_files(), 0);
}

/// A mutation of a valid body: flips, truncation, insertion, duplication.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..512).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

fn apply(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if body.is_empty() {
            break;
        }
        let len = body.len();
        match m {
            Mutation::Flip(i, b) => body[i % len] ^= b | 1,
            Mutation::Truncate(i) => body.truncate(i % len),
            Mutation::Insert(i, v) => {
                let at = i % len;
                body.splice(at..at, v.iter().copied());
            }
            Mutation::Repeat(i, n) => {
                let at = i % len;
                let end = (at + n).min(len);
                let chunk = body[at..end].to_vec();
                body.splice(at..at, chunk);
            }
        }
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_bodies_never_panic_or_500(body in proptest::collection::vec(any::<u8>(), 0..4096), quoted in any::<bool>()) {
        let rt = runtime();
        rt.block_on(async {
            let app = TestApp::new().await;
            let ct = if quoted { format!("multipart/related; type=\"application/dicom\"; boundary=\"{BOUNDARY}\"") }
                     else { format!("multipart/related; boundary={BOUNDARY}") };
            // raw random bytes, and random bytes framed as a part
            let mut framed = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
            framed.extend_from_slice(&body);
            framed.extend_from_slice(format!("\r\n--{BOUNDARY}--").as_bytes());
            for b in [body.clone(), framed] {
                let status = post(&app, &ct, b).await;
                assert!(status.is_client_error() || status.is_success(), "{status}");
            }
            consistent(&app).await;
        });
    }

    #[test]
    fn mutated_stow_bodies_never_panic_or_500(mutations in proptest::collection::vec(mutation(), 1..6)) {
        let rt = runtime();
        rt.block_on(async {
            let app = TestApp::new().await;
            let good = multipart(&[
                Synth::new("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1").frames(2).bytes(),
                Synth::new("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.2").bytes(),
            ]);
            let body = apply(good, &mutations);
            let status = post(&app, &format!("multipart/related; boundary={BOUNDARY}"), body).await;
            assert!(matches!(status.as_u16(), 200 | 202 | 400 | 409), "{status}");
            consistent(&app).await;
        });
    }
}

/// The DICOM inspection alone, on mutated real files of the corpus: an error
/// or a result, never a panic.
#[test]
fn mutated_corpus_files_never_panic_the_inspector() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = corpus_manifest()
        .into_iter()
        .filter(|e| e["dicom"].as_bool().unwrap())
        .map(|e| std::fs::read(corpus_dir().join(e["file"].as_str().unwrap())).unwrap())
        .collect();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    });
    let path = dir.path().join("f.dcm");
    runner
        .run(
            &(0..files.len(), proptest::collection::vec(mutation(), 1..4)),
            |(i, mutations)| {
                std::fs::write(&path, apply(files[i].clone(), &mutations)).unwrap();
                let _ = cloudpacs::dicom::inspect_file(&path);
                Ok(())
            },
        )
        .unwrap();
}
