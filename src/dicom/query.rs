//! The typed QIDO-RS query (PS3.18 §8.3.4, PS3.4 C.2.2.2): which attributes
//! can be matched at which level, and how a query value becomes a match.
//! Built by `dicomweb::query` from URL parameters; turned into SQL only by
//! `db::search`.

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;

use super::normalize_person_name;

/// A query/retrieve level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Study,
    Series,
    Instance,
}

/// How values of an attribute are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UID: single value or list.
    Uid,
    /// DA: single value or range.
    Date,
    /// TM: single value or range.
    Time,
    /// Text (LO, SH, CS): single value or wildcard; case-sensitive.
    Text,
    /// PN: single value or wildcard; case- and accent-insensitive.
    PersonName,
    /// IS: single value.
    Integer,
}

/// The index column (or computed value) an attribute is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    StudyUid,
    StudyDate,
    StudyTime,
    AccessionNumber,
    ModalitiesInStudy,
    ReferringPhysicianName,
    PatientName,
    PatientId,
    PatientBirthDate,
    PatientSex,
    StudyId,
    StudyDescription,
    SeriesUid,
    Modality,
    SeriesNumber,
    SeriesDescription,
    SeriesDate,
    PpsStartDate,
    PpsStartTime,
    SopUid,
    SopClassUid,
    InstanceNumber,
}

/// A matchable attribute.
#[derive(Debug, PartialEq, Eq)]
pub struct Attr {
    pub keyword: &'static str,
    /// `GGGGEEEE`
    pub tag: &'static str,
    pub level: Level,
    pub kind: Kind,
    pub field: Field,
}

const fn attr(
    keyword: &'static str,
    tag: &'static str,
    level: Level,
    kind: Kind,
    field: Field,
) -> Attr {
    Attr {
        keyword,
        tag,
        level,
        kind,
        field,
    }
}

/// Every matching key: the required keys of PS3.18 Table 10.6.1-5 plus a
/// few common ones. Anything else is answered with 400, never ignored.
pub static ATTRIBUTES: &[Attr] = &[
    attr(
        "StudyDate",
        "00080020",
        Level::Study,
        Kind::Date,
        Field::StudyDate,
    ),
    attr(
        "StudyTime",
        "00080030",
        Level::Study,
        Kind::Time,
        Field::StudyTime,
    ),
    attr(
        "AccessionNumber",
        "00080050",
        Level::Study,
        Kind::Text,
        Field::AccessionNumber,
    ),
    attr(
        "ModalitiesInStudy",
        "00080061",
        Level::Study,
        Kind::Text,
        Field::ModalitiesInStudy,
    ),
    attr(
        "ReferringPhysicianName",
        "00080090",
        Level::Study,
        Kind::PersonName,
        Field::ReferringPhysicianName,
    ),
    attr(
        "StudyDescription",
        "00081030",
        Level::Study,
        Kind::Text,
        Field::StudyDescription,
    ),
    attr(
        "PatientName",
        "00100010",
        Level::Study,
        Kind::PersonName,
        Field::PatientName,
    ),
    attr(
        "PatientID",
        "00100020",
        Level::Study,
        Kind::Text,
        Field::PatientId,
    ),
    attr(
        "PatientBirthDate",
        "00100030",
        Level::Study,
        Kind::Date,
        Field::PatientBirthDate,
    ),
    attr(
        "PatientSex",
        "00100040",
        Level::Study,
        Kind::Text,
        Field::PatientSex,
    ),
    attr(
        "StudyInstanceUID",
        "0020000D",
        Level::Study,
        Kind::Uid,
        Field::StudyUid,
    ),
    attr(
        "StudyID",
        "00200010",
        Level::Study,
        Kind::Text,
        Field::StudyId,
    ),
    attr(
        "SeriesDate",
        "00080021",
        Level::Series,
        Kind::Date,
        Field::SeriesDate,
    ),
    attr(
        "Modality",
        "00080060",
        Level::Series,
        Kind::Text,
        Field::Modality,
    ),
    attr(
        "SeriesDescription",
        "0008103E",
        Level::Series,
        Kind::Text,
        Field::SeriesDescription,
    ),
    attr(
        "SeriesInstanceUID",
        "0020000E",
        Level::Series,
        Kind::Uid,
        Field::SeriesUid,
    ),
    attr(
        "SeriesNumber",
        "00200011",
        Level::Series,
        Kind::Integer,
        Field::SeriesNumber,
    ),
    attr(
        "PerformedProcedureStepStartDate",
        "00400244",
        Level::Series,
        Kind::Date,
        Field::PpsStartDate,
    ),
    attr(
        "PerformedProcedureStepStartTime",
        "00400245",
        Level::Series,
        Kind::Time,
        Field::PpsStartTime,
    ),
    attr(
        "SOPClassUID",
        "00080016",
        Level::Instance,
        Kind::Uid,
        Field::SopClassUid,
    ),
    attr(
        "SOPInstanceUID",
        "00080018",
        Level::Instance,
        Kind::Uid,
        Field::SopUid,
    ),
    attr(
        "InstanceNumber",
        "00200013",
        Level::Instance,
        Kind::Integer,
        Field::InstanceNumber,
    ),
];

/// How one attribute is matched (PS3.4 C.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Empty value: every entity matches; the attribute is returned.
    Universal,
    /// Exact value (PN: folded).
    Single(String),
    /// `*` and `?` wildcards (PN: folded). Matched with SQL LIKE.
    Wildcard(String),
    /// Inclusive range; an open end is `None`.
    Range(Option<String>, Option<String>),
    /// A list of UIDs.
    UidList(Vec<String>),
    Integer(i64),
    /// `fuzzymatching=true` on a PN: every word of the query is a prefix of
    /// a name component (folded).
    Fuzzy(Vec<String>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("unknown attribute {0:?}")]
    UnknownAttribute(String),
    #[error("matching on {0} is not supported")]
    UnsupportedAttribute(String),
    #[error("{0} cannot be matched at the {1:?} level")]
    WrongLevel(&'static str, Level),
    #[error("invalid value for {0}: {1}")]
    InvalidValue(&'static str, String),
}

/// Resolve a query key (keyword or `GGGGEEEE` tag) to a DICOM tag key.
pub fn resolve_tag(key: &str) -> Result<String, QueryError> {
    if key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(key.to_ascii_uppercase());
    }
    match StandardDataDictionary.by_name(key) {
        Some(entry) => {
            let Tag(g, e) = entry.tag_range().inner();
            Ok(format!("{g:04X}{e:04X}"))
        }
        None => Err(QueryError::UnknownAttribute(key.to_owned())),
    }
}

/// The matchable attribute of a query key.
pub fn find_attr(key: &str) -> Result<&'static Attr, QueryError> {
    let tag = resolve_tag(key)?;
    ATTRIBUTES.iter().find(|a| a.tag == tag).ok_or_else(|| {
        let name = StandardDataDictionary
            .by_tag(Tag(
                u16::from_str_radix(&tag[..4], 16).unwrap_or(0),
                u16::from_str_radix(&tag[4..], 16).unwrap_or(0),
            ))
            .map_or(tag.clone(), |e| e.alias().to_owned());
        QueryError::UnsupportedAttribute(name)
    })
}

fn has_wildcard(v: &str) -> bool {
    v.contains(['*', '?'])
}

fn valid_date(d: &str) -> bool {
    d.len() == 8
        && d.bytes().all(|b| b.is_ascii_digit())
        && (1..=12).contains(&d[4..6].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&d[6..8].parse::<u32>().unwrap_or(0))
}

fn valid_time(t: &str) -> bool {
    let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
    let ok_len = matches!(hms.len(), 2 | 4 | 6);
    ok_len
        && hms.bytes().all(|b| b.is_ascii_digit())
        && hms[..2].parse::<u32>().is_ok_and(|h| h < 24)
        && (hms.len() < 4 || hms[2..4].parse::<u32>().is_ok_and(|m| m < 60))
        && (hms.len() < 6 || hms[4..6].parse::<u32>().is_ok_and(|s| s < 61))
        && frac.len() <= 6
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Parse the value of one query key into a match.
pub fn parse_match(attr: &'static Attr, raw: &str, fuzzy: bool) -> Result<Match, QueryError> {
    let value = raw.trim();
    if value.is_empty() {
        return Ok(Match::Universal);
    }
    let invalid = |why: &str| QueryError::InvalidValue(attr.keyword, why.to_owned());
    match attr.kind {
        Kind::Uid => {
            let uids: Vec<String> = value
                .split(['\\', ','])
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            for u in &uids {
                super::Uid::parse(u).map_err(|e| invalid(&e.to_string()))?;
            }
            Ok(if uids.len() == 1 {
                Match::Single(uids[0].clone())
            } else {
                Match::UidList(uids)
            })
        }
        Kind::Date | Kind::Time => {
            let valid = if attr.kind == Kind::Date {
                valid_date
            } else {
                valid_time
            };
            let what = if attr.kind == Kind::Date {
                "a date YYYYMMDD or a range"
            } else {
                "a time HHMMSS or a range"
            };
            match value.split_once('-') {
                Some((from, to)) => {
                    let from = (!from.is_empty()).then(|| from.to_owned());
                    let to = (!to.is_empty()).then(|| to.to_owned());
                    if from.is_none() && to.is_none() {
                        return Err(invalid(what));
                    }
                    if from.iter().chain(to.iter()).any(|v| !valid(v)) {
                        return Err(invalid(what));
                    }
                    if let (Some(a), Some(b)) = (&from, &to)
                        && a > b
                    {
                        return Err(invalid("the range ends before it starts"));
                    }
                    Ok(Match::Range(from, to))
                }
                None if valid(value) => Ok(Match::Single(value.to_owned())),
                None => Err(invalid(what)),
            }
        }
        Kind::Integer => value
            .parse::<i64>()
            .map(Match::Integer)
            .map_err(|_| invalid("an integer")),
        Kind::PersonName => {
            let folded = normalize_person_name(value);
            if fuzzy {
                let words: Vec<String> = folded
                    .split([' ', '^', ','])
                    .map(|w| w.trim_matches(['*', '?']).to_owned())
                    .filter(|w| !w.is_empty())
                    .collect();
                if !words.is_empty() {
                    return Ok(Match::Fuzzy(words));
                }
            }
            Ok(if has_wildcard(&folded) {
                Match::Wildcard(folded)
            } else {
                Match::Single(folded)
            })
        }
        Kind::Text => {
            if attr.field == Field::ModalitiesInStudy {
                let codes: Vec<String> = value
                    .split(['\\', ','])
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty())
                    .collect();
                if codes.iter().any(|c| has_wildcard(c)) {
                    return Err(invalid("wildcards are not supported for ModalitiesInStudy"));
                }
                return Ok(Match::UidList(codes));
            }
            Ok(if has_wildcard(value) {
                Match::Wildcard(value.to_owned())
            } else {
                Match::Single(value.to_owned())
            })
        }
    }
}

/// A SQL LIKE pattern from a DICOM wildcard value: `*` -> `%`, `?` -> `_`,
/// and `%`, `_` and the escape character `\` in the value escaped with `\`.
pub fn like_pattern(wildcard: &str) -> String {
    let mut out = String::with_capacity(wildcard.len() + 4);
    for c in wildcard.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(key: &str) -> &'static Attr {
        find_attr(key).unwrap()
    }

    #[test]
    fn keys_by_keyword_or_tag() {
        assert_eq!(a("PatientName").tag, "00100010");
        assert_eq!(a("00100020").keyword, "PatientID");
        assert_eq!(a("0020000d").keyword, "StudyInstanceUID");
        assert!(matches!(
            find_attr("NoSuchThing"),
            Err(QueryError::UnknownAttribute(_))
        ));
        assert!(
            matches!(find_attr("Manufacturer"), Err(QueryError::UnsupportedAttribute(n)) if n == "Manufacturer")
        );
    }

    #[test]
    fn matching_types() {
        assert_eq!(
            parse_match(a("PatientName"), "", false),
            Ok(Match::Universal)
        );
        assert_eq!(
            parse_match(a("PatientName"), "müller*", false),
            Ok(Match::Wildcard("MULLER*".into()))
        );
        assert_eq!(
            parse_match(a("PatientName"), "doe^jo", true),
            Ok(Match::Fuzzy(vec!["DOE".into(), "JO".into()]))
        );
        assert_eq!(
            parse_match(a("StudyDate"), "20200101-", false),
            Ok(Match::Range(Some("20200101".into()), None))
        );
        assert_eq!(
            parse_match(a("StudyDate"), "-20200101", false),
            Ok(Match::Range(None, Some("20200101".into())))
        );
        assert_eq!(
            parse_match(a("StudyDate"), "20200101", false),
            Ok(Match::Single("20200101".into()))
        );
        assert!(parse_match(a("StudyDate"), "2020-01-01", false).is_err());
        assert!(parse_match(a("StudyDate"), "20201301", false).is_err());
        assert!(parse_match(a("StudyDate"), "20200102-20200101", false).is_err());
        assert!(parse_match(a("StudyDate"), "-", false).is_err());
        assert_eq!(
            parse_match(a("StudyTime"), "0800-1230", false),
            Ok(Match::Range(Some("0800".into()), Some("1230".into())))
        );
        assert!(parse_match(a("StudyTime"), "2500", false).is_err());
        assert_eq!(
            parse_match(a("StudyInstanceUID"), "1.2\\1.3", false),
            Ok(Match::UidList(vec!["1.2".into(), "1.3".into()]))
        );
        assert_eq!(
            parse_match(a("StudyInstanceUID"), "1.2,1.3", false),
            Ok(Match::UidList(vec!["1.2".into(), "1.3".into()]))
        );
        assert!(parse_match(a("StudyInstanceUID"), "1.2.x", false).is_err());
        assert_eq!(
            parse_match(a("SeriesNumber"), "3", false),
            Ok(Match::Integer(3))
        );
        assert!(parse_match(a("SeriesNumber"), "three", false).is_err());
        assert_eq!(
            parse_match(a("ModalitiesInStudy"), "CT\\MR", false),
            Ok(Match::UidList(vec!["CT".into(), "MR".into()]))
        );
    }

    #[test]
    fn like_escapes_sql_wildcards() {
        assert_eq!(like_pattern("DOE*"), "DOE%");
        assert_eq!(like_pattern("A?C"), "A_C");
        assert_eq!(like_pattern("50%_off\\x*"), "50\\%\\_off\\\\x%");
    }

    proptest! {
        #[test]
        fn like_patterns_have_no_unescaped_sql_wildcards_except_from_dicom_ones(s in ".{0,40}") {
            let p = like_pattern(&s);
            let wild = s.chars().filter(|c| *c == '*' || *c == '?').count();
            // count % and _ not preceded by an escape
            let mut unescaped = 0;
            let mut escaped = false;
            for c in p.chars() {
                if escaped { escaped = false; continue; }
                if c == '\\' { escaped = true; continue; }
                if c == '%' || c == '_' { unescaped += 1; }
            }
            prop_assert_eq!(unescaped, wild);
        }

        #[test]
        fn date_parsing_never_panics(s in ".{0,30}") {
            let _ = parse_match(find_attr("StudyDate").unwrap(), &s, false);
            let _ = parse_match(find_attr("StudyTime").unwrap(), &s, false);
        }
    }
}
