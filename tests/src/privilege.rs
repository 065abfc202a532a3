//! Tests that need root (BPF, namespaces, XDP) say so when they cannot run, and fail
//! instead of skipping under CI, which runs as root.

/// Whether the test may use BPF and network namespaces. Prints a SKIPPED line when not;
/// panics when not and the CI variable is set, so CI never passes a skipped test.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (BPF, network namespaces) but CI is set: refusing to skip");
    }
    skipped(test, "needs root (BPF, network namespaces); run the tests as root");
    false
}

/// Whether an external program is installed; panics under CI when it is not.
pub fn require_program(test: &str, program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {program} is not installed but CI is set: .ci/setup must install it");
    }
    skipped(test, &format!("{program} is not installed (run .ci/setup)"));
    false
}

/// Root plus the programs a test against real SIP peers runs (`ip`, Kamailio and its
/// `kamcmd`, and `programs`).
pub fn require_peers(test: &str, programs: &[&str]) -> bool {
    require_root(test) && ["ip", "kamailio", "kamcmd"].iter().chain(programs).all(|p| require_program(test, p))
}

/// Writes the SKIPPED line straight to the process's stderr: the test harness captures
/// `eprintln!` of passing tests, and a skip must be seen.
fn skipped(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
