//! The smallest XDP program, `return XDP_PASS`, loaded with bpf(2) and attached in native
//! mode through a BPF link: native XDP_TX on a veth delivers only when the peer carries an
//! XDP program (EBPF-NOTES.md). Built from two instructions, so the benchmark does not
//! depend on regedge's own object. Detached when the link's descriptor closes.
//! [`drop_program`] is the same with `return XDP_DROP`: the per-packet floor of
//! BPF_PROG_TEST_RUN that the keepalive-cost table is read against.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::bail;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;

/// The two-instruction XDP program `return action`, loaded (not attached).
fn load(action: i32, name: &[u8]) -> anyhow::Result<OwnedFd> {
    // r0 = action; exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0, 0, action as u8, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_XDP.to_ne_bytes());
    put(&mut attr, 4, &(insns.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    // prog_name at 48 (after kern_version 40, prog_flags 44), expected_attach_type at 68.
    put(&mut attr, 48, &name[..name.len().min(15)]);
    put(&mut attr, 68, &BPF_XDP.to_ne_bytes());
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// `return XDP_DROP`, loaded but attached nowhere: the floor of BPF_PROG_TEST_RUN (the
/// harness's own cost per run), measured with the same call as regedge's program.
pub fn drop_program() -> anyhow::Result<OwnedFd> {
    load(XDP_DROP, b"bench_xdp_drop")
}

/// The program and its link; dropping it detaches the program.
pub struct XdpPass {
    _link: OwnedFd,
    _prog: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> anyhow::Result<OwnedFd> {
    // SAFETY: bpf(2) with a zero-padded attribute block of its size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as libc::c_uint) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put(attr: &mut [u8; 128], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

impl XdpPass {
    /// Loads the program and attaches it to `ifindex` in native (driver) mode. Call it on
    /// a thread inside the interface's namespace.
    pub fn attach_native(ifindex: i32) -> anyhow::Result<Self> {
        let prog = load(XDP_PASS, b"bench_xdp_pass")?;
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &(std::os::fd::AsRawFd::as_raw_fd(&prog) as u32).to_ne_bytes());
        put(&mut attr, 4, &(ifindex as u32).to_ne_bytes());
        put(&mut attr, 8, &BPF_XDP.to_ne_bytes());
        put(&mut attr, 12, &XDP_FLAGS_DRV_MODE.to_ne_bytes());
        let link = bpf(BPF_LINK_CREATE, &mut attr)?;
        Ok(Self { _link: link, _prog: prog })
    }
}
