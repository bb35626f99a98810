//! A stored SOP instance: where its blob is and everything a read needs.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "instances")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub hospital_id: i64,
    pub study_id: i64,
    pub series_id: i64,
    pub sop_uid: String,
    pub sop_class_uid: String,
    pub instance_number: Option<i32>,
    pub transfer_syntax: String,
    pub rows: Option<i32>,
    pub columns: Option<i32>,
    pub bits_allocated: Option<i32>,
    pub number_of_frames: i32,
    #[sea_orm(unique)]
    pub blob_key: String,
    pub size_bytes: i64,
    /// `blake3:` and the hex BLAKE3 hash of the blob; the hex SHA-256 alone
    /// on rows indexed before BLAKE3 (migration 7).
    pub digest: String,
    /// Offset of the first byte of the PixelData value (native) or of the
    /// first item of the pixel sequence (encapsulated).
    pub pixel_data_offset: Option<i64>,
    pub pixel_data_length: Option<i64>,
    /// JSON: per frame, the list of `[offset, length]` byte ranges.
    #[sea_orm(column_type = "Text", nullable)]
    pub frames: Option<String>,
    /// JSON: bulk data path -> `[offset, length]`.
    #[sea_orm(column_type = "Text")]
    pub bulk: String,
    /// DICOM JSON of the instance, bulk data as relative BulkDataURIs.
    #[sea_orm(column_type = "Text")]
    pub metadata: String,
    pub received_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::study::Entity",
        from = "Column::StudyId",
        to = "super::study::Column::Id"
    )]
    Study,
    #[sea_orm(
        belongs_to = "super::series::Entity",
        from = "Column::SeriesId",
        to = "super::series::Column::Id"
    )]
    Series,
}

impl ActiveModelBehavior for ActiveModel {}
