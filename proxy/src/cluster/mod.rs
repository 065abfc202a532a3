//! Several nodes behind one balancer (ARCHITECTURE.md "Scale-out"): bindings shared
//! through Redis/Valkey so that a node taking over another's phones answers them without a
//! new registration upstream.
//!
//! - Every change to a UDP binding is journalled by the registry; the store thread
//!   ([`store`]) writes the binding's record, pipelined, with this node's lease on it. The
//!   mio loops and the kernel never wait for the store.
//! - The store thread also scans the records of every node into the [`Directory`], this
//!   node's local copy of what the store holds. A phone this node has no binding for is
//!   looked up there, without waiting: a record found is **adopted on sight** (the phone
//!   is here, so the balancer moved it) — loaded into the registry and the kernel mirror,
//!   nothing sent upstream — and this node's lease replaces the other's.
//! - Leases are renewed every third of `cluster.lease`. A node whose renewal finds another
//!   owner lets the binding go (no de-registration). A record whose owner's lease has
//!   lapsed (its node died) is **swept**: one node takes it over (a script in the store
//!   decides who), long before the backend's registration would expire.
//! - A store outage: the nodes serve from local state, changed records wait (one per
//!   binding at most: the queue is bounded by the registry), and everything is written
//!   again when the store is back (it may have lost its data).
//! - Drain (SIGTERM): the node releases its leases, so that the phones the balancer moves
//!   away are taken over at once.
//!
//! SCCP sessions are not shared: they end with their node's TCP connections, and the
//! phones register again through another node, paced by the backend rate limits.

pub mod record;
pub mod store;

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;

use crate::{registry::Flow, snapshot::SavedBinding};

pub use record::WallClock;

/// How a binding of another node became this node's (`regedge_bindings_adopted_total{how}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// The phone showed up here (a REGISTER, a call, a request for it).
    Sighted,
    /// Its owner's lease lapsed and this node's sweeper took it over.
    Swept,
}

impl Adoption {
    pub const ALL: [Self; 2] = [Self::Sighted, Self::Swept];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Sighted => "sighted",
            Self::Swept => "swept",
        }
    }
}

/// Store operations (`regedge_store_ops_total{op}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// A binding's record written (with this node's lease).
    Put,
    /// A lease renewed.
    Renew,
    /// A record deleted (the binding ended here).
    Delete,
    /// A lease given up (drain).
    Release,
    /// A lapsed record taken over by the sweeper.
    Adopt,
    /// The records read into the directory.
    Scan,
    /// A record read on a miss (`lost`: not in the store).
    Lookup,
}

impl StoreOp {
    pub const ALL: [Self; 7] =
        [Self::Put, Self::Renew, Self::Delete, Self::Release, Self::Adopt, Self::Scan, Self::Lookup];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Renew => "renew",
            Self::Delete => "delete",
            Self::Release => "release",
            Self::Adopt => "adopt",
            Self::Scan => "scan",
            Self::Lookup => "lookup",
        }
    }
}

/// Outcomes of store operations (`regedge_store_ops_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    Ok,
    /// Another node holds the lease: the operation changed nothing.
    Lost,
    /// The store did not answer, or answered with an error.
    Error,
}

impl StoreOutcome {
    pub const ALL: [Self; 3] = [Self::Ok, Self::Lost, Self::Error];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Lost => "lost",
            Self::Error => "error",
        }
    }
}

/// What /metrics reports of the cluster.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub store_up: AtomicBool,
    ops: [[AtomicU64; StoreOutcome::ALL.len()]; StoreOp::ALL.len()],
    /// Records waiting to be written (or deleted).
    pub queue_depth: AtomicU64,
    adopted: [AtomicU64; Adoption::ALL.len()],
    /// Bindings whose record holds this node's lease, as last written or renewed.
    pub leases_held: AtomicU64,
}

impl ClusterStats {
    pub fn count(&self, op: StoreOp, outcome: StoreOutcome, n: u64) {
        self.ops[op as usize][outcome as usize].fetch_add(n, Relaxed);
    }

    pub fn ops(&self, op: StoreOp, outcome: StoreOutcome) -> u64 {
        self.ops[op as usize][outcome as usize].load(Relaxed)
    }

    pub fn adopted(&self, how: Adoption) -> u64 {
        self.adopted[how as usize].load(Relaxed)
    }
}

/// A record another node (or this one) wrote, as last read from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub owner: String,
    /// Unix milliseconds; 0 for a released lease.
    pub lease_until_ms: u64,
    /// Times in Unix milliseconds.
    pub binding: SavedBinding,
}

/// This node's copy of the records in the store, by device and by flow, refreshed by the
/// store thread's scans. Read without waiting by the registrar when it meets a phone it
/// has no binding for.
#[derive(Debug, Default)]
pub struct Directory {
    entries: DashMap<String, DirectoryEntry>,
    by_flow: DashMap<Flow, String>,
}

impl Directory {
    pub fn get(&self, device: &str) -> Option<DirectoryEntry> {
        self.entries.get(device).map(|e| e.clone())
    }

    pub fn by_flow(&self, flow: &Flow) -> Option<DirectoryEntry> {
        let device = self.by_flow.get(flow)?.clone();
        self.get(&device).filter(|e| e.binding.flow == *flow)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces the whole directory with one scan's records.
    pub fn replace(&self, scanned: Vec<DirectoryEntry>) {
        let mut seen = std::collections::HashSet::with_capacity(scanned.len());
        for entry in scanned {
            seen.insert(entry.binding.device.clone());
            self.by_flow.insert(entry.binding.flow, entry.binding.device.clone());
            self.entries.insert(entry.binding.device.clone(), entry);
        }
        self.entries.retain(|device, _| seen.contains(device));
        self.by_flow.retain(|_, device| seen.contains(device));
    }

    /// Adds or replaces one record (a look-up's answer).
    pub fn insert(&self, entry: DirectoryEntry) {
        self.by_flow.insert(entry.binding.flow, entry.binding.device.clone());
        self.entries.insert(entry.binding.device.clone(), entry);
    }

    /// Forgets `device` (adopted here: the local binding is what counts now).
    pub fn forget(&self, device: &str) {
        if let Some((_, entry)) = self.entries.remove(device) {
            self.by_flow.remove_if(&entry.binding.flow, |_, d| d == device);
        }
    }
}

/// What a node knows of a binding it does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Another node's record.
    Record(DirectoryEntry),
    /// Asked of the store (a flow only); the answer comes within a store round trip (the
    /// request at hand is dropped: its retransmission finds the record).
    Asked,
    /// Not in the store (as of a recent look).
    Absent,
}

/// Where a look-up stands.
#[derive(Clone, Copy, Debug)]
enum LookupState {
    Asked(std::time::Instant),
    Absent(std::time::Instant),
}

/// A look-up unanswered after this long is asked again.
const LOOKUP_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
/// A look-up that found nothing is believed for this long.
const ABSENT_FOR: std::time::Duration = std::time::Duration::from_secs(5);
/// Look-ups waiting for the store thread at most; beyond it a miss is answered as absent.
const MAX_LOOKUPS: usize = 10_000;

/// What the registrar, the store thread and /metrics share.
pub struct ClusterLink {
    /// This node's name: the owner written in its leases.
    pub node: String,
    pub lease_ms: u64,
    pub directory: Directory,
    pub stats: ClusterStats,
    /// Devices adopted on sight: their next write takes the lease whoever holds it.
    takeovers: DashMap<String, ()>,
    /// Devices let go (another node took them, or a drain released them): their removal
    /// from the registry must not delete their record.
    handed_over: DashMap<String, ()>,
    /// Records the sweeper took over, for the registrar to load on its next tick.
    swept_tx: Sender<SavedBinding>,
    swept_rx: Receiver<SavedBinding>,
    /// Devices another node took, for the registrar to let go on its next tick.
    lost_tx: Sender<String>,
    lost_rx: Receiver<String>,
    /// Flows asked of the store on a miss (a request routed by a flow token this node has
    /// no record for), and their answers.
    lookups: DashMap<Flow, LookupState>,
    lookups_tx: Sender<Flow>,
    lookups_rx: Receiver<Flow>,
}

impl ClusterLink {
    pub fn new(node: &str, lease: std::time::Duration) -> Arc<Self> {
        let (swept_tx, swept_rx) = crossbeam_channel::unbounded();
        let (lost_tx, lost_rx) = crossbeam_channel::unbounded();
        let (lookups_tx, lookups_rx) = crossbeam_channel::bounded(MAX_LOOKUPS);
        Arc::new(Self {
            node: node.to_owned(),
            lease_ms: lease.as_millis() as u64,
            directory: Directory::default(),
            stats: ClusterStats::default(),
            takeovers: DashMap::new(),
            handed_over: DashMap::new(),
            swept_tx,
            swept_rx,
            lost_tx,
            lost_rx,
            lookups: DashMap::new(),
            lookups_tx,
            lookups_rx,
        })
    }

    /// The record of the binding on `flow`: from the directory, else asked of the store.
    /// (A REGISTER of a device the directory lacks is taken as new instead: asking would
    /// cost every new phone a retransmission, and the directory misses only records written
    /// within its last scan.)
    pub fn find_flow(&self, flow: &Flow) -> Found {
        if let Some(entry) = self.directory.by_flow(flow) {
            return Found::Record(entry);
        }
        let now = std::time::Instant::now();
        match self.lookups.get(flow).map(|state| *state) {
            Some(LookupState::Absent(until)) if now < until => return Found::Absent,
            Some(LookupState::Asked(since)) if now < since + LOOKUP_RETRY => return Found::Asked,
            _ => {}
        }
        if !self.stats.store_up.load(Relaxed) || self.lookups_tx.try_send(*flow).is_err() {
            return Found::Absent;
        }
        self.lookups.insert(*flow, LookupState::Asked(now));
        Found::Asked
    }

    /// Look-ups for the store thread.
    pub fn take_lookups(&self) -> Vec<Flow> {
        self.lookups_rx.try_iter().collect()
    }

    /// The store answered the look-up of `lookup`: the record goes into the directory, or
    /// it is absent.
    pub fn answer(&self, lookup: Flow, entry: Option<DirectoryEntry>) {
        match entry {
            Some(entry) => {
                self.directory.insert(entry);
                self.lookups.remove(&lookup);
            }
            None => {
                self.lookups.insert(lookup, LookupState::Absent(std::time::Instant::now() + ABSENT_FOR));
            }
        }
        // Old answers go (a phone absent long ago may have registered elsewhere since).
        if self.lookups.len() > MAX_LOOKUPS {
            let now = std::time::Instant::now();
            self.lookups.retain(|_, state| match state {
                LookupState::Absent(until) => now < *until,
                LookupState::Asked(since) => now < *since + LOOKUP_RETRY,
            });
        }
    }

    /// `device` was adopted here: counted; adopted on sight, its next write takes the
    /// lease from whoever holds it (swept, the store gave it to this node already).
    pub fn adopted(&self, device: &str, how: Adoption) {
        if how == Adoption::Sighted {
            self.takeovers.insert(device.to_owned(), ());
        }
        self.directory.forget(device);
        self.stats.adopted[how as usize].fetch_add(1, Relaxed);
    }

    /// Whether the next write of `device` takes the lease from whoever holds it.
    pub fn is_takeover(&self, device: &str) -> bool {
        self.takeovers.contains_key(device)
    }

    /// The takeover of `device` is written.
    pub fn took_over(&self, device: &str) {
        self.takeovers.remove(device);
    }

    /// `device` leaves this node without its record being deleted.
    pub fn hand_over(&self, device: &str) {
        self.handed_over.insert(device.to_owned(), ());
    }

    /// Whether `device`'s removal was a hand-over (once).
    pub fn was_handed_over(&self, device: &str) -> bool {
        self.handed_over.remove(device).is_some()
    }

    /// The sweeper took `binding` over. It stays in the directory until the registrar
    /// loads it (its next tick): a phone showing up meanwhile is adopted from there.
    pub fn swept(&self, binding: SavedBinding) {
        let _ = self.swept_tx.send(binding);
    }

    /// Bindings the sweeper took over since the last call.
    pub fn take_swept(&self) -> Vec<SavedBinding> {
        self.swept_rx.try_iter().collect()
    }

    /// Another node holds `device`'s lease now.
    pub fn lost(&self, device: String) {
        let _ = self.lost_tx.send(device);
    }

    pub fn take_lost(&self) -> Vec<String> {
        self.lost_rx.try_iter().collect()
    }
}

/// The flow-token key of every node sharing `secret`: FNV-1a over the secret, then a
/// SplitMix64 finaliser (stable across builds and platforms, unlike the std hasher).
pub fn token_key_from_secret(secret: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in secret.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
