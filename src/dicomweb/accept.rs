//! Media type and transfer syntax negotiation for WADO-RS (PS3.18 §8.7).
//!
//! Parsing is liberal: quoted or unquoted parameters, several media ranges
//! (comma lists, or several Accept headers), q-values, `*/*`, `type/*`, a
//! missing `type` parameter on `multipart/related`, `transfer-syntax=*`.
//! Answers are strict: each negotiation returns exactly the representation
//! served, and the handler labels it so.
//!
//! The choices where PS3.18 leaves room (to be written into
//! conformance/CONFORMANCE.md):
//! - A range naming a media type without a `transfer-syntax` asks for that
//!   type's default syntax (PS3.18 §8.7.3: Explicit VR Little Endian for
//!   `application/dicom` and `application/octet-stream`; see
//!   [`default_transfer_syntax`] for the image types). A range naming none
//!   (`*/*`, `multipart/related` without `type`, `type="*/*"`) constrains
//!   nothing: the stored syntax is served.
//! - `application/octet-stream; transfer-syntax=*` (OHIF's frames Accept)
//!   accepts compressed frames too: they are served as
//!   `application/octet-stream` labelled with their transfer syntax, which
//!   is what the client asked for (cornerstone reads the `transfer-syntax`
//!   parameter, not the media type).
//! - Pixel data is never decoded here, so a range that would need it does
//!   not match, and no match at all is a 406. Whole instances may be
//!   re-encoded between uncompressed little-endian syntaxes (the archive's
//!   `can_convert`), and native little-endian frames are the same bytes in
//!   Implicit and Explicit VR Little Endian, so either satisfies either.

use axum::http::{HeaderMap, header};

use crate::error::ApiError;

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// One media range of an Accept header.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRange {
    /// `type/subtype`, lower case (`*/*`, `image/*` included).
    pub essence: String,
    /// The `type` parameter (multipart root type), lower case, unquoted.
    pub part_type: Option<String>,
    /// The `transfer-syntax` parameter, unquoted (`*` or a UID).
    pub transfer_syntax: Option<String>,
    pub q: f32,
}

/// The media ranges of every Accept header, most preferred first (stable for
/// equal q), q=0 ranges dropped. No Accept header means `*/*`.
pub fn parse_accept(headers: &HeaderMap) -> Vec<MediaRange> {
    let mut ranges: Vec<MediaRange> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| split_quoted(v, ','))
        .filter_map(|r| parse_range(&r))
        .collect();
    if headers.get(header::ACCEPT).is_none() {
        ranges.push(MediaRange {
            essence: "*/*".into(),
            part_type: None,
            transfer_syntax: None,
            q: 1.0,
        });
    }
    ranges.retain(|r| r.q > 0.0);
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    ranges
}

/// Split on `sep` outside double quotes.
fn split_quoted(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn parse_range(s: &str) -> Option<MediaRange> {
    let mut parts = split_quoted(s, ';').into_iter();
    let essence = parts.next()?.trim().to_ascii_lowercase();
    if essence.is_empty() {
        return None;
    }
    // A bare `*` (sent by some tools) means `*/*`.
    let essence = if essence == "*" {
        "*/*".to_owned()
    } else if essence.contains('/') {
        essence
    } else {
        return None;
    };
    let mut range = MediaRange {
        essence,
        part_type: None,
        transfer_syntax: None,
        q: 1.0,
    };
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "type" => range.part_type = Some(value.to_ascii_lowercase()),
            "transfer-syntax" => range.transfer_syntax = Some(value.to_owned()),
            // An unparsable q-value is ignored rather than failing the request.
            "q" => range.q = value.parse::<f32>().unwrap_or(1.0).clamp(0.0, 1.0),
            _ => {}
        }
    }
    Some(range)
}

/// Whether a (possibly wildcard) range matches a concrete media type.
fn matches(range: &str, concrete: &str) -> bool {
    if range == "*/*" || range == concrete {
        return true;
    }
    match (range.split_once('/'), concrete.split_once('/')) {
        (Some((rt, "*")), Some((ct, _))) => rt == ct,
        _ => false,
    }
}

fn is_wildcard(media: &str) -> bool {
    media.ends_with("/*")
}

fn is_multipart(essence: &str) -> bool {
    matches(essence, "multipart/related") && essence != "*/*"
}

/// The transfer syntax a range asks for, given the media type it names.
enum Wanted<'a> {
    /// Whatever is stored.
    Any,
    Exactly(&'a str),
}

fn wanted<'a>(range: &'a MediaRange, named: Option<&str>) -> Wanted<'a> {
    match range.transfer_syntax.as_deref() {
        Some("*") => Wanted::Any,
        Some(uid) => Wanted::Exactly(uid),
        None => match named.and_then(default_transfer_syntax) {
            Some(uid) => Wanted::Exactly(uid),
            None => Wanted::Any,
        },
    }
}

/// PS3.18 Table 8.7.3-5: the default transfer syntax of a media type.
fn default_transfer_syntax(media: &str) -> Option<&'static str> {
    Some(match media {
        "application/dicom" | "application/octet-stream" => EXPLICIT_VR_LE,
        "image/jpeg" => "1.2.840.10008.1.2.4.70",
        "image/jls" => "1.2.840.10008.1.2.4.80",
        "image/jp2" => "1.2.840.10008.1.2.4.90",
        "image/jpx" => "1.2.840.10008.1.2.4.92",
        "image/dicom-rle" => "1.2.840.10008.1.2.5",
        "image/jphc" => "1.2.840.10008.1.2.4.201",
        "video/mpeg" => "1.2.840.10008.1.2.4.100",
        "video/mp4" => "1.2.840.10008.1.2.4.102",
        "video/h265" => "1.2.840.10008.1.2.4.107",
        _ => return None,
    })
}

/// The media type of frames (or encapsulated pixel data) of a stored
/// transfer syntax (PS3.18 Table 8.7.3-2). Native data is octet-stream.
pub fn frame_media_type(transfer_syntax: &str) -> &'static str {
    match transfer_syntax.strip_prefix("1.2.840.10008.1.2.") {
        Some("4.50" | "4.51" | "4.57" | "4.70") => "image/jpeg",
        Some("4.80" | "4.81") => "image/jls",
        Some("4.90" | "4.91") => "image/jp2",
        Some("4.92" | "4.93") => "image/jpx",
        Some("4.201" | "4.202" | "4.203") => "image/jphc",
        Some("5") => "image/dicom-rle",
        Some("4.100" | "4.101") => "video/mpeg",
        Some("4.102" | "4.103" | "4.104" | "4.105" | "4.106") => "video/mp4",
        Some("4.107" | "4.108") => "video/h265",
        _ => "application/octet-stream",
    }
}

/// Whether native (uncompressed) pixel data stored in `stored` is already
/// in `wanted` byte for byte.
fn native_satisfies(stored: &str, wanted: &str) -> bool {
    let little = |ts: &str| ts == IMPLICIT_VR_LE || ts == EXPLICIT_VR_LE;
    stored == wanted || (little(stored) && little(wanted))
}

fn not_acceptable(what: &str, ranges: &[MediaRange]) -> ApiError {
    let asked: Vec<&str> = ranges.iter().map(|r| r.essence.as_str()).collect();
    ApiError::NotAcceptable(format!(
        "{what} cannot be served in any of the accepted representations ({}) without transcoding, which is not supported yet",
        asked.join(", ")
    ))
}

/// How instances are packaged in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packaging {
    /// `multipart/related; type="application/dicom"`.
    Multipart,
    /// A bare `application/dicom` body (one instance only).
    Single,
}

/// The negotiated representation of retrieved instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancesRep {
    pub packaging: Packaging,
    /// The transfer syntax every instance is served in (converted where
    /// stored otherwise), or `None` for each in its stored one.
    pub target: Option<String>,
}

/// Negotiate a retrieve of stored instances whose transfer syntaxes are
/// `stored`. `single_allowed` when exactly one instance is retrieved;
/// `convertible(from, to)` tells which re-encodings the archive can do.
pub fn instances(
    ranges: &[MediaRange],
    stored: &[String],
    single_allowed: bool,
    convertible: impl Fn(&str, &str) -> bool,
) -> Result<InstancesRep, ApiError> {
    const DICOM: &str = "application/dicom";
    for range in ranges {
        let (packaging, named) = if is_multipart(&range.essence) {
            match range.part_type.as_deref() {
                None => (Packaging::Multipart, None),
                Some(t) if matches(t, DICOM) => {
                    (Packaging::Multipart, (!is_wildcard(t)).then_some(DICOM))
                }
                Some(_) => continue,
            }
        } else if range.essence == DICOM && single_allowed {
            (Packaging::Single, Some(DICOM))
        } else if range.essence == "*/*" {
            (Packaging::Multipart, None)
        } else {
            continue;
        };
        match wanted(range, named) {
            Wanted::Any => {
                return Ok(InstancesRep {
                    packaging,
                    target: None,
                });
            }
            Wanted::Exactly(uid) if stored.iter().all(|ts| convertible(ts, uid)) => {
                return Ok(InstancesRep {
                    packaging,
                    target: Some(uid.to_owned()),
                });
            }
            Wanted::Exactly(_) => continue,
        }
    }
    Err(not_acceptable("the instances", ranges))
}

/// How frames (or encapsulated pixel data) are served: each part's media
/// type and the transfer syntax it is labelled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramesRep {
    pub media_type: &'static str,
    pub transfer_syntax: String,
}

impl FramesRep {
    /// The part's Content-Type value.
    pub fn content_type(&self) -> String {
        format!(
            "{}; transfer-syntax={}",
            self.media_type, self.transfer_syntax
        )
    }
}

/// Negotiate frames of an instance stored in `stored`, whose pixel data is
/// `encapsulated` or native. Frames are always multipart (PS3.18 §8.7.3.3;
/// dicomweb-client rejects anything else).
pub fn frames(
    ranges: &[MediaRange],
    stored: &str,
    encapsulated: bool,
) -> Result<FramesRep, ApiError> {
    const OCTETS: &str = "application/octet-stream";
    let native_type = if encapsulated {
        frame_media_type(stored)
    } else {
        OCTETS
    };
    for range in ranges {
        if !is_multipart(&range.essence) && range.essence != "*/*" {
            continue;
        }
        let part = range.part_type.as_deref().unwrap_or("*/*");
        // The media type the parts will carry, and the one the range named.
        let (media, named) = if is_wildcard(part) {
            if !matches(part, native_type) {
                continue;
            }
            (native_type, None)
        } else if part == native_type {
            (native_type, Some(part))
        } else if part == OCTETS && encapsulated {
            // Compressed frames as octets: only in their own syntax.
            if range.transfer_syntax.is_none() {
                continue;
            }
            (OCTETS, Some(OCTETS))
        } else {
            continue;
        };
        let label = match wanted(range, named) {
            Wanted::Any => stored.to_owned(),
            Wanted::Exactly(uid) if uid == stored => stored.to_owned(),
            Wanted::Exactly(uid) if !encapsulated && native_satisfies(stored, uid) => {
                uid.to_owned()
            }
            Wanted::Exactly(_) => continue,
        };
        return Ok(FramesRep {
            media_type: media,
            transfer_syntax: label,
        });
    }
    Err(not_acceptable("the frames", ranges))
}

/// How a bulk data value (other than pixel data) is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkRep {
    /// `multipart/related; type="application/octet-stream"`, one part.
    Multipart,
    /// A bare `application/octet-stream` body (Range requests allowed).
    Single,
}

/// Negotiate a bulk value: multipart by default (PS3.18 §8.7.3.3), a single
/// part when a bare `application/octet-stream` (or `application/*`) is
/// preferred. Native pixel data passes its stored `transfer_syntax`; the
/// answer then carries the syntax to label it with (a wish for a syntax the
/// stored bytes are not in fails).
pub fn bulk(
    ranges: &[MediaRange],
    transfer_syntax: Option<&str>,
) -> Result<(BulkRep, Option<String>), ApiError> {
    const OCTETS: &str = "application/octet-stream";
    for range in ranges {
        let (rep, named) = if is_multipart(&range.essence) {
            match range.part_type.as_deref() {
                None => (BulkRep::Multipart, None),
                Some(t) if matches(t, OCTETS) => {
                    (BulkRep::Multipart, (!is_wildcard(t)).then_some(OCTETS))
                }
                Some(_) => continue,
            }
        } else if range.essence == "*/*" {
            (BulkRep::Multipart, None)
        } else if matches(&range.essence, OCTETS) {
            (BulkRep::Single, Some(OCTETS))
        } else {
            continue;
        };
        let Some(stored) = transfer_syntax else {
            return Ok((rep, None));
        };
        match wanted(range, named) {
            Wanted::Any => return Ok((rep, Some(stored.to_owned()))),
            Wanted::Exactly(uid) if native_satisfies(stored, uid) => {
                return Ok((rep, Some(uid.to_owned())));
            }
            Wanted::Exactly(_) => continue,
        }
    }
    Err(not_acceptable("the bulk data", ranges))
}

/// Negotiate a metadata response: `application/dicom+json` (also accepted
/// as `application/json`, `application/*`, `*/*`).
pub fn metadata(ranges: &[MediaRange]) -> Result<(), ApiError> {
    let ok = ranges
        .iter()
        .any(|r| matches(&r.essence, "application/dicom+json") || r.essence == "application/json");
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(
            "metadata is served as application/dicom+json only".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(values: &[&str]) -> Vec<MediaRange> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::ACCEPT,
                HeaderValue::from_str(v).unwrap_or_else(|_| panic!("{v}")),
            );
        }
        parse_accept(&h)
    }

    const JPEG: &str = "1.2.840.10008.1.2.4.50";
    const RLE: &str = "1.2.840.10008.1.2.5";
    const BIG: &str = "1.2.840.10008.1.2.2";

    #[test]
    fn parses_quoted_unquoted_lists_and_q_values() {
        let r = accept(&[
            r#"multipart/related; type="application/octet-stream"; transfer-syntax="*", image/jpeg;q=0.5 , */*;q=0"#,
        ]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].essence, "multipart/related");
        assert_eq!(r[0].part_type.as_deref(), Some("application/octet-stream"));
        assert_eq!(r[0].transfer_syntax.as_deref(), Some("*"));
        assert_eq!(r[1].essence, "image/jpeg");
        assert_eq!(r[1].q, 0.5);

        let r = accept(&[
            "image/jpeg;q=0.2",
            "Multipart/Related;Type=Application/Dicom;q=0.9",
        ]);
        assert_eq!(r[0].part_type.as_deref(), Some("application/dicom"));
        assert_eq!(r[1].essence, "image/jpeg");

        assert_eq!(accept(&[])[0].essence, "*/*");
        assert_eq!(accept(&["*"])[0].essence, "*/*");
        assert!(accept(&["garbage"]).is_empty());
    }

    #[test]
    fn frames_for_every_header_ohif_and_dicomweb_client_send() {
        let ohif_unquoted =
            accept(&["multipart/related; type=application/octet-stream; transfer-syntax=*"]);
        let ohif_quoted =
            accept(&[r#"multipart/related; type="application/octet-stream"; transfer-syntax="*""#]);
        let dwc_default = accept(&[r#"multipart/related; type="*/*""#]);
        let dwc_octets =
            accept(&[r#"multipart/related; type="application/octet-stream"; transfer-syntax=*"#]);
        for a in [&ohif_unquoted, &ohif_quoted, &dwc_octets] {
            // native
            assert_eq!(
                frames(a, IMPLICIT_VR_LE, false).ok(),
                Some(FramesRep {
                    media_type: "application/octet-stream",
                    transfer_syntax: IMPLICIT_VR_LE.into()
                })
            );
            // compressed: octets as asked, labelled with the stored syntax
            assert_eq!(
                frames(a, JPEG, true).ok().map(|r| r.content_type()),
                Some(format!("application/octet-stream; transfer-syntax={JPEG}"))
            );
        }
        assert_eq!(
            frames(&dwc_default, RLE, true)
                .ok()
                .map(|r| r.content_type()),
            Some(format!("image/dicom-rle; transfer-syntax={RLE}"))
        );
        assert_eq!(
            frames(&dwc_default, EXPLICIT_VR_LE, false)
                .ok()
                .map(|r| r.content_type()),
            Some(format!(
                "application/octet-stream; transfer-syntax={EXPLICIT_VR_LE}"
            ))
        );
        assert_eq!(
            frames(&accept(&["*/*"]), JPEG, true)
                .ok()
                .map(|r| r.media_type),
            Some("image/jpeg")
        );
    }

    #[test]
    fn frames_defaults_and_refusals() {
        // octet-stream without a syntax: Explicit VR LE, which native LE data is
        let plain = accept(&[r#"multipart/related; type="application/octet-stream""#]);
        assert_eq!(
            frames(&plain, IMPLICIT_VR_LE, false)
                .ok()
                .map(|r| r.transfer_syntax),
            Some(EXPLICIT_VR_LE.to_owned())
        );
        assert!(matches!(
            frames(&plain, BIG, false),
            Err(ApiError::NotAcceptable(_))
        ));
        assert!(matches!(
            frames(&plain, JPEG, true),
            Err(ApiError::NotAcceptable(_))
        ));
        // image/jpeg without a syntax means .4.70, not the stored .4.50
        let jpeg = accept(&[r#"multipart/related; type="image/jpeg""#]);
        assert!(frames(&jpeg, JPEG, true).is_err());
        let jpeg_50 = accept(&[&format!(
            "multipart/related; type=image/jpeg; transfer-syntax={JPEG}"
        )]);
        assert_eq!(
            frames(&jpeg_50, JPEG, true).ok().map(|r| r.media_type),
            Some("image/jpeg")
        );
        // wrong type, single part, then a later acceptable range wins
        assert!(frames(&accept(&["multipart/related; type=image/jls"]), JPEG, true).is_err());
        assert!(
            frames(
                &accept(&["application/octet-stream"]),
                EXPLICIT_VR_LE,
                false
            )
            .is_err()
        );
        let fallback = accept(&[
            "multipart/related; type=image/jls, multipart/related; type=\"image/jpeg\"; transfer-syntax=*;q=0.5",
        ]);
        assert_eq!(
            frames(&fallback, JPEG, true).ok().map(|r| r.media_type),
            Some("image/jpeg")
        );
        // big endian only as stored
        let any = accept(&["multipart/related; type=application/octet-stream; transfer-syntax=*"]);
        assert_eq!(
            frames(&any, BIG, false).ok().map(|r| r.transfer_syntax),
            Some(BIG.to_owned())
        );
    }

    #[test]
    fn instances_negotiation() {
        let all = |ts: &[&str]| ts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // What the archive can re-encode: Implicit VR LE into Explicit VR LE.
        let conv =
            |from: &str, to: &str| from == to || (from == IMPLICIT_VR_LE && to == EXPLICIT_VR_LE);
        let rep =
            |a: &[MediaRange], ts: &[&str], single: bool| instances(a, &all(ts), single, conv).ok();
        let multi = |target: Option<&str>| {
            Some(InstancesRep {
                packaging: Packaging::Multipart,
                target: target.map(str::to_owned),
            })
        };
        let dwc = accept(&[r#"multipart/related; type="application/dicom"; transfer-syntax=*"#]);
        assert_eq!(rep(&dwc, &[JPEG, IMPLICIT_VR_LE], false), multi(None));
        let default = accept(&[r#"multipart/related; type="application/dicom""#]);
        assert_eq!(
            rep(&default, &[EXPLICIT_VR_LE], false),
            multi(Some(EXPLICIT_VR_LE))
        );
        assert_eq!(
            rep(&default, &[IMPLICIT_VR_LE, EXPLICIT_VR_LE], false),
            multi(Some(EXPLICIT_VR_LE))
        );
        assert_eq!(rep(&default, &[EXPLICIT_VR_LE, JPEG], false), None);
        assert_eq!(rep(&default, &[BIG], false), None);
        let exact = accept(&[&format!(
            "multipart/related; type=application/dicom; transfer-syntax={JPEG}"
        )]);
        assert_eq!(rep(&exact, &[JPEG], false), multi(Some(JPEG)));
        assert_eq!(rep(&exact, &[RLE], false), None);
        for wild in ["*/*", "multipart/related", "multipart/*"] {
            assert_eq!(rep(&accept(&[wild]), &[RLE], false), multi(None), "{wild}");
        }
        // q-values: the preferred range that can be met wins.
        let prefs = accept(&[&format!(
            "multipart/related; type=application/dicom; transfer-syntax={RLE}; q=0.9, multipart/related; type=application/dicom; q=0.5, */*; q=0.1"
        )]);
        assert_eq!(rep(&prefs, &[RLE], false), multi(Some(RLE)));
        assert_eq!(
            rep(&prefs, &[IMPLICIT_VR_LE], false),
            multi(Some(EXPLICIT_VR_LE))
        );
        assert_eq!(rep(&prefs, &[JPEG], false), multi(None));
        let single = accept(&["application/dicom; transfer-syntax=*"]);
        assert_eq!(
            rep(&single, &[RLE], true),
            Some(InstancesRep {
                packaging: Packaging::Single,
                target: None
            })
        );
        assert_eq!(rep(&single, &[RLE], false), None);
        assert_eq!(
            rep(&accept(&["application/dicom+json"]), &[RLE], true),
            None
        );
        assert_eq!(rep(&accept(&["application/*"]), &[RLE], false), None);
        assert_eq!(
            rep(
                &accept(&["multipart/related; type=image/jpeg"]),
                &[JPEG],
                true
            ),
            None
        );
    }

    #[test]
    fn bulk_and_metadata_negotiation() {
        let rep = |a: &[&str], ts: Option<&str>| bulk(&accept(a), ts).ok();
        assert_eq!(rep(&[], None), Some((BulkRep::Multipart, None)));
        assert_eq!(
            rep(
                &[r#"multipart/related; type="application/octet-stream""#],
                None
            ),
            Some((BulkRep::Multipart, None))
        );
        assert_eq!(
            rep(&["application/octet-stream"], None),
            Some((BulkRep::Single, None))
        );
        assert_eq!(
            rep(&["application/octet-stream"], Some(IMPLICIT_VR_LE)),
            Some((BulkRep::Single, Some(EXPLICIT_VR_LE.to_owned())))
        );
        assert_eq!(
            rep(&["*/*"], Some(IMPLICIT_VR_LE)),
            Some((BulkRep::Multipart, Some(IMPLICIT_VR_LE.to_owned())))
        );
        assert_eq!(rep(&["application/octet-stream"], Some(BIG)), None);
        assert_eq!(
            rep(&["application/octet-stream; transfer-syntax=*"], Some(BIG)),
            Some((BulkRep::Single, Some(BIG.to_owned())))
        );
        assert_eq!(rep(&["image/jpeg"], None), None);

        for ok in [
            "application/dicom+json",
            "application/dicom+json, application/json",
            "*/*",
            "application/json",
        ] {
            assert!(metadata(&accept(&[ok])).is_ok(), "{ok}");
        }
        assert!(metadata(&accept(&[])).is_ok());
        assert!(metadata(&accept(&["application/dicom+xml"])).is_err());
    }
}
