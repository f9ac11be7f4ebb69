//! `rill`: the Rill command-line tool. Its subcommands (cluster, topic, produce, consume,
//! offsets, group, bench) arrive with the client in the "working broker" issue.

use clap::Parser;

/// Manage and use a Rill cluster from the terminal.
#[derive(Debug, Parser)]
#[command(name = "rill", version, about)]
struct Args {
    /// Brokers to bootstrap from, host:port[,host:port...].
    #[arg(long, env = "RILL_BROKERS", default_value = "127.0.0.1:9292")]
    brokers: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "this build of rill has no subcommands yet (brokers: {}); see README.md",
        args.brokers
    )
}
