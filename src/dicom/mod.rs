//! DICOM helpers over dicom-rs: UID validation, inspection of a Part-10 file
//! (index attributes, metadata JSON with BulkDataURIs, byte layout of the
//! pixel data and of every frame).
//!
//! Depends on nothing else in the crate; knows nothing of HTTP or storage.

pub mod inspect;
pub mod json;
pub mod layout;
pub mod query;
pub mod uid;

pub use inspect::{InspectError, Inspected, inspect, inspect_file};
pub use uid::Uid;

/// Well-known DICOM tags used across the crate, as `(group, element)` keys of
/// DICOM JSON (`GGGGEEEE`).
pub mod keys {
    pub const SOP_CLASS_UID: &str = "00080016";
    pub const SOP_INSTANCE_UID: &str = "00080018";
    pub const STUDY_DATE: &str = "00080020";
    pub const STUDY_TIME: &str = "00080030";
    pub const ACCESSION_NUMBER: &str = "00080050";
    pub const MODALITY: &str = "00080060";
    pub const MODALITIES_IN_STUDY: &str = "00080061";
    pub const REFERRING_PHYSICIAN_NAME: &str = "00080090";
    pub const RETRIEVE_URL: &str = "00081190";
    pub const PATIENT_NAME: &str = "00100010";
    pub const PATIENT_ID: &str = "00100020";
    pub const STUDY_INSTANCE_UID: &str = "0020000D";
    pub const SERIES_INSTANCE_UID: &str = "0020000E";
    pub const NUMBER_OF_STUDY_RELATED_SERIES: &str = "00201206";
    pub const NUMBER_OF_STUDY_RELATED_INSTANCES: &str = "00201208";
    pub const NUMBER_OF_SERIES_RELATED_INSTANCES: &str = "00201209";
}

/// Fold a person name for case- and accent-insensitive matching: upper case,
/// Latin accents removed, only the alphabetic component group kept.
pub fn normalize_person_name(name: &str) -> String {
    let alphabetic = name.split('=').next().unwrap_or_default();
    let mut out = String::with_capacity(alphabetic.len());
    for c in alphabetic.trim().chars() {
        let folded = match c {
            'À'..='Å' | 'à'..='å' => "A",
            'Ç' | 'ç' => "C",
            'È'..='Ë' | 'è'..='ë' => "E",
            'Ì'..='Ï' | 'ì'..='ï' => "I",
            'Ñ' | 'ñ' => "N",
            'Ò'..='Ö' | 'Ø' | 'ò'..='ö' | 'ø' => "O",
            'Ù'..='Ü' | 'ù'..='ü' => "U",
            'Ý' | 'ý' | 'ÿ' => "Y",
            'ß' => "SS",
            'Æ' | 'æ' => "AE",
            _ => {
                out.extend(c.to_uppercase());
                continue;
            }
        };
        out.push_str(folded);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize_person_name;

    #[test]
    fn person_names_fold_case_and_accents() {
        assert_eq!(normalize_person_name("Müller^José"), "MULLER^JOSE");
        assert_eq!(
            normalize_person_name("Yamada^Tarou=山田^太郎"),
            "YAMADA^TAROU"
        );
        assert_eq!(normalize_person_name(" doe^jane "), "DOE^JANE");
    }
}
