//! The `rill-broker` binary as an operator runs it: starts on a data directory, recovers the logs
//! in it, refuses a second broker on the same directory, and exits 0 on SIGTERM after closing
//! its logs cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{batch, broker_binary};
use rill_broker::log::{Log, LogConfig, RECOVERY_POINT_FILE};

/// Starts the broker and returns it with a channel of its stderr lines.
fn start(data_dir: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(broker_binary())
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--log-level",
            "info",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line containing {needle:?}: {e}"),
        }
    }
}

#[test]
fn broker_recovers_existing_logs_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut log = Log::open(&data.path().join("orders-0"), LogConfig::default()).unwrap();
    for i in 0..5 {
        log.append(&batch(10, 100, i, 1), 0).unwrap();
    }
    drop(log); // not closed: the broker must recover it

    let (mut broker, lines) = start(data.path());
    let opened = wait_for_line(&lines, "opened partition log");
    assert!(
        opened.contains("orders-0") && opened.contains("end=50"),
        "{opened}"
    );
    wait_for_line(&lines, "storage ready");

    let (mut second, second_lines) = start(data.path());
    let refused = wait_for_line(&second_lines, "another rill-broker");
    assert!(refused.contains(".lock"), "{refused}");
    assert!(
        !second.wait().unwrap().success(),
        "a second broker on the same directory exits with an error"
    );

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&broker),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    wait_for_line(&lines, "stopped cleanly");
    assert!(
        broker.wait().unwrap().success(),
        "exit code 0 after SIGTERM"
    );
    let checkpoint =
        std::fs::read_to_string(data.path().join("orders-0").join(RECOVERY_POINT_FILE)).unwrap();
    assert_eq!(checkpoint.trim(), "1 0");
}
