//! A cluster of real `rill-broker` processes on 127.0.0.1, every one a controller voter, with
//! short liveness timings so failover tests run in seconds. Brokers can be killed (SIGKILL),
//! paused (SIGSTOP) and resumed, and restarted on the same ports and data directories.

use std::time::Duration;

use super::BrokerProcess;

/// Heartbeat period the cluster's brokers use.
pub const HEARTBEAT_MS: u64 = 200;
/// Session timeout: a silent broker is fenced after this.
pub const SESSION_TIMEOUT_MS: u64 = 1500;
/// A follower behind this long leaves the ISR.
pub const REPLICA_LAG_MAX_MS: u64 = 4000;

/// Client port of every broker of a [`Cluster::start_in_network`] cluster (each has its own address).
pub const NETWORK_CLIENT_PORT: u16 = 9292;
/// Controller port of every broker of a [`Cluster::start_in_network`] cluster.
pub const NETWORK_CONTROLLER_PORT: u16 = 9400;
/// Inter-broker (replication) port of every broker of a [`Cluster::start_in_network`] cluster.
pub const NETWORK_REPLICATION_PORT: u16 = 9393;

/// Clusters of one test binary run one at a time: three brokers each on two cores would
/// otherwise starve each other's heartbeats and replica fetches into spurious fencing.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Cluster {
    /// `brokers[i]` is node `i + 1`; `None` while it is down.
    pub brokers: Vec<Option<BrokerProcess>>,
    dirs: Vec<tempfile::TempDir>,
    client_ports: Vec<u16>,
    /// Node `i + 1`'s IP address.
    hosts: Vec<String>,
    voters: String,
    extra: Vec<String>,
    /// With [`Cluster::start_in_network`]: every broker in its own network namespace.
    /// Dropped after the brokers (field order).
    pub network: Option<super::netns::Network>,
    /// Last field: released after the brokers are dropped (killed).
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// A port nothing listens on right now, chosen below the kernel's ephemeral range (32768 and
/// up): a port from that range can be taken by any outgoing connection between choosing it
/// and the broker binding it. Never one this test process was given before: a cluster's
/// brokers bind their ports only after all were chosen, so a port could otherwise come out
/// twice (it failed CI once: a broker's controller port was another's client port), and a
/// stopped cluster's ports may still be held while its brokers exit.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 20;
    let mut rng = super::Rng::new(seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed)));
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = rng.range(20_000, 32_000) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

impl Cluster {
    /// Starts `n` brokers (node ids 1..=n), all voters, with `extra` flags each.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_observers(n, 0, extra)
    }

    /// Starts `voters` voter brokers (node ids 1..=voters) and `observers` more brokers that
    /// are not in the quorum (they follow the voters' metadata).
    pub fn start_with_observers(voters: usize, observers: usize, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare(voters, observers, extra);
        for node in 1..=cluster.client_ports.len() as u32 {
            cluster.start_node(node);
        }
        cluster
    }

    /// Starts `n` voter brokers, each in its own network namespace (see `netns`): client
    /// port [`NETWORK_CLIENT_PORT`] and controller port [`NETWORK_CONTROLLER_PORT`] on every
    /// node's own address, so faults can cut one kind of traffic of one broker. Namespace
    /// `n + 1` runs no broker: it is for client processes ([`Cluster::client_namespace`]).
    pub fn start_in_network(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_in_network_in(n, extra, &[])
    }

    /// [`Cluster::start_in_network`] with node `i + 1`'s data directory inside `parents[i]`
    /// (e.g. its own small tmpfs), where given.
    pub fn start_in_network_in(n: usize, extra: &[&str], parents: &[&std::path::Path]) -> Cluster {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let network = super::netns::Network::create(n + 1);
        let hosts: Vec<String> = (1..=n).map(|node| network.address(node)).collect();
        let voters = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| format!("{}@{host}:{NETWORK_CONTROLLER_PORT}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            brokers: (0..n).map(|_| None).collect(),
            dirs: (0..n)
                .map(|i| match parents.get(i) {
                    Some(parent) => tempfile::tempdir_in(parent).expect("temp dir"),
                    None => tempfile::tempdir().expect("temp dir"),
                })
                .collect(),
            client_ports: vec![NETWORK_CLIENT_PORT; n],
            hosts,
            voters,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            network: Some(network),
            _turn: turn,
        };
        for node in 1..=n as u32 {
            cluster.start_node(node);
        }
        cluster
    }

    /// A cluster whose brokers are not started yet: see [`Cluster::start_node`].
    pub fn prepare(voters: usize, observers: usize, extra: &[&str]) -> Cluster {
        let n = voters + observers;
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let voters = (0..voters)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, free_port()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            hosts: vec!["127.0.0.1".to_string(); n],
            network: None,
            brokers: Vec::new(),
            dirs: (0..n)
                .map(|_| tempfile::tempdir().expect("temp dir"))
                .collect(),
            client_ports,
            voters,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _turn: turn,
        };
        cluster.brokers = (0..n).map(|_| None).collect();
        cluster
    }

    /// Starts node `node` (1-based), which must not be running.
    pub fn start_node(&mut self, node: u32) {
        assert!(
            self.brokers[node as usize - 1].is_none(),
            "node {node} runs"
        );
        let broker = self.spawn(node as usize - 1);
        self.brokers[node as usize - 1] = Some(broker);
    }

    fn spawn(&self, i: usize) -> BrokerProcess {
        let node_id = (i + 1).to_string();
        let heartbeat = HEARTBEAT_MS.to_string();
        let session = SESSION_TIMEOUT_MS.to_string();
        let lag = REPLICA_LAG_MAX_MS.to_string();
        let mut args: Vec<&str> = vec![
            "--node-id",
            &node_id,
            "--controller-voters",
            &self.voters,
            "--broker-heartbeat-interval-ms",
            &heartbeat,
            "--broker-session-timeout-ms",
            &session,
            "--replica-lag-max-ms",
            &lag,
            "--replica-fetch-wait-max-ms",
            "200",
        ];
        // A flag given in `extra` replaces the harness default of the same name.
        let overridden: Vec<usize> = (0..args.len())
            .step_by(2)
            .filter(|i| *i > 3 && self.extra.iter().any(|e| e == args[*i]))
            .collect();
        for i in overridden.into_iter().rev() {
            args.drain(i..i + 2);
        }
        // In a network, a fixed inter-broker port, so that faults can cut replication alone.
        let replication = self
            .network
            .as_ref()
            .map(|_| format!("{}:{NETWORK_REPLICATION_PORT}", self.hosts[i]));
        if let Some(address) = &replication {
            args.extend(["--replication-listen", address.as_str()]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let prefix = self
            .network
            .as_ref()
            .map(|network| network.exec_prefix(i + 1))
            .unwrap_or_default();
        BrokerProcess::start_with_prefix(
            &prefix,
            self.dirs[i].path(),
            &self.address(i as u32 + 1),
            &args,
        )
    }

    /// Client address of node `node` (1-based).
    pub fn address(&self, node: u32) -> String {
        let i = node as usize - 1;
        format!("{}:{}", self.hosts[i], self.client_ports[i])
    }

    /// The `--controller-voters` value the brokers were started with.
    pub fn voters(&self) -> &str {
        &self.voters
    }

    /// Controller (Raft) port address of voter `node` (1-based).
    pub fn controller_address(&self, node: u32) -> String {
        self.voters
            .split(',')
            .find_map(|v| v.strip_prefix(&format!("{node}@")))
            .expect("a voter")
            .to_string()
    }

    /// The command prefix that runs a client process in the namespace without a broker
    /// ([`Cluster::start_in_network`] only).
    pub fn client_namespace(&self) -> Vec<String> {
        self.network().exec_prefix(self.hosts.len() + 1)
    }

    /// The network the brokers run in ([`Cluster::start_in_network`] only).
    pub fn network(&self) -> &super::netns::Network {
        self.network
            .as_ref()
            .expect("a cluster started with Cluster::start_in_network")
    }

    /// Every broker's client address, comma-separated (a bootstrap list).
    pub fn bootstrap(&self) -> String {
        (1..=self.client_ports.len() as u32)
            .map(|n| self.address(n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Data directory of node `node`.
    pub fn data_dir(&self, node: u32) -> std::path::PathBuf {
        self.dirs[node as usize - 1].path().to_owned()
    }

    pub fn broker(&mut self, node: u32) -> &mut BrokerProcess {
        self.brokers[node as usize - 1]
            .as_mut()
            .expect("broker is running")
    }

    /// SIGKILL node `node`.
    pub fn kill(&mut self, node: u32) {
        if let Some(mut broker) = self.brokers[node as usize - 1].take() {
            broker.kill9();
        }
    }

    /// Deletes everything in node `node`'s data directory (it must be down): a lost disk.
    pub fn wipe(&mut self, node: u32) {
        assert!(
            self.brokers[node as usize - 1].is_none(),
            "node {node} runs"
        );
        let dir = self.data_dir(node);
        std::fs::remove_dir_all(&dir).expect("wipe data directory");
        std::fs::create_dir_all(&dir).expect("recreate data directory");
    }

    /// Restarts node `node` on its ports and data directory.
    pub fn restart(&mut self, node: u32) {
        self.kill(node);
        let broker = self.spawn(node as usize - 1);
        self.brokers[node as usize - 1] = Some(broker);
    }

    /// SIGSTOP (`pause = true`) or SIGCONT node `node`.
    pub fn signal_pause(&mut self, node: u32, pause: bool) {
        self.broker(node).signal_pause(pause);
    }

    /// A client bootstrapped with every broker, with retry timings for failover tests.
    pub async fn client(&self) -> rill_client::Client {
        self.client_with(None).await
    }

    /// [`Cluster::client`] over TLS with `tls`, when given.
    pub async fn client_with(&self, tls: Option<&rill_client::TlsOptions>) -> rill_client::Client {
        let with_tls = |config: rill_client::ClientConfig| match tls {
            Some(tls) => config.with_tls(tls).expect("TLS options"),
            None => config,
        };
        let mut config = with_tls(rill_client::ClientConfig::new(&self.bootstrap()));
        config.retry_timeout = Duration::from_secs(30);
        config.request_timeout = Duration::from_secs(5);
        config.retry_backoff_max = Duration::from_millis(200);
        let client = rill_client::Client::connect(config)
            .await
            .expect("connect to the cluster");
        let running: Vec<u32> = (1..=self.brokers.len() as u32)
            .filter(|n| self.brokers[*n as usize - 1].is_some())
            .collect();
        // Every running broker's own view: all running brokers registered and unfenced (a
        // broker with a lagging view would place new replicas on fewer brokers).
        for node in &running {
            let mut config = with_tls(rill_client::ClientConfig::new(&self.address(*node)));
            config.retry_timeout = Duration::from_secs(2);
            super::eventually_async(
                Duration::from_secs(30),
                "every running broker sees every running broker alive",
                || {
                    let config = config.clone();
                    let running = &running;
                    async move {
                        match rill_client::Client::connect(config).await {
                            Ok(view) => {
                                let metadata = view.metadata();
                                metadata.brokers.len() >= running.len()
                                    && running.iter().all(|n| !metadata.fenced.contains(n))
                            }
                            Err(_) => false,
                        }
                    }
                },
            )
            .await;
        }
        client
    }
}
