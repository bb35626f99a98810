//! QIDO-RS query parameters -> a typed search (PS3.18 §8.3.4): matching
//! keys by keyword or tag, `includefield`, `fuzzymatching`, `limit`,
//! `offset`. Anything not understood is a 400 with a readable message.

use crate::archive::search::Include;
use crate::db::Search;
use crate::dicom::query::{Level, find_attr, parse_match, resolve_tag};
use crate::error::ApiError;

/// Limits on result pages.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    /// Results per page when the request gives no `limit`.
    pub default_limit: u64,
    /// The most results one request returns.
    pub max_limit: u64,
}

/// A parsed QIDO request.
#[derive(Debug, Clone)]
pub struct QidoQuery {
    pub search: Search,
    pub include: Include,
    /// The server's default or maximum cut the answer short (-> Warning 299)
    /// if more rows exist than `search.limit`.
    pub server_limited: bool,
}

pub fn parse(raw: Option<&str>, level: Level, paging: Paging) -> Result<QidoQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
    let bad = |m: String| ApiError::BadRequest(m);

    let mut fuzzy = false;
    for (k, v) in &pairs {
        if k == "fuzzymatching" {
            fuzzy = match v.as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(bad(format!(
                        "fuzzymatching must be true or false, not {other:?}"
                    )));
                }
            };
        }
    }

    let mut search = Search {
        filters: Vec::new(),
        study_uid: None,
        series_uid: None,
        limit: 0,
        offset: 0,
    };
    let mut include = Include::Default;
    let mut limit = None;
    for (key, value) in &pairs {
        match key.as_str() {
            "fuzzymatching" => {}
            "limit" => {
                limit = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad(format!("limit must be a number, not {value:?}")))?,
                )
            }
            "offset" => {
                search.offset = value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("offset must be a number, not {value:?}")))?
            }
            "includefield" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if field == "all" {
                        include = Include::All;
                        continue;
                    }
                    let tag = resolve_tag(field).map_err(|e| bad(format!("includefield: {e}")))?;
                    match &mut include {
                        Include::All => {}
                        Include::Default => include = Include::Tags(vec![tag]),
                        Include::Tags(tags) => tags.push(tag),
                    }
                }
            }
            key => {
                let attr = find_attr(key).map_err(|e| bad(e.to_string()))?;
                if attr.level > level {
                    return Err(bad(format!(
                        "{} cannot be matched when searching for {level:?} entities",
                        attr.keyword
                    )));
                }
                let m = parse_match(attr, value, fuzzy).map_err(|e| bad(e.to_string()))?;
                search.filters.push((attr.field, m));
            }
        }
    }
    let requested = limit.unwrap_or(paging.default_limit);
    if requested == 0 {
        return Err(bad("limit must be at least 1".into()));
    }
    search.limit = requested.min(paging.max_limit);
    let server_limited = limit.is_none() || requested > paging.max_limit;
    Ok(QidoQuery {
        search,
        include,
        server_limited,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dicom::query::{Field, Match};

    const PAGING: Paging = Paging {
        default_limit: 100,
        max_limit: 1000,
    };

    #[test]
    fn ohif_study_list_request() {
        let q = parse(
            Some("limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060&PatientName=*doe*&00100020=*12*&StudyDate=19700102-20261128"),
            Level::Study,
            PAGING,
        )
        .unwrap();
        assert_eq!(q.search.limit, 101);
        assert!(!q.server_limited);
        assert_eq!(
            q.include,
            Include::Tags(vec!["00081030".into(), "00080060".into()])
        );
        assert_eq!(
            q.search.filters[0],
            (Field::PatientName, Match::Wildcard("*DOE*".into()))
        );
        assert_eq!(
            q.search.filters[1],
            (Field::PatientId, Match::Wildcard("*12*".into()))
        );
    }

    #[test]
    fn bad_queries_are_400() {
        for raw in [
            "NoSuchAttribute=1",
            "Manufacturer=ACME",
            "StudyDate=2020",
            "limit=ten",
            "limit=0",
            "offset=-1",
            "fuzzymatching=maybe",
            "includefield=Bogus",
            "SOPInstanceUID=1.2.3",
        ] {
            assert!(
                matches!(
                    parse(Some(raw), Level::Study, PAGING),
                    Err(ApiError::BadRequest(_))
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn limits() {
        let q = parse(Some("limit=5000"), Level::Study, PAGING).unwrap();
        assert_eq!((q.search.limit, q.server_limited), (1000, true));
        let q = parse(None, Level::Study, PAGING).unwrap();
        assert_eq!((q.search.limit, q.server_limited), (100, true));
    }
}
