//! `meta.properties`: what a data directory is (Kafka's file of the same name is the model).
//!
//! ```text
//! # Rill data directory. Written by rill-broker; do not edit.
//! rill.format.version=1
//! node.id=1
//! cluster.id=6f1c0b6e-3f7a-4c8e-9a57-0f6f3b0c1d2e
//! ```
//!
//! Checked before anything else in the directory is opened: a broker refuses, untouched, a
//! directory of another data format (format 1 introduced CRC-32C batches: opening an older one
//! would "recover" every batch away as corrupt), another node id, or another cluster. A
//! directory without the file is initialized only if it holds nothing. `cluster.id` may be
//! missing in a directory initialized before the broker first reached its controller quorum
//! (the quorum names the cluster); the broker records it then, before it opens any log.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The file's name in the data directory.
pub const META_FILE: &str = "meta.properties";
/// The data format this broker reads and writes: 1 = CRC-32C batches (Kafka's v2 batch).
pub const FORMAT_VERSION: u32 = 1;

/// The contents of `meta.properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirMeta {
    pub format_version: u32,
    pub node_id: u64,
    pub cluster_id: Option<String>,
}

impl DirMeta {
    fn render(&self) -> String {
        let mut text = format!(
            "# Rill data directory. Written by rill-broker; do not edit.\nrill.format.version={}\nnode.id={}\n",
            self.format_version, self.node_id
        );
        if let Some(cluster) = &self.cluster_id {
            text.push_str(&format!("cluster.id={cluster}\n"));
        }
        text
    }

    fn parse(text: &str, path: &Path) -> Result<DirMeta> {
        let bad = |why: String| refused(path, format!("unreadable {META_FILE}: {why}"));
        let mut format_version = None;
        let mut node_id = None;
        let mut cluster_id = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {line:?} is not key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "rill.format.version" => {
                    format_version = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| bad(format!("rill.format.version {value:?}")))?,
                    )
                }
                "node.id" => {
                    node_id = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| bad(format!("node.id {value:?}")))?,
                    )
                }
                "cluster.id" if !value.is_empty() => cluster_id = Some(value.to_string()),
                _ => {}
            }
        }
        Ok(DirMeta {
            format_version: format_version.ok_or_else(|| {
                bad("no rill.format.version (a Kafka directory, or not written by Rill)".into())
            })?,
            node_id: node_id.ok_or_else(|| bad("no node.id".into()))?,
            cluster_id,
        })
    }
}

fn refused(dir: &Path, why: String) -> Error {
    Error::DataDirectory {
        path: dir.to_path_buf(),
        reason: why,
    }
}

/// Reads and checks the metadata of `data_dir` for node `node_id` and, when the operator pinned
/// it, cluster `cluster_id`, writing nothing: `None` for a directory without the file that
/// holds nothing (but perhaps a `.lock`). Refuses a directory of another format, node or
/// cluster, or one that holds files but no metadata.
pub fn inspect(data_dir: &Path, node_id: u64, cluster_id: Option<&str>) -> Result<Option<DirMeta>> {
    let path = data_dir.join(META_FILE);
    let meta = match fs::read_to_string(&path) {
        Ok(text) => DirMeta::parse(&text, &path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut found = Vec::new();
            for entry in fs::read_dir(data_dir).context("list data directory", data_dir)? {
                let name = entry.context("list data directory", data_dir)?.file_name();
                let name = name.to_string_lossy().into_owned();
                if name != ".lock" && !name.starts_with(META_FILE) {
                    found.push(name);
                }
            }
            if found.is_empty() {
                return Ok(None);
            }
            found.sort();
            found.truncate(3);
            return Err(refused(
                data_dir,
                format!(
                    "it holds data ({}...) but no {META_FILE}: written by a Rill before data format {FORMAT_VERSION} (CRC-32 batches), or not a Rill data directory; refusing to open it, nothing was changed. Start with an empty directory (and copy the data in with a Rill client), or move it back to the broker version that wrote it",
                    found.join(", ")
                ),
            ));
        }
        Err(e) => return Err(Error::io("read", path, e)),
    };
    if meta.format_version != FORMAT_VERSION {
        return Err(refused(
            data_dir,
            format!(
                "its data format is {} but this broker reads format {FORMAT_VERSION}; refusing to open it, nothing was changed",
                meta.format_version
            ),
        ));
    }
    if meta.node_id != node_id {
        return Err(refused(
            data_dir,
            format!(
                "it belongs to node {} but this broker is node {node_id}; refusing to open it, nothing was changed (check --node-id and --data-dir)",
                meta.node_id
            ),
        ));
    }
    if let (Some(stored), Some(configured)) = (&meta.cluster_id, cluster_id) {
        if stored != configured {
            return Err(refused(data_dir, other_cluster(stored, configured)));
        }
    }
    Ok(Some(meta))
}

/// [`inspect`], then initializes a directory that has no metadata yet (call with the
/// directory locked).
pub fn check_or_init(data_dir: &Path, node_id: u64, cluster_id: Option<&str>) -> Result<DirMeta> {
    if let Some(meta) = inspect(data_dir, node_id, cluster_id)? {
        return Ok(meta);
    }
    let meta = DirMeta {
        format_version: FORMAT_VERSION,
        node_id,
        cluster_id: cluster_id.map(str::to_string),
    };
    write(data_dir, &meta)?;
    tracing::info!(dir = %data_dir.display(), node_id, cluster_id = ?meta.cluster_id, "initialized a new data directory (format {FORMAT_VERSION})");
    Ok(meta)
}

/// The refusal for a directory of cluster `stored` on a broker of cluster `wanted`.
pub fn other_cluster(stored: &str, wanted: &str) -> String {
    format!("it belongs to cluster {stored} but this broker's cluster is {wanted}; refusing to open it, nothing was changed (check --data-dir, --cluster-id and --controller-voters)")
}

/// Records `cluster_id` in the metadata of `data_dir` (write new, fsync, rename, fsync dir).
pub fn record_cluster_id(data_dir: &Path, meta: &mut DirMeta, cluster_id: &str) -> Result<()> {
    let mut updated = meta.clone();
    updated.cluster_id = Some(cluster_id.to_string());
    write(data_dir, &updated)?;
    *meta = updated;
    Ok(())
}

fn write(data_dir: &Path, meta: &DirMeta) -> Result<()> {
    write_durably(data_dir, META_FILE, meta.render().as_bytes())
}

/// Reads a small checkpoint file `dir/name` holding `1 <number>`; 0 if missing or unreadable.
pub(crate) fn read_numbered(dir: &Path, name: &str) -> u64 {
    fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|text| text.strip_prefix("1 ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Replaces `dir/name` with `bytes` atomically and durably: write `name.tmp`, fsync, rename,
/// fsync the directory.
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    let mut file = fs::File::create(&tmp).context("create", &tmp)?;
    file.write_all(bytes).context("write", &tmp)?;
    file.sync_all().context("sync", &tmp)?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).context("rename", &path)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .context("sync directory", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: Error) -> String {
        match e {
            Error::DataDirectory { reason, .. } => reason,
            other => panic!("expected a refusal, got {other}"),
        }
    }

    #[test]
    fn a_new_directory_is_initialized_and_then_checked() {
        let dir = tempfile::tempdir().unwrap();
        let meta = check_or_init(dir.path(), 3, None).unwrap();
        assert_eq!(meta.cluster_id, None);
        let mut meta = check_or_init(dir.path(), 3, None).unwrap();
        record_cluster_id(dir.path(), &mut meta, "c-1").unwrap();
        assert_eq!(
            check_or_init(dir.path(), 3, Some("c-1"))
                .unwrap()
                .cluster_id,
            Some("c-1".into())
        );
        assert!(reason(check_or_init(dir.path(), 4, None).unwrap_err()).contains("node 3"));
        assert!(
            reason(check_or_init(dir.path(), 3, Some("c-2")).unwrap_err()).contains("cluster c-1")
        );
    }

    #[test]
    fn a_directory_with_data_but_no_metadata_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("orders-0")).unwrap();
        let why = reason(check_or_init(dir.path(), 1, None).unwrap_err());
        assert!(why.contains("orders-0"), "{why}");
        assert!(!dir.path().join(META_FILE).exists());
    }

    #[test]
    fn another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(META_FILE),
            "rill.format.version=2\nnode.id=1\n",
        )
        .unwrap();
        assert!(reason(check_or_init(dir.path(), 1, None).unwrap_err()).contains("format is 2"));
        fs::write(dir.path().join(META_FILE), "version=1\nnode.id=1\n").unwrap();
        assert!(reason(check_or_init(dir.path(), 1, None).unwrap_err()).contains("Kafka"));
    }
}
