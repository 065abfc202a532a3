#![no_std]
//! The one place where the kernel programs (`regedge-ebpf`) and userspace (`regedge`) agree
//! on map names, map layouts, limits and counter indexes. Both sides compile this crate,
//! so a struct cannot differ between them.
//!
//! Byte order: every address and port in a map key is stored exactly as it appears on the
//! wire (network order), so the kernel builds keys without swapping bytes.

pub mod counters;
pub mod date;
pub mod hash;
pub mod maps;
pub mod sccp;
pub mod sip;
pub mod stun;

pub use counters::{PassReason, ReplyKind};

/// Name of the XDP program in the embedded object.
pub const XDP_PROGRAM: &str = "regedge_xdp";

/// Name of the SCCP KeepAlive program (`sk_skb` stream verdict) in the embedded object.
pub const SCCP_PROGRAM: &str = "regedge_sccp_keepalive";
