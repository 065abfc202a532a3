//! Map names and layouts. Each map's doc comment says who writes it and who reads it.

/// `HashMap<ListenerKey, ListenerValue>`: the SIP UDP listeners the fast path answers for.
/// Written by userspace at start (one entry per `[sip] listen` address), read per packet.
pub const LISTENERS: &str = "LISTENERS";
/// `HashMap<LocalNameKey, u8>`: Request-URI hosts that mean "this proxy" (`[sip]
/// local_names`, listen addresses, and the interface addresses of wildcard listeners).
pub const LOCAL_NAMES: &str = "LOCAL_NAMES";
/// `Array<FastpathSettings>` with one entry: node-wide answer settings.
pub const SETTINGS: &str = "SETTINGS";
/// `PerCpuArray<u64>` indexed by [`ReplyKind`](crate::ReplyKind).
pub const REPLIES: &str = "REPLIES";
/// `PerCpuArray<u64>` indexed by [`PassReason`](crate::PassReason).
pub const PASSES: &str = "PASSES";
/// `HashMap<u64, BindingEntry>`: the kernel mirror of bindings whose UDP refreshes the
/// XDP program may answer, keyed by [`call_id_key`](crate::hash::call_id_key). Written by
/// userspace (insert when a binding becomes absorbable, flag or remove the moment it
/// stops being so); the kernel writes only `cseq` and `last_seen_ms` when it answers.
pub const BINDINGS: &str = "BINDINGS";
/// `RingBuf` of [`AbsorbedRefresh`]: one record per refresh the kernel answered, drained
/// by userspace in batches (a full ring loses records, not refreshes: the entry itself
/// holds the latest CSeq and time).
pub const ABSORBED: &str = "ABSORBED";

pub const LISTENERS_MAX: u32 = 64;
pub const LOCAL_NAMES_MAX: u32 = 256;
/// Bindings the kernel mirror can hold; more are answered by userspace.
pub const BINDINGS_MAX: u32 = 1 << 20;
/// Size of the [`ABSORBED`] ring in bytes (a power of two, a multiple of the page size):
/// 4 MiB holds ~130k records, minutes of refreshes at a million phones.
pub const ABSORBED_RING_BYTES: u32 = 1 << 22;

/// Address family tags used in [`ListenerKey::family`].
pub const FAMILY_IPV4: u16 = 4;
pub const FAMILY_IPV6: u16 = 6;

/// A UDP listener: family, address, port. IPv4 addresses occupy the first four bytes of
/// `addr`, the rest is zero. An all-zero `addr` is the wildcard listener of that family
/// (`0.0.0.0` / `[::]`); the kernel looks up the exact key first, then the wildcard.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub family: u16,
    /// Network byte order, as in the UDP header.
    pub port_be: u16,
    pub addr: [u8; 16],
}

impl ListenerKey {
    pub const fn ipv4(addr: [u8; 4], port_be: u16) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self { family: FAMILY_IPV4, port_be, addr: a }
    }

    pub const fn ipv6(addr: [u8; 16], port_be: u16) -> Self {
        Self { family: FAMILY_IPV6, port_be, addr }
    }
}

/// What the fast path may answer on a listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerValue {
    pub answers: u32,
}

/// [`ListenerValue::answers`] bits.
pub const ANSWER_STUN: u32 = 1 << 0;
pub const ANSWER_CRLF: u32 = 1 << 1;
pub const ANSWER_OPTIONS: u32 = 1 << 2;
pub const ANSWER_KEEPALIVES: u32 = ANSWER_STUN | ANSWER_CRLF | ANSWER_OPTIONS;
/// REGISTER refreshes of bindings in [`BINDINGS`], and Cisco backup probes.
pub const ANSWER_REGISTER: u32 = 1 << 3;

/// Longest Request-URI host the fast path compares (longer hosts are never "us").
pub const LOCAL_NAME_MAX: usize = 63;

/// A host that means "this proxy", lower-cased and zero-padded; IPv6 references keep
/// their brackets (`[2001:db8::1]`), as they appear in a SIP URI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalNameKey {
    pub name: [u8; LOCAL_NAME_MAX + 1],
}

impl LocalNameKey {
    /// The key for `host`, or `None` if it is longer than [`LOCAL_NAME_MAX`].
    pub fn new(host: &[u8]) -> Option<Self> {
        if host.is_empty() || host.len() > LOCAL_NAME_MAX {
            return None;
        }
        let mut name = [0u8; LOCAL_NAME_MAX + 1];
        let mut i = 0;
        while i < host.len() {
            name[i] = host[i].to_ascii_lowercase();
            i += 1;
        }
        Some(Self { name })
    }
}

/// Node-wide settings, one entry in [`SETTINGS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastpathSettings {
    /// The To-tag this node puts in stateless responses (see `sip::TO_TAG_LEN`). All zero
    /// means "not configured": the kernel then passes every OPTIONS to userspace.
    pub to_tag: [u8; crate::sip::TO_TAG_LEN],
    /// `SETTING_*` bits.
    pub flags: u32,
    /// Replies a source address may get from the kernel per second (and in a burst);
    /// beyond, its requests go to userspace (`PassReason::RateLimited`). 0: no limit.
    pub reply_rate_per_source: u32,
    /// CLOCK_REALTIME minus CLOCK_TAI in nanoseconds, kept current by userspace: the
    /// kernel reads `bpf_ktime_get_tai_ns` and adds this to write the Date header.
    pub realtime_minus_tai_ns: i64,
}

/// Source addresses whose reply budget the kernel tracks at once (an LRU map: the least
/// recently seen source is forgotten first, and starts again with a full budget).
pub const SOURCE_BUDGETS_MAX: u32 = 65_536;

/// A source address's reply budget (`SOURCE_BUDGETS`), a token bucket: `tokens` in
/// thousandths of a reply, refilled at `reply_rate_per_source` per second up to one
/// second's worth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceBudget {
    pub tokens_milli: u64,
    pub last_ns: u64,
}

/// [`FastpathSettings::flags`]: answers to REGISTER carry a `Date` header
/// (`[registration] date_header`).
pub const SETTING_DATE_HEADER: u32 = 1 << 0;

/// [`BindingEntry::contact_expires`] when the contact has no `expires` parameter.
pub const NO_CONTACT_EXPIRES: u32 = u32::MAX;

/// [`BindingEntry::flags`]: the To header of the binding's REGISTERs has a tag.
pub const BINDING_TO_HAS_TAG: u16 = 1 << 0;
/// [`BindingEntry::flags`]: refreshes go to userspace (the backend is down or draining,
/// the group moved, a reload is under way).
pub const BINDING_PASS: u16 = 1 << 1;

/// What the XDP program needs to answer a phone's REGISTER refresh exactly as userspace
/// would (`proxy/src/registrar/mirror.rs` writes it; the rules are documented there).
///
/// Times are CLOCK_MONOTONIC milliseconds (`bpf_ktime_get_ns() / 1_000_000`), which
/// userspace's clock also reads, so they survive a userspace restart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingEntry {
    /// [`identity`](crate::hash::identity) of the To and Contact values last accepted.
    pub identity: u64,
    /// [`hash_bytes`](crate::hash::hash_bytes) of the trimmed Authorization (or
    /// Proxy-Authorization) value last accepted; 0 when none was.
    pub auth: u64,
    /// A refresh is answered only if its grant ends before this time (the backend's
    /// registration must not be past half its life by the phone's next refresh).
    pub absorb_until_ms: u64,
    /// When the kernel last answered a refresh (written by the kernel).
    pub last_seen_ms: u64,
    /// The phone's address (the packet's source), as in `ListenerKey::addr`.
    pub peer_addr: [u8; 16],
    /// The address the phone sends to (the packet's destination).
    pub local_addr: [u8; 16],
    /// CSeq of the last REGISTER accepted; a refresh must be higher (kernel updates it).
    pub cseq: u32,
    /// The most this phone is granted (`phone_expires` less the device's jitter).
    pub grant_ceiling: u32,
    /// The `expires` parameter of the accepted Contact value, or [`NO_CONTACT_EXPIRES`].
    pub contact_expires: u32,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u16,
    /// `BINDING_*` bits.
    pub flags: u16,
    /// Network byte order.
    pub peer_port_be: u16,
    pub local_port_be: u16,
    /// Where the contact URI (between `<` and `>`) starts in the trimmed Contact value,
    /// and its length: the 200 OK repeats it.
    pub contact_uri_off: u16,
    pub contact_uri_len: u16,
}

/// One refresh the kernel answered (a record in [`ABSORBED`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbsorbedRefresh {
    pub call_id_key: u64,
    pub seen_ms: u64,
    pub cseq: u32,
    /// Seconds granted in the answer.
    pub grant: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding holes that matter to the kernel
    // (every byte is written by the constructors above).
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerValue {}
    unsafe impl aya::Pod for super::LocalNameKey {}
    unsafe impl aya::Pod for super::FastpathSettings {}
    unsafe impl aya::Pod for super::BindingEntry {}
    unsafe impl aya::Pod for super::AbsorbedRefresh {}
    unsafe impl aya::Pod for super::SourceBudget {}
}

/// `SockHash<SccpSocketKey>`: the phones' SCCP TCP sockets the KeepAlive program
/// (`SCCP_PROGRAM`) runs on. Written by userspace (insert when a phone connects, after
/// its [`SCCP_FRAMING`] entry; the kernel drops a socket by itself when it closes).
pub const SCCP_SOCKETS: &str = "SCCP_SOCKETS";
/// `HashMap<SccpSocketKey, SccpFraming>`: where each phone socket's byte stream stands
/// between PDUs. Created zeroed by userspace before the socket enters [`SCCP_SOCKETS`],
/// then written only by the kernel (userspace reads it, and removes it with the socket).
pub const SCCP_FRAMING: &str = "SCCP_FRAMING";
/// `HashMap<SccpSocketKey, u32>`: phone sockets whose KeepAlives the kernel answers (the
/// phone registered here; a standby connection, where regedge is the backup CM, is never
/// in it). Written by userspace only: a separate map, so that setting the mark never
/// races with the kernel's writes to [`SCCP_FRAMING`].
pub const SCCP_REGISTERED: &str = "SCCP_REGISTERED";
/// Phone sockets the KeepAlive program can hold; more are served by userspace alone.
pub const SCCP_SOCKETS_MAX: u32 = 1 << 16;

/// `AF_INET` / `AF_INET6` as in `__sk_buff.family` (Linux values).
pub const SOCKET_FAMILY_INET: u32 = 2;
pub const SOCKET_FAMILY_INET6: u32 = 10;

/// One TCP socket by its 4-tuple, as the `sk_skb` program sees it in `__sk_buff`.
/// Addresses are the raw network-order words (`remote_ip4` / `remote_ip6`; an IPv4
/// address occupies word 0, the rest is zero; a dual-stack socket's peer is the
/// IPv4-mapped IPv6 address, family `AF_INET6`). Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SccpSocketKey {
    pub family: u32,
    pub local_port_be: u16,
    pub remote_port_be: u16,
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
}

impl SccpSocketKey {
    /// The key of the socket with local address `local` and peer `remote` (the
    /// socket's own family: a dual-stack listener's sockets are IPv6 ones).
    pub fn new(local: core::net::SocketAddr, remote: core::net::SocketAddr) -> Self {
        fn words(addr: core::net::IpAddr) -> (u32, [u32; 4]) {
            let mut w = [0u32; 4];
            match addr {
                core::net::IpAddr::V4(a) => {
                    w[0] = u32::from_ne_bytes(a.octets());
                    (SOCKET_FAMILY_INET, w)
                }
                core::net::IpAddr::V6(a) => {
                    let o = a.octets();
                    for (i, word) in w.iter_mut().enumerate() {
                        *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                    }
                    (SOCKET_FAMILY_INET6, w)
                }
            }
        }
        let (family, local_addr) = words(local.ip());
        let (_, remote_addr) = words(remote.ip());
        Self {
            family,
            local_port_be: local.port().to_be(),
            remote_port_be: remote.port().to_be(),
            local_addr,
            remote_addr,
        }
    }
}

/// [`SccpFraming::flags`]: the kernel lost the PDU boundaries of this socket (a header
/// it could not read, a segment with more PDUs than it walks): from then on it passes
/// everything to userspace and answers nothing.
pub const SCCP_OUT_OF_SYNC: u32 = 1 << 0;

/// Where a phone socket's byte stream stands, kept by the KeepAlive program across the
/// segments it sees. Zero: at a PDU boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SccpFraming {
    /// Bytes of the current PDU still to come after its first 8 header bytes.
    pub owed: u32,
    /// How many of the current PDU's first 8 header bytes (`data_length`,
    /// `header_version`) arrived so far, when a segment ended inside them (0..=7).
    pub header_have: u32,
    /// Those bytes.
    pub header: [u8; 8],
    /// `SCCP_*` flags.
    pub flags: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod sccp_pod {
    // SAFETY: plain #[repr(C)] data without padding holes (explicit `_pad` fields).
    unsafe impl aya::Pod for super::SccpSocketKey {}
    unsafe impl aya::Pod for super::SccpFraming {}
}
