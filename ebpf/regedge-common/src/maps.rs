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

pub const LISTENERS_MAX: u32 = 64;
pub const LOCAL_NAMES_MAX: u32 = 256;

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
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding holes that matter to the kernel
    // (every byte is written by the constructors above).
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerValue {}
    unsafe impl aya::Pod for super::LocalNameKey {}
    unsafe impl aya::Pod for super::FastpathSettings {}
}
