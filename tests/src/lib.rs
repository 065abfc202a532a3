//! Helpers for regedge's end-to-end tests and benchmarks: privilege checks, network
//! namespaces joined by veth pairs, frame builders, keepalive fixtures, and the regedge
//! binary run as a process.

pub mod admin;
pub mod baresip;
pub mod cluster_lab;
pub mod edge_lab;
pub mod fixtures;
pub mod frames;
pub mod impair;
pub mod kamailio;
pub mod netns;
pub mod pinned;
pub mod privilege;
pub mod process;
pub mod redis;
pub mod sccp_sim;
pub mod sipp;
pub mod tshark;
