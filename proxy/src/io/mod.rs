//! The thin I/O shell: sockets, event loops, signals. Decisions live in `engine`.

mod pktinfo;
pub mod udp;
