//! A real redis-server (Debian package `redis-server`) run inside a network namespace as
//! the cluster tests' binding store: persistence off (`--save "" --appendonly no`), so a
//! restart starts empty, as a store that lost its data does. Stopped by PID.
//!
//! The client speaks RESP over a TCP connection opened inside the namespace (one
//! connection per command, so it works across restarts), enough for the tests'
//! look-ups: `DBSIZE`, a `SCAN` count of the keys matching a pattern, `MEMORY USAGE`,
//! `HGETALL`, `INFO` fields; [`RedisServer::pipeline`] sends many commands over one
//! connection (the benchmarks' per-key look-ups).
//!
//! [`RedisCluster`]: several such servers with `--cluster-enabled yes`, joined into a Redis
//! Cluster of masters only by `redis-cli --cluster create`, for the cluster-store tests.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{
    netns::NetNs,
    process::{TempDir, stop_child},
};

/// The redis-server binary of the Debian package.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// redis-cli, of the Debian package `redis-tools` (a dependency of `redis-server`).
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// A RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    /// A bulk string; `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// An array; `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text: statuses, integers and bulk strings as they are, arrays one
    /// element a line, nil as `(nil)`, errors as `(error) ...`.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) => s.clone(),
            Reply::Error(e) => format!("(error) {e}"),
            Reply::Int(n) => n.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => "(nil)".to_owned(),
            Reply::Array(Some(items)) => items.iter().map(Reply::text).collect::<Vec<_>>().join("\n"),
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// A running redis-server; stopped (SIGTERM, then SIGKILL) on drop.
pub struct RedisServer {
    netns: String,
    addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    /// Started with `--cluster-enabled yes` (a Redis Cluster node).
    cluster: bool,
    // Last: removed after the process is stopped.
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server inside `ns`, listening on `addr` (an address of `ns`), its
    /// working directory a fresh temp dir (`dir` names it); returns once it answers PING.
    /// Panics, with its log, when it exits or does not answer within 10 s.
    pub fn start(ns: &NetNs, addr: SocketAddr, dir: &str) -> Self {
        Self::start_with(ns, addr, dir, false)
    }

    /// As [`RedisServer::start`], with `--cluster-enabled yes` and its cluster config file
    /// (`nodes-<port>.conf`) in its temp dir: a node of no cluster yet (see [`RedisCluster`]).
    pub fn start_cluster_node(ns: &NetNs, addr: SocketAddr, dir: &str) -> Self {
        Self::start_with(ns, addr, dir, true)
    }

    fn start_with(ns: &NetNs, addr: SocketAddr, dir: &str, cluster: bool) -> Self {
        let dir = TempDir::new(dir);
        let log = dir.0.join("redis.log");
        let mut server = Self { netns: ns.name.clone(), addr, log, child: None, cluster, dir };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already runs");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open redis log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, REDIS_SERVER])
            .args(["--bind", &self.addr.ip().to_string(), "--port", &self.addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"])
            .args(["--logfile", "", "--dir"])
            .arg(&self.dir.0)
            .stdin(Stdio::null());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.0.join(format!("nodes-{}.conf", self.addr.port())));
        }
        cmd.stdout(log.try_clone().expect("clone log")).stderr(log);
        // `ip netns exec` execs: the child's PID is redis-server's.
        let child = cmd.spawn().expect("spawn redis-server (is the redis-server package installed?)");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10));
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait redis-server")) {
                self.child = None;
                panic!("redis-server exited with {status} before it answered:\n{}", self.log());
            }
            if matches!(self.query(&["PING"]), Ok(Reply::Status(s)) if s == "PONG") {
                return;
            }
            if Instant::now() > deadline {
                panic!("redis-server not answering PING after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://ip:port`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Everything it logged (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM by PID (SIGKILL after 5 s); waits until it exited. Its data is gone
    /// (persistence is off).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
    }

    /// SIGKILL by PID, as a crash; waits for the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own unreaped child by its PID.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        child.wait().ok()
    }

    /// Starts it again with the same arguments on the same address (stopping it first
    /// if it runs); it starts empty.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A fresh connection made inside the namespace, with 5 s timeouts.
    fn connect(&self) -> Result<TcpStream, String> {
        let addr = self.addr;
        let stream = NetNsRef(&self.netns).connect(addr).map_err(|e| format!("connect to redis at {addr}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        Ok(stream)
    }

    /// Sends one command over a fresh connection made inside the namespace.
    pub fn query(&self, args: &[&str]) -> Result<Reply, String> {
        let stream = self.connect()?;
        let mut request = Vec::new();
        encode(&mut request, args);
        (&stream).write_all(&request).map_err(|e| format!("send to redis: {e}"))?;
        let mut reader = BufReader::new(&stream);
        read_reply(&mut reader).map_err(|e| format!("redis reply to {args:?}: {e}"))
    }

    /// Sends `commands` over one fresh connection, all written at once, then reads their
    /// replies in order (a reply may be [`Reply::Error`]).
    pub fn pipeline(&self, commands: &[Vec<String>]) -> Result<Vec<Reply>, String> {
        let stream = self.connect()?;
        let mut request = Vec::new();
        for args in commands {
            encode(&mut request, &args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        (&stream).write_all(&request).map_err(|e| format!("send to redis: {e}"))?;
        let mut reader = BufReader::new(&stream);
        commands
            .iter()
            .map(|args| read_reply(&mut reader).map_err(|e| format!("redis reply to {args:?}: {e}")))
            .collect()
    }

    /// `field` of `INFO section`, e.g. `info("memory", "used_memory")`; `None` when redis
    /// does not answer or has no such field.
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        let text = self.query(&["INFO", section]).ok()?.text();
        text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_owned()))
    }

    /// `FLUSHALL`: every key gone.
    pub fn flushall(&self) -> Result<(), String> {
        match self.query(&["FLUSHALL"])? {
            Reply::Status(s) if s == "OK" => Ok(()),
            other => Err(format!("FLUSHALL: {}", other.text())),
        }
    }

    /// Sends one command; its reply as text ([`Reply::text`]). Panics when redis does
    /// not answer.
    pub fn command(&self, args: &[&str]) -> String {
        self.query(args).unwrap_or_else(|e| panic!("{e}")).text()
    }

    /// `DBSIZE`; `None` when redis does not answer.
    pub fn dbsize(&self) -> Option<u64> {
        self.query(&["DBSIZE"]).ok()?.as_int().map(|n| n as u64)
    }

    /// The keys matching `pattern` (`SCAN ... MATCH pattern`, as `redis-cli --scan
    /// --pattern`), deduplicated; `None` when redis does not answer.
    pub fn keys(&self, pattern: &str) -> Option<Vec<String>> {
        let mut keys = std::collections::BTreeSet::new();
        let mut cursor = "0".to_owned();
        loop {
            let reply = self.query(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]).ok()?;
            let Reply::Array(Some(parts)) = reply else { return None };
            let [Reply::Bulk(Some(next)), Reply::Array(Some(batch))] = parts.as_slice() else { return None };
            for key in batch {
                keys.insert(key.text());
            }
            cursor = String::from_utf8_lossy(next).into_owned();
            if cursor == "0" {
                return Some(keys.into_iter().collect());
            }
        }
    }

    /// How many keys match `pattern`, e.g. `count_keys("regedge:b:*")`: the binding
    /// records. `None` when redis does not answer.
    pub fn count_keys(&self, pattern: &str) -> Option<u64> {
        self.keys(pattern).map(|k| k.len() as u64)
    }

    /// `MEMORY USAGE key` in bytes; `None` when the key does not exist or redis does
    /// not answer.
    pub fn memory_usage(&self, key: &str) -> Option<u64> {
        self.query(&["MEMORY", "USAGE", key]).ok()?.as_int().map(|n| n as u64)
    }

    /// `HGETALL key`: the hash's fields and values (empty when there is no such key).
    /// Panics when redis does not answer.
    pub fn hgetall(&self, key: &str) -> Vec<(String, String)> {
        match self.query(&["HGETALL", key]).unwrap_or_else(|e| panic!("{e}")) {
            Reply::Array(Some(items)) => items.chunks(2).map(|pair| (pair[0].text(), pair[1].text())).collect(),
            Reply::Array(None) => Vec::new(),
            other => panic!("HGETALL {key}: unexpected reply {other:?}"),
        }
    }

    /// `TTL key` in seconds (-1 no expiry, -2 no such key); `None` when redis does not answer.
    pub fn ttl(&self, key: &str) -> Option<i64> {
        self.query(&["TTL", key]).ok()?.as_int()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of masters only (no replicas): one [`RedisServer`] with
/// `--cluster-enabled yes` per port, on one address of a namespace, the 16384 slots split
/// between them by `redis-cli --cluster create`. Each server is stopped by its PID on drop.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts a server on `ip:port` inside `ns` for each of `ports` (at least 3), joins
    /// them with `redis-cli --cluster create ... --cluster-yes` (run inside `ns`), and
    /// returns once every server says `cluster_state:ok`. Panics, with the logs, otherwise.
    pub fn start(ns: &NetNs, ip: IpAddr, ports: &[u16], tag: &str) -> Self {
        assert!(ports.len() >= 3, "a Redis Cluster needs at least 3 masters");
        let masters = ports
            .iter()
            .map(|&port| RedisServer::start_cluster_node(ns, SocketAddr::new(ip, port), &format!("{tag}-{port}")))
            .collect();
        let cluster = Self { masters };
        cluster.create(ns, Duration::from_secs(30));
        cluster.wait_state_ok(Duration::from_secs(15));
        cluster
    }

    /// `redis-cli --cluster create` with every server as a master; its output goes to
    /// `cluster-create.log` in the first server's dir. Stopped by PID if it hangs.
    fn create(&self, ns: &NetNs, timeout: Duration) {
        let log_path = self.masters[0].dir().join("cluster-create.log");
        let log = std::fs::File::create(&log_path).expect("create cluster-create log");
        let mut cmd = ns.command(REDIS_CLI);
        cmd.args(["--cluster", "create"])
            .args(self.masters.iter().map(|m| m.addr().to_string()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        // `ip netns exec` execs: the child's PID is redis-cli's.
        let mut child = cmd.spawn().expect("spawn redis-cli (is the redis-tools package installed?)");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait redis-cli") {
                break Some(status);
            }
            if Instant::now() > deadline {
                stop_child(&mut child, Duration::from_secs(2));
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()) && output.contains("All 16384 slots covered"),
            "redis-cli --cluster create: {status:?} (None: still running after {timeout:?})\n{output}\n{}",
            self.logs()
        );
    }

    /// Waits until every server's `CLUSTER INFO` says `cluster_state:ok` and knows them all.
    fn wait_state_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let known = format!("cluster_known_nodes:{}", self.masters.len());
        loop {
            let infos: Vec<String> = self
                .masters
                .iter()
                .map(|m| m.query(&["CLUSTER", "INFO"]).map(|r| r.text()).unwrap_or_default())
                .collect();
            if infos.iter().all(|i| i.contains("cluster_state:ok") && i.contains(&known)) {
                return;
            }
            if Instant::now() > deadline {
                panic!("Redis Cluster not ok after {timeout:?}:\n{}\n{}", infos.join("\n--\n"), self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis://ip:port` of every master.
    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(RedisServer::url).collect()
    }

    /// The keys matching `pattern` on each master (SCAN sees only a server's own slots);
    /// `None` for a master that does not answer.
    pub fn count_keys_by_master(&self, pattern: &str) -> Vec<Option<u64>> {
        self.masters.iter().map(|m| m.count_keys(pattern)).collect()
    }

    /// The keys matching `pattern` on all masters; `None` when one does not answer.
    pub fn count_keys(&self, pattern: &str) -> Option<u64> {
        self.count_keys_by_master(pattern).into_iter().sum()
    }

    /// The slot ranges each master serves, as its `CLUSTER NODES` line says (`myself`),
    /// e.g. `["0-5460"]`.
    pub fn slots_by_master(&self) -> Vec<Vec<String>> {
        self.masters
            .iter()
            .map(|m| {
                let nodes = m.query(&["CLUSTER", "NODES"]).map(|r| r.text()).unwrap_or_default();
                nodes
                    .lines()
                    .find(|l| l.contains("myself"))
                    .map(|l| l.split_whitespace().skip(8).map(str::to_owned).collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Every server's log, for assertion messages.
    pub fn logs(&self) -> String {
        self.masters.iter().map(|m| format!("--- redis {} log:\n{}\n", m.addr(), m.log())).collect()
    }
}

/// A namespace known by name (the server outlives no [`NetNs`] it was started in, but
/// holds only its name).
struct NetNsRef<'a>(&'a str);

impl NetNsRef<'_> {
    fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(format!("/run/netns/{}", self.0))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace fd for this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

/// Appends `args` as one RESP command (an array of bulk strings).
fn encode(request: &mut Vec<u8>, args: &[&str]) {
    request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
    if !line.ends_with(b"\r\n") {
        return Err(format!("truncated reply line {:?}", String::from_utf8_lossy(&line)));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_reply(reader: &mut impl BufRead) -> Result<Reply, String> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at_checked(1).ok_or("empty reply line")?;
    let number = || rest.parse::<i64>().map_err(|_| format!("bad length or integer {rest:?}"));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(number()?),
        "$" => match number()? {
            n if n < 0 => Reply::Bulk(None),
            n => {
                let mut data = vec![0u8; n as usize + 2];
                reader.read_exact(&mut data).map_err(|e| e.to_string())?;
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
        },
        "*" => match number()? {
            n if n < 0 => Reply::Array(None),
            n => Reply::Array(Some((0..n).map(|_| read_reply(reader)).collect::<Result<_, _>>()?)),
        },
        other => return Err(format!("unknown reply type {other:?} in {line:?}")),
    })
}
