//! The fuzz smoke that CI runs on stable: every target replays its seed corpus and its
//! crash regressions, then a fixed number of seeded mutations of the seeds (bit flips,
//! inserted SIP/SCCP tokens, cut and duplicated stretches, splices of two seeds).
//! `REGEDGE_FUZZ_SMOKE_RUNS` changes the number of mutations per target.

use std::{
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    path::{Path, PathBuf},
};

use super::{registrar, sccp, sip};
use crate::testing::Rng;

/// Mutated inputs per target when `REGEDGE_FUZZ_SMOKE_RUNS` is not set (the registrar
/// target runs a whole engine per input, about 20x slower than the others unoptimised).
const DEFAULT_RUNS: usize = 20_000;
const DEFAULT_RUNS_REGISTRAR: usize = 5_000;

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Runs `target` on `input`; a panic names the input before it propagates.
fn run(target: fn(&[u8]), name: &dyn std::fmt::Display, input: &[u8]) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(input))) {
        eprintln!("fuzz smoke: {name} failed; input ({} bytes): {:02x?}", input.len(), input);
        resume_unwind(panic);
    }
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\0",
    b"0",
    b"4294967295",
    b"18446744073709551616",
    b";expires=0",
    b"Expires: 0\r\n",
    b"Content-Length: 9999\r\n",
    b"l: 1\r\n",
    b"\r\n ",
    b"SIP/2.0 ",
    b"REGISTER ",
    b"\x04\x00\x00\x00",
    b"\x00\x10\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x11\x00\x00\x00",
    b"\x01\x00\x00\x00",
];

/// One mutation of `input`, drawing on `seeds` for splices.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[(PathBuf, Vec<u8>)]) {
    let len = input.len();
    match rng.below(7) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = rng.next() as u8;
        }
        2 => {
            let token = TOKENS[rng.below(TOKENS.len())];
            let at = rng.below(len + 1);
            input.splice(at..at, token.iter().copied());
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let cut = rng.below((len - at).min(32) + 1);
            input.drain(at..at + cut);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = rng.below((len - at).min(64) + 1);
            let copy = input[at..at + n].to_vec();
            let to = rng.below(input.len() + 1);
            input.splice(to..to, copy);
        }
        5 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())].1;
            let from = rng.below(other.len() + 1);
            let at = rng.below(len + 1);
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
        _ if len > 0 => {
            let at = rng.below(len);
            input.truncate(at.max(1));
        }
        _ => input.push(rng.next() as u8),
    }
}

fn smoke(name: &str, target: fn(&[u8]), seed: u64, default_runs: usize) {
    let seeds = files(&fuzz_dir().join("corpus").join(name));
    assert!(seeds.len() >= 3, "the seed corpus of {name} is missing ({} files)", seeds.len());
    for (path, bytes) in seeds.iter().chain(files(&fuzz_dir().join("regressions").join(name)).iter()) {
        run(target, &path.display(), bytes);
    }
    let runs = std::env::var("REGEDGE_FUZZ_SMOKE_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_runs);
    let mut rng = Rng(seed);
    let mut input = Vec::new();
    for i in 0..runs {
        input.clear();
        input.extend_from_slice(&seeds[rng.below(seeds.len())].1);
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut input, &seeds);
        }
        run(target, &format_args!("{name} mutation #{i} (seed {seed:#x})"), &input);
    }
}

#[test]
fn sip_parser() {
    smoke("sip_parser", sip::parser, 0x5EED_0001, DEFAULT_RUNS);
}

#[test]
fn sip_framing() {
    smoke("sip_framing", sip::stream_framing, 0x5EED_0002, DEFAULT_RUNS);
}

#[test]
fn registrar() {
    smoke("registrar", registrar::engine_target, 0x5EED_0003, DEFAULT_RUNS_REGISTRAR);
}

#[test]
fn sccp_codec() {
    smoke("sccp_codec", sccp::codec, 0x5EED_0004, DEFAULT_RUNS);
}

#[test]
fn sccp_session() {
    smoke("sccp_session", sccp::session, 0x5EED_0005, DEFAULT_RUNS);
}
