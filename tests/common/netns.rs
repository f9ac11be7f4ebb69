//! Real network faults for end-to-end tests: each broker runs in its own Linux network
//! namespace with its own address on a bridge that this harness creates (in a hub namespace),
//! and the test process reaches every broker through one more veth pair into that bridge.
//! Faults are iptables DROP rules inside a broker's namespace (`cut_port`), so they cut only
//! what the test names while everything else keeps flowing.
//!
//! Needs root, `ip` (iproute2) and `iptables`; a missing tool is a failure that names it (the
//! README's test command installs them: `tests/install-test-tools.sh`). Addresses are in
//! 10.213.0.0/16, one /24 per network, only ever assigned inside namespaces made here.
//! Everything is removed on drop (also when the test panics), and a later run removes what a
//! killed run left behind (namespaces named after a process that no longer exists).

use std::process::Command;

/// Namespaces and links of one test network; see the module docs.
pub struct Network {
    /// `rill<pid>x<n>`: prefix of every namespace and the host-side link.
    tag: String,
    /// Third octet of the subnet 10.213.<subnet>.0/24.
    subnet: u8,
    nodes: usize,
}

/// Runs `program args` and panics with its output if it fails.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` ({e}): the network fault tests need iproute2 and iptables, as root; run tests/install-test-tools.sh")
        });
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Checks the tools are there (a clear failure otherwise, never a silent skip).
fn require_tools() {
    for (tool, args) in [("ip", ["-V"]), ("iptables", ["--version"])] {
        let ok = Command::new(tool)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "`{tool}` is missing: the network fault tests need iproute2 and iptables, as root; run tests/install-test-tools.sh"
        );
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "the network fault tests create network namespaces and must run as root"
    );
}

/// Removes namespaces (and their links) left by test processes that no longer exist.
fn remove_stale() {
    let list = run("ip", &["netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("rill")
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

impl Network {
    /// A bridge and `nodes` namespaces (node `i` at [`Network::address`]`(i)`), reachable from
    /// the test process.
    pub fn create(nodes: usize) -> Network {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_tools();
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let network = Network {
            tag: format!("rill{pid}x{n}"),
            subnet: ((pid.wrapping_mul(31).wrapping_add(n * 7)) % 250) as u8 + 1,
            nodes,
        };
        let hub = network.hub();
        run("ip", &["netns", "add", &hub]);
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        for node in 1..=nodes {
            let ns = network.namespace(node);
            let (inside, outside) = (format!("v{node}"), format!("p{node}"));
            run("ip", &["netns", "add", &ns]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            run(
                "ip",
                &[
                    "-n", &ns, "link", "add", &inside, "type", "veth", "peer", "name", &outside,
                    "netns", &hub,
                ],
            );
            run(
                "ip",
                &["-n", &hub, "link", "set", &outside, "master", "br0"],
            );
            run("ip", &["-n", &hub, "link", "set", &outside, "up"]);
            let address = format!("{}/24", network.address(node));
            run("ip", &["-n", &ns, "addr", "add", &address, "dev", &inside]);
            run("ip", &["-n", &ns, "link", "set", &inside, "up"]);
        }
        // The test process's own link into the bridge.
        let host = network.host_link();
        run(
            "ip",
            &[
                "link", "add", &host, "type", "veth", "peer", "name", "host", "netns", &hub,
            ],
        );
        run("ip", &["-n", &hub, "link", "set", "host", "master", "br0"]);
        run("ip", &["-n", &hub, "link", "set", "host", "up"]);
        let address = format!("10.213.{}.254/24", network.subnet);
        run("ip", &["addr", "add", &address, "dev", &host]);
        run("ip", &["link", "set", &host, "up"]);
        network
    }

    fn hub(&self) -> String {
        format!("{}hub", self.tag)
    }

    /// The namespace node `node` (1-based) runs in.
    pub fn namespace(&self, node: usize) -> String {
        format!("{}n{node}", self.tag)
    }

    /// Host-side link name (at most 15 characters).
    fn host_link(&self) -> String {
        let mut name = format!("rh{}", self.tag.trim_start_matches("rill"));
        name.truncate(15);
        name
    }

    /// Node `node`'s IP address.
    pub fn address(&self, node: usize) -> String {
        assert!((1..=self.nodes).contains(&node), "no node {node}");
        format!("10.213.{}.{node}", self.subnet)
    }

    /// The command prefix that runs a program inside node `node`'s namespace.
    pub fn exec_prefix(&self, node: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.namespace(node),
        ]
    }

    /// Drops every TCP packet to or from `port` in node `node`'s namespace, both directions:
    /// the node can neither reach that port on any other node nor be reached on its own.
    pub fn cut_port(&self, node: usize, port: u16) {
        let ns = self.namespace(node);
        let port = port.to_string();
        for (chain, direction) in [
            ("INPUT", "--dport"),
            ("INPUT", "--sport"),
            ("OUTPUT", "--dport"),
            ("OUTPUT", "--sport"),
        ] {
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "iptables", "-A", chain, "-p", "tcp", direction, &port,
                    "-j", "DROP",
                ],
            );
        }
    }

    /// The test process's own address on the network.
    pub fn host_address(&self) -> String {
        format!("10.213.{}.254", self.subnet)
    }

    /// Drops, in node `node`'s namespace, TCP traffic between the test process and `port` of
    /// that node (both directions): the test process's clients lose that broker's port while
    /// every other node still reaches it.
    pub fn cut_host(&self, node: usize, port: u16) {
        let ns = self.namespace(node);
        let (host, port) = (self.host_address(), port.to_string());
        for (chain, peer, direction) in [("INPUT", "-s", "--dport"), ("OUTPUT", "-d", "--sport")] {
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "iptables", "-A", chain, peer, &host, "-p", "tcp",
                    direction, &port, "-j", "DROP",
                ],
            );
        }
    }

    /// Drops, in node `to`'s namespace, every packet that comes from node `from`'s address: a
    /// one-way cut (what `from` sends is lost; `to` still sends, and TCP sees the same silence
    /// both ways for connections needing replies). Both `cut_from(a, b)` and `cut_from(b, a)`
    /// partition the two nodes. The test process still reaches both.
    pub fn cut_from(&self, to: usize, from: usize) {
        let ns = self.namespace(to);
        let from = self.address(from);
        run(
            "ip",
            &[
                "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &from, "-j", "DROP",
            ],
        );
    }

    /// Removes every rule `cut_port`, `cut_host` and `cut_from` added in node `node`'s namespace.
    pub fn heal(&self, node: usize) {
        let ns = self.namespace(node);
        run("ip", &["netns", "exec", &ns, "iptables", "-F"]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and so their peers.
        for node in 1..=self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(node)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link()])
            .output();
    }
}
