//! TLS on every listener (docs/SECURITY.md "TLS"), against real brokers: the Rust client, the
//! `rill` CLI, kcat (librdkafka) and an HTTPS client; untrusted certificates and missing
//! client certificates are refused; SIGHUP reloads the certificate; a three-broker cluster
//! replicates and runs its metadata quorum over mutual TLS; a client certificate is the
//! principal ACLs name.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::certs::{Ca, Identity};
use common::cluster::Cluster;
use common::{cli_binary, kcat, kcat_output, refused, BrokerProcess, Poll};
use rill_client::{Admin, Client, ClientConfig, ClientError, NewTopic, Record, TlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Broker flags for TLS on `listeners` with `identity`, trusting `ca` (if given).
fn tls_flags(listeners: &str, identity: &Identity, ca: Option<&Path>) -> Vec<String> {
    let mut flags = vec![
        "--tls-listeners".to_string(),
        listeners.to_string(),
        "--tls-cert-file".to_string(),
        path(&identity.cert).to_string(),
        "--tls-key-file".to_string(),
        path(&identity.key).to_string(),
    ];
    if let Some(ca) = ca {
        flags.extend(["--tls-ca-file".to_string(), path(ca).to_string()]);
    }
    flags
}

fn options(ca: &Path, identity: Option<&Identity>) -> TlsOptions {
    TlsOptions {
        ca_file: Some(ca.to_owned()),
        cert_file: identity.map(|i| i.cert.clone()),
        key_file: identity.map(|i| i.key.clone()),
    }
}

async fn connect(address: &str, tls: &TlsOptions) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(address).with_tls(tls)?;
    config.retry_timeout = Duration::from_secs(20);
    config.request_timeout = Duration::from_secs(10);
    Client::connect(config).await
}

/// `GET path` over HTTPS: the response text (status line first).
async fn https_get(address: &str, request_path: &str, tls: &TlsOptions) -> std::io::Result<String> {
    let config = tls.client_config().map_err(std::io::Error::other)?;
    let socket = tokio::net::TcpStream::connect(address).await?;
    let mut stream = rill_client::tls::connect(socket, address, config).await?;
    stream
        .write_all(
            format!("GET {request_path} HTTP/1.1\r\nHost: rill\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            // A server may close without TLS close_notify once the response is complete.
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Runs `rill` with `args` and `stdin`: its output.
fn rill(address: &str, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(cli_binary())
        .args(args)
        .env("RILL_BROKERS", address)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run rill");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to rill");
    child.wait_with_output().expect("rill runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_kafka_and_admin_listeners_speak_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let broker_identity = ca.issue("broker");
    let data = tempfile::tempdir().unwrap();
    let flags = tls_flags("client,kafka,admin", &broker_identity, None);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let broker = BrokerProcess::start(data.path(), &flags);
    let address = broker.address.clone();
    let trusted = options(&ca.file(), None);

    // The Rust client.
    let client = connect(&address, &trusted).await.expect("a TLS client");
    Admin::new(client.clone())
        .create_topic(NewTopic::new("secret", 1))
        .await
        .unwrap();
    common::produce_acked(
        &client,
        (0..10)
            .map(|i| Record::new("secret").value(format!("r{i}")))
            .collect(),
    )
    .await;

    // A client that trusts another CA is refused at once, with the reason, not after retries.
    let started = std::time::Instant::now();
    let refused = connect(&address, &options(&other.file(), None)).await;
    let err = refused
        .err()
        .expect("an untrusted certificate is refused")
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );

    // The CLI: --tls-ca, and without it a plain connection fails.
    let ca_file = ca.file();
    let produced = rill(
        &address,
        &["--tls-ca", path(&ca_file), "produce", "secret"],
        "from-cli\n",
    );
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumed = rill(
        &address,
        &[
            "--tls-ca",
            path(&ca_file),
            "consume",
            "secret",
            "--from-beginning",
            "--count",
            "11",
        ],
        "",
    );
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let values = String::from_utf8_lossy(&consumed.stdout).into_owned();
    assert!(
        values.contains("r0") && values.contains("from-cli"),
        "{values}"
    );
    let plain = std::process::Command::new(cli_binary())
        .args(["topic", "list"])
        .env("RILL_BROKERS", &address)
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "a plain client cannot use a TLS listener"
    );

    // kcat (librdkafka) on the Kafka listener.
    let kafka = broker.kafka_address.clone().expect("kafka listener");
    let ssl = [
        "-X",
        "security.protocol=ssl",
        "-X",
        &format!("ssl.ca.location={}", path(&ca_file)),
    ];
    let args: Vec<&str> = ["-b", &kafka, "-P", "-t", "secret", "-p", "0"]
        .into_iter()
        .chain(ssl.iter().copied())
        .collect();
    kcat(&args, "from-kcat\n");
    let args: Vec<&str> = [
        "-b",
        &kafka,
        "-C",
        "-t",
        "secret",
        "-p",
        "0",
        "-o",
        "beginning",
        "-e",
    ]
    .into_iter()
    .chain(ssl.iter().copied())
    .collect();
    let read = kcat(&args, "");
    assert!(read.contains("r9") && read.contains("from-kcat"), "{read}");
    let other_file = other.file();
    let untrusted = format!("ssl.ca.location={}", path(&other_file));
    let refused = kcat_output(
        &[
            "-b",
            &kafka,
            "-L",
            "-m",
            "5",
            "-X",
            "security.protocol=ssl",
            "-X",
            &untrusted,
        ],
        "",
    );
    assert!(
        !refused.status.success(),
        "kcat trusting another CA is refused"
    );

    // HTTPS on the admin listener.
    let admin = broker.admin_address.clone().expect("admin listener");
    let live = https_get(&admin, "/health/live", &trusted).await.unwrap();
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let metrics = https_get(&admin, "/metrics", &trusted).await.unwrap();
    assert!(
        metrics.contains("rill_tls_handshake_failures_total"),
        "{metrics}"
    );
    assert!(
        https_get(&admin, "/health/live", &options(&other.file(), None))
            .await
            .is_err(),
        "an HTTPS client trusting another CA is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_takes_only_clients_with_a_trusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let broker_identity = ca.issue("broker");
    let app = ca.issue("app");
    let impostor = other.issue("app");
    let data = tempfile::tempdir().unwrap();
    let mut flags = tls_flags("client,kafka", &broker_identity, Some(&ca.file()));
    flags.extend(["--tls-client-auth".into(), "client,kafka".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let broker = BrokerProcess::start(data.path(), &flags);
    let address = broker.address.clone();

    let client = connect(&address, &options(&ca.file(), Some(&app)))
        .await
        .expect("a client with a certificate from the trusted CA");
    Admin::new(client)
        .create_topic(NewTopic::new("mutual", 1))
        .await
        .unwrap();
    for (who, tls) in [
        ("no certificate", options(&ca.file(), None)),
        (
            "a certificate of another CA",
            options(&ca.file(), Some(&impostor)),
        ),
    ] {
        let refused = connect(&address, &tls).await;
        assert!(refused.is_err(), "a client with {who} is refused");
    }

    let kafka = broker.kafka_address.clone().expect("kafka listener");
    let ca_file = ca.file();
    let base = [
        "-b".to_string(),
        kafka,
        "-L".to_string(),
        "-m".to_string(),
        "5".to_string(),
        "-X".to_string(),
        "security.protocol=ssl".to_string(),
        "-X".to_string(),
        format!("ssl.ca.location={}", path(&ca_file)),
    ];
    let with_cert: Vec<String> = base
        .iter()
        .cloned()
        .chain([
            "-X".to_string(),
            format!("ssl.certificate.location={}", path(&app.cert)),
            "-X".to_string(),
            format!("ssl.key.location={}", path(&app.key)),
        ])
        .collect();
    let listed = kcat(
        &with_cert.iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    );
    assert!(listed.contains("mutual"), "{listed}");
    let without = kcat_output(&base.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert!(
        !without.status.success(),
        "kcat without a certificate is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new(dir.path(), "first");
    let second = Ca::new(dir.path(), "second");
    let old = first.issue("broker");
    let new = second.issue("broker");
    // The broker reads its certificate from files that are replaced in place.
    let live = Identity {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
    };
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let data = tempfile::tempdir().unwrap();
    let flags = tls_flags("client", &live, None);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut broker = BrokerProcess::start(data.path(), &flags);
    let address = broker.address.clone();
    let trusts_first = options(&first.file(), None);
    let trusts_second = options(&second.file(), None);
    let kept = connect(&address, &trusts_first)
        .await
        .expect("the first certificate");
    assert!(connect(&address, &trusts_second).await.is_err());

    // A broken file on SIGHUP keeps the certificate in use.
    std::fs::write(&live.key, "not a key").unwrap();
    let hangup = |pid: u32| {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    hangup(broker.pid());
    broker.wait_for_line(
        "reloading the TLS certificates failed",
        Duration::from_secs(20),
    );
    connect(&address, &trusts_first)
        .await
        .expect("still the first certificate");

    std::fs::copy(&new.cert, &live.cert).unwrap();
    std::fs::copy(&new.key, &live.key).unwrap();
    hangup(broker.pid());
    broker.wait_for_line("TLS certificates reloaded", Duration::from_secs(20));
    let mut poll = Poll::new(Duration::from_secs(20), "the new certificate");
    while connect(&address, &trusts_second).await.is_err() {
        poll.pause().await;
    }
    assert!(
        connect(&address, &trusts_first).await.is_err(),
        "the old one is gone"
    );
    // A connection opened before the reload keeps working.
    Admin::new(kept)
        .cluster()
        .await
        .expect("the old connection still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_and_keeps_its_quorum_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "cluster");
    // One certificate for the brokers (all on 127.0.0.1 here); each could have its own.
    let brokers = ca.issue("broker");
    let mut flags = tls_flags(
        "client,kafka,admin,replication,controller",
        &brokers,
        Some(&ca.file()),
    );
    flags.extend(["--tls-client-auth".into(), "replication,controller".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start(3, &flags);
    let client = cluster.client_with(Some(&options(&ca.file(), None))).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new("replicated", 1)
        })
        .await
        .unwrap();
    common::produce_acked(
        &client,
        (0..100)
            .map(|i| Record::new("replicated").value(format!("v{i}")))
            .collect(),
    )
    .await;
    let isr = common::eventually_value(Duration::from_secs(30), "an ISR of 3", || async {
        let p = admin
            .describe_topic("replicated")
            .await
            .ok()?
            .into_iter()
            .next()?;
        (p.isr.len() == 3).then_some(p.isr)
    })
    .await;
    assert_eq!(isr.len(), 3);
    let described = admin.cluster().await.unwrap();
    assert!(described.controller.is_some(), "{described:?}");
    assert!(described.brokers.iter().all(|b| !b.fenced), "{described:?}");

    // A plain connection to a controller port gets no answer (the handshake fails).
    let mut plain = tokio::net::TcpStream::connect(cluster.controller_address(1))
        .await
        .unwrap();
    let _ = plain.write_all(&[0, 0, 0, 4, 1, 2, 3, 4]).await;
    let mut buf = [0u8; 16];
    let answer = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut buf)).await;
    // Closed, at most after a TLS alert record (content type 21).
    assert!(
        matches!(answer, Ok(Ok(0)) | Ok(Err(_))) || matches!(answer, Ok(Ok(_)) if buf[0] == 21),
        "a plain connection is closed: {answer:?} {buf:?}"
    );
    // And a TLS one without a client certificate is refused.
    let tls = options(&ca.file(), None).client_config().unwrap();
    let address = cluster.controller_address(1);
    let socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let refused = async {
        let mut stream = rill_client::tls::connect(socket, &address, Arc::clone(&tls)).await?;
        // TLS 1.3: the server checks the client certificate after the client's handshake
        // ends; its refusal arrives on the first read.
        stream.write_all(&[0, 0, 0, 1, 0]).await?;
        let mut buf = [0u8; 1];
        stream.read_exact(&mut buf).await.map(|_| ())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .is_ok_and(|r| r.is_err()),
        "no client certificate, no controller port"
    );
}

#[test]
fn a_client_certificate_is_the_principal_acls_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let broker_identity = ca.issue("broker");
    let data = tempfile::tempdir().unwrap();
    let mut flags = tls_flags("client,kafka", &broker_identity, Some(&ca.file()));
    flags.extend(
        [
            "--tls-client-auth",
            "client,kafka",
            "--tls-principal",
            "cn",
            "--authorization",
            "true",
            "--super-users",
            "User:admin",
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let broker = BrokerProcess::start(data.path(), &flags);
    let address = broker.address.clone();
    let ca_file = ca.file();
    let identities: Vec<(&str, Identity)> = ["admin", "alice", "bob"]
        .into_iter()
        .map(|cn| (cn, ca.issue(cn)))
        .collect();
    // `rill` as the holder of certificate `cn`.
    let rill_as = |cn: &str, args: &[&str], stdin: &str| {
        let (_, identity) = identities.iter().find(|(name, _)| *name == cn).unwrap();
        let mut all = vec![
            "--tls-ca",
            path(&ca_file),
            "--tls-cert",
            path(&identity.cert),
            "--tls-key",
            path(&identity.key),
        ];
        all.extend_from_slice(args);
        rill(&address, &all, stdin)
    };
    let ok = |output: std::process::Output| {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // The super user (User:admin, its certificate's CN) sets up topics and alice's ACL.
    ok(rill_as("admin", &["topic", "create", "orders"], ""));
    ok(rill_as("admin", &["topic", "create", "payments"], ""));
    ok(rill_as(
        "admin",
        &[
            "acl",
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "write",
            "--topic",
            "orders",
        ],
        "",
    ));

    // alice may write orders and nothing else; bob may do nothing.
    ok(rill_as("alice", &["produce", "orders"], "from-alice\n"));
    refused(
        rill_as("alice", &["produce", "payments"], "x\n"),
        "TOPIC_AUTHORIZATION_FAILED",
    );
    let consume = [
        "consume",
        "orders",
        "--from-beginning",
        "--count",
        "1",
        "--timeout-ms",
        "5000",
    ];
    refused(rill_as("alice", &consume, ""), "TOPIC_AUTHORIZATION_FAILED");
    refused(
        rill_as("bob", &["produce", "orders"], "x\n"),
        "TOPIC_AUTHORIZATION_FAILED",
    );

    // The same certificate on the Kafka listener: kcat as alice writes orders, cannot read it.
    let kafka = broker.kafka_address.clone().expect("kafka listener");
    let (_, alice) = &identities[1];
    let ssl = [
        "-X".to_string(),
        "security.protocol=ssl".into(),
        "-X".into(),
        format!("ssl.ca.location={}", path(&ca_file)),
        "-X".into(),
        format!("ssl.certificate.location={}", path(&alice.cert)),
        "-X".into(),
        format!("ssl.key.location={}", path(&alice.key)),
    ];
    let with_ssl = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(ssl.iter().cloned())
            .collect()
    };
    let args = with_ssl(&["-b", &kafka, "-P", "-t", "orders", "-p", "0"]);
    kcat(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "from-kcat\n",
    );
    let args = with_ssl(&["-b", &kafka, "-C", "-t", "orders", "-o", "beginning", "-e"]);
    let read = kcat_output(&args.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert!(!read.status.success());
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("Topic authorization failed"),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );

    // What alice wrote, read by the super user.
    let read = ok(rill_as(
        "admin",
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--count",
            "2",
            "--timeout-ms",
            "10000",
        ],
        "",
    ));
    assert!(
        read.contains("from-alice") && read.contains("from-kcat"),
        "{read}"
    );
}
