//! SIP facts both sides use when deciding what to answer.

/// Largest UDP SIP payload the fast path looks at; larger ones go to userspace.
/// RFC 3261 §18.1.1 sends anything over ~1300 bytes by TCP, so this loses nothing.
pub const MAX_PAYLOAD: usize = 1400;

/// Length of the To-tag a node adds to its stateless responses: eight lower-case hex digits.
pub const TO_TAG_LEN: usize = 8;

/// UDP payloads that are a CRLF keepalive. RFC 5626 §3.5.1 defines the double-CRLF ping
/// and its single-CRLF pong for connection-oriented transports only; over UDP phones send
/// them anyway to keep NAT bindings open. regedge absorbs them and sends nothing back, so
/// it never answers with more bytes than came in.
pub const CRLF_KEEPALIVES: [&[u8]; 2] = [b"\r\n\r\n", b"\r\n"];

/// The status line of the answer to an OPTIONS addressed to the proxy.
pub const STATUS_200_OK: &[u8] = b"SIP/2.0 200 OK\r\n";
/// The last header of every stateless response.
pub const CONTENT_LENGTH_0: &[u8] = b"Content-Length: 0\r\n\r\n";
