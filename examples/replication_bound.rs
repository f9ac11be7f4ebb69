//! What this machine allows three brokers replicating by copying, with no broker in the way:
//! the bound that issue 14's "three brokers at 0.4x one broker" target meets (docs/BENCHMARKS.md,
//! "The machine's bound for three brokers on one host").
//!
//! Each pipeline streams `--bytes` over loopback TCP from a source (writes of `--chunk` bytes,
//! as a producer's batches) to processes that do only what a broker's data path must:
//!
//! - `single`: one node receives (256 KiB reads, a produce frame) and writes what arrives into
//!   a file with `pwrite` (the page cache; nothing is synced, as `--flush interval`).
//! - `three`: a leader does the same and forwards every piece it wrote to two followers
//!   (`write`), each of which receives (1 MiB reads, a replica fetch) and writes it into its
//!   own file.
//! - `three-zero-copy`: as `three`, but the leader forwards from its file with `sendfile` and
//!   the followers move the bytes from the socket into their files with `splice` (through a
//!   pipe), never into their own memory.
//! - `three-splice` and `three-sendfile`: each half of `three-zero-copy` alone.
//!
//! No protocol, no acknowledgements, no checksums, no index: every pipeline is as fast as
//! loopback, the page cache and the scheduler let it be. A broker's figures over these are its
//! efficiency, and `three / single` is what this machine gives three brokers that move bytes
//! that way (its memory and its two cores vary from minute to minute: compare within one run).
//! Run on a quiet machine:
//!
//!   cargo run --release --example replication_bound -- --rounds 3
//!
//! Prints one line per pipeline and round (MB/s, CPU seconds per GB of each process, summed),
//! then the medians; `--format json` prints one JSON object instead. The processes are this
//! program started again in a role (`node`, `source`). Their files go into a directory of its
//! own (`replication-bound-<pid>`, removed after each pipeline) inside `--dir`, by default the
//! working directory: put it on the filesystem where the brokers' data would be. `--recycle-mib` writes and deletes that many MiB in
//! /dev/shm before each pipeline, as `benches/scripts/peers.sh` does before each workload.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

type Result<T> = std::result::Result<T, String>;

/// A pipeline: its name, how its leader forwards (`copy`: `write` from its buffer; `sendfile`:
/// from its file) and how its followers write (`copy`: `recv` + `pwrite`; `splice`: socket ->
/// pipe -> file); no followers for `single`.
const PIPELINES: [(&str, &str, Option<&str>); 5] = [
    ("single", "copy", None),
    ("three", "copy", Some("copy")),
    ("three-zero-copy", "sendfile", Some("splice")),
    ("three-splice", "copy", Some("splice")),
    ("three-sendfile", "sendfile", Some("copy")),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("node") => node(&args[1..]),
        Some("source") => source(&args[1..]),
        _ => run(&args),
    };
    if let Err(e) = outcome {
        eprintln!("replication_bound: {e}");
        std::process::exit(1);
    }
}

struct Options {
    bytes: u64,
    chunk: usize,
    rounds: usize,
    dir: Option<PathBuf>,
    recycle_mib: u64,
    json: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        bytes: 1_024_000_000,
        chunk: 256 << 10,
        rounds: 1,
        dir: None,
        recycle_mib: 0,
        json: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // `cargo bench` passes --bench to every bench target; harmless here.
        if arg == "--bench" {
            continue;
        }
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bytes" => options.bytes = number(value()?)?,
            "--chunk" => options.chunk = number(value()?)? as usize,
            "--rounds" => options.rounds = number(value()?)? as usize,
            "--dir" => options.dir = Some(PathBuf::from(value()?)),
            "--recycle-mib" => options.recycle_mib = number(value()?)?,
            "--format" => {
                options.json = match value()?.as_str() {
                    "json" => true,
                    "text" => false,
                    other => return Err(format!("--format is text or json, not {other}")),
                }
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: [--bytes N] [--chunk N] [--rounds N] \
                     [--dir D] [--recycle-mib N] [--format text|json]"
                ))
            }
        }
    }
    if options.chunk == 0 || options.bytes < options.chunk as u64 || options.rounds == 0 {
        return Err(
            "--chunk, --rounds and --bytes must be positive, --bytes at least --chunk".into(),
        );
    }
    Ok(options)
}

fn number(s: &str) -> Result<u64> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

/// One pipeline's run: MB/s from the source's start until every node has written everything,
/// and each process's CPU seconds per GB streamed.
struct Measured {
    mb_per_sec: f64,
    cpu_per_gb: Vec<(String, f64)>,
}

fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    // A directory of its own inside --dir, the only thing it removes.
    let scratch = match &options.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().map_err(|e| format!("no working directory: {e}"))?,
    }
    .join(format!("replication-bound-{}", std::process::id()));
    let mut results: Vec<(&str, Vec<Measured>)> = PIPELINES
        .iter()
        .map(|(name, ..)| (*name, Vec::new()))
        .collect();
    for round in 1..=options.rounds {
        for (i, (name, leader, followers)) in PIPELINES.iter().enumerate() {
            recycle(options.recycle_mib)?;
            std::fs::create_dir_all(&scratch)
                .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
            let measured = pipeline(&options, &scratch, leader, *followers);
            let _ = std::fs::remove_dir_all(&scratch);
            let measured = measured?;
            if !options.json {
                let cpu: Vec<String> = measured
                    .cpu_per_gb
                    .iter()
                    .map(|(who, s)| format!("{who} {s:.2}"))
                    .collect();
                println!(
                    "round {round} {name:<16} {:>8.0} MB/s   CPU s per GB: {}",
                    measured.mb_per_sec,
                    cpu.join(", ")
                );
            }
            results[i].1.push(measured);
        }
    }
    let median = |v: &[Measured], f: &dyn Fn(&Measured) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(f).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let rate = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, v)| median(v, &|m| m.mb_per_sec))
    };
    let cpu = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, v)| {
                median(v, &|m| m.cpu_per_gb.iter().map(|(_, s)| s).sum())
            })
    };
    let single = rate("single");
    if options.json {
        let pipelines: Vec<String> = PIPELINES
            .iter()
            .map(|(name, ..)| {
                format!(
                    "\"{name}\":{{\"mb_per_sec\":{:.1},\"cpu_secs_per_gb\":{:.3},\"ratio_to_single\":{:.3}}}",
                    rate(name),
                    cpu(name),
                    rate(name) / single
                )
            })
            .collect();
        println!(
            "{{\"bytes\":{},\"chunk\":{},\"rounds\":{},{}}}",
            options.bytes,
            options.chunk,
            options.rounds,
            pipelines.join(",")
        );
    } else {
        println!("medians of {} round(s):", options.rounds);
        for (name, ..) in PIPELINES {
            println!(
                "  {name:<16} {:>8.0} MB/s  {:.2} CPU s per GB  {:.2}x single",
                rate(name),
                cpu(name),
                rate(name) / single
            );
        }
    }
    Ok(())
}

/// Writes and deletes `mib` MiB in /dev/shm, so that the pages the pipeline writes into were
/// used and freed just before (as on a host whose page cache is full and recycled).
fn recycle(mib: u64) -> Result<()> {
    if mib == 0 {
        return Ok(());
    }
    let path = Path::new("/dev/shm").join(format!("replication-bound-{}", std::process::id()));
    let mut file =
        File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let block = vec![0u8; 1 << 20];
    let written = (0..mib).try_for_each(|_| file.write_all(&block));
    drop(file);
    let _ = std::fs::remove_file(&path);
    written.map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A started role: its process and the port it listens on (nodes).
struct Started {
    name: String,
    child: Option<Child>,
    port: u16,
}

impl Drop for Started {
    /// A role not waited for (its pipeline failed on the way) is killed, never left behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start(name: &str, args: &[String]) -> Result<Started> {
    let exe = std::env::current_exe().map_err(|e| format!("no executable: {e}"))?;
    let child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let mut started = Started {
        name: name.to_string(),
        child: Some(child),
        port: 0,
    };
    if args.first().is_some_and(|role| role == "node") {
        let stdout = started
            .child
            .as_mut()
            .and_then(|c| c.stdout.as_mut())
            .ok_or("no stdout")?;
        let mut line = String::new();
        // The node's first line is its port; read byte by byte so nothing after it is taken.
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        started.port = line
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .ok_or(format!("{name} did not say its port: {line:?}"))?;
    }
    Ok(started)
}

/// Waits for a role and reads the CPU seconds it reported (`cpu SECONDS`); a node must also
/// have written all `bytes` (`bytes N`).
fn finish(mut started: Started, bytes: u64) -> Result<(String, f64)> {
    let name = started.name.clone();
    let mut child = started.child.take().ok_or("waited for twice")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (mut cpu, mut written) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(secs) = line.strip_prefix("cpu ") {
            cpu = secs.parse().ok();
        } else if let Some(n) = line.strip_prefix("bytes ") {
            written = n.parse::<u64>().ok();
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    match (status.success(), cpu, written) {
        (true, _, Some(n)) if n != bytes => Err(format!("{name} wrote {n} of {bytes} bytes")),
        (true, Some(cpu), _) => Ok((name, cpu)),
        _ => Err(format!("{name} failed ({status})")),
    }
}

fn pipeline(
    options: &Options,
    dir: &Path,
    leader_mode: &str,
    follower_mode: Option<&str>,
) -> Result<Measured> {
    let file = |name: &str| dir.join(name).display().to_string();
    let mut nodes = Vec::new();
    if let Some(mode) = follower_mode {
        for f in ["follower-1", "follower-2"] {
            let args = vec![
                "node".into(),
                file(f),
                (1u32 << 20).to_string(),
                mode.to_string(),
            ];
            nodes.push(start(f, &args)?);
        }
    }
    let mut leader_args = vec![
        "node".into(),
        file("leader"),
        (256u32 << 10).to_string(),
        leader_mode.to_string(),
    ];
    leader_args.extend(nodes.iter().map(|n| n.port.to_string()));
    let leader = start("leader", &leader_args)?;
    let port = leader.port;
    nodes.push(leader);
    let began = Instant::now();
    let source = start(
        "source",
        &[
            "source".into(),
            port.to_string(),
            options.bytes.to_string(),
            options.chunk.to_string(),
        ],
    )?;
    nodes.push(source);
    let mut cpu = Vec::new();
    let mut failed = None;
    for started in nodes.into_iter().rev() {
        match finish(started, options.bytes) {
            Ok(c) => cpu.push(c),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    if let Some(e) = failed {
        return Err(e);
    }
    let gb = options.bytes as f64 / 1e9;
    cpu.reverse();
    Ok(Measured {
        mb_per_sec: options.bytes as f64 / 1e6 / seconds,
        cpu_per_gb: cpu.into_iter().map(|(n, s)| (n, s / gb)).collect(),
    })
}

/// This process's CPU time (user + system), seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// `source PORT BYTES CHUNK`: writes BYTES to PORT in writes of CHUNK.
fn source(args: &[String]) -> Result<()> {
    let [port, bytes, chunk] = args else {
        return Err("source PORT BYTES CHUNK".into());
    };
    let mut socket = TcpStream::connect(("127.0.0.1", number(port)? as u16))
        .map_err(|e| format!("source cannot connect: {e}"))?;
    let (bytes, chunk) = (number(bytes)?, number(chunk)? as usize);
    let block = vec![b'x'; chunk];
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.min((bytes - sent) as usize);
        socket.write_all(&block[..n]).map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    drop(socket);
    println!("cpu {}", cpu_seconds());
    Ok(())
}

/// `node FILE READ_BYTES copy|splice|sendfile [FOLLOWER_PORT...]`: says its port, takes one
/// connection, writes everything that arrives into FILE (`splice`: without reading it) and
/// forwards it to each follower (`sendfile`: from FILE).
fn node(args: &[String]) -> Result<()> {
    let [path, read_bytes, mode, followers @ ..] = args else {
        return Err("node FILE READ_BYTES copy|splice|sendfile [FOLLOWER_PORT...]".into());
    };
    if !["copy", "splice", "sendfile"].contains(&mode.as_str()) {
        return Err(format!("unknown node mode {mode}"));
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut forward: Vec<TcpStream> = followers
        .iter()
        .map(|p| {
            TcpStream::connect(("127.0.0.1", number(p)? as u16))
                .map_err(|e| format!("cannot reach follower {p}: {e}"))
        })
        .collect::<Result<_>>()?;
    println!("port {port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (mut socket, _) = listener.accept().map_err(|e| e.to_string())?;
    let file = File::create(path).map_err(|e| format!("cannot create {path}: {e}"))?;
    let read_bytes = number(read_bytes)? as usize;
    let written = if mode == "splice" {
        splice_into(&socket, &file, read_bytes)?
    } else {
        let reread = if mode == "sendfile" {
            Some(File::open(path).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let mut buffer = vec![0u8; read_bytes];
        let mut offset = 0u64;
        loop {
            let n = socket.read(&mut buffer).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            file.write_all_at(&buffer[..n], offset)
                .map_err(|e| e.to_string())?;
            for follower in &mut forward {
                match &reread {
                    Some(from) => sendfile_all(follower, from, offset, n)?,
                    None => follower
                        .write_all(&buffer[..n])
                        .map_err(|e| e.to_string())?,
                }
            }
            offset += n as u64;
        }
        offset
    };
    drop(forward);
    println!("bytes {written}\ncpu {}", cpu_seconds());
    Ok(())
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Sends `len` bytes of `file` from `offset` to `socket` with `sendfile`.
fn sendfile_all(socket: &TcpStream, file: &File, offset: u64, len: usize) -> Result<()> {
    let mut at = offset as libc::off_t;
    let mut left = len;
    while left > 0 {
        // SAFETY: both descriptors are open for the call; `at` is a valid offset pointer.
        let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut at, left) };
        if n <= 0 {
            return Err(last_error("sendfile"));
        }
        left -= n as usize;
    }
    Ok(())
}

/// Moves everything `socket` delivers into `file` through a pipe (`splice` both ways);
/// returns the number of bytes.
fn splice_into(socket: &TcpStream, file: &File, max: usize) -> Result<u64> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array it is given.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(last_error("pipe"));
    }
    // SAFETY: pipe opened these two descriptors for this process alone; they close on drop.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl on the pipe just created (1 MiB is the default pipe-max-size).
    unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let mut offset: libc::loff_t = 0;
    loop {
        // SAFETY: valid descriptors; null offsets for the socket and the pipe.
        let n = unsafe {
            libc::splice(
                socket.as_raw_fd(),
                std::ptr::null_mut(),
                write_end.as_raw_fd(),
                std::ptr::null_mut(),
                max,
                libc::SPLICE_F_MOVE,
            )
        };
        if n < 0 {
            return Err(last_error("splice from the socket"));
        }
        if n == 0 {
            return Ok(offset as u64);
        }
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: valid descriptors; `offset` is a valid offset pointer for the file.
            let m = unsafe {
                libc::splice(
                    read_end.as_raw_fd(),
                    std::ptr::null_mut(),
                    file.as_raw_fd(),
                    &mut offset,
                    left,
                    libc::SPLICE_F_MOVE,
                )
            };
            if m <= 0 {
                return Err(last_error("splice into the file"));
            }
            left -= m as usize;
        }
    }
}
