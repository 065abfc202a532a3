//! What operators and the process's own lifecycle do to the registrar besides traffic:
//! drain and enable a backend, remove a binding, take a reloaded config (timing policy
//! and routing), and stop taking registrations at shutdown. No I/O: what must go to a
//! backend leaves through the next tick's sends, like everything else.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use crossbeam_channel::{Receiver, Sender};

use super::{Now, Policy, Registrar, RegistrationOutcome, Send, request::Device, request::RegisterRequest};
use crate::{
    config::{BackendProtocol, BackendTransport},
    failover::{BackendId, BackendState, GroupId},
    registry::{Binding, Transport},
    sip::Message,
};

/// The registrar's operational state.
pub(super) struct Operations {
    /// Shutting down: REGISTERs that would be forwarded are refused.
    stopping: AtomicBool,
    /// Bindings an operator removed, de-registered at their backend at the next tick.
    removed_tx: Sender<(String, Binding)>,
    removed_rx: Receiver<(String, Binding)>,
}

impl Default for Operations {
    fn default() -> Self {
        let (removed_tx, removed_rx) = crossbeam_channel::unbounded();
        Self { stopping: AtomicBool::new(false), removed_tx, removed_rx }
    }
}

/// Where a binding's refreshes are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMirror {
    /// Not in the kernel map: no fast path, or a binding the kernel cannot match (TCP).
    Absent,
    /// In the kernel map; the XDP program answers its refreshes.
    Answering,
    /// In the kernel map but flagged: its refreshes come to userspace (its backend is down,
    /// drained, retired or not its group's choice now).
    Flagged,
}

impl KernelMirror {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Answering => "answering",
            Self::Flagged => "flagged",
        }
    }
}

impl Registrar {
    /// The timing policy in force.
    pub fn policy(&self) -> Policy {
        **self.policy.load()
    }

    /// Takes the timing policy of a reloaded config. Grants, lapses and forwarded
    /// expiries follow from the next REGISTER on; [`Registrar::rejudge_bindings`] brings
    /// the kernel entries (grant ceilings) and lapse timers of the bindings held along.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// After a reload changed the routing or the policy. Each binding's group is found
    /// again by the rules (from its device key and AOR); one whose group is gone keeps
    /// the retired group, whose phones have no backend until they register again. Every
    /// kernel entry is rewritten, flagged where the binding's backend is no longer its
    /// group's choice, so that the next refresh comes to userspace and moves the phone;
    /// every lapse timer is set again with the current grace. Nothing is dropped and
    /// nothing is sent. Returns how many bindings changed group.
    pub fn rejudge_bindings(&self) -> usize {
        let grace = self.policy().lapse_grace_ms;
        let mut regrouped = 0;
        for (device, binding) in self.registry.snapshot() {
            let wanted =
                self.routing.group_for_protocol(&Device::from_key(&device, &binding.aor), BackendProtocol::Sip);
            self.registry.update(&device, |b| {
                if let Some(group) = wanted.filter(|g| *g != b.group) {
                    b.group = group;
                    regrouped += 1;
                }
                self.sync_kernel(&device, b);
                self.lapses.post(b.phone_expires_at_ms + grace, &device);
            });
        }
        regrouped
    }

    /// Drains (`true`) or enables (`false`) a backend: drained, it is no group's choice,
    /// so its phones move at their next refresh (their kernel entries are flagged now)
    /// and come back once it is enabled. Returns whether it was drained.
    pub fn set_drained(&self, backend: BackendId, drained: bool) -> bool {
        let was = self.routing.backend(backend).set_drained(drained);
        if was != drained {
            self.resync_groups_of(backend);
        }
        was
    }

    /// Rewrites the kernel entries of the bindings of every group `backend` is in.
    fn resync_groups_of(&self, backend: BackendId) {
        let groups: Vec<GroupId> = (0..self.routing.groups.len())
            .filter(|&g| self.routing.groups[g].backends.contains(&backend))
            .map(GroupId)
            .collect();
        self.registry.for_each(|device, binding| {
            if groups.contains(&binding.group) || binding.backend == backend {
                self.sync_kernel(device, binding);
            }
        });
    }

    /// Shutting down: from now on a REGISTER that would be forwarded is answered here
    /// when its binding is still valid upstream, else refused with 503 and Retry-After.
    pub fn begin_shutdown(&self) {
        self.operations.stopping.store(true, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.operations.stopping.load(Ordering::Relaxed)
    }

    /// The answer, while shutting down, to a REGISTER that would be forwarded: a refresh
    /// whose binding is still valid at the backend (`fallback`) is answered here, anything
    /// else gets 503 with a spread Retry-After (the phone comes back later, or goes to its
    /// next call server).
    pub(super) fn answer_while_stopping(
        &self,
        msg: &Message<'_>,
        request: &RegisterRequest<'_>,
        fallback: Option<&Binding>,
        grant: u32,
        now: Now,
        reply: &mut Vec<u8>,
    ) -> RegistrationOutcome {
        if let Some(binding) = fallback {
            self.refresh_here(msg, request, grant, now);
            self.absorbed_ok(msg, binding.contact.as_bytes(), grant, now, reply);
            return RegistrationOutcome::Absorbed;
        }
        let retry = format!("Retry-After: {}\r\n", self.retry_after(&request.device.key, now));
        self.answer(msg, 503, "Shutting Down", retry.as_bytes(), reply, RegistrationOutcome::Rejected)
    }

    /// Removes `device`'s binding and its kernel entry now. Its backend is told at the
    /// next tick, as for a binding that lapsed: a de-registration, when the backend's
    /// registration is still valid and the backend is not down.
    pub fn remove_binding(&self, device: &str) -> Option<Binding> {
        let binding = self.registry.remove(device)?;
        self.unmirror(device, &binding);
        let _ = self.operations.removed_tx.send((device.to_owned(), binding.clone()));
        Some(binding)
    }

    /// Sends the de-registrations of the bindings removed since the last tick.
    pub(super) fn deregister_removed(&self, now: Now, sends: &mut Vec<Send>) {
        for (device, binding) in self.operations.removed_rx.try_iter() {
            let backend = self.routing.backend(binding.backend);
            if now.mono_ms < binding.backend_valid_until_ms && backend.state() != BackendState::Down {
                tracing::info!(%device, backend = %backend.name, "binding removed by an operator: de-registering it");
                self.deregister_at_backend(&device, &binding, now, sends);
            }
        }
    }

    /// How `backend` reaches this node (Via sent-by, Path host): from the node's list for
    /// the backends of the start, from the routing table for those a reload added.
    pub fn backend_facing(&self, backend: BackendId) -> (Transport, SocketAddr) {
        self.node.backend_facing.get(backend.0).copied().unwrap_or_else(|| {
            let backend = self.routing.backend(backend);
            let transport = match backend.transport {
                BackendTransport::Udp => Transport::Udp,
                BackendTransport::Tcp => Transport::Tcp,
            };
            (transport, backend.link.facing)
        })
    }

    /// Where `device`'s binding is answered.
    pub fn kernel_mirror(&self, device: &str, binding: &Binding) -> KernelMirror {
        let mirrored = self.kernel.updates.get().is_some()
            && binding
                .kernel
                .is_some_and(|seed| self.kernel.owners.get(&seed.call_id_key).is_some_and(|o| *o == device));
        match (mirrored, self.absorbable(binding)) {
            (false, _) => KernelMirror::Absent,
            (true, true) => KernelMirror::Answering,
            (true, false) => KernelMirror::Flagged,
        }
    }
}
