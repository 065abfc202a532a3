//! SIP: a zero-copy message parser and the stateless responses the edge sends itself.

pub mod contact;
pub mod forward;
pub mod framing;
pub mod message;
pub mod stateless;
pub mod uri;

pub use message::{HeaderName, Message, ParseError, StartLine};
