//! Broker configuration: a TOML file (`--config`) and command-line flags, flags winning over the
//! file, documented defaults for everything else. `rill-broker` with no arguments is a working
//! single-node broker on 127.0.0.1:9292 with its data under `./rill-data`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::log::{FlushPolicy, LogConfig};

/// Every broker setting, with its default. Field names are the TOML keys.
/// A setting never printed (a password): `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// This broker's node id (unique in the cluster).
    pub node_id: u64,
    /// Address the client listener binds (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// `host:port` clients are told to use; defaults to the bound listen address.
    pub advertised_address: Option<String>,
    /// Address the Kafka-protocol listener binds (`host:port`), or `off` (docs/KAFKA.md).
    pub kafka_listen: String,
    /// `host:port` Kafka clients are told to use; defaults to the bound Kafka listen address.
    pub kafka_advertised_address: Option<String>,
    /// Address the admin HTTP listener binds (health probes, `/metrics`), or `off`.
    pub admin_listen: String,
    /// Address the inter-broker listener binds: the only one that serves follower fetches
    /// (other brokers replicating). Default: the client listener's address with any free port.
    pub replication_listen: Option<SocketAddr>,
    /// `host:port` other brokers replicate from; defaults to the client advertised host with
    /// the bound inter-broker port.
    pub replication_advertised_address: Option<String>,
    /// Listeners that speak TLS, comma-separated: any of `client`, `kafka`, `admin`,
    /// `replication`, `controller` (docs/SECURITY.md "TLS"). Empty: none.
    pub tls_listeners: String,
    /// Listeners (among `tls_listeners`) that require a client certificate signed by a CA of
    /// `tls_ca_file` (mutual TLS).
    pub tls_client_auth: String,
    /// PEM certificate chain the TLS listeners present (also this broker's client certificate
    /// towards other brokers).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates trusted for client certificates and other brokers' certificates.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate's principal: `User:` + its subject (`dn`, as Kafka:
    /// `User:CN=alice,O=Example`) or + its common name (`cn`: `User:alice`).
    pub tls_principal: String,
    /// Listeners whose clients must authenticate with SASL before any other request,
    /// comma-separated: `client`, `kafka` (docs/SECURITY.md "Users"). Empty: none.
    pub sasl_listeners: String,
    /// SASL mechanisms offered: any of `SCRAM-SHA-256`, `SCRAM-SHA-512`, `PLAIN`.
    pub sasl_mechanisms: String,
    /// Check every request against the ACLs (docs/SECURITY.md "ACLs"): what no ACL allows
    /// is refused. Off: everything is allowed, as before.
    pub authorization: bool,
    /// Principals allowed everything (`User:admin,User:CN=ops`), whatever the ACLs say.
    pub super_users: String,
    /// The user the admin HTTP API's own client authenticates as when the client listener
    /// requires SASL (its password: `admin_api_sasl_password`, or the environment variable
    /// `RILL_ADMIN_API_SASL_PASSWORD`).
    pub admin_api_sasl_user: Option<String>,
    pub admin_api_sasl_password: Option<Secret>,
    /// A user created (SCRAM-SHA-256 and -512) once the broker is registered, if no user of
    /// that name exists: the first account of a cluster whose listeners require SASL. Its
    /// password: `sasl_bootstrap_password` or `RILL_SASL_BOOTSTRAP_PASSWORD`.
    pub sasl_bootstrap_user: Option<String>,
    pub sasl_bootstrap_password: Option<Secret>,
    /// Per-topic labels on metrics (`false`: one `topic="_all"` series, for very many topics).
    pub metrics_per_topic: bool,
    /// Per-partition metrics (log size, segments, offsets, group lag by partition); off with
    /// `false`, or with `metrics_per_topic = false`.
    pub metrics_per_partition: bool,
    /// Where partition logs and the metadata Raft state live.
    pub data_dir: PathBuf,
    /// Pins the cluster's id: a data directory of another cluster is refused, and a new quorum
    /// takes this name. Unset: the quorum names itself (a UUID) when its first broker
    /// registers, and each data directory records the name it joined.
    pub cluster_id: Option<String>,
    /// Log filter (RUST_LOG wins).
    pub log_level: String,
    /// `text` (human-readable lines) or `json` (one JSON object per line).
    pub log_format: String,
    /// `always`, `interval:<ms>` or `os`.
    pub flush: String,
    pub segment_bytes: u64,
    pub segment_ms: u64,
    /// 0 keeps data forever.
    pub retention_ms: u64,
    /// 0 means no size limit.
    pub retention_bytes: u64,
    /// Largest record batch accepted.
    pub max_batch_bytes: usize,
    /// Most bytes a compressed batch may decompress to when the broker validates it.
    pub max_batch_decompressed_bytes: usize,
    /// An idempotent producer unseen this long is forgotten by every partition.
    pub producer_id_expiration_ms: u64,
    /// Most idempotent producers tracked per partition.
    pub max_producers_per_partition: usize,
    /// Memory for one compaction pass's key map (bytes).
    pub log_cleaner_dedupe_buffer_bytes: usize,
    /// Compaction's read plus write rate limit, bytes per second (0: none).
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// Pause between the cleaner's rounds over the compacted partitions, ms.
    pub log_cleaner_backoff_ms: u64,
    /// Segment size of `__consumer_offsets` (compacted).
    pub offsets_topic_segment_bytes: u64,
    /// A group with no members keeps its committed offsets this long after its last commit
    /// or membership change, then is deleted (Kafka's `offsets.retention.minutes`); 0: forever.
    pub offsets_retention_ms: u64,
    /// Largest request frame accepted.
    pub max_frame_bytes: usize,
    /// Client connections beyond this are closed at once.
    pub max_connections: usize,
    /// Connections one source address may hold on a listener group (0: no limit); one more
    /// is closed at once (docs/SECURITY.md "Limits").
    pub max_connections_per_ip: usize,
    /// Exceptions to `max_connections_per_ip`: `ip:count,ip:count` (Kafka's
    /// `max.connections.per.ip.overrides`, addresses only).
    pub max_connections_per_ip_overrides: String,
    /// Bytes of request frames being read or handled at once, over all client connections
    /// (the inter-broker listener has as much again of its own); a connection waits for budget
    /// before it reads a frame's body (Kafka's `queued.max.request.bytes`).
    pub request_memory_bytes: usize,
    /// The share of `request_memory_bytes` one source address may hold.
    pub request_memory_per_ip_bytes: usize,
    /// Record bytes per second each client id may produce, on this broker (0: no limit); a
    /// client beyond it is throttled (docs/SECURITY.md "Quotas").
    pub quota_producer_byte_rate: u64,
    /// Record bytes per second each client id may fetch as a consumer (0: no limit).
    pub quota_consumer_byte_rate: u64,
    /// Per-client-id rates instead of the two defaults:
    /// `client_id:producer_byte_rate:consumer_byte_rate,...` (empty: the default, 0: none).
    pub quota_overrides: String,
    /// A frame whose memory was granted must arrive within this (a peer stalling mid-frame
    /// gives its budget back and is disconnected).
    pub request_read_timeout_ms: u64,
    /// Requests read ahead of their responses per connection.
    pub in_flight_requests_max: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// Upper bound on produce timeouts and fetch long-poll waits.
    pub request_timeout_ms: u64,
    /// Produce/metadata for a missing topic creates it (off by default).
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics.
    pub default_partitions: u32,
    /// Most partitions the cluster may hold (all topics, internal ones included); creating
    /// topics or partitions past it is refused with INVALID_PARTITIONS.
    pub max_partitions: usize,
    /// Period of the flush / age-roll / retention task (and of group session checks).
    pub tick_ms: u64,
    /// How long a Kafka classic group that was empty waits for more members before its first
    /// generation (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// The metadata quorum: `id@host:port,...`, each voter's node id and controller (Raft)
    /// address. A broker whose id is listed is a voter and listens on its address; others are
    /// observers. Unset: a single-node cluster whose only voter is this broker.
    pub controller_voters: Option<String>,
    /// How often a broker heartbeats to the active controller.
    pub broker_heartbeat_interval_ms: u64,
    /// A broker silent this long is fenced: it leads nothing until it heartbeats again.
    pub broker_session_timeout_ms: u64,
    /// A follower that has not caught up with the leader's log end for this long leaves the ISR.
    pub replica_lag_max_ms: u64,
    /// Default `min.insync.replicas`: acks=all needs this many in-sync replicas.
    pub min_insync_replicas: u32,
    /// Default `unclean.leader.election.enable`: elect an out-of-sync replica when no in-sync
    /// one is alive (loses acknowledged records; off by default).
    pub unclean_leader_election: bool,
    /// Replication factor of automatically created topics.
    pub default_replication_factor: u16,
    /// Replication factor of `__consumer_offsets` (capped by the number of controller voters).
    pub offsets_topic_replication_factor: u16,
    /// Move leadership back to each partition's preferred replica when it is in sync.
    pub auto_leader_rebalance: bool,
    /// How often the active controller checks for leadership away from preferred replicas.
    pub leader_rebalance_interval_ms: u64,
    /// Longest a follower's fetch waits at the leader for new data.
    pub replica_fetch_wait_max_ms: u64,
    /// Most bytes a follower fetches per request (at least one batch, however large). Small
    /// enough that a response is checksummed and copied into the page cache while it is still
    /// in the CPU's cache, and appended on the fetcher's task (`INLINE_APPEND_MAX_BYTES`):
    /// with 8 MiB, a catching-up follower spent about three times the CPU per byte.
    pub replica_fetch_max_bytes: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 9292)),
            advertised_address: None,
            kafka_listen: "127.0.0.1:9092".into(),
            kafka_advertised_address: None,
            admin_listen: "127.0.0.1:9644".into(),
            replication_listen: None,
            replication_advertised_address: None,
            tls_listeners: String::new(),
            tls_client_auth: String::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            tls_principal: "dn".into(),
            sasl_listeners: String::new(),
            sasl_mechanisms: "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN".into(),
            authorization: false,
            super_users: String::new(),
            admin_api_sasl_user: None,
            admin_api_sasl_password: None,
            sasl_bootstrap_user: None,
            sasl_bootstrap_password: None,
            metrics_per_topic: true,
            metrics_per_partition: true,
            data_dir: PathBuf::from("./rill-data"),
            cluster_id: None,
            log_level: "info,openraft=off".into(),
            log_format: "text".into(),
            flush: "interval:1000".into(),
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 0,
            max_batch_bytes: 1 << 20,
            max_batch_decompressed_bytes:
                rill_protocol::compression::DEFAULT_MAX_DECOMPRESSED_BYTES,
            producer_id_expiration_ms: 24 * 3600 * 1000,
            max_producers_per_partition: 10_000,
            log_cleaner_dedupe_buffer_bytes: 16 << 20,
            log_cleaner_io_max_bytes_per_second: 0,
            log_cleaner_backoff_ms: 15_000,
            offsets_topic_segment_bytes: 100 << 20,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            max_frame_bytes: 64 << 20,
            max_connections: 10_000,
            max_connections_per_ip: 1000,
            max_connections_per_ip_overrides: String::new(),
            request_memory_bytes: 512 << 20,
            request_memory_per_ip_bytes: 128 << 20,
            quota_producer_byte_rate: 0,
            quota_consumer_byte_rate: 0,
            quota_overrides: String::new(),
            request_read_timeout_ms: 30_000,
            in_flight_requests_max: 32,
            idle_timeout_ms: 10 * 60 * 1000,
            request_timeout_ms: 30_000,
            auto_create_topics: false,
            default_partitions: 1,
            max_partitions: 50_000,
            tick_ms: 100,
            group_initial_rebalance_delay_ms: 3000,
            controller_voters: None,
            broker_heartbeat_interval_ms: 500,
            broker_session_timeout_ms: 3000,
            replica_lag_max_ms: 10_000,
            min_insync_replicas: 1,
            unclean_leader_election: false,
            default_replication_factor: 1,
            offsets_topic_replication_factor: 3,
            auto_leader_rebalance: true,
            leader_rebalance_interval_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1 << 20,
        }
    }
}

/// Command-line flags. Each one, when given, overrides the same key from `--config`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "rill-broker",
    version,
    about = "Rill: a durable, replicated, partitioned message log broker."
)]
pub struct Flags {
    /// TOML file with any of the settings below (flags win over the file).
    #[arg(long, env = "RILL_CONFIG")]
    pub config: Option<PathBuf>,
    /// This broker's node id [default: 1].
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Client listener address [default: 127.0.0.1:9292; use port 0 for any free port].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// host:port advertised to clients [default: the bound listen address].
    #[arg(long, alias = "advertise")]
    pub advertised_address: Option<String>,
    /// Kafka-protocol listener address, or off [default: 127.0.0.1:9092; port 0 for any free port].
    #[arg(long)]
    pub kafka_listen: Option<String>,
    /// host:port advertised to Kafka clients [default: the bound Kafka listen address].
    #[arg(long, alias = "kafka-advertise")]
    pub kafka_advertised_address: Option<String>,
    /// Admin HTTP listener address (health, metrics), or off [default: 127.0.0.1:9644; port 0 for any free port].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Inter-broker (replication) listener address [default: the listen address's host, any free port].
    #[arg(long)]
    pub replication_listen: Option<SocketAddr>,
    /// host:port other brokers replicate from [default: the advertised host, the bound replication port].
    #[arg(long)]
    pub replication_advertised_address: Option<String>,
    /// Listeners that speak TLS: client,kafka,admin,replication,controller [default: none].
    #[arg(long)]
    pub tls_listeners: Option<String>,
    /// TLS listeners that require a client certificate (mutual TLS) [default: none].
    #[arg(long)]
    pub tls_client_auth: Option<String>,
    /// PEM certificate chain of the TLS listeners.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long)]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates trusted for client and broker certificates.
    #[arg(long)]
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate's principal: dn (its subject) or cn [default: dn].
    #[arg(long)]
    pub tls_principal: Option<String>,
    /// Listeners that require SASL authentication: client,kafka [default: none].
    #[arg(long)]
    pub sasl_listeners: Option<String>,
    /// SASL mechanisms offered [default: SCRAM-SHA-256,SCRAM-SHA-512,PLAIN].
    #[arg(long)]
    pub sasl_mechanisms: Option<String>,
    /// Check requests against the ACLs [default: false].
    #[arg(long)]
    pub authorization: Option<bool>,
    /// Principals allowed everything, e.g. User:admin [default: none].
    #[arg(long)]
    pub super_users: Option<String>,
    /// User of the admin HTTP API's own client when the client listener requires SASL.
    #[arg(long)]
    pub admin_api_sasl_user: Option<String>,
    /// User created at first start if missing (password: RILL_SASL_BOOTSTRAP_PASSWORD).
    #[arg(long)]
    pub sasl_bootstrap_user: Option<String>,
    /// Per-topic labels on metrics [default: true].
    #[arg(long)]
    pub metrics_per_topic: Option<bool>,
    /// Per-partition metrics [default: true].
    #[arg(long)]
    pub metrics_per_partition: Option<bool>,
    /// Data directory [default: ./rill-data].
    #[arg(long, env = "RILL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cluster id to pin (refuse data directories of other clusters) [default: the quorum's own].
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Log filter, e.g. info or rill_broker=debug; openraft=warn shows Raft internals [default: info,openraft=off].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log line format: text | json (one JSON object per line) [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Flush policy: always | interval:<ms> | os [default: interval:1000].
    #[arg(long)]
    pub flush: Option<String>,
    /// Segment size that triggers a roll, bytes [default: 1073741824].
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Segment age that triggers a roll, ms [default: 604800000].
    #[arg(long)]
    pub segment_ms: Option<u64>,
    /// Delete sealed segments older than this, ms; 0 = forever [default: 604800000].
    #[arg(long)]
    pub retention_ms: Option<u64>,
    /// Delete oldest segments while a partition exceeds this, bytes; 0 = no limit [default: 0].
    #[arg(long)]
    pub retention_bytes: Option<u64>,
    /// Largest record batch accepted, bytes [default: 1048576].
    #[arg(long)]
    pub max_batch_bytes: Option<usize>,
    /// Most bytes a compressed batch may decompress to (bigger: refused) [default: 33554432].
    #[arg(long)]
    pub max_batch_decompressed_bytes: Option<usize>,
    /// Forget an idempotent producer unseen this long, ms [default: 86400000].
    #[arg(long)]
    pub producer_id_expiration_ms: Option<u64>,
    /// Most idempotent producers tracked per partition [default: 10000].
    #[arg(long)]
    pub max_producers_per_partition: Option<usize>,
    /// Memory for one compaction pass's key map, bytes [default: 16777216].
    #[arg(long)]
    pub log_cleaner_dedupe_buffer_bytes: Option<usize>,
    /// Compaction's read plus write rate limit, bytes/s; 0 = none [default: 0].
    #[arg(long)]
    pub log_cleaner_io_max_bytes_per_second: Option<u64>,
    /// Pause between the cleaner's rounds over compacted partitions, ms [default: 15000].
    #[arg(long)]
    pub log_cleaner_backoff_ms: Option<u64>,
    /// Segment size of the compacted __consumer_offsets topic, bytes [default: 104857600].
    #[arg(long)]
    pub offsets_topic_segment_bytes: Option<u64>,
    /// Delete an empty group's offsets this long after its last activity, ms; 0 = never [default: 604800000].
    #[arg(long)]
    pub offsets_retention_ms: Option<u64>,
    /// Largest request frame accepted, bytes [default: 67108864].
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Most client connections [default: 10000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most connections from one source address; 0 = no limit [default: 1000].
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// Per-address exceptions, `ip:count,...` [default: none].
    #[arg(long)]
    pub max_connections_per_ip_overrides: Option<String>,
    /// Request frame bytes buffered at once over all client connections [default: 536870912].
    #[arg(long)]
    pub request_memory_bytes: Option<usize>,
    /// Request frame bytes one source address may hold [default: 134217728].
    #[arg(long)]
    pub request_memory_per_ip_bytes: Option<usize>,
    /// Produce byte rate per client id; 0 = no limit [default: 0].
    #[arg(long)]
    pub quota_producer_byte_rate: Option<u64>,
    /// Consumer fetch byte rate per client id; 0 = no limit [default: 0].
    #[arg(long)]
    pub quota_consumer_byte_rate: Option<u64>,
    /// Per-client-id rates, `client:producer_rate:consumer_rate,...` [default: none].
    #[arg(long)]
    pub quota_overrides: Option<String>,
    /// Time a granted request frame has to arrive, ms [default: 30000].
    #[arg(long)]
    pub request_read_timeout_ms: Option<u64>,
    /// Requests read ahead of their responses per connection [default: 32].
    #[arg(long)]
    pub in_flight_requests_max: Option<usize>,
    /// Close connections idle this long, ms [default: 600000].
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Longest produce timeout or fetch wait honoured, ms [default: 30000].
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Create missing topics on produce/metadata [default: false].
    #[arg(long)]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long)]
    pub default_partitions: Option<u32>,
    /// Most partitions the cluster may hold [default: 50000].
    #[arg(long)]
    pub max_partitions: Option<usize>,
    /// Period of the flush / roll / retention task, ms [default: 100].
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Wait of a Kafka classic group that was empty for more members, ms [default: 3000].
    #[arg(long)]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Metadata quorum voters, `id@host:port,...` (each voter's controller address); a broker
    /// whose --node-id is listed listens there for Raft traffic [default: this broker alone].
    #[arg(long)]
    pub controller_voters: Option<String>,
    /// Heartbeat period to the active controller, ms [default: 500].
    #[arg(long)]
    pub broker_heartbeat_interval_ms: Option<u64>,
    /// Fence a broker silent this long, ms [default: 3000].
    #[arg(long)]
    pub broker_session_timeout_ms: Option<u64>,
    /// A follower behind the leader's log end this long leaves the ISR, ms [default: 10000].
    #[arg(long)]
    pub replica_lag_max_ms: Option<u64>,
    /// Default min.insync.replicas for acks=all [default: 1].
    #[arg(long)]
    pub min_insync_replicas: Option<u32>,
    /// Default unclean.leader.election.enable [default: false].
    #[arg(long)]
    pub unclean_leader_election: Option<bool>,
    /// Replication factor of auto-created topics [default: 1].
    #[arg(long)]
    pub default_replication_factor: Option<u16>,
    /// Replication factor of __consumer_offsets, capped by the voter count [default: 3].
    #[arg(long)]
    pub offsets_topic_replication_factor: Option<u16>,
    /// Move leaders back to preferred replicas automatically [default: true].
    #[arg(long)]
    pub auto_leader_rebalance: Option<bool>,
    /// Preferred-leader check period, ms [default: 30000].
    #[arg(long)]
    pub leader_rebalance_interval_ms: Option<u64>,
    /// Longest a follower fetch waits at the leader, ms [default: 500].
    #[arg(long)]
    pub replica_fetch_wait_max_ms: Option<u64>,
    /// Most bytes per follower fetch (at least one batch) [default: 1048576].
    #[arg(long)]
    pub replica_fetch_max_bytes: Option<u32>,
}

macro_rules! override_from_flags {
    ($config:ident, $flags:ident, $($field:ident),*) => {
        $(if let Some(value) = $flags.$field { $config.$field = value; })*
    };
}

impl BrokerConfig {
    /// The file (if any), then the flags over it.
    pub fn load(flags: Flags) -> Result<BrokerConfig> {
        let mut config = match &flags.config {
            Some(path) => Self::from_file(path)?,
            None => BrokerConfig::default(),
        };
        if let Some(address) = flags.advertised_address {
            config.advertised_address = Some(address);
        }
        if let Some(address) = flags.kafka_advertised_address {
            config.kafka_advertised_address = Some(address);
        }
        if let Some(address) = flags.replication_listen {
            config.replication_listen = Some(address);
        }
        if let Some(address) = flags.replication_advertised_address {
            config.replication_advertised_address = Some(address);
        }
        if let Some(cluster_id) = flags.cluster_id {
            config.cluster_id = Some(cluster_id);
        }
        if let Some(user) = flags.admin_api_sasl_user {
            config.admin_api_sasl_user = Some(user);
        }
        if let Some(user) = flags.sasl_bootstrap_user {
            config.sasl_bootstrap_user = Some(user);
        }
        if config.sasl_bootstrap_password.is_none() {
            config.sasl_bootstrap_password = std::env::var("RILL_SASL_BOOTSTRAP_PASSWORD")
                .ok()
                .map(Secret);
        }
        if config.sasl_bootstrap_user.is_some() && config.sasl_bootstrap_password.is_none() {
            return Err(Error::InvalidConfig(
                "sasl_bootstrap_user needs its password in RILL_SASL_BOOTSTRAP_PASSWORD (or sasl_bootstrap_password)".into(),
            ));
        }
        if config.admin_api_sasl_password.is_none() {
            config.admin_api_sasl_password = std::env::var("RILL_ADMIN_API_SASL_PASSWORD")
                .ok()
                .map(Secret);
        }
        for (flag, setting) in [
            (flags.tls_cert_file, &mut config.tls_cert_file),
            (flags.tls_key_file, &mut config.tls_key_file),
            (flags.tls_ca_file, &mut config.tls_ca_file),
        ] {
            if flag.is_some() {
                *setting = flag;
            }
        }
        if let Some(cluster_id) = &config.cluster_id {
            if cluster_id.is_empty()
                || cluster_id.len() > 64
                || !cluster_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Error::InvalidConfig(format!(
                    "cluster_id {cluster_id:?}: 1-64 characters of A-Z a-z 0-9 - _"
                )));
            }
        }
        override_from_flags!(
            config,
            flags,
            node_id,
            listen,
            kafka_listen,
            admin_listen,
            tls_listeners,
            tls_client_auth,
            tls_principal,
            sasl_listeners,
            sasl_mechanisms,
            authorization,
            super_users,
            metrics_per_topic,
            metrics_per_partition,
            data_dir,
            log_level,
            log_format,
            flush,
            segment_bytes,
            segment_ms,
            retention_ms,
            retention_bytes,
            max_batch_bytes,
            max_batch_decompressed_bytes,
            producer_id_expiration_ms,
            max_producers_per_partition,
            log_cleaner_dedupe_buffer_bytes,
            log_cleaner_io_max_bytes_per_second,
            log_cleaner_backoff_ms,
            offsets_topic_segment_bytes,
            offsets_retention_ms,
            max_frame_bytes,
            max_connections,
            max_connections_per_ip,
            max_connections_per_ip_overrides,
            request_memory_bytes,
            request_memory_per_ip_bytes,
            quota_producer_byte_rate,
            quota_consumer_byte_rate,
            quota_overrides,
            request_read_timeout_ms,
            in_flight_requests_max,
            idle_timeout_ms,
            request_timeout_ms,
            auto_create_topics,
            default_partitions,
            max_partitions,
            tick_ms,
            group_initial_rebalance_delay_ms,
            broker_heartbeat_interval_ms,
            broker_session_timeout_ms,
            replica_lag_max_ms,
            min_insync_replicas,
            unclean_leader_election,
            default_replication_factor,
            offsets_topic_replication_factor,
            auto_leader_rebalance,
            leader_rebalance_interval_ms,
            replica_fetch_wait_max_ms,
            replica_fetch_max_bytes
        );
        if let Some(voters) = flags.controller_voters {
            config.controller_voters = Some(voters);
        }
        config.voters()?;
        if config.broker_heartbeat_interval_ms == 0
            || config.broker_session_timeout_ms <= config.broker_heartbeat_interval_ms
        {
            return Err(Error::InvalidConfig(
                "broker_session_timeout_ms must exceed broker_heartbeat_interval_ms (> 0)".into(),
            ));
        }
        if config.min_insync_replicas == 0 || config.default_replication_factor == 0 {
            return Err(Error::InvalidConfig(
                "min_insync_replicas and default_replication_factor must be positive".into(),
            ));
        }
        config.log_config()?;
        config.cleaner_config()?;
        if config.in_flight_requests_max == 0
            || config.max_connections == 0
            || config.default_partitions == 0
        {
            return Err(Error::InvalidConfig(
                "in_flight_requests_max, max_connections and default_partitions must be positive"
                    .into(),
            ));
        }
        config.kafka_listen_address()?;
        config.admin_listen_address()?;
        if !matches!(config.log_format.as_str(), "text" | "json") {
            return Err(Error::InvalidConfig(format!(
                "log_format {:?}: expected text or json",
                config.log_format
            )));
        }
        if config.max_frame_bytes < 1024 {
            return Err(Error::InvalidConfig(format!(
                "max_frame_bytes {} must be at least 1024",
                config.max_frame_bytes
            )));
        }
        config.connection_overrides()?;
        if config.request_memory_per_ip_bytes < config.max_frame_bytes
            || config.request_memory_bytes < config.request_memory_per_ip_bytes
            || config.request_memory_bytes > 1 << 40
        {
            return Err(Error::InvalidConfig(format!(
                "request memory: need max_frame_bytes ({}) <= request_memory_per_ip_bytes ({}) <= request_memory_bytes ({}) <= 1 TiB",
                config.max_frame_bytes,
                config.request_memory_per_ip_bytes,
                config.request_memory_bytes
            )));
        }
        config.quotas()?;
        if config.request_read_timeout_ms == 0 {
            return Err(Error::InvalidConfig(
                "request_read_timeout_ms must be positive".into(),
            ));
        }
        Ok(config)
    }

    /// `max_connections_per_ip_overrides`, parsed.
    pub fn connection_overrides(
        &self,
    ) -> Result<std::collections::HashMap<std::net::IpAddr, usize>> {
        crate::server::limits::parse_overrides(&self.max_connections_per_ip_overrides)
            .map_err(|e| Error::InvalidConfig(format!("max_connections_per_ip_overrides: {e}")))
    }

    /// The client quotas these settings give.
    pub fn quotas(&self) -> Result<crate::quota::Quotas> {
        crate::quota::Quotas::new(
            self.quota_producer_byte_rate,
            self.quota_consumer_byte_rate,
            &self.quota_overrides,
        )
        .map_err(|e| Error::InvalidConfig(format!("quota_overrides: {e}")))
    }

    /// Where the inter-broker listener binds: `replication_listen`, else the client listener's
    /// host with any free port.
    pub fn replication_listen_address(&self) -> SocketAddr {
        self.replication_listen
            .unwrap_or_else(|| SocketAddr::new(self.listen.ip(), 0))
    }

    /// Where the Kafka listener binds; `None` when `kafka_listen` is `off`.
    pub fn kafka_listen_address(&self) -> Result<Option<SocketAddr>> {
        optional_address("kafka_listen", &self.kafka_listen, "127.0.0.1:9092")
    }

    /// Where the admin HTTP listener binds; `None` when `admin_listen` is `off`.
    pub fn admin_listen_address(&self) -> Result<Option<SocketAddr>> {
        optional_address("admin_listen", &self.admin_listen, "127.0.0.1:9644")
    }

    fn from_file(path: &Path) -> Result<BrokerConfig> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("read config file", path, e))?;
        toml::from_str(&text).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
    }

    /// The controller voters by node id (see `controller_voters`); empty means "this broker
    /// alone". Rejects malformed entries, duplicate ids and zero ports.
    pub fn voters(&self) -> Result<BTreeMap<u64, String>> {
        let mut voters = BTreeMap::new();
        let Some(list) = &self.controller_voters else {
            return Ok(voters);
        };
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| {
                Error::InvalidConfig(format!(
                    "controller_voters entry {entry:?}: {why}; expected id@host:port"
                ))
            };
            let (id, address) = entry.split_once('@').ok_or_else(|| bad("missing '@'"))?;
            let id: u64 = id.parse().map_err(|_| bad("node id is not a number"))?;
            let (_, port) = address
                .rsplit_once(':')
                .ok_or_else(|| bad("missing ':port'"))?;
            if !port.parse::<u16>().is_ok_and(|p| p != 0) {
                return Err(bad("port must be 1-65535"));
            }
            if voters.insert(id, address.to_string()).is_some() {
                return Err(bad("node id listed twice"));
            }
        }
        if voters.is_empty() {
            return Err(Error::InvalidConfig(
                "controller_voters is empty; omit it for a single-node broker".into(),
            ));
        }
        Ok(voters)
    }

    /// The compaction cleaner's settings.
    pub fn cleaner_config(&self) -> Result<crate::log::CleanerConfig> {
        if self.log_cleaner_dedupe_buffer_bytes < (1 << 16) || self.log_cleaner_backoff_ms == 0 {
            return Err(Error::InvalidConfig(
                "log_cleaner_dedupe_buffer_bytes must be at least 65536 and log_cleaner_backoff_ms positive".into(),
            ));
        }
        Ok(crate::log::CleanerConfig {
            dedupe_buffer_bytes: self.log_cleaner_dedupe_buffer_bytes,
            io_max_bytes_per_second: (self.log_cleaner_io_max_bytes_per_second > 0)
                .then_some(self.log_cleaner_io_max_bytes_per_second),
        })
    }

    /// The default log settings of every partition (topics may override some).
    pub fn log_config(&self) -> Result<LogConfig> {
        let config = LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            retention_ms: (self.retention_ms > 0).then_some(self.retention_ms),
            retention_bytes: (self.retention_bytes > 0).then_some(self.retention_bytes),
            max_batch_bytes: self.max_batch_bytes,
            max_batch_decompressed_bytes: self.max_batch_decompressed_bytes,
            producer_id_expiration_ms: self.producer_id_expiration_ms,
            max_producers_per_partition: self.max_producers_per_partition,
            flush: self.flush.parse::<FlushPolicy>()?,
            ..LogConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// Topic config keys accepted by CreateTopics, and how they change a partition's `LogConfig`.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "flush",
    "min.insync.replicas",
    "unclean.leader.election.enable",
    "cleanup.policy",
    "min.cleanable.dirty.ratio",
    "delete.retention.ms",
    "min.compaction.lag.ms",
];

/// Applies topic configs over `base`; unknown keys and bad values are errors.
pub fn topic_log_config(base: &LogConfig, configs: &BTreeMap<String, String>) -> Result<LogConfig> {
    let mut config = base.clone();
    for (key, value) in configs {
        let number = || {
            value.parse::<u64>().map_err(|_| {
                Error::InvalidConfig(format!("{key}={value}: expected a non-negative integer"))
            })
        };
        match key.as_str() {
            "retention.ms" => config.retention_ms = Some(number()?).filter(|v| *v > 0),
            "retention.bytes" => config.retention_bytes = Some(number()?).filter(|v| *v > 0),
            "segment.bytes" => config.segment_bytes = number()?,
            "segment.ms" => config.segment_ms = number()?,
            "max.message.bytes" => config.max_batch_bytes = number()? as usize,
            "flush" => config.flush = value.parse()?,
            "cleanup.policy" => config.cleanup_policy = value.parse()?,
            "min.cleanable.dirty.ratio" => {
                config.min_cleanable_dirty_ratio = value.parse::<f64>().map_err(|_| {
                    Error::InvalidConfig(format!("{key}={value}: expected a number from 0 to 1"))
                })?
            }
            "delete.retention.ms" => config.delete_retention_ms = number()?,
            "min.compaction.lag.ms" => config.min_compaction_lag_ms = number()?,
            // Replication settings: read by the replica manager and the controller.
            "min.insync.replicas" => {
                if number()? == 0 {
                    return Err(Error::InvalidConfig(format!(
                        "{key}={value}: must be positive"
                    )));
                }
            }
            "unclean.leader.election.enable" => {
                value.parse::<bool>().map_err(|_| {
                    Error::InvalidConfig(format!("{key}={value}: expected true or false"))
                })?;
            }
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "unknown topic config {key:?}; known: {}",
                    TOPIC_CONFIG_KEYS.join(", ")
                )))
            }
        }
    }
    config.validate()?;
    Ok(config)
}

/// A listener setting: `ip:port`, or `off` (`None`).
fn optional_address(setting: &str, value: &str, example: &str) -> Result<Option<SocketAddr>> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        Error::InvalidConfig(format!(
            "{setting} {value:?}: expected ip:port (e.g. {example}) or off"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rill.toml");
        std::fs::write(
            &path,
            "node_id = 7\nflush = \"always\"\nsegment_bytes = 65536\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path),
            node_id: Some(9),
            ..Flags::default()
        };
        let config = BrokerConfig::load(flags).unwrap();
        assert_eq!(config.node_id, 9, "flag wins");
        assert_eq!(config.flush, "always", "file wins over default");
        assert_eq!(config.segment_bytes, 65536);
        assert_eq!(config.max_frame_bytes, 64 << 20, "default");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rill.toml");
        std::fs::write(&path, "nodeid = 7\n").unwrap();
        let err = BrokerConfig::load(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let err = BrokerConfig::load(Flags {
            flush: Some("sometimes".into()),
            ..Flags::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("flush policy"), "{err}");
        let base = LogConfig::default();
        assert!(topic_log_config(
            &base,
            &BTreeMap::from([("retention.ms".into(), "x".into())])
        )
        .is_err());
        assert!(
            topic_log_config(&base, &BTreeMap::from([("colour".into(), "red".into())])).is_err()
        );
        let c = topic_log_config(
            &base,
            &BTreeMap::from([("retention.ms".into(), "1000".into())]),
        )
        .unwrap();
        assert_eq!(c.retention_ms, Some(1000));
    }

    #[test]
    fn request_memory_and_connection_limits_are_checked() {
        let load = |flags: Flags| BrokerConfig::load(flags).map_err(|e| e.to_string());
        let config = load(Flags {
            max_connections_per_ip_overrides: Some("10.0.0.1:5000".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.connection_overrides().unwrap().len(), 1);
        let err = load(Flags {
            max_connections_per_ip_overrides: Some("gateway:5000".into()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.contains("max_connections_per_ip_overrides"), "{err}");
        // A frame bigger than an address's share could never be granted.
        let err = load(Flags {
            max_frame_bytes: Some(64 << 20),
            request_memory_per_ip_bytes: Some(32 << 20),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.contains("request_memory_per_ip_bytes"), "{err}");
        let err = load(Flags {
            request_memory_bytes: Some(100 << 20),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.contains("request_memory_bytes"), "{err}");
        let err = load(Flags {
            request_read_timeout_ms: Some(0),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.contains("request_read_timeout_ms"), "{err}");
    }

    #[test]
    fn controller_voters_are_parsed_and_checked() {
        let config = |voters: &str| {
            BrokerConfig::load(Flags {
                controller_voters: Some(voters.into()),
                ..Flags::default()
            })
        };
        let voters = config("1@127.0.0.1:9401, 2@host-b:9402,3@[::1]:9403")
            .unwrap()
            .voters()
            .unwrap();
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[&2], "host-b:9402");
        assert_eq!(voters[&3], "[::1]:9403");
        for bad in ["1@127.0.0.1", "x@h:1", "1@h:0", "1@h:1,1@h:2", "1:h:1", ","] {
            let err = config(bad).unwrap_err().to_string();
            assert!(err.contains("controller_voters"), "{bad}: {err}");
        }
        assert!(BrokerConfig::default().voters().unwrap().is_empty());
    }
}
