//! Ingest of the received parts of a request (DESIGN "Ingest"): inspect ->
//! validate (URL study, retry, quota) -> journal the blob keys -> store the
//! blobs -> index them in one transaction, each instance in its savepoint.
//! A failure at any step leaves nothing visible and nothing leaked.

use crate::db::{HospitalDb, IndexConflict, Indexed, NewInstance};
use crate::dicom::{InspectError, Inspected, Uid, inspect, inspect_file};
use crate::store::spool::Source;
use crate::store::{BlobKey, SpoolFile, WriteJournal};

use super::Archive;

/// ErrorComment of an instance refused by the storage quota (at most 64
/// characters: it is an LO).
const QUOTA_EXCEEDED: &str = "the hospital's storage quota (maxStorage) is exhausted";

/// FailureReason (0008,1197) values, PS3.18 Annex I Table I.2-2 (and PS3.7
/// for the duplicate case). Documented in conformance/CONFORMANCE.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// 0xA700: out of resources (the hospital's storage quota).
    OutOfResources,
    /// 0xA900: the data set does not match the SOP class (missing or
    /// malformed required attributes).
    DataSetMismatch,
    /// 0xA900, as a conflict: the Study Instance UID is not the one of the
    /// request URL, or the series belongs to another study.
    StudyConflict,
    /// 0x0111: a different object is stored under this SOP Instance UID.
    DuplicateInstance,
    /// 0xC000: cannot understand (not DICOM, truncated, unparsable).
    CannotUnderstand,
    /// 0xC122: transfer syntax not supported.
    TransferSyntaxNotSupported,
    /// 0x0110: processing failure (storage or index unavailable).
    ProcessingFailure,
}

impl FailureReason {
    pub fn code(self) -> u16 {
        match self {
            FailureReason::OutOfResources => 0xA700,
            FailureReason::DataSetMismatch | FailureReason::StudyConflict => 0xA900,
            FailureReason::DuplicateInstance => 0x0111,
            FailureReason::CannotUnderstand => 0xC000,
            FailureReason::TransferSyntaxNotSupported => 0xC122,
            FailureReason::ProcessingFailure => 0x0110,
        }
    }

    /// Whether the request was understood but conflicts with what is
    /// stored or with the URL (-> 409 when nothing was stored).
    pub fn is_conflict(self) -> bool {
        !matches!(self, FailureReason::CannotUnderstand)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    pub sop_class_uid: Uid,
    pub sop_instance_uid: Uid,
    pub study_uid: Uid,
    pub series_uid: Uid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedInstance {
    pub sop_class_uid: Option<Uid>,
    pub sop_instance_uid: Option<Uid>,
    pub reason: FailureReason,
    /// A readable explanation, sent as ErrorComment.
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartOutcome {
    Stored(StoredInstance),
    Failed(FailedInstance),
}

impl PartOutcome {
    pub fn failed(reason: FailureReason, comment: impl Into<String>) -> Self {
        PartOutcome::Failed(FailedInstance {
            sop_class_uid: None,
            sop_instance_uid: None,
            reason,
            comment: comment.into(),
        })
    }
}

impl From<&InspectError> for FailureReason {
    fn from(e: &InspectError) -> Self {
        match e {
            InspectError::NotDicom(_) | InspectError::Truncated | InspectError::Unparsable(_) => {
                FailureReason::CannotUnderstand
            }
            InspectError::UnsupportedTransferSyntax(_) => FailureReason::TransferSyntaxNotSupported,
            InspectError::MissingAttribute(_) | InspectError::InvalidUid(..) => {
                FailureReason::DataSetMismatch
            }
        }
    }
}

/// An instance of a batch that passed inspection and the retry check.
struct Pending {
    slot: usize,
    inspected: Inspected,
    stored: StoredInstance,
    key: BlobKey,
    size_bytes: i64,
    digest: String,
}

fn cannot_parse() -> PartOutcome {
    PartOutcome::failed(
        FailureReason::CannotUnderstand,
        "the data set cannot be parsed",
    )
}

/// Inspect one received part; a panic in the parser fails that part only.
fn inspect_part((source, len): (Source, u64)) -> Result<Inspected, PartOutcome> {
    let parsed = std::panic::catch_unwind(move || match source {
        Source::Memory(reader) => inspect(reader, len),
        Source::File(path) => inspect_file(&path),
    });
    match parsed {
        Ok(Ok(i)) => Ok(i),
        Ok(Err(e)) => Err(PartOutcome::failed(FailureReason::from(&e), e.to_string())),
        Err(_) => Err(cannot_parse()),
    }
}

fn failed_for(stored: &StoredInstance, reason: FailureReason, comment: &str) -> PartOutcome {
    PartOutcome::Failed(FailedInstance {
        sop_class_uid: Some(stored.sop_class_uid.clone()),
        sop_instance_uid: Some(stored.sop_instance_uid.clone()),
        reason,
        comment: comment.to_owned(),
    })
}

impl Archive {
    /// Store received parts of one request together: each is inspected and
    /// checked (URL study, retry, quota) on its own, but the blob journal is
    /// one insert, the blobs are made durable together and the index is
    /// written in one transaction, so a batch costs a few fsyncs instead of
    /// four per instance. One outcome per file, in order.
    pub async fn ingest_many(
        &self,
        scope: &HospitalDb,
        files: Vec<SpoolFile>,
        expected_study: Option<&Uid>,
    ) -> Vec<PartOutcome> {
        let mut outcomes: Vec<Option<PartOutcome>> = (0..files.len()).map(|_| None).collect();
        // Inspection is CPU work: on the blocking pool, in two runs of
        // consecutive parts (one hop per run, not per part: a batch of small
        // instances is a hundred of them).
        let mut first: Vec<(Source, u64)> = files.iter().map(|f| (f.source(), f.size)).collect();
        let second = first.split_off(first.len().div_ceil(2));
        let runs: Vec<_> = [first, second]
            .into_iter()
            .filter(|run| !run.is_empty())
            .map(|run| {
                let len = run.len();
                let task = tokio::task::spawn_blocking(move || {
                    run.into_iter().map(inspect_part).collect::<Vec<_>>()
                });
                (len, task)
            })
            .collect();
        let mut inspected: Vec<Result<Inspected, PartOutcome>> = Vec::with_capacity(files.len());
        for (len, task) in runs {
            match task.await {
                Ok(results) => inspected.extend(results),
                // (a run catches its parts' panics: only a runtime shutting down)
                Err(_) => inspected.extend((0..len).map(|_| Err(cannot_parse()))),
            }
        }

        let mut headroom = match scope.storage_headroom().await {
            Ok(room) => room,
            Err(e) => {
                tracing::error!(error = %e, "index lookup failed during ingest");
                return vec![
                    PartOutcome::failed(
                        FailureReason::ProcessingFailure,
                        "the index is unavailable"
                    );
                    outcomes.len()
                ];
            }
        };
        let sop_uids: Vec<&str> = inspected
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|i| i.sop_instance_uid.as_str())
            .collect();
        let already = scope.stored_instances(&sop_uids).await;
        let mut pending = Vec::new();
        let mut spooled = Vec::new();
        for (slot, (file, inspected)) in files.into_iter().zip(inspected).enumerate() {
            let inspected = match inspected {
                Ok(i) => i,
                Err(outcome) => {
                    outcomes[slot] = Some(outcome);
                    continue;
                }
            };
            let stored = StoredInstance {
                sop_class_uid: inspected.sop_class_uid.clone(),
                sop_instance_uid: inspected.sop_instance_uid.clone(),
                study_uid: inspected.study_uid.clone(),
                series_uid: inspected.series_uid.clone(),
            };
            if let Some(expected) = expected_study
                && *expected != inspected.study_uid
            {
                outcomes[slot] = Some(failed_for(
                    &stored,
                    FailureReason::StudyConflict,
                    "StudyInstanceUID does not match the study of the request URL",
                ));
                continue;
            }
            // A retry of an instance already stored: nothing to write.
            let replaced_size = match &already {
                Ok(found) => match found.get(inspected.sop_instance_uid.as_str()) {
                    Some((digest, _)) if file.has_digest(digest).await => {
                        outcomes[slot] = Some(PartOutcome::Stored(stored));
                        continue;
                    }
                    found => found.map_or(0, |(_, size)| *size),
                },
                Err(e) => {
                    tracing::error!(error = %e, "index lookup failed during ingest");
                    outcomes[slot] = Some(failed_for(
                        &stored,
                        FailureReason::ProcessingFailure,
                        "the index is unavailable",
                    ));
                    continue;
                }
            };
            // Quota, early: no blob is written for an instance that cannot
            // fit beside the earlier ones of the batch. The index
            // transaction checks again, exactly.
            let growth = file.size as i64 - replaced_size;
            if let Some(room) = headroom.as_mut() {
                if growth > *room {
                    outcomes[slot] = Some(failed_for(
                        &stored,
                        FailureReason::OutOfResources,
                        QUOTA_EXCEEDED,
                    ));
                    continue;
                }
                *room -= growth;
            }
            let key = BlobKey::new_instance(
                &scope.hospital().id,
                &stored.study_uid,
                &stored.series_uid,
                &stored.sop_instance_uid,
            );
            pending.push(Pending {
                slot,
                inspected,
                stored,
                key: key.clone(),
                size_bytes: file.size as i64,
                digest: file.digest.clone(),
            });
            spooled.push((key, file));
        }
        if !pending.is_empty() {
            self.store_and_index(scope, pending, spooled, &mut outcomes)
                .await;
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    PartOutcome::failed(FailureReason::ProcessingFailure, "not processed")
                })
            })
            .collect()
    }

    /// Journal the keys of blobs about to be written: in the store's own
    /// journal when it keeps one (returned, to be closed), else in the
    /// index.
    async fn journal_blobs(&self, keys: &[&str]) -> Result<Option<WriteJournal>, String> {
        match self.store.journal(keys).await {
            Ok(None) => self
                .db
                .add_pending_blobs(keys)
                .await
                .map(|()| None)
                .map_err(|e| e.to_string()),
            journaled => journaled.map_err(|e| e.to_string()),
        }
    }

    async fn store_and_index(
        &self,
        scope: &HospitalDb,
        pending: Vec<Pending>,
        spooled: Vec<(BlobKey, SpoolFile)>,
        outcomes: &mut [Option<PartOutcome>],
    ) {
        let keys: Vec<&str> = pending.iter().map(|p| p.key.as_str()).collect();
        let journal = match self.journal_blobs(&keys).await {
            Ok(journal) => journal,
            Err(e) => {
                tracing::error!(error = %e, "could not journal blobs");
                for p in &pending {
                    outcomes[p.slot] = Some(failed_for(
                        &p.stored,
                        FailureReason::ProcessingFailure,
                        "the blob journal is unavailable",
                    ));
                }
                return;
            }
        };
        // Whether a blob of the batch is left neither indexed, deleted nor
        // journaled in the index: then the store's journal stays open, for
        // the sweep.
        let mut unsettled = false;
        let put = self.store.put_many(spooled).await;
        let mut written = Vec::with_capacity(pending.len());
        for (p, result) in pending.into_iter().zip(put) {
            match result {
                Ok(()) => written.push(p),
                Err(e) => {
                    tracing::error!(error = %e, "could not store a blob");
                    unsettled |= !self.discard_blob(&p.key).await;
                    outcomes[p.slot] = Some(failed_for(
                        &p.stored,
                        FailureReason::ProcessingFailure,
                        "the blob store is unavailable",
                    ));
                }
            }
        }
        let news: Vec<NewInstance<'_>> = written
            .iter()
            .map(|p| NewInstance {
                inspected: &p.inspected,
                blob_key: p.key.as_str().to_owned(),
                size_bytes: p.size_bytes,
                digest: p.digest.clone(),
            })
            .collect();
        let indexed = scope
            .index_instances(&news, self.duplicate_policy, journal.is_none())
            .await;
        drop(news);
        // Per instance: its index outcome, or None when it was not indexed.
        let results: Vec<_> = match indexed {
            Ok(results) => results
                .into_iter()
                .map(|r| {
                    r.inspect_err(|e| tracing::error!(error = %e, "could not index an instance"))
                        .ok()
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "could not index a batch of instances");
                (0..written.len()).map(|_| None).collect()
            }
        };
        for (p, result) in written.into_iter().zip(results) {
            let outcome = match result {
                Some(Ok(Indexed::Stored)) => PartOutcome::Stored(p.stored),
                Some(Ok(Indexed::Identical)) => {
                    unsettled |= !self.discard_blob(&p.key).await;
                    PartOutcome::Stored(p.stored)
                }
                Some(Ok(Indexed::Replaced { old_blob })) => {
                    self.discard_blob(&BlobKey::from_stored(old_blob)).await;
                    PartOutcome::Stored(p.stored)
                }
                Some(Err(conflict)) => {
                    unsettled |= !self.discard_blob(&p.key).await;
                    match conflict {
                        IndexConflict::SeriesInOtherStudy => failed_for(
                            &p.stored,
                            FailureReason::StudyConflict,
                            "the series already belongs to another study",
                        ),
                        IndexConflict::DifferentObject => failed_for(
                            &p.stored,
                            FailureReason::DuplicateInstance,
                            "a different object is already stored under this SOP Instance UID",
                        ),
                        IndexConflict::QuotaExceeded => {
                            failed_for(&p.stored, FailureReason::OutOfResources, QUOTA_EXCEEDED)
                        }
                    }
                }
                None => {
                    unsettled |= !self.discard_blob(&p.key).await;
                    failed_for(
                        &p.stored,
                        FailureReason::ProcessingFailure,
                        "the index is unavailable",
                    )
                }
            };
            outcomes[p.slot] = Some(outcome);
        }
        if let Some(journal) = journal
            && !unsettled
            && let Err(e) = self.store.close_journal(journal).await
        {
            tracing::warn!(error = %e, "could not close a journal of the blob store; the sweeper will");
        }
    }
}
