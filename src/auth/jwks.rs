//! The public keys of an external OpenID Connect provider.
//!
//! Either a JWKS document read from a file at start, or one fetched over
//! HTTPS: from the configured `jwks_uri`, or discovered from
//! `{issuer}/.well-known/openid-configuration`. A fetched set is refreshed
//! when a token names a key id it does not hold (the provider rotated its
//! keys) and when it is older than [`MAX_AGE`]; fetches happen at most once
//! per [`REFETCH_MIN`] whatever tokens arrive, so forged key ids cannot make
//! the server hammer the provider. A failed refresh keeps the old keys.
//! Each replica keeps its own copy; nothing is shared or persisted.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::ConfigBuilderExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde_json::Value;

/// How long a fetched key set is trusted before it is fetched again.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<bytes::Bytes>>;

/// Where the keys come from.
enum Source {
    Fixed,
    Remote(Box<Remote>),
}

struct Remote {
    /// `None`: discover it from the issuer.
    jwks_uri: Option<Uri>,
    issuer: String,
    client: HttpsClient,
    refetch_min: Duration,
}

struct Cached {
    keys: Arc<JwkSet>,
    /// When the last fetch was tried (successful or not).
    attempted: Option<Instant>,
    /// When the keys were last fetched successfully.
    fetched: Option<Instant>,
}

/// A provider's key set, fixed or fetched.
pub struct Jwks {
    source: Source,
    cached: RwLock<Cached>,
    /// Lets one request fetch while the others wait for its result.
    refreshing: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// Keys given once (a JWKS file).
    pub fn fixed(keys: JwkSet) -> Jwks {
        Jwks::with_source(Source::Fixed, keys)
    }

    /// Keys fetched from `jwks_uri`, or from the URI the issuer's discovery
    /// document names. Only `https` URLs, or `http` to a loopback address.
    pub fn remote(
        issuer: &str,
        jwks_uri: Option<&str>,
        refetch_min: Duration,
    ) -> Result<Jwks, String> {
        let discovery = discovery_uri(issuer)?;
        let jwks_uri = jwks_uri.map(checked_uri).transpose()?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_native_roots()
        .map_err(|e| format!("TLS roots: {e}"))?
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        tracing::debug!(%discovery, "OpenID Connect keys will be fetched");
        Ok(Jwks::with_source(
            Source::Remote(Box::new(Remote {
                jwks_uri,
                issuer: issuer.to_owned(),
                client,
                refetch_min,
            })),
            JwkSet { keys: Vec::new() },
        ))
    }

    fn with_source(source: Source, keys: JwkSet) -> Jwks {
        Jwks {
            source,
            cached: RwLock::new(Cached {
                keys: Arc::new(keys),
                attempted: None,
                fetched: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The key a token's header names (`kid`, or the only key when it
    /// names none), fetching the set again when needed.
    pub async fn key(&self, kid: Option<&str>) -> Option<Jwk> {
        let (found, stale) = {
            let cached = self.read();
            let stale = matches!(self.source, Source::Remote(_))
                && cached.fetched.is_none_or(|t| t.elapsed() >= MAX_AGE);
            (find(&cached.keys, kid), stale)
        };
        match found {
            Some(key) if !stale => Some(key),
            _ => {
                self.refresh().await;
                find(&self.read().keys, kid)
            }
        }
    }

    /// Fetch the set again unless that was tried less than `refetch_min`
    /// ago; failures are logged and keep the old keys.
    pub async fn refresh(&self) {
        let Source::Remote(remote) = &self.source else {
            return;
        };
        let _one_at_a_time = self.refreshing.lock().await;
        if self
            .read()
            .attempted
            .is_some_and(|t| t.elapsed() < remote.refetch_min)
        {
            return;
        }
        let result = fetch_keys(&remote.client, &remote.issuer, remote.jwks_uri.as_ref()).await;
        let mut cached = self.cached.write().unwrap_or_else(|e| e.into_inner());
        cached.attempted = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.keys.len(), "fetched the OpenID Connect keys");
                cached.keys = Arc::new(keys);
                cached.fetched = cached.attempted;
            }
            Err(e) => tracing::warn!("cannot fetch the OpenID Connect keys: {e}"),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        self.cached.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn find(keys: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => keys.find(kid).cloned(),
        None if keys.keys.len() == 1 => keys.keys.first().cloned(),
        None => None,
    }
}

fn discovery_uri(issuer: &str) -> Result<Uri, String> {
    checked_uri(&format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ))
}

/// A URL keys may be fetched from: `https`, or `http` to a loopback host
/// (a sidecar or a test provider); nothing else, since whoever can change
/// the keys in transit can mint tokens.
fn checked_uri(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = uri.host().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(uri),
        Some("http") if loopback => Ok(uri),
        _ => Err(format!(
            "{url}: OpenID Connect keys are fetched over https only (http only from a loopback address)"
        )),
    }
}

async fn fetch_keys(
    client: &HttpsClient,
    issuer: &str,
    jwks_uri: Option<&Uri>,
) -> Result<JwkSet, String> {
    let jwks_uri = match jwks_uri {
        Some(uri) => uri.clone(),
        None => {
            let discovery = get_json(client, &discovery_uri(issuer)?).await?;
            let uri = discovery
                .get("jwks_uri")
                .and_then(Value::as_str)
                .ok_or("the discovery document has no jwks_uri")?;
            checked_uri(uri)?
        }
    };
    let doc = get_json(client, &jwks_uri).await?;
    serde_json::from_value(doc).map_err(|e| format!("{jwks_uri} is not a JWKS document: {e}"))
}

async fn get_json(client: &HttpsClient, uri: &Uri) -> Result<Value, String> {
    let request = Request::get(uri.clone())
        .header("accept", "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("{uri}: HTTP {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("{uri}: {e}"))
    };
    let body = tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("{uri}: no answer within {FETCH_TIMEOUT:?}"))??;
    serde_json::from_slice(&body).map_err(|e| format!("{uri}: not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_over_https_or_from_loopback_only() {
        assert!(checked_uri("https://idp.example/keys").is_ok());
        assert!(checked_uri("http://127.0.0.1:8080/keys").is_ok());
        assert!(checked_uri("http://localhost/keys").is_ok());
        assert!(checked_uri("http://[::1]:9/keys").is_ok());
        assert!(checked_uri("http://idp.example/keys").is_err());
        assert!(checked_uri("http://10.0.0.1/keys").is_err());
        assert!(checked_uri("ftp://idp.example/keys").is_err());
        assert!(checked_uri("/keys").is_err());
        assert_eq!(
            discovery_uri("https://idp.example/realms/x/")
                .map(|u| u.to_string())
                .ok(),
            Some("https://idp.example/realms/x/.well-known/openid-configuration".into())
        );
    }
}
