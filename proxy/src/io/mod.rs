//! The thin I/O shell: sockets, event loops, signals. Decisions live in `engine`.

pub mod udp;
