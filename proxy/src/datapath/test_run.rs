//! BPF_PROG_TEST_RUN for XDP programs (aya 0.14 has no wrapper): runs the program on a
//! frame without any interface and returns its action and output frame. The fixture
//! tests and the kernel-cost benchmark use it.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Result of one BPF_PROG_TEST_RUN call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The XDP action (XDP_PASS = 2, XDP_TX = 3, XDP_DROP = 1, XDP_ABORTED = 0).
    pub action: u32,
    /// The frame after the program ran.
    pub frame: Vec<u8>,
    /// Mean run time per repetition, in nanoseconds, as the kernel measured it.
    pub duration_ns: u32,
}

/// `union bpf_attr` as used by BPF_PROG_TEST_RUN (linux/bpf.h, `test` member).
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _reserved: [u32; 13],
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for a frame grown at the head (STUN replies are larger than their requests).
const OUTPUT_ROOM: usize = 4096;

pub fn test_run(program: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> std::io::Result<TestRun> {
    let mut output = vec![0u8; OUTPUT_ROOM];
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: output.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: output.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid bpf_attr for this command; the kernel writes at most
    // data_size_out bytes into `output`, which outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    output.truncate(attr.data_size_out as usize);
    Ok(TestRun { action: attr.retval, frame: output, duration_ns: attr.duration })
}
