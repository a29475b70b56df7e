//! Observed CPU copies, where the host allows BPF trampolines (fexit). On kernels that refuse them
//! user space reports these programs as unavailable and the copy model stands in.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::fexit, programs::FExitContext};

use crate::{
    kernel::{current_task, filtered_out, process_key},
    maps::{add, current_process_entry},
};

/// Why fexit on _copy_to_iter: kernel-to-user copies (read of the page cache, socket receive) end
/// here with the number of bytes really copied.
#[fexit(function = "_copy_to_iter")]
pub fn copy_to_iter_exit(ctx: FExitContext) -> u32 {
    match count_copied(ctx.arg(3)) {
        Ok(r) | Err(r) => r,
    }
}

/// Why fexit on _copy_from_iter: user-to-kernel copies (socket sends that copy) end here.
#[fexit(function = "_copy_from_iter")]
pub fn copy_from_iter_exit(ctx: FExitContext) -> u32 {
    match count_copied(ctx.arg(3)) {
        Ok(r) | Err(r) => r,
    }
}

/// Why fexit on copy_page_from_iter_atomic: writes into the page cache copy here, not through
/// _copy_from_iter.
#[fexit(function = "copy_page_from_iter_atomic")]
pub fn copy_page_from_iter_atomic_exit(ctx: FExitContext) -> u32 {
    match count_copied(ctx.arg(4)) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn count_copied(copied: u64) -> Result<u32, u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if copied == 0 || filtered_out(tgid) {
        return Ok(0);
    }
    let key = process_key(current_task(), tgid)?;
    let entry = current_process_entry(&key).ok_or(0u32)?;
    // SAFETY: `entry` points into a live map value.
    unsafe { add(&raw mut (*entry).observed_copy_bytes, copied) };
    Ok(0)
}
