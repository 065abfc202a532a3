//! SCCP (Skinny) facts both sides use: the 12-byte little-endian header and the message
//! ids regedge reads (Wireshark packet-skinny.c, Asterisk chan_skinny.c).

/// Length of the header: `data_length`, `header_version`, `message_id`, each a u32 LE.
pub const HEADER_LEN: usize = 12;
/// `data_length` counts the message id and the payload: a PDU is `data_length + 8` bytes.
pub const DATA_LENGTH_MIN: u32 = 4;
/// Largest `data_length` regedge accepts (a Register with every tail is ~400 bytes; the
/// largest display/softkey messages stay well under this).
pub const DATA_LENGTH_MAX: u32 = 4096;

/// `header_version` of the basic protocol.
pub const HEADER_VERSION_BASIC: u32 = 0;
/// `header_version` range of protocol versions 10 to 22.
pub const HEADER_VERSION_MIN: u32 = 0x0A;
pub const HEADER_VERSION_MAX: u32 = 0x16;

/// Whether `version` is a Skinny header version.
pub const fn is_header_version(version: u32) -> bool {
    version == HEADER_VERSION_BASIC || (version >= HEADER_VERSION_MIN && version <= HEADER_VERSION_MAX)
}

/// Message ids.
pub mod id {
    pub const KEEP_ALIVE: u32 = 0x0000;
    pub const REGISTER: u32 = 0x0001;
    pub const IP_PORT: u32 = 0x0002;
    pub const UNREGISTER: u32 = 0x0027;
    pub const REGISTER_TOKEN_REQ: u32 = 0x0029;
    pub const REGISTER_ACK: u32 = 0x0081;
    pub const CAPABILITIES_REQ: u32 = 0x009B;
    pub const REGISTER_REJECT: u32 = 0x009D;
    pub const KEEP_ALIVE_ACK: u32 = 0x0100;
    pub const UNREGISTER_ACK: u32 = 0x0118;
    pub const REGISTER_TOKEN_ACK: u32 = 0x011A;
    pub const REGISTER_TOKEN_REJECT: u32 = 0x011B;
}

/// A KeepAlive or KeepAliveAck PDU: the header alone (`data_length` 4).
pub const KEEP_ALIVE_LEN: usize = HEADER_LEN;
/// Bytes of the header that frame a PDU (`data_length`, `header_version`): the PDU is
/// `FRAMING_LEN + data_length` bytes.
pub const FRAMING_LEN: u32 = 8;
