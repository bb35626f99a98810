//! WADO-RS over HTTP: round trips of pydicom's real files, frames as
//! pydicom extracts them, metadata, bulk data, every Accept header OHIF and
//! dicomweb-client send, error statuses, DELETE and tenant isolation. Every
//! multipart response is checked for the framing OHIF's decoder needs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::Value;
use sha2::{Digest, Sha256};

const STUDY: &str = "1.2.826.0.1.3680043.8.498.2";
const SERIES_A: &str = "1.2.826.0.1.3680043.8.498.2.1";
const SERIES_B: &str = "1.2.826.0.1.3680043.8.498.2.2";

const OHIF_FRAMES: &str = "multipart/related; type=application/octet-stream; transfer-syntax=*";
const OHIF_FRAMES_QUOTED: &str =
    r#"multipart/related; type="application/octet-stream"; transfer-syntax="*""#;
const DWC_FRAMES: &str = r#"multipart/related; type="*/*""#;
const DWC_FRAMES_OCTETS: &str =
    r#"multipart/related; type="application/octet-stream"; transfer-syntax=*"#;
const DWC_RETRIEVE: &str = r#"multipart/related; type="application/dicom"; transfer-syntax=*"#;
const DWC_JSON: &str = "application/dicom+json, application/json";

fn sop(series: &str, n: u32) -> String {
    format!("{series}.{n}")
}

async fn get(app: &TestApp, uri: &str, headers: &[(&str, &str)]) -> Response<Body> {
    let mut req = Request::get(uri);
    if !headers.iter().any(|(k, _)| *k == "host") {
        req = req.header("host", "127.0.0.1:8080");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.request(req.body(Body::empty()).unwrap()).await
}

async fn delete(app: &TestApp, uri: &str) -> StatusCode {
    let req = Request::delete(uri)
        .header("host", "127.0.0.1:8080")
        .body(Body::empty())
        .unwrap();
    app.request(req).await.status()
}

async fn bytes(resp: Response<Body>) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn content_type(resp: &Response<Body>) -> String {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// One part of a multipart/related response: its Content-Type and body.
#[derive(Debug)]
struct Part {
    content_type: String,
    data: Vec<u8>,
}

/// Parse a multipart/related response strictly, the way OHIF's and
/// dicomweb-client's decoders read it: the boundary is an unquoted header
/// parameter, the body starts with `--boundary` (OHIF takes the boundary
/// from the body's first line), every part names its type with a header
/// spelled exactly `Content-Type:`, and the body ends with the closing
/// delimiter.
async fn multipart_parts(resp: Response<Body>, root_type: &str) -> Vec<Part> {
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = content_type(&resp);
    assert!(ct.starts_with("multipart/related;"), "{ct}");
    assert!(
        ct.contains(&format!("type=\"{root_type}\"")),
        "root type {root_type} in {ct}"
    );
    let boundary = ct
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .unwrap_or_else(|| panic!("no boundary in {ct}"))
        .to_owned();
    assert!(!boundary.starts_with('"'), "unquoted boundary: {ct}");
    let body = bytes(resp).await;

    // OHIF (dicomweb-client JS multipartDecode): the first line of the
    // header block that starts with `--` is the boundary.
    let head_end = memchr::memmem::find(&body[..body.len().min(1000)], b"\r\n\r\n")
        .expect("a part header block in the first 1000 bytes");
    let first_line = std::str::from_utf8(&body[..head_end])
        .unwrap()
        .split("\r\n")
        .find(|l| l.starts_with("--"))
        .unwrap();
    assert_eq!(first_line, format!("--{boundary}"));
    assert!(body.starts_with(format!("--{boundary}\r\n").as_bytes()));
    let closing = format!("--{boundary}--\r\n");
    assert!(body.ends_with(closing.as_bytes()), "closing delimiter");

    let delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    let mut rest = &body[boundary.len() + 2..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        assert!(rest.starts_with(b"\r\n"));
        rest = &rest[2..];
        let end = memchr::memmem::find(rest, b"\r\n\r\n").unwrap();
        let headers = std::str::from_utf8(&rest[..end]).unwrap();
        let ct_line = headers
            .split("\r\n")
            .find(|l| l.starts_with("Content-Type: "))
            .unwrap_or_else(|| panic!("no `Content-Type:` line in {headers:?}"));
        rest = &rest[end + 4..];
        let data_end = memchr::memmem::find(rest, delimiter.as_bytes()).unwrap();
        parts.push(Part {
            content_type: ct_line["Content-Type: ".len()..].to_owned(),
            data: rest[..data_end].to_vec(),
        });
        rest = &rest[data_end + delimiter.len()..];
    }
    parts
}

fn param<'a>(content_type: &'a str, name: &str) -> Option<&'a str> {
    content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
}

/// Store synthetic instances: `(series, number, frames)`.
async fn store_synth(app: &TestApp, root: &str, items: &[(&str, u32, u32)]) -> Vec<Vec<u8>> {
    let files: Vec<Vec<u8>> = items
        .iter()
        .map(|(series, n, frames)| {
            Synth::new(STUDY, series, &sop(series, *n))
                .frames(*frames)
                .fill(*n as u8)
                .bytes()
        })
        .collect();
    let (status, resp) = app
        .stow(&format!("{root}/studies"), multipart(&files))
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    files
}

/// A stored corpus file: its manifest entry, bytes and instance path.
struct Stored {
    entry: Value,
    bytes: Vec<u8>,
    path: String,
}

/// STOW the corpus files accepted by `pick` (all of them when it says so);
/// returns those that were stored, with their instance path.
async fn store_corpus(app: &TestApp, pick: impl Fn(&str) -> bool) -> Vec<Stored> {
    let mut stored = Vec::new();
    for entry in corpus_manifest() {
        let file = entry["file"].as_str().unwrap().to_owned();
        if !pick(&file) || entry["collides"].as_bool().unwrap() {
            continue;
        }
        let bytes = std::fs::read(corpus_dir().join(&file)).unwrap();
        let (status, resp) = app.stow("/dicom-web/studies", multipart(&[&bytes])).await;
        if status != StatusCode::OK {
            continue;
        }
        let url = resp["00081199"]["Value"][0]["00081190"]["Value"][0]
            .as_str()
            .unwrap();
        let path = url
            .strip_prefix("http://127.0.0.1:8080")
            .unwrap()
            .to_owned();
        stored.push(Stored { entry, bytes, path });
    }
    stored
}

fn named<'a>(stored: &'a [Stored], file: &str) -> &'a Stored {
    stored
        .iter()
        .find(|s| s.entry["file"] == file)
        .unwrap_or_else(|| panic!("{file} was stored"))
}

// ------------------------------------------------------------- round trips

#[tokio::test]
async fn every_stored_corpus_file_is_retrieved_byte_identical() {
    let app = TestApp::new().await;
    let stored = store_corpus(&app, |_| true).await;
    assert!(stored.len() >= 140, "stored {}", stored.len());
    for s in &stored {
        let file = s.entry["file"].as_str().unwrap();
        let resp = get(&app, &s.path, &[("accept", DWC_RETRIEVE)]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        let parts = multipart_parts(resp, "application/dicom").await;
        assert_eq!(parts.len(), 1, "{file}");
        assert_eq!(
            parts[0].content_type,
            format!(
                "application/dicom; transfer-syntax={}",
                s.entry["transfer_syntax"].as_str().unwrap()
            ),
            "{file}"
        );
        assert_eq!(sha(&parts[0].data), sha(&s.bytes), "{file}: bytes differ");
    }
}

#[tokio::test]
async fn study_and_series_retrieve_stream_every_instance() {
    let app = TestApp::new().await;
    let files = store_synth(
        &app,
        "/dicom-web",
        &[(SERIES_A, 1, 1), (SERIES_A, 2, 3), (SERIES_B, 3, 2)],
    )
    .await;
    let want: Vec<String> = files.iter().map(|f| sha(f)).collect();

    for accept in [
        DWC_RETRIEVE,
        r#"multipart/related; type="application/dicom""#,
        "multipart/related; type=application/dicom",
        "multipart/related",
        "*/*",
        "image/jpeg;q=0.9, multipart/related; type=application/dicom; q=0.5",
    ] {
        let resp = get(
            &app,
            &format!("/dicom-web/studies/{STUDY}"),
            &[("accept", accept)],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{accept}");
        let parts = multipart_parts(resp, "application/dicom").await;
        let mut got: Vec<String> = parts.iter().map(|p| sha(&p.data)).collect();
        got.sort();
        let mut expected = want.clone();
        expected.sort();
        assert_eq!(got, expected, "{accept}");
        for p in &parts {
            assert_eq!(
                p.content_type,
                format!("application/dicom; transfer-syntax={EXPLICIT_VR_LE}")
            );
        }
    }
    // No Accept header at all: the default representation.
    let resp = get(&app, &format!("/dicom-web/studies/{STUDY}"), &[]).await;
    assert_eq!(multipart_parts(resp, "application/dicom").await.len(), 3);

    let resp = get(
        &app,
        &format!("/dicom-web/studies/{STUDY}/series/{SERIES_A}"),
        &[("accept", DWC_RETRIEVE)],
    )
    .await;
    let parts = multipart_parts(resp, "application/dicom").await;
    assert_eq!(parts.len(), 2);

    // A bare application/dicom body for one instance.
    let path = format!(
        "/dicom-web/studies/{STUDY}/series/{SERIES_B}/instances/{}",
        sop(SERIES_B, 3)
    );
    let resp = get(&app, &path, &[("accept", "application/dicom")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        content_type(&resp),
        format!("application/dicom; transfer-syntax={EXPLICIT_VR_LE}")
    );
    assert_eq!(bytes(resp).await, files[2]);
    // ... but not for a whole study.
    let resp = get(
        &app,
        &format!("/dicom-web/studies/{STUDY}"),
        &[("accept", "application/dicom")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
}

#[tokio::test]
async fn retrieve_without_transfer_syntax_wildcard_gives_explicit_vr_little_endian() {
    use dicom_dictionary_std::tags;
    use dicom_object::file::{OpenFileOptions, ReadPreamble};
    let app = TestApp::new().await;
    let stored = store_corpus(&app, |f| {
        [
            "files/rtdose.dcm",
            "files/image_dfl.dcm",
            "files/examples_ybr_color.dcm",
            "files/CT_small.dcm",
            "files/MR_small_bigendian.dcm",
        ]
        .contains(&f)
    })
    .await;
    let default = r#"multipart/related; type="application/dicom""#;
    let open = |bytes: &[u8]| {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Auto)
            .from_reader(bytes)
            .unwrap()
    };
    // CT_small is Explicit VR LE: served as is.
    let ct = named(&stored, "files/CT_small.dcm");
    let resp = get(&app, &ct.path, &[("accept", default)]).await;
    let parts = multipart_parts(resp, "application/dicom").await;
    assert_eq!(parts[0].data, ct.bytes);

    // Implicit VR LE and Deflated Explicit VR LE are re-encoded, with the
    // same elements and pixel data.
    for (file, accept) in [
        ("files/rtdose.dcm", default),
        ("files/image_dfl.dcm", default),
        ("files/rtdose.dcm", "application/dicom"),
        (
            "files/rtdose.dcm",
            "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        ),
    ] {
        let s = named(&stored, file);
        let resp = get(&app, &s.path, &[("accept", accept)]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{file} {accept}");
        let data = if accept == "application/dicom" {
            assert_eq!(
                content_type(&resp),
                format!("application/dicom; transfer-syntax={EXPLICIT_VR_LE}")
            );
            bytes(resp).await
        } else {
            let mut parts = multipart_parts(resp, "application/dicom").await;
            assert_eq!(
                parts[0].content_type,
                format!("application/dicom; transfer-syntax={EXPLICIT_VR_LE}")
            );
            parts.remove(0).data
        };
        let (got, original) = (open(&data), open(&s.bytes));
        assert_eq!(got.meta().transfer_syntax(), EXPLICIT_VR_LE, "{file}");
        assert_eq!(
            got.iter().count(),
            original.iter().count(),
            "{file}: element count"
        );
        for tag in [
            tags::SOP_INSTANCE_UID,
            tags::PATIENT_NAME,
            tags::ROWS,
            tags::PIXEL_DATA,
        ] {
            assert_eq!(
                got.element(tag).unwrap().to_bytes().unwrap(),
                original.element(tag).unwrap().to_bytes().unwrap(),
                "{file}: {tag}"
            );
        }
    }

    // Compressed and big-endian data would need decoding: 406, as does a
    // compressed syntax other than the stored one.
    for file in [
        "files/examples_ybr_color.dcm",
        "files/MR_small_bigendian.dcm",
    ] {
        let s = named(&stored, file);
        let resp = get(&app, &s.path, &[("accept", default)]).await;
        assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE, "{file}");
    }
    let jpeg = named(&stored, "files/examples_ybr_color.dcm");
    let resp = get(
        &app,
        &jpeg.path,
        &[(
            "accept",
            "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50",
        )],
    )
    .await;
    assert_eq!(
        multipart_parts(resp, "application/dicom").await[0].data,
        jpeg.bytes
    );
    let resp = get(
        &app,
        &jpeg.path,
        &[(
            "accept",
            "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.70",
        )],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    // A study mixing stored syntaxes: with `*` each part is labelled with
    // its own.
    let resp = get(&app, &jpeg.path, &[("accept", DWC_RETRIEVE)]).await;
    let parts = multipart_parts(resp, "application/dicom").await;
    assert_eq!(
        param(&parts[0].content_type, "transfer-syntax"),
        Some("1.2.840.10008.1.2.4.50")
    );
}

// ----------------------------------------------------------------- frames

#[tokio::test]
async fn frames_of_native_rle_and_jpeg_files_equal_what_pydicom_extracts() {
    let app = TestApp::new().await;
    let files = [
        (
            "files/rtdose.dcm",
            "application/octet-stream",
            "image/whatever",
        ),
        ("files/rtdose_rle.dcm", "image/dicom-rle", ""),
        ("files/SC_rgb_rle_2frame.dcm", "image/dicom-rle", ""),
        ("files/examples_ybr_color.dcm", "image/jpeg", ""),
    ];
    let stored = store_corpus(&app, |f| files.iter().any(|(name, ..)| *name == f)).await;
    assert_eq!(stored.len(), files.len());
    for (file, own_type, _) in files {
        let s = named(&stored, file);
        let ts = s.entry["transfer_syntax"].as_str().unwrap();
        let want: Vec<&str> = s.entry["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["sha256"].as_str().unwrap())
            .collect();
        assert!(want.len() >= 2, "{file} is multi-frame");
        let all: Vec<String> = (1..=want.len()).map(|n| n.to_string()).collect();
        let list = all.join(",");

        // OHIF (both quotings) and dicomweb-client asking for octets: the
        // parts are octets labelled with the stored syntax.
        for accept in [OHIF_FRAMES, OHIF_FRAMES_QUOTED, DWC_FRAMES_OCTETS] {
            let resp = get(
                &app,
                &format!("{}/frames/{list}", s.path),
                &[("accept", accept)],
            )
            .await;
            let parts = multipart_parts(resp, "application/octet-stream").await;
            let got: Vec<String> = parts.iter().map(|p| sha(&p.data)).collect();
            assert_eq!(got, want, "{file} with {accept}");
            for p in &parts {
                assert_eq!(
                    p.content_type,
                    format!("application/octet-stream; transfer-syntax={ts}"),
                    "{file}"
                );
            }
        }
        // dicomweb-client's default: any type, so the frames' own.
        let resp = get(
            &app,
            &format!("{}/frames/{list}", s.path),
            &[("accept", DWC_FRAMES)],
        )
        .await;
        let parts = multipart_parts(resp, own_type).await;
        let got: Vec<String> = parts.iter().map(|p| sha(&p.data)).collect();
        assert_eq!(got, want, "{file} with {DWC_FRAMES}");
        for p in &parts {
            assert_eq!(
                param(&p.content_type, "transfer-syntax"),
                Some(ts),
                "{file}"
            );
            assert!(
                p.content_type.starts_with(&format!("{own_type};")),
                "{file}"
            );
        }
        // One frame at a time, in any order, as OHIF asks.
        for n in [want.len(), 1] {
            let resp = get(
                &app,
                &format!("{}/frames/{n}", s.path),
                &[("accept", OHIF_FRAMES)],
            )
            .await;
            let parts = multipart_parts(resp, "application/octet-stream").await;
            assert_eq!(parts.len(), 1);
            assert_eq!(sha(&parts[0].data), want[n - 1], "{file} frame {n}");
        }
        // A subset with a repeat.
        let resp = get(
            &app,
            &format!("{}/frames/2,1,2", s.path),
            &[("accept", DWC_FRAMES)],
        )
        .await;
        let got: Vec<String> = multipart_parts(resp, own_type)
            .await
            .iter()
            .map(|p| sha(&p.data))
            .collect();
        assert_eq!(got, vec![want[1], want[0], want[1]], "{file}");
    }

    // Native Implicit VR LE frames are Explicit VR LE frames byte for byte:
    // the octet-stream default is met and labelled so.
    let dose = named(&stored, "files/rtdose.dcm");
    let resp = get(
        &app,
        &format!("{}/frames/1", dose.path),
        &[(
            "accept",
            r#"multipart/related; type="application/octet-stream""#,
        )],
    )
    .await;
    let parts = multipart_parts(resp, "application/octet-stream").await;
    assert_eq!(
        parts[0].content_type,
        format!("application/octet-stream; transfer-syntax={EXPLICIT_VR_LE}")
    );
    // Compressed frames asked in their media type with their syntax.
    let jpeg = named(&stored, "files/examples_ybr_color.dcm");
    let resp = get(
        &app,
        &format!("{}/frames/3", jpeg.path),
        &[(
            "accept",
            "multipart/related; type=\"image/jpeg\"; transfer-syntax=1.2.840.10008.1.2.4.50",
        )],
    )
    .await;
    let parts = multipart_parts(resp, "image/jpeg").await;
    assert_eq!(
        parts[0].content_type,
        "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    );
    assert_eq!(
        sha(&parts[0].data),
        jpeg.entry["frames"][2]["sha256"].as_str().unwrap()
    );
}

#[tokio::test]
async fn frame_errors_are_400_404_and_406() {
    let app = TestApp::new().await;
    let stored = store_corpus(&app, |f| {
        f == "files/examples_ybr_color.dcm"
            || f == "files/image_dfl.dcm"
            || f == "files/MR_small_bigendian.dcm"
    })
    .await;
    let jpeg = named(&stored, "files/examples_ybr_color.dcm");
    let status = |resp: Response<Body>| resp.status();
    for bad in ["0", "1,0", "a", "1,,2", "-1"] {
        let resp = get(
            &app,
            &format!("{}/frames/{bad}", jpeg.path),
            &[("accept", OHIF_FRAMES)],
        )
        .await;
        assert_eq!(status(resp), StatusCode::BAD_REQUEST, "{bad}");
    }
    for missing in ["31", "1,31"] {
        let resp = get(
            &app,
            &format!("{}/frames/{missing}", jpeg.path),
            &[("accept", OHIF_FRAMES)],
        )
        .await;
        assert_eq!(status(resp), StatusCode::NOT_FOUND, "{missing}");
    }
    for refused in [
        "multipart/related; type=image/jls",
        r#"multipart/related; type="application/octet-stream""#,
        "application/octet-stream",
        "application/dicom+json",
    ] {
        let resp = get(
            &app,
            &format!("{}/frames/1", jpeg.path),
            &[("accept", refused)],
        )
        .await;
        assert_eq!(status(resp), StatusCode::NOT_ACCEPTABLE, "{refused}");
    }
    // A deflated data set has no frame index: only transcoding could serve it.
    let deflated = named(&stored, "files/image_dfl.dcm");
    let resp = get(
        &app,
        &format!("{}/frames/1", deflated.path),
        &[("accept", OHIF_FRAMES)],
    )
    .await;
    assert_eq!(status(resp), StatusCode::NOT_ACCEPTABLE);
    // Big endian native frames: as stored only.
    let big = named(&stored, "files/MR_small_bigendian.dcm");
    let resp = get(
        &app,
        &format!("{}/frames/1", big.path),
        &[("accept", OHIF_FRAMES)],
    )
    .await;
    let parts = multipart_parts(resp, "application/octet-stream").await;
    assert_eq!(
        param(&parts[0].content_type, "transfer-syntax"),
        Some("1.2.840.10008.1.2.2")
    );
    assert_eq!(
        sha(&parts[0].data),
        big.entry["frames"][0]["sha256"].as_str().unwrap()
    );
    let resp = get(
        &app,
        &format!("{}/frames/1", big.path),
        &[(
            "accept",
            r#"multipart/related; type="application/octet-stream""#,
        )],
    )
    .await;
    assert_eq!(status(resp), StatusCode::NOT_ACCEPTABLE);
}

// --------------------------------------------------------------- metadata

#[tokio::test]
async fn metadata_is_the_stored_header_with_bulk_data_uris_that_resolve() {
    let app = TestApp::new().await;
    let stored = store_corpus(&app, |f| {
        f == "files/CT_small.dcm" || f == "files/rtdose.dcm"
    })
    .await;
    let ct = named(&stored, "files/CT_small.dcm");
    for accept in ["application/dicom+json", DWC_JSON, "*/*"] {
        let resp = get(
            &app,
            &format!("{}/metadata", ct.path),
            &[("accept", accept)],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{accept}");
        assert_eq!(content_type(&resp), "application/dicom+json");
        let json: Value = serde_json::from_slice(&bytes(resp).await).unwrap();
        let items = json.as_array().unwrap();
        assert_eq!(items.len(), 1);
        let item = &items[0];
        assert_eq!(
            item["00100010"]["Value"][0]["Alphabetic"],
            "CompressedSamples^CT1"
        );
        assert_eq!(item["00080018"]["Value"][0], ct.entry["sop_instance_uid"]);
        assert_eq!(item["0020000D"]["Value"][0], ct.entry["study_uid"]);
        assert_eq!(item["00280010"]["Value"][0], 128);
        assert_eq!(item["7FE00010"]["vr"], "OW");
        let uri = item["7FE00010"]["BulkDataURI"].as_str().unwrap();
        assert_eq!(
            uri,
            format!("http://127.0.0.1:8080{}/bulkdata/7FE00010", ct.path)
        );
    }

    // The PixelData BulkDataURI resolves to the stored pixel data, as a
    // multipart body by default and as a bare body when asked.
    let (o, l) = (
        ct.entry["pixel_data_offset"].as_u64().unwrap() as usize,
        ct.entry["pixel_data_length"].as_u64().unwrap() as usize,
    );
    let pixels = &ct.bytes[o..o + l];
    let uri = format!("{}/bulkdata/7FE00010", ct.path);
    let parts = multipart_parts(get(&app, &uri, &[]).await, "application/octet-stream").await;
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].data, pixels);
    assert_eq!(
        parts[0].content_type,
        format!("application/octet-stream; transfer-syntax={EXPLICIT_VR_LE}")
    );
    let resp = get(&app, &uri, &[("accept", "application/octet-stream")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::ACCEPT_RANGES], "bytes");
    assert_eq!(
        resp.headers()[header::CONTENT_LENGTH],
        l.to_string().as_str()
    );
    assert_eq!(bytes(resp).await, pixels);
    // Range requests on the single-part form.
    let resp = get(
        &app,
        &uri,
        &[
            ("accept", "application/octet-stream"),
            ("range", "bytes=100-199"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()[header::CONTENT_RANGE],
        format!("bytes 100-199/{l}").as_str()
    );
    assert_eq!(bytes(resp).await, &pixels[100..200]);
    let resp = get(
        &app,
        &uri,
        &[
            ("accept", "application/octet-stream"),
            ("range", "bytes=-16"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes(resp).await, &pixels[l - 16..]);
    let resp = get(
        &app,
        &uri,
        &[
            ("accept", "application/octet-stream"),
            ("range", format!("bytes={l}-").as_str()),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        resp.headers()[header::CONTENT_RANGE],
        format!("bytes */{l}").as_str()
    );
    // Unknown bulk paths and unacceptable types.
    let resp = get(&app, &format!("{}/bulkdata/00420011", ct.path), &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = get(&app, &uri, &[("accept", "image/jpeg")]).await;
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);

    // dicomweb-client sends `Host` without its port: the URIs are then
    // root-relative, never pointing at port 80.
    let resp = get(
        &app,
        &format!("{}/metadata", ct.path),
        &[("host", "127.0.0.1")],
    )
    .await;
    let json: Value = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(json[0]["7FE00010"]["BulkDataURI"], format!("{uri}"));
}

#[tokio::test]
async fn metadata_of_studies_and_series_lists_every_instance_with_etag_and_gzip() {
    let app = TestApp::builder()
        .public_url("https://pacs.example.org/")
        .build()
        .await;
    store_synth(
        &app,
        "/dicom-web",
        &[(SERIES_A, 1, 1), (SERIES_A, 2, 2), (SERIES_B, 3, 1)],
    )
    .await;
    let study_md = format!("/dicom-web/studies/{STUDY}/metadata");
    let resp = get(&app, &study_md, &[("accept", "application/dicom+json")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let etag = resp.headers()[header::ETAG].to_str().unwrap().to_owned();
    let json: Value = serde_json::from_slice(&bytes(resp).await).unwrap();
    let mut sops: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["00080018"]["Value"][0].as_str().unwrap())
        .collect();
    sops.sort();
    assert_eq!(sops, [sop(SERIES_A, 1), sop(SERIES_A, 2), sop(SERIES_B, 3)]);
    for item in json.as_array().unwrap() {
        let series = item["0020000E"]["Value"][0].as_str().unwrap();
        let sop_uid = item["00080018"]["Value"][0].as_str().unwrap();
        assert_eq!(
            item["7FE00010"]["BulkDataURI"],
            format!(
                "https://pacs.example.org/dicom-web/studies/{STUDY}/series/{series}/instances/{sop_uid}/bulkdata/7FE00010"
            )
        );
    }
    let series_md = format!("/dicom-web/studies/{STUDY}/series/{SERIES_A}/metadata");
    let json: Value =
        serde_json::from_slice(&bytes(get(&app, &series_md, &[]).await).await).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    // 304 on a matching If-None-Match; a new instance changes the tag.
    let resp = get(&app, &study_md, &[("if-none-match", &etag)]).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert!(bytes(resp).await.is_empty());
    let resp = get(&app, &study_md, &[("if-none-match", "\"something-else\"")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    store_synth(&app, "/dicom-web", &[(SERIES_B, 4, 1)]).await;
    let resp = get(&app, &study_md, &[("if-none-match", &etag)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_ne!(resp.headers()[header::ETAG].to_str().unwrap(), etag);
    let json: Value = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 4);

    // gzip when accepted.
    let resp = get(
        &app,
        &study_md,
        &[("accept-encoding", "gzip, deflate, br, zstd")],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
    assert!(bytes(resp).await.starts_with(&[0x1f, 0x8b]));

    // More instances than one index page (100) all come, as valid JSON.
    let many: Vec<(&str, u32, u32)> = (10..260).map(|n| (SERIES_A, n, 1)).collect();
    for chunk in many.chunks(50) {
        store_synth(&app, "/dicom-web", chunk).await;
    }
    let json: Value =
        serde_json::from_slice(&bytes(get(&app, &series_md, &[]).await).await).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 252);
    let resp = get(
        &app,
        &format!("/dicom-web/studies/{STUDY}/series/{SERIES_A}"),
        &[],
    )
    .await;
    assert_eq!(multipart_parts(resp, "application/dicom").await.len(), 252);

    // Statuses.
    let resp = get(&app, &study_md, &[("accept", "application/dicom+xml")]).await;
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    let missing = format!("/dicom-web/studies/{STUDY}.9/metadata");
    assert_eq!(
        get(&app, &missing, &[]).await.status(),
        StatusCode::NOT_FOUND
    );
    let wrong_study = format!("/dicom-web/studies/{STUDY}.9/series/{SERIES_A}/metadata");
    assert_eq!(
        get(&app, &wrong_study, &[]).await.status(),
        StatusCode::NOT_FOUND
    );
    let bad = "/dicom-web/studies/1..2/metadata";
    assert_eq!(get(&app, bad, &[]).await.status(), StatusCode::BAD_REQUEST);
}

// ----------------------------------------------------------------- delete

#[tokio::test]
async fn delete_removes_rows_and_blobs_and_updates_counts() {
    let app = TestApp::new().await;
    store_synth(
        &app,
        "/dicom-web",
        &[
            (SERIES_A, 1, 1),
            (SERIES_A, 2, 1),
            (SERIES_B, 3, 1),
            (SERIES_B, 4, 1),
        ],
    )
    .await;
    assert_eq!(app.blob_files().len(), 4);
    let study = format!("/dicom-web/studies/{STUDY}");
    let instance = format!("{study}/series/{SERIES_A}/instances/{}", sop(SERIES_A, 1));

    assert_eq!(delete(&app, &instance).await, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&app, &instance, &[]).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, &format!("{instance}/metadata"), &[])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(delete(&app, &instance).await, StatusCode::NOT_FOUND);
    assert_eq!(app.instance_count().await, 3);
    assert_eq!(app.blob_files().len(), 3);
    assert_eq!(
        app.scalar("SELECT CAST(number_of_instances AS BIGINT) AS n FROM studies")
            .await,
        3
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT CAST(number_of_instances AS BIGINT) AS n FROM series WHERE series_uid = '{SERIES_A}'"
        ))
        .await,
        1
    );

    assert_eq!(
        delete(&app, &format!("{study}/series/{SERIES_B}")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.instance_count().await, 1);
    assert_eq!(app.blob_files().len(), 1);
    assert_eq!(app.scalar("SELECT COUNT(*) AS n FROM series").await, 1);
    assert_eq!(
        app.scalar("SELECT CAST(number_of_series AS BIGINT) AS n FROM studies")
            .await,
        1
    );
    assert_eq!(
        get(&app, &format!("{study}/series/{SERIES_B}/metadata"), &[])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    assert_eq!(delete(&app, &study).await, StatusCode::NO_CONTENT);
    assert_eq!(app.instance_count().await, 0);
    assert_eq!(app.scalar("SELECT COUNT(*) AS n FROM series").await, 0);
    assert_eq!(app.scalar("SELECT COUNT(*) AS n FROM studies").await, 0);
    assert_eq!(app.open_journals().await, 0);
    assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());
    assert_eq!(get(&app, &study, &[]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(delete(&app, &study).await, StatusCode::NOT_FOUND);

    // The study can be stored again afterwards.
    store_synth(&app, "/dicom-web", &[(SERIES_A, 1, 1)]).await;
    assert_eq!(get(&app, &study, &[]).await.status(), StatusCode::OK);
}

// ---------------------------------------------------------------- tenancy

#[tokio::test]
async fn another_hospitals_uids_are_404_like_missing_ones() {
    let mut app = TestApp::new().await;
    // A superadmin of `default` may act on `hosp_other` through its
    // /tenants URL; on /dicom-web it acts on `default`, which has nothing.
    app.key = app
        .key_for("default", cloudpacs::auth::Role::Superadmin)
        .await;
    let now = chrono::Utc::now().timestamp_millis();
    entity::hospital::ActiveModel {
        hospital_id: Set("hosp_other".into()),
        name: Set("Other hospital".into()),
        plan: Set("basic".into()),
        status: Set("active".into()),
        max_users: Set(0),
        max_storage_bytes: Set(0),
        settings: Set("{}".into()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(app.state.archive.db.conn())
    .await
    .unwrap();
    let other = "/tenants/hosp_other/dicom-web";
    store_synth(&app, other, &[(SERIES_A, 1, 2)]).await;
    let inst = format!(
        "studies/{STUDY}/series/{SERIES_A}/instances/{}",
        sop(SERIES_A, 1)
    );

    // The owner reads it.
    let resp = get(
        &app,
        &format!("{other}/{inst}/frames/2"),
        &[("accept", OHIF_FRAMES)],
    )
    .await;
    assert_eq!(
        multipart_parts(resp, "application/octet-stream")
            .await
            .len(),
        1
    );

    // The default hospital sees nothing, with the body of a missing UID.
    let missing = get(
        &app,
        &format!("/dicom-web/studies/{STUDY}.404/metadata"),
        &[],
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let missing_body = bytes(missing).await;
    for path in [
        format!("studies/{STUDY}"),
        format!("studies/{STUDY}/metadata"),
        format!("studies/{STUDY}/series/{SERIES_A}"),
        format!("studies/{STUDY}/series/{SERIES_A}/metadata"),
        inst.clone(),
        format!("{inst}/metadata"),
        format!("{inst}/frames/1"),
        format!("{inst}/bulkdata/7FE00010"),
    ] {
        let resp = get(&app, &format!("/dicom-web/{path}"), &[("accept", "*/*")]).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(bytes(resp).await, missing_body, "{path}");
        let resp = get(&app, &format!("/tenants/default/dicom-web/{path}"), &[]).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(
        delete(&app, &format!("/dicom-web/studies/{STUDY}")).await,
        StatusCode::NOT_FOUND
    );

    // The same UIDs in both hospitals are two studies: deleting one leaves
    // the other.
    store_synth(&app, "/dicom-web", &[(SERIES_A, 1, 2)]).await;
    assert_eq!(
        delete(&app, &format!("/dicom-web/studies/{STUDY}")).await,
        StatusCode::NO_CONTENT
    );
    let resp = get(
        &app,
        &format!("{other}/{inst}"),
        &[("accept", DWC_RETRIEVE)],
    )
    .await;
    assert_eq!(multipart_parts(resp, "application/dicom").await.len(), 1);
    assert_eq!(app.blob_files().len(), 1);
    // An unknown hospital is a 404 too.
    let resp = get(&app, &format!("/tenants/hosp_nope/dicom-web/{inst}"), &[]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

// ------------------------------------------------------ independent client

/// Python dicomweb-client's retrieve_* calls against the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_dicomweb_client_retrieves() {
    let stdout = run_python_client("dwc_wado.py").await;
    assert!(stdout.contains("all retrieve calls passed"), "{stdout}");
}
