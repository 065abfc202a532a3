//! The store thread: the only code that talks to Redis/Valkey. It is fed the keys of
//! changed bindings through the registry's journal (a crossbeam channel), writes their
//! records pipelined, renews this node's leases, scans every record into the
//! [`Directory`](super::Directory) and sweeps lapsed leases. While the store is
//! unreachable it keeps the set of records to write (at most one per binding), retries
//! the connection every second, and writes everything again once it is back.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{Cmd, Connection, Value, cluster::ClusterConnection};

use super::{
    ClusterLink, DirectoryEntry, StoreOp, StoreOutcome,
    record::{self, WallClock},
};
use crate::{io::workers::Shared, registrar::Registrar, snapshot::SavedBinding};

/// How long the thread waits for journal entries before it writes what it has.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Between two connection attempts while the store is unreachable.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// Connect, read and write timeout of every store operation.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Operations per pipeline.
const PIPELINE: usize = 1000;
/// The directory is scanned at least this often (and every third of the lease).
const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(1);

const RUNNING: u8 = 0;
const STOP: u8 = 1;
const RELEASE_AND_STOP: u8 = 2;

/// The running store thread; [`StoreThread::stop`] ends it.
pub struct StoreThread {
    state: Arc<AtomicU8>,
    thread: Option<JoinHandle<()>>,
}

impl StoreThread {
    /// Starts the thread for the store at `urls` (one server, or the servers of a Redis
    /// Cluster). `journal` carries the device keys the registry changes.
    pub fn start(
        urls: &[String],
        link: Arc<ClusterLink>,
        shared: Arc<Shared>,
        journal: Receiver<String>,
    ) -> anyhow::Result<Self> {
        let clients = urls.iter().map(|url| redis::Client::open(url.as_str())).collect::<Result<Vec<_>, _>>()?;
        anyhow::ensure!(!clients.is_empty(), "no store URL");
        let state = Arc::new(AtomicU8::new(RUNNING));
        let mut syncer = Syncer::new(clients, urls.join(","), link, shared, journal)?;
        let thread = std::thread::Builder::new().name("regedge-store".into()).spawn({
            let state = Arc::clone(&state);
            move || syncer.run(&state)
        })?;
        Ok(Self { state, thread: Some(thread) })
    }

    /// Stops the thread after a last write of what is pending; with `release`, this node's
    /// leases are given up too (drain), so that other nodes take its phones over at once.
    pub fn stop(mut self, release: bool) {
        self.state.store(if release { RELEASE_AND_STOP } else { STOP }, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreThread {
    fn drop(&mut self) {
        self.state.store(STOP, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The store-side scripts (`record`).
#[derive(Clone, Copy)]
enum Script {
    Put,
    Renew,
    Delete,
    Release,
    Adopt,
}

impl Script {
    const ALL: [Self; 5] = [Self::Put, Self::Renew, Self::Delete, Self::Release, Self::Adopt];

    fn source(self) -> &'static str {
        match self {
            Self::Put => record::PUT_SCRIPT,
            Self::Renew => record::RENEW_SCRIPT,
            Self::Delete => record::DELETE_SCRIPT,
            Self::Release => record::RELEASE_SCRIPT,
            Self::Adopt => record::ADOPT_SCRIPT,
        }
    }
}

/// One server, or a Redis Cluster.
enum Store {
    /// With the SHA1 of each script, loaded at the connection.
    Single { connection: Connection, shas: Vec<String> },
    /// Scripts go as EVAL (a cluster pipeline routes them by key; EVALSHA it cannot, and
    /// a failover may promote a node that never loaded them). SCAN runs on every listed
    /// server: each holds its own slots.
    Cluster { connection: ClusterConnection, servers: Vec<redis::Client> },
}

impl Store {
    /// The command running `script` on the record `key` with `args`.
    fn script(&self, script: Script, key: &str) -> Cmd {
        let mut cmd = match self {
            Self::Single { shas, .. } => {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(&shas[script as usize]);
                cmd
            }
            Self::Cluster { .. } => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(script.source());
                cmd
            }
        };
        cmd.arg(1).arg(key);
        cmd
    }

    fn run(&mut self, commands: Vec<Cmd>) -> redis::RedisResult<Vec<Value>> {
        match self {
            Self::Single { connection, .. } => {
                let mut pipe = redis::pipe();
                for cmd in commands {
                    pipe.add_command(cmd);
                }
                pipe.query(connection)
            }
            Self::Cluster { connection, .. } => {
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in commands {
                    pipe.add_command(cmd);
                }
                pipe.query(connection)
            }
        }
    }

    /// Every key matching `pattern`, from every server.
    fn scan(&mut self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        fn scan_one(connection: &mut Connection, pattern: &str, keys: &mut Vec<String>) -> redis::RedisResult<()> {
            let mut cursor: u64 = 0;
            loop {
                let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(PIPELINE)
                    .query(connection)?;
                keys.extend(page);
                cursor = next;
                if cursor == 0 {
                    return Ok(());
                }
            }
        }
        let mut keys = Vec::new();
        match self {
            Self::Single { connection, .. } => scan_one(connection, pattern, &mut keys)?,
            Self::Cluster { servers, .. } => {
                for server in servers.iter() {
                    let mut connection = connect_one(server)?;
                    scan_one(&mut connection, pattern, &mut keys)?;
                }
                // A replica listed beside its master holds the same keys.
                keys.sort_unstable();
                keys.dedup();
            }
        }
        Ok(keys)
    }
}

fn connect_one(client: &redis::Client) -> redis::RedisResult<Connection> {
    let connection = client.get_connection_with_timeout(IO_TIMEOUT)?;
    connection.set_read_timeout(Some(IO_TIMEOUT))?;
    connection.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(connection)
}

struct Syncer {
    /// One server, or the servers of a Redis Cluster.
    clients: Vec<redis::Client>,
    url: String,
    link: Arc<ClusterLink>,
    shared: Arc<Shared>,
    journal: Receiver<String>,
    connection: Option<Store>,
    /// Devices whose record must be written or deleted.
    dirty: HashSet<String>,
    /// Devices whose record holds this node's lease, as last written or renewed.
    held: HashSet<String>,
    next_connect: Instant,
    next_renew: Instant,
    next_scan: Instant,
    /// No sweeping before this: after a reconnection the owners rewrite their records first.
    sweep_after: Instant,
    /// The store was reachable once (for the log line of its return).
    was_up: bool,
    /// The outage was logged.
    down_logged: bool,
}

impl Syncer {
    fn new(
        clients: Vec<redis::Client>,
        url: String,
        link: Arc<ClusterLink>,
        shared: Arc<Shared>,
        journal: Receiver<String>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(shared.engine.registrar.is_some(), "a shared registry needs a registrar ([[groups]])");
        let now = Instant::now();
        Ok(Self {
            clients,
            url,
            link,
            shared,
            journal,
            connection: None,
            dirty: HashSet::new(),
            held: HashSet::new(),
            next_connect: now,
            next_renew: now,
            next_scan: now,
            sweep_after: now,
            was_up: false,
            down_logged: false,
        })
    }

    fn registrar(&self) -> &Registrar {
        self.shared.engine.registrar.as_ref().expect("checked in new")
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.link.lease_ms)
    }

    fn run(&mut self, state: &AtomicU8) {
        loop {
            match self.journal.recv_timeout(FLUSH_INTERVAL) {
                Ok(device) => {
                    self.dirty.insert(device);
                    self.dirty.extend(self.journal.try_iter());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(FLUSH_INTERVAL),
            }
            let stopping = state.load(Relaxed);
            let now = Instant::now();
            if self.connection.is_none() && (now >= self.next_connect || stopping != RUNNING) {
                self.connect();
            }
            if self.connection.is_some() {
                self.flush();
            }
            self.answer_lookups();
            if stopping != RUNNING {
                if stopping == RELEASE_AND_STOP && self.connection.is_some() {
                    self.release_all();
                }
                return;
            }
            if self.connection.is_some() && now >= self.next_renew {
                self.renew();
                self.next_renew = now + self.lease() / 3;
            }
            if self.connection.is_some() && now >= self.next_scan {
                self.scan_and_sweep();
                self.next_scan = now + (self.lease() / 3).min(MAX_SCAN_INTERVAL);
            }
            self.link.stats.queue_depth.store(self.dirty.len() as u64, Relaxed);
            self.link.stats.leases_held.store(self.held.len() as u64, Relaxed);
        }
    }

    fn connect(&mut self) {
        self.next_connect = Instant::now() + RECONNECT_INTERVAL;
        let connected = if self.clients.len() == 1 {
            connect_one(&self.clients[0]).and_then(|mut connection| {
                let shas = Script::ALL
                    .iter()
                    .map(|script| redis::cmd("SCRIPT").arg("LOAD").arg(script.source()).query(&mut connection))
                    .collect::<redis::RedisResult<Vec<String>>>()?;
                Ok(Store::Single { connection, shas })
            })
        } else {
            let infos = self.clients.iter().map(|c| c.get_connection_info().clone()).collect::<Vec<_>>();
            redis::cluster::ClusterClient::builder(infos)
                .connection_timeout(IO_TIMEOUT)
                .response_timeout(IO_TIMEOUT)
                .build()
                .and_then(|client| client.get_connection())
                .map(|connection| Store::Cluster { connection, servers: self.clients.clone() })
        };
        match connected {
            Ok(connection) => {
                self.connection = Some(connection);
                self.link.stats.store_up.store(true, Relaxed);
                // The store may have lost everything (a restart without persistence):
                // every binding is written again, and others get a lease's time to do
                // the same before anything is swept.
                let mut all = Vec::new();
                self.registrar().registry.for_each(|device, _| all.push(device.to_owned()));
                let rewritten = all.len();
                self.dirty.extend(all);
                let now = Instant::now();
                self.sweep_after = now + self.lease();
                self.next_renew = now + self.lease() / 3;
                self.next_scan = now;
                if self.was_up {
                    tracing::info!(store = %self.url, rewritten, "store reachable again: writing every binding again");
                } else {
                    tracing::info!(store = %self.url, bindings = rewritten, "store connected");
                }
                self.was_up = true;
                self.down_logged = false;
            }
            Err(error) => self.went_down(&error),
        }
    }

    fn went_down(&mut self, error: &redis::RedisError) {
        self.connection = None;
        self.link.stats.store_up.store(false, Relaxed);
        if !self.down_logged {
            tracing::warn!(
                store = %self.url,
                %error,
                waiting = self.dirty.len(),
                "store unreachable: serving from local state, writes wait until it is back"
            );
            self.down_logged = true;
        }
    }

    /// Runs `commands` pipelined; `None` (and the connection dropped) on an error.
    fn query(&mut self, commands: Vec<Cmd>) -> Option<Vec<Value>> {
        let store = self.connection.as_mut()?;
        match store.run(commands) {
            Ok(values) => Some(values),
            Err(error) => {
                self.went_down(&error);
                None
            }
        }
    }

    /// Writes (or deletes) the records of the dirty devices.
    fn flush(&mut self) {
        while !self.dirty.is_empty() && self.connection.is_some() {
            let batch: Vec<String> = self.dirty.iter().take(PIPELINE).cloned().collect();
            for device in &batch {
                self.dirty.remove(device);
            }
            let mono = record::mono_ms();
            let clock = WallClock::now(mono);
            let now_unix = clock.to_unix(mono);
            let lease_until = now_unix + self.link.lease_ms;
            let mut commands = Vec::with_capacity(batch.len());
            // After the scripts, so that the first results are theirs.
            let mut flow_index = Vec::with_capacity(batch.len());
            let mut ops: Vec<(&String, StoreOp, bool)> = Vec::with_capacity(batch.len());
            let Some(store) = self.connection.as_ref() else { return };
            let registrar = self.registrar();
            for device in &batch {
                let saved = registrar
                    .registry
                    .get(device)
                    .and_then(|b| SavedBinding::of(device, &b, &registrar.routing, |t| clock.to_unix(t)));
                match saved {
                    Some(saved) => {
                        let takeover = self.link.is_takeover(device);
                        // Kept until the backend's registration would run out.
                        let expire_at = saved.backend_valid_until_ms.max(now_unix + self.link.lease_ms);
                        let mut put = store.script(Script::Put, &record::key(device));
                        put.arg(&self.link.node)
                            .arg(now_unix)
                            .arg(lease_until)
                            .arg(expire_at)
                            .arg(record::encode_data(&saved))
                            .arg(if takeover { "1" } else { "0" });
                        commands.push(put);
                        let mut index = redis::cmd("SET");
                        index.arg(record::flow_key(&saved.flow)).arg(device).arg("PXAT").arg(expire_at);
                        flow_index.push(index);
                        ops.push((device, StoreOp::Put, takeover));
                    }
                    None if self.link.was_handed_over(device) => {}
                    None => {
                        let mut delete = store.script(Script::Delete, &record::key(device));
                        delete.arg(&self.link.node);
                        commands.push(delete);
                        ops.push((device, StoreOp::Delete, false));
                    }
                }
            }
            if ops.is_empty() {
                continue;
            }
            commands.append(&mut flow_index);
            let Some(results) = self.query(commands) else {
                self.link.stats.count(StoreOp::Put, StoreOutcome::Error, ops.len() as u64);
                self.dirty.extend(ops.into_iter().map(|(device, ..)| device.clone()));
                return;
            };
            for ((device, op, takeover), result) in ops.into_iter().zip(results) {
                let written = matches!(result, Value::Int(1));
                let outcome = if written { StoreOutcome::Ok } else { StoreOutcome::Lost };
                self.link.stats.count(op, outcome, 1);
                match (op, written) {
                    (StoreOp::Put, true) => {
                        if takeover {
                            self.link.took_over(device);
                        }
                        self.held.insert(device.clone());
                    }
                    (StoreOp::Put, false) => {
                        self.held.remove(device);
                        self.link.lost(device.clone());
                    }
                    _ => {
                        self.held.remove(device);
                    }
                }
            }
        }
    }

    /// Answers the router's misses: the records of the flows it asked about go into the
    /// directory (absent ones are said so; all are, while the store is down).
    fn answer_lookups(&mut self) {
        let flows = self.link.take_lookups();
        if flows.is_empty() {
            return;
        }
        if self.connection.is_none() {
            return self.answer_all_absent(flows);
        }
        // Flows to devices, through the flow index, then their records.
        let commands = flows
            .iter()
            .map(|flow| {
                let mut get = redis::cmd("GET");
                get.arg(record::flow_key(flow));
                get
            })
            .collect();
        let Some(values) = self.query(commands) else { return self.answer_all_absent(flows) };
        let devices: Vec<Option<String>> =
            values.into_iter().map(|v| redis::FromRedisValue::from_redis_value(v).ok().flatten()).collect();
        let commands = devices
            .iter()
            .flatten()
            .map(|device| {
                let mut read = redis::cmd("HMGET");
                read.arg(record::key(device)).arg("owner").arg("lease").arg("data");
                read
            })
            .collect::<Vec<_>>();
        let rows = if commands.is_empty() { Some(Vec::new()) } else { self.query(commands) };
        let Some(rows) = rows else { return self.answer_all_absent(flows) };
        let mut rows = rows.into_iter();
        for (flow, device) in flows.into_iter().zip(devices) {
            let entry = device.and_then(|_| rows.next()).and_then(|row| {
                let (owner, lease, data): (Option<String>, Option<String>, Option<String>) =
                    redis::FromRedisValue::from_redis_value(row).ok()?;
                record::decode(owner, lease, data)
            });
            // The index may be older than the record: the record's own flow decides.
            let entry = entry.filter(|e| e.binding.flow == flow);
            let outcome = if entry.is_some() { StoreOutcome::Ok } else { StoreOutcome::Lost };
            self.link.stats.count(StoreOp::Lookup, outcome, 1);
            self.link.answer(flow, entry);
        }
    }

    fn answer_all_absent(&self, lookups: Vec<crate::registry::Flow>) {
        self.link.stats.count(StoreOp::Lookup, StoreOutcome::Error, lookups.len() as u64);
        for lookup in lookups {
            self.link.answer(lookup, None);
        }
    }

    /// The devices whose binding this node holds (UDP only: the others are not shared).
    fn local_devices(&self) -> Vec<String> {
        let mut local = Vec::new();
        self.registrar().registry.for_each(|device, b| {
            if b.flow.transport == crate::registry::Transport::Udp {
                local.push(device.to_owned());
            }
        });
        local
    }

    /// Runs `script` with `args` on the record of each of `devices`, pipelined by
    /// [`PIPELINE`]: each device with the script's answer, as far as the store answered
    /// (the rest are counted as errors of `op`, and the connection is dropped).
    fn on_each_record(
        &mut self,
        op: StoreOp,
        script: Script,
        devices: Vec<String>,
        args: &[String],
    ) -> Vec<(String, Value)> {
        let mut answered = Vec::with_capacity(devices.len());
        for chunk in devices.chunks(PIPELINE) {
            let Some(store) = self.connection.as_ref() else {
                self.link.stats.count(op, StoreOutcome::Error, (devices.len() - answered.len()) as u64);
                break;
            };
            let commands = chunk
                .iter()
                .map(|device| {
                    let mut cmd = store.script(script, &record::key(device));
                    cmd.arg(args);
                    cmd
                })
                .collect();
            let Some(results) = self.query(commands) else {
                self.link.stats.count(op, StoreOutcome::Error, (devices.len() - answered.len()) as u64);
                break;
            };
            answered.extend(chunk.iter().cloned().zip(results));
        }
        answered
    }

    /// Extends the leases this node holds; a record another node took is let go, a record
    /// the store lost is written again.
    fn renew(&mut self) {
        let local = self.local_devices();
        let here: HashSet<&String> = local.iter().collect();
        self.held.retain(|d| here.contains(d));
        // A dirty record is written (with a new lease) anyway; one adopted on sight and not
        // yet written still holds the old owner's lease, which a renewal would take for lost.
        self.dirty.extend(self.journal.try_iter());
        let due: Vec<String> =
            local.iter().filter(|d| !self.dirty.contains(*d) && !self.link.is_takeover(d)).cloned().collect();
        let lease_until = record::unix_ms() + self.link.lease_ms;
        let args = [self.link.node.clone(), lease_until.to_string()];
        for (device, result) in self.on_each_record(StoreOp::Renew, Script::Renew, due, &args) {
            match result {
                Value::Int(1) => {
                    self.link.stats.count(StoreOp::Renew, StoreOutcome::Ok, 1);
                    self.held.insert(device);
                }
                Value::Int(0) => {
                    self.link.stats.count(StoreOp::Renew, StoreOutcome::Lost, 1);
                    self.held.remove(&device);
                    self.link.lost(device);
                }
                _ => {
                    self.dirty.insert(device);
                }
            }
        }
    }

    /// Reads every record into the directory, then takes over those whose lease lapsed.
    fn scan_and_sweep(&mut self) {
        let Some(scanned) = self.scan() else { return };
        let now_unix = record::unix_ms();
        let lapsed: Vec<String> = if Instant::now() >= self.sweep_after {
            let registry = &self.registrar().registry;
            scanned
                .iter()
                .filter(|e| e.owner != self.link.node && (e.owner.is_empty() || e.lease_until_ms <= now_unix))
                .filter(|e| registry.get(&e.binding.device).is_none())
                .map(|e| e.binding.device.clone())
                .collect()
        } else {
            Vec::new()
        };
        self.link.directory.replace(scanned);
        let args = [self.link.node.clone(), now_unix.to_string(), (now_unix + self.link.lease_ms).to_string()];
        for (_, result) in self.on_each_record(StoreOp::Adopt, Script::Adopt, lapsed, &args) {
            let data = match result {
                Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
                _ => None,
            };
            match data.and_then(|d| serde_json::from_str::<SavedBinding>(&d).ok()) {
                Some(binding) => {
                    self.link.stats.count(StoreOp::Adopt, StoreOutcome::Ok, 1);
                    self.held.insert(binding.device.clone());
                    self.link.swept(binding);
                }
                None => self.link.stats.count(StoreOp::Adopt, StoreOutcome::Lost, 1),
            }
        }
    }

    /// Every binding record in the store.
    fn scan(&mut self) -> Option<Vec<DirectoryEntry>> {
        let keys = match self.connection.as_mut()?.scan(record::KEY_PATTERN) {
            Ok(keys) => keys,
            Err(error) => {
                self.link.stats.count(StoreOp::Scan, StoreOutcome::Error, 1);
                self.went_down(&error);
                return None;
            }
        };
        let mut entries = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PIPELINE) {
            let commands = chunk
                .iter()
                .map(|key| {
                    let mut read = redis::cmd("HMGET");
                    read.arg(key).arg("owner").arg("lease").arg("data");
                    read
                })
                .collect();
            let Some(rows) = self.query(commands) else {
                self.link.stats.count(StoreOp::Scan, StoreOutcome::Error, 1);
                return None;
            };
            for row in rows {
                let fields: Option<(Option<String>, Option<String>, Option<String>)> =
                    redis::FromRedisValue::from_redis_value(row).ok();
                if let Some(entry) = fields.and_then(|(owner, lease, data)| record::decode(owner, lease, data)) {
                    entries.push(entry);
                }
            }
        }
        self.link.stats.count(StoreOp::Scan, StoreOutcome::Ok, 1);
        Some(entries)
    }

    /// Gives up every lease this node holds (after the last writes).
    fn release_all(&mut self) {
        let local = self.local_devices();
        let args = [self.link.node.clone()];
        let mut released = 0;
        for (_, result) in self.on_each_record(StoreOp::Release, Script::Release, local, &args) {
            let ok = matches!(result, Value::Int(1));
            released += u64::from(ok);
            let outcome = if ok { StoreOutcome::Ok } else { StoreOutcome::Lost };
            self.link.stats.count(StoreOp::Release, outcome, 1);
        }
        self.held.clear();
        tracing::info!(released, "drain: leases released for other nodes to take over");
    }
}
