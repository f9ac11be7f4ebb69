//! The nemesis: a fault schedule drawn from a seed, and the faults themselves, applied to a
//! cluster whose brokers each run in their own network namespace (`common::netns`) with their
//! data directory on their own small tmpfs (`common::tmpfs`).
//!
//! The same seed gives the same schedule: the same kinds, in the same order, at the same times,
//! with the same target picks. A target that depends on the cluster (the controller leader, a
//! partition's leader) is resolved when the fault is applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::cluster::Cluster;
use crate::common::tmpfs::Tmpfs;
use crate::common::Rng;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// One broker cut off from every other broker (clients still reach it).
    PartitionMinority,
    /// The active controller cut off from the majority (clients still reach it).
    IsolateController,
    /// A partition leader cut off from the other brokers while clients still reach it: a
    /// split brain that must not acknowledge `acks=all`.
    IsolateLeader,
    /// What one broker sends to another is lost; the other way still flows.
    OneWay,
    /// One broker's links to the others go down and up every few hundred milliseconds.
    Flap,
    /// SIGKILL, restarted at the heal.
    Kill,
    /// SIGSTOP, SIGCONT at the heal.
    Pause,
    /// The broker's data directory's filesystem filled to the last byte, freed at the heal.
    DiskFull,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::PartitionMinority,
        Kind::IsolateController,
        Kind::IsolateLeader,
        Kind::OneWay,
        Kind::Flap,
        Kind::Kill,
        Kind::Pause,
        Kind::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::PartitionMinority => "partition-minority",
            Kind::IsolateController => "isolate-controller",
            Kind::IsolateLeader => "isolate-leader",
            Kind::OneWay => "one-way",
            Kind::Flap => "flap",
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::DiskFull => "disk-full",
        }
    }
}

/// One step of a schedule: after `quiet` with no fault, apply `faults` together (one, or a
/// combination of two), hold them for `hold`, then heal them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub quiet: Duration,
    pub hold: Duration,
    /// Each fault with its target pick (a number the target is chosen by).
    pub faults: Vec<(Kind, u64)>,
}

/// The schedule for `seed` filling `run`: quiet gaps of 1-4 s, faults held 2-8 s, about one
/// step in four a combination of two faults.
pub fn schedule(seed: u64, run: Duration) -> Vec<Step> {
    let mut rng = Rng::new(seed ^ 0x6e65_6d65_7369_7321);
    let mut steps = Vec::new();
    let mut at = Duration::ZERO;
    loop {
        let quiet = Duration::from_millis(rng.range(1_000, 4_000));
        let hold = Duration::from_millis(rng.range(2_000, 8_000));
        if at + quiet + hold > run {
            return steps;
        }
        at += quiet + hold;
        let pick = |rng: &mut Rng| Kind::ALL[rng.range(0, Kind::ALL.len() as u64) as usize];
        let first = pick(&mut rng);
        let mut faults = vec![(first, rng.next_u64())];
        if rng.range(0, 4) == 0 {
            // A second fault of another kind; flapping flushes its broker's rules, so it
            // runs alone.
            let second = pick(&mut rng);
            if second != first && first != Kind::Flap && second != Kind::Flap {
                faults.push((second, rng.next_u64()));
            }
        }
        steps.push(Step {
            quiet,
            hold,
            faults,
        });
    }
}

/// A fault in force, with what undoes it.
enum Active {
    /// iptables rules in these nodes' namespaces.
    Cut(Vec<usize>),
    Flap {
        node: usize,
        stop: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<()>,
    },
    Killed(u32),
    Paused(u32),
    Filled(usize),
}

/// Applies and heals faults on one cluster.
pub struct Nemesis {
    nodes: usize,
    active: Vec<Active>,
    /// Faults applied, by kind.
    pub applied: std::collections::BTreeMap<&'static str, u64>,
}

impl Nemesis {
    pub fn new(nodes: usize) -> Nemesis {
        Nemesis {
            nodes,
            active: Vec::new(),
            applied: Default::default(),
        }
    }

    /// Nodes that a fault in force stopped or killed (the harness leaves their absence alone).
    pub fn down(&self) -> Vec<u32> {
        self.active
            .iter()
            .filter_map(|a| match a {
                Active::Killed(n) | Active::Paused(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// Applies `kind` with target pick `pick`; returns a description of what it did, or `None`
    /// if the fault does not apply now (e.g. its target is already stopped by another fault).
    /// `controller` is the active controller and `leader` the leader of the partition the pick
    /// names, as the cluster said just before.
    pub fn apply(
        &mut self,
        cluster: &mut Cluster,
        disks: &[Tmpfs],
        kind: Kind,
        pick: u64,
        controller: Option<u32>,
        leader: Option<u32>,
    ) -> Option<String> {
        let n = self.nodes;
        let node = (pick % n as u64) as usize + 1;
        let other = |node: usize| (node + (pick / 7 % (n as u64 - 1)) as usize) % n + 1;
        let down = self.down();
        let description = match kind {
            Kind::PartitionMinority | Kind::IsolateController | Kind::IsolateLeader => {
                let target = match kind {
                    Kind::PartitionMinority => node,
                    Kind::IsolateController => controller? as usize,
                    _ => leader? as usize,
                };
                self.isolate(cluster, target);
                format!("node {target} cut off from the other brokers")
            }
            Kind::OneWay => {
                let to = other(node);
                cluster.network().cut_from(to, node);
                self.active.push(Active::Cut(vec![to]));
                format!("node {node} -> node {to} dropped (one way)")
            }
            Kind::Flap => {
                let stop = Arc::new(AtomicBool::new(false));
                let network = NetworkHandle::of(cluster);
                let thread = {
                    let stop = stop.clone();
                    let mut rng = Rng::new(pick);
                    std::thread::spawn(move || {
                        let mut cut = false;
                        while !stop.load(Ordering::Relaxed) {
                            if cut {
                                network.heal_all();
                            } else {
                                network.isolate(node);
                            }
                            cut = !cut;
                            std::thread::sleep(Duration::from_millis(rng.range(200, 800)));
                        }
                        network.heal_all();
                    })
                };
                self.active.push(Active::Flap { node, stop, thread });
                format!("node {node}'s links flapping")
            }
            Kind::Kill => {
                if down.contains(&(node as u32)) {
                    return None;
                }
                cluster.kill(node as u32);
                self.active.push(Active::Killed(node as u32));
                format!("node {node} killed (SIGKILL)")
            }
            Kind::Pause => {
                if down.contains(&(node as u32)) {
                    return None;
                }
                cluster.signal_pause(node as u32, true);
                self.active.push(Active::Paused(node as u32));
                format!("node {node} paused (SIGSTOP)")
            }
            Kind::DiskFull => {
                disks[node - 1].fill();
                self.active.push(Active::Filled(node));
                format!("node {node}'s disk full")
            }
        };
        *self.applied.entry(kind.name()).or_default() += 1;
        Some(description)
    }

    /// Cuts `node` off from every other broker, both ways.
    fn isolate(&mut self, cluster: &Cluster, node: usize) {
        NetworkHandle::of(cluster).isolate(node);
        self.active.push(Active::Cut((1..=self.nodes).collect()));
    }

    /// Undoes every fault in force; returns what it did.
    pub fn heal(&mut self, cluster: &mut Cluster, disks: &[Tmpfs]) -> Vec<String> {
        let mut done = Vec::new();
        for active in self.active.drain(..) {
            match active {
                Active::Cut(nodes) => {
                    for node in nodes {
                        cluster.network().heal(node);
                    }
                    done.push("links healed".to_string());
                }
                Active::Flap { node, stop, thread } => {
                    stop.store(true, Ordering::Relaxed);
                    let _ = thread.join();
                    done.push(format!("node {node}'s links steady"));
                }
                Active::Killed(node) => {
                    cluster.start_node(node);
                    done.push(format!("node {node} restarted"));
                }
                Active::Paused(node) => {
                    cluster.signal_pause(node, false);
                    done.push(format!("node {node} resumed (SIGCONT)"));
                }
                Active::Filled(node) => {
                    disks[node - 1].free();
                    done.push(format!("node {node}'s disk freed"));
                }
            }
        }
        done
    }
}

/// What the flapping thread needs of the network: namespace names and addresses, without
/// borrowing the cluster.
#[derive(Clone)]
struct NetworkHandle {
    namespaces: Vec<String>,
    addresses: Vec<String>,
}

impl NetworkHandle {
    fn of(cluster: &Cluster) -> NetworkHandle {
        let network = cluster.network();
        let nodes = cluster.brokers.len();
        NetworkHandle {
            namespaces: (1..=nodes).map(|n| network.namespace(n)).collect(),
            addresses: (1..=nodes).map(|n| network.address(n)).collect(),
        }
    }

    /// Drops every packet between `node` and every other broker (rules in every namespace, so
    /// each side sees the other go silent).
    fn isolate(&self, node: usize) {
        for other in 1..=self.namespaces.len() {
            if other == node {
                continue;
            }
            self.drop_from(other, node);
            self.drop_from(node, other);
        }
    }

    fn drop_from(&self, to: usize, from: usize) {
        iptables(
            &self.namespaces[to - 1],
            &["-A", "INPUT", "-s", &self.addresses[from - 1], "-j", "DROP"],
        );
    }

    /// Removes the rules of every namespace (`isolate` touches them all).
    fn heal_all(&self) {
        for ns in &self.namespaces {
            iptables(ns, &["-F"]);
        }
    }
}

fn iptables(namespace: &str, args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", namespace, "iptables"])
        .args(args)
        .status()
        .expect("run iptables in a namespace");
    assert!(status.success(), "iptables {args:?} in {namespace} failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let run = Duration::from_secs(300);
        assert_eq!(schedule(42, run), schedule(42, run));
        assert_ne!(schedule(42, run), schedule(43, run));
        let steps = schedule(42, run);
        let total: Duration = steps.iter().map(|s| s.quiet + s.hold).sum();
        assert!(total <= run);
        assert!(steps.len() > 20, "a five-minute schedule has many steps");
        // Over a long schedule every kind turns up.
        let kinds: std::collections::BTreeSet<Kind> = schedule(7, Duration::from_secs(3600))
            .iter()
            .flat_map(|s| s.faults.iter().map(|f| f.0))
            .collect();
        assert_eq!(kinds.len(), Kind::ALL.len());
    }
}
