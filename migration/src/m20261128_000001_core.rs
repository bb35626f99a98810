//! The core index: hospitals (tenants), studies, series, instances, and the
//! pending-blob journal that makes ingest crash-safe.
//!
//! Every DICOM row carries `hospital_id`, and every unique key is
//! (hospital, UID): two hospitals may hold copies of the same study.
//! Times are Unix epoch milliseconds (`big_integer`), the same on SQLite and
//! PostgreSQL. JSON documents are stored as text: they are served verbatim.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Hospitals {
    Table,
    Id,
    HospitalId,
    Name,
    ContactEmail,
    ContactPhone,
    Address,
    Plan,
    Status,
    MaxUsers,
    MaxStorageBytes,
    Settings,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Studies {
    Table,
    Id,
    HospitalId,
    StudyUid,
    PatientName,
    PatientNameNorm,
    PatientId,
    PatientBirthDate,
    PatientSex,
    StudyDate,
    StudyTime,
    AccessionNumber,
    ReferringPhysicianName,
    StudyIdAttr,
    StudyDescription,
    ModalitiesInStudy,
    NumberOfSeries,
    NumberOfInstances,
    SizeBytes,
    Attributes,
    ReceivedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
#[expect(
    clippy::enum_variant_names,
    reason = "the columns are named after DICOM attributes"
)]
enum Series {
    Table,
    Id,
    HospitalId,
    StudyId,
    SeriesUid,
    Modality,
    SeriesNumber,
    SeriesDescription,
    SeriesDate,
    SeriesTime,
    PpsStartDate,
    PpsStartTime,
    NumberOfInstances,
    Attributes,
    ReceivedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Instances {
    Table,
    Id,
    HospitalId,
    StudyId,
    SeriesId,
    SopUid,
    SopClassUid,
    InstanceNumber,
    TransferSyntax,
    Rows,
    Columns,
    BitsAllocated,
    NumberOfFrames,
    BlobKey,
    SizeBytes,
    Sha256,
    PixelDataOffset,
    PixelDataLength,
    Frames,
    Bulk,
    Metadata,
    ReceivedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum PendingBlobs {
    Table,
    Id,
    BlobKey,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Hospitals::Table)
                .col(big_pk_auto(Hospitals::Id))
                .col(string_uniq(Hospitals::HospitalId))
                .col(string(Hospitals::Name))
                .col(string_null(Hospitals::ContactEmail))
                .col(string_null(Hospitals::ContactPhone))
                .col(string_null(Hospitals::Address))
                .col(string(Hospitals::Plan))
                .col(string(Hospitals::Status))
                .col(integer(Hospitals::MaxUsers))
                .col(big_integer(Hospitals::MaxStorageBytes))
                .col(text(Hospitals::Settings))
                .col(big_integer(Hospitals::CreatedAt))
                .col(big_integer(Hospitals::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Studies::Table)
                .col(big_pk_auto(Studies::Id))
                .col(big_integer(Studies::HospitalId))
                .col(string(Studies::StudyUid))
                .col(string_null(Studies::PatientName))
                .col(string_null(Studies::PatientNameNorm))
                .col(string_null(Studies::PatientId))
                .col(string_null(Studies::PatientBirthDate))
                .col(string_null(Studies::PatientSex))
                .col(string_null(Studies::StudyDate))
                .col(string_null(Studies::StudyTime))
                .col(string_null(Studies::AccessionNumber))
                .col(string_null(Studies::ReferringPhysicianName))
                .col(string_null(Studies::StudyIdAttr))
                .col(string_null(Studies::StudyDescription))
                .col(string(Studies::ModalitiesInStudy))
                .col(integer(Studies::NumberOfSeries))
                .col(integer(Studies::NumberOfInstances))
                .col(big_integer(Studies::SizeBytes))
                .col(text(Studies::Attributes))
                .col(big_integer(Studies::ReceivedAt))
                .col(big_integer(Studies::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Studies::Table, Studies::HospitalId)
                        .to(Hospitals::Table, Hospitals::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Series::Table)
                .col(big_pk_auto(Series::Id))
                .col(big_integer(Series::HospitalId))
                .col(big_integer(Series::StudyId))
                .col(string(Series::SeriesUid))
                .col(string_null(Series::Modality))
                .col(integer_null(Series::SeriesNumber))
                .col(string_null(Series::SeriesDescription))
                .col(string_null(Series::SeriesDate))
                .col(string_null(Series::SeriesTime))
                .col(string_null(Series::PpsStartDate))
                .col(string_null(Series::PpsStartTime))
                .col(integer(Series::NumberOfInstances))
                .col(text(Series::Attributes))
                .col(big_integer(Series::ReceivedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Series::Table, Series::StudyId)
                        .to(Studies::Table, Studies::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Instances::Table)
                .col(big_pk_auto(Instances::Id))
                .col(big_integer(Instances::HospitalId))
                .col(big_integer(Instances::StudyId))
                .col(big_integer(Instances::SeriesId))
                .col(string(Instances::SopUid))
                .col(string(Instances::SopClassUid))
                .col(integer_null(Instances::InstanceNumber))
                .col(string(Instances::TransferSyntax))
                .col(integer_null(Instances::Rows))
                .col(integer_null(Instances::Columns))
                .col(integer_null(Instances::BitsAllocated))
                .col(integer(Instances::NumberOfFrames))
                .col(string_uniq(Instances::BlobKey))
                .col(big_integer(Instances::SizeBytes))
                .col(string(Instances::Sha256))
                .col(big_integer_null(Instances::PixelDataOffset))
                .col(big_integer_null(Instances::PixelDataLength))
                .col(text_null(Instances::Frames))
                .col(text(Instances::Bulk))
                .col(text(Instances::Metadata))
                .col(big_integer(Instances::ReceivedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Instances::Table, Instances::SeriesId)
                        .to(Series::Table, Series::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Instances::Table, Instances::StudyId)
                        .to(Studies::Table, Studies::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PendingBlobs::Table)
                .col(big_pk_auto(PendingBlobs::Id))
                .col(string_uniq(PendingBlobs::BlobKey))
                .col(big_integer(PendingBlobs::CreatedAt))
                .to_owned(),
        )
        .await?;

        // Unique keys: always (hospital, UID).
        unique(
            m,
            "ux_studies_hospital_uid",
            Studies::Table,
            &[Studies::HospitalId, Studies::StudyUid],
        )
        .await?;
        unique(
            m,
            "ux_series_hospital_uid",
            Series::Table,
            &[Series::HospitalId, Series::SeriesUid],
        )
        .await?;
        unique(
            m,
            "ux_instances_hospital_uid",
            Instances::Table,
            &[Instances::HospitalId, Instances::SopUid],
        )
        .await?;

        // Lookups by parent, and the search keys every QIDO level filters on.
        index(
            m,
            "ix_series_study",
            Series::Table,
            &[Series::StudyId, Series::SeriesNumber],
        )
        .await?;
        index(
            m,
            "ix_instances_series",
            Instances::Table,
            &[Instances::SeriesId, Instances::InstanceNumber],
        )
        .await?;
        index(
            m,
            "ix_instances_study",
            Instances::Table,
            &[Instances::StudyId],
        )
        .await?;
        index(
            m,
            "ix_pending_created",
            PendingBlobs::Table,
            &[PendingBlobs::CreatedAt],
        )
        .await?;
        index(
            m,
            "ix_studies_received",
            Studies::Table,
            &[Studies::HospitalId, Studies::ReceivedAt],
        )
        .await?;
        index(
            m,
            "ix_studies_pn",
            Studies::Table,
            &[Studies::HospitalId, Studies::PatientNameNorm],
        )
        .await?;
        index(
            m,
            "ix_studies_pid",
            Studies::Table,
            &[Studies::HospitalId, Studies::PatientId],
        )
        .await?;
        index(
            m,
            "ix_studies_date",
            Studies::Table,
            &[Studies::HospitalId, Studies::StudyDate],
        )
        .await?;
        index(
            m,
            "ix_studies_accession",
            Studies::Table,
            &[Studies::HospitalId, Studies::AccessionNumber],
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            PendingBlobs::Table.into_iden(),
            Instances::Table.into_iden(),
            Series::Table.into_iden(),
            Studies::Table.into_iden(),
            Hospitals::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}

async fn unique<T: IntoIden + Copy + 'static>(
    m: &SchemaManager<'_>,
    name: &str,
    table: T,
    cols: &[T],
) -> Result<(), DbErr> {
    let mut idx = Index::create();
    idx.name(name).table(table).unique();
    for c in cols {
        idx.col(*c);
    }
    m.create_index(idx.to_owned()).await
}

async fn index<T: IntoIden + Copy + 'static>(
    m: &SchemaManager<'_>,
    name: &str,
    table: T,
    cols: &[T],
) -> Result<(), DbErr> {
    let mut idx = Index::create();
    idx.name(name).table(table);
    for c in cols {
        idx.col(*c);
    }
    m.create_index(idx.to_owned()).await
}
