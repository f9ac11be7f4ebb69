//! `rill-broker`: with no arguments, a working single-node broker on 127.0.0.1:9292 with its
//! data under `./rill-data`. Flags and a TOML file (`--config`) set everything else; see
//! `rill-broker --help` and docs/OPERATIONS.md.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rill_broker::config::{BrokerConfig, Flags};
use rill_broker::server::Broker;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = BrokerConfig::load(Flags::parse())?;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .context("--log-level")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        // One JSON object per line: timestamp, level, target, fields (message among them).
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }

    let broker = Broker::start(config).await?;
    // SIGHUP reads the TLS certificate, key and CA files again (docs/SECURITY.md "TLS"); it
    // never stops the broker (its default action would).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let tls = broker.state().tls.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match tls.as_ref().map(|tls| tls.reload()) {
                Some(Ok(())) => {
                    tracing::info!("SIGHUP: TLS certificates reloaded; new connections use them")
                }
                Some(Err(e)) => tracing::error!(
                    "SIGHUP: reloading the TLS certificates failed, the previous ones stay in use: {e}"
                ),
                None => tracing::info!("SIGHUP: nothing to reload (no TLS listeners)"),
            }
        }
    });
    tokio::select! {
        signal = shutdown_signal() => signal?,
        reason = broker.failed() => {
            broker.shutdown_after_failure().await?;
            anyhow::bail!("{reason}");
        }
    }
    tracing::info!("shutting down: finishing in-flight requests, flushing and closing logs");
    broker.shutdown(Duration::from_secs(10)).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
