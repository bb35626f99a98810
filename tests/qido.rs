//! QIDO-RS: every matching type at every level, paging, includefield, bad
//! queries, and the exact JSON of each level. Expected results are computed
//! from the test data model below, independently of the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::{Value, json};

/// One instance of the test data, with the attributes queries look at.
#[derive(Clone, Debug)]
struct Inst {
    study: String,
    series: String,
    sop: String,
    patient_name: &'static str,
    patient_id: String,
    study_date: &'static str,
    study_time: &'static str,
    accession: String,
    description: &'static str,
    referring: &'static str,
    modality: &'static str,
    series_number: i32,
    instance_number: i32,
    sop_class: &'static str,
}

const NAMES: [&str; 6] = [
    "Doe^Jane",
    "DOE^John",
    "Müller^Jürgen",
    "Doebler^Ann",
    "Smith^Ann",
    "O'Neil^Pat",
];
const DATES: [&str; 6] = [
    "20200101", "20200615", "20201231", "20210301", "19991231", "20240229",
];
const TIMES: [&str; 6] = ["080000", "123059.5", "235959", "0930", "120000", "000001"];
const DESCRIPTIONS: [&str; 6] = [
    "CT CHEST",
    "MR BRAIN",
    "50%_off",
    "CT ABDOMEN",
    "chest",
    "US",
];
const MODALITIES: [&str; 3] = ["CT", "MR", "US"];
const MR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";

fn dataset() -> Vec<Inst> {
    let mut out = Vec::new();
    for s in 0..12usize {
        let study = format!("1.2.826.0.1.3680043.8.498.3.{s}");
        for se in 0..(1 + s % 3) {
            let series = format!("{study}.{se}");
            let modality = MODALITIES[(s + se) % 3];
            for i in 0..(1 + (s + se) % 2) {
                out.push(Inst {
                    study: study.clone(),
                    series: series.clone(),
                    sop: format!("{series}.{i}"),
                    patient_name: NAMES[s % 6],
                    patient_id: format!("PID{:03}", s % 7),
                    study_date: DATES[s % 6],
                    study_time: TIMES[s % 6],
                    accession: if s == 5 {
                        "ACC_5%".into()
                    } else {
                        format!("ACC{s:04}")
                    },
                    description: DESCRIPTIONS[s % 6],
                    referring: if s % 2 == 0 { "House^Gregory" } else { "" },
                    modality,
                    series_number: se as i32 + 1,
                    instance_number: i as i32 + 1,
                    sop_class: if modality == "MR" {
                        MR_STORAGE
                    } else {
                        CT_IMAGE_STORAGE
                    },
                });
            }
        }
    }
    out
}

fn file(i: &Inst) -> Vec<u8> {
    let mut ds = InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, dicom_value!(Str, i.sop_class)),
        DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, i.sop.as_str()),
        ),
        DataElement::new(tags::STUDY_DATE, VR::DA, dicom_value!(Str, i.study_date)),
        DataElement::new(tags::STUDY_TIME, VR::TM, dicom_value!(Str, i.study_time)),
        DataElement::new(
            tags::ACCESSION_NUMBER,
            VR::SH,
            dicom_value!(Str, i.accession.as_str()),
        ),
        DataElement::new(tags::MODALITY, VR::CS, dicom_value!(Str, i.modality)),
        DataElement::new(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            dicom_value!(Str, i.referring),
        ),
        DataElement::new(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            dicom_value!(Str, i.description),
        ),
        DataElement::new(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            dicom_value!(Str, format!("{} series", i.modality)),
        ),
        DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            dicom_value!(Str, i.patient_name),
        ),
        DataElement::new(
            tags::PATIENT_ID,
            VR::LO,
            dicom_value!(Str, i.patient_id.as_str()),
        ),
        DataElement::new(
            tags::PATIENT_BIRTH_DATE,
            VR::DA,
            dicom_value!(Str, "19800101"),
        ),
        DataElement::new(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, i.study.as_str()),
        ),
        DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, i.series.as_str()),
        ),
        DataElement::new(tags::STUDY_ID, VR::SH, dicom_value!(Str, "S1")),
        DataElement::new(
            tags::SERIES_NUMBER,
            VR::IS,
            dicom_value!(Str, i.series_number.to_string()),
        ),
        DataElement::new(
            tags::INSTANCE_NUMBER,
            VR::IS,
            dicom_value!(Str, i.instance_number.to_string()),
        ),
        DataElement::new(tags::MANUFACTURER, VR::LO, dicom_value!(Str, "ACME")),
    ]);
    ds.put(DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        dicom_value!(Str, "ISO_IR 192"),
    ));
    ds.put(DataElement::new(tags::ROWS, VR::US, dicom_value!(U16, [2])));
    ds.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        dicom_value!(U16, [2]),
    ));
    ds.put(DataElement::new(
        tags::BITS_ALLOCATED,
        VR::US,
        dicom_value!(U16, [8]),
    ));
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(vec![0u8; 4].into()),
    ));
    part10(ds, &i.sop)
}

async fn loaded_app() -> (TestApp, Vec<Inst>) {
    let app = TestApp::builder().qido_limits(5, 30).build().await;
    let data = dataset();
    let files: Vec<Vec<u8>> = data.iter().map(file).collect();
    let (status, resp) = app.stow("/dicom-web/studies", multipart(&files)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    (app, data)
}

async fn get(app: &TestApp, uri: &str) -> (StatusCode, Value, Option<String>) {
    let req = Request::get(uri)
        .header("accept", "application/dicom+json")
        .header("host", "127.0.0.1:8080")
        .body(Body::empty())
        .unwrap();
    let resp = app.request(req).await;
    let status = resp.status();
    let warning = resp
        .headers()
        .get("warning")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, json_body(resp).await, warning)
}

fn uids(v: &Value, tag: &str) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| o[tag]["Value"][0].as_str().unwrap().to_owned())
        .collect()
}

fn fold(s: &str) -> String {
    cloudpacs::dicom::normalize_person_name(s)
}

/// (query, predicate over an instance) — the predicate says which entities
/// match, derived from the data model.
type Case = (&'static str, Box<dyn Fn(&Inst) -> bool>);

fn study_cases() -> Vec<Case> {
    vec![
        (
            "PatientName=Doe^Jane",
            Box::new(|i| fold(i.patient_name) == "DOE^JANE"),
        ),
        (
            "PatientName=doe*",
            Box::new(|i| fold(i.patient_name).starts_with("DOE")),
        ),
        (
            "PatientName=DOE%5EJ*",
            Box::new(|i| fold(i.patient_name).starts_with("DOE^J")),
        ),
        (
            "PatientName=*ann",
            Box::new(|i| fold(i.patient_name).ends_with("ANN")),
        ),
        (
            "PatientName=mu?ler*",
            Box::new(|i| fold(i.patient_name).starts_with("MULLER")),
        ),
        (
            "PatientName=M%C3%BCller%5EJ%C3%BCrgen",
            Box::new(|i| i.patient_name == "Müller^Jürgen"),
        ),
        ("00100020=PID001", Box::new(|i| i.patient_id == "PID001")),
        (
            "PatientID=PID00*",
            Box::new(|i| i.patient_id.starts_with("PID00")),
        ),
        ("PatientID=", Box::new(|_| true)),
        (
            "StudyDate=20200615",
            Box::new(|i| i.study_date == "20200615"),
        ),
        (
            "StudyDate=20200101-20201231",
            Box::new(|i| ("20200101"..="20201231").contains(&i.study_date)),
        ),
        (
            "StudyDate=-20200615",
            Box::new(|i| i.study_date <= "20200615"),
        ),
        (
            "StudyDate=20210101-",
            Box::new(|i| i.study_date >= "20210101"),
        ),
        (
            "StudyTime=0800-1230",
            Box::new(|i| ["080000", "0930", "120000", "123059.5"].contains(&i.study_time)),
        ),
        (
            "AccessionNumber=ACC_5%25",
            Box::new(|i| i.accession == "ACC_5%"),
        ),
        (
            "AccessionNumber=ACC_*",
            Box::new(|i| i.accession.starts_with("ACC_")),
        ),
        (
            "AccessionNumber=ACC000*",
            Box::new(|i| i.accession.starts_with("ACC000")),
        ),
        (
            "StudyDescription=50%25_off",
            Box::new(|i| i.description == "50%_off"),
        ),
        (
            "StudyDescription=*CHEST",
            Box::new(|i| i.description.ends_with("CHEST")),
        ),
        (
            "ReferringPhysicianName=house*",
            Box::new(|i| i.referring.starts_with("House")),
        ),
        (
            "StudyInstanceUID=1.2.826.0.1.3680043.8.498.3.1%5C1.2.826.0.1.3680043.8.498.3.2",
            Box::new(|i| i.study.ends_with(".3.1") || i.study.ends_with(".3.2")),
        ),
        (
            "StudyInstanceUID=1.2.826.0.1.3680043.8.498.3.4,1.2.826.0.1.3680043.8.498.3.7",
            Box::new(|i| i.study.ends_with(".3.4") || i.study.ends_with(".3.7")),
        ),
        ("StudyID=S1", Box::new(|_| true)),
        (
            "PatientName=doe&StudyDate=20200101-",
            Box::new(|i| fold(i.patient_name) == "DOE" && i.study_date >= "20200101"),
        ),
        (
            "PatientName=do*&StudyDate=20200101-",
            Box::new(|i| fold(i.patient_name).starts_with("DO") && i.study_date >= "20200101"),
        ),
    ]
}

#[tokio::test]
async fn study_level_matching() {
    let (app, data) = loaded_app().await;
    let mut cases = study_cases();
    cases.push(("ModalitiesInStudy=MR", Box::new(|_| true)));
    for (q, pred) in &cases {
        let (status, body, _) = get(&app, &format!("/dicom-web/studies?limit=30&{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        let mut expected: BTreeSet<String> = data
            .iter()
            .filter(|i| pred(i))
            .map(|i| i.study.clone())
            .collect();
        if q.starts_with("ModalitiesInStudy") {
            expected = data
                .iter()
                .filter(|i| i.modality == "MR")
                .map(|i| i.study.clone())
                .collect();
        }
        assert_eq!(uids(&body, "0020000D"), expected, "{q}");
    }
}

#[tokio::test]
async fn fuzzy_matching_is_per_name_component_prefix() {
    let (app, data) = loaded_app().await;
    let (_, body, _) = get(
        &app,
        "/dicom-web/studies?fuzzymatching=true&PatientName=ann&limit=30",
    )
    .await;
    let expected: BTreeSet<String> = data
        .iter()
        .filter(|i| {
            fold(i.patient_name)
                .split('^')
                .any(|c| c.starts_with("ANN"))
        })
        .map(|i| i.study.clone())
        .collect();
    assert_eq!(uids(&body, "0020000D"), expected);
    let (_, body, _) = get(
        &app,
        "/dicom-web/studies?fuzzymatching=true&PatientName=jur%20mul&limit=30",
    )
    .await;
    assert_eq!(
        uids(&body, "0020000D").len(),
        data.iter()
            .filter(|i| i.patient_name == "Müller^Jürgen")
            .map(|i| &i.study)
            .collect::<BTreeSet<_>>()
            .len()
    );
}

#[tokio::test]
async fn series_level_matching_in_a_study_and_across_studies() {
    let (app, data) = loaded_app().await;
    let series_cases: Vec<Case> = vec![
        ("Modality=CT", Box::new(|i| i.modality == "CT")),
        ("Modality=", Box::new(|_| true)),
        ("SeriesNumber=2", Box::new(|i| i.series_number == 2)),
        (
            "SeriesInstanceUID=1.2.826.0.1.3680043.8.498.3.2.1",
            Box::new(|i| i.series == "1.2.826.0.1.3680043.8.498.3.2.1"),
        ),
        ("SeriesDescription=MR*", Box::new(|i| i.modality == "MR")),
    ];
    let mut all = series_cases;
    all.extend(study_cases().into_iter().take(6)); // parent attributes are matchable at series level
    for (q, pred) in &all {
        let (status, body, _) = get(&app, &format!("/dicom-web/series?limit=30&{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        let expected: BTreeSet<String> = data
            .iter()
            .filter(|i| pred(i))
            .map(|i| i.series.clone())
            .collect();
        assert_eq!(uids(&body, "0020000E"), expected, "/series {q}");
    }
    let study = "1.2.826.0.1.3680043.8.498.3.2";
    let (_, body, _) = get(
        &app,
        &format!("/dicom-web/studies/{study}/series?Modality=CT"),
    )
    .await;
    let expected: BTreeSet<String> = data
        .iter()
        .filter(|i| i.study == study && i.modality == "CT")
        .map(|i| i.series.clone())
        .collect();
    assert_eq!(uids(&body, "0020000E"), expected);
    // every series result carries its study's attributes and the count
    for obj in body.as_array().unwrap() {
        assert_eq!(obj["0020000D"]["Value"][0], study);
        let n = data
            .iter()
            .filter(|i| i.series == obj["0020000E"]["Value"][0])
            .count();
        assert_eq!(obj["00201209"]["Value"][0], n);
    }
}

#[tokio::test]
async fn instance_level_matching_at_every_scope() {
    let (app, data) = loaded_app().await;
    let cases: Vec<Case> = vec![
        (
            "SOPClassUID=1.2.840.10008.5.1.4.1.1.4",
            Box::new(|i| i.sop_class == MR_STORAGE),
        ),
        ("InstanceNumber=2", Box::new(|i| i.instance_number == 2)),
        (
            "SOPInstanceUID=1.2.826.0.1.3680043.8.498.3.3.0.1",
            Box::new(|i| i.sop == "1.2.826.0.1.3680043.8.498.3.3.0.1"),
        ),
        ("Modality=US", Box::new(|i| i.modality == "US")),
        (
            "PatientName=doe*",
            Box::new(|i| fold(i.patient_name).starts_with("DOE")),
        ),
        (
            "StudyDate=20200101-20201231",
            Box::new(|i| ("20200101"..="20201231").contains(&i.study_date)),
        ),
    ];
    for (q, pred) in &cases {
        let (status, body, _) = get(&app, &format!("/dicom-web/instances?limit=30&{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        let expected: BTreeSet<String> = data
            .iter()
            .filter(|i| pred(i))
            .map(|i| i.sop.clone())
            .collect();
        assert_eq!(uids(&body, "00080018"), expected, "/instances {q}");
    }
    let study = "1.2.826.0.1.3680043.8.498.3.5";
    let (_, body, _) = get(
        &app,
        &format!("/dicom-web/studies/{study}/instances?limit=30"),
    )
    .await;
    let expected: BTreeSet<String> = data
        .iter()
        .filter(|i| i.study == study)
        .map(|i| i.sop.clone())
        .collect();
    assert_eq!(uids(&body, "00080018"), expected);
    let series = "1.2.826.0.1.3680043.8.498.3.5.1";
    let (_, body, _) = get(
        &app,
        &format!("/dicom-web/studies/{study}/series/{series}/instances?InstanceNumber=1"),
    )
    .await;
    let expected: BTreeSet<String> = data
        .iter()
        .filter(|i| i.series == series && i.instance_number == 1)
        .map(|i| i.sop.clone())
        .collect();
    assert_eq!(uids(&body, "00080018"), expected);
}

#[tokio::test]
async fn paging_has_no_duplicates_or_gaps_and_warns_when_cut() {
    let (app, data) = loaded_app().await;
    for (path, tag, count) in [
        (
            "/dicom-web/studies",
            "0020000D",
            data.iter().map(|i| &i.study).collect::<BTreeSet<_>>().len(),
        ),
        (
            "/dicom-web/series",
            "0020000E",
            data.iter()
                .map(|i| &i.series)
                .collect::<BTreeSet<_>>()
                .len(),
        ),
        ("/dicom-web/instances", "00080018", data.len()),
    ] {
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let (status, body, _) = get(&app, &format!("{path}?limit=4&offset={offset}")).await;
            assert_eq!(status, StatusCode::OK);
            let page = body.as_array().unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 4);
            seen.extend(
                page.iter()
                    .map(|o| o[tag]["Value"][0].as_str().unwrap().to_owned()),
            );
            offset += page.len();
        }
        let unique: BTreeSet<_> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{path}: no duplicates across pages"
        );
        assert_eq!(seen.len(), count, "{path}: no gaps");
        if path == "/dicom-web/studies" {
            // the documented order: newest first (one request stores the
            // studies in the order they first appear in it)
            let mut arrival: Vec<String> = Vec::new();
            for i in &data {
                if !arrival.contains(&i.study) {
                    arrival.push(i.study.clone());
                }
            }
            arrival.reverse();
            assert_eq!(seen, arrival, "studies newest first across pages");
        }
        // the same order every time
        let (_, first, _) = get(&app, &format!("{path}?limit=4&offset=0")).await;
        let (_, again, _) = get(&app, &format!("{path}?limit=4&offset=0")).await;
        assert_eq!(first, again);
    }
    // default page (5) and maximum (30) cut the answer with a warning; an explicit limit does not
    let (_, body, warning) = get(&app, "/dicom-web/studies").await;
    assert_eq!(body.as_array().unwrap().len(), 5);
    assert!(warning.unwrap().starts_with("299 "));
    assert!(data.len() > 30);
    let (_, body, warning) = get(&app, "/dicom-web/instances?limit=500").await;
    assert_eq!(body.as_array().unwrap().len(), 30);
    assert!(warning.is_some());
    let (_, _, warning) = get(&app, "/dicom-web/studies?limit=3").await;
    assert!(warning.is_none());
    let (_, body, warning) = get(&app, "/dicom-web/studies?limit=30&offset=1000").await;
    assert_eq!(body, json!([]), "past the end: 200 []");
    assert!(warning.is_none());
}

#[tokio::test]
async fn includefield_and_computed_attributes() {
    let (app, data) = loaded_app().await;
    let study = "1.2.826.0.1.3680043.8.498.3.5";
    let (_, body, _) = get(
        &app,
        &format!("/dicom-web/studies?StudyInstanceUID={study}&includefield=00081030%2C00080060"),
    )
    .await;
    let obj = &body[0];
    let mine: Vec<&Inst> = data.iter().filter(|i| i.study == study).collect();
    assert_eq!(obj["00201208"]["Value"][0], mine.len());
    assert_eq!(
        obj["00201206"]["Value"][0],
        mine.iter()
            .map(|i| &i.series)
            .collect::<BTreeSet<_>>()
            .len()
    );
    let mods: BTreeSet<&str> = mine.iter().map(|i| i.modality).collect();
    assert_eq!(
        obj["00080061"]["Value"],
        json!(mods.into_iter().collect::<Vec<_>>())
    );
    assert_eq!(obj["00081030"]["Value"][0], mine[0].description);
    assert_eq!(
        obj["00081190"]["Value"][0],
        format!("http://127.0.0.1:8080/dicom-web/studies/{study}")
    );

    // instance level: Manufacturer only with includefield (by keyword, tag or all)
    let base = format!("/dicom-web/studies/{study}/instances?limit=1");
    let (_, plain, _) = get(&app, &base).await;
    assert!(plain[0].get("00080070").is_none());
    for inc in [
        "Manufacturer",
        "00080070",
        "all",
        "StudyDate&includefield=Manufacturer",
    ] {
        let (_, body, _) = get(&app, &format!("{base}&includefield={inc}")).await;
        assert_eq!(body[0]["00080070"]["Value"][0], "ACME", "{inc}");
    }
    let (_, body, _) = get(&app, &format!("{base}&includefield=all")).await;
    assert!(
        body[0].get("7FE00010").is_none(),
        "no bulk data in QIDO answers"
    );
}

#[tokio::test]
async fn bad_queries_are_400_and_bad_accept_406() {
    let (app, _) = loaded_app().await;
    for q in [
        "Bogus=1",
        "Manufacturer=ACME",
        "StudyDate=2020-01-01",
        "StudyDate=20200231x",
        "StudyDate=20201231-20200101",
        "StudyTime=9999",
        "limit=abc",
        "offset=x",
        "includefield=NotAKeyword",
        "SeriesNumber=one",
        "StudyInstanceUID=1.2.abc",
        "SOPInstanceUID=1.2",
        "fuzzymatching=yes",
    ] {
        let (status, body, _) = get(&app, &format!("/dicom-web/studies?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{q}"
        );
    }
    let (status, _, _) = get(&app, "/dicom-web/studies/1.2.x/series").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let req = Request::get("/dicom-web/studies")
        .header(
            "accept",
            "multipart/related; type=\"application/dicom+xml\"",
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.request(req).await.status(), StatusCode::NOT_ACCEPTABLE);
    for accept in [
        "*/*",
        "application/json",
        "application/dicom+json, application/json",
    ] {
        let req = Request::get("/dicom-web/studies")
            .header("accept", accept)
            .body(Body::empty())
            .unwrap();
        let resp = app.request(req).await;
        assert_eq!(resp.status(), StatusCode::OK, "{accept}");
        assert_eq!(resp.headers()["content-type"], "application/dicom+json");
    }
}

#[tokio::test]
async fn no_match_is_200_with_an_empty_array_and_gzip_when_accepted() {
    let (app, _) = loaded_app().await;
    let (status, body, _) = get(&app, "/dicom-web/studies?PatientID=NOBODY").await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
    let req = Request::get("/dicom-web/instances?limit=30")
        .header("accept-encoding", "gzip")
        .body(Body::empty())
        .unwrap();
    let resp = app.request(req).await;
    assert_eq!(resp.headers()["content-encoding"], "gzip");
}

#[tokio::test]
async fn ohif_study_list_and_series_requests() {
    let (app, data) = loaded_app().await;
    let (status, body, _) = get(&app, "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030").await;
    assert_eq!(status, StatusCode::OK);
    // what OHIF shows in the list
    for obj in body.as_array().unwrap() {
        for tag in [
            "0020000D", "00080020", "00080030", "00080050", "00100020", "00100010", "00201208",
            "00080061",
        ] {
            assert!(obj.get(tag).is_some(), "{tag} in {obj}");
        }
    }
    let study = &data[0].study;
    let (status, body, _) = get(&app, &format!("/dicom-web/studies/{study}/series?includefield=00080021%2C00080031%2C0008103E%2C00200011")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body[0]["0008103E"]["Value"][0].as_str().is_some());
    let (_, body, _) = get(
        &app,
        "/dicom-web/studies?00100020=PID001&limit=101&offset=0&fuzzymatching=false",
    )
    .await;
    let expected: BTreeSet<String> = data
        .iter()
        .filter(|i| i.patient_id == "PID001")
        .map(|i| i.study.clone())
        .collect();
    assert_eq!(uids(&body, "0020000D"), expected);
}

/// The exact JSON of one entity per level (a snapshot written by hand from
/// the data model above): VR formatting and ordering cannot drift.
#[tokio::test]
async fn json_snapshots_of_each_level() {
    let (app, _) = loaded_app().await;
    let st = "1.2.826.0.1.3680043.8.498.3.3";
    let root = "http://127.0.0.1:8080/dicom-web";
    let study_part = json!({
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080020": {"vr": "DA", "Value": ["20210301"]},
        "00080030": {"vr": "TM", "Value": ["0930"]},
        "00080050": {"vr": "SH", "Value": ["ACC0003"]},
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080090": {"vr": "PN"},
        "00081030": {"vr": "LO", "Value": ["CT ABDOMEN"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doebler^Ann"}]},
        "00100020": {"vr": "LO", "Value": ["PID003"]},
        "00100030": {"vr": "DA", "Value": ["19800101"]},
        "0020000D": {"vr": "UI", "Value": [st]},
        "00200010": {"vr": "SH", "Value": ["S1"]},
    });
    let mut study = study_part.clone();
    study["00080061"] = json!({"vr": "CS", "Value": ["CT"]});
    study["00201206"] = json!({"vr": "IS", "Value": [1]});
    study["00201208"] = json!({"vr": "IS", "Value": [2]});
    study["00081190"] = json!({"vr": "UR", "Value": [format!("{root}/studies/{st}")]});
    let (_, body, _) = get(&app, &format!("/dicom-web/studies?StudyInstanceUID={st}")).await;
    assert_eq!(body, json!([study]));

    let se = format!("{st}.0");
    let mut series = study.clone();
    series["00080060"] = json!({"vr": "CS", "Value": ["CT"]});
    series["0008103E"] = json!({"vr": "LO", "Value": ["CT series"]});
    series["0020000E"] = json!({"vr": "UI", "Value": [se]});
    series["00200011"] = json!({"vr": "IS", "Value": [1]});
    series["00201209"] = json!({"vr": "IS", "Value": [2]});
    series["00081190"] = json!({"vr": "UR", "Value": [format!("{root}/studies/{st}/series/{se}")]});
    let (_, body, _) = get(&app, &format!("/dicom-web/studies/{st}/series")).await;
    assert_eq!(body, json!([series]));

    let sop = format!("{se}.0");
    let mut inst = series.clone();
    for k in ["00201206", "00201208", "00201209"] {
        inst.as_object_mut().unwrap().remove(k);
    }
    inst["00080016"] = json!({"vr": "UI", "Value": [CT_IMAGE_STORAGE]});
    inst["00080018"] = json!({"vr": "UI", "Value": [sop]});
    inst["00200013"] = json!({"vr": "IS", "Value": [1]});
    inst["00280008"] = json!({"vr": "IS", "Value": [1]});
    inst["00280010"] = json!({"vr": "US", "Value": [2]});
    inst["00280011"] = json!({"vr": "US", "Value": [2]});
    inst["00280100"] = json!({"vr": "US", "Value": [8]});
    inst["00081190"] =
        json!({"vr": "UR", "Value": [format!("{root}/studies/{st}/series/{se}/instances/{sop}")]});
    let (_, body, _) = get(
        &app,
        &format!("/dicom-web/studies/{st}/series/{se}/instances?InstanceNumber=1"),
    )
    .await;
    assert_eq!(body, json!([inst]));
}

/// Every index costs a write on every insert: no two indexes of a table
/// have the same key columns.
#[tokio::test]
async fn no_two_indexes_share_their_columns() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let app = TestApp::new().await;
    let db = app.state.archive.db.conn();
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT indexname AS name, indexdef AS def FROM pg_indexes WHERE schemaname = 'public'"
        }
        _ => "SELECT name, sql AS def FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    };
    let rows = db
        .query_all_raw(Statement::from_string(backend, sql))
        .await
        .unwrap();
    assert!(rows.len() > 20, "the indexes are listed");
    let mut seen = std::collections::HashMap::new();
    for row in rows {
        let name: String = row.try_get("", "name").unwrap();
        let def: String = row.try_get("", "def").unwrap();
        // "… ON table (columns)", without quotes, schema or access method
        let on = def.split_once(" ON ").map_or(def.as_str(), |(_, on)| on);
        let key: String = on
            .replace(['"', ' '], "")
            .replace("public.", "")
            .replace("USINGbtree", "");
        if let Some(other) = seen.insert(key.clone(), name.clone()) {
            panic!("{name} and {other} both index {key}");
        }
    }
}
