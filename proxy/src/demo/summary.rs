//! What the demo saw, sample by sample: registrations per call server (at the servers
//! themselves), the proxy's counters, and the failover story of each group — the primary
//! lost and its phones landing on the secondary (a failover), the primary back and its
//! phones returning (a fallback). The summary prints stable `key: name=value ...` lines
//! that scripts and the tests read.

use std::{fmt, time::Duration};

use super::{
    config::{SCCP_BACKENDS, SCCP_GROUP, SIP_BACKENDS, SIP_GROUP},
    metrics_text::Metrics,
    phones::PhoneKind,
};
use crate::metrics::names;

/// The call servers in display order: SIP primary, SIP secondary, SCCP primary, SCCP
/// secondary.
pub const SERVERS: [&str; 4] = [SIP_BACKENDS[0], SIP_BACKENDS[1], SCCP_BACKENDS[0], SCCP_BACKENDS[1]];

/// One look at everything.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Time since the demo started.
    pub at: Duration,
    /// Registrations each call server holds, in [`SERVERS`] order.
    pub registered: [usize; 4],
    /// Whether each call server runs (the scenario kills and restarts primaries).
    pub running: [bool; 4],
    /// Registered and all phones, per [`PhoneKind::ALL`].
    pub phones: [(usize, usize); 3],
    /// The proxy's metrics (`None` when the scrape failed).
    pub metrics: Option<Metrics>,
}

/// The proxy's counters the view and summary show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// REGISTERs forwarded to a call server.
    pub forwarded: u64,
    /// REGISTER refreshes answered by the XDP program.
    pub absorbed_kernel: u64,
    /// REGISTER refreshes answered in userspace.
    pub absorbed_userspace: u64,
    /// Every answer of the kernel (keepalives, refreshes, SCCP KeepAlives).
    pub kernel_answers: u64,
    /// Every answer of userspace (keepalives, refreshes, SCCP KeepAlives).
    pub userspace_answers: u64,
    /// REGISTERs answered 503 by the rate limit.
    pub rate_limited: u64,
    /// `regedge_failovers_total` of the SIP group (phones moved off a down backend).
    pub moved_sip: u64,
}

impl Counters {
    pub fn from_metrics(m: &Metrics) -> Self {
        let absorbed_userspace = m.counter(names::REGISTRATIONS, "outcome", "absorbed");
        Self {
            forwarded: m.counter(names::REGISTRATIONS, "outcome", "forwarded"),
            absorbed_kernel: m.counter(names::FASTPATH_REPLIES, "kind", "register"),
            absorbed_userspace,
            kernel_answers: m.counter_sum(names::FASTPATH_REPLIES),
            userspace_answers: m.counter_sum(names::USERSPACE_REPLIES) + absorbed_userspace,
            rate_limited: m.counter(names::REGISTRATIONS, "outcome", "rate_limited"),
            moved_sip: m.counter(names::FAILOVERS, "group", SIP_GROUP),
        }
    }
}

/// Where a group's phones are in the failover story.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// On the primary (or starting).
    OnPrimary,
    /// The primary is gone; waiting for phones on the secondary.
    PrimaryLost,
    /// Phones on the secondary; waiting for the primary to return and take them back.
    OnSecondary,
}

/// The failover story of one group.
#[derive(Clone, Debug)]
struct GroupWatch {
    protocol: &'static str,
    group: &'static str,
    /// Indexes into [`SERVERS`]: primary, secondary.
    servers: [usize; 2],
    phase: Phase,
    failovers: u32,
    fallbacks: u32,
    /// The secondary still holds phones after a fallback began.
    draining: bool,
}

impl GroupWatch {
    /// Advances on `sample`; the events it saw.
    fn observe(&mut self, sample: &Sample) -> Vec<String> {
        let [primary, secondary] = self.servers;
        let (on_primary, on_secondary) = (sample.registered[primary], sample.registered[secondary]);
        let mut events = Vec::new();
        match self.phase {
            Phase::OnPrimary if !sample.running[primary] => self.phase = Phase::PrimaryLost,
            Phase::PrimaryLost if sample.running[primary] && on_secondary == 0 => self.phase = Phase::OnPrimary,
            Phase::PrimaryLost if on_secondary > 0 => {
                self.failovers += 1;
                self.phase = Phase::OnSecondary;
                events.push(format!(
                    "failover ({}): {on_secondary} phone(s) of {} now on {}",
                    self.protocol, self.group, SERVERS[secondary]
                ));
            }
            Phase::OnSecondary if sample.running[primary] && on_primary > 0 => {
                self.fallbacks += 1;
                self.phase = Phase::OnPrimary;
                self.draining = on_secondary > 0;
                events.push(format!(
                    "fallback ({}): {on_primary} phone(s) of {} back on {}",
                    self.protocol, self.group, SERVERS[primary]
                ));
            }
            _ => {}
        }
        if self.draining && on_secondary == 0 {
            self.draining = false;
            events.push(format!("fallback ({}): {} holds no phone any more", self.protocol, SERVERS[secondary]));
        }
        events
    }
}

/// Everything observed so far.
#[derive(Clone, Debug)]
pub struct Tracker {
    pub peak: [usize; 4],
    groups: [GroupWatch; 2],
    /// The last state of each backend the proxy reported.
    backend_up: [Option<bool>; 4],
    /// Time-stamped events, oldest first.
    pub events: Vec<(Duration, String)>,
    pub last: Sample,
    /// The last counters read from the proxy.
    pub counters: Counters,
    /// Registered phones of each kind at their highest.
    pub peak_phones: [usize; 3],
}

impl Default for Tracker {
    fn default() -> Self {
        let watch = |protocol, group, servers| GroupWatch {
            protocol,
            group,
            servers,
            phase: Phase::OnPrimary,
            failovers: 0,
            fallbacks: 0,
            draining: false,
        };
        Self {
            peak: [0; 4],
            groups: [watch("sip", SIP_GROUP, [0, 1]), watch("sccp", SCCP_GROUP, [2, 3])],
            backend_up: [None; 4],
            events: Vec::new(),
            last: Sample::default(),
            counters: Counters::default(),
            peak_phones: [0; 3],
        }
    }
}

impl Tracker {
    /// Records an event the scenario caused (a kill, a restart).
    pub fn event(&mut self, at: Duration, text: String) {
        self.events.push((at, text));
    }

    pub fn observe(&mut self, sample: Sample) {
        for (peak, now) in self.peak.iter_mut().zip(sample.registered) {
            *peak = (*peak).max(now);
        }
        for (peak, (now, _)) in self.peak_phones.iter_mut().zip(sample.phones) {
            *peak = (*peak).max(now);
        }
        if let Some(metrics) = &sample.metrics {
            self.counters = Counters::from_metrics(metrics);
            for (i, server) in SERVERS.iter().enumerate() {
                let up = metrics.backend_up(server);
                if let (Some(before), Some(now)) = (self.backend_up[i], up)
                    && before != now
                {
                    let state = if now { "up" } else { "down" };
                    self.events.push((sample.at, format!("regedge: backend {server} is {state}")));
                }
                if up.is_some() {
                    self.backend_up[i] = up;
                }
            }
        }
        for group in &mut self.groups {
            for text in group.observe(&sample) {
                self.events.push((sample.at, text));
            }
        }
        self.last = sample;
    }

    /// Failovers and fallbacks seen: (sip, sccp) each.
    pub fn failovers(&self) -> (u32, u32) {
        (self.groups[0].failovers, self.groups[1].failovers)
    }

    pub fn fallbacks(&self) -> (u32, u32) {
        (self.groups[0].fallbacks, self.groups[1].fallbacks)
    }

    pub fn summary(&self, duration: Duration, fastpath: &str) -> Summary {
        Summary { tracker: self.clone(), duration, fastpath: fastpath.to_owned() }
    }
}

/// The end-of-demo report.
pub struct Summary {
    tracker: Tracker,
    duration: Duration,
    fastpath: String,
}

impl Summary {
    /// Both failover stories complete: each group failed over and fell back at least once.
    pub fn complete(&self) -> bool {
        let t = &self.tracker;
        let (fo, fb) = (t.failovers(), t.fallbacks());
        fo.0 > 0 && fo.1 > 0 && fb.0 > 0 && fb.1 > 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tracker;
        let c = &t.counters;
        writeln!(f, "== regedge demo summary ==")?;
        writeln!(f, "duration: {:.1}s", self.duration.as_secs_f64())?;
        writeln!(f, "fastpath: {}", self.fastpath)?;
        let peaks: Vec<String> = SERVERS.iter().zip(t.peak).map(|(s, n)| format!("{s}={n}")).collect();
        writeln!(f, "peak registrations: {}", peaks.join(" "))?;
        let (fo, fb) = (t.failovers(), t.fallbacks());
        writeln!(f, "failovers: sip={} sccp={}", fo.0, fo.1)?;
        writeln!(f, "fallbacks: sip={} sccp={}", fb.0, fb.1)?;
        writeln!(
            f,
            "registers: forwarded={} absorbed={} rate_limited={}",
            c.forwarded,
            c.absorbed_kernel + c.absorbed_userspace,
            c.rate_limited
        )?;
        writeln!(f, "absorbed: kernel={} userspace={}", c.absorbed_kernel, c.absorbed_userspace)?;
        writeln!(f, "answers: kernel={} userspace={}", c.kernel_answers, c.userspace_answers)?;
        writeln!(f, "phones moved by regedge (regedge_failovers_total): {SIP_GROUP}={}", c.moved_sip)?;
        let phones: Vec<String> = PhoneKind::ALL
            .iter()
            .zip(t.last.phones)
            .map(|(k, (registered, all))| format!("{}={registered}/{all}", k.label().to_ascii_lowercase()))
            .collect();
        writeln!(f, "phones registered at end: {}", phones.join(" "))?;
        writeln!(f, "events:")?;
        for (at, text) in &t.events {
            writeln!(f, "  {:>6.1}s  {text}", at.as_secs_f64())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, registered: [usize; 4], running: [bool; 4]) -> Sample {
        Sample { at: Duration::from_secs(at), registered, running, ..Sample::default() }
    }

    #[test]
    fn a_failover_and_a_fallback_per_group() {
        let mut t = Tracker::default();
        let all = [true; 4];
        t.observe(sample(1, [10, 0, 5, 0], all));
        t.observe(sample(2, [0, 0, 0, 0], [false, true, false, true]));
        assert_eq!(t.failovers(), (0, 0), "nothing moved yet");
        t.observe(sample(3, [0, 4, 0, 5], [false, true, false, true]));
        assert_eq!(t.failovers(), (1, 1));
        t.observe(sample(4, [0, 10, 0, 5], all));
        assert_eq!(t.fallbacks(), (0, 0), "the primaries are back, their phones not yet");
        t.observe(sample(5, [3, 7, 5, 0], all));
        assert_eq!(t.fallbacks(), (1, 1));
        t.observe(sample(6, [10, 0, 5, 0], all));
        assert_eq!(t.peak, [10, 10, 5, 5]);
        let text = t.summary(Duration::from_secs(20), "userspace").to_string();
        assert!(text.contains("\nfailovers: sip=1 sccp=1\n"), "{text}");
        assert!(text.contains("\nfallbacks: sip=1 sccp=1\n"), "{text}");
        assert!(text.contains("\npeak registrations: sip-a=10 sip-b=10 skinny-a=5 skinny-b=5\n"), "{text}");
        assert!(text.contains("sip-b holds no phone any more"), "{text}");
        assert!(t.summary(Duration::ZERO, "").complete());
    }

    #[test]
    fn a_primary_back_before_anything_moved_is_no_failover() {
        let mut t = Tracker::default();
        t.observe(sample(1, [10, 0, 5, 0], [true; 4]));
        t.observe(sample(2, [0, 0, 5, 0], [false, true, true, true]));
        t.observe(sample(3, [10, 0, 5, 0], [true; 4]));
        assert_eq!((t.failovers(), t.fallbacks()), ((0, 0), (0, 0)));
        assert!(!t.summary(Duration::ZERO, "").complete());
    }
}
