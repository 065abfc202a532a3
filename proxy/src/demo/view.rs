//! The live view: on a terminal a screen redrawn about once a second (plain ANSI), else
//! one line per second.

use std::{fmt::Write as _, time::Duration};

use super::{
    config::{SCCP_GROUP, SIP_GROUP},
    phones::PhoneKind,
    summary::{SERVERS, Tracker},
};
use crate::metrics::names;

/// What the view shows besides the tracker.
pub struct Header<'a> {
    pub duration: Duration,
    pub proxy_pid: u32,
    /// How the proxy answers: XDP where, or userspace and why.
    pub fastpath: &'a str,
    pub metrics_url: &'a str,
    /// A `regedge ctl` command line that reaches the proxy's admin API.
    pub admin: &'a str,
    /// The scenario's next step, e.g. "kill the primaries at 6.0s".
    pub next: &'a str,
}

/// How many events the screen lists (the newest).
const EVENTS_SHOWN: usize = 10;

/// The full screen, with the ANSI codes that clear it first.
pub fn screen(header: &Header<'_>, tracker: &Tracker) -> String {
    let mut out = String::from("\x1b[H\x1b[2J");
    let s = &tracker.last;
    let c = &tracker.counters;
    let _ = writeln!(
        out,
        "\x1b[1mregedge demo\x1b[0m  {:.0}s of {:.0}s   proxy pid {}   next: {}",
        s.at.as_secs_f64(),
        header.duration.as_secs_f64(),
        header.proxy_pid,
        header.next
    );
    let _ = writeln!(out, "fast path: {}", header.fastpath);
    let _ = writeln!(out, "metrics:   {}", header.metrics_url);
    let _ = writeln!(out, "admin:     {}", header.admin);
    let phones: Vec<String> = PhoneKind::ALL
        .iter()
        .zip(s.phones)
        .map(|(k, (registered, all))| format!("{} {registered}/{all}", k.label()))
        .collect();
    let _ = writeln!(out, "phones registered: {}\n", phones.join("   "));
    let _ = writeln!(
        out,
        "\x1b[4m{:<10} {:<14} {:<8} {:<8} {:>10} {:>6}\x1b[0m",
        "backend", "group", "server", "regedge", "registered", "peak"
    );
    for (i, server) in SERVERS.iter().enumerate() {
        let group = if i < 2 { SIP_GROUP } else { SCCP_GROUP };
        // Padded first, coloured after, so that the escape codes do not count as width.
        let running = if s.running[i] { format!("{:<8}", "running") } else { red(&format!("{:<8}", "killed")) };
        let up = match s.metrics.as_ref().and_then(|m| m.backend_up(server)) {
            Some(true) => format!("{:<8}", "up"),
            Some(false) => red(&format!("{:<8}", "DOWN")),
            None => format!("{:<8}", "?"),
        };
        let _ = writeln!(out, "{server:<10} {group:<14} {running} {up} {:>10} {:>6}", s.registered[i], tracker.peak[i]);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "REGISTERs  forwarded {:>6}   absorbed {:>6} (kernel {}, userspace {})   rate-limited {}",
        c.forwarded,
        c.absorbed_kernel + c.absorbed_userspace,
        c.absorbed_kernel,
        c.absorbed_userspace,
        c.rate_limited
    );
    let kinds = s.metrics.as_ref().map_or_else(String::new, |m| {
        ["stun", "crlf", "register", "sccp_keepalive"]
            .iter()
            .map(|k| {
                format!(
                    "{k} {}/{}",
                    m.counter(names::FASTPATH_REPLIES, "kind", k),
                    m.counter(names::USERSPACE_REPLIES, "kind", k)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    let _ = writeln!(
        out,
        "answers    kernel {:>9}   userspace {:>5}   (kernel/userspace: {kinds})",
        c.kernel_answers, c.userspace_answers
    );
    let (fo, fb) = (tracker.failovers(), tracker.fallbacks());
    let _ = writeln!(
        out,
        "failovers  sip {} sccp {}   fallbacks sip {} sccp {}   phones moved by regedge ({SIP_GROUP}) {}",
        fo.0, fo.1, fb.0, fb.1, c.moved_sip
    );
    let _ = writeln!(out, "\nevents:");
    let skip = tracker.events.len().saturating_sub(EVENTS_SHOWN);
    for (at, text) in &tracker.events[skip..] {
        let _ = writeln!(out, "  {:>6.1}s  {text}", at.as_secs_f64());
    }
    let _ = writeln!(out, "\nCtrl-C stops the demo (the proxy, the call servers and the phones with it).");
    out
}

fn red(text: &str) -> String {
    format!("\x1b[31m{text}\x1b[0m")
}

/// One line for a log (stdout is not a terminal), with the events since `printed`.
pub fn line(tracker: &Tracker, printed: usize) -> String {
    let s = &tracker.last;
    let c = &tracker.counters;
    let mut out = format!("t={:.0}s", s.at.as_secs_f64());
    for (i, server) in SERVERS.iter().enumerate() {
        let up = match s.metrics.as_ref().and_then(|m| m.backend_up(server)) {
            Some(true) => "up",
            Some(false) => "down",
            None => "?",
        };
        let running = if s.running[i] { "" } else { ",killed" };
        let _ = write!(out, " {server}={}({up}{running})", s.registered[i]);
    }
    let phones: usize = s.phones.iter().map(|(r, _)| r).sum();
    let all: usize = s.phones.iter().map(|(_, a)| a).sum();
    let (fo, fb) = (tracker.failovers(), tracker.fallbacks());
    let _ = write!(
        out,
        " phones={phones}/{all} forwarded={} absorbed={} kernel={} userspace={} failovers={}/{} fallbacks={}/{}",
        c.forwarded,
        c.absorbed_kernel + c.absorbed_userspace,
        c.kernel_answers,
        c.userspace_answers,
        fo.0,
        fo.1,
        fb.0,
        fb.1
    );
    for (at, text) in tracker.events.iter().skip(printed) {
        let _ = write!(out, "\n  {:>6.1}s  {text}", at.as_secs_f64());
    }
    out
}
