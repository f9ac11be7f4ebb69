//! The web console (`/` on the admin listener) in headless Chromium (Debian's `chromium`,
//! installed by tests/install-test-tools.sh), against a real three-broker cluster: every page
//! loads without a JavaScript error, the topic page shows what `rill topic describe` shows,
//! the group page the lag `rill group describe` shows, a killed broker shows as down.
//! Screenshots of each page go to `target/tmp/console/` (Cargo's CARGO_TARGET_TMPDIR).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::Cluster;
use common::rill_json;
use rill_client::{Admin, NewTopic, Record};
use serde_json::Value;

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`), letting
/// the page's timers and fetches run for up to `budget_ms` of virtual time: stdout and stderr.
fn chromium(url: &str, mode: &str, budget_ms: u32) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("timeout")
        .args([
            "90",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(mode)
        .arg(url)
        .output()
        .expect("run timeout(1)");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "chromium failed ({}): run `bash tests/install-test-tools.sh` (Debian package chromium)\n{stderr}",
        output.status
    );
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

/// The page at `#/route` once rendered: its DOM, asserted free of JavaScript errors.
fn page(admin: &str, route: &str) -> String {
    let url = format!("http://{admin}/#/{route}");
    let (dom, stderr) = chromium(&url, "--dump-dom", 4000);
    assert!(!dom.contains("class=\"js-error\""), "{url}: {dom}");
    for line in stderr.lines() {
        assert!(
            !(line.contains("CONSOLE") && (line.contains("Uncaught") || line.contains("Error"))),
            "{url}: {line}"
        );
    }
    dom
}

/// A page that rendered (`data-state="ready"`) as `page`.
fn ready_page(admin: &str, route: &str, name: &str) -> String {
    let dom = page(admin, route);
    assert!(
        dom.contains("data-state=\"ready\"") && dom.contains(&format!("data-page=\"{name}\"")),
        "#/{route} did not render: {dom}"
    );
    dom
}

/// Where screenshots go: kept with the test run's output.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn screenshot(admin: &str, route: &str, name: &str) -> PathBuf {
    let path = screenshot_dir().join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    chromium(
        &format!("http://{admin}/#/{route}"),
        &format!("--screenshot={}", path.display()),
        4000,
    );
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        path.display()
    );
    path
}

/// The text of an element's content, tags removed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&").trim().to_string()
}

/// The cells (`data-k` -> text) of each row (`data-row`) of table `name` in `dom`.
fn table(dom: &str, name: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let start = dom
        .find(&format!("data-table=\"{name}\""))
        .unwrap_or_else(|| panic!("no table {name} in {dom}"));
    let end = start + dom[start..].find("</table>").unwrap();
    let mut rows = BTreeMap::new();
    for row in dom[start..end].split("<tr ").skip(1) {
        let Some(key) = row
            .split_once("data-row=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(k, _)| k.to_string())
        else {
            continue;
        };
        let mut cells = BTreeMap::new();
        for cell in row.split("<td ").skip(1) {
            let Some((_, rest)) = cell.split_once("data-k=\"") else {
                continue;
            };
            let (k, rest) = rest.split_once('"').unwrap();
            let content = rest.split_once('>').unwrap().1;
            let content = content.rsplit_once("</td>").map_or(content, |(c, _)| c);
            cells.insert(k.to_string(), text(content));
        }
        rows.insert(key, cells);
    }
    rows
}

/// A JSON value as the console prints it unformatted (`null` for a missing leader).
fn shown(value: &Value) -> String {
    value.to_string()
}

fn joined(list: &Value) -> String {
    let items: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    if items.is_empty() {
        "—".into()
    } else {
        items.join(", ")
    }
}

/// The numbers as the console prints them (en-US grouping).
fn grouped(n: &Value) -> String {
    match n.as_u64() {
        None => "—".into(),
        Some(n) => {
            let digits = n.to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_what_the_cli_shows_and_a_dead_broker_as_down() {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new("shown", 3)
        })
        .await
        .unwrap();
    let records = (0..1500)
        .map(|i| {
            Record::new("shown")
                .key(format!("k{i}"))
                .value(format!("{{\"n\":{i}}}"))
        })
        .collect();
    common::produce_acked(&client, records).await;
    let committed: BTreeMap<(String, u32), u64> = (0..3)
        .map(|p| (("shown".to_string(), p), 100 * u64::from(p)))
        .collect();
    admin
        .reset_group_offsets("viewers", &committed)
        .await
        .unwrap();
    let http = cluster.broker(1).admin_address.clone().unwrap();
    let bootstrap = cluster.bootstrap();

    // Every page renders with no JavaScript error; each one's screenshot is kept.
    let pages = [
        ("", "overview"),
        ("topics", "topics"),
        ("topics/shown", "topic"),
        ("topics/shown/partitions/1/records", "records"),
        ("groups", "groups"),
        ("groups/viewers", "group"),
    ];
    for (route, name) in pages {
        ready_page(&http, route, name);
        screenshot(&http, route, name);
    }

    // The topic page: the partitions, leaders, ISR and high watermarks of `rill topic describe`
    // (polled until a quiet moment: followers may still be catching up after the produce).
    common::eventually(
        Duration::from_secs(60),
        "topic page = rill topic describe",
        || {
            let rows = table(&ready_page(&http, "topics/shown", "topic"), "partitions");
            let cli = rill_json(&bootstrap, &["topic", "describe", "shown"]);
            let partitions = cli["partitions"].as_array().unwrap();
            rows.len() == partitions.len()
                && partitions.iter().all(|p| {
                    let row = &rows[&p["partition"].to_string()];
                    row["leader"] == shown(&p["leader"])
                        && row["leader_epoch"] == shown(&p["leader_epoch"])
                        && row["replicas"] == joined(&p["replicas"])
                        && row["isr"] == joined(&p["isr"])
                        && row["earliest_offset"] == grouped(&p["earliest_offset"])
                        && row["latest_offset"] == grouped(&p["latest_offset"])
                        && row["log_end_offset"] == grouped(&p["log_end_offset"])
                        && row["segments"] == grouped(&p["segments"])
                })
        },
    );

    // The group page: the lag of `rill group describe`, partition by partition.
    let cli = rill_json(&bootstrap, &["group", "describe", "viewers"]);
    let dom = ready_page(&http, "groups/viewers", "group");
    let rows = table(&dom, "lag");
    let partitions = cli["partitions"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for p in partitions {
        let row = &rows[&format!("shown-{}", p["partition"])];
        assert_eq!(row["lag"], grouped(&p["lag"]), "{row:?} vs {p}");
        assert_eq!(row["committed"], grouped(&p["committed"]), "{row:?} vs {p}");
        assert_eq!(row["log_end"], grouped(&p["log_end"]), "{row:?} vs {p}");
    }
    assert_eq!(cli["total_lag"], 1500 - 300);
    assert!(dom.contains(&format!(
        "data-card=\"total_lag\"><div class=\"label\">Total lag</div><div class=\"value\">{}</div>",
        grouped(&cli["total_lag"])
    )));

    // The record browser shows the records in offset order from where it is asked.
    let rows = table(
        &ready_page(&http, "topics/shown/partitions/1/records", "records"),
        "records",
    );
    assert_eq!(rows.len(), 50);
    assert!(rows.contains_key("0") && rows.contains_key("49"));

    // Empty and error states are pages too, not blanks.
    let dom = ready_page(&http, "topics/no-such-topic", "topic");
    assert!(
        dom.contains("data-empty") && dom.contains("does not exist"),
        "{dom}"
    );
    let dom = ready_page(&http, "groups/no-such-group", "group");
    assert!(
        dom.contains("data-empty") && dom.contains("does not exist"),
        "{dom}"
    );
    let dom = ready_page(&http, "nowhere", "not-found");
    assert!(dom.contains("data-empty"), "{dom}");

    // A broker killed: the overview shows it down (once fenced), and the others up.
    cluster.kill(3);
    common::eventually(Duration::from_secs(60), "broker 3 shown down", || {
        let rows = table(&ready_page(&http, "", "overview"), "brokers");
        rows["3"]["status"] == "down" && rows["1"]["status"] == "up" && rows["2"]["status"] == "up"
    });
    screenshot(&http, "", "overview-broker-down");
    let dom = ready_page(&http, "topics/shown", "topic");
    let rows = table(&dom, "partitions");
    assert!(rows.values().all(|r| !r["isr"].contains('3')), "{rows:?}");
}
