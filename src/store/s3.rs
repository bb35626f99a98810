//! The S3 blob store (AWS S3 or any S3-compatible server), for replicas that
//! share their blobs.
//!
//! Owns the S3 client and the mapping of a [`BlobKey`] to a bucket and an
//! object key: `PREFIX + key` in one bucket (the key starts with the hospital
//! id, so each hospital is a prefix), or the same object key in the bucket
//! of the hospital (a name template holding `{hospitalId}`). It never lists
//! a bucket: the index is the source of truth.
//!
//! Uploads send a part held in memory as it is (at most 1 MiB: always one
//! PutObject) and stream one in a spool file: one PutObject below the
//! multipart threshold, else a multipart upload whose parts are read from
//! the file as they are sent (memory stays at a few buffers whatever the
//! size) and which is aborted when any step fails, so no incomplete upload
//! lingers.
//!
//! Checksums are computed only when an operation requires them
//! (`WhenRequired`): the SDK's default streaming checksums (aws-chunked
//! trailers) are refused by some S3-compatible servers (Garage).

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkByteStream, Length};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use futures_util::{StreamExt, TryStreamExt};

use super::{BlobKey, BlobStore, ByteStream, SpoolFile, StoreError};
use crate::config::{BucketLayout, HOSPITAL_PLACEHOLDER, S3Settings};

const MIB: u64 = 1024 * 1024;
/// S3's limits on multipart uploads.
const MIN_PART_SIZE: u64 = 5 * MIB;
const MAX_PARTS: u64 = 10_000;
/// The region of a store that does not name one (S3-compatible servers
/// accept it; AWS itself always has one from the chain).
const FALLBACK_REGION: &str = "us-east-1";
/// The hospital every index has; with a bucket per hospital, `/readyz`
/// checks its bucket.
const CHECKED_HOSPITAL: &str = "default";

/// Blobs in S3.
pub struct S3Store {
    client: Client,
    layout: BucketLayout,
    prefix: String,
    region: String,
    create_buckets: bool,
    multipart_threshold: u64,
    part_size: u64,
    upload_concurrency: usize,
    /// Buckets known to exist (bucket-per-hospital layout), so each is
    /// checked once per process rather than on every upload.
    known_buckets: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("layout", &self.layout)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Build the client. Nothing is sent yet: an unreachable store makes the
    /// server start but not ready (`/readyz`), never fail to boot.
    pub async fn connect(settings: &S3Settings) -> Result<Self, StoreError> {
        let o = &settings.options;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(o.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(o.connect_timeout_secs))
                    .read_timeout(Duration::from_secs(o.read_timeout_secs))
                    .build(),
            );
        if let Some(c) = &settings.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                None,
                None,
                "cloudpacs-static",
            ));
        }
        let sdk = loader.load().await;
        let region = sdk
            .region()
            .map_or_else(|| FALLBACK_REGION.to_owned(), |r| r.as_ref().to_owned());
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .region(Region::new(region.clone()))
            .force_path_style(o.path_style.unwrap_or(o.endpoint.is_some()))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &o.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        if o.upload_concurrency == 0 {
            return Err(StoreError::Unavailable(
                "--s3-upload-concurrency must be at least 1".into(),
            ));
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            layout: settings.layout.clone(),
            prefix: settings.prefix.clone(),
            region,
            create_buckets: settings.options.create_buckets,
            multipart_threshold: o.multipart_threshold_mib.saturating_mul(MIB),
            part_size: o.part_size_mib.saturating_mul(MIB).max(MIN_PART_SIZE),
            upload_concurrency: o.upload_concurrency,
            known_buckets: Mutex::new(HashSet::new()),
        })
    }

    /// The bucket of a hospital.
    fn bucket_of(&self, hospital: &str) -> Result<String, StoreError> {
        match &self.layout {
            BucketLayout::Shared(bucket) => Ok(bucket.clone()),
            BucketLayout::PerHospital(template) => {
                bucket_name(template, hospital).ok_or_else(|| {
                    StoreError::Unavailable(format!(
                        "no valid bucket name for hospital {hospital:?} from {template:?}"
                    ))
                })
            }
        }
    }

    /// Bucket and object key of a blob. Keys start with the hospital id.
    fn locate(&self, key: &BlobKey) -> Result<(String, String), StoreError> {
        let hospital = key.as_str().split('/').next().unwrap_or_default();
        Ok((
            self.bucket_of(hospital)?,
            format!("{}{}", self.prefix, key.as_str()),
        ))
    }

    /// With a bucket per hospital, make sure the hospital's bucket exists
    /// (creating it when configured to) before its first upload.
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        if matches!(self.layout, BucketLayout::Shared(_)) || self.is_known(bucket) {
            return Ok(());
        }
        if !self.bucket_exists(bucket).await? {
            if !self.create_buckets {
                return Err(StoreError::Unavailable(format!(
                    "bucket {bucket} does not exist (create it, or set --s3-create-buckets true)"
                )));
            }
            let mut create = self.client.create_bucket().bucket(bucket);
            // us-east-1 is the one region that refuses a location constraint.
            if self.region != FALLBACK_REGION {
                create = create.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                        .build(),
                );
            }
            if let Err(e) = create.send().await {
                // Another replica may have created it at the same moment.
                if !self.bucket_exists(bucket).await? {
                    return Err(map_sdk_error("CreateBucket", e));
                }
            } else {
                tracing::info!(bucket, "created a hospital bucket");
            }
        }
        if let Ok(mut known) = self.known_buckets.lock() {
            known.insert(bucket.to_owned());
        }
        Ok(())
    }

    fn is_known(&self, bucket: &str) -> bool {
        self.known_buckets
            .lock()
            .map(|k| k.contains(bucket))
            .unwrap_or(false)
    }

    async fn bucket_exists(&self, bucket: &str) -> Result<bool, StoreError> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) if http_status(&e) == Some(404) => Ok(false),
            Err(e) => Err(map_sdk_error("HeadBucket", e)),
        }
    }

    async fn put_single(
        &self,
        bucket: &str,
        object: &str,
        file: &SpoolFile,
    ) -> Result<(), StoreError> {
        let body = body_of(file, 0, file.size).await?;
        self.client
            .put_object()
            .bucket(bucket)
            .key(object)
            .content_type("application/dicom")
            .content_length(to_i64(file.size)?)
            .metadata("digest", &file.digest)
            .body(body)
            .send()
            .await
            .map_err(|e| map_sdk_error("PutObject", e))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        bucket: &str,
        object: &str,
        file: &SpoolFile,
    ) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(object)
            .content_type("application/dicom")
            .metadata("digest", &file.digest)
            .send()
            .await
            .map_err(|e| map_sdk_error("CreateMultipartUpload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Unavailable("CreateMultipartUpload: no upload id".into()))?
            .to_owned();
        let result = self.send_parts(bucket, object, &upload_id, file).await;
        if result.is_err() {
            // Best effort: when the store is down this fails too, and the
            // bucket's AbortIncompleteMultipartUpload lifecycle rule (see
            // docs/deploy-aws.md) reclaims the parts.
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(object)
                .upload_id(&upload_id)
                .send()
                .await
            {
                tracing::warn!(error = %DisplayErrorContext(&e), "could not abort a multipart upload");
            }
        }
        result
    }

    async fn send_parts(
        &self,
        bucket: &str,
        object: &str,
        upload_id: &str,
        file: &SpoolFile,
    ) -> Result<(), StoreError> {
        let part_size = self.part_size.max(file.size.div_ceil(MAX_PARTS));
        let parts = (0..file.size.div_ceil(part_size)).map(|i| {
            let offset = i * part_size;
            (i + 1, offset, part_size.min(file.size - offset))
        });
        let completed: Vec<CompletedPart> = futures_util::stream::iter(parts)
            .map(|(number, offset, length)| async move {
                let number = i32::try_from(number)
                    .map_err(|_| StoreError::Io(io::Error::other("too many parts")))?;
                let body = body_of(file, offset, length).await?;
                let sent = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(object)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(to_i64(length)?)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| map_sdk_error("UploadPart", e))?;
                Ok::<_, StoreError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(sent.e_tag().map(str::to_owned))
                        .build(),
                )
            })
            .buffered(self.upload_concurrency)
            .try_collect()
            .await?;
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| map_sdk_error("CompleteMultipartUpload", e))?;
        Ok(())
    }
}

/// `length` bytes at `offset` of a received part, as a request body: a
/// slice of the part held in memory, or read from its spool file as it is
/// sent.
async fn body_of(file: &SpoolFile, offset: u64, length: u64) -> Result<SdkByteStream, StoreError> {
    if let Some(chunks) = file.chunks() {
        let bytes = match chunks {
            [one] => one.clone(),
            many => bytes::Bytes::from(many.concat()),
        };
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(offset + length).ok())
            .filter(|(_, end)| *end <= bytes.len())
            .ok_or_else(|| StoreError::Io(io::Error::other("range past the end of the part")))?;
        return Ok(SdkByteStream::from(bytes.slice(range.0..range.1)));
    }
    SdkByteStream::read_from()
        .path(file.path().unwrap_or_else(|| std::path::Path::new("")))
        .offset(offset)
        .length(Length::Exact(length))
        .build()
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e)))
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn put(&self, key: &BlobKey, file: SpoolFile) -> Result<(), StoreError> {
        let (bucket, object) = self.locate(key)?;
        self.ensure_bucket(&bucket).await?;
        // S3 acknowledges a PutObject/CompleteMultipartUpload only once the
        // object is durable; the spool file is removed when `file` drops.
        if file.size >= self.multipart_threshold && file.size > MIN_PART_SIZE {
            self.put_multipart(&bucket, &object, &file).await
        } else {
            self.put_single(&bucket, &object, &file).await
        }
    }

    async fn get(&self, key: &BlobKey) -> Result<ByteStream, StoreError> {
        let (bucket, object) = self.locate(key)?;
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| map_sdk_error("GetObject", e))?;
        Ok(body_stream(out.body))
    }

    async fn get_range(
        &self,
        key: &BlobKey,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StoreError> {
        let (bucket, object) = self.locate(key)?;
        if length == 0 {
            // An empty range is not expressible in a Range header.
            let head = self
                .client
                .head_object()
                .bucket(bucket)
                .key(object)
                .send()
                .await
                .map_err(|e| map_sdk_error("HeadObject", e))?;
            let size = head.content_length().unwrap_or(0);
            if u64::try_from(size).unwrap_or(0) < offset {
                return Err(past_the_end());
            }
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let last = offset.checked_add(length - 1).ok_or_else(past_the_end)?;
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(object)
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await
            .map_err(|e| map_sdk_error("GetObject", e))?;
        // A range that runs past the end is cut short by S3, not refused.
        if out.content_length().and_then(|n| u64::try_from(n).ok()) != Some(length) {
            return Err(past_the_end());
        }
        Ok(body_stream(out.body))
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        let (bucket, object) = self.locate(key)?;
        match self
            .client
            .delete_object()
            .bucket(bucket)
            .key(object)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // A missing hospital bucket holds no blob either.
            Err(e) if http_status(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_sdk_error("DeleteObject", e)),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        let bucket = self.bucket_of(CHECKED_HOSPITAL)?;
        match self.bucket_exists(&bucket).await? {
            true => Ok(()),
            // It is created on the first upload: the store answered, and
            // that is what readiness is about.
            false if self.create_buckets => Ok(()),
            false => Err(StoreError::Unavailable(format!(
                "bucket {bucket} does not exist"
            ))),
        }
    }
}

/// The bucket name of `hospital` from a template: the id is lowercased and
/// every character a bucket name cannot hold becomes `-` (hospital ids such
/// as `hosp_…` hold `_`). Object keys still start with the exact hospital id,
/// so two ids that map to one bucket never share a key.
pub fn bucket_name(template: &str, hospital: &str) -> Option<String> {
    let id: String = hospital
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    let name = template.replacen(HOSPITAL_PLACEHOLDER, &id, 1);
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    ((3..=63).contains(&name.len())
        && ends_ok(name.chars().next())
        && ends_ok(name.chars().last())
        && !name.contains(".."))
    .then_some(name)
}

fn past_the_end() -> StoreError {
    StoreError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "range past the end of the blob",
    ))
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Io(io::Error::other("blob too large")))
}

/// The SDK's body as our stream type.
fn body_stream(body: SdkByteStream) -> ByteStream {
    Box::pin(futures_util::stream::try_unfold(
        body,
        |mut body| async move {
            match body.next().await {
                Some(Ok(bytes)) => Ok(Some((bytes, body))),
                Some(Err(e)) => Err(io::Error::other(e)),
                None => Ok(None),
            }
        },
    ))
}

/// The HTTP status of a service answer, if the store answered.
fn http_status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        _ => None,
    }
}

/// Map an SDK error: a missing object is `NotFound`; a store that cannot be
/// reached, times out, throttles, fails (5xx) or refuses our credentials is
/// `Unavailable` (the caller answers 503 / 0x0110); anything else is an I/O
/// error with the SDK's full context.
fn map_sdk_error<E>(op: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = format!("{op}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match (status, s.err().code()) {
                (_, Some("NoSuchKey")) | (404, None | Some("NotFound")) => StoreError::NotFound,
                (416, _) | (_, Some("InvalidRange")) => past_the_end(),
                (_, Some("NoSuchBucket"))
                | (401 | 403 | 408 | 429, _)
                | (500..=599, _)
                | (_, Some("SlowDown" | "RequestTimeout" | "ServiceUnavailable")) => {
                    StoreError::Unavailable(detail)
                }
                _ => StoreError::Io(io::Error::other(detail)),
            }
        }
        // Not reachable, timed out, a broken answer, or no credentials found.
        _ => StoreError::Unavailable(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::bucket_name;

    #[test]
    fn hospital_ids_become_valid_bucket_names() {
        let t = "medical-imaging-{hospitalId}";
        assert_eq!(
            bucket_name(t, "hosp_AB12").as_deref(),
            Some("medical-imaging-hosp-ab12")
        );
        assert_eq!(
            bucket_name(t, "default").as_deref(),
            Some("medical-imaging-default")
        );
        assert_eq!(bucket_name("{hospitalId}", "ab"), None);
        assert_eq!(bucket_name("{hospitalId}-x", "_a"), None);
        assert_eq!(bucket_name(t, &"x".repeat(60)), None);
    }
}
