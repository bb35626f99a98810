//! conformance/CONFORMANCE.md against the code: every table marked
//! `<!-- check: NAME -->` is compared with what the server really does, so a
//! change of behaviour that does not update the statement (or the reverse)
//! fails with a diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloudpacs::archive::FailureReason;
use cloudpacs::dicom::query::{ATTRIBUTES, Kind, Level};
use cloudpacs::dicomweb::accept::frame_media_type;
use common::*;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

const STATEMENT: &str = include_str!("../conformance/CONFORMANCE.md");
const ROUTES_RS: &str = include_str!("../src/dicomweb/mod.rs");
const INSPECT_RS: &str = include_str!("../src/dicom/inspect.rs");

/// Attributes of the study, series and equipment modules that an instance
/// commonly carries, besides those in the table and in the server's lists of
/// kept attributes: the server must not return them unless the table says so.
const COMMON_ATTRIBUTES: &[&str] = &[
    "00080008", "00080012", "00080013", "00080022", "00080023", "00080032", "00080033", "00080070",
    "00080080", "00081010", "00081040", "00081090", "00180015", "00180050", "00200020", "00200032",
    "00200037", "00200052", "00201040", "00201041", "00321033", "00400253", "00400254",
];

/// The `GGGGEEEE` strings of a `const NAME: &[&str] = &[...]` in a source file.
fn const_tags(source: &str, name: &str) -> Vec<String> {
    let at = source
        .find(&format!("const {name}: &[&str] = &["))
        .unwrap_or_else(|| panic!("no const {name} in the source"));
    let body = &source[at..];
    let body = &body[body.find("= &[").unwrap() + 4..body.find("];").unwrap()];
    body.split(',')
        .map(|t| t.trim().trim_matches('"').to_owned())
        .filter(|t| t.len() == 8)
        .collect()
}

/// The rows (cells trimmed, backticks removed) of the table that follows
/// `<!-- check: NAME -->`, header and separator excluded.
fn table(name: &str) -> Vec<Vec<String>> {
    let marker = format!("<!-- check: {name} -->");
    let start = STATEMENT
        .find(&marker)
        .unwrap_or_else(|| panic!("CONFORMANCE.md has no `{marker}`"));
    let rows: Vec<Vec<String>> = STATEMENT[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect();
    assert!(
        rows.len() > 2,
        "the `{name}` table of CONFORMANCE.md is empty"
    );
    rows[2..].to_vec()
}

/// Fails with what is only in the statement and what is only in the code.
fn same<T: Ord + Debug + Clone>(what: &str, statement: &[T], code: &[T]) {
    let s: BTreeSet<T> = statement.iter().cloned().collect();
    let c: BTreeSet<T> = code.iter().cloned().collect();
    assert_eq!(
        s.len(),
        statement.len(),
        "{what}: CONFORMANCE.md lists a row twice"
    );
    let only_doc: Vec<_> = s.difference(&c).collect();
    let only_code: Vec<_> = c.difference(&s).collect();
    assert!(
        only_doc.is_empty() && only_code.is_empty(),
        "{what}: CONFORMANCE.md and the code disagree\n  only in CONFORMANCE.md: {only_doc:?}\n  only in the code:       {only_code:?}"
    );
}

#[test]
fn route_table_matches_src_dicomweb_mod_rs() {
    // `.route("/path", get(qido::x).post(stow::y))` in the route table
    let mut code = Vec::new();
    for line in ROUTES_RS.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix(".route(\"") else {
            continue;
        };
        let (path, handlers) = rest.split_once('"').unwrap();
        for part in handlers.split(['(', ')', '.', ',', ' ']) {
            let method = match part {
                "get" => "GET",
                "post" => "POST",
                "put" => "PUT",
                "delete" => "DELETE",
                _ => continue,
            };
            // the handler module names the service
            let after = handlers.split(&format!("{part}(")).nth(1).unwrap();
            let (module, handler) = after.split_once("::").unwrap();
            let service = match module.trim() {
                _ if handler.starts_with("delete_") => "non-standard",
                "qido" => "QIDO-RS",
                "stow" => "STOW-RS",
                "wado" => "WADO-RS",
                other => other,
            };
            code.push((method.to_owned(), path.to_owned(), service.to_owned()));
        }
    }
    assert!(
        !code.is_empty(),
        "no .route(...) found in src/dicomweb/mod.rs"
    );
    let doc: Vec<_> = table("routes")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    same("routes (method, path, service)", &doc, &code);
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Study => "study",
        Level::Series => "series",
        Level::Instance => "instance",
    }
}

fn matching_types(k: Kind) -> &'static str {
    match k {
        Kind::Uid => "single value, UID list",
        Kind::Date | Kind::Time => "single value, range",
        Kind::Text => "single value, wildcard",
        Kind::PersonName => "single value, wildcard, fuzzy",
        Kind::Integer => "single value",
    }
}

#[test]
fn matching_keys_match_query_attributes() {
    let code: Vec<_> = ATTRIBUTES
        .iter()
        .map(|a| {
            (
                a.keyword.to_owned(),
                a.tag.to_owned(),
                level_name(a.level).to_owned(),
                matching_types(a.kind).to_owned(),
            )
        })
        .collect();
    let doc: Vec<_> = table("matching-keys")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()))
        .collect();
    same(
        "QIDO matching keys (keyword, tag, level, matching)",
        &doc,
        &code,
    );
}

/// Every variant: the match makes a new variant a compile error here.
fn failure_reasons_in_code() -> Vec<FailureReason> {
    use FailureReason::*;
    let all = vec![
        OutOfResources,
        DataSetMismatch,
        StudyConflict,
        DuplicateInstance,
        CannotUnderstand,
        TransferSyntaxNotSupported,
        ProcessingFailure,
    ];
    for r in &all {
        match r {
            OutOfResources
            | DataSetMismatch
            | StudyConflict
            | DuplicateInstance
            | CannotUnderstand
            | TransferSyntaxNotSupported
            | ProcessingFailure => {}
        }
    }
    all
}

#[test]
fn failure_reasons_match_the_code() {
    let mut code: BTreeMap<String, String> = BTreeMap::new();
    for r in failure_reasons_in_code() {
        let status = if r.is_conflict() { "409" } else { "400" };
        let prev = code.insert(format!("0x{:04X}", r.code()), status.to_owned());
        assert!(
            prev.is_none() || prev.as_deref() == Some(status),
            "one code, two statuses"
        );
    }
    let code: Vec<_> = code.into_iter().collect();
    let doc: Vec<_> = table("failure-reasons")
        .into_iter()
        .map(|r| (r[0].clone(), r[2].clone()))
        .collect();
    same(
        "STOW failure reasons (code, status when no part is stored)",
        &doc,
        &code,
    );
}

#[test]
fn transfer_syntaxes_match_the_registry() {
    let code: Vec<_> = TransferSyntaxRegistry
        .iter()
        .filter(|ts| !ts.is_unsupported())
        .map(|ts| ts.uid().trim_end_matches('\0').to_owned())
        .collect();
    let doc: Vec<_> = table("transfer-syntaxes")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    same("accepted transfer syntaxes", &doc, &code);
    for r in table("transfer-syntaxes") {
        let ts = TransferSyntaxRegistry.get(&r[0]).unwrap();
        assert_eq!(ts.name(), r[1], "name of {}", r[0]);
        assert_eq!(
            frame_media_type(&r[0]),
            r[2],
            "media type of the frames of {}",
            r[0]
        );
    }
}

#[test]
fn server_limits_match_the_defaults() {
    let out = std::process::Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    for r in table("limits") {
        let flag = &r[1];
        let at = help
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("`cloudpacs serve --help` has no {flag}"));
        let rest = &help[at..];
        let next = rest[2..].find("\n      --").map_or(rest.len(), |i| i + 2);
        let default = rest[..next]
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next())
            .unwrap_or_else(|| panic!("{flag} has no default in --help"));
        assert_eq!(
            default, r[2],
            "default of {flag}: CONFORMANCE.md says {}, the code {default}",
            r[2]
        );
    }
}

/// A value of the VR of `tag`, for a data set that carries every attribute
/// of the return-attribute table.
fn element(tag: Tag) -> Option<DataElement<InMemDicomObject>> {
    let entry = StandardDataDictionary.by_tag(tag)?;
    let vr = entry.vr().relaxed();
    let value = match vr {
        VR::DA => PrimitiveValue::from("20240102"),
        VR::TM => PrimitiveValue::from("101010"),
        VR::PN => PrimitiveValue::from("Doe^Jane"),
        VR::IS => PrimitiveValue::from("3"),
        VR::DS => PrimitiveValue::from("1.5"),
        VR::UI => return None,
        VR::US => PrimitiveValue::from(1_u16),
        VR::CS => PrimitiveValue::from("ABC"),
        VR::SQ => {
            let item = InMemDicomObject::from_element_iter([DataElement::new(
                Tag(0x0008, 0x0100),
                VR::SH,
                PrimitiveValue::from("CODE"),
            )]);
            return Some(DataElement::new(
                tag,
                VR::SQ,
                dicom_core::value::DataSetSequence::from(vec![item]),
            ));
        }
        VR::SH if tag == Tag(0x0008, 0x0201) => PrimitiveValue::from("+0100"),
        _ => PrimitiveValue::from("value"),
    };
    Some(DataElement::new(tag, vr, value))
}

fn tag_of(hex: &str) -> Tag {
    Tag(
        u16::from_str_radix(&hex[..4], 16).unwrap(),
        u16::from_str_radix(&hex[4..], 16).unwrap(),
    )
}

/// Store one instance carrying every listed attribute (and a few patient
/// attributes), then compare what each QIDO level returns, by default, with
/// the return-attribute table: every row is returned, nothing else is.
#[tokio::test]
async fn return_attributes_match_qido_answers() {
    let rows = table("return-attributes");
    let mut obj = Synth::new(
        "1.2.826.0.1.3680043.10.1.1",
        "1.2.826.0.1.3680043.10.1.2",
        "1.2.826.0.1.3680043.10.1.3",
    )
    .frames(2)
    .dataset();
    // every attribute the table lists as stored, every attribute the server
    // keeps (src/dicom/inspect.rs) and common others
    let mut candidates: Vec<String> = rows
        .iter()
        .filter(|r| r[0].len() == 8 && !r[0].contains('x') && r[3] == "stored")
        .map(|r| r[0].clone())
        .collect();
    candidates.extend(const_tags(INSPECT_RS, "STUDY_KEYS"));
    candidates.extend(const_tags(INSPECT_RS, "SERIES_KEYS"));
    assert!(candidates.len() > 30, "STUDY_KEYS/SERIES_KEYS not found");
    candidates.extend(COMMON_ATTRIBUTES.iter().map(|t| t.to_string()));
    for t in &candidates {
        {
            let tag = tag_of(t);
            if obj.element(tag).is_err()
                && let Some(e) = element(tag)
            {
                obj.put(e);
            }
        }
    }
    for (tag, value) in [
        (Tag(0x0010, 0x0030), "19700101"),
        (Tag(0x0010, 0x0040), "F"),
        (Tag(0x0010, 0x1010), "054Y"),
    ] {
        obj.put(DataElement::new(
            tag,
            StandardDataDictionary.by_tag(tag).unwrap().vr().relaxed(),
            PrimitiveValue::from(value),
        ));
    }
    let app = TestApp::new().await;
    let (status, resp) = app
        .stow(
            "/dicom-web/studies",
            multipart(&[part10(obj, "1.2.826.0.1.3680043.10.1.3")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");

    for level in ["study", "series", "instance"] {
        let path = match level {
            "study" => "/dicom-web/studies",
            "series" => "/dicom-web/series",
            _ => "/dicom-web/instances",
        };
        let resp = app
            .request(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let answer = json_body(resp).await;
        let got: Vec<String> = answer[0].as_object().unwrap().keys().cloned().collect();
        let listed: Vec<&Vec<String>> = rows
            .iter()
            .filter(|r| r[2].split(", ").any(|l| l == level))
            .collect();
        let matches = |key: &str, pattern: &str| {
            pattern.len() == 8
                && key
                    .chars()
                    .zip(pattern.chars())
                    .all(|(k, p)| p == 'x' || k == p)
        };
        let unlisted: Vec<&String> = got
            .iter()
            .filter(|k| !listed.iter().any(|r| matches(k, &r[0])))
            .collect();
        let missing: Vec<&String> = listed
            .iter()
            .filter(|r| !r[0].contains('x') && !got.contains(&r[0]))
            .map(|r| &r[0])
            .collect();
        assert!(
            unlisted.is_empty() && missing.is_empty(),
            "QIDO {level} return attributes: CONFORMANCE.md and the server disagree\n  returned but not listed: {unlisted:?}\n  listed but not returned: {missing:?}"
        );
    }
}
