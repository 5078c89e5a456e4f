//! The `sandpool` binary: parses the configuration, sets up logging and runs a subcommand.

use anyhow::Context;
use clap::Parser;
use sandpool::config::{Cli, Command, ImageCommand};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
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
    }
    Ok(())
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
