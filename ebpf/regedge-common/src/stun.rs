//! STUN (RFC 5389) constants for the Binding keepalive of RFC 5626 §8.4.

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;

pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const ATTR_FINGERPRINT: u16 = 0x8028;
/// Attribute types below this are comprehension-required (RFC 5389 §15).
pub const COMPREHENSION_OPTIONAL: u16 = 0x8000;

/// Most attributes the kernel walks in a request before handing it to userspace.
pub const MAX_KERNEL_ATTRIBUTES: usize = 8;

/// XOR-MAPPED-ADDRESS family values.
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// Length of a Binding Success Response carrying only XOR-MAPPED-ADDRESS.
pub const SUCCESS_LEN_IPV4: usize = HEADER_LEN + 4 + 8;
pub const SUCCESS_LEN_IPV6: usize = HEADER_LEN + 4 + 20;
