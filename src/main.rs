//! The `sandpool` binary: parses the configuration, sets up logging and runs a subcommand.

use anyhow::Context;
use clap::Parser;
use sandpool::audit::AuditEntry;
use sandpool::config::{AuditCommand, Cli, Command, Config, ImageCommand};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let logs = tracing_subscriber::fmt().with_env_filter(
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    );
    // A command's own output (a table, JSON) is stdout's alone; its logs go to stderr.
    if matches!(command, Command::Serve) {
        logs.init();
    } else {
        logs.with_writer(std::io::stderr).init();
    }
    let config = cli.config;
    match command {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {} (SANDPOOL_LISTEN)", config.listen))?;
            sandpool::run(config, listener, shutdown_signal()).await?;
        }
        Command::Image {
            command: ImageCommand::Build,
        } => {
            let gate = sandpool::docker::DockerGate::connect(&config.docker_host, &config.gate)
                .await
                .with_context(|| format!("cannot connect to docker at {}", config.docker_host))?;
            sandpool::docker::image::build_image(&gate, &config.image).await?;
            println!("built {}", config.image.image);
        }
        Command::Audit {
            command: AuditCommand::Verify { session, file },
        } => {
            let entries = read_audit(&config, &session, file.as_deref()).await?;
            match sandpool::audit::verify(&entries) {
                Ok(n) => {
                    println!("ok: {n} entries, chain intact");
                    if n == sandpool::audit::MAX_READ_ENTRIES {
                        eprintln!("(only the first {n} entries are read: the chain may go on)");
                    }
                }
                Err(broken) => {
                    println!(
                        "broken: session {session}, seq {}: {}",
                        broken.seq, broken.reason
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Status { url, json } => {
            use sandpool::status::{Source, gather, render, replicas_json};
            let source = match (url, &config.session.redis_url) {
                (Some(url), _) => Source::Http(url),
                (None, Some(redis)) => Source::Redis {
                    url: redis.clone(),
                    prefix: config.session.redis_prefix.clone(),
                },
                (None, None) => Source::Http(format!("http://{}", config.listen)),
            };
            match gather(&source).await {
                Ok(replicas) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&replicas_json(&replicas))?
                    )
                }
                Ok(replicas) => print!("{}", render(&replicas, &source)),
                Err(error) => {
                    eprintln!("sandpool status: {error}");
                    eprintln!(
                        "(start one with scripts/run, or say where it runs: --url http://HOST:PORT, or SANDPOOL_REDIS_URL for its store)"
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Show { session, file },
        } => {
            for entry in read_audit(&config, &session, file.as_deref()).await? {
                println!("{}", serde_json::to_string(&entry)?);
            }
        }
    }
    Ok(())
}

/// A session's audit trail from `file` when given, else from Redis when
/// `SANDPOOL_REDIS_URL` is set, else from `SANDPOOL_DATA_DIR`.
async fn read_audit(
    config: &Config,
    session: &str,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<AuditEntry>> {
    use sandpool::audit::{AuditLog, FileAuditLog, RedisAuditLog, file::read_jsonl};
    if let Some(path) = file {
        return Ok(read_jsonl(path, false)?);
    }
    let settings = &config.audit;
    if let Some(url) = &config.session.redis_url {
        let log = RedisAuditLog::connect(url, &config.session.redis_prefix, settings.retention)
            .await
            .context("cannot reach SANDPOOL_REDIS_URL")?;
        return Ok(log.read(session).await?);
    }
    if let Some(dir) = &settings.data_dir {
        let log = FileAuditLog::open(dir, settings.retention)?;
        return Ok(read_jsonl(&log.path(session)?, false)?);
    }
    anyhow::bail!(
        "no audit trail to read: set SANDPOOL_REDIS_URL or SANDPOOL_DATA_DIR, or pass --file (an in-memory trail lives only in its process)"
    )
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
