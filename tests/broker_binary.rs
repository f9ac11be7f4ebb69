//! The `rill-broker` binary as an operator runs it: starts on a data directory, recovers the logs
//! in it, keeps (and reports) a log whose topic the metadata does not know, refuses a second
//! broker on the same directory, keeps running on SIGHUP, and exits 0 on SIGTERM after closing
//! its logs cleanly.

mod common;

use std::time::Duration;

use common::{batch, BrokerProcess};
use rill_broker::log::{Log, LogConfig, RECOVERY_POINT_FILE};

#[test]
fn broker_recovers_logs_keeps_strays_refuses_a_second_broker_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    // A data directory of this format (see tests/e2e_data_dir.rs for the others).
    rill_broker::log::meta::check_or_init(data.path(), 1, None).unwrap();
    let mut log = Log::open(&data.path().join("orders-0"), LogConfig::default()).unwrap();
    for i in 0..5 {
        log.append(&batch(10, 100, i, 1), 0).unwrap();
    }
    drop(log); // not closed: the broker must recover it

    let mut broker = BrokerProcess::start(data.path(), &[]);
    let opened = broker.wait_for_line("opened partition log", Duration::from_secs(30));
    assert!(
        opened.contains("orders-0") && opened.contains("end=50"),
        "{opened}"
    );
    let stray = broker.wait_for_line("stray partition log", Duration::from_secs(30));
    assert!(
        stray.contains("orders-0"),
        "a log unknown to the metadata is reported, not deleted: {stray}"
    );
    assert!(data.path().join("orders-0").exists());

    let second = std::process::Command::new(common::broker_binary())
        .args([
            "--data-dir",
            data.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(
        !second.status.success(),
        "a second broker on the same directory exits with an error"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another rill-broker") && stderr.contains(".lock"),
        "{stderr}"
    );

    // SIGHUP (TLS reload) never stops a broker, with or without TLS listeners.
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    broker.wait_for_line("SIGHUP: nothing to reload", Duration::from_secs(20));
    assert!(broker.is_running(), "SIGHUP does not stop the broker");

    assert!(broker.terminate(), "exit code 0 after SIGTERM");
    let checkpoint =
        std::fs::read_to_string(data.path().join("orders-0").join(RECOVERY_POINT_FILE)).unwrap();
    assert_eq!(checkpoint.trim(), "1 0");
}
