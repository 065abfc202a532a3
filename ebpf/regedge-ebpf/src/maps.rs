//! The maps of the XDP program. Layouts and names come from `regedge_common::maps`.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use regedge_common::{
    PassReason, ReplyKind,
    maps::{
        ABSORBED_RING_BYTES, AbsorbedRefresh, BINDINGS_MAX, BindingEntry, FastpathSettings, LISTENERS_MAX,
        LOCAL_NAMES_MAX, ListenerKey, ListenerValue, LocalNameKey, SOURCE_BUDGETS_MAX, SourceBudget,
    },
};

use crate::frame::Udp;

/// SIP UDP listeners the fast path answers for (written by userspace at start).
#[map]
static LISTENERS: HashMap<ListenerKey, ListenerValue> = HashMap::with_max_entries(LISTENERS_MAX, 0);

/// Request-URI hosts that mean "this proxy" (written by userspace at start).
#[map]
static LOCAL_NAMES: HashMap<LocalNameKey, u8> = HashMap::with_max_entries(LOCAL_NAMES_MAX, 0);

/// Node-wide settings, one entry (written by userspace at start).
#[map]
static SETTINGS: Array<FastpathSettings> = Array::with_max_entries(1, 0);

/// Replies sent (or keepalives absorbed), per CPU, indexed by `ReplyKind`.
#[map]
static REPLIES: PerCpuArray<u64> = PerCpuArray::with_max_entries(ReplyKind::COUNT, 0);

/// Packets handed to the stack, per CPU, indexed by `PassReason`.
#[map]
static PASSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(PassReason::COUNT, 0);

/// Bindings whose refreshes may be answered here, keyed by the Call-ID hash (written by
/// userspace; the kernel updates `cseq` and `last_seen_ms` of the entries it answers for).
#[map]
static BINDINGS: HashMap<u64, BindingEntry> = HashMap::with_max_entries(BINDINGS_MAX, 0);

/// One `AbsorbedRefresh` per refresh answered here, for userspace to fold into its registry.
#[map]
static ABSORBED: RingBuf = RingBuf::with_byte_size(ABSORBED_RING_BYTES, 0);

/// Reply budgets of the sources the kernel answered lately, keyed by source address
/// (IPv4 in the first four bytes), for `[fastpath] reply_rate_per_source`.
#[map]
static SOURCE_BUDGETS: LruHashMap<[u8; 16], SourceBudget> = LruHashMap::with_max_entries(SOURCE_BUDGETS_MAX, 0);

/// Whether `udp`'s source may get one more reply from the kernel now; takes the token.
/// Concurrent updates from two CPUs may lose a token's bookkeeping: the limit is
/// approximate, never unbounded. Not inlined: a BPF-to-BPF call, so that the verifier
/// follows one state (admitted) into the rest of the program, not one per path in here.
#[inline(never)]
pub fn admit_source(saddr: &[u8; 16]) -> bool {
    let rate = match settings() {
        Some(s) => s.reply_rate_per_source as u64,
        None => 0,
    };
    if rate == 0 {
        return true;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let full = rate * 1000;
    match SOURCE_BUDGETS.get_ptr_mut(saddr) {
        Some(budget) => unsafe {
            let elapsed = now.saturating_sub((*budget).last_ns);
            // Thousandths of a reply earned since the last look, capped at one second's worth.
            let earned = if elapsed >= 1_000_000_000 { full } else { elapsed * rate / 1_000_000 };
            let tokens = (*budget).tokens_milli.saturating_add(earned);
            let tokens = if tokens > full { full } else { tokens };
            (*budget).last_ns = now;
            if tokens < 1000 {
                (*budget).tokens_milli = tokens;
                return false;
            }
            (*budget).tokens_milli = tokens - 1000;
            true
        },
        None => {
            let budget = SourceBudget { tokens_milli: full - 1000, last_ns: now };
            let _ = SOURCE_BUDGETS.insert(saddr, &budget, 0);
            true
        }
    }
}

/// Per-CPU working memory: the request payload, the reply under construction, the
/// OPTIONS scanner's state, the Request-URI host key and the REGISTER scanner's tables
/// (too big for the 512-byte stack).
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Size of the payload buffers; indexes are masked with `BUF_MASK` before every access.
pub const BUF: usize = 2048;
pub const BUF_MASK: usize = BUF - 1;
/// Room after the output buffer's last masked index: any masked length fits after any
/// masked index (the REGISTER path copies header lines there with a helper).
pub const OUT_SLACK: usize = BUF;

#[repr(C)]
pub struct Scratch {
    /// Scanner state words (see `options.rs`).
    pub state: [u32; 8],
    /// The Request-URI host, lower-cased, as a `LOCAL_NAMES` key.
    pub host: LocalNameKey,
    /// This node's To-tag, copied from `SETTINGS` for the scanner.
    pub tag: [u8; regedge_common::sip::TO_TAG_LEN],
    /// The request payload. +16: an 8-byte read at any masked index stays inside.
    pub input: [u8; BUF + 16],
    /// The reply payload. `OUT_SLACK` bytes past any masked index stay inside, so that
    /// texts are written with one mask.
    pub output: [u8; BUF + OUT_SLACK],
    /// The REGISTER scanner's lines, copy segments and state (see `register.rs`).
    pub reg: crate::register::RegScratch,
}

#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

#[inline(always)]
pub fn count_reply(kind: ReplyKind) {
    if let Some(slot) = REPLIES.get_ptr_mut(kind as u32) {
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_pass(reason: PassReason) {
    if let Some(slot) = PASSES.get_ptr_mut(reason as u32) {
        unsafe { *slot += 1 };
    }
}

/// The `answers` bits of the listener the packet was sent to: the exact address first,
/// then the wildcard of its family.
#[inline(always)]
pub fn listener_answers(udp: &Udp) -> Option<u32> {
    // `Udp::daddr` already has the IPv4 layout of `ListenerKey::addr` (rest zero).
    let mut key = ListenerKey { family: udp.family, port_be: udp.dport, addr: udp.daddr };
    if let Some(v) = unsafe { LISTENERS.get(&key) } {
        return Some(v.answers);
    }
    // Four volatile stores: a plain `[0; 16]` becomes a call to a byte-at-a-time memset.
    let addr = &raw mut key.addr as *mut u32;
    for i in 0..4 {
        unsafe { core::ptr::write_volatile(addr.add(i), 0) };
    }
    unsafe { LISTENERS.get(&key) }.map(|v| v.answers)
}

/// Whether `host` is one of the names that mean this proxy.
#[inline(always)]
pub fn is_local_name(host: *const LocalNameKey) -> bool {
    unsafe { LOCAL_NAMES.get(&*host) }.is_some()
}

#[inline(always)]
pub fn binding(call_id_key: u64) -> Option<*mut BindingEntry> {
    BINDINGS.get_ptr_mut(&call_id_key)
}

/// Hands a record to userspace; a full ring loses the record, not the answer.
#[inline(always)]
pub fn push_absorbed(record: &AbsorbedRefresh) {
    let _ = ABSORBED.output::<AbsorbedRefresh>(record, 0);
}

#[inline(always)]
pub fn settings() -> Option<&'static FastpathSettings> {
    SETTINGS.get(0)
}

// ---- SCCP KeepAlive program (`sccp.rs`) ----

/// The phones' SCCP TCP sockets the KeepAlive program runs on (written by userspace).
#[map]
static SCCP_SOCKETS: aya_ebpf::maps::SockHash<regedge_common::maps::SccpSocketKey> =
    aya_ebpf::maps::SockHash::with_max_entries(regedge_common::maps::SCCP_SOCKETS_MAX, 0);

/// Framing state per phone socket (created by userspace, then written by the kernel).
/// Not preallocated, like the two other SCCP maps: every load of the object creates them,
/// the XDP program's too, and most nodes have few SCCP phones or none.
#[map]
static SCCP_FRAMING: HashMap<regedge_common::maps::SccpSocketKey, regedge_common::maps::SccpFraming> =
    HashMap::with_max_entries(regedge_common::maps::SCCP_SOCKETS_MAX, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Phone sockets whose KeepAlives the kernel answers (written by userspace).
#[map]
static SCCP_REGISTERED: HashMap<regedge_common::maps::SccpSocketKey, u32> =
    HashMap::with_max_entries(regedge_common::maps::SCCP_SOCKETS_MAX, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

#[inline(always)]
pub fn sccp_framing(key: &regedge_common::maps::SccpSocketKey) -> Option<*mut regedge_common::maps::SccpFraming> {
    SCCP_FRAMING.get_ptr_mut(key)
}

#[inline(always)]
pub fn sccp_registered(key: &regedge_common::maps::SccpSocketKey) -> bool {
    unsafe { SCCP_REGISTERED.get(key) }.is_some()
}

/// `bpf_sk_redirect_hash` to the egress of the socket `key` in `SCCP_SOCKETS`: `SK_PASS`
/// when the socket was found (the verdict then redirects), `SK_DROP` otherwise.
#[inline(always)]
pub fn sccp_redirect_egress(
    ctx: &aya_ebpf::programs::SkBuffContext,
    key: &mut regedge_common::maps::SccpSocketKey,
) -> u32 {
    SCCP_SOCKETS.redirect_skb(ctx, key, 0) as u32
}
