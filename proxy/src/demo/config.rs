//! The demo's embedded config: one SIP group of two call servers, one SCCP group of two,
//! and timings short enough that a failover and a fallback both happen within 20 s.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
};

/// The SIP call servers, primary first.
pub const SIP_BACKENDS: [&str; 2] = ["sip-a", "sip-b"];
/// The SCCP call servers, primary first.
pub const SCCP_BACKENDS: [&str; 2] = ["skinny-a", "skinny-b"];
/// The group of the SIP phones (the default group).
pub const SIP_GROUP: &str = "sip-phones";
/// The group of the SCCP phones (a `SEP*` rule; routing picks the group of the phone's
/// protocol).
pub const SCCP_GROUP: &str = "skinny-phones";

/// Registration lifetime granted to phones: the validation minimum, so that refreshes
/// (every half grant) come every few seconds.
pub const PHONE_EXPIRES: u32 = 10;
/// Registration lifetime asked of the call servers.
pub const BACKEND_EXPIRES: u32 = 120;
/// Keepalive interval the simulated SCCP call servers put in their RegisterAck.
pub const SCCP_SERVER_KEEPALIVE_SECS: u32 = 5;

/// Addresses of everything the demo runs.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The proxy's SIP listener (UDP and TCP).
    pub sip: SocketAddr,
    /// The proxy's SCCP listener.
    pub sccp: SocketAddr,
    /// The proxy's Prometheus endpoint.
    pub metrics: SocketAddr,
    /// The proxy's admin API (`regedge ctl --admin`).
    pub admin: SocketAddr,
    /// The SIP call servers, in [`SIP_BACKENDS`] order.
    pub sip_servers: [SocketAddr; 2],
    /// The SCCP call servers, in [`SCCP_BACKENDS`] order.
    pub sccp_servers: [SocketAddr; 2],
    /// The address the phones send from.
    pub phone_ip: IpAddr,
    /// The interface the XDP program attaches to (generic mode); `None`: no fast path.
    pub xdp_interface: Option<String>,
}

impl Layout {
    /// Everything on this host's loopback: the proxy on `127.77.N.1`, the call servers on
    /// `.11`–`.14`, the phones on `.100`, with `N` from the process id so that two demos
    /// do not meet; the ports are free ones the kernel picks.
    pub fn loopback() -> std::io::Result<Self> {
        let block = (std::process::id() % 250) as u8 + 1;
        let ip = |host: u8| IpAddr::V4(Ipv4Addr::new(127, 77, block, host));
        let proxy = ip(1);
        Ok(Self {
            sip: SocketAddr::new(proxy, free_port(proxy, true)?),
            sccp: SocketAddr::new(proxy, free_port(proxy, false)?),
            metrics: SocketAddr::new(proxy, free_port(proxy, false)?),
            admin: SocketAddr::new(proxy, free_port(proxy, false)?),
            sip_servers: [
                SocketAddr::new(ip(11), free_port(ip(11), true)?),
                SocketAddr::new(ip(12), free_port(ip(12), true)?),
            ],
            sccp_servers: [
                SocketAddr::new(ip(13), free_port(ip(13), false)?),
                SocketAddr::new(ip(14), free_port(ip(14), false)?),
            ],
            phone_ip: ip(100),
            xdp_interface: None,
        })
    }

    /// The proxy at `edge` (the veth end with the XDP program, well-known ports, metrics on
    /// the namespace's loopback) and phones and call servers at `net`, in a pair of fresh
    /// namespaces where every port is free.
    pub fn namespaces(edge: Ipv4Addr, net: Ipv4Addr, interface: &str) -> Self {
        let (edge, net) = (IpAddr::V4(edge), IpAddr::V4(net));
        Self {
            sip: SocketAddr::new(edge, 5060),
            sccp: SocketAddr::new(edge, 2000),
            metrics: SocketAddr::from(([127, 0, 0, 1], 9100)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9101)),
            sip_servers: [SocketAddr::new(net, 5071), SocketAddr::new(net, 5072)],
            sccp_servers: [SocketAddr::new(net, 2001), SocketAddr::new(net, 2002)],
            phone_ip: net,
            xdp_interface: Some(interface.to_owned()),
        }
    }

    /// The same layout without the fast path (XDP did not load or attach).
    pub fn without_xdp(&self) -> Self {
        Self { xdp_interface: None, ..self.clone() }
    }

    /// The config `regedge run` gets.
    pub fn config_toml(&self) -> String {
        let mut toml = String::new();
        let fastpath = match &self.xdp_interface {
            Some(interface) => format!("interfaces = [\"{interface}\"]\nmode = \"generic\""),
            // No XDP interface; "auto" still loads the SCCP keepalive offload where it can.
            None => "interfaces = []\nmode = \"auto\"".to_owned(),
        };
        let _ = write!(
            toml,
            r#"# regedge demo: written by `regedge demo`, removed when it ends.

[node]
name = "demo"
workers = 2
state_dir = ""

[sip]
listen = ["{sip}"]

[sccp]
listen = ["{sccp}"]
register_timeout = "5s"
keepalive_interval = "{sccp_keepalive}s"

[fastpath]
{fastpath}
pin_path = ""

[metrics]
listen = "{metrics}"

[admin]
listen = "{admin}"

[registration]
phone_expires = {PHONE_EXPIRES}
backend_expires = {BACKEND_EXPIRES}
expires_jitter = 0.1
lapse_grace = "5s"
transaction_timeout = "2s"
date_header = true

[health]
interval = "500ms"
timeout = "300ms"
down_after = 2
up_after = 2

[routing]
default_group = "{SIP_GROUP}"
"#,
            sip = self.sip,
            sccp = self.sccp,
            sccp_keepalive = SCCP_SERVER_KEEPALIVE_SECS,
            metrics = self.metrics,
            admin = self.admin,
        );
        for (name, addr) in SIP_BACKENDS.iter().zip(self.sip_servers) {
            let _ = write!(
                toml,
                "\n[[backends]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"sip\"\ntransport = \"udp\"\nmax_register_rate = 50\n"
            );
        }
        for (name, addr) in SCCP_BACKENDS.iter().zip(self.sccp_servers) {
            let _ = write!(
                toml,
                "\n[[backends]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"sccp\"\ntransport = \"tcp\"\nmax_register_rate = 50\n"
            );
        }
        let list = |names: [&str; 2]| names.map(|n| format!("\"{n}\"")).join(", ");
        let _ = write!(
            toml,
            "\n[[groups]]\nname = \"{SIP_GROUP}\"\nbackends = [{}]\n\n[[groups]]\nname = \"{SCCP_GROUP}\"\nbackends = [{}]\n\n\
             [[rules]]\ngroup = \"{SCCP_GROUP}\"\ndevice = \"SEP*\"\n",
            list(SIP_BACKENDS),
            list(SCCP_BACKENDS),
        );
        toml
    }

    /// The Prometheus URL.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }
}

/// A port on `ip` that is free for TCP (and for UDP too when `udp`), as the kernel picks.
fn free_port(ip: IpAddr, udp: bool) -> std::io::Result<u16> {
    for _ in 0..64 {
        let tcp = TcpListener::bind(SocketAddr::new(ip, 0))?;
        let port = tcp.local_addr()?.port();
        if !udp || UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("no port free for both UDP and TCP on {ip}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendProtocol, Config, FastpathMode};

    #[test]
    fn both_layouts_pass_validation() {
        for layout in [
            Layout::loopback().expect("free ports"),
            Layout::namespaces(Ipv4Addr::new(10, 254, 0, 1), Ipv4Addr::new(10, 254, 0, 2), "rgd-edge"),
        ] {
            let config = Config::from_toml(&layout.config_toml(), "demo").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.backends.len(), 4);
            assert_eq!(config.groups.iter().map(|g| g.backends.len()).collect::<Vec<_>>(), [2, 2]);
            assert_eq!(config.backends.iter().filter(|b| b.protocol == BackendProtocol::Sccp).count(), 2);
            assert_eq!(config.registration.phone_expires, PHONE_EXPIRES);
            assert_eq!(config.admin.listen, Some(layout.admin), "the demo's own admin port, never the default");
            let expected = if layout.xdp_interface.is_some() { FastpathMode::Generic } else { FastpathMode::Auto };
            assert_eq!(config.fastpath.mode, expected);
            assert!(config.fastpath.pin_path.as_os_str().is_empty() && config.node.state_dir.as_os_str().is_empty());
            let without =
                Config::from_toml(&layout.without_xdp().config_toml(), "demo").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(without.fastpath.mode, FastpathMode::Auto);
            assert!(without.fastpath.interfaces.is_empty());
        }
    }
}
