//! The one typed configuration, read once from the command line and the
//! environment. No other module reads the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Where the index lives (shared by `serve` and every admin command).
#[derive(Args, Clone)]
pub struct DbArgs {
    /// Folder of the embedded default: the SQLite index (`index.sqlite`), the
    /// `blobs/` folder and the `spool/` folder of uploads in progress.
    #[arg(long, env = "CLOUDPACS_DATA_DIR", default_value = "./cloudpacs-data")]
    pub data_dir: PathBuf,

    /// Index database URL (`postgres://…` or `sqlite://…`). Default: the
    /// SQLite file in the data dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Maximum connections in the database pool.
    #[arg(long, env = "CLOUDPACS_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

impl DbArgs {
    /// The URL to connect to.
    pub fn url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("index.sqlite").display()
            ),
        }
    }
}

impl fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbArgs")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("db_max_connections", &self.db_max_connections)
            .finish()
    }
}

/// A URL with its password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// What to do with a different object sent under a stored SOP Instance UID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DuplicatePolicy {
    /// Keep the stored instance and report a failure for the new one.
    Reject,
    /// Replace the stored instance with the new one.
    Overwrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where blobs are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A local folder.
    File(PathBuf),
}

/// `cloudpacs serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    #[command(flatten)]
    pub db: DbArgs,

    /// Address to listen on.
    #[arg(long, env = "CLOUDPACS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Blob storage: `file://DIR`. Default: `blobs/` in the data dir.
    #[arg(long, env = "CLOUDPACS_STORAGE")]
    pub storage: Option<String>,

    /// Public base URL of this server (e.g. `https://pacs.example.org`), used
    /// for RetrieveURL and BulkDataURI. Default: from the request's `Host`
    /// when it carries a port, else URLs are relative.
    #[arg(long, env = "CLOUDPACS_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Largest accepted STOW-RS request body, in bytes (413 above).
    #[arg(long, env = "CLOUDPACS_MAX_REQUEST_BYTES", default_value_t = 4 << 30)]
    pub max_request_bytes: u64,

    /// QIDO-RS results per page when the request gives no `limit`.
    #[arg(long, env = "CLOUDPACS_QIDO_DEFAULT_LIMIT", default_value_t = 100)]
    pub qido_default_limit: u64,

    /// The most QIDO-RS results one request returns (a larger `limit` is cut,
    /// with a `Warning: 299` header).
    #[arg(long, env = "CLOUDPACS_QIDO_MAX_LIMIT", default_value_t = 1000)]
    pub qido_max_limit: u64,

    /// Policy for a different object under a stored SOP Instance UID.
    /// Identical re-sends always succeed.
    #[arg(long, env = "CLOUDPACS_DUPLICATE_POLICY", value_enum, default_value_t = DuplicatePolicy::Reject)]
    pub duplicate_policy: DuplicatePolicy,

    /// Age in seconds after which a blob whose upload never reached the index
    /// (a crash mid-ingest) is deleted.
    #[arg(long, env = "CLOUDPACS_ORPHAN_AGE_SECS", default_value_t = 3600)]
    pub orphan_age_secs: u64,

    /// Log format.
    #[arg(long, env = "CLOUDPACS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    #[arg(long, env = "CLOUDPACS_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

impl ServeConfig {
    /// The blob store to use.
    pub fn storage(&self) -> Result<Storage, String> {
        match self.storage.as_deref() {
            None => Ok(Storage::File(self.db.data_dir.join("blobs"))),
            Some(s) => match s.strip_prefix("file://") {
                Some(dir) if !dir.is_empty() => Ok(Storage::File(PathBuf::from(dir))),
                _ => Err(format!("unsupported --storage {s:?}: expected file://DIR")),
            },
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.db.data_dir.join("spool")
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
