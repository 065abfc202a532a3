//! The regedge binary as a process: built on demand, started inside a namespace with a
//! config file, scraped, stopped by PID with SIGTERM.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Path of the regedge binary, built once per test process (`cargo build` is a no-op
/// when it is up to date). Tests of another package cannot rely on
/// CARGO_BIN_EXE_regedge, so the binary is built explicitly.
pub fn regedge_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "regedge", "--bin", "regedge"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p regedge failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
        target.join("debug").join("regedge")
    })
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

static DIR_SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    /// `regedge-<tag>-<pid>-<n>` under the temp dir: no spaces or braces, which some
    /// programs (Kamailio's ctl socket) reject in paths.
    pub fn new(tag: &str) -> Self {
        let n = DIR_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("regedge-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `regedge run`, stopped with SIGTERM on drop if still running.
pub struct Regedge {
    child: Child,
    log: PathBuf,
}

impl Regedge {
    /// Starts `regedge run --config <config>` inside `ns` (or here when `None`), logging
    /// to `log`.
    pub fn start(ns: Option<&NetNs>, config: &Path, log: PathBuf) -> Self {
        Self::start_binary(&regedge_binary(), ns, config, log, "info")
    }

    /// Starts `binary run --config <config>` (a benchmark's build of regedge) inside `ns`
    /// (or here), logging at `rust_log` to `log`.
    pub fn start_binary(binary: &Path, ns: Option<&NetNs>, config: &Path, log: PathBuf, rust_log: &str) -> Self {
        let binary = binary.to_str().expect("utf-8 path").to_owned();
        let mut cmd = match ns {
            Some(ns) => ns.command(&binary),
            None => Command::new(&binary),
        };
        let log_file = std::fs::File::create(&log).expect("create log");
        cmd.args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().expect("spawn regedge");
        Self { child, log }
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/metrics` answers (through `connect`, which opens the TCP
    /// connection in the right namespace), or the process exits, or `timeout` passes.
    pub fn wait_ready(&mut self, metrics: SocketAddr, ns: Option<&NetNs>, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("regedge exited with {status}:\n{}", self.log()));
            }
            if scrape(metrics, ns).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("regedge not ready after {timeout:?}:\n{}", self.log()))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL (a crash: no shutdown code runs), then waits for the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        self.wait_exit(Duration::from_secs(5))
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.wait_exit(timeout)
    }
}

impl Drop for Regedge {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET /metrics; the connection is opened inside `ns` when given.
pub fn scrape(addr: SocketAddr, ns: Option<&NetNs>) -> std::io::Result<String> {
    let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    let mut stream = match ns {
        Some(ns) => ns.run(connect)?,
        None => connect()?,
    };
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("unexpected response: {response}")));
    }
    Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// The value of one sample, e.g. `metric(text, "regedge_fastpath_replies_total", "kind", "stun")`.
pub fn metric(text: &str, name: &str, label: &str, value: &str) -> Option<u64> {
    let prefix = format!("{name}{{{label}=\"{value}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// SIGTERM by PID, SIGKILL after `timeout`; reaps the child either way.
pub fn stop_child(child: &mut Child, timeout: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signalling our own unreaped child by its PID.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A Prometheus /metrics text, read by sample name and exact label set.
pub struct MetricsText(pub String);

impl MetricsText {
    /// The sample of `name` whose label set is exactly `labels` (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        want.sort();
        self.0.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (sample_name, mut found) = match series.split_once('{') {
                Some((sample_name, rest)) => (sample_name, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, Vec::new()),
            };
            found.sort();
            (sample_name == name && found == want).then(|| value.trim().parse::<f64>().ok().map(|v| v as u64))?
        })
    }

    /// Like [`MetricsText::get`], panicking (with the whole text) when the sample is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics:\n{}", self.0))
    }
}

/// `k="v",k2="v2"` (values without escaped quotes or commas, as regedge's are).
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().strip_prefix('"')?.strip_suffix('"')?.to_owned()))
        })
        .collect()
}
