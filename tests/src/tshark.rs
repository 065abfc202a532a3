//! A tshark capture on one interface of a test namespace, read back with display filters
//! to check that every SIP/STUN packet decodes cleanly.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::netns::NetNs;

/// Packets tshark could not decode, or decoded with an error-level expert info.
pub const MALFORMED_FILTER: &str = "_ws.malformed || _ws.expert.severity >= 0x00800000";

/// UDP port the capture also listens on, to see its own probes before the test starts.
const PROBE_PORT: u16 = 5999;

/// A running capture (stopped by [`Capture::finish`], by PID).
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts tshark on `interface` in `ns` capturing UDP `port`, and returns once it has
    /// captured a probe datagram sent from `probe_from` to `target` (tshark announces
    /// "Capturing on" before packets are really seen).
    pub fn start(ns: &NetNs, interface: &str, port: u16, file: PathBuf, probe_from: IpAddr, target: IpAddr) -> Self {
        Self::start_filtered(ns, interface, &format!("udp port {port}"), file, probe_from, target)
    }

    /// Like [`Capture::start`] with a capture `filter` of its own (e.g. `port 5060` for
    /// SIP over UDP and TCP).
    pub fn start_filtered(
        ns: &NetNs,
        interface: &str,
        filter: &str,
        file: PathBuf,
        probe_from: IpAddr,
        target: IpAddr,
    ) -> Self {
        let live = file.with_extension("txt");
        let child = ns
            .command("tshark")
            .args(["-i", interface, "-f", &format!("({filter}) or udp port {PROBE_PORT}"), "-l", "-P", "-w"])
            .arg(&file)
            .stdout(std::fs::File::create(&live).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tshark");
        let probe = ns.run(|| UdpSocket::bind(SocketAddr::new(probe_from, 0))).expect("bind probe socket");
        let seen = (0..100).any(|_| {
            let _ = probe.send_to(b"capture probe", SocketAddr::new(target, PROBE_PORT));
            std::thread::sleep(Duration::from_millis(100));
            std::fs::metadata(&live).is_ok_and(|m| m.len() > 0)
        });
        assert!(seen, "tshark captured none of its probes");
        Self { child, file }
    }

    /// Stops the capture (SIGINT to our own child) and returns the file to read.
    pub fn finish(mut self) -> Captured {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = self.child.wait().expect("wait for tshark");
        assert!(status.success(), "tshark capture exited with {status}");
        Captured { file: self.file.clone() }
    }
}

/// A finished capture file.
pub struct Captured {
    pub file: PathBuf,
}

impl Captured {
    /// The `fields` of every packet matching the display `filter`, one line per packet.
    pub fn read(&self, filter: &str, fields: &[&str]) -> String {
        let mut cmd = Command::new("tshark");
        cmd.arg("-r").arg(&self.file).args(["-Y", filter, "-T", "fields"]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let out = cmd.output().expect("run tshark -r");
        assert!(out.status.success(), "tshark -r: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Frame numbers and expert messages of malformed packets (empty when all decode).
    pub fn malformed(&self) -> String {
        self.read(MALFORMED_FILTER, &["frame.number", "_ws.expert.message"])
    }

    /// Every frame's protocol stack, for assertion messages.
    pub fn frames(&self) -> String {
        self.read("frame", &["frame.protocols"])
    }
}
