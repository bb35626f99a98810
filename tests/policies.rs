//! Hospital policies (issue #9): storage and user quotas, IP allow-lists
//! behind and without trusted proxies, retention with a fake clock, TOTP,
//! the audit trail and its hospital scoping, and settings validation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloudpacs::auth::Role;
use cloudpacs::config::DuplicatePolicy;
use cloudpacs::db::now_millis;
use common::*;
use serde_json::{Value, json};

const S1: &str = "1.2.826.0.1.3680043.8.498.71";
const S2: &str = "1.2.826.0.1.3680043.8.498.72";
const S3: &str = "1.2.826.0.1.3680043.8.498.73";
const DAY_MS: i64 = 24 * 3600 * 1000;

/// Instance `n` (1..=9) of a study: every one of the same size.
fn inst(study: &str, n: u32) -> Vec<u8> {
    Synth::new(study, &format!("{study}.1"), &format!("{study}.1.{n}")).bytes()
}

fn bearer(k: &str) -> String {
    format!("Bearer {k}")
}

/// A request, optionally from a socket peer and with X-Forwarded-For.
struct Req<'a> {
    method: &'a str,
    uri: String,
    auth: Option<String>,
    body: Option<Value>,
    peer: Option<&'a str>,
    xff: Option<&'a str>,
    accept: Option<&'a str>,
}

impl<'a> Req<'a> {
    fn new(method: &'a str, uri: impl Into<String>, auth: &str) -> Self {
        Req {
            method,
            uri: uri.into(),
            auth: Some(bearer(auth)),
            body: None,
            peer: None,
            xff: None,
            accept: None,
        }
    }
    fn anonymous(method: &'a str, uri: impl Into<String>) -> Self {
        Req {
            auth: None,
            ..Req::new(method, uri, "")
        }
    }
    fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
    fn peer(mut self, peer: &'a str) -> Self {
        self.peer = Some(peer);
        self
    }
    fn xff(mut self, xff: &'a str) -> Self {
        self.xff = Some(xff);
        self
    }
    fn accept(mut self, accept: &'a str) -> Self {
        self.accept = Some(accept);
        self
    }
    async fn status(self, app: &TestApp) -> StatusCode {
        self.send(app).await.0
    }

    async fn send(self, app: &TestApp) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(self.method)
            .uri(&self.uri)
            .header("host", "127.0.0.1:8080");
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        if let Some(x) = self.xff {
            req = req.header("x-forwarded-for", x);
        }
        if let Some(a) = self.accept {
            req = req.header("accept", a);
        }
        let mut req = match self.body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string()))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        if let Some(p) = self.peer {
            req = from_peer(req, p);
        }
        let resp = app.request_raw(req).await;
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }
}

async fn stow_from<P: AsRef<[u8]>>(
    app: &TestApp,
    path: &str,
    key: &str,
    parts: &[P],
    peer: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::post(path)
        .header("authorization", bearer(key))
        .header(
            "content-type",
            format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"),
        )
        .body(Body::from(multipart(parts)))
        .unwrap();
    if let Some(p) = peer {
        req = from_peer(req, p);
    }
    let resp = app.request_raw(req).await;
    let status = resp.status();
    (status, json_body(resp).await)
}

async fn stow<P: AsRef<[u8]>>(app: &TestApp, key: &str, parts: &[P]) -> (StatusCode, Value) {
    stow_from(app, "/dicom-web/studies", key, parts, None).await
}

/// Register a hospital as the superadmin: (hospital id, its admin key).
async fn hospital(app: &TestApp, superadmin: &str) -> (String, String) {
    let (status, body) = Req::new("POST", "/api/hospitals", superadmin)
        .json(json!({"name": "Policy Hospital", "plan": "basic"}))
        .send(app)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["hospitalId"].as_str().unwrap().to_owned(),
        body["apiKey"].as_str().unwrap().to_owned(),
    )
}

async fn patch(app: &TestApp, key: &str, h: &str, body: Value) -> (StatusCode, Value) {
    Req::new("PATCH", format!("/api/hospitals/{h}"), key)
        .json(body)
        .send(app)
        .await
}

async fn usage(app: &TestApp, key: &str, h: &str) -> Value {
    let (status, body) = Req::new("GET", format!("/api/hospitals/{h}/usage"), key)
        .send(app)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The usage's bytes equal the sum over the hospital's instance rows.
async fn assert_usage_exact(app: &TestApp, key: &str, h: &str) -> i64 {
    let u = usage(app, key, h).await;
    let sum = app
        .scalar(&format!(
            "SELECT CAST(COALESCE(SUM(i.size_bytes), 0) AS BIGINT) AS n FROM instances i \
             JOIN hospitals h ON h.id = i.hospital_id WHERE h.hospital_id = '{h}'"
        ))
        .await;
    assert_eq!(u["bytes"].as_i64().unwrap(), sum, "usage {u}");
    sum
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

// ------------------------------------------------------------------ quotas

#[tokio::test]
async fn storage_quota_exactly_at_the_limit_and_one_byte_over() {
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    let size = inst(S1, 1).len() as i64;
    assert_eq!(inst(S1, 3).len() as i64, size);
    let (status, body) = patch(&app, &sa, &h, json!({"maxStorage": 2 * size})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["maxStorage"], 2 * size);

    for n in 1..=2 {
        assert_eq!(stow(&app, &key, &[inst(S1, n)]).await.0, StatusCode::OK);
    }
    // Exactly at the limit.
    let u = usage(&app, &key, &h).await;
    assert_eq!(u["bytes"], 2 * size);
    assert_eq!(
        (
            u["studies"].as_i64(),
            u["series"].as_i64(),
            u["instances"].as_i64()
        ),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(u["maxStorage"], 2 * size);
    let blobs = app.blob_files().len();

    // One more byte than the quota allows: refused, nothing written.
    let (status, body) = stow(&app, &key, &[inst(S1, 3)]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(failure_reasons(&body), vec![0xA700]);
    assert_eq!(app.blob_files().len(), blobs, "no orphan blob");
    assert_eq!(usage(&app, &key, &h).await["bytes"], 2 * size);

    patch(&app, &sa, &h, json!({"maxStorage": 3 * size - 1})).await;
    assert_eq!(
        failure_reasons(&stow(&app, &key, &[inst(S1, 3)]).await.1),
        vec![0xA700]
    );
    patch(&app, &sa, &h, json!({"maxStorage": 3 * size})).await;
    assert_eq!(stow(&app, &key, &[inst(S1, 3)]).await.0, StatusCode::OK);
    assert_eq!(assert_usage_exact(&app, &key, &h).await, 3 * size);
    // A retry of a stored instance is free even at the limit.
    assert_eq!(stow(&app, &key, &[inst(S1, 3)]).await.0, StatusCode::OK);
    assert_eq!(assert_usage_exact(&app, &key, &h).await, 3 * size);
}

#[tokio::test]
async fn a_mixed_request_stores_what_fits_and_fails_the_rest_with_a700() {
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    let size = inst(S1, 1).len() as i64;
    patch(&app, &sa, &h, json!({"maxStorage": 2 * size})).await;
    let (status, body) = stow(&app, &key, &[inst(S1, 1), inst(S1, 2), inst(S1, 3)]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(referenced(&body).len(), 2);
    assert_eq!(failure_reasons(&body), vec![0xA700]);
    let comment = body["00081198"]["Value"][0]["00000902"]["Value"][0]
        .as_str()
        .unwrap();
    assert!(comment.contains("quota"), "{comment}");
    assert_eq!(assert_usage_exact(&app, &key, &h).await, 2 * size);
    assert_eq!(app.blob_files().len(), 2);
}

#[tokio::test]
async fn usage_follows_deletes_and_overwrites_exactly() {
    let app = TestApp::builder()
        .duplicate_policy(DuplicatePolicy::Overwrite)
        .build()
        .await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    let size = inst(S1, 1).len() as i64;
    patch(&app, &sa, &h, json!({"maxStorage": 3 * size})).await;
    stow(&app, &key, &[inst(S1, 1), inst(S1, 2), inst(S1, 3)]).await;
    assert_eq!(assert_usage_exact(&app, &key, &h).await, 3 * size);
    assert_eq!(
        failure_reasons(&stow(&app, &key, &[inst(S2, 1)]).await.1),
        vec![0xA700]
    );

    // Delete a series' instance, then the study: the quota is free again.
    let (status, _) = Req::new(
        "DELETE",
        format!("/dicom-web/studies/{S1}/series/{S1}.1/instances/{S1}.1.3"),
        &key,
    )
    .send(&app)
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(assert_usage_exact(&app, &key, &h).await, 2 * size);
    let (status, _) = Req::new("DELETE", format!("/dicom-web/studies/{S1}"), &key)
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let u = usage(&app, &key, &h).await;
    assert_eq!(
        (
            u["bytes"].as_i64(),
            u["instances"].as_i64(),
            u["studies"].as_i64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(stow(&app, &key, &[inst(S2, 1)]).await.0, StatusCode::OK);

    // Overwrite with a bigger object: charged the difference only.
    let bigger = Synth::new(S2, &format!("{S2}.1"), &format!("{S2}.1.1"))
        .frames(2)
        .bytes();
    let big = bigger.len() as i64;
    assert!(big > size && big < 3 * size);
    assert_eq!(stow(&app, &key, &[bigger]).await.0, StatusCode::OK);
    assert_eq!(assert_usage_exact(&app, &key, &h).await, big);
    // An overwrite that would not fit keeps the stored object.
    let huge = Synth::new(S2, &format!("{S2}.1"), &format!("{S2}.1.1"))
        .frames(40)
        .bytes();
    assert!(huge.len() as i64 > 3 * size);
    assert_eq!(
        failure_reasons(&stow(&app, &key, &[huge]).await.1),
        vec![0xA700]
    );
    assert_eq!(assert_usage_exact(&app, &key, &h).await, big);
    assert_eq!(app.blob_files().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_stows_cannot_overshoot_the_quota() {
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    let size = inst(S1, 1).len() as i64;
    patch(&app, &sa, &h, json!({"maxStorage": 3 * size})).await;
    let a: Vec<_> = (1..=3).map(|n| inst(S1, n)).collect();
    let b: Vec<_> = (1..=3).map(|n| inst(S2, n)).collect();
    let (ra, rb) = tokio::join!(stow(&app, &key, &a), stow(&app, &key, &b));
    let stored = referenced(&ra.1).len() + referenced(&rb.1).len();
    let failed = failure_reasons(&ra.1).len() + failure_reasons(&rb.1).len();
    assert_eq!((stored, failed), (3, 3), "{} {}", ra.1, rb.1);
    assert!(
        failure_reasons(&ra.1)
            .iter()
            .chain(&failure_reasons(&rb.1))
            .all(|c| *c == 0xA700)
    );
    assert_eq!(assert_usage_exact(&app, &key, &h).await, 3 * size);
    assert_eq!(app.blob_files().len(), 3, "refused blobs are removed");
}

/// The quota is the index transaction's: even when the early check is
/// passed (a race), the conditional update refuses what does not fit, and
/// exactly what fits passes.
#[tokio::test]
async fn the_index_transaction_enforces_the_quota_itself() {
    use cloudpacs::db::{IndexConflict, Indexed, NewInstance};
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    patch(&app, &sa, &h, json!({"maxStorage": 1000})).await;
    let db = &app.state.archive.db;
    let scope = cloudpacs::auth::system_scope(db, db.find_hospital(&h).await.unwrap());
    let index = |n: u32, size: i64| {
        let scope = scope.clone();
        let dir = app.dir.path().to_owned();
        async move {
            let path = dir.join(format!("synth-{n}.dcm"));
            std::fs::write(&path, inst(S1, n)).unwrap();
            let inspected = cloudpacs::dicom::inspect_file(&path).unwrap();
            let new = NewInstance {
                inspected: &inspected,
                blob_key: format!("test/{n}"),
                size_bytes: size,
                digest: format!("blake3:{n:064}"),
            };
            scope
                .index_instances(std::slice::from_ref(&new), DuplicatePolicy::Reject, true)
                .await
                .unwrap()
                .pop()
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(index(1, 600).await, Ok(Indexed::Stored));
    assert_eq!(
        index(2, 401).await,
        Err(IndexConflict::QuotaExceeded),
        "one byte over"
    );
    assert_eq!(
        index(2, 400).await,
        Ok(Indexed::Stored),
        "exactly at the limit"
    );
    assert_eq!(index(3, 1).await, Err(IndexConflict::QuotaExceeded));
    assert_eq!(usage(&app, &key, &h).await["bytes"], 1000);
    assert_eq!(usage(&app, &key, &h).await["instances"], 2);
}

#[tokio::test]
async fn max_users_is_enforced_with_a_clear_409() {
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    let (status, _) = patch(&app, &key, &h, json!({"maxUsers": 5})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "limits are the superadmin's");
    patch(&app, &sa, &h, json!({"maxUsers": 2})).await;
    for (name, want) in [
        ("alice", StatusCode::CREATED),
        ("bob", StatusCode::CREATED),
        ("carol", StatusCode::CONFLICT),
    ] {
        let (status, body) = Req::new("POST", format!("/api/hospitals/{h}/users"), &key)
            .json(json!({"username": name, "password": "long enough password"}))
            .send(&app)
            .await;
        assert_eq!(status, want, "{name}: {body}");
        if want == StatusCode::CONFLICT {
            assert_eq!(error_code(&body), "quota_exceeded");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("2 users")
            );
        }
    }
    let u = usage(&app, &key, &h).await;
    assert_eq!(
        (u["users"].as_i64(), u["maxUsers"].as_i64()),
        (Some(2), Some(2))
    );
    // Another hospital's admin cannot read this usage.
    let (_, other) = hospital(&app, &sa).await;
    let (status, _) = Req::new("GET", format!("/api/hospitals/{h}/usage"), &other)
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// -------------------------------------------------------------- allow-lists

#[tokio::test]
async fn allow_lists_admit_listed_v4_and_v6_clients_only() {
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    let (status, body) = patch(
        &app,
        &sa,
        &h,
        json!({"settings": {"allowedIPs": ["10.1.0.0/16", "2001:db8::/32"]}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["settings"]["allowedIPs"],
        json!(["10.1.0.0/16", "2001:db8::/32"])
    );

    let qido = |peer: Option<&'static str>| {
        let mut r = Req::new("GET", "/dicom-web/studies", &key);
        r.peer = peer;
        r
    };
    assert_eq!(
        qido(Some("10.1.2.3:40000")).status(&app).await,
        StatusCode::OK
    );
    assert_eq!(
        qido(Some("[2001:db8::7]:40000")).status(&app).await,
        StatusCode::OK
    );
    assert_eq!(
        qido(Some("[::ffff:10.1.9.9]:40000")).status(&app).await,
        StatusCode::OK
    );
    let (status, body) = qido(Some("192.0.2.1:40000")).send(&app).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "ip_not_allowed");
    assert!(body["error"]["message"].as_str().unwrap().contains(&h));
    assert_eq!(
        qido(Some("[2001:db9::1]:1")).status(&app).await,
        StatusCode::FORBIDDEN
    );
    // No socket address at all: refused, not guessed.
    assert_eq!(qido(None).status(&app).await, StatusCode::FORBIDDEN);
    // STOW too, and the admin API acting on the hospital.
    assert_eq!(
        stow_from(
            &app,
            "/dicom-web/studies",
            &key,
            &[inst(S1, 1)],
            Some("192.0.2.1:1")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        stow_from(
            &app,
            "/dicom-web/studies",
            &key,
            &[inst(S1, 1)],
            Some("10.1.0.1:1")
        )
        .await
        .0,
        StatusCode::OK
    );
    let usage_from = |peer| Req::new("GET", format!("/api/hospitals/{h}/usage"), &key).peer(peer);
    assert_eq!(
        usage_from("192.0.2.1:1").status(&app).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(usage_from("10.1.0.1:1").status(&app).await, StatusCode::OK);
    // The hospital's data through another hospital's credential: its list too.
    assert_eq!(
        Req::new("GET", format!("/tenants/{h}/dicom-web/studies"), &sa)
            .peer("192.0.2.1:1")
            .status(&app)
            .await,
        StatusCode::FORBIDDEN
    );
    // The superadmin can always repair the settings.
    assert_eq!(
        Req::new("GET", format!("/api/hospitals/{h}"), &sa)
            .peer("192.0.2.1:1")
            .status(&app)
            .await,
        StatusCode::OK
    );
    // Other hospitals are unaffected.
    assert_eq!(
        Req::new("GET", "/dicom-web/studies", &app.key)
            .status(&app)
            .await,
        StatusCode::OK
    );
    // Without trusted proxies, X-Forwarded-For is ignored: neither a spoof
    // from outside nor the (untrusted) load balancer's header is believed.
    assert_eq!(
        qido(Some("192.0.2.1:1")).xff("10.1.2.3").status(&app).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        qido(Some("10.0.0.5:1")).xff("10.1.2.3").status(&app).await,
        StatusCode::FORBIDDEN
    );
    // Removing the list (null) opens the hospital again.
    patch(&app, &sa, &h, json!({"settings": {"allowedIPs": null}})).await;
    assert_eq!(qido(Some("192.0.2.1:1")).status(&app).await, StatusCode::OK);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client() {
    let app = TestApp::builder()
        .trusted_proxies(&["10.0.0.0/24", "fd00::/8"])
        .build()
        .await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    patch(
        &app,
        &sa,
        &h,
        json!({"settings": {"allowedIPs": ["10.1.0.0/16"]}}),
    )
    .await;
    let via = |peer: &'static str, xff: Option<&'static str>| {
        let mut r = Req::new("GET", "/dicom-web/studies", &key).peer(peer);
        r.xff = xff;
        r
    };
    for (peer, xff, want) in [
        ("10.0.0.5:1", Some("10.1.2.3"), StatusCode::OK),
        ("10.0.0.5:1", Some("192.0.2.1"), StatusCode::FORBIDDEN),
        // The client spoofs an allowed address; the proxy appends the real one.
        (
            "10.0.0.5:1",
            Some("10.1.2.3, 192.0.2.1"),
            StatusCode::FORBIDDEN,
        ),
        ("10.0.0.5:1", Some("192.0.2.1, 10.1.2.3"), StatusCode::OK),
        // Two proxies in a row.
        ("10.0.0.5:1", Some("10.1.2.3, 10.0.0.7"), StatusCode::OK),
        ("[fd00::1]:1", Some("10.1.2.3"), StatusCode::OK),
        // A spoofed header from an untrusted peer is ignored.
        ("192.0.2.1:1", Some("10.1.2.3"), StatusCode::FORBIDDEN),
        // The proxy itself, without a header, is not the hospital.
        ("10.0.0.5:1", None, StatusCode::FORBIDDEN),
    ] {
        assert_eq!(via(peer, xff).status(&app).await, want, "{peer} {xff:?}");
    }
    // The audit trail records the client, not the proxy.
    via("10.0.0.5:1", Some("10.1.2.3")).send(&app).await;
    let (_, trail) = Req::new(
        "GET",
        format!("/api/audit?hospitalId={h}&action=qido&limit=1"),
        &sa,
    )
    .send(&app)
    .await;
    assert_eq!(trail["items"][0]["clientIp"], "10.1.2.3", "{trail}");
}

#[tokio::test]
async fn settings_are_validated() {
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    for bad in [
        json!({"settings": {"allowedIPs": ["10.0.0.0/33"]}}),
        json!({"settings": {"allowedIPs": ["not an address"]}}),
        json!({"settings": {"allowedIPs": "10.0.0.0/8"}}),
        json!({"settings": {"dataRetentionDays": -1}}),
        json!({"settings": {"dataRetentionDays": "30"}}),
        json!({"settings": {"requireMFA": "yes"}}),
        json!({"settings": ["x"]}),
        json!({"maxStorage": -5}),
        json!({"maxUsers": -1}),
    ] {
        let (status, body) = patch(&app, &sa, &h, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    // A hospital admin cannot lock itself out.
    let (status, body) = Req::new("PATCH", format!("/api/hospitals/{h}"), &key)
        .peer("192.0.2.1:1")
        .json(json!({"settings": {"allowedIPs": ["10.0.0.0/8"]}}))
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lock out")
    );
    // Valid settings merge with the stored ones.
    let (status, body) = patch(
        &app,
        &key,
        &h,
        json!({"settings": {"dataRetentionDays": 30, "theme": "dark"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = patch(&app, &key, &h, json!({"settings": {"requireMFA": false}})).await;
    assert_eq!(
        body["settings"],
        json!({"dataRetentionDays": 30, "theme": "dark", "requireMFA": false})
    );
}

// ---------------------------------------------------------------- retention

#[tokio::test]
async fn retention_deletes_old_studies_through_the_delete_path_with_a_fake_clock() {
    use cloudpacs::retention::sweep;
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    let (h2, key2) = hospital(&app, &sa).await;
    patch(
        &app,
        &sa,
        &h,
        json!({"settings": {"dataRetentionDays": 30}}),
    )
    .await;
    stow(&app, &key, &[inst(S1, 1), inst(S1, 2)]).await;
    stow(&app, &key, &[inst(S2, 1)]).await;
    stow(&app, &key2, &[inst(S3, 1)]).await;
    let now = now_millis();
    let state = &app.state;

    // Not old enough yet.
    assert_eq!(
        sweep(state, "replica-a", 1, &move || now + 29 * DAY_MS)
            .await
            .unwrap(),
        0
    );
    assert_eq!(app.instance_count().await, 4);

    // Another replica holds the lease: this one does nothing.
    let t = now + 31 * DAY_MS;
    assert!(
        state
            .archive
            .db
            .claim_lease("retention", "replica-b", t, 60_000)
            .await
            .unwrap()
    );
    assert_eq!(sweep(state, "replica-a", 1, &move || t).await.unwrap(), 0);
    assert_eq!(app.instance_count().await, 4);

    // That replica died; once its lease expired this one takes over, and
    // deletes in batches of one until done.
    assert_eq!(
        sweep(state, "replica-a", 1, &move || t + 61_000)
            .await
            .unwrap(),
        2
    );
    let u = usage(&app, &key, &h).await;
    assert_eq!(
        (u["studies"].as_i64(), u["bytes"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        assert_usage_exact(&app, &key2, &h2).await,
        inst(S3, 1).len() as i64
    );
    assert_eq!(
        app.instance_count().await,
        1,
        "the other hospital keeps its study"
    );
    assert_eq!(app.blob_files().len(), 1, "blobs deleted too");
    assert_eq!(app.open_journals().await, 0);
    // The lease was released: the next run (any replica) can work.
    assert_eq!(
        sweep(state, "replica-b", 1, &move || t + 62_000)
            .await
            .unwrap(),
        0
    );

    // Audited as deletes by the system, in the hospital's trail.
    let (_, trail) = Req::new("GET", "/api/audit?action=delete", &key)
        .send(&app)
        .await;
    let items = trail["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{trail}");
    for item in items {
        assert_eq!(
            item["actor"],
            json!({"type": "system", "id": "retention", "name": null})
        );
        assert_eq!(item["hospitalId"], h.as_str());
        assert_eq!(item["status"], 204);
    }
    let mut studies: Vec<_> = items
        .iter()
        .map(|i| i["studyInstanceUID"].as_str().unwrap())
        .collect();
    studies.sort();
    assert_eq!(studies, vec![S1, S2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sweepers_delete_each_study_once() {
    use cloudpacs::retention::sweep;
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    patch(&app, &sa, &h, json!({"settings": {"dataRetentionDays": 1}})).await;
    for s in [S1, S2, S3] {
        stow(&app, &key, &[inst(s, 1)]).await;
    }
    let t = now_millis() + 2 * DAY_MS;
    let clock = move || t;
    let (a, b) = tokio::join!(
        sweep(&app.state, "replica-a", 1, &clock),
        sweep(&app.state, "replica-b", 1, &clock)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 3);
    assert_eq!(app.instance_count().await, 0);
    let (_, trail) = Req::new("GET", "/api/audit?action=delete", &key)
        .send(&app)
        .await;
    assert_eq!(
        trail["items"].as_array().unwrap().len(),
        3,
        "no double deletes"
    );
}

// --------------------------------------------------------------------- MFA

async fn login(app: &TestApp, h: &str, totp: Option<&str>) -> (StatusCode, Value) {
    let mut body =
        json!({"username": "rad1", "password": "correct horse battery", "hospitalId": h});
    if let Some(code) = totp {
        body["totp"] = json!(code);
    }
    Req::anonymous("POST", "/api/auth/login")
        .json(body)
        .send(app)
        .await
}

#[tokio::test]
async fn mfa_enrollment_and_login_with_totp() {
    use cloudpacs::auth::totp::code_at;
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (h, key) = hospital(&app, &sa).await;
    let (status, _) = Req::new("POST", format!("/api/hospitals/{h}/users"), &key)
        .json(json!({"username": "rad1", "password": "correct horse battery", "roles": ["reader"]}))
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Without the policy, a password is enough.
    let (status, body) = login(&app, &h, None).await;
    assert_eq!(status, StatusCode::OK);
    let old_token = body["token"].as_str().unwrap().to_owned();
    patch(&app, &key, &h, json!({"settings": {"requireMFA": true}})).await;
    // Tokens from before the policy no longer do.
    let (status, body) = Req::new("GET", "/dicom-web/studies", &old_token)
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("MFA"));

    // Not enrolled: a clear error, and a token that only enrolls.
    let (status, body) = login(&app, &h, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "mfa_enrollment_required");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/auth/mfa/enroll")
    );
    let enrollment = body["enrollmentToken"].as_str().unwrap().to_owned();
    assert!(body.get("token").is_none());
    assert_eq!(
        Req::new("GET", "/dicom-web/studies", &enrollment)
            .status(&app)
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        Req::new("GET", format!("/api/hospitals/{h}"), &enrollment)
            .status(&app)
            .await,
        StatusCode::UNAUTHORIZED
    );

    let (status, body) = Req::new("POST", "/api/auth/mfa/enroll", &enrollment)
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    let uri = body["otpauthUri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/") && uri.contains(&format!("secret={secret}")),
        "{uri}"
    );
    let t = chrono::Utc::now().timestamp();
    let (status, _) = Req::new("POST", "/api/auth/mfa/verify", &enrollment)
        .json(json!({"code": code_at(&secret, t - 3600).unwrap()}))
        .send(&app)
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a stale code does not confirm"
    );
    let now_code = code_at(&secret, t).unwrap();
    let (status, body) = Req::new("POST", "/api/auth/mfa/verify", &enrollment)
        .json(json!({"code": now_code}))
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Enrolled: the code is required, valid once.
    let (status, body) = login(&app, &h, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "mfa_code_required");
    assert_eq!(
        login(&app, &h, Some("000000x")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&app, &h, Some(&now_code)).await.0,
        StatusCode::UNAUTHORIZED,
        "the code used to confirm cannot log in (replay)"
    );
    let next = code_at(&secret, t + 30).unwrap();
    let (status, body) = login(&app, &h, Some(&next)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        login(&app, &h, Some(&next)).await.0,
        StatusCode::UNAUTHORIZED,
        "replay"
    );
    assert_eq!(
        Req::new("GET", "/dicom-web/studies", &token)
            .status(&app)
            .await,
        StatusCode::OK
    );
    // API keys are not users: no enrollment for them.
    assert_eq!(
        Req::new("POST", "/api/auth/mfa/enroll", &key)
            .status(&app)
            .await,
        StatusCode::FORBIDDEN
    );
}

// ------------------------------------------------------------------- audit

#[tokio::test]
async fn every_action_is_audited_and_scoped_to_its_hospital() {
    let app = TestApp::new().await;
    let sa = app.key_for("default", Role::Superadmin).await;
    let (b, b_key) = hospital(&app, &sa).await;
    let admin = app.key.clone();
    let key_id = admin
        .strip_prefix("cpk_")
        .unwrap()
        .rsplit_once('_')
        .unwrap()
        .0
        .to_owned();
    let peer = "198.51.100.4:5000";
    let series = format!("{S1}.1");
    let sop = format!("{S1}.1.1");
    let mut expect: Vec<(&str, StatusCode)> = Vec::new();

    let (status, _) = stow_from(
        &app,
        "/dicom-web/studies",
        &admin,
        &[inst(S1, 1)],
        Some(peer),
    )
    .await;
    expect.push(("stow", status));
    let (status, _) = Req::new("GET", "/dicom-web/studies?PatientName=Doe*", &admin)
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("qido", status));
    let (status, _) = Req::new("GET", format!("/dicom-web/studies/{S1}"), &admin)
        .accept("multipart/related; type=\"application/dicom\"")
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("wado", status));
    let (status, _) = Req::new("GET", format!("/dicom-web/studies/{S1}/metadata"), &admin)
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("metadata", status));
    let (status, _) = Req::new(
        "GET",
        format!("/dicom-web/studies/{S1}/series/{series}/instances/{sop}/frames/1"),
        &admin,
    )
    .accept("multipart/related; type=\"application/octet-stream\"")
    .peer(peer)
    .send(&app)
    .await;
    expect.push(("frames", status));
    let (status, _) = Req::new(
        "POST",
        format!("/api/hospitals/default/studies/{S1}/shares"),
        &admin,
    )
    .json(json!({"hospitalId": b}))
    .peer(peer)
    .send(&app)
    .await;
    expect.push(("share.create", status));
    let (status, created) = Req::new("POST", "/api/hospitals/default/api-keys", &admin)
        .json(json!({"role": "reader"}))
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("key.create", status));
    let new_key = created["keyId"].as_str().unwrap();
    let (status, _) = Req::new(
        "DELETE",
        format!("/api/hospitals/default/api-keys/{new_key}"),
        &admin,
    )
    .peer(peer)
    .send(&app)
    .await;
    expect.push(("key.revoke", status));
    let (status, _) = Req::new(
        "GET",
        format!("/dicom-web/studies/{S1}/series/{series}/instances/{sop}/bulkdata/7FE00010"),
        &admin,
    )
    .accept("multipart/related; type=\"application/octet-stream\"")
    .peer(peer)
    .send(&app)
    .await;
    expect.push(("bulkdata", status));
    let (status, _) = Req::new(
        "DELETE",
        format!("/api/hospitals/default/studies/{S1}/shares/{b}"),
        &admin,
    )
    .peer(peer)
    .send(&app)
    .await;
    expect.push(("share.delete", status));
    let (status, _) = Req::new("GET", "/api/hospitals/default", &admin)
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("hospital.read", status));
    let (status, _) = Req::new("GET", "/api/hospitals/default/usage", &admin)
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("usage.read", status));
    let (status, _) = Req::new("GET", "/api/audit", &admin)
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("audit.read", status));
    let (status, _) = Req::new("PATCH", "/api/hospitals/default", &admin)
        .json(json!({"settings": {"dataRetentionDays": 0}}))
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("hospital.update", status));
    let (status, _) = Req::new("POST", "/api/hospitals/default/users", &admin)
        .json(json!({"username": "auditor", "password": "long enough password"}))
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("user.create", status));
    let (status, login) = Req::anonymous("POST", "/api/auth/login")
        .json(json!({"username": "auditor", "password": "long enough password"}))
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("login", status));
    let token = login["token"].as_str().unwrap();
    let (status, _) = Req::new("POST", "/api/auth/mfa/enroll", token)
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("mfa.enroll", status));
    let (status, _) = Req::new("DELETE", format!("/dicom-web/studies/{S1}"), &admin)
        .peer(peer)
        .send(&app)
        .await;
    expect.push(("delete", status));
    for (action, status) in &expect {
        assert!(status.is_success(), "{action}: {status}");
    }
    // The superadmin's registration of a hospital is its own hospital's.
    hospital(&app, &sa).await;
    // Hospital B's own actions, and an anonymous attempt.
    stow(&app, &b_key, &[inst(S2, 1)]).await;
    Req::new("GET", "/dicom-web/studies", &b_key)
        .send(&app)
        .await;
    Req::anonymous("GET", "/dicom-web/studies").send(&app).await;

    // The superadmin sees everything.
    let (status, all) = Req::new("GET", "/api/audit?limit=1000", &sa)
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let items = all["items"].as_array().unwrap();
    for (action, status) in &expect {
        let row = items
            .iter()
            .find(|i| i["action"] == *action && i["hospitalId"] == "default")
            .unwrap_or_else(|| panic!("no audit row for {action}: {all}"));
        assert_eq!(row["status"], status.as_u16(), "{action}");
        assert_eq!(row["clientIp"], "198.51.100.4", "{action}");
        assert!(row["time"].as_str().unwrap().ends_with('Z'));
        if action.starts_with("login") || action.starts_with("mfa") {
            assert_eq!(row["actor"]["type"], "user");
            assert_eq!(row["actor"]["name"], "auditor");
        } else {
            assert_eq!(row["actor"]["type"], "key", "{action}");
            assert_eq!(row["actor"]["id"], key_id.as_str(), "{action}");
        }
    }
    let created = items
        .iter()
        .find(|i| i["action"] == "hospital.create")
        .unwrap();
    assert_eq!(created["hospitalId"], "default");
    assert_eq!(created["status"], 201);
    let row = |action: &str| {
        items
            .iter()
            .find(|i| i["action"] == action && i["hospitalId"] == "default")
            .unwrap()
    };
    assert_eq!(
        row("stow")["studyInstanceUID"],
        S1,
        "STOW records the stored study"
    );
    assert_eq!(row("frames")["seriesInstanceUID"], series.as_str());
    assert_eq!(row("frames")["sopInstanceUID"], sop.as_str());
    assert_eq!(row("delete")["method"], "DELETE");
    assert_eq!(row("share.create")["studyInstanceUID"], S1);
    let anonymous = items
        .iter()
        .find(|i| i["actor"]["type"] == "anonymous")
        .expect("the refused request is recorded");
    assert_eq!(
        (anonymous["status"].as_u64(), &anonymous["hospitalId"]),
        (Some(401), &Value::Null)
    );
    // Neither patient data (names, query values) nor secrets.
    let text = all.to_string();
    assert!(!text.contains("Doe"), "{text}");
    assert!(!text.contains(&admin) && !text.contains(&b_key));
    assert!(!text.contains("long enough password"));

    // A hospital's admins see their hospital only.
    let (status, mine) = Req::new("GET", "/api/audit?limit=1000", &b_key)
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mine = mine["items"].as_array().unwrap();
    assert!(
        mine.iter()
            .any(|i| i["action"] == "stow" && i["studyInstanceUID"] == S2)
    );
    assert!(
        mine.iter().all(|i| i["hospitalId"] == b.as_str()),
        "{mine:?}"
    );
    assert!(!Value::Array(mine.clone()).to_string().contains(S1));
    assert_eq!(
        Req::new("GET", "/api/audit?hospitalId=default", &b_key)
            .status(&app)
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        Req::new("GET", format!("/api/audit?hospitalId={b}"), &b_key)
            .status(&app)
            .await,
        StatusCode::OK
    );
    let reader = app.key_for("default", Role::Reader).await;
    assert_eq!(
        Req::new("GET", "/api/audit", &reader).status(&app).await,
        StatusCode::FORBIDDEN
    );

    // Filters and stable paging.
    let (_, stows) = Req::new("GET", "/api/audit?action=stow", &sa)
        .send(&app)
        .await;
    assert!(
        stows["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "stow")
    );
    assert_eq!(stows["items"].as_array().unwrap().len(), 2);
    // (B's rows: nothing is added to them meanwhile; the superadmin's
    // reads of the trail are its own hospital's.)
    let (_, p1) = Req::new("GET", format!("/api/audit?hospitalId={b}&limit=2"), &sa)
        .send(&app)
        .await;
    let (_, p2) = Req::new(
        "GET",
        format!("/api/audit?hospitalId={b}&limit=2&offset=2"),
        &sa,
    )
    .send(&app)
    .await;
    let ids = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    let (a, b2) = (ids(&p1), ids(&p2));
    assert_eq!((a.len(), b2.len()), (2, 2));
    assert!(a[0] > a[1] && a[1] > b2[0] && b2[0] > b2[1], "{a:?} {b2:?}");
    let (_, none) = Req::new("GET", "/api/audit?since=2999-01-01T00:00:00Z", &sa)
        .send(&app)
        .await;
    assert_eq!(none["items"], json!([]));
    let (_, until) = Req::new("GET", "/api/audit?until=2000-01-01T00:00:00Z", &sa)
        .send(&app)
        .await;
    assert_eq!(until["items"], json!([]));
    assert_eq!(
        Req::new("GET", "/api/audit?since=yesterday", &sa)
            .status(&app)
            .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        Req::new("GET", "/api/audit?limit=-1", &sa)
            .status(&app)
            .await,
        StatusCode::BAD_REQUEST
    );
}

/// The real binary: the client address comes from the socket, and the
/// audit rows of the requests served are written before a clean exit.
#[tokio::test]
async fn the_server_audits_socket_addresses_and_flushes_on_shutdown() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database().await;
    let key = cli_key(dir.path(), db.as_deref(), "default", "admin");
    let addr = free_addr();
    let mut server = start_server_with(
        dir.path(),
        db.as_deref(),
        addr,
        &["--retention-interval-secs", "1"],
        &[("CLOUDPACS_TRUSTED_PROXIES", "10.0.0.0/8")],
    );
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /dicom-web/studies HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Bearer {key}\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.wait().unwrap().success());

    let url =
        db.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("index.sqlite").display()));
    let conn = sea_orm::Database::connect(url).await.unwrap();
    let rows = sea_orm::ConnectionTrait::query_all_raw(
        &conn,
        sea_orm::Statement::from_string(
            sea_orm::ConnectionTrait::get_database_backend(&conn),
            "SELECT client_ip, hospital_id FROM audit_log WHERE action = 'qido'",
        ),
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    // The command line's key creation is in the trail too.
    let cli = sea_orm::ConnectionTrait::query_all_raw(
        &conn,
        sea_orm::Statement::from_string(
            sea_orm::ConnectionTrait::get_database_backend(&conn),
            "SELECT hospital_id FROM audit_log WHERE action = 'key.create' AND actor_kind = 'system' AND actor_id = 'cli'",
        ),
    )
    .await
    .unwrap();
    assert_eq!(cli.len(), 1);
    for row in rows {
        // 127.0.0.1 is not a trusted proxy: its X-Forwarded-For is ignored.
        assert_eq!(row.try_get::<String>("", "client_ip").unwrap(), "127.0.0.1");
        assert_eq!(row.try_get::<String>("", "hospital_id").unwrap(), "default");
    }
}
