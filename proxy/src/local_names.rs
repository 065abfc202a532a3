//! The hosts that mean "this proxy" in a Request-URI: `[sip] local_names`, the listen
//! addresses, and — for a wildcard listener — the addresses of the local interfaces.
//! The same set fills the kernel's `LOCAL_NAMES` map, so both sides agree.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use regedge_common::maps::{LOCAL_NAME_MAX, LocalNameKey};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalNames {
    /// Lower-cased; IPv6 addresses in brackets, as in a SIP URI.
    names: BTreeSet<Vec<u8>>,
    /// The listen ports: a URI names this proxy when its host is one of `names` and its
    /// port (or the scheme's default) one of these.
    ports: BTreeSet<u16>,
}

impl LocalNames {
    /// `names` plus the listen addresses; a wildcard listen address stands for every
    /// address of its family on `interface_addrs` (typically [`interface_addresses`]).
    pub fn new(names: &[String], listen: &[SocketAddr], interface_addrs: &[IpAddr]) -> Self {
        let mut set = Self::default();
        for name in names {
            set.insert(name.as_bytes());
        }
        for addr in listen {
            set.ports.insert(addr.port());
            match addr.ip() {
                ip if ip.is_unspecified() => {
                    for local in interface_addrs.iter().filter(|a| a.is_ipv4() == ip.is_ipv4()) {
                        set.insert(uri_host(*local).as_bytes());
                    }
                }
                ip => set.insert(uri_host(ip).as_bytes()),
            }
        }
        set
    }

    fn insert(&mut self, host: &[u8]) {
        if !host.is_empty() && host.len() <= LOCAL_NAME_MAX {
            self.names.insert(host.to_ascii_lowercase());
        }
    }

    /// Whether `host` (as written in a URI, any case) means this proxy.
    pub fn contains(&self, host: &[u8]) -> bool {
        if host.len() > LOCAL_NAME_MAX {
            return false;
        }
        let mut lower = [0u8; LOCAL_NAME_MAX];
        let lower = &mut lower[..host.len()];
        lower.copy_from_slice(host);
        lower.make_ascii_lowercase();
        self.names.contains(&lower[..])
    }

    /// Whether `port` is one of the listen ports.
    pub fn has_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }

    /// The kernel map keys.
    pub fn keys(&self) -> impl Iterator<Item = LocalNameKey> + '_ {
        self.names.iter().filter_map(|n| LocalNameKey::new(n))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// An address as it appears as the host of a SIP URI.
pub fn uri_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The addresses of this network namespace's interfaces.
pub fn interface_addresses() -> std::io::Result<Vec<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?.into_iter().map(|i| i.ip()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_and_wildcards() {
        let listen: Vec<SocketAddr> = vec!["0.0.0.0:5060".parse().unwrap(), "[2001:db8::1]:5060".parse().unwrap()];
        let ifaces: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap(), "fe80::1".parse().unwrap()];
        let names = LocalNames::new(&["Edge.Example.NET".into()], &listen, &ifaces);
        for host in ["edge.example.net", "EDGE.example.net", "10.1.2.3", "[2001:db8::1]"] {
            assert!(names.contains(host.as_bytes()), "{host}");
        }
        for host in ["[fe80::1]", "0.0.0.0", "other"] {
            assert!(!names.contains(host.as_bytes()), "{host}");
        }
        assert_eq!(names.keys().count(), names.len());
    }
}
