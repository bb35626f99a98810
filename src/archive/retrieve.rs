//! Retrieve (WADO-RS) and delete, as the domain sees them: find what a
//! study/series/instance path names in one hospital, stream stored blobs,
//! cut frames and bulk values out of them by byte ranges, and remove
//! instances without leaking blobs.
//!
//! Nothing here parses a stored file: everything a read needs was indexed at
//! ingest (DESIGN "Index once, serve many"). Nothing here knows HTTP either:
//! media types and status codes belong to `dicomweb`.

use std::collections::HashMap;

use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use futures_util::{Stream, StreamExt, TryStreamExt, stream};

use super::Archive;
use crate::db::{DbError, HospitalDb, InstanceFilter, InstanceLayout, StudyRef};
use crate::store::{BlobKey, ByteStream, StoreError};

/// Rows read from the index per query when streaming a study or series.
const PAGE: u64 = 100;

/// Instances of a retrieve opened ahead of the one being sent.
const PREFETCH: usize = 3;

/// The path of PixelData in the bulk data map and in BulkDataURIs.
pub const PIXEL_DATA_PATH: &str = "7FE00010";

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    /// No such study/series/instance/bulk value in this hospital.
    #[error("not found")]
    NotFound,
    /// A requested frame number is past the instance's last frame.
    #[error("frame {0} does not exist")]
    NoSuchFrame(u32),
    /// The frames cannot be cut from the stored bytes (no frame index, e.g.
    /// a deflated data set): they would need transcoding.
    #[error("the frames of this instance cannot be served without transcoding")]
    NoFrameIndex,
    /// Re-encoding an instance into another transfer syntax failed.
    #[error("transcoding failed: {0}")]
    Transcode(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a path names: a study, one of its series, or one of its instances.
#[derive(Debug, Clone, Copy)]
pub enum Level<'a> {
    Study(&'a str),
    Series(&'a str, &'a str),
    Instance(&'a str, &'a str, &'a str),
}

/// A located study, series or instance, and the instances it covers.
#[derive(Debug, Clone)]
pub struct Located {
    pub study: StudyRef,
    pub filter: InstanceFilter,
}

/// One stored instance, its bytes still to be read.
pub struct InstanceBlob {
    pub transfer_syntax: String,
    pub size_bytes: u64,
    pub bytes: ByteStream,
}

/// The stored DICOM JSON of one instance, and the UIDs that make its URL.
#[derive(Debug, Clone)]
pub struct InstanceMetadata {
    pub series_uid: String,
    pub sop_uid: String,
    /// JSON object text; BulkDataURIs are relative to the instance URL's
    /// `bulkdata/` (e.g. `"BulkDataURI":"7FE00010"`).
    pub json: String,
}

/// Byte ranges `(offset, length)` of a stored blob.
pub type Ranges = Vec<(u64, u64)>;

/// Frames of one instance, as byte ranges of its blob.
#[derive(Debug, Clone)]
pub struct Frames {
    pub blob_key: String,
    pub transfer_syntax: String,
    /// Whether the pixel data is encapsulated (compressed frames).
    pub encapsulated: bool,
    /// Per requested frame, the ranges to concatenate.
    pub frames: Vec<Ranges>,
}

/// A bulk data value of one instance.
#[derive(Debug, Clone)]
pub enum Bulk {
    /// One contiguous value: an OB/OW/UN element, or native pixel data
    /// (then `transfer_syntax` is set, since its byte order depends on it).
    Value {
        blob_key: String,
        range: (u64, u64),
        transfer_syntax: Option<String>,
    },
    /// Encapsulated pixel data: served frame by frame.
    Frames(Frames),
}

/// Explicit VR Little Endian, the default transfer syntax of PS3.18.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Whether a stored data set in `from` can be re-encoded into `to`. Only
/// into Explicit VR Little Endian, and only from syntaxes whose pixel data
/// is the same little-endian bytes (Implicit VR LE, Deflated Explicit VR
/// LE): no pixel data is decoded or byte-swapped.
pub fn can_convert(from: &str, to: &str) -> bool {
    from == to
        || (to == EXPLICIT_VR_LE && matches!(from, "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1.99"))
}

/// Whether a transfer syntax encapsulates (compresses) pixel data.
pub fn is_encapsulated(transfer_syntax: &str) -> bool {
    TransferSyntaxRegistry
        .get(transfer_syntax)
        .is_some_and(|ts| ts.is_encapsulated_pixel_data())
}

impl Archive {
    /// Find a study, series or instance of the scope's hospital.
    pub async fn locate(
        &self,
        scope: &HospitalDb,
        level: Level<'_>,
    ) -> Result<Located, RetrieveError> {
        let (study, series_pk, instance_pk) = match level {
            Level::Study(st) => scope.find_study(st).await.map(|s| (s, None, None)),
            Level::Series(st, se) => scope
                .find_series(st, se)
                .await
                .map(|(s, se)| (s, Some(se.pk), None)),
            Level::Instance(st, se, sop) => scope
                .find_instance(st, se, sop)
                .await
                .map(|(s, se, i)| (s, Some(se.pk), Some(i.id))),
        }
        .map_err(not_found)?;
        let filter = InstanceFilter {
            hospital_pk: study.hospital_pk,
            study_pk: study.pk,
            series_pk,
            instance_pk,
        };
        Ok(Located { study, filter })
    }

    /// The distinct stored transfer syntaxes of what `located` covers.
    pub async fn transfer_syntaxes(
        &self,
        scope: &HospitalDb,
        located: &Located,
    ) -> Result<Vec<String>, RetrieveError> {
        Ok(scope.transfer_syntaxes(located.filter).await?)
    }

    /// Every covered instance's stored bytes, one after the other. The index
    /// is read a page at a time and each blob is opened only when the
    /// previous one has been consumed, so memory stays flat.
    ///
    /// With a `target` transfer syntax, instances stored in another one are
    /// re-encoded (see [`can_convert`]); such an instance is read whole into
    /// memory and converted on the blocking pool, one at a time.
    pub fn instance_blobs(
        &self,
        scope: HospitalDb,
        located: &Located,
        target: Option<String>,
    ) -> impl Stream<Item = Result<InstanceBlob, RetrieveError>> + Send + 'static {
        let filter = located.filter;
        let store = self.store.clone();
        paged(
            move |after| {
                let scope = scope.clone();
                async move { scope.instance_blobs_page(filter, after, PAGE).await }
            },
            |row| row.pk,
        )
        // The next instances are opened (and read, when small) while the
        // current one is sent.
        .map(move |row| {
            let store = store.clone();
            let target = target.clone();
            async move {
                let row = row?;
                let bytes = store.get(&BlobKey::from_stored(row.blob_key)).await?;
                let stored = InstanceBlob {
                    transfer_syntax: row.transfer_syntax,
                    size_bytes: u64::try_from(row.size_bytes).unwrap_or_default(),
                    bytes,
                };
                match target {
                    Some(to) if to != stored.transfer_syntax => convert(stored, to).await,
                    _ => Ok(stored),
                }
            }
        })
        .buffered(PREFETCH)
    }

    /// Every covered instance's stored DICOM JSON, read a page at a time.
    pub async fn instance_metadata(
        &self,
        scope: HospitalDb,
        located: &Located,
    ) -> Result<
        impl Stream<Item = Result<InstanceMetadata, RetrieveError>> + Send + 'static,
        RetrieveError,
    > {
        let series: HashMap<i64, String> = scope
            .series_uids(&located.study)
            .await?
            .into_iter()
            .collect();
        let filter = located.filter;
        Ok(paged(
            move |after| {
                let scope = scope.clone();
                async move { scope.instance_metadata_page(filter, after, PAGE).await }
            },
            |row| row.pk,
        )
        .map_ok(move |row| InstanceMetadata {
            series_uid: series.get(&row.series_pk).cloned().unwrap_or_default(),
            sop_uid: row.sop_uid,
            json: row.metadata,
        }))
    }

    /// The byte ranges of the requested frames (numbered from 1) of an
    /// instance.
    pub async fn frames(
        &self,
        scope: &HospitalDb,
        study: &str,
        series: &str,
        sop: &str,
        numbers: &[u32],
    ) -> Result<Frames, RetrieveError> {
        let instance = self.instance_row(scope, study, series, sop).await?;
        let deflated = TransferSyntaxRegistry
            .get(&instance.transfer_syntax)
            .is_some_and(|ts| matches!(ts.codec(), Codec::Dataset(_)));
        if instance.pixel_data_offset.is_none() && instance.frames.is_none() && !deflated {
            // no pixel data at all (an SR, a waveform): there are no frames
            return Err(RetrieveError::NoSuchFrame(
                numbers.first().copied().unwrap_or(1),
            ));
        }
        let all = frame_index(&instance)?;
        let mut frames = Vec::with_capacity(numbers.len());
        for &n in numbers {
            let i = usize::try_from(n).unwrap_or(usize::MAX);
            let ranges = i
                .checked_sub(1)
                .and_then(|i| all.get(i))
                .ok_or(RetrieveError::NoSuchFrame(n))?;
            frames.push(ranges.clone());
        }
        Ok(Frames {
            encapsulated: is_encapsulated(&instance.transfer_syntax),
            blob_key: instance.blob_key,
            transfer_syntax: instance.transfer_syntax,
            frames,
        })
    }

    /// The bulk value at `path` (`7FE00010`, `00420011`,
    /// `54000100/0/54001010`, …) of an instance.
    pub async fn bulk(
        &self,
        scope: &HospitalDb,
        study: &str,
        series: &str,
        sop: &str,
        path: &str,
    ) -> Result<Bulk, RetrieveError> {
        let instance = self.instance_row(scope, study, series, sop).await?;
        if path == PIXEL_DATA_PATH {
            if is_encapsulated(&instance.transfer_syntax) {
                let frames = frame_index(&instance)?;
                return Ok(Bulk::Frames(Frames {
                    blob_key: instance.blob_key,
                    transfer_syntax: instance.transfer_syntax,
                    encapsulated: true,
                    frames,
                }));
            }
            let (Some(offset), Some(length)) =
                (instance.pixel_data_offset, instance.pixel_data_length)
            else {
                return Err(RetrieveError::NotFound);
            };
            return Ok(Bulk::Value {
                blob_key: instance.blob_key,
                range: (to_u64(offset), to_u64(length)),
                transfer_syntax: Some(instance.transfer_syntax),
            });
        }
        let bulk: HashMap<String, (u64, u64)> = serde_json::from_str(&instance.bulk)
            .map_err(|e| DbError::Db(sea_orm::DbErr::Json(e.to_string())))?;
        let range = *bulk.get(path).ok_or(RetrieveError::NotFound)?;
        Ok(Bulk::Value {
            blob_key: instance.blob_key,
            range,
            transfer_syntax: None,
        })
    }

    /// The concatenation of `ranges` of a blob, each read only when the
    /// previous one has been consumed.
    pub fn read_ranges(&self, blob_key: &str, ranges: Ranges) -> ByteStream {
        let store = self.store.clone();
        let key = BlobKey::from_stored(blob_key.to_owned());
        Box::pin(
            stream::iter(ranges)
                .then(move |(offset, length)| {
                    let store = store.clone();
                    let key = key.clone();
                    async move {
                        store
                            .get_range(&key, offset, length)
                            .await
                            .map_err(std::io::Error::other)
                    }
                })
                .try_flatten(),
        )
    }

    /// Delete a study, series or instance: its index rows (counts of what
    /// remains recomputed) and then its blobs. The blob keys are journaled
    /// in the same transaction that removes the rows, so a crash or a store
    /// failure leaves them to the orphan sweeper instead of leaking them.
    /// Returns the number of instances deleted.
    pub async fn delete(
        &self,
        scope: &HospitalDb,
        level: Level<'_>,
    ) -> Result<usize, RetrieveError> {
        let located = self.locate(scope, level).await?;
        let keys = scope
            .delete_instances(located.filter)
            .await
            .map_err(not_found)?;
        for key in &keys {
            match self.store.delete(&BlobKey::from_stored(key.clone())).await {
                Ok(()) => {
                    if let Err(e) = self.db.remove_pending_blob(key).await {
                        tracing::warn!(error = %e, "a deleted blob stays journaled; the sweeper will clear it");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete a blob; the sweeper will")
                }
            }
        }
        Ok(keys.len())
    }

    async fn instance_row(
        &self,
        scope: &HospitalDb,
        study: &str,
        series: &str,
        sop: &str,
    ) -> Result<InstanceLayout, RetrieveError> {
        let (_, _, instance) = scope
            .find_instance(study, series, sop)
            .await
            .map_err(not_found)?;
        Ok(instance)
    }
}

/// Re-encode one instance into `to` (a pair [`can_convert`] allows).
async fn convert(blob: InstanceBlob, to: String) -> Result<InstanceBlob, RetrieveError> {
    let capacity = usize::try_from(blob.size_bytes).unwrap_or_default();
    let whole = blob
        .bytes
        .try_fold(Vec::with_capacity(capacity), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .map_err(StoreError::from)?;
    let from = blob.transfer_syntax;
    let converted = tokio::task::spawn_blocking(move || reencode(&whole, &to).map(|b| (b, to)))
        .await
        .map_err(|e| RetrieveError::Transcode(e.to_string()))?
        .map_err(|e| RetrieveError::Transcode(format!("from {from}: {e}")))?;
    let (bytes, to) = converted;
    Ok(InstanceBlob {
        transfer_syntax: to,
        size_bytes: bytes.len() as u64,
        bytes: Box::pin(stream::once(async move { Ok(bytes::Bytes::from(bytes)) })),
    })
}

/// Parse a whole Part-10 file and write it again in transfer syntax `to`.
fn reencode(file: &[u8], to: &str) -> Result<Vec<u8>, String> {
    use dicom_object::file::{OpenFileOptions, ReadPreamble};
    let ts = TransferSyntaxRegistry
        .get(to)
        .ok_or_else(|| format!("unknown transfer syntax {to}"))?;
    let mut obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(file)
        .map_err(|e| e.to_string())?;
    obj.meta_mut().set_transfer_syntax(ts);
    let mut out = Vec::with_capacity(file.len() + file.len() / 8);
    obj.write_all(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn not_found(e: DbError) -> RetrieveError {
    match e {
        DbError::NotFound => RetrieveError::NotFound,
        other => RetrieveError::Db(other),
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn frame_index(instance: &InstanceLayout) -> Result<Vec<Ranges>, RetrieveError> {
    let text = instance
        .frames
        .as_deref()
        .ok_or(RetrieveError::NoFrameIndex)?;
    serde_json::from_str(text).map_err(|e| DbError::Db(sea_orm::DbErr::Json(e.to_string())).into())
}

/// The rows of a keyset-paginated query as one stream: `fetch(after)`
/// returns the next page of rows whose key (`key(row)`) is above `after`.
fn paged<T, F, Fut>(
    fetch: F,
    key: fn(&T) -> i64,
) -> impl Stream<Item = Result<T, RetrieveError>> + Send + 'static
where
    T: Send + 'static,
    F: Fn(i64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<T>, DbError>> + Send + 'static,
{
    // State: the last key seen, or None once a short page ended the list.
    stream::unfold((fetch, Some(i64::MIN)), move |(fetch, after)| async move {
        let after = after?;
        match fetch(after).await {
            Ok(rows) => {
                let next = match rows.last() {
                    Some(last) if rows.len() as u64 == PAGE => Some(key(last)),
                    _ => None,
                };
                Some((Ok(rows), (fetch, next)))
            }
            Err(e) => Some((Err(RetrieveError::from(e)), (fetch, None))),
        }
    })
    .map_ok(|rows| stream::iter(rows.into_iter().map(Ok)))
    .try_flatten()
}
