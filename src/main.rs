//! The `cloudpacs` command line: `serve` and `migrate`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cloudpacs::config::{DbArgs, LogFormat, ServeConfig};
use cloudpacs::{AppState, app};
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

#[tokio::main]
async fn main() -> ExitCode {
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloudpacs: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(db: DbArgs) -> Result<(), String> {
    tokio::fs::create_dir_all(&db.data_dir)
        .await
        .map_err(|e| e.to_string())?;
    let conn = cloudpacs::db::Db::connect(&db.url(), 1)
        .await
        .map_err(|e| e.to_string())?;
    conn.migrate().await.map_err(|e| e.to_string())?;
    tracing::info!("index migrated");
    Ok(())
}

async fn serve(config: ServeConfig) -> Result<(), String> {
    tracing::info!(config = ?config, "starting");
    let state = AppState::open(&config).await?;
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

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
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
            return result.map_err(|e| e.to_string())?.map_err(|e| e.to_string());
        }
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    shutdown.notify_one();
    sweeper.abort();
    match tokio::time::timeout(Duration::from_secs(config.shutdown_grace_secs), server).await {
        Ok(_) => tracing::info!("stopped"),
        Err(_) => tracing::warn!("grace period over; stopping with requests in flight"),
    }
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
