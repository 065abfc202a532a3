//! The state that survives a restart of regedge, in `[node] state_dir`:
//!
//! - `token-key`: the key of the flow tokens regedge puts in Path, made at the first start
//!   and kept, so the Paths that backends hold stay valid across restarts (and reboots).
//! - `registry.json`: a snapshot of the registry, written atomically (temporary file,
//!   fsync, rename, fsync of the directory) every second while bindings change, and at
//!   shutdown. A start reads it back ([`StateDir::load`]) so that no phone has to register
//!   upstream again; the registrar then reconciles it with the pinned kernel map, which
//!   kept answering refreshes while userspace was down.
//!
//! Times in bindings are CLOCK_MONOTONIC milliseconds, valid within one boot only: the
//! snapshot records the boot id and one from another boot is discarded. Groups and
//! backends are saved by name (and a backend with its address) and resolved against the
//! current config; a binding whose group or backend is gone, or whose backend moved to
//! another address, is dropped. TCP bindings are not saved: their connections died with
//! the process, and a phone that reconnects registers again through the normal path.
//! A snapshot that cannot be read or parsed is logged and ignored, never fatal.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::mirror::MirrorStats,
    failover::Routing,
    io::workers::Shared,
    registrar::{Registrar, mirror::KernelSeed},
    registry::{Binding, Flow, Transport},
};

/// The registry snapshot's file name in the state directory.
pub const SNAPSHOT_FILE: &str = "registry.json";
/// The flow-token key's file name in the state directory.
pub const TOKEN_KEY_FILE: &str = "token-key";
/// How often the writer looks for changes.
pub const INTERVAL: Duration = Duration::from_secs(1);
const FORMAT_VERSION: u32 = 1;

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    version: u32,
    boot_id: String,
    node: String,
    saved_unix_ms: u64,
    bindings: Vec<SavedBinding>,
}

/// A [`Binding`] with its group and backend by name, its times in a clock of the
/// writer's choosing (monotonic in a snapshot, Unix time in the cluster store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBinding {
    pub device: String,
    aor: String,
    contact: String,
    pub flow: Flow,
    pub call_id: String,
    pub cseq: u32,
    /// See `Binding::last_via` (absent in files of earlier versions).
    #[serde(default)]
    last_via: Option<u64>,
    credentials: Option<u64>,
    group: String,
    backend: String,
    backend_address: SocketAddr,
    backend_granted: u32,
    pub backend_valid_until_ms: u64,
    pub phone_expires_at_ms: u64,
    last_seen_ms: u64,
    kernel: Option<KernelSeed>,
}

impl SavedBinding {
    /// `binding` by names, its times mapped by `time`; `None` for a binding that is not on
    /// UDP (a TCP flow dies with its process) or whose group or backend `routing` lacks.
    pub fn of(device: &str, b: &Binding, routing: &Routing, time: impl Fn(u64) -> u64) -> Option<Self> {
        if b.flow.transport != Transport::Udp
            || b.group.0 >= routing.groups.len()
            || b.backend.0 >= routing.backends.len()
        {
            return None;
        }
        let backend = routing.backend(b.backend);
        Some(SavedBinding {
            device: device.to_owned(),
            aor: b.aor.clone(),
            contact: b.contact.clone(),
            flow: b.flow,
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            last_via: b.last_via,
            credentials: b.credentials,
            group: routing.groups[b.group.0].name.clone(),
            backend: backend.name.clone(),
            backend_address: backend.address,
            backend_granted: b.backend_granted,
            backend_valid_until_ms: time(b.backend_valid_until_ms),
            phone_expires_at_ms: time(b.phone_expires_at_ms),
            last_seen_ms: time(b.last_seen_ms),
            kernel: b.kernel,
        })
    }

    /// The binding back, times mapped by `time`; `None` when its group or backend is no
    /// longer configured (the backend at the same address) or it is not on UDP.
    pub fn into_binding(self, routing: &Routing, time: impl Fn(u64) -> u64) -> Option<(String, Binding)> {
        let group = routing.group_named(&self.group)?;
        let backend =
            routing.backend_named(&self.backend).filter(|id| routing.backend(*id).address == self.backend_address)?;
        if self.flow.transport != Transport::Udp {
            return None;
        }
        let binding = Binding {
            aor: self.aor,
            contact: self.contact,
            flow: self.flow,
            call_id: self.call_id,
            cseq: self.cseq,
            last_via: self.last_via,
            credentials: self.credentials,
            group,
            backend,
            backend_granted: self.backend_granted,
            backend_valid_until_ms: time(self.backend_valid_until_ms),
            phone_expires_at_ms: time(self.phone_expires_at_ms),
            last_seen_ms: time(self.last_seen_ms),
            kernel: self.kernel,
        };
        Some((self.device, binding))
    }
}

/// What a snapshot gave back.
#[derive(Debug, Default)]
pub struct Loaded {
    pub bindings: Vec<(String, Binding)>,
    /// Bindings left out: group or backend no longer configured, or moved.
    pub dropped: usize,
}

/// Serializes the UDP bindings of `bindings`.
pub fn encode(bindings: &[(String, Binding)], routing: &Routing, node: &str, boot_id: &str) -> Vec<u8> {
    let saved = bindings.iter().filter_map(|(device, b)| SavedBinding::of(device, b, routing, |t| t)).collect();
    let file = SnapshotFile {
        version: FORMAT_VERSION,
        boot_id: boot_id.to_owned(),
        node: node.to_owned(),
        saved_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        bindings: saved,
    };
    serde_json::to_vec(&file).expect("a snapshot serializes")
}

/// Reads a snapshot: every binding whose group and backend the current config still has
/// (at the same address); an error for a snapshot of another boot, format or garbage.
pub fn decode(bytes: &[u8], routing: &Routing, boot_id: &str) -> Result<Loaded, String> {
    let file: SnapshotFile = serde_json::from_slice(bytes).map_err(|e| format!("unreadable: {e}"))?;
    if file.version != FORMAT_VERSION {
        return Err(format!("format version {} (this regedge reads {FORMAT_VERSION})", file.version));
    }
    if file.boot_id != boot_id {
        return Err(format!(
            "written during another boot ({}; now {boot_id}): its monotonic times mean nothing now",
            file.boot_id
        ));
    }
    let mut loaded = Loaded::default();
    for saved in file.bindings {
        match saved.into_binding(routing, |t| t) {
            Some(binding) => loaded.bindings.push(binding),
            None => loaded.dropped += 1,
        }
    }
    Ok(loaded)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync
/// of the directory. A crash leaves the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
    boot_id: String,
}

impl StateDir {
    /// Opens `dir`, creating it (mode 0700) if missing.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(Self { dir: dir.to_path_buf(), boot_id: boot_id() })
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// The flow-token key: the saved one, or a new one saved for the next starts. A key
    /// that cannot be saved is used for this run only (with a warning: Path tokens then
    /// change at the next start).
    pub fn token_key(&self) -> u64 {
        let path = self.dir.join(TOKEN_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => match u64::from_str_radix(text.trim(), 16) {
                Ok(key) => return key,
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable flow-token key; making a new one")
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the flow-token key; making a new one")
            }
        }
        let key = random_u64();
        if let Err(error) = write_atomically(&path, format!("{key:016x}\n").as_bytes()) {
            tracing::warn!(path = %path.display(), %error, "cannot save the flow-token key: Path tokens change at the next start");
        }
        key
    }

    /// The bindings of the last snapshot; nothing (with a log line saying why) when there
    /// is none or it cannot be used.
    pub fn load(&self, routing: &Routing) -> Vec<(String, Binding)> {
        let path = self.snapshot_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no registry snapshot: starting with no bindings");
                return Vec::new();
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the registry snapshot; ignoring it");
                return Vec::new();
            }
        };
        match decode(&bytes, routing, &self.boot_id) {
            Ok(loaded) => {
                tracing::info!(
                    path = %path.display(),
                    bindings = loaded.bindings.len(),
                    dropped = loaded.dropped,
                    "registry snapshot read (dropped: group or backend no longer configured)"
                );
                loaded.bindings
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "registry snapshot ignored");
                Vec::new()
            }
        }
    }

    /// Writes a snapshot of `registrar`'s registry; returns the bindings saved.
    pub fn save(&self, registrar: &Registrar, node: &str) -> std::io::Result<usize> {
        let bindings = registrar.registry.snapshot();
        let bytes = encode(&bindings, &registrar.routing, node, &self.boot_id);
        write_atomically(&self.snapshot_path(), &bytes)?;
        Ok(bindings.iter().filter(|(_, b)| b.flow.transport == Transport::Udp).count())
    }
}

/// A key for flow tokens (random).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == bytes.len() as isize {
        return u64::from_ne_bytes(bytes);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.finish()
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A figure that moves whenever the registry may have changed: registration outcomes,
/// lapses, refreshes the kernel answered, and the number of bindings.
fn generation(registrar: &Registrar, mirror: Option<&MirrorStats>) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let outcomes: u64 = registrar.stats.outcomes.iter().map(|o| o.load(Relaxed)).sum();
    outcomes
        .wrapping_add(registrar.stats.lapsed.load(Relaxed))
        .wrapping_add(registrar.stats.backend_timeouts.load(Relaxed))
        .wrapping_add(mirror.map_or(0, |m| m.absorbed.load(Relaxed)))
        .wrapping_add((registrar.registry.len() as u64) << 40)
}

/// The thread that writes the snapshot every [`INTERVAL`] while the registry changes (at
/// most once per ten times the CPU the last write used, so a large registry does not keep
/// a core busy), and once more when it is dropped (at shutdown, after the event loops stopped).
pub struct SnapshotWriter {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotWriter {
    pub fn start(
        state: StateDir,
        shared: Arc<Shared>,
        mirror: Option<Arc<MirrorStats>>,
        node: String,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new().name("regedge-snapshot".into()).spawn(move || {
            let Some(registrar) = shared.engine.registrar.as_ref() else { return };
            let mut written = generation(registrar, mirror.as_deref());
            let mut failures = 0u64;
            let mut next_allowed = std::time::Instant::now();
            let mut save = |why: &str| {
                let started = std::time::Instant::now();
                let cpu_before = thread_cpu_time();
                match state.save(registrar, &node) {
                    Ok(bindings) => tracing::debug!(bindings, why, took = ?started.elapsed(), "registry snapshot written"),
                    Err(error) => {
                        failures += 1;
                        if failures.is_power_of_two() {
                            tracing::warn!(path = %state.snapshot_path().display(), %error, failures, "cannot write the registry snapshot");
                        }
                    }
                }
                // The pause counts the CPU the write used, not the time spent waiting for
                // the disk: a slow fsync on a busy machine must not hold snapshots back.
                std::time::Instant::now() + thread_cpu_time().saturating_sub(cpu_before) * 10
            };
            loop {
                match stopped.recv_timeout(INTERVAL) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        let now = generation(registrar, mirror.as_deref());
                        if now != written && std::time::Instant::now() >= next_allowed {
                            written = now;
                            next_allowed = save("changed");
                        }
                    }
                    _ => {
                        save("shutdown");
                        return;
                    }
                }
            }
        })?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        failover::{BackendId, GroupId},
    };

    fn routing(cm1: &str) -> Routing {
        let text = format!(
            "[[backends]]\nname = \"cm1\"\naddress = \"{cm1}\"\n[[backends]]\nname = \"cm2\"\naddress = \"192.0.2.12:5060\"\n\
             [[groups]]\nname = \"default\"\nbackends = [\"cm1\", \"cm2\"]\n"
        );
        Routing::from_config(&Config::from_toml(&text, "test").expect("config"))
    }

    fn binding(n: u16, transport: Transport, backend: usize) -> (String, Binding) {
        let flow = Flow {
            transport,
            peer: SocketAddr::from(([10, 0, 0, 2], 5000 + n)),
            local: SocketAddr::from(([10, 0, 0, 1], 5060)),
            connection: (transport == Transport::Tcp).then_some(crate::registry::ConnectionId(7)),
        };
        let binding = Binding {
            aor: format!("sip:{n}@example.net"),
            contact: format!("sip:{n}@10.0.0.2:{}", 5000 + n),
            flow,
            call_id: format!("call-{n}"),
            cseq: 3,
            last_via: None,
            credentials: Some(42),
            group: GroupId(0),
            backend: BackendId(backend),
            backend_granted: 3600,
            backend_valid_until_ms: 4_000_000,
            phone_expires_at_ms: 130_000,
            last_seen_ms: 10_000,
            kernel: Some(KernelSeed {
                call_id_key: 99 + n as u64,
                identity: 5,
                auth: 0,
                contact_expires: u32::MAX,
                contact_uri_off: 1,
                contact_uri_len: 20,
                to_has_tag: false,
            }),
        };
        (format!("SEP{n:012}"), binding)
    }

    #[test]
    fn udp_bindings_round_trip_tcp_ones_are_left_out() {
        let routing = routing("192.0.2.11:5060");
        let bindings =
            vec![binding(1, Transport::Udp, 0), binding(2, Transport::Udp, 1), binding(3, Transport::Tcp, 0)];
        let bytes = encode(&bindings, &routing, "edge", "boot-a");
        let loaded = decode(&bytes, &routing, "boot-a").expect("decode");
        assert_eq!(loaded.bindings, bindings[..2].to_vec());
        assert_eq!(loaded.dropped, 0);
    }

    #[test]
    fn another_boot_garbage_and_other_versions_are_refused() {
        let routing = routing("192.0.2.11:5060");
        let bytes = encode(&[binding(1, Transport::Udp, 0)], &routing, "edge", "boot-a");
        assert!(decode(&bytes, &routing, "boot-b").unwrap_err().contains("another boot"));
        assert!(decode(b"{\"version\":1,", &routing, "boot-a").is_err());
        assert!(decode(&bytes[..bytes.len() / 2], &routing, "boot-a").is_err());
        let other = String::from_utf8(bytes).unwrap().replacen("\"version\":1", "\"version\":2", 1);
        assert!(decode(other.as_bytes(), &routing, "boot-a").unwrap_err().contains("version"));
    }

    #[test]
    fn bindings_of_a_backend_gone_or_moved_are_dropped() {
        let before = routing("192.0.2.11:5060");
        let bytes = encode(&[binding(1, Transport::Udp, 0), binding(2, Transport::Udp, 1)], &before, "edge", "b");
        let moved = routing("192.0.2.99:5060");
        let loaded = decode(&bytes, &moved, "b").expect("decode");
        assert_eq!(loaded.bindings.len(), 1);
        assert_eq!(loaded.bindings[0].1.backend, BackendId(1));
        assert_eq!(loaded.dropped, 1);
    }

    #[test]
    fn state_dir_keeps_the_token_key_and_ignores_a_corrupt_snapshot() {
        let dir = std::env::temp_dir().join(format!("regedge-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir.join("state")).expect("open");
        let key = state.token_key();
        assert_eq!(StateDir::open(&dir.join("state")).unwrap().token_key(), key);
        let routing = routing("192.0.2.11:5060");
        assert!(state.load(&routing).is_empty(), "no snapshot yet");
        let bindings = vec![binding(1, Transport::Udp, 0)];
        write_atomically(&state.snapshot_path(), &encode(&bindings, &routing, "edge", &boot_id())).unwrap();
        assert_eq!(state.load(&routing), bindings);
        std::fs::write(state.snapshot_path(), b"\0garbage").unwrap();
        assert!(state.load(&routing).is_empty());
        assert!(!state.snapshot_path().with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
