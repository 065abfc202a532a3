//! Counter indexes. The kernel keeps one per-CPU array per enum, indexed by the enum's
//! discriminant; userspace sums the CPUs at scrape time and labels each slot with
//! [`ReplyKind::label`] / [`PassReason::label`]. Userspace answers are counted with the
//! same [`ReplyKind`], so `kind` means the same thing on both sides.

/// What was answered (or absorbed) as steady-state upkeep.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// STUN Binding Request answered with a Binding Success Response (RFC 5389, RFC 5626 §4.4.2).
    Stun = 0,
    /// CRLF keepalive over UDP: absorbed, no reply (see `sip::CRLF_KEEPALIVES`).
    Crlf = 1,
    /// SIP OPTIONS addressed to the proxy itself, answered 200 OK.
    Options = 2,
    /// UDP REGISTER refresh of a binding regedge holds, answered 200 OK (registration
    /// throttling; see `maps::BindingEntry`).
    Register = 3,
    /// Cisco's liveness probe to a backup server (`REGISTER` with Expires 0 and the
    /// `cisco-keep-alive` contact parameter), answered 200 OK.
    BackupProbe = 4,
    /// SCCP KeepAlive from a registered phone, answered with KeepAliveAck.
    SccpKeepalive = 5,
}

impl ReplyKind {
    pub const COUNT: u32 = 6;
    pub const ALL: [ReplyKind; Self::COUNT as usize] =
        [Self::Stun, Self::Crlf, Self::Options, Self::Register, Self::BackupProbe, Self::SccpKeepalive];

    /// Value of the `kind` metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Stun => "stun",
            Self::Crlf => "crlf",
            Self::Options => "options",
            Self::Register => "register",
            Self::BackupProbe => "backup_probe",
            Self::SccpKeepalive => "sccp_keepalive",
        }
    }
}

/// Why the XDP program handed a packet to the network stack (XDP_PASS).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassReason {
    /// Not IPv4 or IPv6 (ARP, VLAN-tagged frames, ...).
    NotIp = 0,
    /// IP, but not UDP.
    NotUdp = 1,
    /// An IPv4 fragment (MF set or a fragment offset).
    IpFragment = 2,
    /// IPv4 header with options, or an IPv6 extension header before UDP.
    IpOptions = 3,
    /// UDP to an address and port that is not a configured SIP listener.
    NotListener = 4,
    /// Frame shorter than its headers claim, or inconsistent IP/UDP lengths.
    Truncated = 5,
    /// SIP payload larger than [`sip::MAX_PAYLOAD`](crate::sip::MAX_PAYLOAD).
    TooBig = 6,
    /// UDP payload the fast path does not answer at all (INVITE, responses, ...).
    NotKeepalive = 7,
    /// OPTIONS whose Request-URI is not the proxy itself (a user part, another host).
    NotForUs = 8,
    /// OPTIONS the kernel does not fully decode (missing or repeated headers, unusual
    /// syntax, a reply that would be larger than the request): userspace decides.
    SipUnsupported = 9,
    /// STUN Binding Request with attributes the kernel does not answer.
    StunUnsupported = 10,
    /// A helper failed (resizing the frame, copying the payload).
    HelperFailed = 11,
    /// REGISTER whose Call-ID has no entry in `BINDINGS` (a new phone, a new Call-ID).
    RegisterUnknown = 12,
    /// REGISTER for a known Call-ID from another source address or port, or to another
    /// local address or port, than the binding's flow.
    RegisterOtherFlow = 13,
    /// REGISTER whose CSeq is not higher than the last one accepted (a retransmission or
    /// a replay): userspace answers retransmissions and rejects replays.
    RegisterOldCseq = 14,
    /// REGISTER whose To or Contact differs from the binding's.
    RegisterOtherIdentity = 15,
    /// REGISTER asking for Expires 0 (a de-registration).
    RegisterExpiresZero = 16,
    /// REGISTER whose grant would end after the entry's deadline: the backend's
    /// registration needs refreshing first.
    RegisterDeadline = 17,
    /// REGISTER for an entry userspace flagged (backend down, draining or replaced).
    RegisterFlagged = 18,
    /// REGISTER whose Authorization differs from the last one accepted.
    RegisterAuthChanged = 19,
    /// REGISTER with a body (anything after the empty line).
    RegisterBody = 20,
    /// REGISTER without the empty line that ends the headers.
    RegisterTruncated = 21,
    /// REGISTER the kernel does not fully decode (folded identity headers, repeated
    /// headers, unusual syntax, too many lines, a reply that would be larger than the
    /// request): userspace decides.
    RegisterUnsupported = 22,
    /// A request the kernel would answer, from a source over its reply budget
    /// (`[fastpath] reply_rate_per_source`): userspace decides, at its own pace, so the
    /// fast path cannot be used as a line-rate reflector.
    RateLimited = 23,
}

impl PassReason {
    pub const COUNT: u32 = 24;
    pub const ALL: [PassReason; Self::COUNT as usize] = [
        Self::NotIp,
        Self::NotUdp,
        Self::IpFragment,
        Self::IpOptions,
        Self::NotListener,
        Self::Truncated,
        Self::TooBig,
        Self::NotKeepalive,
        Self::NotForUs,
        Self::SipUnsupported,
        Self::StunUnsupported,
        Self::HelperFailed,
        Self::RegisterUnknown,
        Self::RegisterOtherFlow,
        Self::RegisterOldCseq,
        Self::RegisterOtherIdentity,
        Self::RegisterExpiresZero,
        Self::RegisterDeadline,
        Self::RegisterFlagged,
        Self::RegisterAuthChanged,
        Self::RegisterBody,
        Self::RegisterTruncated,
        Self::RegisterUnsupported,
        Self::RateLimited,
    ];

    /// Value of the `reason` metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::NotUdp => "not_udp",
            Self::IpFragment => "ip_fragment",
            Self::IpOptions => "ip_options",
            Self::NotListener => "not_listener",
            Self::Truncated => "truncated",
            Self::TooBig => "too_big",
            Self::NotKeepalive => "not_keepalive",
            Self::NotForUs => "not_for_us",
            Self::SipUnsupported => "sip_unsupported",
            Self::StunUnsupported => "stun_unsupported",
            Self::HelperFailed => "helper_failed",
            Self::RegisterUnknown => "register_unknown",
            Self::RegisterOtherFlow => "register_other_flow",
            Self::RegisterOldCseq => "register_old_cseq",
            Self::RegisterOtherIdentity => "register_other_identity",
            Self::RegisterExpiresZero => "register_expires_zero",
            Self::RegisterDeadline => "register_deadline",
            Self::RegisterFlagged => "register_flagged",
            Self::RegisterAuthChanged => "register_auth_changed",
            Self::RegisterBody => "register_body",
            Self::RegisterTruncated => "register_truncated",
            Self::RegisterUnsupported => "register_unsupported",
            Self::RateLimited => "rate_limited",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_tables_match_discriminants() {
        for (i, k) in ReplyKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
        for (i, r) in PassReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
