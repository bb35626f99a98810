//! The `cloudpacs` command line: `serve` and `migrate`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use cloudpacs::auth::Role;
use cloudpacs::config::{DbArgs, LogFormat, ServeConfig};
use cloudpacs::db::{Db, HospitalPatch};
use cloudpacs::{AppState, app};
use cloudpacs::{admin, audit};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "cloudpacs", version, about = "A multi-tenant DICOMweb archive")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite file + local folder unless configured otherwise).
    Serve(Box<ServeConfig>),
    /// Apply the index migrations and exit.
    Migrate(DbArgs),
    /// Hospitals (tenants).
    Hospital {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: HospitalCmd,
    },
    /// API keys of a hospital (for Orthanc, agents, tools).
    Key {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: KeyCmd,
    },
    /// Users (people who log in).
    User {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: UserCmd,
    },
}

#[derive(Subcommand)]
enum HospitalCmd {
    /// Register a hospital; prints its id and its admin API key (shown only now).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "basic")]
        plan: String,
        #[arg(long)]
        contact_email: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List hospitals.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one hospital.
    Show { id: String },
    /// Suspend a hospital: its requests get 403, its data is kept.
    Suspend { id: String },
    /// Activate a hospital again.
    Activate { id: String },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create an API key; prints it (shown only now).
    Create {
        #[arg(long)]
        hospital: String,
        #[arg(long, default_value = "writer")]
        role: String,
        #[arg(long, default_value = "api key")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key.
    Revoke {
        #[arg(long)]
        hospital: String,
        key_id: String,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user.
    Create {
        #[arg(long)]
        hospital: String,
        #[arg(long)]
        username: String,
        /// The password (also read from CLOUDPACS_USER_PASSWORD).
        #[arg(long, env = "CLOUDPACS_USER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "reader")]
        role: String,
        /// Other hospitals the user may access.
        #[arg(long, value_delimiter = ',')]
        access: Vec<String>,
        #[arg(long)]
        superadmin: bool,
        #[arg(long)]
        email: Option<String>,
    },
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("CLOUDPACS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("cloudpacs: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => {
            init_logs(config.log_format);
            serve(*config).await
        }
        Command::Migrate(db) => {
            init_logs(LogFormat::Text);
            migrate(db).await
        }
        Command::Hospital { db, action } => hospital(db, action).await,
        Command::Key { db, action } => key(db, action).await,
        Command::User { db, action } => user(db, action).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloudpacs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Open (and migrate) the index for an admin command; works while the
/// server runs.
async fn open_db(db: &DbArgs) -> Result<Db, String> {
    tokio::fs::create_dir_all(&db.data_dir)
        .await
        .map_err(|e| e.to_string())?;
    let pool = cloudpacs::db::PoolOptions {
        max_connections: 2,
        ..db.pool()
    };
    let conn = Db::connect(&db.url(), &pool)
        .await
        .map_err(|e| e.to_string())?;
    conn.migrate().await.map_err(|e| e.to_string())?;
    conn.ensure_default_hospital()
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

async fn migrate(db: DbArgs) -> Result<(), String> {
    open_db(&db).await?;
    tracing::info!("index migrated");
    Ok(())
}

fn api(e: cloudpacs::error::ApiError) -> String {
    match e {
        cloudpacs::error::ApiError::Internal(detail) => detail,
        other => other.to_string(),
    }
}

async fn hospital(db: DbArgs, action: HospitalCmd) -> Result<(), String> {
    let db = open_db(&db).await?;
    match action {
        HospitalCmd::Create {
            name,
            plan,
            contact_email,
            json,
        } => {
            let req = admin::HospitalRequest {
                name,
                contact_email,
                contact_phone: None,
                address: None,
                plan: Some(plan),
            };
            let (h, key) = admin::create_hospital(&db, req).await.map_err(api)?;
            audit::record_cli(&db, &h.hospital_id, "hospital.create").await;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"hospitalId": h.hospital_id, "apiKey": key})
                );
            } else {
                println!(
                    "hospital {} created\nadmin API key (shown only now): {key}",
                    h.hospital_id
                );
            }
        }
        HospitalCmd::List { json } => {
            let all = db.list_hospitals().await.map_err(|e| e.to_string())?;
            if json {
                let list: Vec<_> = all.iter().map(admin::hospital_json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for h in all {
                    println!("{}\t{}\t{}\t{}", h.hospital_id, h.status, h.plan, h.name);
                }
            }
        }
        HospitalCmd::Show { id } => {
            let h = db
                .hospital_model(&id)
                .await
                .map_err(|e| format!("{id}: {e}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&admin::hospital_json(&h)).unwrap_or_default()
            );
        }
        HospitalCmd::Suspend { id } => set_status(&db, &id, "suspended").await?,
        HospitalCmd::Activate { id } => set_status(&db, &id, "active").await?,
    }
    Ok(())
}

async fn set_status(db: &Db, id: &str, status: &str) -> Result<(), String> {
    let patch = HospitalPatch {
        status: Some(status.into()),
        ..Default::default()
    };
    db.update_hospital(id, patch)
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    audit::record_cli(db, id, "hospital.update").await;
    println!("hospital {id} is {status}");
    Ok(())
}

async fn key(db: DbArgs, action: KeyCmd) -> Result<(), String> {
    let db = open_db(&db).await?;
    match action {
        KeyCmd::Create {
            hospital,
            role,
            name,
            json,
        } => {
            let role = Role::parse(&role).ok_or_else(|| format!("unknown role {role:?}"))?;
            let (key_id, key) = admin::create_key(&db, &hospital, role, &name)
                .await
                .map_err(api)?;
            audit::record_cli(&db, &hospital, "key.create").await;
            if json {
                println!("{}", serde_json::json!({"keyId": key_id, "apiKey": key}));
            } else {
                println!(
                    "key {key_id} ({}) created\nAPI key (shown only now): {key}",
                    role.as_str()
                );
            }
        }
        KeyCmd::Revoke { hospital, key_id } => {
            let h = db
                .find_hospital(&hospital)
                .await
                .map_err(|e| format!("{hospital}: {e}"))?;
            db.revoke_key(h.pk, &key_id)
                .await
                .map_err(|e| format!("{key_id}: {e}"))?;
            audit::record_cli(&db, &hospital, "key.revoke").await;
            println!("key {key_id} revoked");
        }
    }
    Ok(())
}

async fn user(db: DbArgs, action: UserCmd) -> Result<(), String> {
    let db = open_db(&db).await?;
    let UserCmd::Create {
        hospital,
        username,
        password,
        role,
        access,
        superadmin,
        email,
    } = action;
    let req = admin::UserRequest {
        username: username.clone(),
        password,
        email,
        roles: vec![role],
        accessible_hospitals: access,
        superadmin,
    };
    let id = admin::create_user(&db, &hospital, req).await.map_err(api)?;
    audit::record_cli(&db, &hospital, "user.create").await;
    println!("user {username} created (id {id})");
    Ok(())
}

async fn serve(config: ServeConfig) -> Result<(), String> {
    tracing::info!(config = ?config, "starting");
    let state = AppState::open(&config).await?;
    if state.first_start {
        // Printed once, on the terminal only (never into the logs).
        let (key_id, key) = admin::create_key(
            &state.archive.db,
            cloudpacs::db::DEFAULT_HOSPITAL,
            Role::Superadmin,
            "superadmin",
        )
        .await
        .map_err(api)?;
        eprintln!(
            "\ncloudpacs: first start. Superadmin API key {key_id} of hospital `default` (shown only now):\n  {key}\n\
             Use it as `Authorization: Bearer <key>`; create narrower keys with `cloudpacs key create`.\n"
        );
    }
    let orphan_age = Duration::from_secs(config.orphan_age_secs);
    match state.archive.sweep_orphans(orphan_age).await {
        Ok(n) if n > 0 => tracing::info!(removed = n, "deleted orphan blobs"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
    }
    let sweeper = {
        let archive = state.archive.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = archive.sweep_orphans(orphan_age).await {
                    tracing::warn!(error = %e, "orphan sweep failed");
                }
            }
        })
    };

    let audit = state.audit.clone();
    let retention_stop = Arc::new(tokio::sync::Notify::new());
    let retention = (config.policy.retention_interval_secs > 0).then(|| {
        tokio::spawn(cloudpacs::retention::run(
            state.clone(),
            Duration::from_secs(config.policy.retention_interval_secs),
            config.policy.retention_batch,
            retention_stop.clone(),
        ))
    });

    // TCP_NODELAY: responses are streamed in several writes (chunked JSON
    // arrays, multipart parts); with Nagle on, every write after the first
    // waits for the client's delayed ACK (~40 ms on Linux).
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
    tracing::info!(listen = %config.listen, "serving DICOMweb at /dicom-web");
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let server = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown({
        let shutdown = shutdown.clone();
        async move { shutdown.notified().await }
    });
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        result = &mut server => {
            sweeper.abort();
            retention_stop.notify_one();
            audit.flush().await;
            return result.map_err(|e| e.to_string())?.map_err(|e| e.to_string());
        }
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    shutdown.notify_one();
    sweeper.abort();
    retention_stop.notify_one();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    match tokio::time::timeout(grace, server).await {
        Ok(_) => tracing::info!("stopped"),
        Err(_) => tracing::warn!("grace period over; stopping with requests in flight"),
    }
    if let Some(task) = retention
        && tokio::time::timeout(grace, task).await.is_err()
    {
        tracing::warn!("grace period over; a retention sweep was interrupted");
    }
    // Every audit row of the requests served is written before exiting.
    audit.flush().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
