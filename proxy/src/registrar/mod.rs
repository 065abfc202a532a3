//! The SIP registration edge (registration throttling, OpenSIPS mid_registrar mode 1):
//! phones get a short expiry, backends a long one; refreshes in between are answered
//! here, full registrations go to the group's active backend. No I/O, no clock: every
//! call takes `now` and returns what to send.

mod cluster_shared;
pub mod decision;
pub mod mirror;
pub mod operator;
pub mod request;
#[cfg(test)]
mod simulation;
#[cfg(test)]
pub(crate) mod tests;

pub use cluster_shared::Held;

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use dashmap::DashMap;
use regedge_common::maps::AbsorbedRefresh;

use crate::{
    config::RegistrationConfig,
    failover::{BackendId, BackendState, Routing},
    limits::{Limit, Limits},
    registry::{Binding, Flow, Registry},
    sip::{
        Message, StartLine,
        forward::{self, ForwardRequest, TooManyHops},
        stateless::{self, ToTag},
    },
};

use decision::{Context, Decision, ForwardReason};
use mirror::{KernelSeed, MirrorUpdate};
use request::{Contacts, RegisterRequest};

/// The clock, read by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds.
    pub mono_ms: u64,
    /// Wall-clock seconds since the epoch (for Date).
    pub unix_secs: u64,
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Phone(Flow),
    Backend(BackendId),
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Send {
    pub to: Destination,
    pub bytes: Vec<u8>,
}

/// What happened to a REGISTER, as counted in `regedge_registrations_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationOutcome {
    Forwarded,
    Absorbed,
    Rejected,
    Challenged,
    RateLimited,
    BackupProbe,
    /// A phone's retransmission of a REGISTER still waiting at the backend.
    Retransmission,
}

impl RegistrationOutcome {
    pub const ALL: [Self; 7] = [
        Self::Forwarded,
        Self::Absorbed,
        Self::Rejected,
        Self::Challenged,
        Self::RateLimited,
        Self::BackupProbe,
        Self::Retransmission,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Absorbed => "absorbed",
            Self::Rejected => "rejected",
            Self::Challenged => "challenged",
            Self::RateLimited => "rate_limited",
            Self::BackupProbe => "backup_probe",
            Self::Retransmission => "retransmission",
        }
    }
}

/// How the node presents itself to backends.
#[derive(Clone, Debug)]
pub struct Node {
    pub to_tag: ToTag,
    /// Per backend: our `transport host:port` as the backend reaches us (Via sent-by and Path host).
    pub backend_facing: Vec<(crate::registry::Transport, std::net::SocketAddr)>,
    /// Keys flow tokens in Path so that they cannot be forged.
    pub token_key: u64,
}

/// Timing policy, from `[registration]`.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub phone_expires: u32,
    pub backend_expires: u32,
    pub expires_jitter: f64,
    pub lapse_grace_ms: u64,
    pub transaction_timeout_ms: u64,
    /// Answers to REGISTER carry a Date header.
    pub date_header: bool,
}

impl From<&RegistrationConfig> for Policy {
    fn from(c: &RegistrationConfig) -> Self {
        Self {
            phone_expires: c.phone_expires,
            backend_expires: c.backend_expires,
            expires_jitter: c.expires_jitter,
            lapse_grace_ms: c.lapse_grace.as_millis() as u64,
            transaction_timeout_ms: c.transaction_timeout.as_millis() as u64,
            date_header: c.date_header,
        }
    }
}

/// A REGISTER forwarded and not yet answered, keyed by our Via branch.
#[derive(Clone, Debug)]
struct Pending {
    /// The phone to relay the answer to; `None` for regedge's own de-registrations.
    phone: Option<Flow>,
    device: String,
    /// What becomes the binding on a 2xx (`None`: nothing is cached, e.g. several contacts).
    candidate: Option<Binding>,
    deregister: bool,
    /// The backend the request went to.
    backend: BackendId,
    grant: u32,
    sent_ms: u64,
    /// The contact the backend was given when it is not the phone's (no Path support).
    upstream_contact: Option<String>,
}

/// Counters the registrar keeps (read by metrics).
#[derive(Debug, Default)]
pub struct RegistrarStats {
    pub outcomes: [std::sync::atomic::AtomicU64; RegistrationOutcome::ALL.len()],
    pub failovers: DashMap<String, u64>,
    pub lapsed: std::sync::atomic::AtomicU64,
    pub backend_timeouts: std::sync::atomic::AtomicU64,
    /// Backend response times in milliseconds, bucketed by `RESPONSE_BUCKETS_MS`.
    pub response_ms: [std::sync::atomic::AtomicU64; RESPONSE_BUCKETS_MS.len() + 1],
    pub response_ms_sum: std::sync::atomic::AtomicU64,
}

/// Upper bounds of the backend response-time histogram, in milliseconds.
pub const RESPONSE_BUCKETS_MS: [u64; 8] = [5, 10, 25, 50, 100, 250, 1000, 4000];

impl RegistrarStats {
    fn count(&self, outcome: RegistrationOutcome) {
        let index = RegistrationOutcome::ALL.iter().position(|o| *o == outcome).expect("listed");
        self.outcomes[index].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn observe_response(&self, ms: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let bucket = RESPONSE_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(RESPONSE_BUCKETS_MS.len());
        self.response_ms[bucket].fetch_add(1, Relaxed);
        self.response_ms_sum.fetch_add(ms, Relaxed);
    }
}

/// One REGISTER being handled: the message, where it came from, when.
struct Incoming<'r, 'm> {
    msg: &'r Message<'m>,
    raw: &'m [u8],
    flow: Flow,
    now: Now,
    request: &'r RegisterRequest<'m>,
}

/// What forwarding a REGISTER needs beyond the request.
struct Forwarding<'b> {
    /// The group's active backend, if any is up.
    active: Option<BackendId>,
    /// The binding a 2xx will store, with the phone's grant (`None`: nothing is cached).
    candidate: Option<(Binding, u32)>,
    /// A binding that may be refreshed here instead when the rate limit says no.
    fallback: Option<&'b Binding>,
}

/// A retransmission of a REGISTER still waiting at the backend is sent on again only
/// after this long (RFC 3261's T1), in case our copy was lost; earlier ones are dropped.
const RETRANSMIT_AFTER_MS: u64 = 500;

/// Our Via branches start with this (after the RFC 3261 magic cookie).
const BRANCH_PREFIX: &str = "z9hG4bK-rg";

pub struct Registrar {
    pub registry: Registry,
    pub routing: Arc<Routing>,
    pub stats: RegistrarStats,
    pending: DashMap<String, Pending>,
    /// Swapped whole by a reload (see `operator`).
    policy: arc_swap::ArcSwap<Policy>,
    node: Node,
    operations: operator::Operations,
    lapses: LapseQueue,
    kernel: KernelLink,
    /// `[limits]`: `max_pending_registrations` caps `pending`.
    limits: Arc<Limits>,
    /// Bindings shared with other nodes (`[cluster] store`), if they are.
    cluster: Option<Arc<crate::cluster::ClusterLink>>,
    /// `[cluster] advertise`: the host of Path and flow-token URIs, instead of this node's
    /// own address facing the backend.
    advertise: Option<std::net::SocketAddr>,
}

/// The registrar's side of the kernel mirror: updates out, answered refreshes in. Nothing
/// is sent until a fast path connects ([`Registrar::connect_kernel`]).
struct KernelLink {
    updates: std::sync::OnceLock<crossbeam_channel::Sender<MirrorUpdate>>,
    absorbed_tx: crossbeam_channel::Sender<AbsorbedRefresh>,
    absorbed_rx: crossbeam_channel::Receiver<AbsorbedRefresh>,
    /// Which device each kernel entry belongs to (by Call-ID key).
    owners: DashMap<u64, String>,
    /// Reads the CSeq the kernel entry holds now (the kernel moves it on as it answers).
    cseq_in_kernel: std::sync::OnceLock<KernelCseqReader>,
}

/// Reads the CSeq of a kernel entry by its Call-ID key (`None`: no entry).
pub type KernelCseqReader = Box<dyn Fn(u64) -> Option<u32> + std::marker::Send + Sync>;

impl KernelLink {
    fn new() -> Self {
        let (absorbed_tx, absorbed_rx) = crossbeam_channel::unbounded();
        Self {
            updates: Default::default(),
            absorbed_tx,
            absorbed_rx,
            owners: DashMap::new(),
            cseq_in_kernel: Default::default(),
        }
    }

    fn send(&self, update: MirrorUpdate) {
        if let Some(updates) = self.updates.get() {
            let _ = updates.send(update);
        }
    }
}

/// When bindings may lapse, so that the timer looks only at what is due instead of
/// scanning every binding. Every time a binding's expiry is set, `(lapse time, device)`
/// is posted (lock-free); the timer moves posts into a min-heap and pops what is due,
/// checking each against the binding's current expiry (later refreshes make earlier
/// entries stale; those are dropped when they come up).
struct LapseQueue {
    posts: crossbeam_channel::Sender<(u64, String)>,
    inbox: crossbeam_channel::Receiver<(u64, String)>,
    due: std::sync::Mutex<std::collections::BinaryHeap<std::cmp::Reverse<(u64, String)>>>,
}

impl LapseQueue {
    fn new() -> Self {
        let (posts, inbox) = crossbeam_channel::unbounded();
        Self { posts, inbox, due: Default::default() }
    }

    fn post(&self, lapse_ms: u64, device: &str) {
        let _ = self.posts.send((lapse_ms, device.to_owned()));
    }

    /// Devices whose entry is due at `now_ms` (possibly stale: check the binding).
    fn take_due(&self, now_ms: u64) -> Vec<String> {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        due.extend(self.inbox.try_iter().map(std::cmp::Reverse));
        let mut devices = Vec::new();
        while due.peek().is_some_and(|std::cmp::Reverse((at, _))| *at < now_ms) {
            devices.push(due.pop().expect("peeked").0.1);
        }
        devices
    }
}

fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut hasher);
    }
    hasher.finish()
}

impl Registrar {
    pub fn new(routing: Arc<Routing>, policy: Policy, node: Node) -> Self {
        Self {
            registry: Registry::default(),
            routing,
            stats: RegistrarStats::default(),
            pending: DashMap::new(),
            policy: arc_swap::ArcSwap::from_pointee(policy),
            node,
            operations: Default::default(),
            lapses: LapseQueue::new(),
            kernel: KernelLink::new(),
            limits: Arc::default(),
            cluster: None,
            advertise: None,
        }
    }

    /// The caps in force (shared with the event loops; a reload changes them there).
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Self {
        self.limits = limits;
        self
    }

    /// How the node presents itself (Via, Path, flow-token key).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The most a device is granted: `phone_expires` shortened by up to `expires_jitter`,
    /// deterministically per device, so that phones restarted together drift apart (like
    /// Kamailio's expires_range) and the kernel can hold the figure per binding.
    pub fn grant_ceiling(&self, device: &str) -> u32 {
        let ceiling = self.policy.load().phone_expires;
        let spread = (ceiling as f64 * self.policy.load().expires_jitter) as u64;
        if spread == 0 {
            return ceiling.max(1);
        }
        let cut = hash_of(&[device.as_bytes()]) % (spread + 1);
        (ceiling as u64 - cut).max(1) as u32
    }

    /// Seconds granted to a phone that asked for `requested`: what it asked, at most its
    /// ceiling. The kernel computes the same from its entry.
    fn grant(&self, requested: Option<u32>, device: &str) -> u32 {
        requested.unwrap_or(u32::MAX).min(self.grant_ceiling(device)).max(1)
    }

    /// Connects the kernel mirror: returns where its updates arrive and where answered
    /// refreshes are posted, and writes an entry for every binding held now (after a
    /// restart, the registry was rebuilt before the fast path connects).
    pub fn connect_kernel(
        &self,
    ) -> (crossbeam_channel::Receiver<MirrorUpdate>, crossbeam_channel::Sender<AbsorbedRefresh>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        if self.kernel.updates.set(tx).is_err() {
            tracing::warn!("kernel mirror connected twice; the second connection gets no updates");
        }
        self.registry.for_each(|device, binding| self.sync_kernel(device, binding));
        (rx, self.kernel.absorbed_tx.clone())
    }

    /// Lets the registrar read the CSeq the kernel holds for a binding, so that a REGISTER
    /// the kernel passed is judged against what the kernel answered, not only against what
    /// the `ABSORBED` ring has brought back so far.
    pub fn read_kernel_cseq_with(&self, reader: KernelCseqReader) {
        if self.kernel.cseq_in_kernel.set(reader).is_err() {
            tracing::warn!("kernel CSeq reader connected twice; the first one stays");
        }
    }

    /// `binding` moved on to the CSeq its kernel entry holds, when that is higher: the
    /// kernel answered a refresh whose ring record is not folded in yet. Its Via is not
    /// known, so the same CSeq again goes to the backend, never absorbed here.
    fn caught_up_with_kernel(&self, device: &str, binding: Binding) -> Binding {
        let (Some(read), Some(seed)) = (self.kernel.cseq_in_kernel.get(), binding.kernel) else { return binding };
        let Some(cseq) = read(seed.call_id_key).filter(|&cseq| cseq > binding.cseq) else { return binding };
        self.registry.update(device, |b| {
            if cseq > b.cseq {
                b.cseq = cseq;
                b.last_via = None;
            }
        });
        self.registry.get(device).unwrap_or(binding)
    }

    /// Restores bindings saved by an earlier run (a snapshot), before any traffic: each
    /// goes into the registry with its lapse timer; nothing is sent upstream.
    pub fn restore(&self, bindings: impl IntoIterator<Item = (String, Binding)>) -> usize {
        let mut restored = 0;
        for (device, binding) in bindings {
            if binding.backend.0 >= self.routing.backends.len() || binding.group.0 >= self.routing.groups.len() {
                continue;
            }
            if let Some(seed) = binding.kernel {
                self.kernel.owners.insert(seed.call_id_key, device.clone());
            }
            self.lapses.post(binding.phone_expires_at_ms + self.policy.load().lapse_grace_ms, &device);
            self.registry.insert(device, binding);
            restored += 1;
        }
        restored
    }

    /// Reconciles restored bindings with the entries found in a pinned `BINDINGS` map (the
    /// kernel kept answering while userspace was down): a newer CSeq and time found there
    /// move the binding on. Returns the keys of entries no binding owns, to be removed.
    pub fn adopt_kernel_entries(&self, entries: &[(u64, regedge_common::maps::BindingEntry)]) -> Vec<u64> {
        let mut orphans = Vec::new();
        for (key, entry) in entries {
            let Some(device) = self.kernel.owners.get(key).map(|d| d.clone()) else {
                orphans.push(*key);
                continue;
            };
            let ceiling = self.grant_ceiling(&device);
            let mut seen = None;
            self.registry.update(&device, |b| {
                if entry.cseq > b.cseq {
                    b.cseq = entry.cseq;
                    b.last_via = None;
                    b.last_seen_ms = b.last_seen_ms.max(entry.last_seen_ms);
                    let requested = if entry.contact_expires == regedge_common::maps::NO_CONTACT_EXPIRES {
                        ceiling
                    } else {
                        entry.contact_expires
                    };
                    let expires_at_ms = entry.last_seen_ms + requested.min(ceiling) as u64 * 1000;
                    b.phone_expires_at_ms = b.phone_expires_at_ms.max(expires_at_ms);
                    seen = Some(b.phone_expires_at_ms);
                }
            });
            if let Some(expires_at_ms) = seen {
                self.lapses.post(expires_at_ms + self.policy.load().lapse_grace_ms, &device);
            }
        }
        orphans
    }

    /// Whether the kernel may answer `binding`'s refreshes now: its backend is up and is
    /// the one its group uses.
    fn absorbable(&self, binding: &Binding) -> bool {
        self.routing.backend(binding.backend).state() == BackendState::Up
            && self.routing.active_backend(binding.group) == Some(binding.backend)
    }

    /// Writes (or flags) the kernel entry of `binding`.
    fn sync_kernel(&self, device: &str, binding: &Binding) {
        if self.kernel.updates.get().is_none() {
            return;
        }
        let ceiling = self.grant_ceiling(device);
        match mirror::entry(binding, ceiling, self.absorbable(binding)) {
            Some((key, entry)) => {
                if self.kernel.owners.get(&key).is_none_or(|owner| *owner != device) {
                    self.kernel.owners.insert(key, device.to_owned());
                }
                self.kernel.send(MirrorUpdate::Upsert { device: device.to_owned(), key, entry });
            }
            None => self.unmirror(device, binding),
        }
    }

    /// Removes the kernel entry of `binding`, if it has one.
    fn unmirror(&self, device: &str, binding: &Binding) {
        let Some(seed) = binding.kernel else { return };
        if self.kernel.owners.remove_if(&seed.call_id_key, |_, owner| owner == device).is_some() {
            self.kernel.send(MirrorUpdate::Remove { device: device.to_owned(), key: seed.call_id_key });
        }
    }

    /// A backend's health changed: bindings of the groups it serves are re-judged for
    /// the kernel (flagged when their backend is no longer the healthy active one).
    pub fn on_backend_state(&self, backend: BackendId, state: BackendState) {
        if self.routing.backend(backend).set_state(state) == state {
            return;
        }
        let groups: Vec<_> = (0..self.routing.groups.len())
            .filter(|&g| self.routing.groups[g].backends.contains(&backend))
            .map(crate::failover::GroupId)
            .collect();
        self.registry.for_each(|device, binding| {
            if groups.contains(&binding.group) {
                self.sync_kernel(device, binding);
            }
        });
    }

    /// Folds the refreshes the kernel answered into the registry: a phone alive only in
    /// the kernel's view is alive.
    fn fold_absorbed(&self) {
        for refresh in self.kernel.absorbed_rx.try_iter() {
            let Some(device) = self.kernel.owners.get(&refresh.call_id_key).map(|d| d.clone()) else { continue };
            let expires_at_ms = refresh.seen_ms + refresh.grant as u64 * 1000;
            // Equal: the registrar caught up with this CSeq already (`caught_up_with_kernel`)
            // but not with the time and expiry it brings.
            let moved = self.registry.update(&device, |b| {
                if refresh.cseq >= b.cseq {
                    if refresh.cseq > b.cseq {
                        b.cseq = refresh.cseq;
                        b.last_via = None;
                    }
                    b.last_seen_ms = b.last_seen_ms.max(refresh.seen_ms);
                    b.phone_expires_at_ms = b.phone_expires_at_ms.max(expires_at_ms);
                }
            });
            if moved {
                self.lapses.post(expires_at_ms + self.policy.load().lapse_grace_ms, &device);
            }
        }
    }

    fn retry_after(&self, device: &str, now: Now) -> u32 {
        // 5 to 20 seconds, spread per device.
        5 + (hash_of(&[device.as_bytes(), &now.mono_ms.to_be_bytes()]) % 16) as u32
    }

    /// A URI at this node naming `flow` (`sip:<token>@<us>[;transport=tcp]`), as `backend`
    /// reaches the node: the Path of a registration, or its contact for a backend that
    /// does not honour Path.
    fn flow_uri(&self, flow: &Flow, backend: BackendId) -> String {
        let (transport, us) = self.advertised_facing(backend);
        let param = if transport == crate::registry::Transport::Tcp { ";transport=tcp" } else { "" };
        format!("sip:{}@{us}{param}", crate::calls::token::encode(flow, self.node.token_key))
    }

    /// The contact `backend` is given for a phone on `flow`: `None` (the phone's own) when
    /// the backend honours Path, else a flow-token URI at this node.
    fn upstream_contact(&self, flow: &Flow, backend: BackendId) -> Option<String> {
        (!self.routing.backend(backend).path).then(|| format!("{};ob", self.flow_uri(flow, backend)))
    }

    /// Handles a REGISTER from `flow`. The answer to the phone, if any, goes to `reply`;
    /// messages to backends go to `sends`.
    pub fn on_register(
        &self,
        msg: &Message<'_>,
        raw: &[u8],
        flow: Flow,
        now: Now,
        reply: &mut Vec<u8>,
        sends: &mut Vec<Send>,
    ) -> RegistrationOutcome {
        let request = match RegisterRequest::parse(msg) {
            Ok(r) => r,
            Err(err) => {
                let reason = match err {
                    request::RegisterError::BadTo => "Bad To",
                    request::RegisterError::BadExpires => "Bad Expires",
                    request::RegisterError::BadCSeq => "Bad CSeq",
                };
                return self.answer(msg, 400, reason, b"", reply, RegistrationOutcome::Rejected);
            }
        };
        if request.backup_probe {
            let date = self.date_line(now);
            return self.answer(msg, 200, "OK", date.as_bytes(), reply, RegistrationOutcome::BackupProbe);
        }
        // A URI holds no whitespace or control bytes (RFC 3261 §25.1), and regedge writes
        // the AOR into requests of its own (the Request-URI of a de-registration).
        if request.aor.iter().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
            return self.answer(msg, 400, "Bad To", b"", reply, RegistrationOutcome::Rejected);
        }
        let Some(group) = self.routing.group_for_protocol(&request.device, crate::config::BackendProtocol::Sip) else {
            return self.answer(msg, 403, "No Group For Device", b"", reply, RegistrationOutcome::Rejected);
        };
        let active = self.routing.active_backend(group);
        let Contacts::One(contact) = request.contacts else {
            // Queries, `*` and several contacts pass through; nothing is cached.
            let incoming = Incoming { msg, raw, flow, now, request: &request };
            return self.forward(&incoming, Forwarding { active, candidate: None, fallback: None }, reply, sends);
        };
        let binding =
            self.binding_here(&request.device.key, now).map(|b| self.caught_up_with_kernel(&request.device.key, b));
        let grant = self.grant(request.expires, &request.device.key);
        let ctx = Context {
            now_ms: now.mono_ms,
            grant,
            active_backend: active,
            binding_backend_state: binding
                .as_ref()
                .map_or(BackendState::Down, |b| self.routing.backend(b.backend).state()),
        };
        let decision = decision::decide(&request, contact.uri, &flow, binding.as_ref(), &ctx);
        match decision {
            Decision::Absorb | Decision::Retransmission => {
                let binding = binding.expect("absorbing needs a binding");
                if decision == Decision::Absorb {
                    self.refresh_here(msg, &request, grant, now);
                }
                self.absorbed_ok(msg, binding.contact.as_bytes(), grant, now, reply);
                RegistrationOutcome::Absorbed
            }
            Decision::OutOfOrder => {
                self.answer(msg, 400, "CSeq Out Of Order", b"", reply, RegistrationOutcome::Rejected)
            }
            Decision::Forward(reason) => {
                let deregister = reason == ForwardReason::Deregister;
                let candidate = (!deregister).then(|| Binding {
                    aor: String::from_utf8_lossy(request.aor).into_owned(),
                    contact: String::from_utf8_lossy(contact.uri).into_owned(),
                    flow,
                    call_id: String::from_utf8_lossy(request.call_id).into_owned(),
                    cseq: request.cseq,
                    last_via: Some(request.via),
                    credentials: request.credentials.or(binding.as_ref().and_then(|b| b.credentials)),
                    group,
                    backend: active.unwrap_or(BackendId(0)),
                    backend_granted: self.policy.load().backend_expires,
                    backend_valid_until_ms: 0,
                    phone_expires_at_ms: now.mono_ms + grant as u64 * 1000,
                    last_seen_ms: now.mono_ms,
                    kernel: KernelSeed::of(msg),
                });
                // A due refresh that the rate limit holds back is answered here while the
                // backend's registration is still valid, for all the phone is granted.
                let fallback = binding.as_ref().filter(|b| {
                    reason == ForwardReason::BackendRefreshDue
                        && now.mono_ms + grant as u64 * 1000 <= b.backend_valid_until_ms
                });
                let incoming = Incoming { msg, raw, flow, now, request: &request };
                let plan = Forwarding { active, candidate: candidate.map(|c| (c, grant)), fallback };
                let outcome = self.forward(&incoming, plan, reply, sends);
                // A failover is a move off a backend that is down or draining (a return
                // to the primary is a fallback, not counted).
                if outcome == RegistrationOutcome::Forwarded
                    && reason == ForwardReason::BackendChanged
                    && ctx.binding_backend_state != BackendState::Up
                {
                    *self.stats.failovers.entry(self.routing.groups[group.0].name.clone()).or_insert(0) += 1;
                }
                outcome
            }
        }
    }

    /// Writes a stateless answer to the phone's request.
    fn answer(
        &self,
        msg: &Message<'_>,
        status: u16,
        reason: &str,
        extra: &[u8],
        reply: &mut Vec<u8>,
        outcome: RegistrationOutcome,
    ) -> RegistrationOutcome {
        stateless::write_response_with(msg, status, reason, self.node.to_tag, extra, reply);
        self.stats.count(outcome);
        outcome
    }

    /// The 200 OK regedge sends for an absorbed refresh: the request's dialog headers,
    /// the binding's contact with the phone's grant, Expires and Date.
    fn absorbed_ok(&self, msg: &Message<'_>, contact: &[u8], grant: u32, now: Now, reply: &mut Vec<u8>) {
        let mut extra = Vec::with_capacity(128);
        forward::push_binding_headers(&mut extra, contact, grant, &self.date_line(now));
        stateless::write_response_with(msg, 200, "OK", self.node.to_tag, &extra, reply);
        self.stats.count(RegistrationOutcome::Absorbed);
    }

    /// The `Date: ...` line of answers to REGISTER, or nothing (`[registration] date_header`).
    fn date_line(&self, now: Now) -> String {
        if self.policy.load().date_header {
            format!("Date: {}\r\n", forward::http_date(now.unix_secs))
        } else {
            String::new()
        }
    }

    /// Refreshes a binding here: the phone's CSeq and times move on, and the kernel entry
    /// follows (with this REGISTER's seed, which may differ in the bytes the kernel hashes).
    fn refresh_here(&self, msg: &Message<'_>, request: &RegisterRequest<'_>, grant: u32, now: Now) {
        let expires_at_ms = now.mono_ms + grant as u64 * 1000;
        let seed = KernelSeed::of(msg);
        let device = &request.device.key;
        // The kernel entry is written under the binding's lock (sync_kernel touches only
        // the routing table, the owners map and a channel).
        self.registry.update(device, |b| {
            b.cseq = request.cseq;
            b.last_via = Some(request.via);
            b.phone_expires_at_ms = expires_at_ms;
            b.last_seen_ms = now.mono_ms;
            if let Some(seed) = seed.filter(|s| b.kernel.is_none_or(|k| k.call_id_key == s.call_id_key)) {
                b.kernel = Some(seed);
            }
            self.sync_kernel(device, b);
        });
        self.lapses.post(expires_at_ms + self.policy.load().lapse_grace_ms, &request.device.key);
    }

    fn forward(
        &self,
        incoming: &Incoming<'_, '_>,
        plan: Forwarding<'_>,
        reply: &mut Vec<u8>,
        sends: &mut Vec<Send>,
    ) -> RegistrationOutcome {
        let Incoming { msg, raw, flow, now, request } = *incoming;
        let Forwarding { active, candidate, fallback } = plan;
        let device = &request.device.key;
        if self.is_stopping() && request.expires != Some(0) {
            let grant = candidate.as_ref().map_or(self.policy.load().phone_expires, |(_, g)| *g);
            return self.answer_while_stopping(msg, request, fallback, grant, now, reply);
        }
        let Some(backend) = active else {
            let retry = format!("Retry-After: {}\r\n", self.retry_after(device, now));
            return self.answer(
                msg,
                503,
                "No Backend Available",
                retry.as_bytes(),
                reply,
                RegistrationOutcome::Rejected,
            );
        };
        // The whole request is in the branch: only a byte-for-byte retransmission finds
        // the pending transaction. A REGISTER that only reuses the phone's branch, Call-ID
        // and CSeq is another transaction, so a late answer to the first (one that timed
        // out) cannot store the second's binding, which the backend never saw.
        // The flow too: the same bytes from another flow carry another Path.
        let branch = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (raw, flow, backend.0).hash(&mut hasher);
            format!("{BRANCH_PREFIX}{:016x}", hasher.finish())
        };
        // A retransmission of a REGISTER still waiting at the backend takes no token: it
        // is dropped, or sent on again once RETRANSMIT_AFTER_MS have passed.
        let retransmission = match self.pending.get_mut(&branch) {
            Some(waiting) if now.mono_ms.saturating_sub(waiting.sent_ms) < RETRANSMIT_AFTER_MS => {
                drop(waiting);
                self.stats.count(RegistrationOutcome::Retransmission);
                return RegistrationOutcome::Retransmission;
            }
            Some(mut waiting) => {
                waiting.sent_ms = now.mono_ms;
                true
            }
            None => false,
        };
        // Beyond `max_pending_registrations` nothing more is forwarded (and no token is
        // taken): what is held stays bounded whatever the phones send.
        let room = retransmission || self.limits.admit(Limit::PendingRegistrations, self.pending.len());
        if !retransmission && (!room || !self.routing.backend(backend).try_admit(now.mono_ms)) {
            if let Some(binding) = fallback {
                let grant = candidate.as_ref().map_or(self.policy.load().phone_expires, |(_, g)| *g);
                self.refresh_here(msg, request, grant, now);
                self.absorbed_ok(msg, binding.contact.as_bytes(), grant, now, reply);
                return RegistrationOutcome::Absorbed;
            }
            let retry = format!("Retry-After: {}\r\n", self.retry_after(device, now));
            return self.answer(
                msg,
                503,
                if room { "Registration Rate Limited" } else { "Too Many Pending Registrations" },
                retry.as_bytes(),
                reply,
                RegistrationOutcome::RateLimited,
            );
        }
        let (transport, us) = self.backend_facing(backend);
        let via = format!("SIP/2.0/{} {us};branch={branch};rport", transport.via());
        let honours_path = self.routing.backend(backend).path;
        let path = honours_path.then(|| format!("<{};lr;ob>", self.flow_uri(&flow, backend)));
        let upstream_contact = if request.contact().is_some() { self.upstream_contact(&flow, backend) } else { None };
        let deregister = request.expires == Some(0);
        let how = ForwardRequest {
            via: &via,
            path: path.as_deref(),
            expires: if deregister || candidate.is_none() { None } else { Some(self.policy.load().backend_expires) },
            contact_uri: upstream_contact.as_deref(),
        };
        let mut bytes = Vec::with_capacity(raw.len() + 200);
        if forward::forward_request(msg, raw, &how, &mut bytes) == Err(TooManyHops) {
            return self.answer(msg, 483, "Too Many Hops", b"", reply, RegistrationOutcome::Rejected);
        }
        if retransmission {
            sends.push(Send { to: Destination::Backend(backend), bytes });
            self.stats.count(RegistrationOutcome::Retransmission);
            return RegistrationOutcome::Retransmission;
        }
        let (candidate, grant) = match candidate {
            Some((mut binding, grant)) => {
                binding.backend = backend;
                (Some(binding), grant)
            }
            None => (None, 0),
        };
        self.pending.insert(
            branch,
            Pending {
                phone: Some(flow),
                device: device.clone(),
                candidate,
                deregister,
                backend,
                grant,
                sent_ms: now.mono_ms,
                upstream_contact,
            },
        );
        sends.push(Send { to: Destination::Backend(backend), bytes });
        self.stats.count(RegistrationOutcome::Forwarded);
        RegistrationOutcome::Forwarded
    }

    /// Whether `peer` has a backend's IP address (any port: a backend may answer from
    /// another port than it listens on). Only backends answer forwarded REGISTERs.
    pub fn is_backend_address(&self, peer: std::net::SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.routing.backends.iter().any(|b| b.address.ip().to_canonical() == ip)
    }

    /// Handles a response; returns false if it is not an answer to a request regedge
    /// forwarded (then the caller drops it).
    pub fn on_response(&self, msg: &Message<'_>, raw: &[u8], now: Now, sends: &mut Vec<Send>) -> bool {
        let StartLine::Response { code, .. } = msg.start else { return false };
        let Some(branch) = forward::top_via_branch(msg).filter(|b| b.starts_with(BRANCH_PREFIX.as_bytes())) else {
            return false;
        };
        let branch = String::from_utf8_lossy(branch);
        if code < 200 {
            if let Some(pending) = self.pending.get(branch.as_ref()).and_then(|p| p.phone) {
                let mut bytes = Vec::with_capacity(raw.len());
                forward::relay_response(msg, raw, &mut bytes);
                sends.push(Send { to: Destination::Phone(pending), bytes });
            }
            return true;
        }
        let Some((_, pending)) = self.pending.remove(branch.as_ref()) else { return true };
        self.stats.observe_response(now.mono_ms.saturating_sub(pending.sent_ms));
        let mut bytes = Vec::with_capacity(raw.len());
        match code {
            200..=299 if pending.deregister => {
                // Only the binding on the backend that accepted the de-registration ends:
                // a phone that moved is de-registered at its old backend while its new
                // binding stands.
                if let Some(ended) = self.registry.remove_if(&pending.device, |b| b.backend == pending.backend) {
                    self.unmirror(&pending.device, &ended);
                }
                forward::relay_response(msg, raw, &mut bytes);
            }
            200..=299 => match pending.candidate {
                Some(mut binding) => {
                    let upstream = pending.upstream_contact.as_deref().unwrap_or(&binding.contact);
                    let granted = forward::granted_expires(msg, upstream.as_bytes())
                        .unwrap_or(self.policy.load().backend_expires);
                    if granted == 0 {
                        if let Some(ended) = self.registry.remove(&pending.device) {
                            self.unmirror(&pending.device, &ended);
                        }
                    } else if let Some(newer) = self.registry.get(&pending.device).filter(|current| {
                        current.backend != binding.backend
                            && current.call_id == binding.call_id
                            && current.cseq >= binding.cseq
                    }) {
                        // A late answer (a slow backend, after the phone's retransmission of
                        // the same REGISTER went to the next one and was accepted there):
                        // the binding the phone uses stands, and the late backend, which now
                        // holds a contact regedge does not keep, is told to drop it. The
                        // phone already has its answer.
                        binding.backend_granted = granted;
                        binding.backend_valid_until_ms = now.mono_ms + granted as u64 * 1000;
                        if newer.cseq > binding.cseq {
                            binding.cseq = newer.cseq;
                            binding.last_via = newer.last_via;
                        }
                        tracing::info!(device = %pending.device, "late 2xx from a backend the phone left: de-registered there");
                        self.deregister_at_backend(&pending.device, &binding, now, sends);
                        return true;
                    } else {
                        binding.backend_granted = granted;
                        binding.backend_valid_until_ms = now.mono_ms + granted as u64 * 1000;
                        // The phone is told the smaller of its grant and the backend's.
                        binding.phone_expires_at_ms = now.mono_ms + pending.grant.min(granted) as u64 * 1000;
                        let contact = binding.contact.clone();
                        let new_backend = binding.backend;
                        let previous = self.registry.get(&pending.device);
                        self.lapses
                            .post(binding.phone_expires_at_ms + self.policy.load().lapse_grace_ms, &pending.device);
                        // An entry under the previous Call-ID ends; this one replaces it.
                        if let Some(old) = previous
                            .as_ref()
                            .filter(|old| old.kernel.map(|k| k.call_id_key) != binding.kernel.map(|k| k.call_id_key))
                        {
                            self.unmirror(&pending.device, old);
                        }
                        self.sync_kernel(&pending.device, &binding);
                        self.registry.insert(pending.device.clone(), binding);
                        // A phone that moved leaves its old backend, if that one can hear it,
                        // so that it is registered on one backend of its group only.
                        if let Some(old) = previous.filter(|old| {
                            old.backend != new_backend
                                && self.routing.backend(old.backend).state() != BackendState::Down
                                && now.mono_ms < old.backend_valid_until_ms
                        }) {
                            self.deregister_at_backend(&pending.device, &old, now, sends);
                        }
                        let grant = pending.grant.min(granted);
                        forward::registration_ok(msg, raw, contact.as_bytes(), grant, &self.date_line(now), &mut bytes);
                    }
                    if bytes.is_empty() {
                        forward::relay_response(msg, raw, &mut bytes);
                    }
                }
                None => forward::relay_response(msg, raw, &mut bytes),
            },
            401 | 407 => {
                self.stats.count(RegistrationOutcome::Challenged);
                forward::relay_response(msg, raw, &mut bytes);
            }
            _ => {
                // Nothing is stored on a failure; a backend that refuses the phone
                // (403, 404) also ends what regedge had cached for it.
                if matches!(code, 403 | 404)
                    && let Some(ended) = self.registry.remove(&pending.device)
                {
                    self.unmirror(&pending.device, &ended);
                }
                self.stats.count(RegistrationOutcome::Rejected);
                forward::relay_response(msg, raw, &mut bytes);
            }
        }
        if let Some(phone) = pending.phone {
            sends.push(Send { to: Destination::Phone(phone), bytes });
        } else if !(200..300).contains(&code) {
            tracing::info!(device = %pending.device, code, "backend did not accept regedge's de-registration");
        }
        true
    }

    /// Timers: forwarded REGISTERs that got no answer, and bindings whose phone stopped
    /// refreshing (de-registered at the backend, best effort).
    pub fn on_tick(&self, now: Now, sends: &mut Vec<Send>) {
        self.fold_absorbed();
        self.fold_cluster(now);
        let timeout = self.policy.load().transaction_timeout_ms;
        let expired: Vec<String> =
            self.pending.iter().filter(|p| now.mono_ms >= p.sent_ms + timeout).map(|p| p.key().clone()).collect();
        for branch in expired {
            if self.pending.remove(&branch).is_some() {
                self.stats.backend_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let grace = self.policy.load().lapse_grace_ms;
        let lapsed = self.lapses.take_due(now.mono_ms).into_iter().filter_map(|device| {
            let binding = self.registry.remove_if(&device, |b| now.mono_ms > b.phone_expires_at_ms + grace)?;
            Some((device, binding))
        });
        for (device, binding) in lapsed {
            self.unmirror(&device, &binding);
            self.stats.lapsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%device, "binding lapsed: de-registering at the backend");
            if now.mono_ms < binding.backend_valid_until_ms
                && self.routing.backend(binding.backend).state() != BackendState::Down
            {
                self.deregister_at_backend(&device, &binding, now, sends);
            }
        }
        self.deregister_removed(now, sends);
    }

    /// A REGISTER with Expires 0 for a lapsed binding, sent as the phone would have.
    fn deregister_at_backend(&self, device: &str, binding: &Binding, now: Now, sends: &mut Vec<Send>) {
        let cseq = binding.cseq.saturating_add(1);
        let branch = format!(
            "{BRANCH_PREFIX}{:016x}",
            hash_of(&[device.as_bytes(), binding.call_id.as_bytes(), &cseq.to_be_bytes()])
        );
        let (transport, us) = self.backend_facing(binding.backend);
        let domain = String::from_utf8_lossy(crate::sip::contact::uri_hostport(binding.aor.as_bytes())).into_owned();
        let tag = String::from_utf8_lossy(&self.node.to_tag.bytes()).into_owned();
        let bytes = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/{} {us};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <{aor}>;tag={tag}\r\nTo: <{aor}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <{contact}>;expires=0\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n",
            transport.via(),
            aor = binding.aor,
            call_id = binding.call_id,
            contact = self.upstream_contact(&binding.flow, binding.backend).unwrap_or_else(|| binding.contact.clone()),
        )
        .into_bytes();
        self.pending.insert(
            branch,
            Pending {
                phone: None,
                device: device.to_owned(),
                candidate: None,
                deregister: true,
                backend: binding.backend,
                grant: 0,
                sent_ms: now.mono_ms,
                upstream_contact: None,
            },
        );
        sends.push(Send { to: Destination::Backend(binding.backend), bytes });
    }

    /// Forwarded REGISTERs waiting for an answer.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The caps in force and their refusals.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The caps in force, to share with the event loops.
    pub fn limits_arc(&self) -> Arc<Limits> {
        Arc::clone(&self.limits)
    }
}
