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

#[cfg(test)]
mod tests {
    use super::super::tests::{Phone, answer, backend_answer, now, registrar_from, send};
    use super::*;
    use crate::{config::Config, failover::Link, registrar::Destination};

    const CONFIG: &str = r#"
[[backends]]
name = "cm1"
address = "10.0.0.11:5060"

[[backends]]
name = "cm2"
address = "10.0.0.12:5060"

[[groups]]
name = "default"
backends = ["cm1", "cm2"]
"#;

    /// A full registration answered 200 by the backend it went to; that backend.
    fn register(r: &Registrar, phone: &Phone, at: Now) -> BackendId {
        let step = send(r, phone, &phone.register(120, ""), at);
        assert_eq!(step.outcome, RegistrationOutcome::Forwarded, "{}", step.reply);
        let Destination::Backend(backend) = step.sends[0].to else { panic!("sent to a phone") };
        let to_phone = answer(r, &step.sends, "200 OK", 3600, at);
        assert!(to_phone.starts_with("SIP/2.0 200 OK\r\n"), "{to_phone}");
        backend
    }

    /// A refresh with the next CSeq; its outcome and what went to backends.
    fn refresh(r: &Registrar, phone: &mut Phone, at: Now) -> (RegistrationOutcome, Vec<Send>) {
        phone.cseq += 1;
        let step = send(r, phone, &phone.register(120, ""), at);
        (step.outcome, step.sends)
    }

    /// Delivers the backend's 200 to `sent`; returns what the registrar sent next.
    fn accept(r: &Registrar, sent: &Send, at: Now) -> Vec<Send> {
        let response = backend_answer(&sent.bytes, "200 OK", 3600);
        let mut sends = Vec::new();
        assert!(r.on_response(&crate::sip::Message::parse(&response).unwrap(), &response, at, &mut sends));
        sends.into_iter().filter(|s| matches!(s.to, Destination::Backend(_))).collect()
    }

    #[test]
    fn a_drained_backend_loses_its_phones_at_their_next_refresh_and_gets_them_back_once_enabled() {
        let r = registrar_from(CONFIG);
        let mut phone = Phone::new(21);
        let device = "dev:SEP000000000015";
        assert_eq!(register(&r, &phone, now(0)), BackendId(0));
        assert!(!r.set_drained(BackendId(0), true));
        assert_eq!(r.routing.backend(BackendId(0)).state(), BackendState::Draining);
        let (outcome, sends) = refresh(&r, &mut phone, now(10));
        assert_eq!((outcome, sends[0].to), (RegistrationOutcome::Forwarded, Destination::Backend(BackendId(1))));
        let after = accept(&r, &sends[0], now(10));
        assert_eq!(after.len(), 1, "the drained backend is told the phone left");
        assert_eq!(after[0].to, Destination::Backend(BackendId(0)));
        assert!(String::from_utf8_lossy(&after[0].bytes).contains("\r\nExpires: 0\r\n"));
        assert_eq!(r.registry.get(device).unwrap().backend, BackendId(1));
        assert_eq!(refresh(&r, &mut phone, now(20)).0, RegistrationOutcome::Absorbed, "settled on cm2");
        // A health change does not undo the drain.
        r.on_backend_state(BackendId(0), BackendState::Up);
        assert_eq!(r.routing.backend(BackendId(0)).state(), BackendState::Draining);
        assert!(r.set_drained(BackendId(0), false));
        let (outcome, sends) = refresh(&r, &mut phone, now(30));
        assert_eq!((outcome, sends[0].to), (RegistrationOutcome::Forwarded, Destination::Backend(BackendId(0))));
        accept(&r, &sends[0], now(30));
        assert_eq!(r.registry.get(device).unwrap().backend, BackendId(0), "back on the enabled primary");
    }

    #[test]
    fn shutting_down_refuses_what_would_be_forwarded_and_answers_valid_refreshes() {
        let r = registrar_from(CONFIG);
        let mut known = Phone::new(22);
        register(&r, &known, now(0));
        r.begin_shutdown();
        assert!(r.is_stopping());
        let newcomer = Phone::new(23);
        let step = send(&r, &newcomer, &newcomer.register(120, ""), now(1));
        assert_eq!(step.outcome, RegistrationOutcome::Rejected);
        assert!(step.reply.starts_with("SIP/2.0 503 Shutting Down\r\n") && step.reply.contains("\r\nRetry-After: "));
        assert!(step.sends.is_empty(), "nothing forwarded while shutting down");
        assert_eq!(refresh(&r, &mut known, now(2)).0, RegistrationOutcome::Absorbed);
        // A de-registration still goes through.
        known.cseq += 1;
        let step = send(&r, &known, &known.register(0, ""), now(3));
        assert_eq!(step.outcome, RegistrationOutcome::Forwarded);
    }

    #[test]
    fn a_removed_binding_leaves_at_once_and_is_deregistered_at_the_next_tick() {
        let r = registrar_from(CONFIG);
        let phone = Phone::new(24);
        register(&r, &phone, now(0));
        let removed = r.remove_binding("dev:SEP000000000018").expect("the binding");
        assert_eq!(removed.call_id, "call-24");
        assert!(r.registry.is_empty());
        assert!(r.remove_binding("dev:SEP000000000018").is_none());
        let mut sends = Vec::new();
        r.on_tick(now(1), &mut sends);
        assert_eq!(sends.len(), 1);
        assert_eq!(sends[0].to, Destination::Backend(BackendId(0)));
        let dereg = String::from_utf8_lossy(&sends[0].bytes);
        assert!(dereg.contains("\r\nExpires: 0\r\n") && dereg.contains("Call-ID: call-24\r\n"), "{dereg}");
        let mut again = Vec::new();
        r.on_tick(now(2), &mut again);
        assert!(again.is_empty(), "once");
    }

    #[test]
    fn a_reload_keeps_every_binding_and_moves_those_of_a_removed_backend_at_their_next_refresh() {
        let r = registrar_from(CONFIG);
        let mut on_cm1 = Phone::new(25);
        register(&r, &on_cm1, now(0));
        let reloaded = Config::from_toml(
            "[registration]\nbackend_expires = 1800\n[[backends]]\nname = \"cm2\"\naddress = \"10.0.0.12:5060\"\n\
             [[backends]]\nname = \"cm3\"\naddress = \"10.0.0.13:5060\"\n\
             [[groups]]\nname = \"default\"\nbackends = [\"cm3\", \"cm2\"]\n",
            "reload",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let facing: SocketAddr = "10.0.0.1:5060".parse().unwrap();
        let changes = r.routing.reload(&reloaded, |_| Ok(Link { listener: 0, facing })).unwrap();
        assert_eq!(
            (changes.backends_added.as_slice(), changes.backends_removed.as_slice()),
            (&["cm3".to_owned()][..], &["cm1".to_owned()][..])
        );
        r.set_policy(Policy::from(&reloaded.registration));
        assert_eq!(r.rejudge_bindings(), 1, "the group was redefined: the binding takes the new one");
        assert_eq!(r.registry.len(), 1, "nothing dropped");
        assert_eq!(
            r.registry.get("dev:SEP000000000019").unwrap().backend,
            BackendId(0),
            "still on cm1 until it refreshes"
        );
        let (outcome, sends) = refresh(&r, &mut on_cm1, now(10));
        let cm3 = r.routing.backend_named("cm3").unwrap();
        assert_eq!((outcome, sends[0].to), (RegistrationOutcome::Forwarded, Destination::Backend(cm3)));
        let forwarded = String::from_utf8_lossy(&sends[0].bytes);
        assert!(forwarded.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch="), "{forwarded}");
        assert!(forwarded.contains("\r\nExpires: 1800\r\n"), "the new backend_expires: {forwarded}");
        let after = accept(&r, &sends[0], now(10));
        assert_eq!(after.len(), 1, "the removed backend is told the phone left");
        assert_eq!(after[0].to, Destination::Backend(BackendId(0)));
        assert_eq!(r.registry.get("dev:SEP000000000019").unwrap().backend, cm3);
    }
}
