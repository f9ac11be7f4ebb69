//! `rill user` and `rill acl` (docs/SECURITY.md).

use clap::{Args, Subcommand};
use comfy_table::Table;
use rill_client::protocol::acl as codes;
use rill_client::protocol::api::{AclEntry, AclFilterEntry};
use rill_client::protocol::sasl::{Mechanism, DEFAULT_ITERATIONS};
use rill_client::Admin;

use crate::{connect, Format, Output};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user or set its password (SCRAM-SHA-256 and SCRAM-SHA-512 credentials; PLAIN
    /// logins are checked against them). The password comes from --password-stdin or the
    /// environment variable RILL_USER_PASSWORD, never from the command line.
    Create {
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Mechanisms to store a credential for (repeatable) [default: both SCRAM ones].
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
        /// PBKDF2 iterations (4096-16384).
        #[arg(long, default_value_t = DEFAULT_ITERATIONS)]
        iterations: u32,
    },
    /// Delete a user.
    Delete { name: String },
    /// Users and their mechanisms.
    List {
        #[command(flatten)]
        out: Output,
    },
}

pub async fn user(brokers: &str, command: UserCommand) -> anyhow::Result<()> {
    let admin = Admin::new(connect(brokers).await?);
    match command {
        UserCommand::Create {
            name,
            password_stdin,
            mechanisms,
            iterations,
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                std::env::var("RILL_USER_PASSWORD").map_err(|_| {
                    anyhow::anyhow!(
                        "give the password with --password-stdin or in RILL_USER_PASSWORD"
                    )
                })?
            };
            if password.is_empty() {
                anyhow::bail!("the password is empty");
            }
            let mechanisms: Vec<Mechanism> = if mechanisms.is_empty() {
                Mechanism::SCRAM.to_vec()
            } else {
                mechanisms
                    .iter()
                    .map(|m| match Mechanism::from_name(m) {
                        Some(m) if m != Mechanism::Plain => Ok(m),
                        _ => Err(anyhow::anyhow!(
                            "--mechanism {m}: SCRAM-SHA-256 or SCRAM-SHA-512"
                        )),
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            admin
                .set_user(&name, &password, &mechanisms, iterations)
                .await?;
            eprintln!("user {name} set");
        }
        UserCommand::Delete { name } => {
            admin.delete_user(&name).await?;
            eprintln!("user {name} deleted");
        }
        UserCommand::List { out } => {
            let users = admin.list_users().await?;
            if out.format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&users)?);
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header(["USER", "MECHANISMS"]);
            for u in users {
                let mechanisms: Vec<String> = u
                    .credentials
                    .iter()
                    .map(|(m, i)| format!("{m} ({i} iterations)"))
                    .collect();
                table.add_row([u.user, mechanisms.join(", ")]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

/// Which resource an ACL command names.
#[derive(Debug, Args)]
pub struct Resource {
    /// A topic (`*`: every topic).
    #[arg(long, conflicts_with_all = ["group", "cluster"])]
    topic: Option<String>,
    /// A group (`*`: every group).
    #[arg(long, conflicts_with_all = ["topic", "cluster"])]
    group: Option<String>,
    /// The cluster.
    #[arg(long, conflicts_with_all = ["topic", "group"])]
    cluster: bool,
    /// The name is a prefix: every topic or group whose name starts with it.
    #[arg(long)]
    prefixed: bool,
}

impl Resource {
    fn parts(&self) -> Option<(u8, String)> {
        if let Some(t) = &self.topic {
            Some((2, t.clone()))
        } else if let Some(g) = &self.group {
            Some((3, g.clone()))
        } else if self.cluster {
            Some((4, "kafka-cluster".into()))
        } else {
            None
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow (or with --deny, deny) a principal operations on a resource.
    Add {
        /// `User:<name>` (`User:*`: everyone).
        #[arg(long)]
        principal: String,
        /// Operations (repeatable): read, write, create, delete, alter, describe,
        /// cluster_action, describe_configs, alter_configs, idempotent_write, all.
        #[arg(long = "operation", required = true)]
        operations: Vec<String>,
        #[command(flatten)]
        resource: Resource,
        /// Only from this client address [default: any].
        #[arg(long, default_value = "*")]
        host: String,
        /// Deny instead of allow (a deny wins over any allow).
        #[arg(long)]
        deny: bool,
    },
    /// Remove the ACLs that match (every given flag must match).
    Remove {
        #[command(flatten)]
        filter: Filter,
    },
    /// ACLs, those that match the flags given.
    List {
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Debug, Args)]
pub struct Filter {
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    operation: Option<String>,
    #[command(flatten)]
    resource: Resource,
    #[arg(long)]
    host: Option<String>,
}

fn code_of(table: &[(u8, &'static str)], what: &str, name: &str) -> anyhow::Result<u8> {
    codes::code(table, name).ok_or_else(|| {
        let names: Vec<&str> = table.iter().map(|(_, n)| *n).collect();
        anyhow::anyhow!("unknown {what} {name:?}: one of {}", names.join(", "))
    })
}

impl Filter {
    fn entry(&self) -> anyhow::Result<AclFilterEntry> {
        let (resource_type, name) = match self.resource.parts() {
            Some((t, n)) => (t, Some(n)),
            None => (codes::ANY, None),
        };
        Ok(AclFilterEntry {
            resource_type,
            resource_name: name,
            pattern_type: if self.resource.prefixed {
                4
            } else if resource_type == codes::ANY {
                codes::ANY
            } else {
                3
            },
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: match &self.operation {
                Some(o) => code_of(&codes::OPERATIONS, "operation", o)?,
                None => codes::ANY,
            },
            permission: codes::ANY,
        })
    }
}

fn print(acls: &[AclEntry], format: Format) -> anyhow::Result<()> {
    let rows: Vec<[String; 6]> = acls
        .iter()
        .map(|a| {
            [
                a.principal.clone(),
                codes::name(&codes::PERMISSIONS, a.permission).to_string(),
                codes::name(&codes::OPERATIONS, a.operation).to_string(),
                format!(
                    "{}:{}",
                    codes::name(&codes::RESOURCE_TYPES, a.resource_type),
                    a.resource_name
                ),
                codes::name(&codes::PATTERN_TYPES, a.pattern_type).to_string(),
                a.host.clone(),
            ]
        })
        .collect();
    if format == Format::Json {
        let json: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"principal": r[0], "permission": r[1], "operation": r[2],
                    "resource": r[3], "pattern": r[4], "host": r[5]})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header([
        "PRINCIPAL",
        "PERMISSION",
        "OPERATION",
        "RESOURCE",
        "PATTERN",
        "HOST",
    ]);
    for row in rows {
        table.add_row(row);
    }
    println!("{table}");
    Ok(())
}

pub async fn acl(brokers: &str, command: AclCommand) -> anyhow::Result<()> {
    let admin = Admin::new(connect(brokers).await?);
    match command {
        AclCommand::Add {
            principal,
            operations,
            resource,
            host,
            deny,
        } => {
            let (resource_type, resource_name) = resource
                .parts()
                .ok_or_else(|| anyhow::anyhow!("name a resource: --topic, --group or --cluster"))?;
            let acls = operations
                .iter()
                .map(|o| {
                    Ok(AclEntry {
                        resource_type,
                        resource_name: resource_name.clone(),
                        pattern_type: if resource.prefixed { 4 } else { 3 },
                        principal: principal.clone(),
                        host: host.clone(),
                        operation: code_of(&codes::OPERATIONS, "operation", o)?,
                        permission: if deny { 2 } else { 3 },
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let count = acls.len();
            admin.create_acls(acls.clone()).await?;
            eprintln!("{count} ACL(s) added");
            print(&acls, Format::Table)?;
        }
        AclCommand::Remove { filter } => {
            let removed = admin.delete_acls(filter.entry()?).await?;
            eprintln!("{} ACL(s) removed", removed.len());
            print(&removed, Format::Table)?;
        }
        AclCommand::List { filter, out } => {
            let acls = admin.describe_acls(filter.entry()?).await?;
            print(&acls, out.format)?;
        }
    }
    Ok(())
}
