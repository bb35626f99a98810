//! Real files made by others: every file of pydicom's bundled test data is
//! stored or rejected with a specific reason, and the recorded frame byte
//! ranges cut out exactly the frames pydicom extracts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::StatusCode;
use common::*;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn every_pydicom_file_is_stored_or_rejected_with_a_reason() {
    let app = TestApp::new().await;
    let manifest = corpus_manifest();
    assert!(
        manifest.len() > 100,
        "the corpus has {} files",
        manifest.len()
    );
    let mut stored = 0;
    let mut rejected = Vec::new();
    for entry in &manifest {
        let file = entry["file"].as_str().unwrap();
        let bytes = std::fs::read(corpus_dir().join(file)).unwrap();
        let (status, resp) = app.stow("/dicom-web/studies", multipart(&[bytes])).await;
        match status {
            StatusCode::OK => {
                assert_eq!(referenced(&resp).len(), 1, "{file}");
                if let Some(uid) = entry["sop_instance_uid"].as_str() {
                    assert_eq!(
                        referenced(&resp),
                        vec![uid.trim_end_matches('\0')],
                        "{file}"
                    );
                }
                stored += 1;
            }
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT => {
                let reasons = failure_reasons(&resp);
                assert_eq!(reasons.len(), 1, "{file}: {resp}");
                assert!(
                    [0xC000, 0xC122, 0xA900, 0x0111].contains(&reasons[0]),
                    "{file}: {resp}"
                );
                rejected.push((
                    file.to_owned(),
                    reasons[0],
                    resp["00081198"]["Value"][0]["00000902"]["Value"][0].clone(),
                ));
            }
            other => panic!("{file}: unexpected status {other}: {resp}"),
        }
    }
    for (file, reason, why) in &rejected {
        println!("rejected {file}: {reason:#06X} {why}");
    }
    println!("stored {stored}, rejected {}", rejected.len());

    // What pydicom itself reads as a well-formed Part-10 file with pixel
    // data it can cut into frames, we store; what is not DICOM, we reject.
    let rejected_files: Vec<&str> = rejected.iter().map(|(f, ..)| f.as_str()).collect();
    for entry in &manifest {
        let file = entry["file"].as_str().unwrap();
        if !entry["dicom"].as_bool().unwrap() {
            assert!(
                rejected_files.contains(&file),
                "{file} is not DICOM and must be rejected"
            );
        }
        let has_uids = ["study_uid", "series_uid", "sop_instance_uid"]
            .iter()
            .all(|k| entry[k].is_string());
        // SC_rgb_jpeg.dcm declares Explicit VR but is encoded Implicit VR:
        // pydicom guesses, dicom-rs (rightly) cannot parse it.
        let mislabeled = file == "files/SC_rgb_jpeg.dcm";
        if entry["frames"].is_array()
            && !entry["collides"].as_bool().unwrap()
            && has_uids
            && !mislabeled
        {
            assert!(
                !rejected_files.contains(&file),
                "{file} is a good image and must be stored"
            );
        }
    }
    assert!(stored >= 140, "stored {stored}");
    assert_eq!(app.instance_count().await, stored as i64);
    assert_eq!(app.open_journals().await, 0);
    assert_eq!(
        app.blob_files().len(),
        stored,
        "one blob per stored instance, none for rejected ones"
    );
}

/// The byte ranges recorded at ingest, read back from the stored blob, equal
/// the frames pydicom extracts — for every file where pydicom can.
#[tokio::test]
async fn frame_ranges_cut_exactly_the_frames_pydicom_extracts() {
    let app = TestApp::new().await;
    let mut checked = Vec::new();
    for entry in corpus_manifest() {
        let Some(expected) = entry["frames"].as_array() else {
            continue;
        };
        let has_uids = ["study_uid", "series_uid", "sop_instance_uid"]
            .iter()
            .all(|k| entry[k].is_string());
        if entry["collides"].as_bool().unwrap() || !has_uids || entry["source"] == "SC_rgb_jpeg.dcm"
        {
            continue;
        }
        let file = entry["file"].as_str().unwrap();
        let bytes = std::fs::read(corpus_dir().join(file)).unwrap();
        let (status, resp) = app.stow("/dicom-web/studies", multipart(&[&bytes])).await;
        assert_eq!(status, StatusCode::OK, "{file}: {resp}");
        let sop = referenced(&resp).remove(0);
        let row = entity::instance::Entity::find()
            .filter(entity::instance::Column::SopUid.eq(sop))
            .one(app.state.archive.db.conn())
            .await
            .unwrap()
            .unwrap();
        if entry["transfer_syntax"] == "1.2.840.10008.1.2.1.99" {
            assert!(
                row.frames.is_none(),
                "{file}: deflated data sets have no byte ranges"
            );
            continue;
        }
        let frames: Vec<Vec<(u64, u64)>> = serde_json::from_str(
            row.frames
                .as_deref()
                .unwrap_or_else(|| panic!("{file}: no frame index")),
        )
        .unwrap();
        assert_eq!(frames.len(), expected.len(), "{file}: frame count");
        for (i, (ranges, want)) in frames.iter().zip(expected).enumerate() {
            let mut hasher = Sha256::new();
            let mut len = 0;
            for (o, l) in ranges {
                hasher.update(&bytes[*o as usize..(*o + *l) as usize]);
                len += l;
            }
            assert_eq!(Value::from(len), want["length"], "{file} frame {i}: length");
            assert_eq!(
                hex::encode(hasher.finalize()),
                want["sha256"].as_str().unwrap(),
                "{file} frame {i}: bytes"
            );
        }
        checked.push((
            file.to_owned(),
            frames.len(),
            entry["transfer_syntax"].clone(),
        ));
    }
    for required in [
        "files/rtdose.dcm",
        "files/rtdose_rle.dcm",
        "files/SC_rgb_rle_2frame.dcm",
        "files/examples_ybr_color.dcm",
        "files/examples_jpeg2k.dcm",
    ] {
        assert!(
            checked.iter().any(|(f, ..)| f == required),
            "{required} was checked"
        );
    }
    let multi: Vec<_> = checked.iter().filter(|(_, n, _)| *n > 1).collect();
    println!("checked {} files, multi-frame: {multi:?}", checked.len());
}
