//! Scheduler context switches per process, split as the kernel's nvcsw/nivcsw are, off-CPU time,
//! and the life events of a process: exit and rename.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::{btf_map, btf_tracepoint},
    programs::BtfTracePointContext,
};
use zctrace_common::{MapSlot, ProcessKey, ProcessStats};

use crate::{
    kernel::{
        current_group_dead, current_task, current_task_exiting, field, filtered_out, offset, process_key,
    },
    maps::{
        add, count_error, create_current_process_entry, current_process_entry, TaskStorage, PENDING_COPY,
        PENDING_SEND, PROCESSES,
    },
};

/// A thread's off-CPU bookkeeping, kept in the thread itself: when it last switched out, and
/// the off-CPU time of its last interval until its next switch-out adds it to its process.
#[repr(C)]
pub struct OffCpu {
    since_ns: u64,
    unfolded_ns: u64,
}

#[btf_map]
static THREAD_OFFCPU: TaskStorage<OffCpu> = TaskStorage::new();

/// Why sched_switch: it is where the kernel decides voluntary vs involuntary (the same test as its
/// nvcsw/nivcsw accounting), and where every off-CPU interval starts and ends.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    match try_sched_switch(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let preempt: u64 = ctx.arg(0);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // A task that blocks (state not TASK_RUNNING) without being preempted switched voluntarily.
    let voluntary = preempt & 1 == 0 && prev_state as u32 != 0;
    let _ = switch_out(voluntary, now);
    switch_in(next, now)
}

/// `current` is still the task being switched out. One process-entry update per switch: the
/// off-CPU time that ended at the thread's last switch-in rides along with its count.
#[inline(always)]
fn switch_out(voluntary: bool, now: u64) -> Result<u32, u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if filtered_out(tgid) {
        return Ok(0);
    }
    let task = current_task();
    let key = process_key(task, tgid)?;
    let entry = current_process_entry(&key).ok_or(0u32)?;
    // SAFETY: `entry` points into a live map value.
    unsafe {
        if voluntary {
            add(&raw mut (*entry).voluntary_switches, 1);
        } else {
            add(&raw mut (*entry).involuntary_switches, 1);
        }
    }
    // An exiting thread's last interval never ends, and its storage is about to be freed.
    if current_task_exiting() {
        return Ok(0);
    }
    let Some(offcpu) = THREAD_OFFCPU.get(task, true) else {
        count_error(MapSlot::ThreadSwitches);
        return Ok(0);
    };
    // SAFETY: `offcpu` is this thread's storage, written only where the thread switches.
    unsafe {
        add(&raw mut (*entry).offcpu_ns, (*offcpu).unfolded_ns);
        (*offcpu).unfolded_ns = 0;
        (*offcpu).since_ns = now;
    }
    Ok(0)
}

#[inline(always)]
fn switch_in(next: u64, now: u64) -> Result<u32, u32> {
    let tgid: u32 = field(next, offset!(task_tgid));
    if filtered_out(tgid) {
        return Ok(0);
    }
    let offcpu = THREAD_OFFCPU.get(next, false).ok_or(0u32)?;
    // SAFETY: `offcpu` is the storage of `next`, which is not running anywhere else.
    unsafe {
        if (*offcpu).since_ns != 0 {
            (*offcpu).unfolded_ns += now.saturating_sub((*offcpu).since_ns);
            (*offcpu).since_ns = 0;
        }
    }
    Ok(0)
}

/// Adds the current thread's last off-CPU interval, not yet folded, to its process entry.
#[inline(always)]
fn fold_offcpu(entry: *mut ProcessStats) {
    if let Some(offcpu) = THREAD_OFFCPU.get(current_task(), false) {
        // SAFETY: the current thread's storage and a live map value.
        unsafe {
            add(&raw mut (*entry).offcpu_ns, (*offcpu).unfolded_ns);
            (*offcpu).unfolded_ns = 0;
        }
    }
}

/// Why sched_process_exit: a thread's last event, so its per-thread entries are freed here, and
/// when its whole group is dead the process entry is marked for user space to fold and free.
/// Its arguments differ between kernels (6.1 passes only the task), so it reads none.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> u32 {
    match try_sched_process_exit() {
        Ok(r) | Err(r) => r,
    }
}

fn try_sched_process_exit() -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = PENDING_SEND.remove(pid_tgid);
    let _ = PENDING_COPY.remove(pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    if filtered_out(tgid) {
        return Ok(0);
    }
    let key = process_key(current_task(), tgid)?;
    let group_dead = current_group_dead();
    // Created if missing for the last thread (a process that never switched out has syscall
    // entries only), so that user space sees the exit and frees everything at the next sweep.
    let Some(entry) = exiting_process_entry(&key, group_dead) else {
        return Ok(0);
    };
    fold_offcpu(entry);
    if group_dead {
        // SAFETY: `entry` points into a live map value.
        unsafe { (*entry).exited = 1 };
    }
    Ok(0)
}

#[inline(always)]
fn exiting_process_entry(key: &ProcessKey, group_dead: bool) -> Option<*mut ProcessStats> {
    if group_dead {
        create_current_process_entry(key)
    } else {
        PROCESSES.get_ptr_mut(key)
    }
}

/// Why task_rename: exec and prctl(PR_SET_NAME) both rename a task through it, with the new name
/// in hand, as `ps` will show it. Only the thread-group leader's name names the process.
#[btf_tracepoint(function = "task_rename")]
pub fn task_rename(ctx: BtfTracePointContext) -> u32 {
    match try_task_rename(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_task_rename(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let task: u64 = ctx.arg(0);
    let new_name: u64 = ctx.arg(1);
    let tgid: u32 = field(task, offset!(task_tgid));
    if field::<u32>(task, offset!(task_pid)) != tgid || filtered_out(tgid) {
        return Ok(0);
    }
    // A process without an entry yet gets the new name when one is created.
    let entry = PROCESSES.get_ptr_mut(process_key(task, tgid)?).ok_or(0u32)?;
    let mut comm = [0u8; 16];
    // SAFETY: the helper checks the kernel address and stops at the buffer's end.
    unsafe { bpf_probe_read_kernel_str_bytes(new_name as *const u8, &mut comm) }.map_err(|_| 0u32)?;
    // SAFETY: `entry` points into a live map value.
    unsafe { (*entry).comm = comm };
    Ok(0)
}
