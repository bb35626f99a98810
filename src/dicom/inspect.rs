//! Inspection of one received Part-10 file: everything the index needs,
//! computed once at ingest so that reads never parse a stored file.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_encoding::transfer_syntax::Codec;
use dicom_object::OpenFileOptions;
use dicom_object::file::ReadPreamble;
use dicom_object::meta::FileMetaTable;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde_json::{Map, Value};

use super::json::{self, first_int, first_string};
use super::keys;
use super::layout::{self, FrameGeometry, Layout, PixelLayout, Range};
use super::uid::{Uid, UidError};

/// Attributes kept at study level: the patient and study modules (PS3.3
/// C.7.1.1, C.7.2.1) and what QIDO returns for a study (PS3.18 10.6.3-3).
const STUDY_KEYS: &[&str] = &[
    "00080005", "00080020", "00080030", "00080050", "00080056", "00080090", "00080201", "00081030",
    "00081032", "00081060", "0020000D", "00200010", "00321032", "00321060",
];
/// Attributes kept at series level (PS3.3 C.7.3.1, PS3.18 10.6.3-4).
const SERIES_KEYS: &[&str] = &[
    "00080005", "00080021", "00080031", "00080060", "00080201", "0008103E", "00081050", "00081070",
    "00180015", "0020000E", "00200011", "00200060", "00400244", "00400245", "00400275",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyAttrs {
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub accession_number: Option<String>,
    pub referring_physician_name: Option<String>,
    pub study_id: Option<String>,
    pub study_description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesAttrs {
    pub modality: Option<String>,
    pub series_number: Option<i32>,
    pub series_description: Option<String>,
    pub series_date: Option<String>,
    pub series_time: Option<String>,
    pub pps_start_date: Option<String>,
    pub pps_start_time: Option<String>,
}

/// What the index records of one instance.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub transfer_syntax: String,
    pub sop_class_uid: Uid,
    pub sop_instance_uid: Uid,
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub study: StudyAttrs,
    pub series: SeriesAttrs,
    pub instance_number: Option<i32>,
    pub rows: Option<i32>,
    pub columns: Option<i32>,
    pub bits_allocated: Option<i32>,
    pub number_of_frames: i32,
    /// Range of the whole PixelData value.
    pub pixel_data: Option<Range>,
    /// Byte ranges of every frame, when they can be told apart.
    pub frames: Option<Vec<Vec<Range>>>,
    pub bulk: Vec<(String, Range)>,
    /// DICOM JSON text of the instance (bulk data by relative URI), and of
    /// its study's and series' attributes: written here, on the blocking
    /// pool, not while the index transaction holds SQLite's one writer.
    pub metadata: String,
    pub study_json: String,
    pub series_json: String,
}

/// Why a received part is not stored; each maps to a PS3.18 Annex I
/// FailureReason.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("not a DICOM Part-10 file: {0}")]
    NotDicom(&'static str),
    #[error("the file is truncated")]
    Truncated,
    #[error("the data set cannot be parsed: {0}")]
    Unparsable(String),
    #[error("transfer syntax {0} is not supported")]
    UnsupportedTransferSyntax(String),
    #[error("required attribute {0} is missing")]
    MissingAttribute(&'static str),
    #[error("attribute {0} is not a valid UID: {1}")]
    InvalidUid(&'static str, UidError),
}

impl InspectError {
    /// FailureReason (0008,1197), PS3.18 Table I.2-2.
    pub fn failure_reason(&self) -> u16 {
        match self {
            InspectError::NotDicom(_) | InspectError::Truncated | InspectError::Unparsable(_) => {
                0xC000
            }
            InspectError::UnsupportedTransferSyntax(_) => 0xC122,
            InspectError::MissingAttribute(_) | InspectError::InvalidUid(..) => 0xA900,
        }
    }
}

/// Inspect a Part-10 file on disk (see [`inspect`]).
pub fn inspect_file(path: &Path) -> Result<Inspected, InspectError> {
    let file =
        File::open(path).map_err(|_| InspectError::Unparsable("spool file vanished".into()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    inspect(file, len)
}

/// Inspect a Part-10 file of `file_len` bytes read from `source`. Never
/// panics on malformed input: every length is checked against the file
/// size before anything is allocated.
pub fn inspect<R: Read + Seek>(source: R, file_len: u64) -> Result<Inspected, InspectError> {
    let mut reader = BufReader::with_capacity(64 * 1024, source);

    // Preamble: "DICM" at 128 (standard) or at 0 (no preamble).
    let mut head = [0u8; 132];
    let n = read_up_to(&mut reader, &mut head);
    let meta_start = if n >= 132 && &head[128..132] == b"DICM" {
        128
    } else if n >= 4 && &head[0..4] == b"DICM" {
        0
    } else {
        return Err(InspectError::NotDicom("no DICM prefix"));
    };
    reader
        .seek(SeekFrom::Start(meta_start))
        .map_err(|_| InspectError::Truncated)?;
    let meta = FileMetaTable::from_reader(&mut reader)
        .map_err(|_| InspectError::NotDicom("the file meta information is malformed"))?;
    let ts_uid = meta
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_owned();
    let ts = TransferSyntaxRegistry
        .get(&ts_uid)
        .ok_or_else(|| InspectError::UnsupportedTransferSyntax(ts_uid.clone()))?;
    if ts.is_unsupported() {
        return Err(InspectError::UnsupportedTransferSyntax(ts_uid.clone()));
    }

    // Byte layout, unless the data set itself is compressed (deflate): then
    // offsets in the file mean nothing, and frames need transcoding.
    let layout = if matches!(ts.codec(), Codec::Dataset(_)) {
        Layout::default()
    } else {
        layout::scan(&mut reader, ts, file_len).map_err(|e| match e {
            layout::LayoutError::Truncated => InspectError::Truncated,
            layout::LayoutError::Parse(m) => InspectError::Unparsable(m),
        })?
    };

    // The data set up to the pixel data, for attributes and metadata.
    reader
        .seek(SeekFrom::Start(meta_start))
        .map_err(|_| InspectError::Truncated)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .read_preamble(ReadPreamble::Never)
        .from_reader(&mut reader)
        .map_err(|e| InspectError::Unparsable(e.to_string()))?;
    let bulk: HashSet<String> = layout.bulk.iter().map(|(p, _)| p.clone()).collect();
    let mut metadata = json::dataset_to_json(&obj, &bulk);

    let uid = |key: &'static str, name: &'static str| -> Result<Uid, InspectError> {
        let raw = first_string(&metadata, key).ok_or(InspectError::MissingAttribute(name))?;
        Uid::parse(&raw).map_err(|e| InspectError::InvalidUid(name, e))
    };
    let study_uid = uid(keys::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let series_uid = uid(keys::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    let sop_instance_uid = uid(keys::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    let sop_class_uid = uid(keys::SOP_CLASS_UID, "SOPClassUID")?;

    let int = |key| first_int(&metadata, key).and_then(|v| i32::try_from(v).ok());
    let rows = int("00280010");
    let columns = int("00280011");
    let bits_allocated = int("00280100");
    let samples = int("00280002").unwrap_or(1);
    let instance_number = int("00200013");
    let photometric = first_string(&metadata, "00280004");

    let mut frames = None;
    let mut number_of_frames = 0;
    let mut pixel_vr = None;
    if let Some(pixel) = &layout.pixel {
        number_of_frames = int("00280008").filter(|n| *n > 0).unwrap_or(1);
        let native_frame_len = native_frame_len(
            rows,
            columns,
            samples,
            bits_allocated,
            photometric.as_deref(),
        );
        let geo = FrameGeometry {
            number_of_frames: number_of_frames as u64,
            native_frame_len,
            extended_offsets: extended_offsets(&obj),
        };
        let mut file = reader.into_inner();
        let mut starts_frame = |offset: u64| codestream_starts_at(&mut file, offset);
        frames = layout::frames(pixel, &geo, &mut starts_frame);
        pixel_vr = Some(match pixel {
            PixelLayout::Encapsulated { .. } => dicom_core::VR::OB,
            PixelLayout::Native { .. } if bits_allocated.unwrap_or(8) > 8 => dicom_core::VR::OW,
            PixelLayout::Native { .. } => dicom_core::VR::OB,
        });
    }

    let text = |key| first_string(&metadata, key);
    let study = StudyAttrs {
        patient_name: text(keys::PATIENT_NAME),
        patient_id: text(keys::PATIENT_ID),
        patient_birth_date: text("00100030"),
        patient_sex: text("00100040"),
        study_date: text(keys::STUDY_DATE),
        study_time: text(keys::STUDY_TIME),
        accession_number: text(keys::ACCESSION_NUMBER),
        referring_physician_name: text(keys::REFERRING_PHYSICIAN_NAME),
        study_id: text("00200010"),
        study_description: text("00081030"),
    };
    let series = SeriesAttrs {
        modality: text(keys::MODALITY),
        series_number: int("00200011"),
        series_description: text("0008103E"),
        series_date: text("00080021"),
        series_time: text("00080031"),
        pps_start_date: text("00400244"),
        pps_start_time: text("00400245"),
    };
    let pick = |wanted: &dyn Fn(&str) -> bool| -> String {
        let picked: Map<String, Value> = metadata
            .iter()
            .filter(|(k, _)| wanted(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(picked).to_string()
    };
    let study_json = pick(&|k| k.starts_with("0010") || STUDY_KEYS.contains(&k));
    let series_json = pick(&|k| SERIES_KEYS.contains(&k));
    if let Some(vr) = pixel_vr {
        metadata.insert("7FE00010".into(), json::bulk_ref(vr, "7FE00010".into()));
    }

    Ok(Inspected {
        transfer_syntax: ts_uid,
        sop_class_uid,
        sop_instance_uid,
        study_uid,
        series_uid,
        study,
        series,
        instance_number,
        rows,
        columns,
        bits_allocated,
        number_of_frames,
        pixel_data: layout.pixel.as_ref().map(PixelLayout::extent),
        frames,
        bulk: layout.bulk,
        metadata: Value::Object(metadata).to_string(),
        study_json,
        series_json,
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// Bytes of one native frame (PS3.5 §8.1.1); `None` when frames do not end
/// on a byte boundary.
fn native_frame_len(
    rows: Option<i32>,
    columns: Option<i32>,
    samples: i32,
    bits_allocated: Option<i32>,
    photometric: Option<&str>,
) -> Option<u64> {
    let pixels = u64::try_from(rows?).ok()? * u64::try_from(columns?).ok()?;
    let bits = u64::try_from(bits_allocated?).ok()?;
    // YBR_FULL_422 stores two samples per pixel (Cb and Cr are shared).
    let samples = if photometric == Some("YBR_FULL_422") {
        2
    } else {
        u64::try_from(samples).ok()?
    };
    let total_bits = pixels * samples * bits;
    (total_bits % 8 == 0).then_some(total_bits / 8)
}

/// The Extended Offset Table (7FE0,0001) and its lengths (7FE0,0002).
fn extended_offsets(obj: &dicom_object::DefaultDicomObject) -> Option<(Vec<u64>, Vec<u64>)> {
    // `get`, not `element_opt`: a missing tag there builds an error that
    // captures a backtrace (1.6 % of the small-instance STOW's CPU).
    let read = |tag: Tag| -> Option<Vec<u64>> {
        let bytes = obj.get(tag)?.to_bytes().ok()?;
        Some(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        )
    };
    Some((read(Tag(0x7FE0, 0x0001))?, read(Tag(0x7FE0, 0x0002))?))
}

/// Whether a codestream starts at `offset`: JPEG SOI (FFD8) or JPEG 2000 SOC
/// (FF4F), or a JP2 signature box.
fn codestream_starts_at(file: &mut (impl Read + Seek), offset: u64) -> bool {
    let mut b = [0u8; 4];
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_exact(&mut b).is_err() {
        return false;
    }
    matches!(
        b,
        [0xFF, 0xD8, ..] | [0xFF, 0x4F, ..] | [0x00, 0x00, 0x00, 0x0C]
    )
}
