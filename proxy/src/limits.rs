//! Caps on what peers can make regedge hold (`[limits]`): REGISTERs waiting at a backend,
//! SIP TCP connections, SCCP sessions. Beyond a cap regedge refuses instead of growing:
//! a REGISTER gets 503 with Retry-After, a connection is accepted and closed at once.
//! Every refusal is counted in `regedge_limit_refusals_total{limit}`. The caps change
//! with a config reload; what is already held beyond a lowered cap is kept.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::config::LimitsConfig;

/// One cap (the `limit` label of `regedge_limit_refusals_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `[limits] max_pending_registrations`: REGISTERs forwarded and not yet answered.
    PendingRegistrations,
    /// `[limits] max_sip_tcp_connections`: SIP TCP connections accepted from phones.
    SipTcpConnections,
    /// `[limits] max_sccp_sessions`: SCCP phone connections.
    SccpSessions,
}

impl Limit {
    pub const ALL: [Self; 3] = [Self::PendingRegistrations, Self::SipTcpConnections, Self::SccpSessions];

    pub const fn label(self) -> &'static str {
        match self {
            Self::PendingRegistrations => "pending_registrations",
            Self::SipTcpConnections => "sip_tcp_connections",
            Self::SccpSessions => "sccp_sessions",
        }
    }

    const fn index(self) -> usize {
        match self {
            Self::PendingRegistrations => 0,
            Self::SipTcpConnections => 1,
            Self::SccpSessions => 2,
        }
    }
}

/// The caps in force and the refusals so far; shared by the registrar, the SIP loops and
/// the SCCP loops.
#[derive(Debug)]
pub struct Limits {
    caps: [AtomicUsize; 3],
    refused: [AtomicU64; 3],
}

impl Default for Limits {
    /// The defaults of `[limits]`.
    fn default() -> Self {
        Self::new(&LimitsConfig::default())
    }
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Self {
        let limits = Self { caps: Default::default(), refused: Default::default() };
        limits.set(config);
        limits
    }

    /// Puts `config`'s caps in force (start and reload).
    pub fn set(&self, config: &LimitsConfig) {
        self.caps[Limit::PendingRegistrations.index()].store(config.max_pending_registrations, Relaxed);
        self.caps[Limit::SipTcpConnections.index()].store(config.max_sip_tcp_connections, Relaxed);
        self.caps[Limit::SccpSessions.index()].store(config.max_sccp_sessions, Relaxed);
    }

    pub fn cap(&self, limit: Limit) -> usize {
        self.caps[limit.index()].load(Relaxed)
    }

    /// Whether one more may be held when `held` are: below the cap. A refusal is counted.
    pub fn admit(&self, limit: Limit, held: usize) -> bool {
        if held < self.cap(limit) {
            return true;
        }
        self.refused[limit.index()].fetch_add(1, Relaxed);
        false
    }

    /// Refusals of `limit` so far.
    pub fn refused(&self, limit: Limit) -> u64 {
        self.refused[limit.index()].load(Relaxed)
    }

    /// Whether the latest refusal of `limit` is one to log: the 1st, 2nd, 4th, 8th...,
    /// so that a flood does not flood the log too (the counter has every one).
    pub fn log_refusal(&self, limit: Limit) -> bool {
        self.refused(limit).is_power_of_two()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_below_the_cap_and_counts_refusals() {
        let config = LimitsConfig { max_pending_registrations: 2, max_sip_tcp_connections: 1, max_sccp_sessions: 3 };
        let limits = Limits::new(&config);
        assert!(limits.admit(Limit::PendingRegistrations, 0));
        assert!(limits.admit(Limit::PendingRegistrations, 1));
        assert!(!limits.admit(Limit::PendingRegistrations, 2));
        assert!(!limits.admit(Limit::PendingRegistrations, 7));
        assert_eq!(limits.refused(Limit::PendingRegistrations), 2);
        assert!(!limits.admit(Limit::SipTcpConnections, 1));
        assert_eq!(limits.refused(Limit::SipTcpConnections), 1);
        assert_eq!(limits.refused(Limit::SccpSessions), 0);
        let logged: Vec<bool> = (0..5)
            .map(|_| limits.admit(Limit::SipTcpConnections, 9) || limits.log_refusal(Limit::SipTcpConnections))
            .collect();
        assert_eq!(logged, [true, false, true, false, false], "refusals 2 to 6: the 2nd and the 4th are logged");
    }

    #[test]
    fn a_reload_moves_the_caps_and_keeps_the_counts() {
        let limits = Limits::new(&LimitsConfig { max_sccp_sessions: 1, ..LimitsConfig::default() });
        assert!(!limits.admit(Limit::SccpSessions, 1));
        limits.set(&LimitsConfig { max_sccp_sessions: 5, ..LimitsConfig::default() });
        assert_eq!(limits.cap(Limit::SccpSessions), 5);
        assert!(limits.admit(Limit::SccpSessions, 1));
        assert_eq!(limits.refused(Limit::SccpSessions), 1);
    }
}
