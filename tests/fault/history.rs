//! The history: one JSON line per operation event, in the order the events happened, with the
//! time since the run started. Clients write `invoke` before an operation and `ok` (it took
//! effect), `fail` (it certainly did not) or `info` (unknown: it may have) after it; the nemesis
//! writes its faults and heals, the harness every broker crash it did not cause. The checker
//! reads only this file and the final logs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What kind of event a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One history line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Milliseconds since the run started.
    pub time_ms: f64,
    /// Who: `producer-N`, `reader`, `group-N`, `admin`, `nemesis` or `harness`.
    pub process: String,
    #[serde(rename = "type")]
    pub kind: Type,
    /// The operation: `send`, `read`, `commit`, `assign`, `revoke`, `create`, `delete`,
    /// `add-partitions`, `fault`, `heal`, `crash`.
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The record value (unique per send), a fault's description, or a crash's log tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// An event with no topic, partition, offset, value or error yet.
    pub fn new(process: &str, kind: Type, f: &str) -> Event {
        Event {
            time_ms: 0.0,
            process: process.to_string(),
            kind,
            f: f.to_string(),
            topic: None,
            partition: None,
            offset: None,
            value: None,
            error: None,
        }
    }

    pub fn topic(mut self, topic: &str) -> Event {
        self.topic = Some(topic.to_string());
        self
    }

    pub fn partition(mut self, partition: u32) -> Event {
        self.partition = Some(partition);
        self
    }

    pub fn offset(mut self, offset: u64) -> Event {
        self.offset = Some(offset);
        self
    }

    pub fn value(mut self, value: impl Into<String>) -> Event {
        self.value = Some(value.into());
        self
    }

    pub fn error(mut self, error: impl std::fmt::Display) -> Event {
        self.error = Some(error.to_string());
        self
    }
}

/// The history file being written; cheap to clone, shared by every client task.
#[derive(Clone)]
pub struct History {
    start: Instant,
    out: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl History {
    /// A new history at `path` (truncated).
    pub fn create(path: &std::path::Path) -> History {
        let file = std::fs::File::create(path).expect("create the history file");
        History {
            start: Instant::now(),
            out: Arc::new(Mutex::new(std::io::BufWriter::new(file))),
        }
    }

    /// Appends `event`, stamped with the time now.
    pub fn record(&self, mut event: Event) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // Stamped under the lock, so the file's order is the time order.
        event.time_ms = self.start.elapsed().as_secs_f64() * 1e3;
        let line = serde_json::to_string(&event).expect("an event serializes");
        writeln!(out, "{line}").expect("write the history");
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.flush().expect("flush the history");
    }
}

/// Reads a history file back.
pub fn read(path: &std::path::Path) -> Vec<Event> {
    read_lines(path)
}

/// Reads a JSON-lines file (a history, the final logs) back; panics naming the file and line
/// of anything malformed.
pub fn read_lines<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Vec<T> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}
