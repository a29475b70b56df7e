//! Observed CPU copies: the kernel routines that copy bytes for the data-path syscalls, counted
//! at their exit where the kernel allows trampolines (fexit), or kprobes where only those work.
//! Routines are chosen for being traceable on the kernels zctrace runs on and for returning the
//! bytes they copied; the generic iov_iter copy helpers are not traceable on 6.1.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{tracing::StackIdContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use zctrace_common::{Copier, CopyRoutine, MapSlot, ProcessKey};

use crate::{
    kernel::{current_task, filtered_out, offset, process_key, read, Access, Typed, Untyped},
    maps::{add, count_error, current_process_entry, PENDING_COPY, PROCESSES, ZEROCOPY_SENDERS},
    stacks,
};

/// Bytes of a pending read that are not copies: the read fills a pipe (splice), or nothing is
/// pending. Also what a consumed entry holds.
const NOT_A_COPY: i64 = i64::MAX;

/// Why fexit on filemap_read: every buffered read of a page-cache file copies its bytes here,
/// and the return value says how many (past what the caller had already read).
#[fexit(function = "filemap_read")]
pub fn filemap_read_exit(ctx: FExitContext) -> u32 {
    let ret: i64 = ctx.arg(3);
    let uncopied = uncopied_read::<Typed>(ctx.arg(1), ctx.arg(2));
    count_copied(&ctx, CopyRoutine::FilemapRead, ret.saturating_sub(uncopied))
}

/// Why fexit on shmem_file_read_iter: tmpfs reads do not go through filemap_read.
#[fexit(function = "shmem_file_read_iter")]
pub fn shmem_read_exit(ctx: FExitContext) -> u32 {
    let ret: i64 = ctx.arg(2);
    let uncopied = uncopied_read::<Typed>(ctx.arg(1), 0);
    count_copied(&ctx, CopyRoutine::ShmemRead, ret.saturating_sub(uncopied))
}

/// Why fexit on generic_perform_write: buffered writes into the page cache copy here, from user
/// memory or, for splice and sendfile into a file, from pipe pages.
#[fexit(function = "generic_perform_write")]
pub fn perform_write_exit(ctx: FExitContext) -> u32 {
    count_copied(&ctx, CopyRoutine::PerformWrite, ctx.arg(2))
}

/// Why a second generic_perform_write program: before 5.19 the routine takes the file and the
/// position (three parameters), so its return value comes one argument later.
#[fexit(function = "generic_perform_write")]
pub fn perform_write_exit_at_pos(ctx: FExitContext) -> u32 {
    count_copied(&ctx, CopyRoutine::PerformWrite, ctx.arg(3))
}

/// Why fexit on pipe_read: read() from a pipe copies its buffers out here.
#[fexit(function = "pipe_read")]
pub fn pipe_read_exit(ctx: FExitContext) -> u32 {
    count_copied(&ctx, CopyRoutine::PipeRead, ctx.arg(2))
}

/// Why fexit on pipe_write: write() to a pipe copies into its buffers here.
#[fexit(function = "pipe_write")]
pub fn pipe_write_exit(ctx: FExitContext) -> u32 {
    count_copied(&ctx, CopyRoutine::PipeWrite, ctx.arg(2))
}

/// Why fentry on skb_copy_ubufs: a MSG_ZEROCOPY skb bound for a local receiver has its pinned
/// pages copied here, all its paged bytes at once.
#[fentry(function = "skb_copy_ubufs")]
pub fn zerocopy_copy_entry(ctx: FEntryContext) -> u32 {
    count_deferred::<Typed, _>(&ctx, ctx.arg(0))
}

/// Why kprobes on the same routines: kernels without BPF trampolines may still have kprobes.
/// Reads that need their arguments stash them at entry for the return probe.
#[kprobe]
pub fn filemap_read_entry(ctx: ProbeContext) -> u32 {
    stash_uncopied(uncopied_read::<Untyped>(arg(&ctx, 1), arg(&ctx, 2) as i64))
}

#[kretprobe]
pub fn filemap_read_return(ctx: RetProbeContext) -> u32 {
    count_stashed(&ctx, CopyRoutine::FilemapRead, ctx.ret())
}

#[kprobe]
pub fn shmem_read_entry(ctx: ProbeContext) -> u32 {
    stash_uncopied(uncopied_read::<Untyped>(arg(&ctx, 1), 0))
}

#[kretprobe]
pub fn shmem_read_return(ctx: RetProbeContext) -> u32 {
    count_stashed(&ctx, CopyRoutine::ShmemRead, ctx.ret())
}

#[kretprobe]
pub fn perform_write_return(ctx: RetProbeContext) -> u32 {
    count_copied(&ctx, CopyRoutine::PerformWrite, ctx.ret())
}

#[kretprobe]
pub fn pipe_read_return(ctx: RetProbeContext) -> u32 {
    count_copied(&ctx, CopyRoutine::PipeRead, ctx.ret())
}

#[kretprobe]
pub fn pipe_write_return(ctx: RetProbeContext) -> u32 {
    count_copied(&ctx, CopyRoutine::PipeWrite, ctx.ret())
}

#[kprobe]
pub fn zerocopy_copy_kprobe(ctx: ProbeContext) -> u32 {
    count_deferred::<Untyped, _>(&ctx, arg(&ctx, 0))
}

/// Counts a deferred zerocopy copy against the process that sent the pages. It runs in the
/// receive softirq, on the sender only when the softirq runs at the end of its send, else on
/// ksoftirqd or whatever task the CPU interrupted; the socket the pages came from names the sender.
#[inline(always)]
fn count_deferred<A: Access, C: StackIdContext>(ctx: &C, skb: u64) -> u32 {
    let bytes = paged_bytes::<A>(skb);
    let Some(sender) = zerocopy_sender(skb) else {
        return count_copied(ctx, CopyRoutine::ZerocopyDeferred, bytes);
    };
    if bytes <= 0 || filtered_out(sender.tgid) {
        return 0;
    }
    if let Some(entry) = PROCESSES.get_ptr_mut(sender) {
        // SAFETY: `entry` points into a live map value; the index is below COPY_ROUTINES.
        unsafe {
            add(
                &raw mut (*entry).observed_copy_bytes[CopyRoutine::ZerocopyDeferred as usize],
                bytes as u64,
            )
        };
        stacks::record_copy(ctx, Copier::ZerocopyDeferred, bytes as u64);
    }
    0
}

/// The sender of a zerocopy skb's pages: its `ubuf_info` (in `skb_shinfo(skb)->destructor_arg`)
/// lives in the control block of a notification skb owned by the sending socket.
#[inline(always)]
fn zerocopy_sender(skb: u64) -> Option<ProcessKey> {
    let head: u64 = read(skb, offset!(skb_head)).ok()?;
    let end: u32 = read(skb, offset!(skb_end)).ok()?;
    let ubuf: u64 = read(head + end as u64, offset!(shinfo_destructor_arg)).ok()?;
    let notification = ubuf.checked_sub(offset!(skb_cb))?;
    let sk: u64 = read(notification, offset!(skb_sk)).ok()?;
    // SAFETY: the value is copied out at once; an LRU entry may be replaced concurrently.
    unsafe { ZEROCOPY_SENDERS.get(sk) }.copied()
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg(n).unwrap_or(0)
}

/// The bytes of a read's result that were not copied: all of them when it fills a pipe (a
/// splice before 6.5 reads through a pipe iterator, which takes page references), else what the
/// caller had read before (`already_read`).
#[inline(always)]
fn uncopied_read<A: Access>(iter: u64, already_read: i64) -> i64 {
    match A::get::<u8>(iter, offset!(iov_iter_type)) {
        Ok(kind) if kind as u64 == offset!(iter_pipe) => NOT_A_COPY,
        Ok(_) => already_read,
        Err(_) => NOT_A_COPY,
    }
}

#[inline(always)]
fn paged_bytes<A: Access>(skb: u64) -> i64 {
    A::get::<u32>(skb, offset!(skb_data_len)).map_or(0, |len| len as i64)
}

#[inline(always)]
fn stash_uncopied(uncopied: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if filtered_out((pid_tgid >> 32) as u32) {
        return 0;
    }
    if let Some(slot) = PENDING_COPY.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread writes its own entry.
        unsafe { *slot = uncopied };
    } else if PENDING_COPY.insert(pid_tgid, uncopied, 0).is_err() {
        count_error(MapSlot::PendingCopy);
    }
    0
}

#[inline(always)]
fn count_stashed<C: StackIdContext>(ctx: &C, routine: CopyRoutine, ret: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uncopied = match PENDING_COPY.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread reads and writes its own entry; consumed in place.
        Some(slot) => unsafe { core::mem::replace(&mut *slot, NOT_A_COPY) },
        None => NOT_A_COPY,
    };
    count_copied(ctx, routine, ret.saturating_sub(uncopied))
}

#[inline(always)]
fn count_copied<C: StackIdContext>(ctx: &C, routine: CopyRoutine, bytes: i64) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if bytes <= 0 || filtered_out(tgid) {
        return 0;
    }
    let Ok(key) = process_key(current_task(), tgid) else {
        return 0;
    };
    if let Some(entry) = current_process_entry(&key) {
        // SAFETY: `entry` points into a live map value; `routine` is below COPY_ROUTINES.
        unsafe {
            add(
                &raw mut (*entry).observed_copy_bytes[routine as usize],
                bytes as u64,
            )
        };
        stacks::record_copy(ctx, Copier::from_routine(routine), bytes as u64);
    }
    0
}
