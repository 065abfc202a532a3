//! What every benchmark needs to say what it measured: the regedge binary it runs (built
//! from a commit, apart from the checkout) and the output of small commands.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, ensure};
use regedge_tests::process::workspace_root;

/// The regedge binary and a note on what was measured. `REGEDGE_BIN` if set; otherwise
/// the release build of one commit (the last to change proxy/ or ebpf/ at or before
/// `REGEDGE_COMMIT`, default HEAD), exported with
/// `git archive` into `target/bench-regedge/` and built there, so that other work in
/// progress in the checkout is not what gets measured. Built once per commit.
pub fn regedge_binary() -> anyhow::Result<(PathBuf, String)> {
    let root = workspace_root();
    if let Some(bin) = std::env::var_os("REGEDGE_BIN") {
        let bin = PathBuf::from(bin);
        ensure!(bin.is_file(), "REGEDGE_BIN {} is not a file", bin.display());
        // A binary this function built earlier is named after its commit.
        let commit = bin
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("regedge-"))
            .filter(|c| c.len() >= 7 && c.bytes().all(|b| b.is_ascii_hexdigit()));
        if let Some(commit) = commit {
            let subject = command_output_in(&root, "git", &["log", "-1", "--format=%s", commit]);
            return Ok((bin.clone(), format!("regedge release build of commit {commit} (\"{subject}\")")));
        }
        let head = command_output_in(&root, "git", &["log", "-1", "--format=%h %s"]);
        return Ok((bin.clone(), format!("regedge from REGEDGE_BIN {} (checkout at {head})", bin.display())));
    }
    let rev = std::env::var("REGEDGE_COMMIT").unwrap_or_else(|_| "HEAD".to_owned());
    // The last commit at or before `rev` that changed regedge (proxy/ or ebpf/): later
    // commits that touch only tests, benchmarks or docs measure the same binary.
    let commit =
        command_output_in(&root, "git", &["log", "-1", "--format=%h", "--abbrev=12", &rev, "--", "proxy", "ebpf"]);
    ensure!(!commit.is_empty(), "git log {rev} -- proxy ebpf found no commit");
    let subject = command_output_in(&root, "git", &["log", "-1", "--format=%s", &commit]);
    let base = root.join("target").join("bench-regedge");
    let binary = base.join(format!("regedge-{commit}"));
    let note = format!("regedge release build of commit {commit} (\"{subject}\")");
    if binary.is_file() {
        return Ok((binary, note));
    }
    let src = base.join(format!("src-{commit}"));
    if !src.join("Cargo.toml").is_file() {
        std::fs::create_dir_all(&src)?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("git archive {commit} | tar -x -C '{}'", src.display()))
            .current_dir(&root)
            .status()
            .context("git archive")?;
        ensure!(status.success(), "git archive {commit} failed");
    }
    eprintln!("building regedge at {commit} in {} (once per commit)", src.display());
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "regedge", "--bin", "regedge"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .status()
        .context("run cargo build --release -p regedge")?;
    ensure!(status.success(), "cargo build --release -p regedge at {commit} failed");
    std::fs::copy(base.join("target").join("release").join("regedge"), &binary)?;
    Ok((binary, note))
}

pub fn command_output_in(dir: &std::path::Path, program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn command_output(program: &str, args: &[&str]) -> String {
    command_output_in(&workspace_root(), program, args)
}

/// Clock ticks per second (the unit of /proc/PID/stat times).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// What /proc/PID/stat says about one process.
pub struct ProcStat {
    pub state: char,
    pub pgrp: u32,
    /// utime + stime, clock ticks, all threads.
    pub ticks: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime ...; comm may hold spaces, so fields are counted after the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// The CPU model from /proc/cpuinfo, for reports.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}

/// The fields of /proc/stat's `cpu ` line (all CPUs' jiffies since boot: user, nice,
/// system, idle, iowait, irq, softirq, steal, ...); empty if it cannot be read.
pub fn proc_stat_cpu() -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default()
}
