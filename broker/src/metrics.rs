//! The broker's Prometheus metrics (`GET /metrics` on the admin listener; every metric is
//! described in docs/OPERATIONS.md). Counters and histograms are updated where the work
//! happens: the broker operations (`crate::ops`, shared by both protocols) count bytes and
//! records per topic, each listener counts its requests and their latency. Gauges that
//! describe state (partitions, controller, storage) are computed from the broker's state
//! when Prometheus scrapes, so they cannot drift from what the CLI shows. Label sets are
//! bounded: api names, error names and listener names are fixed sets; per-topic labels grow
//! with the topics and `metrics_per_topic = false` turns them off (a `topic="_all"` total).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use rill_protocol::ErrorCode;

use crate::controller::metadata::MetadataState;
use crate::controller::NodeId;
use crate::log::TopicPartition;
use crate::server::BrokerState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `rill` (the native listener) or `kafka`.
    pub listener: &'static str,
    pub api: &'static str,
    /// The request-level error (`NONE` when it succeeded); per-partition errors are in
    /// `rill_partition_errors_total`.
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub listener: &'static str,
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcksLabels {
    /// `0`, `1` or `all`.
    pub acks: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetcherLabels {
    /// `consumer` or `follower` (another broker's replica fetcher).
    pub fetcher: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupPartitionLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionErrorLabels {
    pub api: &'static str,
    pub error: &'static str,
}

/// Request latency buckets, seconds: 0.1 ms to 30 s (a long poll waits up to its max wait).
const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0, 30.0,
];

/// Produce batch sizes, bytes: 64 B to 16 MiB.
const BATCH_BUCKETS: [f64; 10] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// fdatasync buckets, seconds: 10 µs to 10 s.
const FSYNC_BUCKETS: [f64; 14] = [
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
    10.0,
];

/// Latency of every fdatasync of partition data (`log::segment`). Process-wide: the storage
/// layer knows nothing of the broker state; each broker's registry shows this one.
pub static FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(FSYNC_BUCKETS));

/// Every metric of one broker.
pub struct Metrics {
    registry: Registry,
    per_topic: bool,
    per_partition: bool,
    bytes_in: Family<TopicLabels, Counter>,
    records_in: Family<TopicLabels, Counter>,
    bytes_out: Family<TopicLabels, Counter>,
    records_out: Family<TopicLabels, Counter>,
    replication_bytes_out: Counter,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    produce_seconds: Family<AcksLabels, Histogram, fn() -> Histogram>,
    fetch_seconds: Family<FetcherLabels, Histogram, fn() -> Histogram>,
    requests_in_flight: Family<ListenerLabels, Gauge>,
    partition_errors: Family<PartitionErrorLabels, Counter>,
    produce_batch_bytes: Histogram,
    connections: Family<ListenerLabels, Gauge>,
    connections_limited: Family<ReasonLabels, Counter>,
    tls_handshake_failures: Family<ListenerLabels, Counter>,
    authentications: Family<AuthenticationLabels, Counter>,
    authorization_denied: Family<ResourceLabels, Counter>,
    quota_throttled: Family<DirectionLabels, Counter>,
    quota_throttle_seconds: Family<DirectionLabels, Counter<f64, AtomicU64>>,
    // Computed at scrape time.
    request_memory_bytes: Family<ListenerLabels, Gauge>,
    active_controller: Gauge,
    raft_term: Gauge,
    raft_applied_index: Gauge,
    raft_commit_index: Gauge,
    raft_last_log_index: Gauge,
    brokers_alive: Gauge,
    leader_partitions: Gauge,
    under_replicated_partitions: Gauge,
    offline_partitions: Gauge,
    log_size_bytes: Family<TopicLabels, Gauge>,
    log_segments: Family<TopicLabels, Gauge>,
    partition_log_size_bytes: Family<PartitionLabels, Gauge>,
    partition_segments: Family<PartitionLabels, Gauge>,
    partition_log_start: Family<PartitionLabels, Gauge>,
    partition_high_watermark: Family<PartitionLabels, Gauge>,
    partition_log_end: Family<PartitionLabels, Gauge>,
    log_mappings: Gauge,
    recovery_truncations: Gauge,
    recovery_truncated_bytes: Gauge,
    process_resident_bytes: Gauge,
    leader_elections: Family<ElectionLabels, Counter>,
    isr_shrinks: Counter,
    isr_expands: Counter,
    follower_lag_records: Family<TopicLabels, Gauge>,
    group_members: Family<GroupLabels, Gauge>,
    group_generation: Family<GroupLabels, Gauge>,
    group_lag_records: Family<GroupTopicLabels, Gauge>,
    group_partition_lag_records: Family<GroupPartitionLabels, Gauge>,
    process_cpu_seconds: Gauge<f64, AtomicU64>,
    process_open_fds: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthenticationLabels {
    pub listener: &'static str,
    pub mechanism: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Metrics {
    /// Per-partition series need per-topic ones: `per_partition` without `per_topic` is off.
    pub fn new(per_topic: bool, per_partition: bool) -> Metrics {
        let mut registry = Registry::with_prefix("rill");
        let metrics = Metrics {
            registry: Registry::default(),
            per_topic,
            per_partition: per_topic && per_partition,
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
            records_out: Family::default(),
            replication_bytes_out: Counter::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            produce_seconds: Family::new_with_constructor(latency_histogram),
            fetch_seconds: Family::new_with_constructor(latency_histogram),
            requests_in_flight: Family::default(),
            partition_errors: Family::default(),
            produce_batch_bytes: Histogram::new(BATCH_BUCKETS),
            connections: Family::default(),
            connections_limited: Family::default(),
            tls_handshake_failures: Family::default(),
            authentications: Family::default(),
            authorization_denied: Family::default(),
            quota_throttled: Family::default(),
            quota_throttle_seconds: Family::default(),
            request_memory_bytes: Family::default(),
            active_controller: Gauge::default(),
            raft_term: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            brokers_alive: Gauge::default(),
            leader_partitions: Gauge::default(),
            under_replicated_partitions: Gauge::default(),
            offline_partitions: Gauge::default(),
            log_size_bytes: Family::default(),
            log_segments: Family::default(),
            partition_log_size_bytes: Family::default(),
            partition_segments: Family::default(),
            partition_log_start: Family::default(),
            partition_high_watermark: Family::default(),
            partition_log_end: Family::default(),
            log_mappings: Gauge::default(),
            recovery_truncations: Gauge::default(),
            recovery_truncated_bytes: Gauge::default(),
            process_resident_bytes: Gauge::default(),
            leader_elections: Family::default(),
            isr_shrinks: Counter::default(),
            isr_expands: Counter::default(),
            follower_lag_records: Family::default(),
            group_members: Family::default(),
            group_generation: Family::default(),
            group_lag_records: Family::default(),
            group_partition_lag_records: Family::default(),
            process_cpu_seconds: Gauge::default(),
            process_open_fds: Gauge::default(),
        };
        registry.register_with_unit(
            "produced",
            "Record batch bytes appended by producers (leader appends, both listeners)",
            Unit::Bytes,
            metrics.bytes_in.clone(),
        );
        registry.register(
            "produced_records",
            "Records appended by producers (duplicates of an idempotent producer excluded)",
            metrics.records_in.clone(),
        );
        registry.register_with_unit(
            "consumed",
            "Record batch bytes sent to consumers",
            Unit::Bytes,
            metrics.bytes_out.clone(),
        );
        registry.register(
            "consumed_records",
            "Records sent to consumers (whole batches, as fetched)",
            metrics.records_out.clone(),
        );
        registry.register_with_unit(
            "replication_sent",
            "Record batch bytes sent to follower replicas",
            Unit::Bytes,
            metrics.replication_bytes_out.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by listener, api and request-level error",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request read to its answer ready, by listener and api",
            Unit::Seconds,
            metrics.request_seconds.clone(),
        );
        registry.register_with_unit(
            "produce_duration",
            "Time from a produce request decoded to its acknowledgement ready (acks=all: replication included), by acks",
            Unit::Seconds,
            metrics.produce_seconds.clone(),
        );
        registry.register_with_unit(
            "fetch_duration",
            "Time from a fetch request decoded to its answer (long-poll wait included), by fetcher: consumer or follower",
            Unit::Seconds,
            metrics.fetch_seconds.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests read and not yet answered, by listener",
            metrics.requests_in_flight.clone(),
        );
        registry.register(
            "partition_errors",
            "Per-partition errors of produce and fetch requests, by api and error",
            metrics.partition_errors.clone(),
        );
        registry.register_with_unit(
            "produce_batch_size",
            "Size of each partition's records in a produce request",
            Unit::Bytes,
            metrics.produce_batch_bytes.clone(),
        );
        registry.register(
            "connections",
            "Open client connections, by listener",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_limited",
            "Connections closed by a limit: max_connections, max_connections_per_ip (refused at accept), request_read_timeout (a granted frame did not arrive in time)",
            metrics.connections_limited.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by listener (an untrusted or missing client certificate, a plain-TCP client on a TLS port, a scanner)",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "authentications",
            "SASL authentications by listener, mechanism and result (ok, failed)",
            metrics.authentications.clone(),
        );
        registry.register(
            "authorization_denied",
            "Requests or parts of requests refused by the ACLs, by resource type (topic, group, cluster)",
            metrics.authorization_denied.clone(),
        );
        registry.register(
            "quota_throttled",
            "Responses whose client was throttled for exceeding its byte-rate quota, by direction (produce, fetch)",
            metrics.quota_throttled.clone(),
        );
        registry.register_with_unit(
            "quota_throttle",
            "Time clients were throttled (their connections muted) for exceeding their quotas, by direction",
            Unit::Seconds,
            metrics.quota_throttle_seconds.clone(),
        );
        registry.register(
            "request_memory_bytes",
            "Request frame bytes being read or handled (budget request_memory_bytes per listener group: clients, replication)",
            metrics.request_memory_bytes.clone(),
        );
        registry.register(
            "controller_active",
            "1 on the broker that is the active controller (Raft leader), else 0",
            metrics.active_controller.clone(),
        );
        registry.register(
            "controller_raft_term",
            "The metadata quorum's Raft term as this broker knows it",
            metrics.raft_term.clone(),
        );
        registry.register(
            "controller_applied_index",
            "Index of the last metadata log entry applied on this broker",
            metrics.raft_applied_index.clone(),
        );
        registry.register(
            "controller_commit_index",
            "Highest metadata log index a majority of voters holds (leader); applied index on followers",
            metrics.raft_commit_index.clone(),
        );
        registry.register(
            "controller_last_log_index",
            "Index of the last metadata log entry this voter holds",
            metrics.raft_last_log_index.clone(),
        );
        registry.register(
            "brokers_alive",
            "Brokers registered and not fenced, in this broker's metadata",
            metrics.brokers_alive.clone(),
        );
        registry.register(
            "leader_partitions",
            "Partitions this broker leads",
            metrics.leader_partitions.clone(),
        );
        registry.register(
            "under_replicated_partitions",
            "Partitions this broker leads whose ISR is smaller than their replica set",
            metrics.under_replicated_partitions.clone(),
        );
        registry.register(
            "offline_partitions",
            "Partitions without a leader (reported by the active controller only, else 0)",
            metrics.offline_partitions.clone(),
        );
        registry.register_with_unit(
            "log_size",
            "Bytes of partition logs on this broker's disk, by topic",
            Unit::Bytes,
            metrics.log_size_bytes.clone(),
        );
        registry.register(
            "log_segments",
            "Segments of partition logs on this broker, by topic",
            metrics.log_segments.clone(),
        );
        registry.register_with_unit(
            "partition_log_size",
            "Bytes of one partition's log on this broker's disk (metrics_per_partition)",
            Unit::Bytes,
            metrics.partition_log_size_bytes.clone(),
        );
        registry.register(
            "partition_segments",
            "Segments of one partition's log on this broker (metrics_per_partition)",
            metrics.partition_segments.clone(),
        );
        registry.register(
            "partition_log_start_offset",
            "First offset still in one partition's log on this broker (metrics_per_partition)",
            metrics.partition_log_start.clone(),
        );
        registry.register(
            "partition_high_watermark",
            "High watermark of one partition's replica on this broker (metrics_per_partition)",
            metrics.partition_high_watermark.clone(),
        );
        registry.register(
            "partition_log_end_offset",
            "Log end offset of one partition's replica on this broker (metrics_per_partition)",
            metrics.partition_log_end.clone(),
        );
        registry.register(
            "log_mappings",
            "Memory mappings of segment and index files the broker process holds",
            metrics.log_mappings.clone(),
        );
        registry.register(
            "log_recovery_truncations",
            "Invalid log tails cut when this broker's logs were last opened",
            metrics.recovery_truncations.clone(),
        );
        registry.register_with_unit(
            "log_recovery_truncated",
            "Bytes of invalid log tails cut when this broker's logs were last opened",
            Unit::Bytes,
            metrics.recovery_truncated_bytes.clone(),
        );
        registry.register(
            "leader_elections",
            "Partition leaderships this broker took (kind clean: it was in the ISR; unclean: it was not)",
            metrics.leader_elections.clone(),
        );
        registry.register(
            "isr_shrinks",
            "Followers removed from the ISR of partitions this broker leads",
            metrics.isr_shrinks.clone(),
        );
        registry.register(
            "isr_expands",
            "Followers added to the ISR of partitions this broker leads",
            metrics.isr_expands.clone(),
        );
        registry.register(
            "follower_lag_max_records",
            "Largest lag in records of any follower of a partition this broker leads, by topic",
            metrics.follower_lag_records.clone(),
        );
        registry.register(
            "group_members",
            "Members of each consumer group this broker coordinates (native or Kafka classic)",
            metrics.group_members.clone(),
        );
        registry.register(
            "group_generation",
            "Generation (native: group epoch) of each group coordinated here; it rises by one per rebalance",
            metrics.group_generation.clone(),
        );
        registry.register(
            "group_lag_records",
            "Records between each group's committed offsets and the high watermarks, by group and topic (groups coordinated here)",
            metrics.group_lag_records.clone(),
        );
        registry.register(
            "group_partition_lag_records",
            "Records between a group's committed offset and the high watermark of one partition (groups coordinated here; metrics_per_partition)",
            metrics.group_partition_lag_records.clone(),
        );
        registry.register_with_unit(
            "fsync_duration",
            "Latency of each fdatasync of partition data",
            Unit::Seconds,
            FSYNC_SECONDS.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the broker process (mapped log pages it touched included)",
            Unit::Bytes,
            metrics.process_resident_bytes.clone(),
        );
        registry.register_with_unit(
            "process_cpu",
            "CPU time (user + system) the broker process has used",
            Unit::Seconds,
            metrics.process_cpu_seconds.clone(),
        );
        registry.register(
            "process_open_fds",
            "File descriptors the broker process holds (sockets, segments, indexes)",
            metrics.process_open_fds.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    fn topic(&self, topic: &str) -> TopicLabels {
        TopicLabels {
            topic: if self.per_topic {
                topic.to_string()
            } else {
                "_all".to_string()
            },
        }
    }

    /// A leader append of `records` records in `bytes` bytes to `topic`.
    pub fn produced(&self, topic: &str, bytes: usize, records: u64) {
        let labels = self.topic(topic);
        self.bytes_in.get_or_create(&labels).inc_by(bytes as u64);
        self.records_in.get_or_create(&labels).inc_by(records);
        self.produce_batch_bytes.observe(bytes as f64);
    }

    /// Record batches sent from `topic` to a consumer, or to a follower (`replica`).
    pub fn fetched(&self, topic: &str, batches: &[bytes::Bytes], replica: bool) {
        let bytes: usize = batches.iter().map(|b| b.len()).sum();
        if bytes == 0 {
            return;
        }
        if replica {
            self.replication_bytes_out.inc_by(bytes as u64);
            return;
        }
        let labels = self.topic(topic);
        self.bytes_out.get_or_create(&labels).inc_by(bytes as u64);
        let records: u64 = batches.iter().map(|b| record_count(b)).sum();
        self.records_out.get_or_create(&labels).inc_by(records);
    }

    /// A per-partition error answered to a produce or fetch.
    pub fn partition_error(&self, api: &'static str, code: ErrorCode) {
        if code != ErrorCode::NONE {
            self.partition_errors
                .get_or_create(&PartitionErrorLabels {
                    api,
                    error: code.name().unwrap_or("UNKNOWN"),
                })
                .inc();
        }
    }

    /// One request answered.
    pub fn request(
        &self,
        listener: &'static str,
        api: &'static str,
        error: ErrorCode,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                listener,
                api,
                error: error.name().unwrap_or("UNKNOWN"),
            })
            .inc();
        self.request_seconds
            .get_or_create(&LatencyLabels { listener, api })
            .observe(took.as_secs_f64());
    }

    /// A produce acknowledged (or, with acks=0, appended) `took` after it was decoded.
    pub fn produce_done(&self, acks: &'static str, took: Duration) {
        self.produce_seconds
            .get_or_create(&AcksLabels { acks })
            .observe(took.as_secs_f64());
    }

    /// A fetch answered `took` after it was decoded, to a consumer or a follower.
    pub fn fetch_done(&self, follower: bool, took: Duration) {
        let fetcher = if follower { "follower" } else { "consumer" };
        self.fetch_seconds
            .get_or_create(&FetcherLabels { fetcher })
            .observe(took.as_secs_f64());
    }

    /// A request read on `listener`; in flight until the guard drops (answered or abandoned).
    pub fn request_started(self: &Arc<Self>, listener: &'static str) -> InFlightGuard {
        self.requests_in_flight
            .get_or_create(&ListenerLabels { listener })
            .inc();
        InFlightGuard {
            metrics: self.clone(),
            listener,
        }
    }

    /// A connection opened on `listener`; closed when the guard drops.
    /// A connection closed by a limit (`reason`: the setting).
    pub fn connection_limited(&self, reason: &'static str) {
        self.connections_limited
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A TLS handshake on `listener` failed or timed out.
    pub fn tls_handshake_failed(&self, listener: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// A SASL exchange on `listener` ended (`ok`: authenticated).
    pub fn authentication(&self, listener: &'static str, mechanism: &'static str, ok: bool) {
        self.authentications
            .get_or_create(&AuthenticationLabels {
                listener,
                mechanism,
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// A client over its `direction` quota was throttled for `time`.
    pub fn quota_throttled(&self, direction: &'static str, time: Duration) {
        let labels = DirectionLabels { direction };
        self.quota_throttled.get_or_create(&labels).inc();
        self.quota_throttle_seconds
            .get_or_create(&labels)
            .inc_by(time.as_secs_f64());
    }

    /// The ACLs refused an operation on a resource of `resource_type`.
    pub fn authorization_denied(&self, resource_type: &'static str) {
        self.authorization_denied
            .get_or_create(&ResourceLabels { resource_type })
            .inc();
    }

    pub fn connection(self: &Arc<Self>, listener: &'static str) -> ConnectionGuard {
        self.connections
            .get_or_create(&ListenerLabels { listener })
            .inc();
        ConnectionGuard {
            metrics: self.clone(),
            listener,
        }
    }

    /// The OpenMetrics text of every metric, with the state gauges computed now.
    /// `remote_high_watermarks` holds the high watermarks, asked of their leaders, of the
    /// partitions in [`Metrics::group_partitions_elsewhere`] (for group lag).
    pub fn render(
        &self,
        state: &BrokerState,
        remote_high_watermarks: &HashMap<TopicPartition, u64>,
    ) -> String {
        self.refresh(state, remote_high_watermarks);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn refresh(&self, state: &BrokerState, remote_high_watermarks: &HashMap<TopicPartition, u64>) {
        for (listener, limits) in [
            ("clients", &state.client_limits),
            ("replication", &state.inter_broker_limits),
        ] {
            self.request_memory_bytes
                .get_or_create(&ListenerLabels { listener })
                .set(limits.memory_used() as i64);
        }
        let node = state.node_id;
        let controller = &state.controller;
        let active = controller.leader() == Some(node);
        self.active_controller.set(i64::from(active));
        self.raft_term
            .set(controller.raft_term().map_or(0, |t| t as i64));
        self.raft_applied_index
            .set(controller.applied_index() as i64);
        let (last, committed) = controller.raft_indexes().unwrap_or_else(|| {
            let applied = controller.applied_index();
            (applied, applied)
        });
        self.raft_last_log_index.set(last as i64);
        self.raft_commit_index.set(committed as i64);
        let metadata = controller.metadata();
        self.brokers_alive.set(metadata.alive().len() as i64);
        let (mut leading, mut under, mut offline) = (0, 0, 0);
        for topic in metadata.topics.values() {
            for partition in &topic.partitions {
                match partition.leader {
                    Some(leader) if leader == node => {
                        leading += 1;
                        if partition.isr.len() < partition.replicas.len() {
                            under += 1;
                        }
                    }
                    Some(_) => {}
                    None => offline += 1,
                }
            }
        }
        self.leader_partitions.set(leading);
        self.under_replicated_partitions.set(under);
        self.offline_partitions
            .set(if active { offline } else { 0 });
        self.refresh_process();
        self.follower_lag_records.clear();
        for (topic, lag) in state.replicas.follower_lag_by_topic() {
            let gauge = self.follower_lag_records.get_or_create(&self.topic(&topic));
            gauge.set(gauge.get().max(lag as i64));
        }
        self.refresh_groups(state, remote_high_watermarks);
        self.refresh_logs(state);
    }

    /// Sizes, segments and offsets of the logs here, per topic and (if on) per partition.
    fn refresh_logs(&self, state: &BrokerState) {
        self.log_size_bytes.clear();
        self.log_segments.clear();
        for family in [
            &self.partition_log_size_bytes,
            &self.partition_segments,
            &self.partition_log_start,
            &self.partition_high_watermark,
            &self.partition_log_end,
        ] {
            family.clear();
        }
        let (mut truncations, mut truncated_bytes) = (0, 0);
        for (tp, stats) in state.logs.stats() {
            let topic = self.topic(&tp.topic);
            self.log_size_bytes
                .get_or_create(&topic)
                .inc_by(stats.size_bytes as i64);
            self.log_segments
                .get_or_create(&topic)
                .inc_by(stats.segments as i64);
            truncations += stats.recovery_truncations as i64;
            truncated_bytes += stats.recovery_truncated_bytes as i64;
            if self.per_partition {
                let labels = PartitionLabels {
                    topic: tp.topic.clone(),
                    partition: tp.partition.to_string(),
                };
                for (family, value) in [
                    (&self.partition_log_size_bytes, stats.size_bytes),
                    (&self.partition_segments, stats.segments as u64),
                    (&self.partition_log_start, stats.log_start_offset),
                    (&self.partition_high_watermark, stats.high_watermark),
                    (&self.partition_log_end, stats.log_end_offset),
                ] {
                    family.get_or_create(&labels).set(value as i64);
                }
            }
        }
        self.recovery_truncations.set(truncations);
        self.recovery_truncated_bytes.set(truncated_bytes);
        self.log_mappings.set(log_mappings(&state.config.data_dir));
    }
}

/// Mappings in `/proc/self/maps` of files under `data_dir` (segments and indexes; 0 where
/// there is no procfs).
fn log_mappings(data_dir: &std::path::Path) -> i64 {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let Some(dir) = dir.to_str() else {
        return 0;
    };
    maps.lines()
        .filter(|line| {
            // The path is the sixth field; it may hold spaces, so take the rest of the line.
            line.splitn(6, char::is_whitespace)
                .nth(5)
                .map(str::trim_start)
                .is_some_and(|path| path.starts_with(dir))
        })
        .count() as i64
}

impl Metrics {
    /// Resident memory, CPU time and open files, from `/proc/self` (Linux; left at 0 elsewhere).
    fn refresh_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let rss_kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<i64>().ok());
            if let Some(kib) = rss_kib {
                self.process_resident_bytes.set(kib * 1024);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command (which may hold spaces) closed by its last ')'; utime and
            // stime are the 14th and 15th, in clock ticks of 1/100 s (USER_HZ on Linux).
            let ticks: Option<u64> = stat.rsplit_once(')').and_then(|(_, rest)| {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime = fields.get(11)?.parse::<u64>().ok()?;
                let stime = fields.get(12)?.parse::<u64>().ok()?;
                Some(utime + stime)
            });
            if let Some(ticks) = ticks {
                self.process_cpu_seconds.set(ticks as f64 / 100.0);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process_open_fds.set(fds.count() as i64);
        }
    }
}

impl Metrics {
    /// Counts what changed between two metadata states this broker applied: leaderships it
    /// took (clean or unclean) and ISR changes of partitions it kept leading. Changes applied
    /// between two looks are seen together (a shrink and the expand after it may cancel out).
    pub fn metadata_changed(
        &self,
        node: NodeId,
        previous: &MetadataState,
        current: &MetadataState,
    ) {
        for (name, topic) in &current.topics {
            let Some(before) = previous.topics.get(name).filter(|t| t.id == topic.id) else {
                continue;
            };
            for (now, was) in topic.partitions.iter().zip(&before.partitions) {
                if now.leader != Some(node) {
                    continue;
                }
                if was.leader != Some(node) {
                    let kind = if was.isr.contains(&node) {
                        "clean"
                    } else {
                        "unclean"
                    };
                    self.leader_elections
                        .get_or_create(&ElectionLabels { kind })
                        .inc();
                    continue;
                }
                let removed = was.isr.iter().filter(|r| !now.isr.contains(r)).count();
                let added = now.isr.iter().filter(|r| !was.isr.contains(r)).count();
                self.isr_shrinks.inc_by(removed as u64);
                self.isr_expands.inc_by(added as u64);
            }
        }
    }
}

/// A group coordinated here, as the metrics see it.
struct CoordinatedGroup {
    id: String,
    members: usize,
    generation: i32,
    offsets: Vec<(TopicPartition, u64)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupTopicLabels {
    pub group: String,
    pub topic: String,
}

impl Metrics {
    /// The groups coordinated here, with members, generation and committed offsets.
    fn coordinated_groups(state: &BrokerState) -> Vec<CoordinatedGroup> {
        state
            .groups
            .group_ids()
            .into_iter()
            .filter_map(|id| {
                state.groups.with_existing(&id, |entry| {
                    let (members, generation) = if entry.is_classic() {
                        (entry.classic.members.len(), entry.classic.generation)
                    } else {
                        (entry.group.members.len(), entry.group.epoch)
                    };
                    let offsets: Vec<(TopicPartition, u64)> = entry
                        .offsets
                        .iter()
                        .map(|(tp, committed)| (tp.clone(), committed.offset))
                        .collect();
                    CoordinatedGroup {
                        id: id.clone(),
                        members,
                        generation,
                        offsets,
                    }
                })
            })
            .collect()
    }

    /// Partitions with offsets committed by a group coordinated here but no replica on this
    /// broker: their high watermarks are to be asked of their leaders for group lag.
    pub fn group_partitions_elsewhere(state: &BrokerState) -> Vec<TopicPartition> {
        let mut elsewhere: Vec<TopicPartition> = Self::coordinated_groups(state)
            .into_iter()
            .flat_map(|group| group.offsets.into_iter().map(|(tp, _)| tp))
            .filter(|tp| state.logs.get(tp).is_none())
            .collect();
        elsewhere.sort();
        elsewhere.dedup();
        elsewhere
    }

    /// Members, generation and lag of the groups coordinated here. Lag is the high watermark
    /// minus the committed offset of each partition: the local replica's high watermark, or
    /// the leader's (`remote_high_watermarks`); a partition whose leader did not answer is left
    /// out. Summed per topic, and per partition if on.
    fn refresh_groups(
        &self,
        state: &BrokerState,
        remote_high_watermarks: &HashMap<TopicPartition, u64>,
    ) {
        self.group_members.clear();
        self.group_generation.clear();
        self.group_lag_records.clear();
        self.group_partition_lag_records.clear();
        for CoordinatedGroup {
            id,
            members,
            generation,
            offsets,
        } in Self::coordinated_groups(state)
        {
            let group = GroupLabels { group: id.clone() };
            self.group_members.get_or_create(&group).set(members as i64);
            self.group_generation
                .get_or_create(&group)
                .set(i64::from(generation));
            for (tp, offset) in offsets {
                let high_watermark = match state.logs.get(&tp) {
                    Some(log) => log.high_watermark(),
                    None => match remote_high_watermarks.get(&tp) {
                        Some(hw) => *hw,
                        None => continue,
                    },
                };
                let lag = high_watermark.saturating_sub(offset);
                let labels = GroupTopicLabels {
                    group: id.clone(),
                    topic: self.topic(&tp.topic).topic,
                };
                self.group_lag_records
                    .get_or_create(&labels)
                    .inc_by(lag as i64);
                if self.per_partition {
                    self.group_partition_lag_records
                        .get_or_create(&GroupPartitionLabels {
                            group: id.clone(),
                            topic: tp.topic.clone(),
                            partition: tp.partition.to_string(),
                        })
                        .set(lag as i64);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ElectionLabels {
    pub kind: &'static str,
}

/// Counts a request as in flight while it lives.
pub struct InFlightGuard {
    metrics: Arc<Metrics>,
    listener: &'static str,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.metrics
            .requests_in_flight
            .get_or_create(&ListenerLabels {
                listener: self.listener,
            })
            .dec();
    }
}

/// Counts a connection as open while it lives.
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    listener: &'static str,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .connections
            .get_or_create(&ListenerLabels {
                listener: self.listener,
            })
            .dec();
    }
}

/// Records in a run of record batches (Kafka v2 layout: the count is the i32 at byte 57 of
/// each batch); a cut-off last batch counts what its header says.
fn record_count(mut batches: &[u8]) -> u64 {
    let mut records = 0u64;
    while batches.len() >= 61 {
        let length = i32::from_be_bytes([batches[8], batches[9], batches[10], batches[11]]);
        let count = i32::from_be_bytes([batches[57], batches[58], batches[59], batches[60]]);
        records += u64::try_from(count).unwrap_or(0);
        let Some(next) = usize::try_from(length).ok().and_then(|l| l.checked_add(12)) else {
            break;
        };
        if next > batches.len() {
            break;
        }
        batches = &batches[next..];
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_count_walks_batch_headers() {
        let batch = |count: i32, body: usize| {
            let mut b = vec![0u8; 61 + body];
            b[8..12].copy_from_slice(&((49 + body) as i32).to_be_bytes());
            b[57..61].copy_from_slice(&count.to_be_bytes());
            b
        };
        let mut run = batch(3, 10);
        run.extend(batch(5, 0));
        assert_eq!(record_count(&run), 8);
        assert_eq!(record_count(&run[..70]), 3);
        assert_eq!(record_count(&[]), 0);
    }
}
