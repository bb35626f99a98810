//! Byte layout of a stored Part-10 file: where the pixel data, its fragments
//! and other bulk values start, and which byte ranges make up each frame.
//!
//! dicom-object exposes no positions, so this walks the data set with
//! dicom-parser's lazy reader, whose decoder knows the offset of every value
//! (checked against pydicom on native, RLE, JPEG and JPEG 2000 files).

use std::fmt::Write;
use std::io::{Read, Seek};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntax;
use dicom_parser::StatefulDecode;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;

/// Binary values (OB, OD, OF, OL, OV, OW, UN) longer than this are bulk data:
/// served by BulkDataURI, never inlined in metadata.
pub const BULK_THRESHOLD: u64 = 1024;

/// A byte range `[offset, offset + length)` of the stored file.
pub type Range = (u64, u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PixelLayout {
    /// Native pixel data: one contiguous value.
    Native { offset: u64, length: u64 },
    /// Encapsulated pixel data: the Basic Offset Table entries and the value
    /// range of every fragment. `first_item` is where the item header of the
    /// first fragment starts (the origin of the offset table).
    Encapsulated {
        start: u64,
        first_item: Option<u64>,
        offset_table: Vec<u32>,
        fragments: Vec<Range>,
    },
}

impl PixelLayout {
    /// The range of the whole PixelData value (all items, for encapsulated).
    pub fn extent(&self) -> Range {
        match self {
            PixelLayout::Native { offset, length } => (*offset, *length),
            PixelLayout::Encapsulated {
                start, fragments, ..
            } => {
                let end = fragments.last().map_or(*start, |(o, l)| o + l);
                (*start, end - start)
            }
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Layout {
    pub pixel: Option<PixelLayout>,
    /// Bulk values by path (`GGGGEEEE`, or `SEQTAG/ITEM/.../GGGGEEEE` inside
    /// sequences), with their byte range.
    pub bulk: Vec<(String, Range)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the data set could not be parsed: {0}")]
    Parse(String),
    #[error("the file is truncated: a value ends past the end of the file")]
    Truncated,
}

fn is_bulk_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
    )
}

/// The path of an element inside nested sequences, as used in BulkDataURIs.
pub fn element_path(parents: &[(Tag, usize)], tag: Tag) -> String {
    let mut path = String::with_capacity(8 + parents.len() * 12);
    for (seq, item) in parents {
        push_tag(&mut path, *seq);
        let _ = write!(path, "/{item}/");
    }
    push_tag(&mut path, tag);
    path
}

/// A tag as DICOM JSON keys it: eight upper-case hex digits (`0020000D`).
pub fn tag_key(tag: Tag) -> String {
    let mut key = String::with_capacity(8);
    push_tag(&mut key, tag);
    key
}

/// (`format!("{:04X}{:04X}")` was 4 % of a small-instance STOW's CPU.)
fn push_tag(out: &mut String, tag: Tag) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let both = (u32::from(tag.0) << 16) | u32::from(tag.1);
    for shift in (0..8).rev() {
        out.push(char::from(HEX[((both >> (shift * 4)) & 0xF) as usize]));
    }
}

struct Open {
    tag: Tag,
    item: Option<usize>,
    pixel: bool,
}

/// Walk the data set from the reader's current position (just after the
/// file meta group) to the end of the top-level pixel data.
pub fn scan<R: Read + Seek>(
    source: R,
    ts: &TransferSyntax,
    file_len: u64,
) -> Result<Layout, LayoutError> {
    let parse = |e: &dyn std::fmt::Display| LayoutError::Parse(e.to_string());
    let mut reader = LazyDataSetReader::new_with_ts(source, ts).map_err(|e| parse(&e))?;
    let mut layout = Layout::default();
    let mut open: Vec<Open> = Vec::new();
    let mut encapsulated: Option<PixelLayout> = None;

    while let Some(token) = reader.advance() {
        let token = token.map_err(|e| parse(&e))?;
        match token {
            LazyDataToken::SequenceStart { tag, .. } => open.push(Open {
                tag,
                item: None,
                pixel: false,
            }),
            LazyDataToken::PixelSequenceStart => {
                if open.is_empty() {
                    encapsulated = Some(PixelLayout::Encapsulated {
                        start: 0,
                        first_item: None,
                        offset_table: Vec::new(),
                        fragments: Vec::new(),
                    });
                }
                open.push(Open {
                    tag: tags::PIXEL_DATA,
                    item: None,
                    pixel: true,
                });
            }
            LazyDataToken::ItemStart { .. } => {
                if let Some(top) = open.last_mut() {
                    top.item = Some(top.item.map_or(0, |i| i + 1));
                }
            }
            LazyDataToken::SequenceEnd => {
                let closed = open.pop();
                if open.is_empty() && closed.is_some_and(|c| c.pixel) {
                    break;
                }
            }
            LazyDataToken::LazyItemValue { len, decoder } => {
                let at = decoder.position();
                if u64::from(len) + at > file_len {
                    return Err(LayoutError::Truncated);
                }
                let top_level = open.len() == 1 && open[0].pixel;
                let item = open.last().and_then(|o| o.item).unwrap_or(0);
                if let (
                    Some(PixelLayout::Encapsulated {
                        start,
                        offset_table,
                        fragments,
                        first_item,
                    }),
                    true,
                ) = (&mut encapsulated, top_level)
                {
                    if item == 0 {
                        // the Basic Offset Table
                        *start = at - 8;
                        let mut bytes = Vec::with_capacity(len as usize);
                        LazyDataToken::LazyItemValue { len, decoder }
                            .read_value_into(&mut bytes)
                            .map_err(|e| parse(&e))?;
                        *offset_table = bytes
                            .chunks_exact(4)
                            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect();
                        continue;
                    }
                    if first_item.is_none() {
                        *first_item = Some(at - 8);
                        if *start == 0 {
                            // an empty Basic Offset Table: one bare item header before
                            *start = at - 16;
                        }
                    }
                    fragments.push((at, u64::from(len)));
                }
                LazyDataToken::LazyItemValue { len, decoder }
                    .skip()
                    .map_err(|e| parse(&e))?;
            }
            LazyDataToken::LazyValue { header, decoder } => {
                let at = decoder.position();
                let len = u64::from(header.len.0);
                if header.len.is_undefined() {
                    return Err(LayoutError::Parse(
                        "undefined length on a primitive value".into(),
                    ));
                }
                if at + len > file_len {
                    return Err(LayoutError::Truncated);
                }
                if header.tag == tags::PIXEL_DATA && open.is_empty() {
                    layout.pixel = Some(PixelLayout::Native {
                        offset: at,
                        length: len,
                    });
                    break;
                }
                if is_bulk_vr(header.vr) && len > BULK_THRESHOLD {
                    let parents: Vec<(Tag, usize)> =
                        open.iter().map(|o| (o.tag, o.item.unwrap_or(0))).collect();
                    layout
                        .bulk
                        .push((element_path(&parents, header.tag), (at, len)));
                }
                LazyDataToken::LazyValue { header, decoder }
                    .skip()
                    .map_err(|e| parse(&e))?;
            }
            _ => {}
        }
    }
    if let Some(PixelLayout::Encapsulated { start, .. }) = &mut encapsulated {
        if !open.is_empty() {
            // the pixel sequence never ended: the file was cut short
            return Err(LayoutError::Truncated);
        }
        if *start == 0 {
            return Err(LayoutError::Parse(
                "encapsulated pixel data without items".into(),
            ));
        }
    }
    if encapsulated.is_some() {
        layout.pixel = encapsulated;
    }
    Ok(layout)
}

/// What is needed besides the layout to cut frames.
pub struct FrameGeometry {
    pub number_of_frames: u64,
    /// Bytes of one native frame; `None` when frames are not byte-aligned
    /// (1-bit data whose frames do not end on a byte).
    pub native_frame_len: Option<u64>,
    /// The Extended Offset Table (7FE0,0001) and lengths (7FE0,0002), if any.
    pub extended_offsets: Option<(Vec<u64>, Vec<u64>)>,
}

/// The byte ranges of every frame, or `None` when the frames cannot be told
/// apart (the instance is still stored; frames then need transcoding).
/// `starts_frame(offset)` tells whether a fragment starts with a codestream
/// marker (JPEG SOI / JPEG 2000 SOC), used only as the last resort.
pub fn frames(
    pixel: &PixelLayout,
    geo: &FrameGeometry,
    starts_frame: &mut dyn FnMut(u64) -> bool,
) -> Option<Vec<Vec<Range>>> {
    let n = geo.number_of_frames;
    if n == 0 {
        return None;
    }
    match pixel {
        PixelLayout::Native { offset, length } => {
            let len = geo.native_frame_len?;
            if len == 0 || len.checked_mul(n)? > *length {
                return None;
            }
            Some((0..n).map(|i| vec![(offset + i * len, len)]).collect())
        }
        PixelLayout::Encapsulated {
            first_item,
            offset_table,
            fragments,
            ..
        } => {
            let first_item = (*first_item)?;
            if let Some((offsets, lengths)) = &geo.extended_offsets
                && offsets.len() as u64 == n
                && lengths.len() as u64 == n
            {
                return group_by_offsets(first_item, fragments, offsets);
            }
            if offset_table.len() as u64 == n {
                let offsets: Vec<u64> = offset_table.iter().map(|&o| u64::from(o)).collect();
                return group_by_offsets(first_item, fragments, &offsets);
            }
            if fragments.len() as u64 == n {
                return Some(fragments.iter().map(|f| vec![*f]).collect());
            }
            if n == 1 {
                return Some(vec![fragments.clone()]);
            }
            // Several fragments per frame and no table: a frame starts at
            // each fragment that begins a codestream.
            let mut out: Vec<Vec<Range>> = Vec::new();
            for f in fragments {
                if out.is_empty() || starts_frame(f.0) {
                    out.push(Vec::new());
                }
                out.last_mut()?.push(*f);
            }
            (out.len() as u64 == n).then_some(out)
        }
    }
}

/// Assign fragments to frames by the offset of their item header relative to
/// the first fragment's item header.
fn group_by_offsets(
    first_item: u64,
    fragments: &[Range],
    offsets: &[u64],
) -> Option<Vec<Vec<Range>>> {
    let mut out: Vec<Vec<Range>> = vec![Vec::new(); offsets.len()];
    let mut frame = 0usize;
    for f in fragments {
        let rel = f.0 - 8 - first_item;
        while frame + 1 < offsets.len() && rel >= offsets[frame + 1] {
            frame += 1;
        }
        if rel < offsets[frame] {
            return None;
        }
        out[frame].push(*f);
    }
    out.iter().all(|f| !f.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_keyed_as_eight_upper_case_hex_digits() {
        assert_eq!(tag_key(Tag(0x0020, 0x000D)), "0020000D");
        assert_eq!(tag_key(Tag(0xFFFE, 0xE0DD)), "FFFEE0DD");
        assert_eq!(
            element_path(
                &[(Tag(0x0040, 0xA730), 12), (Tag(0x0008, 0x1140), 0)],
                Tag(0x7FE0, 0x0010)
            ),
            "0040A730/12/00081140/0/7FE00010"
        );
        assert_eq!(element_path(&[], Tag(0x0042, 0x0011)), "00420011");
    }

    fn enc(fragments: Vec<Range>, table: Vec<u32>) -> PixelLayout {
        PixelLayout::Encapsulated {
            start: 100,
            first_item: Some(fragments[0].0 - 8),
            offset_table: table,
            fragments,
        }
    }

    fn geo(n: u64) -> FrameGeometry {
        FrameGeometry {
            number_of_frames: n,
            native_frame_len: None,
            extended_offsets: None,
        }
    }

    #[test]
    fn native_frames_are_consecutive() {
        let px = PixelLayout::Native {
            offset: 10,
            length: 30,
        };
        let g = FrameGeometry {
            number_of_frames: 3,
            native_frame_len: Some(10),
            extended_offsets: None,
        };
        assert_eq!(
            frames(&px, &g, &mut |_| false),
            Some(vec![vec![(10, 10)], vec![(20, 10)], vec![(30, 10)]])
        );
        let g = FrameGeometry {
            number_of_frames: 4,
            ..g
        };
        assert_eq!(
            frames(&px, &g, &mut |_| false),
            None,
            "frames past the value"
        );
    }

    #[test]
    fn offset_table_groups_fragments() {
        // fragments of 4 bytes (+8 header each): item headers at 0, 12, 24 relative
        let px = enc(vec![(208, 4), (220, 4), (232, 4)], vec![0, 24]);
        assert_eq!(
            frames(&px, &geo(2), &mut |_| false),
            Some(vec![vec![(208, 4), (220, 4)], vec![(232, 4)]])
        );
    }

    #[test]
    fn without_table_one_fragment_per_frame_or_markers() {
        let px = enc(vec![(208, 4), (220, 4)], vec![]);
        assert_eq!(
            frames(&px, &geo(2), &mut |_| false),
            Some(vec![vec![(208, 4)], vec![(220, 4)]])
        );
        assert_eq!(
            frames(&px, &geo(1), &mut |_| false),
            Some(vec![vec![(208, 4), (220, 4)]])
        );
        let px = enc(vec![(208, 4), (220, 4), (232, 4)], vec![]);
        assert_eq!(
            frames(&px, &geo(2), &mut |o| o == 232),
            Some(vec![vec![(208, 4), (220, 4)], vec![(232, 4)]])
        );
        assert_eq!(frames(&px, &geo(2), &mut |_| false), None);
    }
}
