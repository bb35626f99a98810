//! The application: shared state and the router (DICOMweb tables, health
//! probes, middleware).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

use crate::archive::Archive;
use crate::config::ServeConfig;
use crate::db::Db;
use crate::store::{self, Spool};

/// Handles shared by every request. No globals: tests build their own.
#[derive(Clone)]
pub struct AppState {
    pub archive: Archive,
    /// `--public-url`, for absolute RetrieveURL/BulkDataURI.
    pub public_url: Option<String>,
    pub max_request_bytes: u64,
    /// QIDO-RS page sizes.
    pub paging: crate::dicomweb::query::Paging,
}

impl AppState {
    /// Open the index (running migrations), the blob store and the spool
    /// folder described by `config`; create the hospital `default` on an
    /// empty index.
    pub async fn open(config: &ServeConfig) -> Result<Self, String> {
        tokio::fs::create_dir_all(&config.db.data_dir)
            .await
            .map_err(|e| {
                format!(
                    "cannot create the data dir {}: {e}",
                    config.db.data_dir.display()
                )
            })?;
        let db = Db::connect(&config.db.url(), config.db.db_max_connections)
            .await
            .map_err(|e| format!("cannot open the index: {e}"))?;
        db.migrate()
            .await
            .map_err(|e| format!("cannot migrate the index: {e}"))?;
        if db
            .ensure_default_hospital()
            .await
            .map_err(|e| e.to_string())?
        {
            tracing::info!("created the hospital `default` on an empty index");
        }
        let store = store::open(&config.storage()?)
            .await
            .map_err(|e| format!("cannot open the blob store: {e}"))?;
        let spool = Spool::open(config.spool_dir())
            .await
            .map_err(|e| format!("cannot open the spool folder: {e}"))?;
        Ok(AppState {
            archive: Archive {
                db,
                store: Arc::from(store),
                spool,
                duplicate_policy: config.duplicate_policy,
            },
            public_url: config.public_url.clone(),
            max_request_bytes: config.max_request_bytes,
            paging: crate::dicomweb::query::Paging {
                default_limit: config.qido_default_limit,
                max_limit: config.qido_max_limit,
            },
        })
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let dicomweb = crate::dicomweb::routes();
    Router::new()
        .nest("/dicom-web", dicomweb.clone())
        .nest("/tenants/{hospital_id}/dicom-web", dicomweb)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(
            // Logs carry the route template, never the URI (UIDs), bodies,
            // or headers (credentials).
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("-", |p| p.as_str());
                    tracing::info_span!("request", method = %req.method(), route = %route)
                })
                .on_request(())
                .on_response(
                    |resp: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                        tracing::info!(
                            status = resp.status().as_u16(),
                            duration_ms = latency.as_millis() as u64,
                            "response"
                        );
                    },
                ),
        )
        // JSON answers are gzip-compressed when the client accepts it; DICOM
        // and pixel data are not (they compress poorly and cost CPU).
        .layer(CompressionLayer::new().gzip(true).compress_when(
            |_status: StatusCode,
             _version: axum::http::Version,
             headers: &axum::http::HeaderMap,
             _ext: &axum::http::Extensions| {
                headers
                    .get(axum::http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| {
                        ct.starts_with("application/dicom+json")
                            || ct.starts_with("application/json")
                    })
            },
        ))
        .layer(CatchPanicLayer::new())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = state.archive.db.ping().await;
    let store = state.archive.store.check().await;
    match (db, store) {
        (Ok(()), Ok(())) => (StatusCode::OK, "ready").into_response(),
        (db, store) => {
            tracing::warn!(db_ok = db.is_ok(), store_ok = store.is_ok(), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
        }
    }
}
