//! SIP: a zero-copy message parser and the stateless responses the edge sends itself.

pub mod message;
pub mod stateless;
pub mod uri;

pub use message::{HeaderName, Message, ParseError, StartLine};
