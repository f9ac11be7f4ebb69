//! `rill quota` (docs/SECURITY.md "Quotas"): client quotas set at run time, kept in the
//! cluster's metadata; they win over the brokers' quota settings.

use clap::{Args, Subcommand};
use comfy_table::Table;
use rill_client::Admin;

use crate::{connect, Format, Output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set a client id's byte rates, bytes per second (0: no limit).
    Set {
        #[command(flatten)]
        entity: Entity,
        /// Record bytes per second the client id may produce to each broker.
        #[arg(long)]
        producer_byte_rate: Option<u64>,
        /// Record bytes per second the client id may fetch from each broker as a consumer.
        #[arg(long)]
        consumer_byte_rate: Option<u64>,
    },
    /// Remove a client id's byte rates set at run time (the brokers' settings apply again):
    /// both, or the ones named.
    Remove {
        #[command(flatten)]
        entity: Entity,
        #[arg(long)]
        producer_byte_rate: bool,
        #[arg(long)]
        consumer_byte_rate: bool,
    },
    /// The client quotas set at run time.
    List {
        #[command(flatten)]
        out: Output,
    },
}

/// Whose quotas: one client id, or the default of every client id without its own.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Entity {
    #[arg(long)]
    client_id: Option<String>,
    /// The default of every client id that has no quota of its own.
    #[arg(long)]
    default: bool,
}

const PRODUCER: &str = "producer_byte_rate";
const CONSUMER: &str = "consumer_byte_rate";

pub async fn run(brokers: &str, command: Command) -> anyhow::Result<()> {
    let admin = Admin::new(connect(brokers).await?);
    match command {
        Command::Set {
            entity,
            producer_byte_rate,
            consumer_byte_rate,
        } => {
            let ops: Vec<(String, Option<u64>)> = [
                (PRODUCER, producer_byte_rate),
                (CONSUMER, consumer_byte_rate),
            ]
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key.to_string(), Some(v))))
            .collect();
            anyhow::ensure!(
                !ops.is_empty(),
                "give --producer-byte-rate and/or --consumer-byte-rate"
            );
            admin
                .alter_client_quotas(vec![(entity.client_id, ops)])
                .await?;
            eprintln!("quotas set");
        }
        Command::Remove {
            entity,
            producer_byte_rate,
            consumer_byte_rate,
        } => {
            let both = !producer_byte_rate && !consumer_byte_rate;
            let ops: Vec<(String, Option<u64>)> = [
                (PRODUCER, producer_byte_rate || both),
                (CONSUMER, consumer_byte_rate || both),
            ]
            .into_iter()
            .filter(|(_, named)| *named)
            .map(|(key, _)| (key.to_string(), None))
            .collect();
            admin
                .alter_client_quotas(vec![(entity.client_id, ops)])
                .await?;
            eprintln!("quotas removed");
        }
        Command::List { out } => {
            let quotas = admin.describe_client_quotas().await?;
            if out.format == Format::Json {
                let json: Vec<_> = quotas
                    .iter()
                    .map(|(client, values)| {
                        serde_json::json!({
                            "client_id": client,
                            "default": client.is_none(),
                            PRODUCER: values.get(PRODUCER),
                            CONSUMER: values.get(CONSUMER),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&json)?);
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header(["client id", PRODUCER, CONSUMER]);
            let shown = |v: Option<&u64>| v.map_or("-".to_string(), u64::to_string);
            for (client, values) in &quotas {
                table.add_row([
                    client.clone().unwrap_or_else(|| "<default>".into()),
                    shown(values.get(PRODUCER)),
                    shown(values.get(CONSUMER)),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}
