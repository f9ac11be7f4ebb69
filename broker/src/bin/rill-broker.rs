//! `rill-broker`: with no arguments, a single-node broker with its data under `./rill-data`.
//!
//! Today the binary opens (and recovers) every partition log in the data directory, runs the
//! periodic flush/roll/retention tick, and closes the logs cleanly on SIGINT or SIGTERM. The
//! network server, metadata controller and replication arrive in the following issues.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rill_broker::log::{now_ms, FlushPolicy, LogConfig, LogManager};
use tracing_subscriber::EnvFilter;

/// A durable, replicated, partitioned message log broker.
#[derive(Debug, Parser)]
#[command(name = "rill-broker", version, about)]
struct Args {
    /// Directory holding the partition logs.
    #[arg(long, env = "RILL_DATA_DIR", default_value = "./rill-data")]
    data_dir: PathBuf,
    /// When appends are fdatasync'ed: `always`, `interval:<ms>` (group commit) or `os`.
    #[arg(long, default_value = "interval:1000")]
    flush: String,
    /// Segment size at which a new segment is rolled, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    segment_bytes: u64,
    /// Delete sealed segments whose newest record is older than this (ms); 0 keeps data forever.
    #[arg(long, default_value_t = 7 * 24 * 3600 * 1000)]
    retention_ms: u64,
    /// Delete the oldest sealed segments while a partition stays above this size (bytes); 0 = no limit.
    #[arg(long, default_value_t = 0)]
    retention_bytes: u64,
    /// How often the flush/roll/retention tick runs, in ms.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Log filter, e.g. `info` or `rill_broker=debug` (env RUST_LOG wins).
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .context("--log-level")?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();

    let flush: FlushPolicy = args.flush.parse()?;
    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        retention_ms: (args.retention_ms > 0).then_some(args.retention_ms),
        retention_bytes: (args.retention_bytes > 0).then_some(args.retention_bytes),
        flush,
        ..LogConfig::default()
    };
    config.validate()?;
    let data_dir = args.data_dir.clone();
    let manager =
        tokio::task::spawn_blocking(move || LogManager::open(&data_dir, config)).await??;
    let partitions = manager.partitions().len();
    tracing::info!(data_dir = %args.data_dir.display(), partitions, "rill-broker storage ready (the network server is not part of this build yet); Ctrl-C to stop");

    let manager = std::sync::Arc::new(std::sync::Mutex::new(Some(manager)));
    let ticker = {
        let manager = manager.clone();
        let tick = Duration::from_millis(args.tick_ms.max(1));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let manager = manager.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let mut guard = manager.lock().unwrap_or_else(|e| e.into_inner());
                    guard.as_mut().map_or(Ok(()), |m| m.tick(now_ms()))
                })
                .await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("storage tick failed: {e}"),
                    Err(e) => tracing::error!("storage tick panicked: {e}"),
                }
            }
        })
    };

    shutdown_signal().await?;
    tracing::info!("shutting down: flushing and closing logs");
    ticker.abort();
    let taken = manager.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(manager) = taken {
        tokio::task::spawn_blocking(move || manager.close()).await??;
    }
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
