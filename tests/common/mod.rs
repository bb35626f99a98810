//! The shared test harness: an in-process app on a fresh index (SQLite in a
//! temporary folder, or a fresh PostgreSQL database when
//! `TEST_DATABASE_URL` is set) with real migrations, plus builders of
//! synthetic DICOM instances and STOW bodies.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::zombie_processes
)]

pub mod s3;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use cloudpacs::config::{DbArgs, DuplicatePolicy, LogFormat, S3Args, ServeConfig};
use cloudpacs::{AppState, app};
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use http_body_util::BodyExt;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::Value;
use tower::ServiceExt;

pub const BOUNDARY: &str = "cloudpacs-test-boundary";
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

pub struct TestApp {
    pub state: AppState,
    pub router: Router,
    pub config: ServeConfig,
    pub dir: tempfile::TempDir,
    /// An admin API key of the hospital `default`, sent by `request` when a
    /// request carries no Authorization header.
    pub key: String,
}

/// An external provider: issuer, audience and where its keys come from.
struct Oidc {
    issuer: String,
    audience: String,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    refetch_secs: u64,
}

pub struct TestAppBuilder {
    duplicate_policy: DuplicatePolicy,
    max_request_bytes: u64,
    public_url: Option<String>,
    qido_limits: (u64, u64),
    cors_origins: Vec<String>,
    oidc: Option<Oidc>,
    storage: Option<String>,
    s3: S3Args,
    policy: cloudpacs::config::PolicyArgs,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            duplicate_policy: DuplicatePolicy::Reject,
            max_request_bytes: 1 << 30,
            public_url: None,
            qido_limits: (100, 1000),
            cors_origins: Vec::new(),
            oidc: None,
            storage: None,
            s3: S3Args::default(),
            policy: cloudpacs::config::PolicyArgs::default(),
        }
    }

    pub async fn new() -> Self {
        Self::builder().build().await
    }

    /// Send a request as the admin of `default` unless it carries its own
    /// Authorization header.
    pub async fn request(&self, mut req: Request<Body>) -> Response<Body> {
        if !req.headers().contains_key("authorization") {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {}", self.key).parse().unwrap(),
            );
        }
        self.request_raw(req).await
    }

    /// Send a request exactly as given (no credentials added).
    pub async fn request_raw(&self, req: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(req).await.unwrap()
    }

    /// A new API key of a hospital with a role.
    pub async fn key_for(&self, hospital: &str, role: cloudpacs::auth::Role) -> String {
        cloudpacs::admin::create_key(&self.state.archive.db, hospital, role, "test")
            .await
            .unwrap()
            .1
    }

    /// POST a STOW body to `path` with the usual Content-Type.
    pub async fn stow(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let req = Request::post(path)
            .header(
                "content-type",
                format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"),
            )
            .header("host", "127.0.0.1:8080")
            .body(Body::from(body))
            .unwrap();
        let resp = self.request(req).await;
        let status = resp.status();
        (status, json_body(resp).await)
    }

    /// Number of instance rows in the index.
    pub async fn instance_count(&self) -> i64 {
        self.scalar("SELECT COUNT(*) AS n FROM instances").await
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        let db = self.state.archive.db.conn();
        let row = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap()
    }

    /// Journal entries of blob writes still open: rows of the index's
    /// journal and files of the local folder's.
    pub async fn open_journals(&self) -> i64 {
        let files = std::fs::read_dir(self.dir.path().join("blobs/.journal"))
            .map(|d| d.count())
            .unwrap_or(0);
        self.scalar("SELECT COUNT(*) AS n FROM pending_blobs").await + files as i64
    }

    /// Files in the blob folder (the folder's journals excluded).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if p.file_name().is_some_and(|n| n != ".journal") {
                        walk(&p, out);
                    }
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("blobs"), &mut out);
        out
    }

    pub fn spool_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("spool"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl TestAppBuilder {
    pub fn duplicate_policy(mut self, p: DuplicatePolicy) -> Self {
        self.duplicate_policy = p;
        self
    }

    pub fn max_request_bytes(mut self, n: u64) -> Self {
        self.max_request_bytes = n;
        self
    }

    /// Accept tokens of an OpenID Connect provider (issuer, audience, JWKS file).
    pub fn oidc(mut self, issuer: &str, audience: &str, jwks: &Path) -> Self {
        self.oidc = Some(Oidc {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_file: Some(jwks.into()),
            jwks_url: None,
            refetch_secs: 30,
        });
        self
    }

    /// A provider whose keys are fetched: from `jwks_url`, or discovered
    /// from the issuer; at most every `refetch_secs`.
    pub fn oidc_remote(
        mut self,
        issuer: &str,
        audience: &str,
        jwks_url: Option<&str>,
        refetch_secs: u64,
    ) -> Self {
        self.oidc = Some(Oidc {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_file: None,
            jwks_url: jwks_url.map(str::to_owned),
            refetch_secs,
        });
        self
    }

    pub fn cors_origins(mut self, origins: &[&str]) -> Self {
        self.cors_origins = origins.iter().map(|o| o.to_string()).collect();
        self
    }

    /// QIDO default and maximum page sizes.
    pub fn qido_limits(mut self, default: u64, max: u64) -> Self {
        self.qido_limits = (default, max);
        self
    }

    pub fn public_url(mut self, url: &str) -> Self {
        self.public_url = Some(url.to_owned());
        self
    }

    /// `--storage` (e.g. `s3://BUCKET/PREFIX`) and the S3 options; S3
    /// credentials come from the environment (the AWS default chain).
    pub fn storage(mut self, url: &str, s3: S3Args) -> Self {
        self.storage = Some(url.to_owned());
        self.s3 = s3;
        self
    }

    /// `--trusted-proxies`.
    pub fn trusted_proxies(mut self, cidrs: &[&str]) -> Self {
        self.policy.trusted_proxies = cidrs
            .iter()
            .map(|c| cloudpacs::policy::parse_cidr(c).unwrap())
            .collect();
        self
    }

    pub async fn build(self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig {
            db: DbArgs {
                data_dir: dir.path().to_path_buf(),
                database_url: fresh_database().await,
                db_max_connections: 8,
                db_acquire_timeout_secs: 30,
                db_statement_timeout_secs: 60,
            },
            listen: "127.0.0.1:0".parse().unwrap(),
            storage: self.storage,
            s3: self.s3,
            public_url: self.public_url,
            max_request_bytes: self.max_request_bytes,
            qido_default_limit: self.qido_limits.0,
            qido_max_limit: self.qido_limits.1,
            duplicate_policy: self.duplicate_policy,
            orphan_age_secs: 3600,
            auth: cloudpacs::config::AuthConfig {
                jwt_secret: Some("test-secret-test-secret-test-secret!".into()),
                jwt_ttl_secs: 3600,
                oidc_hospital_claim: "hospital".into(),
                oidc_roles_claim: "roles".into(),
                oidc_issuer: self.oidc.as_ref().map(|o| o.issuer.clone()),
                oidc_audience: self.oidc.as_ref().map(|o| o.audience.clone()),
                oidc_jwks_file: self.oidc.as_ref().and_then(|o| o.jwks_file.clone()),
                oidc_jwks_url: self.oidc.as_ref().and_then(|o| o.jwks_url.clone()),
                oidc_jwks_refetch_secs: self.oidc.as_ref().map_or(30, |o| o.refetch_secs),
            },
            cors_origins: self.cors_origins,
            log_format: LogFormat::Text,
            shutdown_grace_secs: 1,
            policy: self.policy,
        };
        let state = AppState::open(&config).await.unwrap();
        let router = app(state.clone());
        let key = cloudpacs::admin::create_key(
            &state.archive.db,
            "default",
            cloudpacs::auth::Role::Admin,
            "tests",
        )
        .await
        .unwrap()
        .1;
        TestApp {
            state,
            router,
            config,
            dir,
            key,
        }
    }
}

/// A fresh PostgreSQL database per test app when `TEST_DATABASE_URL` is set
/// (databases are named `cloudpacs_test_*`; the test command drops them).
pub async fn fresh_database() -> Option<String> {
    let base = std::env::var("TEST_DATABASE_URL").ok()?;
    let name = format!("cloudpacs_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(base.clone())
        .await
        .expect("TEST_DATABASE_URL must be reachable");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("TEST_DATABASE_URL ends with /DBNAME");
    Some(format!("{prefix}/{name}"))
}

pub async fn json_body(resp: Response<Body>) -> Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
}

/// A synthetic instance with fake patient data.
#[derive(Clone, Debug)]
pub struct Synth {
    pub study: String,
    pub series: String,
    pub sop: String,
    pub modality: &'static str,
    pub patient_name: &'static str,
    pub rows: u16,
    pub columns: u16,
    pub frames: u32,
    /// Fills the pixel data (varies the object's bytes).
    pub fill: u8,
}

impl Synth {
    pub fn new(study: &str, series: &str, sop: &str) -> Self {
        Synth {
            study: study.into(),
            series: series.into(),
            sop: sop.into(),
            modality: "CT",
            patient_name: "Doe^Jane",
            rows: 8,
            columns: 8,
            frames: 1,
            fill: 7,
        }
    }

    pub fn frames(mut self, n: u32) -> Self {
        self.frames = n;
        self
    }

    pub fn fill(mut self, b: u8) -> Self {
        self.fill = b;
        self
    }

    pub fn modality(mut self, m: &'static str) -> Self {
        self.modality = m;
        self
    }

    /// The data set without file meta, for custom encodings.
    pub fn dataset(&self) -> InMemDicomObject {
        let frame_len = usize::from(self.rows) * usize::from(self.columns) * 2;
        let pixels: Vec<u8> = (0..frame_len * self.frames as usize)
            .map(|i| self.fill.wrapping_add((i / frame_len) as u8))
            .collect();
        InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                dicom_value!(Str, CT_IMAGE_STORAGE),
            ),
            DataElement::new(
                tags::SOP_INSTANCE_UID,
                VR::UI,
                dicom_value!(Str, self.sop.as_str()),
            ),
            DataElement::new(tags::STUDY_DATE, VR::DA, dicom_value!(Str, "20240102")),
            DataElement::new(tags::MODALITY, VR::CS, dicom_value!(Str, self.modality)),
            DataElement::new(
                tags::PATIENT_NAME,
                VR::PN,
                dicom_value!(Str, self.patient_name),
            ),
            DataElement::new(tags::PATIENT_ID, VR::LO, dicom_value!(Str, "PAT001")),
            DataElement::new(
                tags::STUDY_INSTANCE_UID,
                VR::UI,
                dicom_value!(Str, self.study.as_str()),
            ),
            DataElement::new(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                dicom_value!(Str, self.series.as_str()),
            ),
            DataElement::new(tags::SERIES_NUMBER, VR::IS, dicom_value!(Str, "1")),
            DataElement::new(tags::INSTANCE_NUMBER, VR::IS, dicom_value!(Str, "1")),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [1])),
            DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                dicom_value!(Str, "MONOCHROME2"),
            ),
            DataElement::new(
                tags::NUMBER_OF_FRAMES,
                VR::IS,
                dicom_value!(Str, self.frames.to_string()),
            ),
            DataElement::new(tags::ROWS, VR::US, dicom_value!(U16, [self.rows])),
            DataElement::new(tags::COLUMNS, VR::US, dicom_value!(U16, [self.columns])),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [16])),
            DataElement::new(tags::BITS_STORED, VR::US, dicom_value!(U16, [16])),
            DataElement::new(tags::HIGH_BIT, VR::US, dicom_value!(U16, [15])),
            DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, dicom_value!(U16, [0])),
            DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U8(pixels.into())),
        ])
    }

    /// A Part-10 file (Explicit VR Little Endian).
    pub fn bytes(&self) -> Vec<u8> {
        part10(self.dataset(), &self.sop)
    }
}

/// Wrap a data set into a Part-10 file.
pub fn part10(obj: InMemDicomObject, sop: &str) -> Vec<u8> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(sop)
        .transfer_syntax(EXPLICIT_VR_LE)
        .build()
        .unwrap();
    let mut out = Vec::new();
    obj.with_exact_meta(meta).write_all(&mut out).unwrap();
    out
}

/// The request as if it came from the socket peer `peer` (`ip:port`):
/// in-process requests have no `ConnectInfo` unless a test gives one.
pub fn from_peer(mut req: Request<Body>, peer: &str) -> Request<Body> {
    let addr: SocketAddr = peer.parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    req
}

/// A multipart/related body of application/dicom parts.
pub fn multipart<P: AsRef<[u8]>>(parts: &[P]) -> Vec<u8> {
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(p.as_ref());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The failure reasons (0008,1197) of a STOW response, in order.
pub fn failure_reasons(resp: &Value) -> Vec<u64> {
    resp["00081198"]["Value"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| i["00081197"]["Value"][0].as_u64().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// The SOP Instance UIDs of the ReferencedSOPSequence of a STOW response.
pub fn referenced(resp: &Value) -> Vec<String> {
    resp["00081199"]["Value"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| i["00081155"]["Value"][0].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The pydicom corpus built by `tests/setup-python.sh`.
pub fn corpus_dir() -> PathBuf {
    let dir = std::env::var("CLOUDPACS_TEST_DATA").expect(
        "CLOUDPACS_TEST_DATA is not set: run `eval \"$(tests/setup-python.sh)\"` first (the test command does)",
    );
    PathBuf::from(dir)
}

pub fn corpus_manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(corpus_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The server binary: `CLOUDPACS_TEST_BIN` when set (a copy of a build),
/// else the one cargo built for these tests.
pub fn binary() -> PathBuf {
    std::env::var_os("CLOUDPACS_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_cloudpacs")),
        PathBuf::from,
    )
}

/// An API key created with the CLI, as an operator would (`--json`).
pub fn cli_key(data: &Path, db: Option<&str>, hospital: &str, role: &str) -> String {
    let mut cmd = Command::new(binary());
    cmd.args([
        "key",
        "create",
        "--hospital",
        hospital,
        "--role",
        role,
        "--json",
        "--data-dir",
    ])
    .arg(data);
    if let Some(url) = db {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["apiKey"].as_str().unwrap().to_owned()
}

/// Run the real binary on `addr` (orphans swept at start with age 0) and
/// wait until it is ready.
pub fn start_server(data: &Path, db: Option<&str>, addr: SocketAddr) -> Child {
    start_server_with(data, db, addr, &[], &[])
}

/// [`start_server`] with extra `serve` arguments and environment variables.
pub fn start_server_with(
    data: &Path,
    db: Option<&str>,
    addr: SocketAddr,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--orphan-age-secs")
        .arg("0");
    if let Some(url) = db {
        cmd.arg("--database-url").arg(url);
    }
    cmd.args(args).envs(envs.iter().copied());
    // The server's log, to show when it does not become ready.
    let log = data.join("server.log");
    std::fs::create_dir_all(data).unwrap();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return child;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the server exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the server did not become ready:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Run a Python dicomweb-client script of `tests/clients/` against the real
/// binary (fresh index, a writer key of `default`), as
/// `script BASE_URL CORPUS_DIR API_KEY`; its stdout when it succeeds.
pub async fn run_python_client(script: &str) -> String {
    let python = std::env::var("CLOUDPACS_TEST_PYTHON")
        .expect("CLOUDPACS_TEST_PYTHON is not set: run `eval \"$(tests/setup-python.sh)\"` first");
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database().await;
    let key = cli_key(dir.path(), db.as_deref(), "default", "writer");
    let addr = free_addr();
    let mut server = start_server(dir.path(), db.as_deref(), addr);
    let out = Command::new(python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/clients")
                .join(script),
        )
        .arg(format!("http://{addr}/dicom-web"))
        .arg(corpus_dir())
        .arg(&key)
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}

/// An RSA key pair of a test identity provider (made by the openssl
/// command line): the signing key and its public JWK.
pub struct RsaKey {
    pub encoding: jsonwebtoken::EncodingKey,
    pub jwk: serde_json::Value,
    /// The public key, PEM.
    pub public_pem: Vec<u8>,
}

impl RsaKey {
    pub fn generate(kid: &str) -> RsaKey {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .arg(&pem)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}");
            out.stdout
        };
        openssl(&["genrsa", "-out"]); // 2048 bits
        let modulus = String::from_utf8(openssl(&["rsa", "-noout", "-modulus", "-in"])).unwrap();
        let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
        RsaKey {
            encoding: jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap())
                .unwrap(),
            jwk: serde_json::json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n), "e": "AQAB"}),
            public_pem: openssl(&["rsa", "-pubout", "-in"]),
        }
    }
}
