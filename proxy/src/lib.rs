//! regedge: a registrar edge proxy for IP phones. See ARCHITECTURE.md for the picture;
//! each module maps to one of its concepts.
//!
//! - [`config`]: the TOML config, its defaults and validation.
//! - [`engine`]: protocol decisions without I/O.
//! - [`registrar`], [`registry`], [`failover`]: the registration edge: bindings, the
//!   absorb-or-forward decision, failover groups, health state and rate limits.
//! - [`calls`]: every other SIP request, routed statelessly between phones and backends
//!   (Path, Record-Route and flow tokens).
//! - [`sip`], [`stun`]: message parsing and the responses the edge sends itself.
//! - [`local_names`]: what "this proxy" means in a Request-URI.
//! - [`datapath`]: the XDP fast path seen from userspace.
//! - [`io`]: the mio shell.
//! - [`metrics`]: Prometheus metrics.
//! - [`run`]: `regedge run`: start, SIGHUP reload, SIGTERM shutdown.
//! - [`admin`]: the admin HTTP API and `regedge ctl`, its client.
//! - [`limits`]: caps on pending REGISTERs, SIP TCP connections and SCCP sessions.
//! - [`snapshot`]: the state kept across restarts (registry snapshot, flow-token key).
//! - [`fuzzing`]: the fuzz targets (run by `proxy/fuzz/` and, briefly, by `cargo test`).

pub mod admin;
pub mod calls;
pub mod cluster;
pub mod config;
pub mod datapath;
pub mod demo;
pub mod engine;
pub mod failover;
pub mod fuzzing;
pub mod health;
pub mod io;
pub mod limits;
pub mod local_names;
pub mod metrics;
pub mod registrar;
pub mod registry;
pub mod run;
pub mod sccp;
pub mod sip;
pub mod snapshot;
pub mod stun;
#[cfg(test)]
pub(crate) mod testing;
