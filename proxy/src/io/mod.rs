//! The thin I/O shell: sockets and event loops. Decisions live in `engine`.

mod pktinfo;
pub mod stream_buffer;
pub mod tcp;
pub mod udp;
pub mod workers;
