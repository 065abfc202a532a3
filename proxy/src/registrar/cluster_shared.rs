//! The registrar's side of several nodes sharing bindings (`crate::cluster`): the
//! advertised address in Path, adoption of another node's binding when its phone shows up
//! here (or the store thread swept it to this node), and letting go of bindings another
//! node took.

use std::sync::Arc;

use super::{Now, Registrar};
use crate::{
    cluster::{Adoption, ClusterLink, Found},
    failover::BackendId,
    registry::{Binding, Flow},
};

/// Whether this node holds a binding (possibly adopted from another node just now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held<T> {
    Here(T),
    /// Not here; the cluster store was asked and answers within a round trip.
    Asked,
    Nowhere,
}

impl Registrar {
    /// Shares the bindings through `link` (the registry journals every change for the
    /// store thread, which reads `journal`'s other end).
    pub fn with_cluster(mut self, link: Arc<ClusterLink>, journal: crossbeam_channel::Sender<String>) -> Self {
        self.registry.keep_journal(journal);
        self.cluster = Some(link);
        self
    }

    /// Names `advertise` in Path and flow-token URIs (the address every node answers).
    pub fn with_advertise(mut self, advertise: Option<std::net::SocketAddr>) -> Self {
        self.advertise = advertise;
        self
    }

    /// The address Record-Route and Path give a backend for this node.
    pub fn advertised_facing(&self, backend: BackendId) -> (crate::registry::Transport, std::net::SocketAddr) {
        let (transport, us) = self.backend_facing(backend);
        (transport, self.advertise.unwrap_or(us))
    }

    /// The binding of `device`, or one adopted from another node for it (from the
    /// directory: see `ClusterLink::find_flow` for why a REGISTER does not ask the store).
    pub(super) fn binding_here(&self, device: &str, now: Now) -> Option<Binding> {
        if let Some(binding) = self.registry.get(device) {
            return Some(binding);
        }
        let entry = self.cluster.as_ref()?.directory.get(device)?;
        self.adopt(entry.binding, now, Adoption::Sighted).map(|(_, binding)| binding)
    }

    /// The device registered over `flow` and its binding, adopted from the directory when
    /// this node has none (a phone of a dead node sending a request here). The store is not
    /// asked: this is who sent a request, looked up for every request, backends' included.
    pub fn binding_by_flow(&self, flow: &Flow) -> Option<(String, Binding)> {
        if let Some(found) = self.registry.by_flow(flow) {
            return Some(found);
        }
        let entry = self.cluster.as_ref()?.directory.by_flow(flow)?;
        self.adopt(entry.binding, Now { mono_ms: crate::io::workers::monotonic_ms(), unix_secs: 0 }, Adoption::Sighted)
    }

    /// The binding on `flow`, a destination a flow token names: as
    /// [`Registrar::binding_by_flow`], else asked of the store (its answer comes within a
    /// round trip).
    pub fn find_by_flow(&self, flow: &Flow) -> Held<(String, Binding)> {
        if let Some(found) = self.registry.by_flow(flow) {
            return Held::Here(found);
        }
        let Some(cluster) = &self.cluster else { return Held::Nowhere };
        match cluster.find_flow(flow) {
            Found::Record(entry) => {
                let now = Now { mono_ms: crate::io::workers::monotonic_ms(), unix_secs: 0 };
                self.adopt(entry.binding, now, Adoption::Sighted).map_or(Held::Nowhere, Held::Here)
            }
            Found::Asked => Held::Asked,
            Found::Absent => Held::Nowhere,
        }
    }

    /// Loads a binding another node wrote (times in Unix milliseconds) into the registry
    /// and the kernel mirror, sending nothing upstream; `None` when it is of no use any
    /// more (the phone's or the backend's registration ran out, its group or backend is
    /// not configured here) or this node has one for the device already.
    fn adopt(&self, saved: crate::snapshot::SavedBinding, now: Now, how: Adoption) -> Option<(String, Binding)> {
        let cluster = self.cluster.as_ref()?;
        let clock = crate::cluster::WallClock::now(now.mono_ms);
        let (device, binding) = saved.into_binding(&self.routing, |t| clock.to_mono(t))?;
        let grace = self.policy.load().lapse_grace_ms;
        if binding.phone_expires_at_ms + grace <= now.mono_ms || binding.backend_valid_until_ms <= now.mono_ms {
            return None;
        }
        if self.registry.get(&device).is_some() {
            return None;
        }
        cluster.adopted(&device, how);
        self.registry.insert(device.clone(), binding.clone());
        self.sync_kernel(&device, &binding);
        self.lapses.post(binding.phone_expires_at_ms + grace, &device);
        tracing::debug!(%device, how = how.label(), "binding adopted from another node");
        Some((device, binding))
    }

    /// Applies what the store thread found: bindings its sweeper took over are loaded,
    /// bindings another node took are let go (no de-registration: the phone is served there).
    pub(super) fn fold_cluster(&self, now: Now) {
        let Some(cluster) = &self.cluster else { return };
        for saved in cluster.take_swept() {
            self.adopt(saved, now, Adoption::Swept);
        }
        for device in cluster.take_lost() {
            cluster.hand_over(&device);
            match self.registry.remove(&device) {
                Some(binding) => {
                    self.unmirror(&device, &binding);
                    tracing::debug!(%device, "binding taken over by another node: let go here");
                }
                None => {
                    cluster.was_handed_over(&device);
                }
            }
        }
    }
}
