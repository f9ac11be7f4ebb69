//! [`Client`]: the cluster as the client sees it: bootstrap addresses, cached metadata, a pool
//! of connections (separate ones for control, produce and fetch traffic, so a long-polling fetch
//! never delays a produce), and retries of retriable errors with exponential backoff.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rill_protocol::api::{MetadataRequest, RequestBody, ResponseBody, TopicMetadata};
use rill_protocol::ErrorCode;
use tokio::sync::Mutex;

use crate::connection::Connection;
use crate::error::{ClientError, Result};

/// Settings shared by everything built on a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of one or more brokers.
    pub bootstrap: Vec<String>,
    /// Name sent with every request (broker logs; quotas are per client id).
    pub client_id: String,
    /// Longest wait for one response. Default 30 s.
    pub request_timeout: Duration,
    /// Longest a retried operation keeps retrying. Default 60 s.
    pub retry_timeout: Duration,
    /// First retry backoff, doubled up to `retry_backoff_max`. Default 50 ms / 1 s.
    pub retry_backoff: Duration,
    /// Upper bound of the retry backoff.
    pub retry_backoff_max: Duration,
    /// Largest response frame accepted. Default 64 MiB.
    pub max_frame_bytes: usize,
    /// Requests in flight per connection. Default 16.
    pub in_flight_requests_max: usize,
    /// Metadata older than this is refreshed even without an error (Kafka's
    /// `metadata.max.age.ms`), so a client whose brokers answer but no longer lead still moves
    /// on to the new leaders. Default 5 min.
    pub metadata_max_age: Duration,
    /// [`Client::connect`] gives up after this long when every bootstrap address refuses the
    /// connection (nothing listens there), instead of retrying for `retry_timeout`. Default 2 s.
    pub bootstrap_refused_timeout: Duration,
    /// TLS to every broker (`None`: plain TCP); see [`crate::TlsOptions::client_config`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// SASL authentication of every connection (`None`: none).
    pub sasl: Option<crate::SaslOptions>,
}

impl ClientConfig {
    /// Defaults with these bootstrap addresses (`host:port`, comma-separated allowed).
    pub fn new(bootstrap: &str) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            client_id: "rill-client".into(),
            request_timeout: Duration::from_secs(30),
            retry_timeout: Duration::from_secs(60),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(1),
            max_frame_bytes: 64 << 20,
            in_flight_requests_max: 16,
            metadata_max_age: Duration::from_secs(300),
            bootstrap_refused_timeout: Duration::from_secs(1),
            tls: None,
            sasl: None,
        }
    }

    /// These settings with TLS as `options` describe (errors name the file at fault).
    pub fn with_tls(mut self, options: &crate::TlsOptions) -> Result<ClientConfig> {
        let tls = options
            .client_config()
            .map_err(|reason| ClientError::Invalid(format!("TLS: {reason}")))?;
        self.tls = Some(tls);
        Ok(self)
    }

    /// These settings, authenticating every connection with SASL.
    pub fn with_sasl(mut self, options: crate::SaslOptions) -> ClientConfig {
        self.sasl = Some(options);
        self
    }
}

/// Which pool a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Purpose {
    Control,
    Produce,
    Fetch,
}

/// Cached view of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: u32,
    /// Node id of the leader, if elected.
    pub leader: Option<u32>,
    /// Incremented on every leadership change.
    pub leader_epoch: u32,
    /// Node ids holding a replica.
    pub replicas: Vec<u32>,
    /// Replicas in sync with the leader.
    pub isr: Vec<u32>,
}

/// Cached cluster metadata.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    /// Cluster name reported by the brokers.
    pub cluster_id: String,
    /// Node id of the active controller, if elected.
    pub controller: Option<u32>,
    /// node id -> `host:port`
    pub brokers: HashMap<u32, String>,
    /// Brokers the controller fenced (missed heartbeats): they lead nothing.
    pub fenced: Vec<u32>,
    /// Node ids of the metadata quorum's voters.
    pub voters: Vec<u32>,
    /// Topic name -> partitions, in partition order. Looked up per record by the producer:
    /// foldhash, not the standard SipHash (164 of a 100-byte record's 3,715 instructions).
    pub topics: HashMap<String, Vec<PartitionInfo>, foldhash::quality::RandomState>,
}

struct Inner {
    config: ClientConfig,
    metadata: RwLock<ClusterMetadata>,
    /// Counts the metadata's replacements, so a reader may keep what it derived from it
    /// until it changes (`Client::metadata_version`).
    metadata_version: std::sync::atomic::AtomicU64,
    connections: Mutex<HashMap<(String, Purpose), Connection>>,
}

/// A handle to a Rill cluster. Cheap to clone; clones share metadata and connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the cluster through the bootstrap brokers and loads metadata.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::Invalid(
                "no bootstrap broker address given".into(),
            ));
        }
        let client = Client {
            inner: Arc::new(Inner {
                config,
                metadata: RwLock::default(),
                metadata_version: Default::default(),
                connections: Mutex::default(),
            }),
        };
        let started = Instant::now();
        let refused_timeout = client.inner.config.bootstrap_refused_timeout;
        let refused = std::sync::atomic::AtomicBool::new(false);
        let loaded = client
            .retry("loading cluster metadata", || async {
                let outcome = client.refresh_metadata().await;
                if outcome.is_err()
                    && started.elapsed() >= refused_timeout
                    && client.bootstrap_refused().await
                {
                    // Not retriable: ends the retries; reported below.
                    refused.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(ClientError::Closed);
                }
                outcome
            })
            .await;
        if refused.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ClientError::NoBrokers {
                addresses: client.inner.config.bootstrap.join(","),
                reason: format!("connection refused for {refused_timeout:?}"),
            });
        }
        loaded?;
        tokio::spawn(refresh_periodically(Arc::downgrade(&client.inner)));
        Ok(client)
    }

    /// Whether every bootstrap address refuses a TCP connection right now (nothing listens).
    async fn bootstrap_refused(&self) -> bool {
        for address in &self.inner.config.bootstrap {
            let attempt = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(address),
            )
            .await;
            let refused =
                matches!(&attempt, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused);
            if !refused {
                return false;
            }
        }
        true
    }

    /// The settings this client was created with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A copy of the cached metadata.
    pub fn metadata(&self) -> ClusterMetadata {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) async fn connection(&self, address: &str, purpose: Purpose) -> Result<Connection> {
        let mut pool = self.inner.connections.lock().await;
        let key = (address.to_string(), purpose);
        if let Some(existing) = pool.get(&key).filter(|c| !c.is_closed()) {
            return Ok(existing.clone());
        }
        let config = &self.inner.config;
        let connection = Connection::connect(
            address,
            &config.client_id,
            config.max_frame_bytes,
            config.in_flight_requests_max,
            config.request_timeout,
            config.tls.clone(),
        )
        .await?;
        if let Some(sasl) = &config.sasl {
            crate::sasl::authenticate(&connection, address, sasl, config.request_timeout).await?;
        }
        pool.insert(key, connection.clone());
        Ok(connection)
    }

    /// Sends to any reachable broker (known brokers first, then the bootstrap list).
    pub(crate) async fn request_any(&self, body: RequestBody) -> Result<ResponseBody> {
        let mut addresses: Vec<String> = self.metadata().brokers.values().cloned().collect();
        addresses.sort();
        addresses.extend(self.inner.config.bootstrap.iter().cloned());
        let mut last_error = None;
        // Whether every broker refused TLS (an untrusted certificate) or our SASL
        // credentials: retrying cannot help.
        let mut only_refused = true;
        for address in addresses {
            match self.connection(&address, Purpose::Control).await {
                Ok(connection) => match connection
                    .request(body.clone(), self.inner.config.request_timeout)
                    .await
                {
                    // Unreachable, starting up or shutting down: ask the next broker.
                    Err(e) if e.is_retriable() => {
                        only_refused = false;
                        last_error = Some(e);
                    }
                    other => return other,
                },
                Err(e) => {
                    only_refused &= matches!(
                        e,
                        ClientError::Tls { .. } | ClientError::Authentication { .. }
                    );
                    last_error = Some(e);
                }
            }
        }
        if let (true, Some(e @ (ClientError::Tls { .. } | ClientError::Authentication { .. }))) =
            (only_refused, &last_error)
        {
            return Err(e.clone());
        }
        Err(ClientError::NoBrokers {
            addresses: self.inner.config.bootstrap.join(","),
            reason: last_error.map_or_else(|| "no address".into(), |e| e.to_string()),
        })
    }

    /// Sends to a given broker.
    pub(crate) async fn request_node(
        &self,
        node: u32,
        purpose: Purpose,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<ResponseBody> {
        let address = self.node_address(node)?;
        self.connection(&address, purpose)
            .await?
            .request(body, timeout)
            .await
    }

    /// Queues a request to broker `node` (requests queued one after another go out in that
    /// order on its connection) and returns the wait for its response.
    pub(crate) async fn enqueue_node(
        &self,
        node: u32,
        purpose: Purpose,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<impl std::future::Future<Output = Result<ResponseBody>> + Send + 'static> {
        let address = self.node_address(node)?;
        self.connection(&address, purpose)
            .await?
            .enqueue(body, timeout)
            .await
    }

    /// `host:port` of a broker, read from the cache without copying it.
    fn node_address(&self, node: u32) -> Result<String> {
        self.cached(|m| m.brokers.get(&node).cloned())
            .ok_or_else(|| {
                ClientError::broker(
                    ErrorCode::LEADER_NOT_AVAILABLE,
                    format!("broker {node} is not in the metadata"),
                    None,
                )
            })
    }

    pub(crate) async fn send_only_node(&self, node: u32, body: RequestBody) -> Result<()> {
        let address = self.node_address(node)?;
        self.connection(&address, Purpose::Produce)
            .await?
            .send_only(body)
            .await
    }

    /// Reloads metadata for every topic.
    pub async fn refresh_metadata(&self) -> Result<()> {
        let ResponseBody::Metadata(response) = self
            .request_any(RequestBody::Metadata(MetadataRequest { topics: None }))
            .await?
        else {
            return Err(ClientError::Invalid(
                "broker answered Metadata with another response type".into(),
            ));
        };
        let metadata = ClusterMetadata {
            cluster_id: response.cluster_id,
            controller: response.controller_id,
            fenced: response
                .brokers
                .iter()
                .filter(|b| b.fenced)
                .map(|b| b.node_id)
                .collect(),
            voters: response.voters,
            brokers: response
                .brokers
                .into_iter()
                .map(|b| (b.node_id, format!("{}:{}", b.host, b.port)))
                .collect(),
            topics: response
                .topics
                .into_iter()
                .filter(|t| t.error_code == ErrorCode::NONE)
                .map(|t| (t.name.clone(), partitions(t)))
                .collect(),
        };
        *self
            .inner
            .metadata
            .write()
            .unwrap_or_else(|e| e.into_inner()) = metadata;
        self.inner
            .metadata_version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Goes up each time the cached metadata is replaced: what was read from the cache at
    /// version `v` is still what the cache says while this returns `v`.
    pub(crate) fn metadata_version(&self) -> u64 {
        self.inner
            .metadata_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads the cached metadata under its lock, without copying it (hot paths use this).
    fn cached<T>(&self, read: impl FnOnce(&ClusterMetadata) -> T) -> T {
        read(
            &self
                .inner
                .metadata
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// The number of partitions of `topic`, from the cache without copying it (the producer's
    /// per-record path); refreshes once if the topic is unknown.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        let cached = self.cached(|m| m.topics.get(topic).map(|p| p.len() as u32));
        match cached {
            Some(count) => Ok(count),
            None => Ok(self.partitions(topic).await?.len() as u32),
        }
    }

    /// Partitions of `topic` from the cache, refreshing once if the topic is unknown.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<PartitionInfo>> {
        if let Some(partitions) = self.cached(|m| m.topics.get(topic).cloned()) {
            return Ok(partitions);
        }
        self.refresh_metadata().await?;
        if let Some(partitions) = self.cached(|m| m.topics.get(topic).cloned()) {
            return Ok(partitions);
        }
        // A listing leaves out topics the principal may not describe (ACLs): asked by name,
        // the broker says so, and the error says why instead of "unknown topic".
        let named = self
            .request_any(RequestBody::Metadata(MetadataRequest {
                topics: Some(vec![topic.to_string()]),
            }))
            .await?;
        if let ResponseBody::Metadata(named) = named {
            if named
                .topics
                .iter()
                .any(|t| t.name == topic && t.error_code == ErrorCode::TOPIC_AUTHORIZATION_FAILED)
            {
                return Err(ClientError::broker(
                    ErrorCode::TOPIC_AUTHORIZATION_FAILED,
                    format!("topic {topic}"),
                    None,
                ));
            }
        }
        self.refresh_metadata().await?;
        self.cached(|m| m.topics.get(topic).cloned())
            .ok_or_else(|| {
                ClientError::broker(
                    ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic {topic}"),
                    Some("create it first (rill topic create)".into()),
                )
            })
    }

    /// The leader of a partition from the cache.
    pub(crate) async fn leader(&self, topic: &str, partition: u32) -> Result<u32> {
        self.leader_and_epoch(topic, partition)
            .await
            .map(|(leader, _)| leader)
    }

    /// The leader of a partition and its leader epoch, from the cache.
    pub(crate) async fn leader_and_epoch(&self, topic: &str, partition: u32) -> Result<(u32, u32)> {
        let cached = self.cached(|m| {
            m.topics.get(topic).and_then(|p| {
                p.get(partition as usize)
                    .map(|p| (p.leader, p.leader_epoch))
            })
        });
        if let Some((Some(leader), epoch)) = cached {
            return Ok((leader, epoch));
        }
        let partitions = self.partitions(topic).await?;
        let info = partitions.get(partition as usize).ok_or_else(|| {
            ClientError::broker(
                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                format!("{topic}-{partition}"),
                Some(format!("the topic has {} partitions", partitions.len())),
            )
        })?;
        let leader = info.leader.ok_or_else(|| {
            ClientError::broker(
                ErrorCode::LEADER_NOT_AVAILABLE,
                format!("{topic}-{partition}"),
                None,
            )
        })?;
        Ok((leader, info.leader_epoch))
    }

    /// Runs `op` until it succeeds, fails with a non-retriable error, or `retry_timeout` passes;
    /// refreshes metadata between attempts and backs off exponentially.
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let config = &self.inner.config;
        let started = Instant::now();
        let mut backoff = config.retry_backoff;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e)
                    if e.is_retriable() && started.elapsed() + backoff < config.retry_timeout =>
                {
                    tracing::debug!("{what} failed, retrying in {backoff:?}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.retry_backoff_max);
                    if let Err(refresh) = self.refresh_metadata().await {
                        tracing::debug!("metadata refresh failed: {refresh}");
                    }
                }
                Err(e) if e.is_retriable() => {
                    return Err(ClientError::Timeout(
                        started.elapsed(),
                        format!("{what}: {e}"),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Refreshes the metadata every `metadata_max_age` while the client exists.
async fn refresh_periodically(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(age) = inner.upgrade().map(|i| i.config.metadata_max_age) else {
            return;
        };
        tokio::time::sleep(age.max(Duration::from_millis(10))).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let client = Client { inner };
        if let Err(e) = client.refresh_metadata().await {
            tracing::debug!("periodic metadata refresh failed: {e}");
        }
    }
}

fn partitions(topic: TopicMetadata) -> Vec<PartitionInfo> {
    let mut partitions: Vec<PartitionInfo> = topic
        .partitions
        .into_iter()
        .map(|p| PartitionInfo {
            partition: p.partition,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            replicas: p.replicas,
            isr: p.isr,
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    partitions
}
