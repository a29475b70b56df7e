//! Runs of our programs the kernel skipped. A program already running on a CPU is not entered
//! again there until it returns (the kernel's recursion guard), and since 5.12 the kernel counts
//! each skip in `bpf_prog_info.recursion_misses`: events zctrace never saw, so they are exported.
use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsRawFd, BorrowedFd},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Runs of the program behind `program` the kernel skipped; `None` where the kernel does not
/// count them.
pub fn recursion_misses(program: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    // SAFETY: bpf_prog_info is plain integers and pointers-as-integers; all zeroes is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: `attr` points at `info`, which outlives the call; the kernel writes at most
    // `info_len` bytes there and sets `info_len` to what it wrote.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    let counted = attr.info_len as usize >= offset_of!(bpf_prog_info, recursion_misses) + size_of::<u64>();
    Ok(counted.then_some(info.recursion_misses))
}
