//! The audit trail: every DICOMweb and admin request is recorded once, by
//! one middleware ([`record`]), after its response status is known: who
//! (key id or user, never a secret), on which hospital, which action, the
//! study/series/instance UIDs of the path (for a STOW, the stored studies),
//! the status, the client address and the time. Nothing from bodies or
//! query strings (they may hold patient data) is copied.
//!
//! The credential extractors (`auth`) note the actor and the hospital in a
//! per-request [`Slot`]; handlers know nothing of auditing, except STOW,
//! which attaches the stored study UIDs to its response ([`StoredStudies`]).
//!
//! Rows are written by one background task per process ([`AuditLog`]):
//! the request only queues its row (a bounded channel: when the index is
//! slow, requests wait rather than rows being dropped), and the writer
//! inserts what was queued within 100 ms in one multi-row INSERT. A frame
//! read thus costs a channel send, not an index write. [`AuditLog::flush`] waits
//! until everything queued before it is written: `serve` calls it after the
//! server stopped (nothing is lost on a clean shutdown), and reading the
//! trail calls it first (a replica reads its own writes). A crash can lose
//! the rows of the last moments' requests.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{Extensions, Method};
use axum::middleware::Next;
use axum::response::Response;
use entity::audit_log;
use sea_orm::ActiveValue::{NotSet, Set};
use tokio::sync::{mpsc, oneshot};

use crate::app::AppState;
use crate::db::{Db, now_millis};

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `key`, `user`, `external`, `system` or `anonymous`.
    pub kind: &'static str,
    pub id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Default)]
struct Noted {
    actor: Option<Actor>,
    /// The caller's home hospital (public id).
    home: Option<String>,
    /// The hospital the request acts on, once access to it was granted.
    hospital: Option<String>,
}

/// What the request path learned about the caller, for its audit row.
#[derive(Debug, Clone, Default)]
pub struct Slot(Arc<Mutex<Noted>>);

impl Slot {
    /// The slot of a request (none outside the audit middleware).
    pub fn of(extensions: &Extensions) -> Option<Slot> {
        extensions.get::<Slot>().cloned()
    }

    fn with(&self, f: impl FnOnce(&mut Noted)) {
        if let Ok(mut noted) = self.0.lock() {
            f(&mut noted);
        }
    }

    /// The authenticated caller and its home hospital.
    pub fn actor(&self, actor: Actor, home: &str) {
        self.with(|n| {
            n.actor = Some(actor);
            n.home = Some(home.to_owned());
        });
    }

    /// Note the caller in the request's slot, if any.
    pub fn note_actor(extensions: &Extensions, actor: Actor, home: &str) {
        if let Some(slot) = extensions.get::<Slot>() {
            slot.actor(actor, home);
        }
    }

    /// The hospital the request acts on (after access was granted).
    pub fn note_hospital(extensions: &Extensions, hospital: &str) {
        if let Some(slot) = extensions.get::<Slot>() {
            slot.with(|n| n.hospital = Some(hospital.to_owned()));
        }
    }

    fn take(&self) -> Noted {
        self.0
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default()
    }
}

/// Response extension of STOW: the studies it stored instances into.
#[derive(Debug, Clone)]
pub struct StoredStudies(pub Vec<String>);

/// One audit row, before it is written.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: i64,
    pub hospital: Option<String>,
    pub actor: Actor,
    pub action: String,
    pub method: String,
    pub study: Option<String>,
    pub series: Option<String>,
    pub instance: Option<String>,
    pub status: u16,
    pub client_ip: Option<IpAddr>,
}

impl Entry {
    fn into_row(self) -> audit_log::ActiveModel {
        // UIDs are at most 64 characters; a path segment may be anything.
        let cut = |s: Option<String>, n: usize| s.map(|s| s.chars().take(n).collect::<String>());
        audit_log::ActiveModel {
            id: NotSet,
            at: Set(self.at),
            hospital_id: Set(self.hospital),
            actor_kind: Set(self.actor.kind.to_owned()),
            actor_id: Set(cut(self.actor.id, 128)),
            actor_name: Set(cut(self.actor.name, 128)),
            action: Set(self.action),
            method: Set(self.method),
            study_uid: Set(cut(self.study, 4096)),
            series_uid: Set(cut(self.series, 64)),
            instance_uid: Set(cut(self.instance, 64)),
            status: Set(i32::from(self.status)),
            client_ip: Set(self.client_ip.map(|ip| ip.to_string())),
        }
    }
}

enum Msg {
    Row(Box<Entry>),
    Flush(oneshot::Sender<()>),
}

/// The queue to the audit writer of this process.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

/// Rows one INSERT writes at most.
const BATCH: usize = 500;

/// How long the writer collects rows before it commits them: one commit
/// (one fsync) per 100 ms of traffic instead of one per request, which
/// otherwise runs beside the next request, on the same cores.
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

impl AuditLog {
    /// Start the writer task (on the current Tokio runtime).
    pub fn start(db: Db) -> AuditLog {
        let (tx, mut rx) = mpsc::channel::<Msg>(10_000);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Rows of the next LINGER join this one's commit, unless
                // someone waits for them (flush) or the batch is full.
                let deadline = tokio::time::Instant::now() + LINGER;
                let mut rows = Vec::new();
                let mut waiting = Vec::new();
                let mut next = Some(first);
                while let Some(msg) = next {
                    match msg {
                        Msg::Row(e) => rows.push(e.into_row()),
                        Msg::Flush(done) => waiting.push(done),
                    }
                    next = if rows.len() < BATCH && waiting.is_empty() {
                        tokio::time::timeout_at(deadline, rx.recv())
                            .await
                            .ok()
                            .flatten()
                    } else {
                        None
                    };
                }
                write(&db, rows).await;
                for done in waiting {
                    let _ = done.send(());
                }
            }
        });
        AuditLog { tx }
    }

    /// Queue a row.
    pub async fn record(&self, entry: Entry) {
        if self.tx.send(Msg::Row(Box::new(entry))).await.is_err() {
            tracing::error!("the audit writer is gone; an audit row is lost");
        }
    }

    /// Wait until every row queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Record an administrative action of the command line (`cloudpacs key
/// create` …): written at once, there is no writer task. The actor is
/// `system` / `cli`; the status is 200 (failed commands change nothing).
pub async fn record_cli(db: &Db, hospital: &str, action: &str) {
    let entry = Entry {
        at: now_millis(),
        hospital: Some(hospital.to_owned()),
        actor: Actor {
            kind: "system",
            id: Some("cli".into()),
            name: None,
        },
        action: action.to_owned(),
        method: "CLI".into(),
        study: None,
        series: None,
        instance: None,
        status: 200,
        client_ip: None,
    };
    write(db, vec![entry.into_row()]).await;
}

/// Insert a batch, retrying a few times when the index does not answer.
async fn write(db: &Db, rows: Vec<audit_log::ActiveModel>) {
    let n = rows.len();
    for attempt in 0..5u32 {
        match db.insert_audit(rows.clone()).await {
            Ok(()) => return,
            Err(e) if attempt < 4 => {
                tracing::warn!(error = %e, rows = n, "audit rows not written yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => tracing::error!(error = %e, rows = n, "audit rows lost"),
        }
    }
}

/// The audited action of a route template (`None`: not audited, e.g. the
/// health probes).
pub fn action_of(method: &Method, template: &str) -> Option<String> {
    if let Some((_, resource)) = template.split_once("/dicom-web") {
        return Some(dicomweb_action(method, resource).to_owned());
    }
    let api = template.strip_prefix("/api")?;
    let m = method.as_str();
    #[rustfmt::skip]
    let action = match (m, api) {
        ("POST",   "/auth/login")                                     => "login",
        ("POST",   "/auth/mfa/enroll")                                => "mfa.enroll",
        ("POST",   "/auth/mfa/verify")                                => "mfa.verify",
        ("POST",   "/hospitals")                                      => "hospital.create",
        ("GET",    "/hospitals")                                      => "hospital.list",
        ("GET",    "/hospitals/{id}")                                 => "hospital.read",
        ("PATCH",  "/hospitals/{id}")                                 => "hospital.update",
        ("GET",    "/hospitals/{id}/usage")                           => "usage.read",
        ("POST",   "/hospitals/{id}/api-keys")                        => "key.create",
        ("DELETE", "/hospitals/{id}/api-keys/{key_id}")               => "key.revoke",
        ("POST",   "/hospitals/{id}/users")                           => "user.create",
        ("POST",   "/hospitals/{id}/studies/{study}/shares")          => "share.create",
        ("DELETE", "/hospitals/{id}/studies/{study}/shares/{target}") => "share.delete",
        ("GET",    "/audit")                                          => "audit.read",
        _ => return Some(format!("api {m} {api}")),
    };
    Some(action.to_owned())
}

/// PS3.18 transactions: store, search, retrieve (instances, metadata,
/// frames, bulk data), delete.
fn dicomweb_action(method: &Method, resource: &str) -> &'static str {
    match *method {
        Method::POST => "stow",
        Method::DELETE => "delete",
        Method::GET | Method::HEAD => retrieve_action(resource),
        // Refused with 405; recorded all the same.
        _ => "other",
    }
}

fn retrieve_action(resource: &str) -> &'static str {
    if resource.ends_with("/metadata") {
        "metadata"
    } else if resource.contains("/frames/") {
        "frames"
    } else if resource.contains("/bulkdata/") {
        "bulkdata"
    } else if resource.ends_with('}') {
        // `/studies/{study}`, `…/series/{series}`, `…/instances/{instance}`
        "wado"
    } else {
        "qido"
    }
}

/// The middleware: run the request with a fresh [`Slot`], then queue its
/// audit row.
pub async fn record(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(action) = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| action_of(req.method(), p.as_str()))
    else {
        return next.run(req).await;
    };
    let method = req.method().to_string();
    let (mut parts, body) = req.into_parts();
    let client_ip = crate::auth::client_ip(&parts, &app.trusted_proxies);
    let (mut study, mut series, mut instance) = (None, None, None);
    if let Ok(params) = RawPathParams::from_request_parts(&mut parts, &app).await {
        for (k, v) in params.iter() {
            match k {
                "study" => study = Some(v.to_owned()),
                "series" => series = Some(v.to_owned()),
                "instance" => instance = Some(v.to_owned()),
                _ => {}
            }
        }
    }
    let slot = Slot::default();
    parts.extensions.insert(slot.clone());
    let resp = next.run(Request::from_parts(parts, body)).await;
    if study.is_none()
        && let Some(StoredStudies(uids)) = resp.extensions().get::<StoredStudies>()
        && !uids.is_empty()
    {
        study = Some(uids.join("\\"));
    }
    let noted = slot.take();
    let entry = Entry {
        at: now_millis(),
        hospital: noted.hospital.or(noted.home),
        actor: noted.actor.unwrap_or(Actor {
            kind: "anonymous",
            id: None,
            name: None,
        }),
        action,
        method,
        study,
        series,
        instance,
        status: resp.status().as_u16(),
        client_ip,
    };
    app.audit.record(entry).await;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_the_route_templates() {
        let a = |m: Method, t: &str| action_of(&m, t);
        let web = "/tenants/{hospital_id}/dicom-web";
        assert_eq!(
            a(Method::POST, "/dicom-web/studies").as_deref(),
            Some("stow")
        );
        assert_eq!(
            a(Method::GET, "/dicom-web/studies").as_deref(),
            Some("qido")
        );
        assert_eq!(
            a(Method::GET, &format!("{web}/studies/{{study}}/series")).as_deref(),
            Some("qido")
        );
        assert_eq!(
            a(Method::GET, "/dicom-web/studies/{study}").as_deref(),
            Some("wado")
        );
        assert_eq!(
            a(
                Method::GET,
                "/dicom-web/studies/{study}/series/{series}/metadata"
            )
            .as_deref(),
            Some("metadata")
        );
        assert_eq!(
            a(
                Method::GET,
                "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"
            )
            .as_deref(),
            Some("frames")
        );
        assert_eq!(
            a(Method::DELETE, "/dicom-web/studies/{study}").as_deref(),
            Some("delete")
        );
        assert_eq!(
            a(Method::PATCH, "/api/hospitals/{id}").as_deref(),
            Some("hospital.update")
        );
        assert_eq!(a(Method::GET, "/healthz"), None);
        assert_eq!(
            a(Method::PUT, "/dicom-web/studies").as_deref(),
            Some("other")
        );
        assert_eq!(
            a(
                Method::GET,
                "/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulkdata/{*path}"
            )
            .as_deref(),
            Some("bulkdata")
        );
    }
}
