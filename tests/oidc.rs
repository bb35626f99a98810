//! Tokens of an external OpenID Connect provider whose keys are fetched over
//! HTTP: discovery from the issuer, an explicit JWKS URL, key rotation, the
//! refetch limit against forged key ids, and a provider that is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use common::*;
use jsonwebtoken::{Algorithm, Header, encode};
use serde_json::{Value, json};

const AUDIENCE: &str = "cloudpacs";

/// A provider on loopback: its discovery document and key set, counting
/// the fetches of each.
struct Provider {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    discovery_hits: Arc<AtomicUsize>,
    jwks_hits: Arc<AtomicUsize>,
}

impl Provider {
    async fn start(keys: &[&RsaKey]) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(Mutex::new(key_set(keys)));
        let (discovery_hits, jwks_hits) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let doc = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")});
        let router = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get({
                    let hits = discovery_hits.clone();
                    move || async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        Json(doc)
                    }
                }),
            )
            .route(
                "/keys",
                get({
                    let (hits, jwks) = (jwks_hits.clone(), jwks.clone());
                    move || async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        Json(jwks.lock().unwrap().clone())
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Provider {
            issuer,
            jwks,
            discovery_hits,
            jwks_hits,
        }
    }

    fn rotate_to(&self, keys: &[&RsaKey]) {
        *self.jwks.lock().unwrap() = key_set(keys);
    }

    fn token(&self, key: &RsaKey, kid: &str) -> String {
        token(&self.issuer, key, kid)
    }
}

/// A reader token of hospital `default` from `issuer`, signed with `key`
/// and naming `kid`.
fn token(issuer: &str, key: &RsaKey, kid: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "dr-who", "exp": now + 600,
                        "nbf": now - 10, "hospital": "default", "roles": ["reader"]});
    encode(&header, &claims, &key.encoding).unwrap()
}

fn key_set(keys: &[&RsaKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

async fn studies_status(app: &TestApp, token: &str) -> StatusCode {
    let req = Request::get("/dicom-web/studies")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    app.request_raw(req).await.status()
}

#[tokio::test]
async fn keys_are_discovered_from_the_issuer_and_follow_rotation() {
    let (k1, k2) = (RsaKey::generate("k1"), RsaKey::generate("k2"));
    let idp = Provider::start(&[&k1]).await;
    // refetch limit 0: every unknown key id may trigger a fetch
    let app = TestApp::builder()
        .oidc_remote(&idp.issuer, AUDIENCE, None, 0)
        .build()
        .await;
    assert_eq!(
        idp.discovery_hits.load(Ordering::SeqCst),
        1,
        "discovered at start"
    );
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        1,
        "keys fetched at start"
    );
    assert_eq!(
        studies_status(&app, &idp.token(&k1, "k1")).await,
        StatusCode::OK
    );
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        1,
        "known keys are not fetched again"
    );

    // the provider rotates: k2 appears, k1 goes
    idp.rotate_to(&[&k2]);
    assert_eq!(
        studies_status(&app, &idp.token(&k2, "k2")).await,
        StatusCode::OK
    );
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        2,
        "an unknown kid refetches"
    );
    assert_eq!(
        studies_status(&app, &idp.token(&k1, "k1")).await,
        StatusCode::UNAUTHORIZED,
        "a key the provider dropped is refused"
    );
    // a token signed with k1 but naming k2 fails the signature check
    assert_eq!(
        studies_status(&app, &idp.token(&k1, "k2")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn forged_key_ids_cannot_make_the_server_hammer_the_provider() {
    let k1 = RsaKey::generate("k1");
    let idp = Provider::start(&[&k1]).await;
    let jwks_url = format!("{}/keys", idp.issuer);
    let app = TestApp::builder()
        .oidc_remote(&idp.issuer, AUDIENCE, Some(&jwks_url), 30)
        .build()
        .await;
    assert_eq!(
        idp.discovery_hits.load(Ordering::SeqCst),
        0,
        "the URL was given"
    );
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 1);
    for i in 0..20 {
        let token = idp.token(&k1, &format!("forged-{i}"));
        assert_eq!(studies_status(&app, &token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        1,
        "no refetch within the limit"
    );
    assert_eq!(
        studies_status(&app, &idp.token(&k1, "k1")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_provider_that_is_down_refuses_its_tokens_but_not_the_server() {
    let k1 = RsaKey::generate("k1");
    // a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let app = TestApp::builder()
        .oidc_remote(&issuer, AUDIENCE, None, 0)
        .build()
        .await;
    let token = token(&issuer, &k1, "k1");
    assert_eq!(studies_status(&app, &token).await, StatusCode::UNAUTHORIZED);
    // API keys still work
    let req = Request::get("/dicom-web/studies")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.request(req).await.status(), StatusCode::OK);
}
