//! A small tmpfs for full-disk tests: a broker's data directory on it, and a filler file that
//! takes every byte left. Needs root (mount); unmounted on drop, also when the test panics.

/// A tmpfs of a few MiB mounted on a temp directory; unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB.
    pub fn mount(size_mib: u64) -> Tmpfs {
        assert!(
            rustix::process::geteuid().is_root(),
            "the full-disk tests mount a tmpfs and must run as root"
        );
        remove_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("rill-tmpfs-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount (util-linux)");
        assert!(status.success(), "mounting a tmpfs failed");
        Tmpfs { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Where [`Tmpfs::fill`] writes its filler.
    pub fn filler(&self) -> std::path::PathBuf {
        self.path().join("filler")
    }

    /// Writes the filler file until the filesystem is full; returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.filler();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("create filler");
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // Small writes too: the last partial page.
        while file.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
        path
    }

    /// Deletes the filler: the space is back.
    pub fn free(&self) {
        match std::fs::remove_file(self.filler()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("freeing the tmpfs: {e}"),
        }
    }
}

/// Unmounts (and removes) tmpfs mounts left by test processes that no longer exist (a run
/// killed before its drops ran), recognized by their `rill-tmpfs-<pid>-` directory names.
fn remove_stale() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    for mount_point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        let Some(name) = std::path::Path::new(mount_point)
            .file_name()
            .and_then(|n| n.to_str())
        else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("rill-tmpfs-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::process::Command::new("umount")
                .args(["-l", mount_point])
                .status();
            let _ = std::fs::remove_dir(mount_point);
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
