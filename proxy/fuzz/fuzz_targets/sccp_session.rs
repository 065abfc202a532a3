#![no_main]
//! See `regedge::fuzzing` for what this target drives and the invariants it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| regedge::fuzzing::sccp::session(data));
