//! How a binding is kept in the store: one Redis hash per binding under
//! `regedge:b:{<device>}` (the braces are a Redis Cluster hash tag: each record is whole in
//! one slot, and no operation spans two records), with the fields
//!
//! - `owner`: the node holding the lease (`""` once released),
//! - `lease`: when that lease lapses, Unix milliseconds,
//! - `data`: the binding ([`SavedBinding`] as JSON, times in Unix milliseconds).
//!
//! A record expires (PEXPIREAT) when the backend's registration would: nobody can answer
//! for the phone after that without a new registration anyway. The lease rules live in
//! the store-side scripts below, so that two nodes never both believe they hold one.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::snapshot::SavedBinding;

use super::DirectoryEntry;

/// Prefix of every binding record key.
pub const KEY_PREFIX: &str = "regedge:b:";
/// SCAN pattern of the binding records.
pub const KEY_PATTERN: &str = "regedge:b:*";

/// The record key of `device`.
pub fn key(device: &str) -> String {
    format!("{KEY_PREFIX}{{{device}}}")
}

/// Prefix of the flow index keys: which device a flow carries, for a node that meets a
/// flow token it has no record for.
pub const FLOW_KEY_PREFIX: &str = "regedge:f:";

/// The flow index key of `flow` (its own hash slot: it is written beside the record, not
/// with it).
pub fn flow_key(flow: &crate::registry::Flow) -> String {
    format!("{FLOW_KEY_PREFIX}{{{}/{}/{}}}", flow.transport.label(), flow.peer, flow.local)
}

/// Writes a record and this node's lease on it, unless another node holds a lease that
/// has not lapsed (and the write is not a takeover).
/// KEYS[1] record; ARGV: node, now, lease until, expire at (all ms), data, takeover (1/0).
/// Returns 1 written, 0 another node holds it.
pub const PUT_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease') or '0')
if ARGV[6] ~= '1' and owner and owner ~= '' and owner ~= ARGV[1] and lease > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease', ARGV[3], 'data', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
";

/// Extends this node's lease. KEYS[1] record; ARGV: node, lease until.
/// Returns 1 renewed, 0 another node holds it, -1 no record (the store lost it).
pub const RENEW_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return -1 end
if owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease', ARGV[2])
return 1
";

/// Deletes a record this node holds (or nobody does). KEYS[1] record; ARGV: node.
/// Returns 1 deleted (or absent), 0 another node holds it.
pub const DELETE_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= '' and owner ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
";

/// Gives up this node's lease (drain). KEYS[1] record; ARGV: node.
/// Returns 1 released, 0 not this node's.
pub const RELEASE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'lease', '0')
return 1
";

/// Takes over a record whose lease has lapsed (or was released). KEYS[1] record; ARGV:
/// node, now, lease until. Returns the record's data when taken, nil otherwise (another
/// node was first, or the owner renewed).
pub const ADOPT_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner or owner == ARGV[1] then return false end
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease') or '0')
if owner ~= '' and lease > tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease', ARGV[3])
return redis.call('HGET', KEYS[1], 'data')
";

/// Maps this node's monotonic milliseconds (the registry's clock) to Unix milliseconds
/// and back, as of when it was made: each node has its own monotonic clock, the store
/// needs one all nodes read alike.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Unix ms minus monotonic ms.
    offset: i128,
}

impl WallClock {
    /// The offset now, between `mono_ms` (the registry's clock, read now) and the system clock.
    pub fn now(mono_ms: u64) -> Self {
        Self::at(mono_ms, unix_ms())
    }

    pub fn at(mono_ms: u64, unix_ms: u64) -> Self {
        Self { offset: i128::from(unix_ms) - i128::from(mono_ms) }
    }

    pub fn to_unix(self, mono_ms: u64) -> u64 {
        (i128::from(mono_ms) + self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }

    pub fn to_mono(self, unix_ms: u64) -> u64 {
        (i128::from(unix_ms) - self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The registry's monotonic clock (`Now::mono_ms`), read now.
pub fn mono_ms() -> u64 {
    crate::io::workers::monotonic_ms()
}

/// The `data` field of a record.
pub fn encode_data(binding: &SavedBinding) -> String {
    serde_json::to_string(binding).expect("a binding serializes")
}

/// A record's fields as read (`owner`, `lease`, `data`), or `None` when they do not make
/// one (a record of another format, or not ours to read).
pub fn decode(owner: Option<String>, lease: Option<String>, data: Option<String>) -> Option<DirectoryEntry> {
    let binding: SavedBinding = serde_json::from_str(&data?).ok()?;
    Some(DirectoryEntry { owner: owner.unwrap_or_default(), lease_until_ms: lease?.parse().ok()?, binding })
}
