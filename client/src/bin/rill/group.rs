//! `rill group list|describe|reset-offsets|delete`.

use std::collections::BTreeMap;

use clap::Subcommand;
use comfy_table::Table;
use rill_client::protocol::api::OffsetSpec;
use rill_client::Admin;

use crate::{Format, Output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Groups with members or committed offsets.
    List {
        #[command(flatten)]
        out: Output,
    },
    /// Members, their partitions, committed offsets, log end offsets and lag.
    Describe {
        group: String,
        #[command(flatten)]
        out: Output,
    },
    /// Set a group's committed offsets (the group must have no active members).
    ResetOffsets(ResetArgs),
    /// Delete a group (no active members) and its committed offsets.
    Delete { group: String },
}

/// Exactly one of the `--to-*` / `--shift-by` options says where to move the offsets.
#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    group: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    #[arg(long)]
    to_offset: Option<u64>,
    /// Milliseconds since the Unix epoch: the first record at or after it.
    #[arg(long)]
    to_timestamp: Option<i64>,
    /// Move the committed offsets by N (negative: back), within the log.
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// Print the new offsets without committing them.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(brokers: &str, command: Command) -> anyhow::Result<()> {
    let admin = Admin::new(crate::connect(brokers).await?);
    match command {
        Command::List { out } => {
            let groups = admin.list_groups().await?;
            if out.format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&groups)?);
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header(["GROUP", "STATE", "MEMBERS"]);
            for g in groups {
                table.add_row([g.group, g.state, g.members.to_string()]);
            }
            println!("{table}");
        }
        Command::Describe { group, out } => describe(&admin, &group, out.format).await?,
        Command::ResetOffsets(args) => reset(&admin, args).await?,
        Command::Delete { group } => {
            admin.delete_group(&group).await?;
            eprintln!("deleted group {group}");
        }
    }
    Ok(())
}

async fn describe(admin: &Admin, group: &str, format: Format) -> anyhow::Result<()> {
    let lag = admin.group_lag(group).await?;
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&lag)?);
        return Ok(());
    }
    let description = &lag.group;
    println!(
        "group {} ({}, epoch {}, assignor {}, {} members)",
        description.group_id,
        description.state,
        description.group_epoch,
        description.assignor,
        description.members.len()
    );
    let mut table = Table::new();
    table.set_header([
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "LOG END",
        "LAG",
        "MEMBER",
    ]);
    for p in &lag.partitions {
        table.add_row([
            p.topic.clone(),
            p.partition.to_string(),
            crate::opt(p.committed),
            crate::opt(p.log_end),
            crate::opt(p.lag),
            p.member.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{table}\ntotal lag: {}", lag.total_lag);
    Ok(())
}

async fn reset(admin: &Admin, args: ResetArgs) -> anyhow::Result<()> {
    let targets = [
        args.to_earliest,
        args.to_latest,
        args.to_offset.is_some(),
        args.to_timestamp.is_some(),
        args.shift_by.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() != 1 {
        anyhow::bail!("give exactly one of --to-earliest, --to-latest, --to-offset, --to-timestamp, --shift-by");
    }
    let earliest: BTreeMap<u32, u64> = admin
        .list_offsets(&args.topic, OffsetSpec::Earliest)
        .await?
        .into_iter()
        .filter_map(|(p, o)| o.map(|o| (p, o)))
        .collect();
    let latest: BTreeMap<u32, u64> = admin
        .list_offsets(&args.topic, OffsetSpec::Latest)
        .await?
        .into_iter()
        .filter_map(|(p, o)| o.map(|o| (p, o)))
        .collect();
    let committed = admin.group_offsets(&args.group).await?;
    let mut offsets = BTreeMap::new();
    for (&partition, &end) in &latest {
        let start = earliest.get(&partition).copied().unwrap_or(0);
        let target = if args.to_earliest {
            start
        } else if args.to_latest {
            end
        } else if let Some(offset) = args.to_offset {
            offset
        } else if let Some(ts) = args.to_timestamp {
            admin
                .partition_offset(&args.topic, partition, OffsetSpec::Timestamp(ts))
                .await?
                .unwrap_or(end)
        } else {
            let current = committed
                .get(&(args.topic.clone(), partition))
                .copied()
                .unwrap_or(start);
            current.saturating_add_signed(args.shift_by.unwrap_or(0))
        };
        offsets.insert((args.topic.clone(), partition), target.clamp(start, end));
    }
    let mut table = Table::new();
    table.set_header(["TOPIC", "PARTITION", "OLD", "NEW"]);
    for ((topic, partition), new) in &offsets {
        table.add_row([
            topic.clone(),
            partition.to_string(),
            crate::opt(committed.get(&(topic.clone(), *partition)).copied()),
            new.to_string(),
        ]);
    }
    println!("{table}");
    if args.dry_run {
        eprintln!("dry run: nothing committed");
        return Ok(());
    }
    admin.reset_group_offsets(&args.group, &offsets).await?;
    eprintln!("reset {} offsets of group {}", offsets.len(), args.group);
    Ok(())
}
