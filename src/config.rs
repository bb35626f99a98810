//! The one typed configuration, read once from the command line and the
//! environment. No other module reads the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where the index lives (shared by `serve` and every admin command).
#[derive(Args, Clone)]
pub struct DbArgs {
    /// Folder of the embedded default: the SQLite index (`index.sqlite`), the
    /// `blobs/` folder and the `spool/` folder of uploads in progress.
    #[arg(
        long,
        env = "CLOUDPACS_DATA_DIR",
        default_value = "./cloudpacs-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Index database URL (`postgres://…` or `sqlite://…`). Default: the
    /// SQLite file in the data dir.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Maximum connections in the database pool.
    #[arg(
        long,
        env = "CLOUDPACS_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,

    /// Seconds to wait for a free pooled connection before a request fails (503).
    #[arg(
        long,
        env = "CLOUDPACS_DB_ACQUIRE_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub db_acquire_timeout_secs: u64,

    /// PostgreSQL: longest a statement may run before the server cancels it
    /// (`statement_timeout`), in seconds; 0 = no limit. SQLite has none.
    #[arg(
        long,
        env = "CLOUDPACS_DB_STATEMENT_TIMEOUT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub db_statement_timeout_secs: u64,
}

impl DbArgs {
    /// The pool options of these arguments.
    pub fn pool(&self) -> crate::db::PoolOptions {
        crate::db::PoolOptions {
            max_connections: self.db_max_connections,
            acquire_timeout: Duration::from_secs(self.db_acquire_timeout_secs),
            statement_timeout: (self.db_statement_timeout_secs > 0)
                .then(|| Duration::from_secs(self.db_statement_timeout_secs)),
        }
    }

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
            .field("db_acquire_timeout_secs", &self.db_acquire_timeout_secs)
            .field("db_statement_timeout_secs", &self.db_statement_timeout_secs)
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

/// Tokens for people: the key of tokens issued at login, and an optional
/// external OpenID Connect provider.
#[derive(Args, Clone, Default)]
pub struct AuthConfig {
    /// Secret signing the tokens issued by `POST /api/auth/login` (HS256).
    /// Default: generated at first start into `<data-dir>/jwt.key` (0600);
    /// replicas must share one secret, so set it when running several.
    #[arg(long, env = "CLOUDPACS_JWT_SECRET")]
    pub jwt_secret: Option<String>,

    /// Lifetime of issued tokens, in seconds.
    #[arg(long, env = "CLOUDPACS_JWT_TTL_SECS", default_value_t = 8 * 3600)]
    pub jwt_ttl_secs: i64,

    /// Issuer (`iss`) of an external OpenID Connect provider's tokens.
    /// Its keys come from `--oidc-jwks-file`, `--oidc-jwks-url`, or else
    /// from the `jwks_uri` of `{issuer}/.well-known/openid-configuration`.
    #[arg(long, env = "CLOUDPACS_OIDC_ISSUER", requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,

    /// Audience (`aud`) the provider's tokens must carry.
    #[arg(long, env = "CLOUDPACS_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,

    /// The provider's public keys (a JWKS document, RS256/ES256), read at start.
    #[arg(long, env = "CLOUDPACS_OIDC_JWKS_FILE", requires = "oidc_issuer")]
    pub oidc_jwks_file: Option<PathBuf>,

    /// URL of the provider's JWKS document (https, or http to a loopback
    /// address), fetched at start, hourly, and when a token names an unknown
    /// key id (at most every `--oidc-jwks-refetch-secs`).
    #[arg(
        long,
        env = "CLOUDPACS_OIDC_JWKS_URL",
        requires = "oidc_issuer",
        conflicts_with = "oidc_jwks_file"
    )]
    pub oidc_jwks_url: Option<String>,

    /// Least seconds between two fetches of the provider's keys (a token
    /// naming an unknown key id triggers one).
    #[arg(long, env = "CLOUDPACS_OIDC_JWKS_REFETCH_SECS", default_value_t = 30)]
    pub oidc_jwks_refetch_secs: u64,

    /// Claim of the provider's tokens holding the hospital id.
    #[arg(
        long,
        env = "CLOUDPACS_OIDC_HOSPITAL_CLAIM",
        default_value = "hospital"
    )]
    pub oidc_hospital_claim: String,

    /// Claim holding the roles (an array, or a space/comma-separated string).
    #[arg(long, env = "CLOUDPACS_OIDC_ROLES_CLAIM", default_value = "roles")]
    pub oidc_roles_claim: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "***"))
            .field("jwt_ttl_secs", &self.jwt_ttl_secs)
            .field("oidc_issuer", &self.oidc_issuer)
            .field("oidc_audience", &self.oidc_audience)
            .field("oidc_jwks_file", &self.oidc_jwks_file)
            .field("oidc_jwks_url", &self.oidc_jwks_url)
            .field("oidc_jwks_refetch_secs", &self.oidc_jwks_refetch_secs)
            .finish()
    }
}

/// Options of the hospital policies (allow-lists, retention).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct PolicyArgs {
    /// Proxies (CIDRs, comma-separated, e.g. the load balancer's subnet)
    /// whose `X-Forwarded-For` is believed: behind them the client address
    /// is the right-most forwarded hop that is not itself a trusted proxy.
    /// Empty (default): the socket peer is the client, `X-Forwarded-For` is
    /// ignored.
    #[arg(long, env = "CLOUDPACS_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr_arg)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds between runs of the retention sweeper, which deletes the
    /// studies of hospitals with `dataRetentionDays` once they are older.
    /// 0 disables it on this replica.
    #[arg(
        long,
        env = "CLOUDPACS_RETENTION_INTERVAL_SECS",
        default_value_t = 3600
    )]
    pub retention_interval_secs: u64,
    /// Studies the retention sweeper deletes per batch (it renews its lease
    /// between batches).
    #[arg(long, env = "CLOUDPACS_RETENTION_BATCH", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_batch: u64,
}

impl Default for PolicyArgs {
    fn default() -> Self {
        PolicyArgs {
            trusted_proxies: Vec::new(),
            retention_interval_secs: 3600,
            retention_batch: 50,
        }
    }
}

fn parse_cidr_arg(s: &str) -> Result<ipnet::IpNet, String> {
    crate::policy::parse_cidr(s)
}

/// Where blobs are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A local folder.
    File(PathBuf),
    /// An S3 or S3-compatible bucket (or a bucket per hospital).
    S3(S3Settings),
}

/// Defaults of the S3 options, shared by clap and [`S3Args::default`].
mod s3_defaults {
    pub const CONNECT_TIMEOUT_SECS: u64 = 5;
    pub const READ_TIMEOUT_SECS: u64 = 120;
    pub const MAX_ATTEMPTS: u32 = 3;
    pub const MULTIPART_THRESHOLD_MIB: u64 = 16;
    pub const PART_SIZE_MIB: u64 = 8;
    pub const UPLOAD_CONCURRENCY: usize = 4;
}

/// Options of the S3 blob store (used with `--storage s3://…`). Credentials
/// and the region come from the standard AWS chain: `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_REGION`, the shared
/// profile files, web identity, the ECS task role or the EC2 instance role.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct S3Args {
    /// Endpoint URL of an S3-compatible store (MinIO, Garage, Ceph, …),
    /// e.g. `http://10.0.0.5:9000`. Unset: AWS S3 of the configured region.
    #[arg(long = "s3-endpoint", env = "CLOUDPACS_S3_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`) instead of virtual-hosted
    /// (`BUCKET.ENDPOINT/KEY`). Default: true when `--s3-endpoint` is set
    /// (what S3-compatible stores expect), false for AWS.
    #[arg(long = "s3-path-style", env = "CLOUDPACS_S3_PATH_STYLE", action = clap::ArgAction::Set)]
    pub path_style: Option<bool>,

    /// With a bucket per hospital: create a hospital's bucket on its first
    /// upload. Off: buckets are created by the operator, and an upload to a
    /// missing bucket fails (0x0110).
    #[arg(long = "s3-create-buckets", env = "CLOUDPACS_S3_CREATE_BUCKETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub create_buckets: bool,

    /// Seconds to wait for a TCP/TLS connection to the store.
    #[arg(long = "s3-connect-timeout-secs", env = "CLOUDPACS_S3_CONNECT_TIMEOUT_SECS", default_value_t = s3_defaults::CONNECT_TIMEOUT_SECS)]
    pub connect_timeout_secs: u64,

    /// Seconds from sending a request (including its body, up to one
    /// multipart part) to the first byte of the answer.
    #[arg(long = "s3-read-timeout-secs", env = "CLOUDPACS_S3_READ_TIMEOUT_SECS", default_value_t = s3_defaults::READ_TIMEOUT_SECS)]
    pub read_timeout_secs: u64,

    /// Attempts per S3 request (1 = no retry); retries back off
    /// exponentially with jitter and only cover transient errors.
    #[arg(long = "s3-max-attempts", env = "CLOUDPACS_S3_MAX_ATTEMPTS", default_value_t = s3_defaults::MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Instances of this size (MiB) or larger are uploaded as multipart
    /// uploads; smaller ones with one PutObject.
    #[arg(long = "s3-multipart-threshold-mib", env = "CLOUDPACS_S3_MULTIPART_THRESHOLD_MIB", default_value_t = s3_defaults::MULTIPART_THRESHOLD_MIB)]
    pub multipart_threshold_mib: u64,

    /// Part size (MiB, at least 5) of multipart uploads.
    #[arg(long = "s3-part-size-mib", env = "CLOUDPACS_S3_PART_SIZE_MIB", default_value_t = s3_defaults::PART_SIZE_MIB, value_parser = clap::value_parser!(u64).range(5..))]
    pub part_size_mib: u64,

    /// Parts of one multipart upload sent at the same time. Parts are read
    /// from the spool file as they are sent, so memory stays small.
    #[arg(long = "s3-upload-concurrency", env = "CLOUDPACS_S3_UPLOAD_CONCURRENCY", default_value_t = s3_defaults::UPLOAD_CONCURRENCY)]
    pub upload_concurrency: usize,
}

impl Default for S3Args {
    fn default() -> Self {
        S3Args {
            endpoint: None,
            path_style: None,
            create_buckets: false,
            connect_timeout_secs: s3_defaults::CONNECT_TIMEOUT_SECS,
            read_timeout_secs: s3_defaults::READ_TIMEOUT_SECS,
            max_attempts: s3_defaults::MAX_ATTEMPTS,
            multipart_threshold_mib: s3_defaults::MULTIPART_THRESHOLD_MIB,
            part_size_mib: s3_defaults::PART_SIZE_MIB,
            upload_concurrency: s3_defaults::UPLOAD_CONCURRENCY,
        }
    }
}

/// The placeholder of a bucket-per-hospital name template.
pub const HOSPITAL_PLACEHOLDER: &str = "{hospitalId}";

/// Which bucket a blob goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketLayout {
    /// One bucket; each hospital is a prefix inside it.
    Shared(String),
    /// A bucket per hospital, named from a template holding
    /// [`HOSPITAL_PLACEHOLDER`] (e.g. `medical-imaging-{hospitalId}`).
    PerHospital(String),
}

/// Static S3 credentials, for embedders and tests; the command line always
/// uses the AWS default chain. The secret never appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .finish()
    }
}

/// Everything the S3 store needs: the parsed `s3://` URL and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub layout: BucketLayout,
    /// Key prefix inside the bucket: empty or ending with `/`.
    pub prefix: String,
    pub options: S3Args,
    /// `None`: the AWS default credential chain.
    pub credentials: Option<StaticCredentials>,
}

impl S3Settings {
    /// Parse `s3://BUCKET[/PREFIX]`, where BUCKET may be a template holding
    /// `{hospitalId}` once (a bucket per hospital).
    pub fn parse(url: &str, options: S3Args) -> Result<Self, String> {
        let err = |why: &str| format!("invalid --storage {url:?}: {why}");
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| err("expected s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let literal = bucket.replacen(HOSPITAL_PLACEHOLDER, "", 1);
        if literal.contains(['{', '}']) {
            return Err(err(
                "the only placeholder a bucket may hold is {hospitalId}, once",
            ));
        }
        if !literal
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(err(
                "a bucket name holds only lowercase letters, digits, '-' and '.'",
            ));
        }
        let layout = if literal.len() == bucket.len() {
            if !(3..=63).contains(&bucket.len()) {
                return Err(err("a bucket name has 3 to 63 characters"));
            }
            BucketLayout::Shared(bucket.to_owned())
        } else {
            BucketLayout::PerHospital(bucket.to_owned())
        };
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(S3Settings {
            layout,
            prefix,
            options,
            credentials: None,
        })
    }
}

/// `cloudpacs serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    #[command(flatten)]
    pub db: DbArgs,

    /// Address to listen on.
    #[arg(long, env = "CLOUDPACS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Blob storage: `file://DIR`, `s3://BUCKET/PREFIX` (one bucket, a
    /// prefix per hospital inside it) or `s3://NAME-{hospitalId}/PREFIX` (a
    /// bucket per hospital, e.g. `s3://medical-imaging-{hospitalId}`).
    /// Default: `blobs/` in the data dir.
    #[arg(long, env = "CLOUDPACS_STORAGE")]
    pub storage: Option<String>,

    #[command(flatten)]
    pub s3: S3Args,

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

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Browser origins allowed to call the API (CORS), comma-separated, e.g.
    /// `https://viewer.example.org`. None by default; never a wildcard.
    #[arg(long, env = "CLOUDPACS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

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
            Some(s) if s.starts_with("s3://") => {
                S3Settings::parse(s, self.s3.clone()).map(Storage::S3)
            }
            Some(s) => match s.strip_prefix("file://") {
                Some(dir) if !dir.is_empty() => Ok(Storage::File(PathBuf::from(dir))),
                _ => Err(format!(
                    "unsupported --storage {s:?}: expected file://DIR or s3://BUCKET/PREFIX"
                )),
            },
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.db.data_dir.join("spool")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{BucketLayout, S3Args, S3Settings, StaticCredentials, redact_url};

    #[test]
    fn s3_urls_parse_into_a_layout_and_a_prefix() {
        let s = S3Settings::parse("s3://dicom/archive/v1/", S3Args::default()).unwrap();
        assert_eq!(s.layout, BucketLayout::Shared("dicom".into()));
        assert_eq!(s.prefix, "archive/v1/");
        let s = S3Settings::parse("s3://dicom", S3Args::default()).unwrap();
        assert_eq!(s.prefix, "");
        let s = S3Settings::parse("s3://medical-imaging-{hospitalId}/", S3Args::default()).unwrap();
        assert_eq!(
            s.layout,
            BucketLayout::PerHospital("medical-imaging-{hospitalId}".into())
        );
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://a_b/x",
            "s3://x-{hospital}",
            "s3://{hospitalId}-{hospitalId}",
            "file://x",
        ] {
            assert!(S3Settings::parse(bad, S3Args::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_secrets_are_redacted() {
        let mut s = S3Settings::parse("s3://dicom", S3Args::default()).unwrap();
        s.credentials = Some(StaticCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
        });
        let shown = format!("{s:?}");
        assert!(shown.contains("AKIDEXAMPLE") && !shown.contains("wJalrXUtnFEMI"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
