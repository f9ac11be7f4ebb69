//! `rill`: the Rill command-line tool (in the style of rpk and kcat). Glue over `rill-client`.
//! Tables for people by default, `--format json` for scripts; an error is one line on stderr
//! and a non-zero exit code.

mod bench;
mod consume;
mod group;
mod produce;
mod quota;
mod security;

use std::collections::BTreeMap;

use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::Table;
use rill_client::{Admin, Client, ClientConfig, NewTopic};

#[derive(Debug, Parser)]
#[command(
    name = "rill",
    version,
    about = "Manage and use a Rill cluster from the terminal."
)]
struct Cli {
    /// Brokers to bootstrap from: host:port[,host:port...]
    #[arg(
        long,
        global = true,
        env = "RILL_BROKERS",
        default_value = "127.0.0.1:9292"
    )]
    brokers: String,
    /// Connect with TLS (trusting the system's CAs, or --tls-ca).
    #[arg(long, global = true, env = "RILL_TLS")]
    tls: bool,
    /// PEM file of the CA certificates to trust (implies --tls).
    #[arg(long, global = true, env = "RILL_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM certificate to present to brokers that require one (mutual TLS; implies --tls).
    #[arg(
        long,
        global = true,
        env = "RILL_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "RILL_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// Authenticate with SASL as this user (the password: RILL_SASL_PASSWORD).
    #[arg(long, global = true, env = "RILL_SASL_USER")]
    sasl_user: Option<String>,
    /// SASL mechanism: SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (only over TLS).
    #[arg(
        long,
        global = true,
        env = "RILL_SASL_MECHANISM",
        default_value = "SCRAM-SHA-512"
    )]
    sasl_mechanism: String,
    #[command(subcommand)]
    command: Command,
}

/// SASL settings from the command line and environment (`None`: no authentication).
static SASL: std::sync::OnceLock<Option<rill_client::SaslOptions>> = std::sync::OnceLock::new();

/// TLS settings from the command line, for every connection this run opens (`None`: plain).
static TLS: std::sync::OnceLock<Option<rill_client::TlsOptions>> = std::sync::OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// A table for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// `--format` of commands that print tables.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Output {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The cluster: brokers and the active controller.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Publish one record per stdin line.
    Produce(produce::Args),
    /// Print records of a topic.
    Consume(consume::Args),
    /// Consumer groups: list, describe (with lag), reset offsets, delete.
    Group {
        #[command(subcommand)]
        command: group::Command,
    },
    /// Earliest and latest offset of every partition of a topic.
    Offsets {
        topic: String,
        #[command(flatten)]
        out: Output,
    },
    /// Users (SASL SCRAM credentials): create, delete, list.
    User {
        #[command(subcommand)]
        command: security::UserCommand,
    },
    /// ACLs: add, remove, list.
    Acl {
        #[command(subcommand)]
        command: security::AclCommand,
    },
    /// Client quotas (byte rates per client id): set, remove, list.
    Quota {
        #[command(subcommand)]
        command: quota::Command,
    },
    /// Load generator: produce or consume as fast as possible and report throughput and latency.
    Bench {
        #[command(subcommand)]
        command: bench::Command,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Brokers (alive or fenced), the metadata quorum's voters and the active controller.
    Info {
        #[command(flatten)]
        out: Output,
    },
    /// Preferred leader election: move each partition's leadership back to its first replica
    /// where that replica is alive and in sync.
    RebalanceLeaders {
        /// Only these topics (repeatable); default: every topic.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 1)]
        replicas: u16,
        /// Topic config, repeatable: --config retention.ms=3600000
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List {
        #[command(flatten)]
        out: Output,
    },
    /// Partitions, leaders, replicas, ISR and offsets of a topic.
    Describe {
        name: String,
        #[command(flatten)]
        out: Output,
    },
    /// Change a topic: add partitions (existing ones keep their data; keys may map to other
    /// partitions afterwards).
    Alter {
        name: String,
        /// The new, larger partition count.
        #[arg(long)]
        partitions: u32,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn main() {
    // Output piped into `head` and the like: end quietly when the reader goes away (SIGPIPE's
    // default action, which Rust replaces with ignoring it and panicking in `println!`).
    // SAFETY: `signal` only sets how this process handles SIGPIPE; nothing else here sets it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Command::Bench { command } = &cli.command {
        runtime.worker_threads(command.threads());
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rill: starting the runtime failed: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(cli_main(cli));
}

async fn cli_main(cli: Cli) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("RILL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli).await {
        eprintln!("rill: {e:#}");
        std::process::exit(1);
    }
}

pub async fn connect(brokers: &str) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new(brokers);
    if let Some(Some(tls)) = TLS.get() {
        config = config.with_tls(tls)?;
    }
    if let Some(Some(sasl)) = SASL.get() {
        config = config.with_sasl(sasl.clone());
    }
    config.client_id = "rill-cli".into();
    config.retry_timeout = std::time::Duration::from_secs(15);
    Ok(Client::connect(config).await?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls = (cli.tls || cli.tls_ca.is_some() || cli.tls_cert.is_some()).then(|| {
        rill_client::TlsOptions {
            ca_file: cli.tls_ca.clone(),
            cert_file: cli.tls_cert.clone(),
            key_file: cli.tls_key.clone(),
        }
    });
    let _ = TLS.set(tls);
    let sasl = match &cli.sasl_user {
        Some(user) => {
            let password = std::env::var("RILL_SASL_PASSWORD").map_err(|_| {
                anyhow::anyhow!("--sasl-user needs the password in RILL_SASL_PASSWORD")
            })?;
            Some(rill_client::SaslOptions::new(
                &cli.sasl_mechanism,
                user,
                &password,
            )?)
        }
        None => None,
    };
    let _ = SASL.set(sasl);
    match cli.command {
        Command::Cluster {
            command: ClusterCommand::Info { out },
        } => {
            let cluster = Admin::new(connect(&cli.brokers).await?).cluster().await?;
            if out.format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&cluster)?);
                return Ok(());
            }
            println!(
                "cluster {}, active controller: {}, voters: {} ({})",
                cluster.cluster_id,
                cluster.controller.map_or("none".into(), |c| c.to_string()),
                ids(&cluster.voters),
                cluster.quorum,
            );
            let mut table = Table::new();
            table.set_header(["NODE", "ADDRESS", "STATUS", "VOTER", "CONTROLLER"]);
            let mark = |yes: bool| if yes { "*".to_string() } else { String::new() };
            for b in cluster.brokers {
                table.add_row([
                    b.node_id.to_string(),
                    b.address,
                    if b.fenced { "fenced" } else { "alive" }.to_string(),
                    mark(b.voter),
                    mark(b.is_controller),
                ]);
            }
            println!("{table}");
        }
        Command::Cluster {
            command: ClusterCommand::RebalanceLeaders { topics },
        } => {
            let admin = Admin::new(connect(&cli.brokers).await?);
            let topics = (!topics.is_empty()).then_some(topics);
            let (elected, not_preferred) = admin.elect_preferred_leaders(topics).await?;
            println!(
                "{elected} partition(s) moved to their preferred leader; {not_preferred} still led elsewhere (preferred replica down or out of sync)"
            );
        }
        Command::Topic { command } => topic(&cli.brokers, command).await?,
        Command::Produce(args) => produce::run(&cli.brokers, args).await?,
        Command::Consume(args) => consume::run(&cli.brokers, args).await?,
        Command::Offsets { topic, out } => {
            let admin = Admin::new(connect(&cli.brokers).await?);
            let partitions = admin.describe_topic(&topic).await?;
            if out.format == Format::Json {
                let rows: Vec<_> = partitions.iter().map(|p| serde_json::json!({"partition": p.partition, "earliest": p.earliest_offset, "latest": p.latest_offset})).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header(["PARTITION", "EARLIEST", "LATEST"]);
            for p in partitions {
                table.add_row([
                    p.partition.to_string(),
                    opt(p.earliest_offset),
                    opt(p.latest_offset),
                ]);
            }
            println!("{table}");
        }
        Command::Bench { command } => bench::run(&cli.brokers, command).await?,
        Command::Group { command } => group::run(&cli.brokers, command).await?,
        Command::User { command } => security::user(&cli.brokers, command).await?,
        Command::Acl { command } => security::acl(&cli.brokers, command).await?,
        Command::Quota { command } => quota::run(&cli.brokers, command).await?,
    }
    Ok(())
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

fn ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

async fn topic(brokers: &str, command: TopicCommand) -> anyhow::Result<()> {
    let admin = Admin::new(connect(brokers).await?);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replicas,
            configs,
        } => {
            let topic = NewTopic {
                name: name.clone(),
                partitions,
                replication_factor: replicas,
                configs: configs.into_iter().collect::<BTreeMap<_, _>>(),
            };
            admin.create_topic(topic).await?;
            eprintln!(
                "created topic {name} ({partitions} partitions, replication factor {replicas})"
            );
        }
        TopicCommand::List { out } => {
            let topics = admin.list_topics().await?;
            if out.format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&topics)?);
            } else {
                topics.iter().for_each(|t| println!("{t}"));
            }
        }
        TopicCommand::Describe { name, out } => {
            let partitions = admin.describe_topic(&name).await?;
            if out.format == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "topic": name, "partitions": partitions })
                    )?
                );
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header([
                "PARTITION",
                "LEADER",
                "EPOCH",
                "REPLICAS",
                "ISR",
                "EARLIEST",
                "HIGH WATERMARK",
                "LOG END",
                "SIZE",
            ]);
            for p in partitions {
                table.add_row([
                    p.partition.to_string(),
                    opt(p.leader),
                    p.leader_epoch.to_string(),
                    ids(&p.replicas),
                    ids(&p.isr),
                    opt(p.earliest_offset),
                    opt(p.latest_offset),
                    opt(p.log_end_offset),
                    opt(p.size_bytes),
                ]);
            }
            println!("topic {name}\n{table}");
        }
        TopicCommand::Alter { name, partitions } => {
            admin.create_partitions(&name, partitions).await?;
            eprintln!("topic {name} now has {partitions} partitions");
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            eprintln!("deleted topic {name}");
        }
    }
    Ok(())
}
