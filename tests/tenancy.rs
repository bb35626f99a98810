//! Credentials and tenant isolation: the tenancy matrix, JWT attacks, Basic
//! and Bearer as Orthanc sends them, sharing, CORS, the CLI, and no key
//! material in logs or responses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use cloudpacs::auth::Role;
use common::*;
use serde_json::{Value, json};

const SA: &str = "1.2.826.0.1.3680043.8.498.61"; // study of `default`
const SB: &str = "1.2.826.0.1.3680043.8.498.62"; // study of hospital B

struct World {
    app: TestApp,
    superadmin: String,
    b: String,
    b_key: String,
    reader: String,
}

fn inst(study: &str, n: u32) -> Vec<u8> {
    Synth::new(study, &format!("{study}.1"), &format!("{study}.1.{n}")).bytes()
}

async fn call(
    app: &TestApp,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1:8080");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = app.request_raw(req).await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, json_body(resp).await, headers)
}

async fn stow_as<P: AsRef<[u8]>>(
    app: &TestApp,
    path: &str,
    auth: &str,
    parts: &[P],
) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header("authorization", auth)
        .header(
            "content-type",
            format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"),
        )
        .body(Body::from(multipart(parts)))
        .unwrap();
    let resp = app.request_raw(req).await;
    let status = resp.status();
    (status, json_body(resp).await)
}

fn bearer(k: &str) -> String {
    format!("Bearer {k}")
}

async fn world() -> World {
    let app = TestApp::new().await;
    let superadmin = app.key_for("default", Role::Superadmin).await;
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/hospitals",
        Some(&bearer(&superadmin)),
        Some(json!({"name": "Hospital B", "contactEmail": "it@b.example", "plan": "professional"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let b = body["hospitalId"].as_str().unwrap().to_owned();
    assert!(b.starts_with("hosp_") && b.len() == 21, "{b}");
    let b_key = body["apiKey"].as_str().unwrap().to_owned();
    let reader = app.key_for("default", Role::Reader).await;
    assert_eq!(
        stow_as(
            &app,
            "/dicom-web/studies",
            &bearer(&app.key),
            &[inst(SA, 1)]
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        stow_as(&app, "/dicom-web/studies", &bearer(&b_key), &[inst(SB, 1)])
            .await
            .0,
        StatusCode::OK
    );
    World {
        app,
        superadmin,
        b,
        b_key,
        reader,
    }
}

fn studies(body: &Value) -> Vec<String> {
    body.as_array()
        .map(|a| {
            a.iter()
                .map(|o| o["0020000D"]["Value"][0].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn tenancy_matrix() {
    let w = world().await;
    let app = &w.app;
    let own = bearer(&app.key);
    let b = &w.b;
    // (method, path) of every DICOMweb route, with `{s}` a study of the caller's view
    let routes = [
        ("GET", "/dicom-web/studies".to_owned()),
        ("GET", "/dicom-web/series".to_owned()),
        ("GET", "/dicom-web/instances".to_owned()),
        ("GET", format!("/dicom-web/studies/{SB}/series")),
        ("GET", format!("/dicom-web/studies/{SB}/instances")),
        (
            "GET",
            format!("/dicom-web/studies/{SB}/series/{SB}.1/instances"),
        ),
        ("GET", format!("/tenants/{b}/dicom-web/studies")),
    ];
    // own hospital: 200, never another hospital's UIDs
    for (m, path) in &routes {
        let (status, body, _) = call(app, m, path, Some(&own), None).await;
        let expected = if path.starts_with("/tenants/") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{m} {path}: {body}");
        assert!(
            !body.to_string().contains(SB),
            "{path} leaked hospital B's study: {body}"
        );
    }
    // another hospital's study looks exactly like a missing one
    let (_, missing, _) = call(
        app,
        "GET",
        "/tenants/hosp_ffffffffffffffff/dicom-web/studies",
        Some(&own),
        None,
    )
    .await;
    let (_, other, _) = call(
        app,
        "GET",
        &format!("/tenants/{b}/dicom-web/studies"),
        Some(&own),
        None,
    )
    .await;
    assert_eq!(missing, other);
    let (_, body, _) = call(app, "GET", "/dicom-web/studies", Some(&own), None).await;
    assert_eq!(studies(&body), vec![SA]);
    let (_, body, _) = call(
        app,
        "GET",
        "/dicom-web/studies",
        Some(&bearer(&w.b_key)),
        None,
    )
    .await;
    assert_eq!(studies(&body), vec![SB]);
    let (_, body, _) = call(
        app,
        "GET",
        &format!("/tenants/{b}/dicom-web/studies"),
        Some(&bearer(&w.superadmin)),
        None,
    )
    .await;
    assert_eq!(
        studies(&body),
        vec![SB],
        "superadmin reaches every hospital"
    );

    // no credential: 401 with WWW-Authenticate on every route, and on STOW
    for (m, path) in routes
        .iter()
        .chain([("POST", "/dicom-web/studies".to_owned())].iter())
    {
        let (status, body, headers) = call(app, m, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {path}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("Bearer")
        );
        assert!(!body.to_string().contains(SA) && !body.to_string().contains(SB));
    }
    for bad in [
        "Bearer cpk_key_0000000000000000_".to_owned() + &"0".repeat(64),
        "Bearer not-a-token".into(),
        "Basic !!!".into(),
        "Digest x".into(),
    ] {
        assert_eq!(
            call(app, "GET", "/dicom-web/studies", Some(&bad), None)
                .await
                .0,
            StatusCode::UNAUTHORIZED,
            "{bad}"
        );
    }

    // read-only key: reads yes, STOW and admin no
    let reader = bearer(&w.reader);
    assert_eq!(
        call(app, "GET", "/dicom-web/studies", Some(&reader), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = stow_as(app, "/dicom-web/studies", &reader, &[inst(SA, 2)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        call(
            app,
            "POST",
            "/api/hospitals/default/api-keys",
            Some(&reader),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // suspended hospital: 403 with a clear message, data kept
    let patch = |status: &str| json!({"status": status});
    let (s, _, _) = call(
        app,
        "PATCH",
        &format!("/api/hospitals/{b}"),
        Some(&bearer(&w.superadmin)),
        Some(patch("suspended")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (status, body, _) = call(
        app,
        "GET",
        "/dicom-web/studies",
        Some(&bearer(&w.b_key)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspended")
    );
    assert_eq!(
        stow_as(app, "/dicom-web/studies", &bearer(&w.b_key), &[inst(SB, 2)])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    call(
        app,
        "PATCH",
        &format!("/api/hospitals/{b}"),
        Some(&bearer(&w.superadmin)),
        Some(patch("active")),
    )
    .await;
    let (_, body, _) = call(
        app,
        "GET",
        "/dicom-web/studies",
        Some(&bearer(&w.b_key)),
        None,
    )
    .await;
    assert_eq!(studies(&body), vec![SB], "data kept through the suspension");

    // an admin of one hospital cannot administer another (404, like a missing one)
    let (status, _, _) = call(app, "GET", &format!("/api/hospitals/{b}"), Some(&own), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        app,
        "POST",
        "/api/hospitals",
        Some(&own),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only a superadmin registers hospitals"
    );
}

#[tokio::test]
async fn sharing_makes_a_study_visible_read_only_and_revoking_hides_it() {
    let w = world().await;
    let app = &w.app;
    let b = bearer(&w.b_key);
    let share = format!("/api/hospitals/default/studies/{SA}/shares");
    let (status, body, _) = call(
        app,
        "POST",
        &share,
        Some(&bearer(&app.key)),
        Some(json!({"hospitalId": w.b, "accessLevel": "read"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, body, _) = call(app, "GET", "/dicom-web/studies", Some(&b), None).await;
    let mut seen = studies(&body);
    seen.sort();
    assert_eq!(seen, vec![SA, SB]);
    let (_, body, _) = call(
        app,
        "GET",
        &format!("/dicom-web/studies/{SA}/instances"),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(
        body.as_array().unwrap().len(),
        1,
        "shared study's instances are visible"
    );
    // readable through WADO too, but read-only
    let (status, meta, _) = call(
        app,
        "GET",
        &format!("/dicom-web/studies/{SA}/metadata"),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta[0]["0020000D"]["Value"][0], SA);
    // … at every level: series, instance, frame
    let series = format!("/dicom-web/studies/{SA}/series/{SA}.1");
    let instance = format!("{series}/instances/{SA}.1.1");
    let (status, meta, _) = call(app, "GET", &format!("{series}/metadata"), Some(&b), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta[0]["00080018"]["Value"][0], format!("{SA}.1.1"));
    let (status, meta, _) = call(app, "GET", &format!("{instance}/metadata"), Some(&b), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta[0]["0020000E"]["Value"][0], format!("{SA}.1"));
    assert_eq!(frame_status(app, &instance, &b).await, StatusCode::OK);
    let (status, _, _) = call(
        app,
        "DELETE",
        &format!("/dicom-web/studies/{SA}"),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a shared study cannot be deleted by the hospital it is shared with"
    );
    // B cannot share or administer A's study
    let (status, _, _) = call(
        app,
        "POST",
        &share,
        Some(&b),
        Some(json!({"hospitalId": w.b})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // a study the hospital does not hold cannot be shared
    let (status, _, _) = call(
        app,
        "POST",
        &format!("/api/hospitals/default/studies/{SB}/shares"),
        Some(&bearer(&app.key)),
        Some(json!({"hospitalId": w.b})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // default still does not see B's study
    let (_, body, _) = call(
        app,
        "GET",
        "/dicom-web/studies",
        Some(&bearer(&app.key)),
        None,
    )
    .await;
    assert_eq!(studies(&body), vec![SA]);
    let (status, _, _) = call(
        app,
        "DELETE",
        &format!("{share}/{}", w.b),
        Some(&bearer(&app.key)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body, _) = call(app, "GET", "/dicom-web/studies", Some(&b), None).await;
    assert_eq!(studies(&body), vec![SB], "revoked");
    let (status, _, _) = call(
        app,
        "GET",
        &format!("/dicom-web/studies/{SA}/metadata"),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoked in WADO too");
    assert_eq!(
        frame_status(app, &instance, &b).await,
        StatusCode::NOT_FOUND,
        "revoked for frames too"
    );
    assert_eq!(
        frame_status(app, &instance, &bearer(&app.key)).await,
        StatusCode::OK,
        "the owner still reads its frames"
    );
    assert_eq!(app.instance_count().await, 2, "the owner's study is intact");
}

/// The status of a GET of frame 1 of `instance` (a path).
async fn frame_status(app: &TestApp, instance: &str, auth: &str) -> StatusCode {
    let req = Request::get(format!("{instance}/frames/1"))
        .header("authorization", auth)
        .header(
            "accept",
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
        )
        .body(Body::empty())
        .unwrap();
    app.request_raw(req).await.status()
}

#[tokio::test]
async fn the_same_sop_instance_in_two_hospitals_is_two_instances() {
    let w = world().await;
    let app = &w.app;
    let file = inst(SA, 9);
    assert_eq!(
        stow_as(app, "/dicom-web/studies", &bearer(&w.b_key), &[&file])
            .await
            .0,
        StatusCode::OK
    );
    let other = Synth::new(SA, &format!("{SA}.1"), &format!("{SA}.1.9"))
        .fill(42)
        .bytes();
    assert_eq!(
        stow_as(app, "/dicom-web/studies", &bearer(&app.key), &[other])
            .await
            .0,
        StatusCode::OK,
        "no duplicate conflict across hospitals"
    );
    let (_, a, _) = call(
        app,
        "GET",
        &format!("/dicom-web/studies/{SA}/instances"),
        Some(&bearer(&app.key)),
        None,
    )
    .await;
    let (_, b, _) = call(
        app,
        "GET",
        &format!("/dicom-web/studies/{SA}/instances"),
        Some(&bearer(&w.b_key)),
        None,
    )
    .await;
    assert_eq!(a.as_array().unwrap().len(), 2);
    assert_eq!(b.as_array().unwrap().len(), 1);
    assert_eq!(app.instance_count().await, 4);
}

#[tokio::test]
async fn basic_and_bearer_as_orthanc_sends_them() {
    let w = world().await;
    let app = &w.app;
    let basic = |user: &str, pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };
    let (status, body) = stow_as(
        app,
        "/dicom-web/studies",
        &basic(&w.b, &w.b_key),
        &[inst(SB, 3)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = stow_as(
        app,
        &format!("/tenants/{}/dicom-web/studies", w.b),
        &bearer(&w.b_key),
        &[inst(SB, 4)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Basic with another hospital as user name, or a wrong password: 401
    assert_eq!(
        stow_as(
            app,
            "/dicom-web/studies",
            &basic("default", &w.b_key),
            &[inst(SB, 5)]
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let wrong = format!(
        "{}{}",
        &w.b_key[..w.b_key.len() - 1],
        if w.b_key.ends_with('0') { '1' } else { '0' }
    );
    assert_eq!(
        stow_as(
            app,
            "/dicom-web/studies",
            &basic(&w.b, &wrong),
            &[inst(SB, 5)]
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn keys_users_and_login() {
    let w = world().await;
    let app = &w.app;
    let admin_b = bearer(&w.b_key);
    let b = &w.b;
    // a writer key for B's Orthanc; it is shown once and never again
    let (status, body, _) = call(
        app,
        "POST",
        &format!("/api/hospitals/{b}/api-keys"),
        Some(&admin_b),
        Some(json!({"name": "orthanc", "role": "writer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let writer = body["apiKey"].as_str().unwrap().to_owned();
    let key_id = body["keyId"].as_str().unwrap().to_owned();
    assert_eq!(
        stow_as(app, "/dicom-web/studies", &bearer(&writer), &[inst(SB, 6)])
            .await
            .0,
        StatusCode::OK
    );
    let (_, shown, _) = call(
        app,
        "GET",
        &format!("/api/hospitals/{b}"),
        Some(&admin_b),
        None,
    )
    .await;
    assert_eq!(shown["hospitalId"], *b);
    assert!(
        !shown.to_string().contains("cpk_"),
        "no key material: {shown}"
    );
    // an admin cannot mint a superadmin key
    let (status, _, _) = call(
        app,
        "POST",
        &format!("/api/hospitals/{b}/api-keys"),
        Some(&admin_b),
        Some(json!({"role": "superadmin"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // revoked: 401 at once
    let (status, _, _) = call(
        app,
        "DELETE",
        &format!("/api/hospitals/{b}/api-keys/{key_id}"),
        Some(&admin_b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(
            app,
            "GET",
            "/dicom-web/studies",
            Some(&bearer(&writer)),
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );

    // a user logs in and reads with the token
    let (status, body, _) = call(
        app,
        "POST",
        &format!("/api/hospitals/{b}/users"),
        Some(&admin_b),
        Some(json!({"username": "rad1", "password": "correct horse", "roles": ["reader"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, _) = call(
        app,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"username": "rad1", "password": "wrong password"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        app,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"username": "nobody", "password": "correct horse"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body, _) = call(
        app,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"username": "rad1", "password": "correct horse"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body, _) = call(
        app,
        "GET",
        "/dicom-web/studies",
        Some(&bearer(&token)),
        None,
    )
    .await;
    assert_eq!(
        (status, studies(&body)),
        (StatusCode::OK, vec![SB.to_owned()])
    );
    assert_eq!(
        stow_as(app, "/dicom-web/studies", &bearer(&token), &[inst(SB, 7)])
            .await
            .0,
        StatusCode::FORBIDDEN,
        "reader"
    );
    // a disabled user's token stops working
    let user_id: i64 = app.state.archive.db.users_named("rad1").await.unwrap()[0].id;
    app.state
        .archive
        .db
        .set_user_active(user_id, false)
        .await
        .unwrap();
    assert_eq!(
        call(
            app,
            "GET",
            "/dicom-web/studies",
            Some(&bearer(&token)),
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
}

/// JWT attacks all give 401.
#[tokio::test]
async fn jwt_attacks_are_401() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let dir = tempfile::tempdir().unwrap();
    // an RSA key pair for an external OpenID Connect provider
    let key = RsaKey::generate("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [key.jwk]}).to_string()).unwrap();
    let (rsa, pubpem) = (key.encoding, key.public_pem);

    let app = TestApp::builder()
        .oidc("https://idp.example", "cloudpacs-viewer", &jwks)
        .build()
        .await;
    let now = chrono::Utc::now().timestamp();
    let claims = |iss: &str, aud: &str, exp: i64| json!({"iss": iss, "aud": aud, "sub": "u1", "exp": exp, "nbf": now - 10, "hospital": "default", "roles": ["reader"]});
    let mut rs = Header::new(Algorithm::RS256);
    rs.kid = Some("k1".into());
    let good = encode(
        &rs,
        &claims("https://idp.example", "cloudpacs-viewer", now + 600),
        &rsa,
    )
    .unwrap();
    assert_eq!(
        call(
            &app,
            "GET",
            "/dicom-web/studies",
            Some(&bearer(&good)),
            None
        )
        .await
        .0,
        StatusCode::OK,
        "a valid provider token"
    );

    let mut attacks = vec![
        (
            "expired",
            encode(
                &rs,
                &claims("https://idp.example", "cloudpacs-viewer", now - 3600),
                &rsa,
            )
            .unwrap(),
        ),
        (
            "wrong aud",
            encode(
                &rs,
                &claims("https://idp.example", "someone-else", now + 600),
                &rsa,
            )
            .unwrap(),
        ),
        (
            "wrong iss",
            encode(
                &rs,
                &claims("https://evil.example", "cloudpacs-viewer", now + 600),
                &rsa,
            )
            .unwrap(),
        ),
        // HS256 signed with the provider's public key as the HMAC secret
        (
            "HS256 with the RS public key",
            encode(
                &Header::new(Algorithm::HS256),
                &claims("https://idp.example", "cloudpacs-viewer", now + 600),
                &EncodingKey::from_secret(&pubpem),
            )
            .unwrap(),
        ),
    ];
    // alg none: header {"alg":"none"}, no signature
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    attacks.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims(
                "https://idp.example",
                "cloudpacs-viewer",
                now + 600
            ))
        ),
    ));
    // a tampered payload: roles raised, signature kept
    let parts: Vec<&str> = good.split('.').collect();
    let mut raised = claims("https://idp.example", "cloudpacs-viewer", now + 600);
    raised["roles"] = json!(["admin"]);
    attacks.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], b64(&raised), parts[2]),
    ));
    // a login token of another server (other secret)
    let other = cloudpacs::auth::jwt::JwtKeys::new(b"a completely different secret!!!", 600, None);
    attacks.push(("foreign login token", other.issue(1, "default").unwrap().0));
    for (what, token) in attacks {
        let (status, _, headers) = call(
            &app,
            "GET",
            "/dicom-web/studies",
            Some(&bearer(&token)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert!(headers.contains_key("www-authenticate"), "{what}");
    }
}

#[tokio::test]
async fn cors_for_configured_origins_only_and_on_errors() {
    let app = TestApp::builder()
        .cors_origins(&["http://viewer.example"])
        .build()
        .await;
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/dicom-web/studies")
        .header("origin", "http://viewer.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization,accept")
        .body(Body::empty())
        .unwrap();
    let resp = app.request_raw(preflight).await;
    assert!(resp.status().is_success());
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://viewer.example"
    );
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("accept"),
        "{allowed}"
    );
    // an error (401) still carries the header, so the browser shows it
    let req = Request::get("/dicom-web/studies")
        .header("origin", "http://viewer.example")
        .body(Body::empty())
        .unwrap();
    let resp = app.request_raw(req).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://viewer.example"
    );
    // the viewer route with ?token=: OHIF sends the login token as Bearer
    let req = Request::get("/dicom-web/studies")
        .header("origin", "http://viewer.example")
        .header("authorization", bearer(&app.key))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.request_raw(req).await.status(), StatusCode::OK);
    // another origin gets no CORS header
    let req = Request::get("/dicom-web/studies")
        .header("origin", "http://evil.example")
        .body(Body::empty())
        .unwrap();
    assert!(
        app.request_raw(req)
            .await
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

/// The CLI as an operator uses it, and no key material or patient data in
/// the server's logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database().await;
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(binary());
        cmd.args(args).arg("--data-dir").arg(dir.path());
        if let Some(url) = &db {
            cmd.arg("--database-url").arg(url);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created: Value = serde_json::from_str(&cli(&[
        "hospital", "create", "--name", "Clinic C", "--plan", "basic", "--json",
    ]))
    .unwrap();
    let c = created["hospitalId"].as_str().unwrap().to_owned();
    let c_admin = created["apiKey"].as_str().unwrap().to_owned();
    let list: Value = serde_json::from_str(&cli(&["hospital", "list", "--json"])).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|h| h["hospitalId"] == c.as_str())
    );
    assert!(!list.to_string().contains("cpk_"));
    let writer: Value = serde_json::from_str(&cli(&[
        "key",
        "create",
        "--hospital",
        &c,
        "--role",
        "writer",
        "--json",
    ]))
    .unwrap();
    cli(&[
        "user",
        "create",
        "--hospital",
        &c,
        "--username",
        "tech",
        "--password",
        "a long password",
        "--role",
        "writer",
    ]);

    let addr = free_addr();
    let log = dir.path().join("server.log");
    let mut cmd = std::process::Command::new(binary());
    cmd.args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path());
    if let Some(url) = &db {
        cmd.arg("--database-url").arg(url);
    }
    let mut server = cmd
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = |method: &str, path: &str, auth: &str, ct: &str, body: &[u8]| -> u16 {
        use std::io::{Read, Write};
        for _ in 0..200 {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let head = format!(
                    "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(body).unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                return out[9..12].parse().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("server not reachable");
    };
    let w = writer["apiKey"].as_str().unwrap();
    let ct = format!("multipart/related; boundary={BOUNDARY}");
    assert_eq!(
        client(
            "POST",
            "/dicom-web/studies",
            &bearer(w),
            &ct,
            &multipart(&[inst(SA, 1)])
        ),
        200
    );
    assert_eq!(
        client(
            "GET",
            "/dicom-web/studies?PatientName=Doe*",
            &bearer(&c_admin),
            "x",
            b""
        ),
        200
    );
    assert_eq!(
        client(
            "POST",
            "/api/auth/login",
            "none",
            "application/json",
            br#"{"username":"tech","password":"a long password"}"#
        ),
        200
    );
    cli(&["hospital", "suspend", &c]);
    assert_eq!(
        client("GET", "/dicom-web/studies", &bearer(&c_admin), "x", b""),
        403,
        "takes effect at once"
    );
    cli(&["hospital", "activate", &c]);
    let key_id = writer["keyId"].as_str().unwrap();
    cli(&["key", "revoke", "--hospital", &c, key_id]);
    assert_eq!(
        client("GET", "/dicom-web/studies", &bearer(w), "x", b""),
        401
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("/dicom-web/studies"),
        "requests are logged: {logs}"
    );
    for secret in [
        w,
        c_admin.as_str(),
        "a long password",
        "Doe^Jane",
        "Doe*",
        SA,
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}

/// First start on an empty index: the hospital `default` and a superadmin
/// key, printed once on the terminal (stderr), which works; a restart
/// prints nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_superadmin_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database().await;
    let addr = free_addr();
    let mut server = start_server(dir.path(), db.as_deref(), addr);
    let printed = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("cpk_"))
        .unwrap_or_else(|| panic!("no key printed: {printed}"))
        .to_owned();
    assert_eq!(printed.matches("cpk_").count(), 1);
    let status = |key: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let req = format!(
            "GET /api/hospitals HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out[9..12].to_owned()
    };
    assert_eq!(status(&key), "200", "the printed key is a superadmin key");
    server.kill().unwrap();
    server.wait().unwrap();
    let addr = free_addr();
    let mut again = start_server(dir.path(), db.as_deref(), addr);
    let printed = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        !printed.contains("cpk_"),
        "a restart prints no key: {printed}"
    );
    again.kill().unwrap();
    again.wait().unwrap();
}
