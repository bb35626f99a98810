//! STOW-RS: what real clients send, every bad input, duplicates, atomicity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloudpacs::config::DuplicatePolicy;
use common::*;
use serde_json::Value;

const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";
const SERIES: &str = "1.2.826.0.1.3680043.8.498.1.1";

fn synth(n: u32) -> Synth {
    Synth::new(STUDY, SERIES, &format!("1.2.826.0.1.3680043.8.498.1.1.{n}"))
}

async fn post_raw(app: &TestApp, content_type: &str, body: Body) -> (StatusCode, Value) {
    let req = Request::post("/dicom-web/studies")
        .header("content-type", content_type)
        .header("host", "127.0.0.1:8080")
        .body(body)
        .unwrap();
    let resp = app.request(req).await;
    let status = resp.status();
    (status, json_body(resp).await)
}

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.instance_count().await, 0, "no index row");
    assert_eq!(
        app.scalar("SELECT COUNT(*) AS n FROM studies").await,
        0,
        "no study row"
    );
    assert!(app.blob_files().is_empty(), "no blob");
    assert_eq!(app.open_journals().await, 0, "no journal entry left");
}

#[tokio::test]
async fn stores_an_instance_on_disk_and_in_the_index() {
    let app = TestApp::new().await;
    let file = synth(1).frames(3).bytes();
    let (status, resp) = app.stow("/dicom-web/studies", multipart(&[&file])).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(referenced(&resp), vec!["1.2.826.0.1.3680043.8.498.1.1.1"]);
    assert!(
        resp.get("00081198").is_none(),
        "no FailedSOPSequence on success"
    );
    let item = &resp["00081199"]["Value"][0];
    assert_eq!(item["00081150"]["Value"][0], CT_IMAGE_STORAGE);
    assert_eq!(
        item["00081190"]["Value"][0],
        format!(
            "http://127.0.0.1:8080/dicom-web/studies/{STUDY}/series/{SERIES}/instances/1.2.826.0.1.3680043.8.498.1.1.1"
        )
    );
    assert_eq!(
        resp["00081190"]["Value"][0],
        format!("http://127.0.0.1:8080/dicom-web/studies/{STUDY}")
    );

    // the stored bytes are the sent bytes
    let blobs = app.blob_files();
    assert_eq!(blobs.len(), 1);
    assert_eq!(std::fs::read(&blobs[0]).unwrap(), file);
    assert_eq!(app.instance_count().await, 1);
    assert_eq!(app.spool_files(), 0, "spool cleaned");

    // index row: counts, frames, layout, metadata
    let db = app.state.archive.db.conn();
    use sea_orm::EntityTrait;
    let inst = entity::instance::Entity::find()
        .one(db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inst.number_of_frames, 3);
    assert_eq!(inst.size_bytes as usize, file.len());
    assert_eq!(inst.transfer_syntax, EXPLICIT_VR_LE);
    let frames: Vec<Vec<(u64, u64)>> =
        serde_json::from_str(inst.frames.as_deref().unwrap()).unwrap();
    assert_eq!(frames.len(), 3);
    for (i, f) in frames.iter().enumerate() {
        let (o, l) = f[0];
        assert_eq!(l, 128);
        assert!(
            file[o as usize..(o + l) as usize]
                .iter()
                .all(|b| *b == 7 + i as u8),
            "frame {i} cut exactly"
        );
    }
    let meta: Value = serde_json::from_str(&inst.metadata).unwrap();
    assert_eq!(meta["00100010"]["Value"][0]["Alphabetic"], "Doe^Jane");
    assert_eq!(meta["00200013"]["Value"][0], 1, "IS as a number");
    assert_eq!(
        meta["7FE00010"]["BulkDataURI"], "7FE00010",
        "no pixel data inline"
    );
    let study = entity::study::Entity::find()
        .one(db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((study.number_of_series, study.number_of_instances), (1, 1));
    assert_eq!(study.modalities_in_study, "CT");
    assert_eq!(study.patient_name_norm.as_deref(), Some("DOE^JANE"));
}

#[tokio::test]
async fn counts_and_modalities_follow_the_instances() {
    let app = TestApp::new().await;
    let mr_series = "1.2.826.0.1.3680043.8.498.1.2";
    let parts = vec![
        synth(1).bytes(),
        synth(2).bytes(),
        Synth::new(STUDY, mr_series, "1.2.826.0.1.3680043.8.498.1.2.1")
            .modality("MR")
            .bytes(),
    ];
    let (status, _) = app.stow("/dicom-web/studies", multipart(&parts)).await;
    assert_eq!(status, StatusCode::OK);
    use sea_orm::EntityTrait;
    let study = entity::study::Entity::find()
        .one(app.state.archive.db.conn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((study.number_of_series, study.number_of_instances), (2, 3));
    assert_eq!(study.modalities_in_study, "CT\\MR");
    assert_eq!(
        study.size_bytes as usize,
        parts.iter().map(Vec::len).sum::<usize>()
    );
}

/// One request across several studies and series, some of them stored
/// already (indexed with a few multi-row statements): every instance lands
/// in its own series and study, and every count and size is exact.
#[tokio::test]
async fn one_request_across_stored_and_new_studies_counts_each() {
    let app = TestApp::new().await;
    let uid = |s: &str| format!("1.2.826.0.1.3680043.8.498.{s}");
    let inst =
        |study: &str, series: &str, sop: &str| Synth::new(&uid(study), &uid(series), &uid(sop));
    let first = inst("1", "1.1", "1.1.1").bytes();
    let (status, _) = app
        .stow(
            "/dicom-web/studies",
            multipart(std::slice::from_ref(&first)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let parts = vec![
        inst("3", "3.1", "3.1.1").bytes(),
        inst("1", "1.1", "1.1.2").bytes(),
        inst("2", "2.1", "2.1.1").bytes(),
        inst("1", "1.2", "1.2.1").modality("MR").bytes(),
        inst("2", "2.1", "2.1.2").bytes(),
        inst("2", "2.2", "2.2.1").modality("MR").bytes(),
        inst("2", "2.1", "2.1.3").bytes(),
    ];
    let (status, resp) = app.stow("/dicom-web/studies", multipart(&parts)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(referenced(&resp).len(), 7);

    use sea_orm::{EntityTrait, QueryOrder};
    let studies = entity::study::Entity::find()
        .order_by_asc(entity::study::Column::StudyUid)
        .all(app.state.archive.db.conn())
        .await
        .unwrap();
    let got: Vec<_> = studies
        .iter()
        .map(|s| {
            (
                s.study_uid.clone(),
                s.number_of_series,
                s.number_of_instances,
                s.modalities_in_study.clone(),
                s.size_bytes as usize,
            )
        })
        .collect();
    let size = |v: &[&Vec<u8>]| v.iter().map(|p| p.len()).sum::<usize>();
    assert_eq!(
        got,
        vec![
            (
                uid("1"),
                2,
                3,
                "CT\\MR".to_owned(),
                size(&[&first, &parts[1], &parts[3]])
            ),
            (
                uid("2"),
                2,
                4,
                "CT\\MR".to_owned(),
                size(&[&parts[2], &parts[4], &parts[5], &parts[6]])
            ),
            (uid("3"), 1, 1, "CT".to_owned(), size(&[&parts[0]])),
        ]
    );
    let series = entity::series::Entity::find()
        .order_by_asc(entity::series::Column::SeriesUid)
        .all(app.state.archive.db.conn())
        .await
        .unwrap();
    let got: Vec<_> = series
        .iter()
        .map(|s| (s.series_uid.clone(), s.number_of_instances))
        .collect();
    assert_eq!(
        got,
        vec![
            (uid("1.1"), 2),
            (uid("1.2"), 1),
            (uid("2.1"), 3),
            (uid("2.2"), 1),
            (uid("3.1"), 1),
        ]
    );
    let req = Request::get(format!(
        "/dicom-web/studies/{}/series/{}/instances",
        uid("2"),
        uid("2.1")
    ))
    .body(Body::empty())
    .unwrap();
    let listed = json_body(app.request(req).await).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    assert_eq!(app.blob_files().len(), 8);
}

#[tokio::test]
async fn accepts_what_real_clients_send() {
    let app = TestApp::new().await;
    let a = synth(1).bytes();
    let b = synth(2).bytes();
    let mut n = 0;
    let mut check = |status: StatusCode, resp: &Value, label: &str| {
        assert_eq!(status, StatusCode::OK, "{label}: {resp}");
        assert_eq!(referenced(resp).len(), 2, "{label}");
        n += 1;
    };
    // Python dicomweb-client / OHIF: quoted boundary, leading CRLF, no final CRLF.
    let mut body = Vec::new();
    for p in [&a, &b] {
        body.extend_from_slice(
            format!("\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(p);
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--").as_bytes());
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary=\"{BOUNDARY}\"");
    let (s, r) = post_raw(&app, &ct, Body::from(body)).await;
    check(s, &r, "python");

    // Orthanc: unquoted boundary, per-part Content-Length, chunked, no trailing CRLF.
    let mut body = Vec::new();
    for p in [&a, &b] {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Type: application/dicom\r\nContent-Length: {}\r\n\r\n",
                p.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--").as_bytes());
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(997).map(|c| Ok(c.to_vec())).collect();
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");
    let (s, r) = post_raw(
        &app,
        &ct,
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    check(s, &r, "orthanc chunked");

    // curl examples: unquoted type before boundary; NUL junk after the closing delimiter (OHIF JS).
    let mut body = multipart(&[a.clone(), b.clone()]);
    body.extend_from_slice(&[0u8; 300]);
    let (s, r) = post_raw(
        &app,
        &format!("multipart/related; boundary={BOUNDARY}; type=application/dicom"),
        Body::from(body),
    )
    .await;
    check(s, &r, "curl + junk");

    // No `type` parameter, parts with lower-case headers only.
    let mut body = Vec::new();
    for p in [&a, &b] {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\ncontent-type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--").as_bytes());
    let (s, r) = post_raw(
        &app,
        &format!("multipart/related;boundary={BOUNDARY}"),
        Body::from(body),
    )
    .await;
    check(s, &r, "minimal");
    assert_eq!(n, 4);
    assert_eq!(app.instance_count().await, 2, "re-sends are no-ops");
    assert_eq!(app.blob_files().len(), 2);
}

/// Bad parts between good ones in one request (inspected in runs across the
/// blocking pool): every outcome stays with its own part, in order.
#[tokio::test]
async fn outcomes_stay_in_part_order_across_inspection_runs() {
    let app = TestApp::new().await;
    let mut truncated = synth(202).frames(4).bytes();
    truncated.truncate(truncated.len() - 300);
    let parts = vec![
        synth(201).bytes(),
        b"not DICOM at all".to_vec(),
        synth(203).bytes(),
        synth(204).bytes(),
        truncated,
        synth(206).bytes(),
        synth(207).bytes(),
    ];
    let (status, resp) = app.stow("/dicom-web/studies", multipart(&parts)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(failure_reasons(&resp), vec![0xC000, 0xC000]);
    let uid = |n: u32| format!("1.2.826.0.1.3680043.8.498.1.1.{n}");
    assert_eq!(
        referenced(&resp),
        vec![uid(201), uid(203), uid(204), uid(206), uid(207)]
    );
    assert_eq!(app.instance_count().await, 5);
}

/// One bad part next to a good one: the good one is stored, the bad one is
/// a FailedSOPSequence item with its reason; alone, nothing is stored.
#[tokio::test]
async fn each_bad_part_is_one_failure_item() {
    let good = synth(100).bytes();
    let mut truncated = synth(2).frames(4).bytes();
    truncated.truncate(truncated.len() - 300);
    let with_uid = |uid: &str| {
        let mut ds = synth(3).dataset();
        ds.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::STUDY_INSTANCE_UID,
            dicom_core::VR::UI,
            dicom_core::dicom_value!(Str, uid),
        ));
        part10(ds, "1.2.826.0.1.3680043.8.498.1.1.3")
    };
    let mut missing = synth(4).dataset();
    missing.remove_element(dicom_dictionary_std::tags::SERIES_INSTANCE_UID);
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("not dicom", b"hello, this is not DICOM".to_vec(), 0xC000),
        ("truncated", truncated, 0xC000),
        (
            "missing series uid",
            part10(missing, "1.2.826.0.1.3680043.8.498.1.1.4"),
            0xA900,
        ),
        ("uid with path", with_uid("1.2.3/../x"), 0xA900),
        ("uid too long", with_uid(&"1.2".repeat(30)), 0xA900),
        ("uid with letters", with_uid("1.2.abc"), 0xA900),
        ("preamble only", vec![0u8; 128], 0xC000),
    ];
    for (label, bad, code) in cases {
        // alone: 400 or 409, nothing stored
        let app = TestApp::new().await;
        let (status, resp) = app.stow("/dicom-web/studies", multipart(&[&bad])).await;
        let expected = if code == 0xC000 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(status, expected, "{label}: {resp}");
        assert_eq!(failure_reasons(&resp), vec![code], "{label}");
        assert!(
            resp["00081198"]["Value"][0]["00000902"]["Value"][0]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        assert_nothing_stored(&app).await;
        assert_eq!(app.spool_files(), 0, "{label}: spool cleaned");

        // next to a good part: 202, the good one stored
        let (status, resp) = app
            .stow("/dicom-web/studies", multipart(&[bad, good.clone()]))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{label}: {resp}");
        assert_eq!(failure_reasons(&resp), vec![code], "{label}");
        assert_eq!(
            referenced(&resp),
            vec!["1.2.826.0.1.3680043.8.498.1.1.100"],
            "{label}"
        );
        assert_eq!(app.instance_count().await, 1, "{label}");
        assert_eq!(app.blob_files().len(), 1, "{label}");
    }
}

#[tokio::test]
async fn a_part_of_another_media_type_fails_alone() {
    let app = TestApp::new().await;
    let mut body = format!("--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n{{}}\r\n")
        .into_bytes();
    body.extend_from_slice(&multipart(&[synth(1).bytes()]));
    let (status, resp) = app.stow("/dicom-web/studies", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(failure_reasons(&resp), vec![0xC000]);
    assert_eq!(app.instance_count().await, 1);
}

/// Nothing is lost silently: a part without any header line, or a body
/// without its closing delimiter, gives failure items, never a bare 200.
#[tokio::test]
async fn parts_the_parser_cannot_read_are_reported() {
    let app = TestApp::new().await;
    let (a, b) = (synth(1).bytes(), synth(2).bytes());
    let mut body = Vec::new();
    for p in [&a, &b] {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n\r\n").as_bytes());
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--").as_bytes());
    let (status, resp) = app.stow("/dicom-web/studies", body).await;
    assert_eq!(
        referenced(&resp).len() + failure_reasons(&resp).len(),
        2,
        "{resp}"
    );
    assert_ne!(status, StatusCode::OK, "{resp}");

    let mut body = multipart(&[a.clone(), b.clone()]);
    body.truncate(body.len() - format!("--{BOUNDARY}--\r\n").len());
    let (status, resp) = app.stow("/dicom-web/studies", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "no closing delimiter: {resp}");
    assert_eq!(failure_reasons(&resp), vec![0xC000]);
}

#[tokio::test]
async fn a_body_cut_inside_a_part_keeps_the_parts_before_it() {
    let app = TestApp::new().await;
    let mut body = multipart(&[synth(1).bytes(), synth(2).bytes()]);
    let closing = format!("\r\n--{BOUNDARY}--\r\n").len();
    body.truncate(body.len() - closing - 500);
    let (status, resp) = app.stow("/dicom-web/studies", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(referenced(&resp).len(), 1);
    assert_eq!(failure_reasons(&resp), vec![0xC000]);
    assert_eq!(app.instance_count().await, 1);
    assert_eq!(app.blob_files().len(), 1);
    assert_eq!(app.spool_files(), 0);
}

#[tokio::test]
async fn malformed_requests_are_rejected_whole() {
    let app = TestApp::new().await;
    let body = || Body::from(multipart(&[synth(1).bytes()]));
    let (s, r) = post_raw(&app, "application/dicom", body()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{r}");
    assert_eq!(r["error"]["code"], "unsupported_media_type");
    let (s, _) = post_raw(
        &app,
        "multipart/related; type=\"application/dicom+xml\"; boundary=x",
        body(),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, r) = post_raw(
        &app,
        "multipart/related; type=\"application/dicom\"",
        body(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    let req = Request::post("/dicom-web/studies").body(body()).unwrap();
    assert_eq!(
        app.request(req).await.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no Content-Type"
    );
    let ct = format!("multipart/related; boundary={BOUNDARY}");
    let (s, r) = post_raw(&app, &ct, Body::from("no delimiter anywhere")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    let (s, _) = post_raw(&app, &ct, Body::from(format!("--{BOUNDARY}--\r\n"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "no part");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = TestApp::builder().max_request_bytes(4096).build().await;
    let big = multipart(&[synth(1).frames(40).bytes()]);
    assert!(big.len() > 4096);
    let (status, resp) = app.stow("/dicom-web/studies", big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    // chunked: no Content-Length, the limit applies while streaming
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let ct = format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}");
    let (status, _) = post_raw(
        &app,
        &ct,
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_nothing_stored(&app).await;
    assert_eq!(app.spool_files(), 0);
}

#[tokio::test]
async fn study_in_the_url_must_match() {
    let app = TestApp::new().await;
    let (status, resp) = app
        .stow(
            &format!("/dicom-web/studies/{STUDY}"),
            multipart(&[synth(1).bytes()]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (status, resp) = app
        .stow("/dicom-web/studies/1.2.3.4", multipart(&[synth(2).bytes()]))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_eq!(failure_reasons(&resp), vec![0xA900]);
    assert_eq!(
        resp["00081198"]["Value"][0]["00081155"]["Value"][0],
        "1.2.826.0.1.3680043.8.498.1.1.2"
    );
    assert_eq!(app.instance_count().await, 1);
    let (status, _) = app
        .stow("/dicom-web/studies/1.2.x", multipart(&[synth(2).bytes()]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "malformed UID in the URL");
}

#[tokio::test]
async fn a_series_cannot_move_to_another_study() {
    let app = TestApp::new().await;
    app.stow("/dicom-web/studies", multipart(&[synth(1).bytes()]))
        .await;
    let other = Synth::new(
        "1.2.826.0.1.3680043.8.498.9",
        SERIES,
        "1.2.826.0.1.3680043.8.498.9.1",
    );
    let (status, resp) = app
        .stow("/dicom-web/studies", multipart(&[other.bytes()]))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_eq!(failure_reasons(&resp), vec![0xA900]);
    assert_eq!(app.instance_count().await, 1);
    assert_eq!(app.blob_files().len(), 1);
    assert_eq!(
        app.scalar("SELECT COUNT(*) AS n FROM studies").await,
        1,
        "no empty study left behind"
    );
}

#[tokio::test]
async fn a_series_cannot_span_two_studies_in_one_request() {
    let app = TestApp::new().await;
    let other = Synth::new(
        "1.2.826.0.1.3680043.8.498.9",
        SERIES,
        "1.2.826.0.1.3680043.8.498.9.1",
    );
    let (status, resp) = app
        .stow(
            "/dicom-web/studies",
            multipart(&[synth(1).bytes(), other.bytes(), synth(2).bytes()]),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(failure_reasons(&resp), vec![0xA900]);
    assert_eq!(referenced(&resp).len(), 2);
    assert_eq!(app.instance_count().await, 2);
    assert_eq!(app.blob_files().len(), 2);
    assert_eq!(
        app.scalar("SELECT COUNT(*) AS n FROM studies").await,
        1,
        "no empty study left behind"
    );
    assert_eq!(
        app.scalar("SELECT CAST(number_of_instances AS BIGINT) AS n FROM studies")
            .await,
        2
    );
    assert_eq!(app.open_journals().await, 0, "every journal entry closed");
}

#[tokio::test]
async fn identical_resend_is_a_noop_and_a_different_object_is_rejected() {
    let app = TestApp::new().await;
    let first = synth(1).bytes();
    assert_eq!(
        app.stow("/dicom-web/studies", multipart(&[&first])).await.0,
        StatusCode::OK
    );
    let (status, resp) = app.stow("/dicom-web/studies", multipart(&[&first])).await;
    assert_eq!(status, StatusCode::OK, "retry succeeds: {resp}");
    assert_eq!(referenced(&resp).len(), 1);
    let (status, resp) = app
        .stow(
            "/dicom-web/studies",
            multipart(&[synth(1).fill(99).bytes()]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_eq!(failure_reasons(&resp), vec![0x0111]);
    assert_eq!(app.instance_count().await, 1);
    let blobs = app.blob_files();
    assert_eq!(blobs.len(), 1);
    assert_eq!(
        std::fs::read(&blobs[0]).unwrap(),
        first,
        "the stored object is unchanged"
    );
    assert_eq!(app.open_journals().await, 0);
}

/// Rows indexed before BLAKE3 hold the hex SHA-256 of their blob
/// (migration 7): a retry of such an instance is still the same object,
/// whether its part stays in memory or goes to a spool file, and different
/// bytes are still a conflict.
#[tokio::test]
async fn a_retry_matches_an_instance_indexed_with_sha256() {
    use sea_orm::{ConnectionTrait, Statement};
    use sha2::{Digest, Sha256};
    let app = TestApp::new().await;
    let small = synth(1).bytes();
    // 2 MiB: more than a part kept in memory
    let large = Synth {
        rows: 1024,
        columns: 1024,
        ..synth(2)
    }
    .bytes();
    let both = multipart(&[&small, &large]);
    assert_eq!(
        app.stow("/dicom-web/studies", both.clone()).await.0,
        StatusCode::OK
    );
    let db = app.state.archive.db.conn();
    for (n, bytes) in [(1, &small), (2, &large)] {
        let sql = format!(
            "UPDATE instances SET digest = '{}' WHERE sop_uid = '{}'",
            hex::encode(Sha256::digest(bytes)),
            synth(n).sop
        );
        db.execute_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap();
    }
    let (status, resp) = app.stow("/dicom-web/studies", both).await;
    assert_eq!(status, StatusCode::OK, "retry succeeds: {resp}");
    assert_eq!(referenced(&resp).len(), 2);
    assert_eq!(
        app.scalar("SELECT COUNT(*) AS n FROM instances WHERE digest LIKE 'blake3:%'")
            .await,
        0,
        "the rows are unchanged"
    );
    let (status, resp) = app
        .stow(
            "/dicom-web/studies",
            multipart(&[synth(1).fill(99).bytes()]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_eq!(app.blob_files().len(), 2);
}

#[tokio::test]
async fn overwrite_policy_replaces_the_object() {
    let app = TestApp::builder()
        .duplicate_policy(DuplicatePolicy::Overwrite)
        .build()
        .await;
    app.stow("/dicom-web/studies", multipart(&[synth(1).bytes()]))
        .await;
    let second = synth(1).fill(99).bytes();
    let (status, resp) = app.stow("/dicom-web/studies", multipart(&[&second])).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(app.instance_count().await, 1);
    let blobs = app.blob_files();
    assert_eq!(blobs.len(), 1, "the replaced blob is deleted");
    assert_eq!(std::fs::read(&blobs[0]).unwrap(), second);
    assert_eq!(
        app.scalar("SELECT CAST(number_of_instances AS BIGINT) AS n FROM studies")
            .await,
        1
    );
}

#[tokio::test]
async fn concurrent_uploads_of_one_instance_leave_one_row_and_one_blob() {
    let app = TestApp::new().await;
    let body = multipart(&[synth(1).bytes()]);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let router = app.router.clone();
            let body = body.clone();
            let auth = format!("Bearer {}", app.key);
            tokio::spawn(async move {
                use tower::ServiceExt;
                let req = Request::post("/dicom-web/studies")
                    .header("authorization", auth)
                    .header(
                        "content-type",
                        format!("multipart/related; type=application/dicom; boundary={BOUNDARY}"),
                    )
                    .body(Body::from(body))
                    .unwrap();
                router.oneshot(req).await.unwrap().status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(app.instance_count().await, 1);
    assert_eq!(app.blob_files().len(), 1, "no orphan blob");
    assert_eq!(app.open_journals().await, 0);
    assert_eq!(
        app.scalar("SELECT CAST(number_of_instances AS BIGINT) AS n FROM studies")
            .await,
        1
    );
}

#[tokio::test]
async fn concurrent_different_objects_under_one_uid_store_exactly_one() {
    let app = TestApp::new().await;
    let tasks: Vec<_> = (0..6u8)
        .map(|i| {
            let router = app.router.clone();
            let body = multipart(&[synth(1).fill(i * 10).bytes()]);
            let auth = format!("Bearer {}", app.key);
            tokio::spawn(async move {
                use tower::ServiceExt;
                let req = Request::post("/dicom-web/studies")
                    .header("authorization", auth)
                    .header(
                        "content-type",
                        format!("multipart/related; boundary={BOUNDARY}"),
                    )
                    .body(Body::from(body))
                    .unwrap();
                router.oneshot(req).await.unwrap().status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(app.instance_count().await, 1);
    assert_eq!(app.blob_files().len(), 1);
}

#[tokio::test]
async fn tenant_urls_and_retrieve_url_origins() {
    let app = TestApp::new().await;
    let (status, resp) = app
        .stow(
            "/tenants/default/dicom-web/studies",
            multipart(&[synth(1).bytes()]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        resp["00081190"]["Value"][0]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:8080/tenants/default/dicom-web/studies/")
    );
    let (status, _) = app
        .stow(
            "/tenants/hosp_0000000000000000/dicom-web/studies",
            multipart(&[synth(2).bytes()]),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.instance_count().await, 1);

    // a Host without its port is not trusted: relative URL
    let req = Request::post("/dicom-web/studies")
        .header(
            "content-type",
            format!("multipart/related; boundary={BOUNDARY}"),
        )
        .header("host", "127.0.0.1")
        .body(Body::from(multipart(&[synth(3).bytes()])))
        .unwrap();
    let resp = json_body(app.request(req).await).await;
    assert_eq!(
        resp["00081190"]["Value"][0],
        format!("/dicom-web/studies/{STUDY}")
    );

    let app = TestApp::builder()
        .public_url("https://pacs.example.org/")
        .build()
        .await;
    let (_, resp) = app
        .stow("/dicom-web/studies", multipart(&[synth(1).bytes()]))
        .await;
    assert_eq!(
        resp["00081190"]["Value"][0],
        format!("https://pacs.example.org/dicom-web/studies/{STUDY}")
    );
}

#[tokio::test]
async fn response_content_type_is_exactly_dicom_json() {
    let app = TestApp::new().await;
    let req = Request::post("/dicom-web/studies")
        .header(
            "content-type",
            format!("multipart/related; boundary={BOUNDARY}"),
        )
        .body(Body::from(multipart(&[synth(1).bytes()])))
        .unwrap();
    let resp = app.request(req).await;
    assert_eq!(resp.headers()["content-type"], "application/dicom+json");
}

#[tokio::test]
async fn orphan_blobs_of_an_interrupted_ingest_are_swept() {
    let app = TestApp::new().await;
    app.stow("/dicom-web/studies", multipart(&[synth(1).bytes()]))
        .await;
    // A crash between writing a blob and indexing it leaves a journaled blob.
    let orphan = app
        .dir
        .path()
        .join("blobs/default/1.2.3/1.2.3.4/1.2.3.4.5.deadbeef.dcm");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"half an upload").unwrap();
    app.state
        .archive
        .db
        .add_pending_blob("default/1.2.3/1.2.3.4/1.2.3.4.5.deadbeef.dcm")
        .await
        .unwrap();
    // and an interrupted spool file
    std::fs::write(app.dir.path().join("spool/abandoned.part"), b"x").unwrap();

    let young = sweep(&app, std::time::Duration::from_secs(3600)).await;
    assert_eq!(
        young, 0,
        "entries younger than the age are left alone (another replica may be writing)"
    );
    assert!(orphan.exists());
    let removed = sweep(&app, std::time::Duration::ZERO).await;
    assert_eq!(removed, 1);
    assert!(!orphan.exists());
    assert_eq!(app.spool_files(), 0);
    assert_eq!(app.blob_files().len(), 1, "the indexed blob is kept");
    assert_eq!(app.open_journals().await, 0);
}

/// Run the orphan sweep over journals older than `age`; blobs removed.
async fn sweep(app: &TestApp, age: std::time::Duration) -> usize {
    app.state.archive.sweep_orphans(age).await.unwrap()
}

/// The local folder journals a batch's blobs in a file of its own: a
/// crash between the puts and the index leaves that file, and the sweep
/// deletes the blobs it lists that the index does not reference, keeps the
/// others and removes the file.
#[tokio::test]
async fn orphan_blobs_of_the_blob_folders_journal_are_swept() {
    let app = TestApp::new().await;
    app.stow("/dicom-web/studies", multipart(&[synth(1).bytes()]))
        .await;
    let blobs = app.dir.path().join("blobs");
    let indexed = app.blob_files().pop().unwrap();
    let indexed_key = indexed.strip_prefix(&blobs).unwrap().to_str().unwrap();
    let orphan_key = "default/1.2.3/1.2.3.4/1.2.3.4.6.feedface.dcm";
    let orphan = blobs.join(orphan_key);
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"half an upload").unwrap();
    app.state
        .archive
        .store
        .journal(&[indexed_key, orphan_key])
        .await
        .unwrap()
        .expect("the local folder keeps a journal");
    assert_eq!(app.open_journals().await, 1);

    let young = sweep(&app, std::time::Duration::from_secs(3600)).await;
    assert_eq!(young, 0, "journals younger than the age are left alone");
    assert!(orphan.exists());
    let removed = sweep(&app, std::time::Duration::ZERO).await;
    assert_eq!(removed, 1);
    assert!(!orphan.exists());
    assert!(indexed.exists(), "the indexed blob is kept");
    assert_eq!(app.open_journals().await, 0, "the journal is removed");
}

#[tokio::test]
async fn health_probes() {
    let app = TestApp::new().await;
    for path in ["/healthz", "/readyz"] {
        let resp = app
            .request(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}
