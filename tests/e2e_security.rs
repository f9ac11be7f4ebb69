//! Users and ACLs against real brokers (docs/SECURITY.md "Users", "ACLs"): SCRAM and PLAIN on
//! the native and Kafka listeners (the Rust client, the `rill` CLI, kcat), a wrong password
//! refused, users managed with `rill user`, and ACLs enforced for both protocols.

mod common;

use std::time::Duration;

use common::{cli_binary, kcat_output, refused, BrokerProcess};
use rill_client::{Admin, Client, ClientConfig, ClientError, NewTopic, Record, SaslOptions};

const ADMIN_PASSWORD: &str = "admin-secret";

/// A broker whose client and Kafka listeners require SASL, with the bootstrap user `admin`
/// and `extra` flags.
fn secure_broker(data: &std::path::Path, extra: &[&str]) -> BrokerProcess {
    let config = data.with_extension("toml");
    std::fs::write(
        &config,
        format!("sasl_bootstrap_password = \"{ADMIN_PASSWORD}\"\n"),
    )
    .unwrap();
    let mut flags = vec![
        "--config",
        config.to_str().unwrap(),
        "--sasl-listeners",
        "client,kafka",
        "--sasl-bootstrap-user",
        "admin",
    ];
    flags.extend_from_slice(extra);
    let mut broker = BrokerProcess::start(data, &flags);
    broker.wait_for_line("created the bootstrap user", Duration::from_secs(30));
    broker
}

async fn connect_as(
    address: &str,
    mechanism: &str,
    user: &str,
    password: &str,
) -> Result<Client, ClientError> {
    let mut config =
        ClientConfig::new(address).with_sasl(SaslOptions::new(mechanism, user, password).unwrap());
    config.retry_timeout = Duration::from_secs(20);
    config.request_timeout = Duration::from_secs(10);
    Client::connect(config).await
}

/// Runs `rill` with SASL as `user`/`password` and the environment `env`: its output.
fn rill_as(
    address: &str,
    user: &str,
    password: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    std::process::Command::new(cli_binary())
        .args(args)
        .env("RILL_BROKERS", address)
        .env("RILL_SASL_USER", user)
        .env("RILL_SASL_PASSWORD", password)
        .envs(env.iter().copied())
        .output()
        .expect("run rill")
}

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn kafka_sasl<'a>(mechanism: &'a str, user: &'a str, password: &'a str) -> Vec<String> {
    vec![
        "-X".into(),
        "security.protocol=sasl_plaintext".into(),
        "-X".into(),
        format!("sasl.mechanisms={mechanism}"),
        "-X".into(),
        format!("sasl.username={user}"),
        "-X".into(),
        format!("sasl.password={password}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_and_plain_authenticate_on_both_protocols_and_wrong_passwords_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let broker = secure_broker(data.path(), &[]);
    let address = broker.address.clone();
    let kafka = broker.kafka_address.clone().expect("kafka listener");

    // Without credentials, nothing but the handshake is served.
    let mut config = ClientConfig::new(&address);
    config.retry_timeout = Duration::from_secs(5);
    let refused = Client::connect(config).await.err().expect("refused");
    assert!(
        refused.to_string().contains("ILLEGAL_SASL_STATE"),
        "{refused}"
    );

    // The bootstrap user creates users with the CLI; the password never is an argument.
    ok(rill_as(
        &address,
        "admin",
        ADMIN_PASSWORD,
        &["user", "create", "alice"],
        &[("RILL_USER_PASSWORD", "alice-pw")],
    ));
    let listed = ok(rill_as(
        &address,
        "admin",
        ADMIN_PASSWORD,
        &["user", "list", "--format", "json"],
        &[],
    ));
    let users: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "alice"]);
    assert!(
        !broker
            .log
            .iter()
            .any(|l| l.contains("alice-pw") || l.contains(ADMIN_PASSWORD)),
        "a password was logged"
    );

    // Every mechanism works with the right password on the native listener...
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        let client = connect_as(&address, mechanism, "alice", "alice-pw")
            .await
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        if mechanism == "SCRAM-SHA-256" {
            Admin::new(client.clone())
                .create_topic(NewTopic::new("orders", 1))
                .await
                .unwrap();
        }
        common::produce_acked(&client, vec![Record::new("orders").value(mechanism)]).await;
        // ... and is refused with a wrong one, without retrying.
        let started = std::time::Instant::now();
        let wrong = connect_as(&address, mechanism, "alice", "wrong")
            .await
            .err()
            .expect("a wrong password is refused");
        assert!(
            matches!(wrong, ClientError::Authentication { .. }),
            "{mechanism}: {wrong:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let unknown = connect_as(&address, mechanism, "mallory", "alice-pw")
            .await
            .err()
            .expect("an unknown user is refused");
        assert_eq!(
            unknown.to_string().replace("mallory", "alice"),
            wrong.to_string(),
            "the refusal does not say whether the user exists"
        );
    }

    // ... and on the Kafka listener (librdkafka).
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        let mut args: Vec<String> = vec!["-b".into(), kafka.clone(), "-C".into(), "-t".into()];
        args.extend([
            "orders".into(),
            "-e".into(),
            "-o".into(),
            "beginning".into(),
        ]);
        args.extend(kafka_sasl(mechanism, "alice", "alice-pw"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = kcat_output(&refs, "");
        assert!(
            output.status.success(),
            "{mechanism}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let read = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            read.lines().collect::<Vec<_>>(),
            ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"],
            "{mechanism}"
        );

        let mut args: Vec<String> = vec!["-b".into(), kafka.clone(), "-L".into()];
        args.extend(["-m".into(), "2".into()]);
        args.extend(kafka_sasl(mechanism, "alice", "wrong"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = kcat_output(&refs, "");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{mechanism}: a wrong password is refused"
        );
        assert!(
            stderr.contains("Authentication failed")
                || stderr.contains("SASL authentication error"),
            "{mechanism}: {stderr}"
        );
    }

    // A deleted user cannot log in any more.
    ok(rill_as(
        &address,
        "admin",
        ADMIN_PASSWORD,
        &["user", "delete", "alice"],
        &[],
    ));
    assert!(matches!(
        connect_as(&address, "SCRAM-SHA-512", "alice", "alice-pw").await,
        Err(ClientError::Authentication { .. })
    ));

    let metrics = common::scrape_metrics(broker.admin_address.as_deref().unwrap());
    let failed: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("rill_authentications_total") && k.contains("failed"))
        .map(|(_, v)| v)
        .sum();
    assert!(failed >= 9.0, "failed authentications counted: {failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_allow_only_what_they_name_deny_wins_and_super_users_do_everything() {
    let data = tempfile::tempdir().unwrap();
    let broker = secure_broker(
        data.path(),
        &["--authorization", "true", "--super-users", "User:admin"],
    );
    let address = broker.address.clone();
    let kafka = broker.kafka_address.clone().expect("kafka listener");
    let admin = |args: &[&str]| ok(rill_as(&address, "admin", ADMIN_PASSWORD, args, &[]));
    for user in ["alice", "bob"] {
        let password = format!("{user}-pw");
        ok(rill_as(
            &address,
            "admin",
            ADMIN_PASSWORD,
            &["user", "create", user],
            &[("RILL_USER_PASSWORD", password.as_str())],
        ));
    }
    for topic in ["orders", "payments", "team-a.events"] {
        admin(&["topic", "create", topic]);
    }
    admin(&[
        "acl",
        "add",
        "--principal",
        "User:alice",
        "--operation",
        "write",
        "--topic",
        "orders",
    ]);
    let alice = |args: &[&str]| rill_as(&address, "alice", "alice-pw", args, &[]);
    let produce_as = |user: &str, topic: &str| {
        let mut child = std::process::Command::new(cli_binary())
            .args(["produce", topic])
            .env("RILL_BROKERS", &address)
            .env("RILL_SASL_USER", user)
            .env("RILL_SASL_PASSWORD", format!("{user}-pw"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
        child.wait_with_output().unwrap()
    };

    // Alice may write orders, and nothing else.
    ok(produce_as("alice", "orders"));
    refused(
        produce_as("alice", "payments"),
        "TOPIC_AUTHORIZATION_FAILED",
    );
    refused(
        produce_as("alice", "__consumer_offsets"),
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
    refused(alice(&consume), "TOPIC_AUTHORIZATION_FAILED");
    refused(
        alice(&["topic", "delete", "orders"]),
        "TOPIC_AUTHORIZATION_FAILED",
    );
    refused(
        alice(&[
            "group",
            "reset-offsets",
            "g1",
            "--topic",
            "orders",
            "--to-earliest",
        ]),
        "GROUP_AUTHORIZATION_FAILED",
    );
    assert_eq!(
        ok(alice(&["topic", "list"])).trim(),
        "orders",
        "only what alice may describe"
    );
    // The same on the Kafka listener: kcat may write orders, not read it.
    let mut args: Vec<String> = vec!["-b".into(), kafka.clone(), "-C".into(), "-t".into()];
    args.extend([
        "orders".into(),
        "-e".into(),
        "-o".into(),
        "beginning".into(),
    ]);
    args.extend(kafka_sasl("SCRAM-SHA-512", "alice", "alice-pw"));
    let output = kcat_output(&args.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Topic authorization failed"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Prefixed ACLs: bob reads and writes every team-a. topic, with team-a. groups.
    for (operation, resource) in [
        ("read", "--topic"),
        ("write", "--topic"),
        ("read", "--group"),
    ] {
        admin(&[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--operation",
            operation,
            resource,
            "team-a.",
            "--prefixed",
        ]);
    }
    ok(produce_as("bob", "team-a.events"));
    let read = ok(rill_as(
        &address,
        "bob",
        "bob-pw",
        &[
            "consume",
            "team-a.events",
            "--group",
            "team-a.readers",
            "--from-beginning",
            "--count",
            "1",
        ],
        &[],
    ));
    assert_eq!(read.trim(), "hello");
    refused(produce_as("bob", "orders"), "TOPIC_AUTHORIZATION_FAILED");

    // Deny wins: everyone may read orders, except bob.
    admin(&[
        "acl",
        "add",
        "--principal",
        "User:*",
        "--operation",
        "read",
        "--topic",
        "orders",
    ]);
    admin(&[
        "acl",
        "add",
        "--principal",
        "User:bob",
        "--operation",
        "read",
        "--topic",
        "orders",
        "--deny",
    ]);
    assert_eq!(ok(alice(&consume)).trim(), "hello");
    refused(
        rill_as(&address, "bob", "bob-pw", &consume, &[]),
        "TOPIC_AUTHORIZATION_FAILED",
    );
    // Only the super user manages ACLs; removing them takes the rights back.
    refused(alice(&["acl", "list"]), "CLUSTER_AUTHORIZATION_FAILED");
    admin(&["acl", "remove", "--principal", "User:*"]);
    refused(alice(&consume), "TOPIC_AUTHORIZATION_FAILED");

    let mut broker = broker;
    broker.wait_for_line("denied principal=User:alice", Duration::from_secs(10));
    let metrics = common::scrape_metrics(broker.admin_address.as_deref().unwrap());
    let denied: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("rill_authorization_denied_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(denied >= 8.0, "refusals counted: {denied}");
}
