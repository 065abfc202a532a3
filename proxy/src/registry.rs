//! Bindings: what regedge knows about each registered phone, keyed by device identity
//! and shared by every event loop (dashmap). Each binding carries what usrloc's
//! `ucontact` carries: the flow it came from, Call-ID, CSeq, contact, the expiries on
//! both sides, and the backend that holds it.

use std::net::SocketAddr;

use dashmap::DashMap;

use crate::failover::{BackendId, GroupId};

/// Transport of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }

    /// As written in a Via header.
    pub const fn via(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }
}

/// A TCP connection, numbered by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConnectionId(pub u64);

/// Where a phone's messages come from and its answers go: the same UDP address and
/// port, or the same TCP connection (NAT-friendly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Flow {
    pub transport: Transport,
    pub peer: SocketAddr,
    /// The local address the phone sent to.
    pub local: SocketAddr,
    pub connection: Option<ConnectionId>,
}

/// One registered phone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub aor: String,
    /// The contact URI, as the phone wrote it.
    pub contact: String,
    pub flow: Flow,
    pub call_id: String,
    /// CSeq of the last REGISTER accepted (forwarded and answered 2xx, or absorbed).
    pub cseq: u32,
    /// `RegisterRequest::via` of the REGISTER that set `cseq`, when userspace saw it; `None`
    /// when the kernel moved the CSeq on (it does not hash the Via) or after a restart.
    pub last_via: Option<u64>,
    /// Credentials of the last REGISTER the backend accepted (see `RegisterRequest`).
    pub credentials: Option<u64>,
    pub group: GroupId,
    pub backend: BackendId,
    /// Seconds the backend granted, and until when (monotonic milliseconds).
    pub backend_granted: u32,
    pub backend_valid_until_ms: u64,
    /// When the phone's own registration runs out (monotonic milliseconds).
    pub phone_expires_at_ms: u64,
    pub last_seen_ms: u64,
    /// What the kernel mirror needs to answer this binding's refreshes (UDP bindings whose
    /// REGISTER the kernel can match; see `registrar::mirror`).
    pub kernel: Option<crate::registrar::mirror::KernelSeed>,
}

/// Every binding, keyed by `Device::key`, and which device each flow carries (requests
/// from a phone are routed by the flow they arrive on).
#[derive(Debug, Default)]
pub struct Registry {
    bindings: DashMap<String, Binding>,
    by_flow: DashMap<Flow, String>,
    /// Where the key of every binding inserted, changed or removed is posted, when the
    /// bindings are shared with other nodes (`cluster`).
    journal: std::sync::OnceLock<crossbeam_channel::Sender<String>>,
}

impl Registry {
    /// From now on, every change posts its device key to `journal`.
    pub fn keep_journal(&self, journal: crossbeam_channel::Sender<String>) {
        let _ = self.journal.set(journal);
    }

    fn note(&self, device: &str) {
        if let Some(journal) = self.journal.get() {
            let _ = journal.send(device.to_owned());
        }
    }

    pub fn get(&self, device: &str) -> Option<Binding> {
        self.bindings.get(device).map(|b| b.clone())
    }

    pub fn insert(&self, device: String, binding: Binding) {
        let flow = binding.flow;
        self.by_flow.insert(flow, device.clone());
        if let Some(previous) = self.bindings.insert(device.clone(), binding).filter(|p| p.flow != flow) {
            self.by_flow.remove_if(&previous.flow, |_, owner| *owner == device);
        }
        self.note(&device);
    }

    pub fn remove(&self, device: &str) -> Option<Binding> {
        let (_, binding) = self.bindings.remove(device)?;
        self.by_flow.remove_if(&binding.flow, |_, owner| owner == device);
        self.note(device);
        Some(binding)
    }

    /// Removes the binding of `device` if `condition` holds for it.
    pub fn remove_if(&self, device: &str, condition: impl FnOnce(&Binding) -> bool) -> Option<Binding> {
        let (_, binding) = self.bindings.remove_if(device, |_, b| condition(b))?;
        self.by_flow.remove_if(&binding.flow, |_, owner| owner == device);
        self.note(device);
        Some(binding)
    }

    /// Applies `update` to the binding of `device`, if there is one. The flow is not
    /// the update's to change (a new flow is a new registration, stored with `insert`).
    pub fn update(&self, device: &str, update: impl FnOnce(&mut Binding)) -> bool {
        let updated = self
            .bindings
            .get_mut(device)
            .map(|mut b| {
                let flow = b.flow;
                update(&mut b);
                b.flow = flow;
            })
            .is_some();
        if updated {
            self.note(device);
        }
        updated
    }

    /// The device registered over `flow` and its binding.
    pub fn by_flow(&self, flow: &Flow) -> Option<(String, Binding)> {
        let device = self.by_flow.get(flow)?.clone();
        self.get(&device).filter(|b| b.flow == *flow).map(|b| (device, b))
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Number of bindings per backend (index = `BackendId`).
    pub fn per_backend(&self, backends: usize) -> Vec<usize> {
        let mut counts = vec![0; backends];
        for b in self.bindings.iter() {
            if let Some(c) = counts.get_mut(b.backend.0) {
                *c += 1;
            }
        }
        counts
    }

    /// Calls `visit` with every binding (holding one shard lock at a time).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &Binding)) {
        for entry in self.bindings.iter() {
            visit(entry.key(), entry.value());
        }
    }

    /// A copy of every binding (tests and the simulation).
    pub fn snapshot(&self) -> Vec<(String, Binding)> {
        self.bindings.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }
}
