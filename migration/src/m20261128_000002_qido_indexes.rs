//! Indexes for QIDO-RS: every required matching key per hospital, and on
//! PostgreSQL `text_pattern_ops` twins so that prefix wildcards (`LIKE
//! 'DOE%'`) use an index whatever the database collation. (SQLite uses the
//! plain indexes for prefix LIKE because the connection sets
//! `case_sensitive_like`.)

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const PLAIN: &[(&str, &str, &str)] = &[
    (
        "ix_studies_study_time",
        "studies",
        "hospital_id, study_time",
    ),
    (
        "ix_studies_referring",
        "studies",
        "hospital_id, referring_physician_name",
    ),
    (
        "ix_studies_study_id",
        "studies",
        "hospital_id, study_id_attr",
    ),
    (
        "ix_studies_description",
        "studies",
        "hospital_id, study_description",
    ),
    ("ix_studies_id_desc", "studies", "hospital_id, id"),
    ("ix_series_modality", "series", "hospital_id, modality"),
    ("ix_series_study_modality", "series", "study_id, modality"),
    ("ix_series_number", "series", "hospital_id, series_number"),
    (
        "ix_series_pps_date",
        "series",
        "hospital_id, pps_start_date",
    ),
    (
        "ix_instances_sop_class",
        "instances",
        "hospital_id, sop_class_uid",
    ),
    (
        "ix_instances_number",
        "instances",
        "hospital_id, instance_number",
    ),
];

const PATTERN: &[(&str, &str, &str)] = &[
    ("ix_studies_pn_pattern", "studies", "patient_name_norm"),
    ("ix_studies_pid_pattern", "studies", "patient_id"),
    (
        "ix_studies_accession_pattern",
        "studies",
        "accession_number",
    ),
    (
        "ix_studies_description_pattern",
        "studies",
        "study_description",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for (name, table, cols) in PLAIN {
            db.execute_unprepared(&format!("CREATE INDEX {name} ON {table} ({cols})"))
                .await?;
        }
        if m.get_database_backend() == sea_orm::DbBackend::Postgres {
            for (name, table, col) in PATTERN {
                db.execute_unprepared(&format!(
                    "CREATE INDEX {name} ON {table} (hospital_id, {col} text_pattern_ops)"
                ))
                .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for (name, ..) in PLAIN.iter().chain(
            if m.get_database_backend() == sea_orm::DbBackend::Postgres {
                PATTERN
            } else {
                &[]
            },
        ) {
            db.execute_unprepared(&format!("DROP INDEX {name}")).await?;
        }
        Ok(())
    }
}
