//! QIDO-RS answers: the DICOM JSON object of each matching study, series or
//! instance, from the index (stored attribute JSON + computed attributes),
//! never from the stored files.

use entity::{instance, series, study};
use serde_json::{Map, Value, json};

use crate::db::{DbError, HospitalDb, Search};
use crate::dicom::keys;
use crate::dicom::query::Level;

/// Which attributes to return besides the defaults (PS3.18 §8.3.4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Include {
    /// The default return attributes of the level.
    Default,
    /// Every non-bulk attribute known at the level.
    All,
    /// The defaults plus these tags (`GGGGEEEE`).
    Tags(Vec<String>),
}

/// URLs of the DICOMweb root, for RetrieveURL.
pub trait RetrieveUrls {
    fn study_url(&self, study: &str) -> String;
    fn series_url(&self, study: &str, series: &str) -> String;
    fn instance_url(&self, study: &str, series: &str, sop: &str) -> String;
}

fn parse_object(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn is_value(n: i64) -> Value {
    json!({"vr": "IS", "Value": [n]})
}

fn study_json(s: &study::Model, urls: &dyn RetrieveUrls) -> Map<String, Value> {
    let mut m = parse_object(&s.attributes);
    let modalities: Vec<&str> = s
        .modalities_in_study
        .split('\\')
        .filter(|m| !m.is_empty())
        .collect();
    m.insert(
        keys::MODALITIES_IN_STUDY.into(),
        if modalities.is_empty() {
            json!({"vr": "CS"})
        } else {
            json!({"vr": "CS", "Value": modalities})
        },
    );
    m.insert(
        keys::NUMBER_OF_STUDY_RELATED_SERIES.into(),
        is_value(s.number_of_series.into()),
    );
    m.insert(
        keys::NUMBER_OF_STUDY_RELATED_INSTANCES.into(),
        is_value(s.number_of_instances.into()),
    );
    m.insert(
        keys::RETRIEVE_URL.into(),
        json!({"vr": "UR", "Value": [urls.study_url(&s.study_uid)]}),
    );
    m.insert("00080056".into(), json!({"vr": "CS", "Value": ["ONLINE"]}));
    m
}

fn series_json(
    se: &series::Model,
    st: &study::Model,
    urls: &dyn RetrieveUrls,
) -> Map<String, Value> {
    let mut m = study_json(st, urls);
    m.extend(parse_object(&se.attributes));
    m.insert(
        keys::NUMBER_OF_SERIES_RELATED_INSTANCES.into(),
        is_value(se.number_of_instances.into()),
    );
    m.insert(
        keys::RETRIEVE_URL.into(),
        json!({"vr": "UR", "Value": [urls.series_url(&st.study_uid, &se.series_uid)]}),
    );
    m
}

fn instance_json(
    i: &instance::Model,
    se: &series::Model,
    st: &study::Model,
    urls: &dyn RetrieveUrls,
    include: &Include,
) -> Map<String, Value> {
    let mut m = series_json(se, st, urls);
    m.remove(keys::NUMBER_OF_SERIES_RELATED_INSTANCES);
    m.remove(keys::NUMBER_OF_STUDY_RELATED_SERIES);
    m.remove(keys::NUMBER_OF_STUDY_RELATED_INSTANCES);
    let us = |v: Option<i32>| v.map_or(json!({"vr": "US"}), |v| json!({"vr": "US", "Value": [v]}));
    m.insert(
        keys::SOP_CLASS_UID.into(),
        json!({"vr": "UI", "Value": [i.sop_class_uid]}),
    );
    m.insert(
        keys::SOP_INSTANCE_UID.into(),
        json!({"vr": "UI", "Value": [i.sop_uid]}),
    );
    m.insert(
        "00200013".into(),
        i.instance_number
            .map_or(json!({"vr": "IS"}), |n| is_value(n.into())),
    );
    m.insert("00280010".into(), us(i.rows));
    m.insert("00280011".into(), us(i.columns));
    m.insert("00280100".into(), us(i.bits_allocated));
    if i.number_of_frames > 0 {
        m.insert("00280008".into(), is_value(i.number_of_frames.into()));
    }
    m.insert(
        keys::RETRIEVE_URL.into(),
        json!({"vr": "UR", "Value": [urls.instance_url(&st.study_uid, &se.series_uid, &i.sop_uid)]}),
    );
    let wanted = |k: &str| match include {
        Include::Default => false,
        Include::All => true,
        Include::Tags(tags) => tags.iter().any(|t| t == k),
    };
    if *include != Include::Default {
        for (k, v) in parse_object(&i.metadata) {
            if wanted(&k) && v.get("BulkDataURI").is_none() && !m.contains_key(&k) {
                m.insert(k, v);
            }
        }
    }
    m
}

/// Run a search and render the matches as DICOM JSON objects.
pub async fn search(
    scope: &HospitalDb,
    level: Level,
    search: &Search,
    include: &Include,
    urls: &(dyn RetrieveUrls + Sync),
) -> Result<Vec<Map<String, Value>>, DbError> {
    Ok(match level {
        Level::Study => scope
            .search_studies(search)
            .await?
            .iter()
            .map(|s| study_json(s, urls))
            .collect(),
        Level::Series => scope
            .search_series(search)
            .await?
            .iter()
            .map(|(se, st)| series_json(se, st, urls))
            .collect(),
        Level::Instance => scope
            .search_instances(search)
            .await?
            .iter()
            .map(|(i, se, st)| instance_json(i, se, st, urls, include))
            .collect(),
    })
}
