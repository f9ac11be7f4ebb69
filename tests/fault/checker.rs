//! The checker: reads only the history (`history.jsonl`) and the final logs (`final.jsonl`:
//! every partition read through a client after the heal, each partition's high watermark, and
//! every replica's log below it as the broker left it on disk), never the brokers' internals,
//! and lists every anomaly. Its invariants (docs/TESTING.md):
//!
//! - lost: a record acknowledged at (partition, offset) is not there in the final log;
//! - phantom: the final log or a reader holds a value no producer ever sent;
//! - duplicate: a value is at two offsets (the producers are idempotent);
//! - failed-but-written: a send that failed for certain is in the log;
//! - gap: an offset below the high watermark holds no record;
//! - reorder: one producer's records in one partition are not in the order it sent them;
//! - vanished-read: a reader was given a record that is not at that offset in the final log
//!   (it read above the high watermark, or the record was later truncated);
//! - replica-divergence: a replica's log below the high watermark differs from the final log;
//! - shared-partition: a group member processed a partition after another member had been
//!   assigned it (two members owning one partition at once);
//! - unprocessed: a record in the final log no group member processed (at-least-once);
//! - commit-regressed: a partition's acknowledged commits went backwards;
//! - commit-lost: the group's final committed offset is below an acknowledged commit (or above
//!   the log);
//! - topic-state: a topic whose last operation (create, add partitions, delete) was
//!   acknowledged is not in that state at the end;
//! - old-incarnation: a record acknowledged before a topic's acknowledged deletion is in the
//!   final log (the deleted topic's data came back);
//! - no-recovery: a producer got no acknowledgement for anything it sent from 5 s after the
//!   last heal on (the harness keeps the workload running 10 s after it);
//! - crash: a broker died or panicked without the nemesis killing it;
//! - no-convergence: after the heal the cluster did not return to full health in time.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::history::{Event, Type};

/// One line of `final.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// `read` (through a client after the heal), `hw` (the high watermark, in `offset`),
    /// `committed` (the group's committed offset, in `offset`), or `node-N` (replica N's log
    /// on disk).
    pub source: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// In replica lines: the batch's producer id, epoch and base sequence (`pid/epoch/seq`),
    /// for reading an anomaly (the checker does not use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
}

/// One anomaly: its kind and what exactly was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: &'static str,
    pub detail: String,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// Faults applied, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Send operations by outcome.
    pub invoked: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Records given to readers during the run.
    pub reads: u64,
    /// Records processed by group members, and their acknowledged commits.
    pub processed: u64,
    pub commits: u64,
    /// Records in the final logs (all partitions).
    pub final_records: u64,
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// Anomaly counts by kind.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for a in &self.anomalies {
            *counts.entry(a.kind).or_default() += 1;
        }
        counts
    }

    /// A one-screen summary: the first few anomalies of each kind with their offsets.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(out, "faults:    {}", faults.join(", "));
        let _ = writeln!(
            out,
            "sends:     {} invoked, {} acknowledged, {} failed, {} unknown",
            self.invoked, self.acknowledged, self.failed, self.unknown
        );
        let _ = writeln!(
            out,
            "reads:     {} during the run; {} records in the final logs",
            self.reads, self.final_records
        );
        let _ = writeln!(
            out,
            "group:     {} records processed, {} commits acknowledged",
            self.processed, self.commits
        );
        if self.anomalies.is_empty() {
            let _ = writeln!(out, "anomalies: none");
            return out;
        }
        let counts: Vec<String> = self
            .counts()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(out, "anomalies: {}", counts.join(", "));
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &self.anomalies {
            let n = shown.entry(a.kind).or_default();
            *n += 1;
            if *n <= 5 {
                let _ = writeln!(out, "  {}: {}", a.kind, a.detail);
            }
        }
        out
    }
}

/// After the last heal, how long a cluster may take before every producer is acknowledged again.
const RECOVERY_GRACE_MS: f64 = 5_000.0;

/// Which producer sent `value` (`P-N`), and its sequence number `N`.
fn sender(value: &str) -> Option<(&str, u64)> {
    let (producer, n) = value.rsplit_once('-')?;
    Some((producer, n.parse().ok()?))
}

/// Checks `history` against the final logs `logs`.
pub fn check(history: &[Event], logs: &[LogLine]) -> Report {
    let mut report = Report::default();
    let mut anomaly = |kind: &'static str, detail: String| {
        report.anomalies.push(Anomaly { kind, detail });
    };
    type Key = (String, u32);
    // The final log read through a client, and the high watermarks.
    let mut final_log: BTreeMap<Key, BTreeMap<u64, String>> = BTreeMap::new();
    let mut hws: BTreeMap<Key, u64> = BTreeMap::new();
    let mut committed: BTreeMap<Key, u64> = BTreeMap::new();
    let mut replicas: BTreeMap<(String, Key), BTreeMap<u64, String>> = BTreeMap::new();
    for line in logs {
        let key = (line.topic.clone(), line.partition);
        let value = line.value.clone().unwrap_or_default();
        match line.source.as_str() {
            "read" => {
                final_log.entry(key).or_default().insert(line.offset, value);
            }
            "hw" => {
                hws.insert(key, line.offset);
            }
            "committed" => {
                committed.insert(key, line.offset);
            }
            node => {
                replicas
                    .entry((node.to_string(), key))
                    .or_default()
                    .insert(line.offset, value);
            }
        }
    }
    let final_records: u64 = final_log.values().map(|l| l.len() as u64).sum();
    // Without final logs (the cluster did not converge: `no-convergence`), nothing can be
    // checked against them.
    let have_logs = !hws.is_empty();

    // Sends: what was invoked, acknowledged where, failed for certain.
    let mut invoked: HashMap<&str, u32> = HashMap::new();
    let mut acked: Vec<(&str, Key, u64, f64)> = Vec::new();
    // Topic operations: (f, topic, invoke time, outcome, value), in invoke order.
    // Topic operations: (f, topic, invoke time, outcome, value, completion time).
    #[allow(clippy::type_complexity)]
    let mut topic_ops: Vec<(&str, &str, f64, Type, Option<&str>, f64)> = Vec::new();
    let mut pending_ops: HashMap<(&str, &str), f64> = HashMap::new();
    let mut failed: Vec<&str> = Vec::new();
    let (mut n_invoked, mut n_acked, mut n_failed, mut n_unknown, mut n_reads) = (0, 0, 0, 0, 0);
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    // The group: whether it ran, what was processed, when each member was last assigned each
    // partition, when each member last processed it, and the acknowledged commits.
    let mut group_ran = false;
    let mut group_topics: std::collections::BTreeSet<String> = Default::default();
    let mut processed: std::collections::HashSet<(Key, u64)> = Default::default();
    let mut assigned_at: HashMap<(&str, Key), f64> = HashMap::new();
    let mut processed_at: HashMap<Key, HashMap<&str, f64>> = HashMap::new();
    let mut shared_reported: std::collections::HashSet<(&str, Key, u64)> = Default::default();
    let mut last_commit: HashMap<Key, u64> = HashMap::new();
    let mut n_commits = 0;
    let mut recovery_at: Option<f64> = None;
    let mut late_sends: std::collections::HashSet<&str> = Default::default();
    // Per producer: (sends invoked after the recovery grace, acknowledged among them).
    let mut recovered: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    // Records given to readers and members: checked against the final log after the pass.
    let mut reads: Vec<(&Event, Key, u64, &str)> = Vec::new();
    for e in history {
        match (e.f.as_str(), e.kind) {
            ("send", kind) => {
                let (Some(value), Some(topic), Some(partition)) =
                    (e.value.as_deref(), e.topic.as_ref(), e.partition)
                else {
                    anomaly("malformed", format!("{e:?}"));
                    continue;
                };
                let after_grace = recovery_at.is_some_and(|r| e.time_ms >= r + RECOVERY_GRACE_MS);
                match kind {
                    Type::Invoke => {
                        n_invoked += 1;
                        invoked.insert(value, partition);
                        if after_grace && e.process.starts_with("producer-") {
                            recovered.entry(e.process.as_str()).or_default().0 += 1;
                            late_sends.insert(value);
                        }
                    }
                    Type::Ok => {
                        n_acked += 1;
                        if late_sends.contains(value) {
                            recovered.entry(e.process.as_str()).or_default().1 += 1;
                        }
                        match e.offset {
                            Some(offset) => {
                                acked.push((value, (topic.clone(), partition), offset, e.time_ms))
                            }
                            None => anomaly("malformed", format!("{e:?}")),
                        }
                    }
                    Type::Fail => {
                        n_failed += 1;
                        failed.push(value);
                    }
                    Type::Info => n_unknown += 1,
                }
            }
            ("create" | "delete" | "add-partitions", kind) => {
                let Some(topic) = e.topic.as_deref() else {
                    anomaly("malformed", format!("{e:?}"));
                    continue;
                };
                if kind == Type::Invoke {
                    pending_ops.insert((e.f.as_str(), topic), e.time_ms);
                } else if let Some(at) = pending_ops.remove(&(e.f.as_str(), topic)) {
                    topic_ops.push((e.f.as_str(), topic, at, kind, e.value.as_deref(), e.time_ms));
                }
            }
            ("recovery", _) => recovery_at = Some(e.time_ms),
            ("join", _) => group_ran = true,
            ("assign", Type::Ok) => {
                if let (Some(topic), Some(partition)) = (e.topic.as_ref(), e.partition) {
                    group_topics.insert(topic.clone());
                    assigned_at.insert((e.process.as_str(), (topic.clone(), partition)), e.time_ms);
                }
            }
            ("commit", Type::Ok) => {
                let (Some(topic), Some(partition), Some(offset)) =
                    (e.topic.as_ref(), e.partition, e.offset)
                else {
                    anomaly("malformed", format!("{e:?}"));
                    continue;
                };
                n_commits += 1;
                let key = (topic.clone(), partition);
                let last = last_commit.entry(key).or_default();
                if offset < *last {
                    anomaly(
                        "commit-regressed",
                        format!(
                            "{topic}-{partition}: {} committed {offset} at {:.0} ms after a commit of {last}",
                            e.process, e.time_ms
                        ),
                    );
                }
                *last = offset;
            }
            ("read" | "process", Type::Ok) => {
                if e.f == "read" {
                    n_reads += 1;
                }
                let (Some(topic), Some(partition), Some(offset), Some(value)) =
                    (e.topic.as_ref(), e.partition, e.offset, e.value.as_deref())
                else {
                    anomaly("malformed", format!("{e:?}"));
                    continue;
                };
                let key = (topic.clone(), partition);
                if e.f == "process" {
                    processed.insert((key.clone(), offset));
                    let member = e.process.as_str();
                    let since = assigned_at
                        .get(&(member, key.clone()))
                        .copied()
                        .unwrap_or(f64::INFINITY);
                    let others = processed_at.entry(key.clone()).or_default();
                    for (other, at) in others.iter() {
                        if *other != member
                            && *at > since
                            && shared_reported.insert((member, key.clone(), since as u64))
                        {
                            anomaly(
                                "shared-partition",
                                format!(
                                    "{topic}-{partition}: {other} processed it at {at:.0} ms, after {member} was assigned it at {since:.0} ms ({member} processed offset {offset} at {:.0} ms)",
                                    e.time_ms
                                ),
                            );
                        }
                    }
                    if since.is_infinite() && shared_reported.insert((member, key.clone(), 0)) {
                        anomaly(
                            "shared-partition",
                            format!("{topic}-{partition}: {member} processed offset {offset} without being assigned it"),
                        );
                    }
                    others.insert(member, e.time_ms);
                }
                reads.push((e, key, offset, value));
                if !invoked.contains_key(value) {
                    anomaly(
                        "phantom",
                        format!("{topic}-{partition} offset {offset}: read {value:?}, never sent"),
                    );
                }
            }
            ("fault", Type::Invoke) => {
                let kind = e.value.as_deref().and_then(|v| v.split(':').next());
                *faults.entry(kind.unwrap_or("?").to_string()).or_default() += 1;
            }
            ("crash", _) => anomaly(
                "crash",
                format!(
                    "{} at {:.0} ms: {}",
                    e.value.as_deref().unwrap_or("a broker"),
                    e.time_ms,
                    e.error.as_deref().unwrap_or("")
                ),
            ),
            ("converge", Type::Fail) => {
                anomaly("no-convergence", e.error.clone().unwrap_or_default())
            }
            _ => {}
        }
    }

    // Operations the run ended without an answer to: unknown, as if answered `info` at the end.
    for ((f, topic), at) in pending_ops {
        topic_ops.push((f, topic, at, Type::Info, None, f64::INFINITY));
    }
    // Acknowledged records are where they were acknowledged.
    let mut where_is: BTreeMap<&str, Vec<(&Key, u64)>> = BTreeMap::new();
    for (key, log) in &final_log {
        for (offset, value) in log {
            where_is
                .entry(value.as_str())
                .or_default()
                .push((key, *offset));
        }
    }
    // Acknowledged deletions (invoke time), for old-incarnation.
    let mut deleted: HashMap<&str, Vec<f64>> = HashMap::new();
    for (f, topic, at, kind, _, _) in &topic_ops {
        if *f == "delete" && *kind == Type::Ok {
            deleted.entry(topic).or_default().push(*at);
        }
    }
    // Whether a deletion of `topic` may have taken effect after `time`: one asked for later,
    // one acknowledged later, or one whose outcome is unknown (it may take effect at any time
    // after it was asked for, as a metadata entry appended but not yet committed can be
    // committed long after the client gave up: seed 3003, 45 s later).
    let deleted_after = |topic: &str, time: f64| {
        topic_ops.iter().any(|(f, t, _, kind, _, done)| {
            *f == "delete"
                && *t == topic
                && match kind {
                    Type::Fail => false,
                    Type::Ok => *done > time,
                    _ => true,
                }
        })
    };
    for (e, key, offset, value) in reads.into_iter().filter(|_| have_logs) {
        let at = final_log.get(&key).and_then(|l| l.get(&offset));
        // A record read, then deleted with its topic, is rightly gone.
        if at.map(String::as_str) != Some(value) && !deleted_after(&key.0, e.time_ms) {
            anomaly(
                "vanished-read",
                format!(
                    "{}-{} offset {offset}: {} read {value:?} at {:.0} ms; the final log has {at:?}",
                    key.0, key.1, e.process, e.time_ms
                ),
            );
        }
    }
    for (value, key, offset, acked_at) in acked.iter().filter(|_| have_logs) {
        // A deletion asked for after the acknowledgement may have taken the record.
        if deleted_after(&key.0, *acked_at) {
            if let (Some(ds), Some(at)) = (deleted.get(key.0.as_str()), where_is.get(value)) {
                if let Some(d) = ds.iter().find(|d| *d > acked_at) {
                    anomaly(
                        "old-incarnation",
                        format!(
                            "{value:?} acknowledged at {acked_at:.0} ms, before {} was deleted (asked at {d:.0} ms, acknowledged), is in the final log at {at:?}",
                            key.0
                        ),
                    );
                }
            }
            continue;
        }
        let at = final_log.get(key).and_then(|l| l.get(offset));
        if at.map(String::as_str) != Some(*value) {
            let elsewhere = where_is.get(value);
            anomaly(
                "lost",
                format!(
                    "{}-{} offset {offset}: {value:?} acknowledged; the final log has {at:?} there{}",
                    key.0,
                    key.1,
                    elsewhere.map_or(String::new(), |w| format!(", and {value:?} at {w:?}"))
                ),
            );
        }
    }
    for value in &failed {
        if let Some(at) = where_is.get(value) {
            anomaly(
                "failed-but-written",
                format!("{value:?} failed for certain but is at {at:?}"),
            );
        }
    }
    for (value, at) in &where_is {
        if at.len() > 1 {
            anomaly("duplicate", format!("{value:?} at {at:?}"));
        }
        if !invoked.contains_key(value) {
            anomaly("phantom", format!("{value:?} at {at:?}, never sent"));
        }
    }
    for (key, log) in &final_log {
        let hw = hws.get(key).copied().unwrap_or(0);
        let missing: Vec<u64> = (0..hw).filter(|o| !log.contains_key(o)).take(10).collect();
        if !missing.is_empty() {
            anomaly(
                "gap",
                format!(
                    "{}-{} below the high watermark {hw}: no record at {missing:?}",
                    key.0, key.1
                ),
            );
        }
        // Per producer, sequence numbers rise with the offset.
        let mut last: HashMap<&str, (u64, u64)> = HashMap::new();
        for (offset, value) in log {
            let Some((producer, n)) = sender(value) else {
                continue;
            };
            if let Some((prev_n, prev_offset)) = last.insert(producer, (n, *offset)) {
                if n < prev_n {
                    anomaly(
                        "reorder",
                        format!(
                            "{}-{}: producer {producer}'s {prev_n} at offset {prev_offset} before its {n} at {offset}",
                            key.0, key.1
                        ),
                    );
                }
            }
        }
    }
    for (producer, (sent, acknowledged)) in &recovered {
        if *acknowledged == 0 {
            anomaly(
                "no-recovery",
                format!("{producer}: none of the {sent} records it sent from {RECOVERY_GRACE_MS} ms after the last heal on was acknowledged"),
            );
        }
    }
    // Each topic's last operation, if acknowledged, says what the end state is.
    let mut last_op: BTreeMap<&str, (&str, Type, Option<&str>)> = BTreeMap::new();
    for (f, topic, _, kind, value, _) in &topic_ops {
        last_op.insert(topic, (f, *kind, *value));
    }
    for (topic, (f, kind, value)) in last_op {
        if kind != Type::Ok || !have_logs {
            continue;
        }
        let partitions = hws.keys().filter(|(t, _)| t == topic).count() as u64;
        let wanted = match f {
            "delete" => None,
            "add-partitions" => Some(value.and_then(|v| v.parse().ok()).unwrap_or(1)),
            _ => Some(1),
        };
        let fine = match wanted {
            None => partitions == 0,
            Some(at_least) => partitions >= at_least,
        };
        if !fine {
            anomaly(
                "topic-state",
                format!(
                    "{topic}: the last operation ({f} {}) was acknowledged, but at the end it has {partitions} partitions",
                    value.unwrap_or("")
                ),
            );
        }
    }
    if group_ran {
        for (key, log) in final_log
            .iter()
            .filter(|(k, _)| group_topics.contains(&k.0))
        {
            let missing: Vec<u64> = log
                .keys()
                .filter(|o| !processed.contains(&(key.clone(), **o)))
                .copied()
                .collect();
            if !missing.is_empty() {
                anomaly(
                    "unprocessed",
                    format!(
                        "{}-{}: {} records no member processed, first at {:?}",
                        key.0,
                        key.1,
                        missing.len(),
                        &missing[..missing.len().min(10)]
                    ),
                );
            }
        }
        for (key, last) in last_commit.iter().filter(|_| have_logs) {
            let hw = hws.get(key).copied().unwrap_or(0);
            match committed.get(key) {
                Some(c) if c >= last && *c <= hw => {}
                c => anomaly(
                    "commit-lost",
                    format!(
                        "{}-{}: final committed offset {c:?}, an acknowledged commit of {last}, high watermark {hw}",
                        key.0, key.1
                    ),
                ),
            }
        }
    }
    for ((node, key), log) in &replicas {
        let hw = hws.get(key).copied().unwrap_or(0);
        let expected = final_log.get(key);
        for offset in 0..hw {
            let (theirs, ours) = (log.get(&offset), expected.and_then(|l| l.get(&offset)));
            if theirs != ours {
                anomaly(
                    "replica-divergence",
                    format!(
                        "{node} {}-{} offset {offset} (high watermark {hw}): {theirs:?}, the read log {ours:?}",
                        key.0, key.1
                    ),
                );
                break;
            }
        }
    }
    report.faults = faults;
    report.invoked = n_invoked;
    report.acknowledged = n_acked;
    report.failed = n_failed;
    report.unknown = n_unknown;
    report.reads = n_reads;
    report.processed = processed.len() as u64;
    report.commits = n_commits;
    report.final_records = final_records;
    report
}

/// Reads `final.jsonl` back.
pub fn read_logs(path: &std::path::Path) -> Vec<LogLine> {
    crate::history::read_lines(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(kind: Type, value: &str, partition: u32, offset: Option<u64>) -> Event {
        let e = Event::new("producer-1", kind, "send")
            .topic("t")
            .partition(partition)
            .value(value);
        match offset {
            Some(o) => e.offset(o),
            None => e,
        }
    }

    fn line(source: &str, partition: u32, offset: u64, value: Option<&str>) -> LogLine {
        LogLine {
            source: source.to_string(),
            topic: "t".to_string(),
            partition,
            offset,
            value: value.map(str::to_string),
            producer: None,
        }
    }

    /// A clean history: 1-0 and 1-1 acknowledged at 0 and 1, 1-2 unknown and written at 2.
    fn clean() -> (Vec<Event>, Vec<LogLine>) {
        let history = vec![
            send(Type::Invoke, "1-0", 0, None),
            send(Type::Invoke, "1-1", 0, None),
            send(Type::Invoke, "1-2", 0, None),
            send(Type::Ok, "1-0", 0, Some(0)),
            send(Type::Ok, "1-1", 0, Some(1)),
            send(Type::Info, "1-2", 0, None),
            Event::new("reader", Type::Ok, "read")
                .topic("t")
                .partition(0)
                .offset(1)
                .value("1-1"),
        ];
        let mut logs = vec![line("hw", 0, 3, None)];
        for source in ["read", "node-1", "node-2"] {
            for (o, v) in ["1-0", "1-1", "1-2"].iter().enumerate() {
                logs.push(line(source, 0, o as u64, Some(v)));
            }
        }
        (history, logs)
    }

    fn kinds(report: &Report) -> Vec<&'static str> {
        report.anomalies.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_clean_history_has_no_anomaly() {
        let (history, logs) = clean();
        let report = check(&history, &logs);
        assert_eq!(kinds(&report), Vec::<&str>::new(), "{}", report.render());
        assert_eq!(
            (report.invoked, report.acknowledged, report.unknown),
            (3, 2, 1)
        );
        assert_eq!((report.reads, report.final_records), (1, 3));
    }

    #[test]
    fn each_invariant_is_caught() {
        // An acknowledged record missing (and so a gap, and the read vanished).
        let (history, mut logs) = clean();
        logs.retain(|l| !(l.source == "read" && l.offset == 1));
        let report = check(&history, &logs);
        assert_eq!(
            kinds(&report),
            [
                "vanished-read",
                "lost",
                "gap",
                "replica-divergence",
                "replica-divergence"
            ]
        );

        // A duplicate and a phantom.
        let (history, mut logs) = clean();
        logs.push(line("read", 0, 3, Some("1-2")));
        logs.push(line("read", 0, 4, Some("9-9")));
        let report = check(&history, &logs);
        assert_eq!(
            kinds(&report),
            ["duplicate", "phantom"],
            "{}",
            report.render()
        );

        // Reordered records, and a replica that differs below the high watermark.
        let (history, mut logs) = clean();
        for l in logs.iter_mut().filter(|l| l.source == "read") {
            l.value = Some(["1-1", "1-0", "1-2"][l.offset as usize].to_string());
        }
        let report = check(&history, &logs);
        let found = kinds(&report);
        assert!(found.contains(&"reorder"), "{found:?}");
        assert!(found.contains(&"lost"), "{found:?}");
        assert!(found.contains(&"replica-divergence"), "{found:?}");

        // A certain failure that was written, and a crash.
        let (mut history, logs) = clean();
        history[5] = send(Type::Fail, "1-2", 0, None);
        history.push(Event::new("harness", Type::Info, "crash").value("node 2"));
        let report = check(&history, &logs);
        assert_eq!(kinds(&report), ["crash", "failed-but-written"]);
    }

    fn group_event(member: &str, f: &str, time_ms: f64, offset: Option<u64>) -> Event {
        let mut e = Event::new(member, Type::Ok, f).topic("t").partition(0);
        e.time_ms = time_ms;
        match offset {
            Some(o) => e.offset(o),
            None => e,
        }
    }

    fn process(member: &str, time_ms: f64, offset: u64) -> Event {
        group_event(member, "process", time_ms, Some(offset))
            .value(["1-0", "1-1", "1-2"][offset as usize])
    }

    #[test]
    fn group_invariants_are_caught() {
        let (mut history, mut logs) = clean();
        history.extend([
            group_event("a", "join", 10.0, None),
            group_event("a", "assign", 11.0, None),
            process("a", 12.0, 0),
            group_event("a", "commit", 13.0, Some(1)),
            group_event("b", "join", 14.0, None),
            group_event("b", "assign", 15.0, None),
            process("b", 16.0, 1),
            group_event("b", "commit", 17.0, Some(2)),
        ]);
        logs.push(line("committed", 0, 2, None));
        // b took over after a's last record: clean so far, except 1-2 never processed.
        let report = check(&history, &logs);
        assert_eq!(kinds(&report), ["unprocessed"], "{}", report.render());
        assert_eq!((report.processed, report.commits), (2, 2));

        // a processes again after b was assigned, without a new assignment; a commit goes
        // back; the final committed offset is below an acknowledged commit.
        history.extend([
            process("a", 18.0, 2),
            group_event("a", "commit", 19.0, Some(1)),
        ]);
        let report = check(&history, &logs);
        assert_eq!(
            kinds(&report),
            ["shared-partition", "commit-regressed"],
            "{}",
            report.render()
        );
        history.push(group_event("b", "commit", 20.0, Some(3)));
        let report = check(&history, &logs);
        assert!(
            kinds(&report).contains(&"commit-lost"),
            "{}",
            report.render()
        );
    }

    fn admin_op(f: &str, kind: Type, time_ms: f64) -> Event {
        let mut e = Event::new("admin", kind, f).topic("t");
        e.time_ms = time_ms;
        e
    }

    #[test]
    fn topic_invariants_are_caught() {
        // t is deleted (acknowledged) after 1-0 and 1-1 were acknowledged: gone at the end.
        let (mut history, _) = clean();
        history.extend([
            admin_op("delete", Type::Invoke, 100.0),
            admin_op("delete", Type::Ok, 110.0),
        ]);
        let report = check(&history, &[]);
        assert_eq!(kinds(&report), Vec::<&str>::new(), "{}", report.render());

        // The deleted records came back, and t exists although its deletion was the last
        // thing acknowledged.
        let (history2, logs) = clean();
        let mut history = history2;
        history.extend([
            admin_op("delete", Type::Invoke, 100.0),
            admin_op("delete", Type::Ok, 110.0),
        ]);
        let report = check(&history, &logs);
        assert_eq!(
            kinds(&report),
            ["old-incarnation", "old-incarnation", "topic-state"],
            "{}",
            report.render()
        );

        // Re-created after the deletion: existing is right, the old records still are not.
        history.extend([
            admin_op("create", Type::Invoke, 120.0),
            admin_op("create", Type::Ok, 130.0),
        ]);
        let report = check(&history, &logs);
        assert_eq!(kinds(&report), ["old-incarnation", "old-incarnation"]);
    }

    #[test]
    fn a_producer_never_acknowledged_after_the_heal_did_not_recover() {
        let (mut history, logs) = clean();
        let mut recovery = Event::new("harness", Type::Invoke, "recovery");
        recovery.time_ms = 1_000.0;
        let mut late = send(Type::Invoke, "1-3", 0, None);
        late.time_ms = 7_000.0;
        history.extend([recovery, late]);
        let report = check(&history, &logs);
        assert_eq!(kinds(&report), ["no-recovery"], "{}", report.render());
    }

    #[test]
    fn a_deletion_of_unknown_outcome_may_take_effect_long_after() {
        // Asked for at 1 ms, answered with an error (unknown outcome); 1-0..1-2 acknowledged
        // later are gone from the final log: the deletion may have been applied after them.
        let (mut history, logs) = clean();
        let mut asked = admin_op("delete", Type::Invoke, -10.0);
        asked.time_ms = -10.0;
        history.insert(0, asked);
        history.insert(1, admin_op("delete", Type::Info, -5.0));
        let gone: Vec<LogLine> = logs.into_iter().filter(|l| l.source == "hw").collect();
        let report = check(&history, &gone);
        assert!(!kinds(&report).contains(&"lost"), "{}", report.render());
        // Had the deletion failed for certain, they would be lost.
        history[1] = admin_op("delete", Type::Fail, -5.0);
        let report = check(&history, &gone);
        assert!(kinds(&report).contains(&"lost"), "{}", report.render());
    }
}
