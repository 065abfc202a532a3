//! The registrar's decision for one REGISTER with one contact: answer it here (absorb)
//! or forward it to the backend as a full registration. Every rule is a named reason, so
//! the decision table can be tested row by row and counted.

use crate::{
    failover::{BackendId, BackendState},
    registry::{Binding, Flow},
};

use super::request::RegisterRequest;

/// Why a REGISTER goes to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardReason {
    /// No binding for this device yet.
    NewBinding,
    /// Expires 0: a de-registration.
    Deregister,
    NewCallId,
    /// Another source address or port, or another connection.
    NewFlow,
    ContactChanged,
    /// Authorization with another username, realm or nonce than the backend accepted.
    NewCredentials,
    /// The binding's backend is down or draining, or the group prefers another one now.
    BackendChanged,
    /// The binding's CSeq again, and regedge cannot tell a retransmission from a replay
    /// (the kernel answered that CSeq): the backend judges it.
    RepeatedCseq,
    /// The backend's registration would be past half its life by the phone's next refresh.
    BackendRefreshDue,
}

/// What to do with a REGISTER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answer 200 here; the binding's CSeq and times move on.
    Absorb,
    /// The phone retransmitted the REGISTER already answered here (same CSeq, same top
    /// Via): answer it again.
    Retransmission,
    /// A CSeq lower than the binding's for the same Call-ID, or the same CSeq in another
    /// transaction (RFC 3261 §10.3 step 7: not higher, the update fails).
    OutOfOrder,
    Forward(ForwardReason),
}

/// Facts about now and the group the decision needs.
pub struct Context {
    pub now_ms: u64,
    /// Seconds the phone would be granted.
    pub grant: u32,
    /// The backend the device's group would register it with now.
    pub active_backend: Option<BackendId>,
    pub binding_backend_state: BackendState,
}

/// The decision table (ARCHITECTURE.md "what the kernel may answer"; issue 3).
pub fn decide(
    request: &RegisterRequest<'_>,
    contact_uri: &[u8],
    flow: &Flow,
    binding: Option<&Binding>,
    ctx: &Context,
) -> Decision {
    if request.expires == Some(0) {
        return Decision::Forward(ForwardReason::Deregister);
    }
    let Some(binding) = binding else { return Decision::Forward(ForwardReason::NewBinding) };
    if binding.call_id.as_bytes() != request.call_id {
        return Decision::Forward(ForwardReason::NewCallId);
    }
    if binding.flow != *flow {
        return Decision::Forward(ForwardReason::NewFlow);
    }
    if binding.contact.as_bytes() != contact_uri {
        return Decision::Forward(ForwardReason::ContactChanged);
    }
    if request.credentials.is_some() && request.credentials != binding.credentials {
        return Decision::Forward(ForwardReason::NewCredentials);
    }
    if request.cseq < binding.cseq {
        return Decision::OutOfOrder;
    }
    if request.cseq == binding.cseq {
        match binding.last_via {
            Some(via) if via != request.via => return Decision::OutOfOrder,
            None => return Decision::Forward(ForwardReason::RepeatedCseq),
            Some(_) => {}
        }
    }
    if binding.backend_state_allows_absorb(ctx) {
        if request.cseq == binding.cseq {
            return Decision::Retransmission;
        }
    } else {
        return Decision::Forward(ForwardReason::BackendChanged);
    }
    let refresh_due_ms = binding.backend_granted as u64 * 1000 / 2;
    let next_refresh_ms = ctx.now_ms + ctx.grant as u64 * 1000;
    if binding.backend_valid_until_ms <= next_refresh_ms + refresh_due_ms {
        return Decision::Forward(ForwardReason::BackendRefreshDue);
    }
    Decision::Absorb
}

impl Binding {
    /// The binding's backend is up and is the one its group uses now.
    fn backend_state_allows_absorb(&self, ctx: &Context) -> bool {
        ctx.binding_backend_state == BackendState::Up && ctx.active_backend == Some(self.backend)
    }
}
