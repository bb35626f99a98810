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
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::archive::Archive;
use crate::audit::AuditLog;
use crate::auth::jwks::Jwks;
use crate::auth::jwt::{JwtKeys, Oidc};
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
    /// Token keys (login tokens and the external provider's).
    pub jwt: Arc<JwtKeys>,
    /// Allowed CORS origins.
    pub cors_origins: Vec<String>,
    /// Whether this start created the index (and the hospital `default`).
    pub first_start: bool,
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// The queue to the audit trail's writer.
    pub audit: AuditLog,
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
        let db = Db::connect(&config.db.url(), &config.db.pool())
            .await
            .map_err(|e| format!("cannot open the index: {e}"))?;
        db.migrate()
            .await
            .map_err(|e| format!("cannot migrate the index: {e}"))?;
        let first_start = db
            .ensure_default_hospital()
            .await
            .map_err(|e| e.to_string())?;
        if first_start {
            tracing::info!("created the hospital `default` on an empty index");
        }
        let store = store::open(&config.storage()?)
            .await
            .map_err(|e| format!("cannot open the blob store: {e}"))?;
        let spool = Spool::open(config.spool_dir())
            .await
            .map_err(|e| format!("cannot open the spool folder: {e}"))?;
        Ok(AppState {
            audit: AuditLog::start(db.clone()),
            trusted_proxies: config.policy.trusted_proxies.clone().into(),
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
            jwt: Arc::new(jwt_keys(config).await?),
            cors_origins: config.cors_origins.clone(),
            first_start,
        })
    }
}

/// The login-token key (configured, or kept in the data dir) and the
/// external provider's keys.
async fn jwt_keys(config: &ServeConfig) -> Result<JwtKeys, String> {
    let a = &config.auth;
    let secret = match &a.jwt_secret {
        Some(s) if s.len() >= 32 => s.clone().into_bytes(),
        Some(_) => return Err("--jwt-secret must be at least 32 characters".into()),
        None => {
            let path = config.db.data_dir.join("jwt.key");
            match tokio::fs::read_to_string(&path).await {
                Ok(s) => s.trim().as_bytes().to_vec(),
                Err(_) => {
                    let key = crate::auth::keys::generate().hash;
                    write_private(&path, &key)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    key.into_bytes()
                }
            }
        }
    };
    let oidc = match (&a.oidc_issuer, &a.oidc_audience) {
        (Some(issuer), Some(audience)) => {
            let keys =
                match &a.oidc_jwks_file {
                    Some(file) => {
                        let text = tokio::fs::read_to_string(file)
                            .await
                            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                        Jwks::fixed(serde_json::from_str(&text).map_err(|e| {
                            format!("{} is not a JWKS document: {e}", file.display())
                        })?)
                    }
                    None => {
                        let keys = Jwks::remote(
                            issuer,
                            a.oidc_jwks_url.as_deref(),
                            std::time::Duration::from_secs(a.oidc_jwks_refetch_secs),
                        )?;
                        keys.refresh().await;
                        keys
                    }
                };
            Some(Oidc {
                issuer: issuer.clone(),
                audience: audience.clone(),
                keys: Arc::new(keys),
                hospital_claim: a.oidc_hospital_claim.clone(),
                roles_claim: a.oidc_roles_claim.clone(),
            })
        }
        _ => None,
    };
    Ok(JwtKeys::new(&secret, a.jwt_ttl_secs, oidc))
}

/// Write a file readable by the owner only.
fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(content.as_bytes())
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let dicomweb = crate::dicomweb::routes();
    let cors = cors(&state.cors_origins);
    Router::new()
        .nest("/api", crate::admin::routes())
        .nest("/dicom-web", dicomweb.clone())
        .nest("/tenants/{hospital_id}/dicom-web", dicomweb)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Every DICOMweb and admin request leaves one audit row.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ))
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
        .layer(cors)
        .with_state(state)
}

/// CORS for the configured origins only (OHIF calls from another origin
/// with an `Authorization` header; errors carry the headers too).
fn cors(origins: &[String]) -> CorsLayer {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::ACCEPT,
            header::CONTENT_TYPE,
            HeaderName::from_static("if-none-match"),
        ])
        .expose_headers([header::WARNING, header::ETAG, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(3600))
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
