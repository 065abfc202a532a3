//! SCCP (Skinny): stream framing and typed registration/keepalive messages, without I/O.
//!
//! [`framing::StreamDecoder`] cuts a TCP byte stream into PDUs (closing on anything that
//! is not Skinny); [`Message::decode`] types the registration and keepalive messages and
//! keeps every other one as opaque bytes; [`Message::encode`] writes them back, byte for
//! byte.

pub mod edge;
pub mod framing;
pub mod message;
pub mod session;

pub use framing::{Frame, FramingError, Pdu, StreamDecoder};
pub use message::{DecodeError, Message, Register, RegisterAck, RegisterTokenReq};
