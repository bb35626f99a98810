//! DICOM JSON (PS3.18 Annex F) of a data set, the way cloudpacs stores and
//! serves it: bulk values as relative `BulkDataURI`s (the element's path,
//! completed into a URL when served), IS and DS as JSON numbers.
//!
//! dicom-json writes every element but inlines bulk data as base64 and
//! writes IS/DS as strings; this wraps it for both.

use std::collections::HashSet;

use dicom_core::header::Header;
use dicom_core::{DicomValue, Tag, VR};
use dicom_object::InMemDicomObject;
use serde_json::{Map, Value, json};

use super::layout::{element_path, tag_key};

/// Serialize `obj`; `bulk` holds the paths of values to reference by URI.
pub fn dataset_to_json(obj: &InMemDicomObject, bulk: &HashSet<String>) -> Map<String, Value> {
    let mut parents = Vec::new();
    walk(obj, bulk, &mut parents)
}

fn walk(
    obj: &InMemDicomObject,
    bulk: &HashSet<String>,
    parents: &mut Vec<(Tag, usize)>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for elem in obj {
        let tag = elem.tag();
        if tag.0 == 0x0002 || tag.1 == 0x0000 {
            // file meta and group lengths are not part of the data set's JSON
            continue;
        }
        let key = tag_key(tag);
        let value = match elem.value() {
            DicomValue::Sequence(seq) => {
                let items: Vec<Value> = seq
                    .items()
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        parents.push((tag, i));
                        let v = Value::Object(walk(item, bulk, parents));
                        parents.pop();
                        v
                    })
                    .collect();
                if items.is_empty() {
                    json!({"vr": "SQ"})
                } else {
                    json!({"vr": "SQ", "Value": items})
                }
            }
            DicomValue::PixelSequence(_) => bulk_ref(elem.vr(), element_path(parents, tag)),
            DicomValue::Primitive(_) => {
                let path = (!bulk.is_empty()).then(|| element_path(parents, tag));
                match path {
                    Some(path) if bulk.contains(&path) => bulk_ref(elem.vr(), path),
                    _ => match dicom_json::to_value(elem) {
                        Ok(v) => numbers_for_decimal_strings(elem.vr(), v),
                        // an element dicom-json cannot express is left out
                        Err(_) => continue,
                    },
                }
            }
        };
        out.insert(key, value);
    }
    out
}

/// A `BulkDataURI` element; the URI is relative until served.
pub fn bulk_ref(vr: VR, path: String) -> Value {
    json!({"vr": vr.to_string(), "BulkDataURI": path})
}

/// PS3.18 F.2.3: IS and DS values are JSON numbers. A value that does not
/// parse as a number is kept as written.
fn numbers_for_decimal_strings(vr: VR, mut v: Value) -> Value {
    if !matches!(vr, VR::IS | VR::DS) {
        return v;
    }
    if let Some(Value::Array(values)) = v.get_mut("Value") {
        for item in values.iter_mut() {
            let Value::String(s) = item else { continue };
            let s = s.trim();
            let number = if vr == VR::IS {
                s.parse::<i64>().ok().map(Value::from)
            } else {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(Value::from)
            };
            match number {
                Some(n) => *item = n,
                None if s.is_empty() => *item = Value::Null,
                None => {}
            }
        }
    }
    v
}

/// First value of a string-like element, trimmed; PN as its Alphabetic group.
pub fn first_string(json: &Map<String, Value>, key: &str) -> Option<String> {
    let first = json.get(key)?.get("Value")?.get(0)?;
    let s = match first {
        Value::String(s) => s.trim().to_owned(),
        Value::Object(pn) => pn.get("Alphabetic")?.as_str()?.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// All values of a string-like element joined by backslash (DICOM's own
/// multi-value separator).
pub fn all_strings(json: &Map<String, Value>, key: &str) -> Option<String> {
    let values = json.get(key)?.get("Value")?.as_array()?;
    let joined: Vec<&str> = values
        .iter()
        .filter_map(|v| v.as_str())
        .map(str::trim)
        .collect();
    let s = joined.join("\\");
    (!s.is_empty()).then_some(s)
}

/// First value of a numeric element.
pub fn first_int(json: &Map<String, Value>, key: &str) -> Option<i64> {
    match json.get(key)?.get("Value")?.get(0)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, dicom_value};
    use dicom_dictionary_std::tags;

    #[test]
    fn decimal_strings_become_numbers_and_bulk_becomes_uri() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::INSTANCE_NUMBER,
            VR::IS,
            dicom_value!(Str, " 12"),
        ));
        obj.put(DataElement::new(
            tags::SLICE_THICKNESS,
            VR::DS,
            dicom_value!(Str, "5.000000"),
        ));
        obj.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            dicom_value!(Str, "Doe^Jane"),
        ));
        obj.put(DataElement::new(
            Tag(0x0009, 0x1010),
            VR::OB,
            PrimitiveValue::U8(vec![1; 2000].into()),
        ));
        let bulk: HashSet<String> = ["00091010".to_owned()].into();
        let json = dataset_to_json(&obj, &bulk);
        assert_eq!(json["00200013"], json!({"vr": "IS", "Value": [12]}));
        assert_eq!(json["00180050"], json!({"vr": "DS", "Value": [5.0]}));
        assert_eq!(
            json["00100010"],
            json!({"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]})
        );
        assert_eq!(
            json["00091010"],
            json!({"vr": "OB", "BulkDataURI": "00091010"})
        );
        assert_eq!(first_string(&json, "00100010").as_deref(), Some("Doe^Jane"));
        assert_eq!(first_int(&json, "00200013"), Some(12));
    }
}
