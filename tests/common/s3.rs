//! The S3-compatible test server: its address and credentials (exported by
//! `tests/start-s3.sh`, which `tests/run-all.sh` runs), a raw client to look
//! inside buckets, and [`CutProxy`], which stands between the code under
//! test and the server so a test can take the store away and bring it back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use cloudpacs::config::{BucketLayout, S3Args, S3Settings, StaticCredentials};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The S3-compatible server of this test run.
#[derive(Clone, Debug)]
pub struct S3Test {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// The data folder of s3s-fs (to find incomplete multipart uploads,
    /// which it cannot list).
    pub data_dir: Option<PathBuf>,
}

impl S3Test {
    /// The server from the environment. `None` (the test is skipped) when it
    /// is not configured, unless `CLOUDPACS_TEST_S3=required` (the test
    /// command sets it): then a missing server fails the test.
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let found = (|| {
            Some(S3Test {
                endpoint: var("CLOUDPACS_TEST_S3_ENDPOINT")?,
                bucket: var("CLOUDPACS_TEST_S3_BUCKET")?,
                region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
                access_key: var("AWS_ACCESS_KEY_ID")?,
                secret_key: var("AWS_SECRET_ACCESS_KEY")?,
                data_dir: var("CLOUDPACS_TEST_S3_DATA_DIR").map(PathBuf::from),
            })
        })();
        if found.is_none() {
            assert!(
                var("CLOUDPACS_TEST_S3").as_deref() != Some("required"),
                "CLOUDPACS_TEST_S3=required but CLOUDPACS_TEST_S3_ENDPOINT, CLOUDPACS_TEST_S3_BUCKET, \
                 AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY is missing: start the server with \
                 `eval \"$(tests/start-s3.sh)\"`"
            );
            eprintln!("no S3 test server configured (tests/start-s3.sh); skipping");
        }
        found
    }

    /// `host:port` of the server.
    pub fn upstream(&self) -> SocketAddr {
        let hostport = self
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/');
        hostport
            .parse()
            .expect("CLOUDPACS_TEST_S3_ENDPOINT is http://IP:PORT")
    }

    /// Options for a store talking to `endpoint` (the server or a proxy):
    /// few attempts and short timeouts, so failure tests stay quick; small
    /// multipart thresholds, so multipart uploads happen at test sizes.
    pub fn args(&self, endpoint: &str) -> S3Args {
        S3Args {
            endpoint: Some(endpoint.to_owned()),
            path_style: Some(true),
            max_attempts: 2,
            connect_timeout_secs: 2,
            read_timeout_secs: 30,
            multipart_threshold_mib: 6,
            part_size_mib: 5,
            ..S3Args::default()
        }
    }

    /// A store in the shared test bucket under a fresh prefix.
    pub fn settings(&self, endpoint: &str) -> S3Settings {
        S3Settings {
            layout: BucketLayout::Shared(self.bucket.clone()),
            prefix: unique_prefix(),
            options: self.args(endpoint),
            credentials: Some(self.credentials()),
        }
    }

    pub fn credentials(&self) -> StaticCredentials {
        StaticCredentials {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
        }
    }

    /// A plain client, to look inside buckets.
    pub fn client(&self) -> Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Client::from_conf(conf)
    }

    /// Every object key under `prefix` in `bucket`, sorted.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let client = self.client();
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .expect("ListObjectsV2");
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            token = out.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// The object's bytes.
    pub async fn read(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("GetObject");
        out.body.collect().await.unwrap().to_vec()
    }

    /// Multipart uploads of `key` that were started and neither completed
    /// nor aborted. ListMultipartUploads where the server has it; s3s-fs
    /// does not, but keeps one metadata file per upload in its data folder.
    pub async fn lingering_uploads(&self, bucket: &str, key: &str) -> usize {
        match self
            .client()
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(key)
            .send()
            .await
        {
            Ok(out) => out.uploads().len(),
            Err(e) => {
                let dir = self.data_dir.as_ref().unwrap_or_else(|| {
                    panic!("ListMultipartUploads failed ({e:?}) and CLOUDPACS_TEST_S3_DATA_DIR is unset")
                });
                let wanted = format!(
                    ".bucket-{}.object-{}.upload-",
                    b64url(bucket.as_bytes()),
                    b64url(key.as_bytes())
                );
                std::fs::read_dir(dir)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&wanted))
                    .count()
            }
        }
    }
}

/// A fresh key prefix, so tests sharing the bucket never see each other.
/// Short: s3s-fs cannot hold keys longer than ~150 bytes.
pub fn unique_prefix() -> String {
    format!("t{}/", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// URL-safe base64 without padding (how s3s-fs names its metadata files).
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A TCP proxy in front of the S3 server. [`CutProxy::cut`] closes its port
/// and drops every open connection, as a stopped server would;
/// [`CutProxy::restore`] listens again on the same port.
pub struct CutProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        CutProxy {
            addr,
            upstream,
            task: Mutex::new(Some(tokio::spawn(forward(listener, upstream)))),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store is gone: connections are refused, open ones are reset.
    pub fn cut(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// The store is back on the same address.
    pub async fn restore(&self) {
        let mut task = self.task.lock().unwrap();
        if task.is_none() {
            // SO_REUSEADDR: the connections just reset sit in TIME_WAIT on
            // this port.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(self.addr).unwrap();
            let listener = socket.listen(1024).unwrap();
            *task = Some(tokio::spawn(forward(listener, self.upstream)));
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Accept and forward until aborted; aborting drops the `JoinSet`, which
/// aborts (and so closes) every forwarded connection.
async fn forward(listener: TcpListener, upstream: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                conns.spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
