//! Scheduler context switches per process, split as the kernel's nvcsw/nivcsw are, off-CPU time,
//! and the life events of a process: exit and rename.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use zctrace_common::MapSlot;

use crate::{
    kernel::{
        current_group_dead, current_task, current_task_exiting, field, filtered_out, leader_comm, offset,
        process_key,
    },
    maps::{
        add, count_error, create_current_process_entry, current_process_entry, process_entry, OFFCPU_START,
        PENDING_COPY, PENDING_SEND, PROCESSES,
    },
};

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

/// `current` is still the task being switched out.
#[inline(always)]
fn switch_out(voluntary: bool, now: u64) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if filtered_out(tgid) {
        return Ok(0);
    }
    let key = process_key(current_task(), tgid)?;
    let entry = current_process_entry(&key).ok_or(0u32)?;
    // SAFETY: `entry` points into a live map value.
    unsafe {
        if voluntary {
            add(&raw mut (*entry).voluntary_switches, 1);
        } else {
            add(&raw mut (*entry).involuntary_switches, 1);
        }
    }
    // An exiting thread's entry was freed at sched_process_exit and must not come back.
    if current_task_exiting() {
        return Ok(0);
    }
    // In place when the thread has an entry: a hash update would swap in a fresh element.
    if let Some(start) = OFFCPU_START.get_ptr_mut(pid_tgid as u32) {
        // SAFETY: only this thread, switching out here, writes its own entry.
        unsafe { *start = now };
    } else if OFFCPU_START.insert(pid_tgid as u32, now, 0).is_err() {
        count_error(MapSlot::OffcpuStart);
    }
    Ok(0)
}

#[inline(always)]
fn switch_in(next: u64, now: u64) -> Result<u32, u32> {
    let tgid: u32 = field(next, offset!(task_tgid));
    if filtered_out(tgid) {
        return Ok(0);
    }
    let tid: u32 = field(next, offset!(task_pid));
    // SAFETY: a hash value read once; a concurrent update only changes which interval is counted.
    let Some(&since) = (unsafe { OFFCPU_START.get(tid) }) else {
        return Ok(0);
    };
    let key = process_key(next, tgid)?;
    // The name is read only when the entry has to be created.
    let entry = match PROCESSES.get_ptr_mut(key) {
        Some(entry) => entry,
        None => process_entry(&key, leader_comm(next)).ok_or(0u32)?,
    };
    // SAFETY: `entry` points into a live map value.
    unsafe { add(&raw mut (*entry).offcpu_ns, now.saturating_sub(since)) };
    Ok(0)
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
    let _ = OFFCPU_START.remove(pid_tgid as u32);
    let _ = PENDING_SEND.remove(pid_tgid);
    let _ = PENDING_COPY.remove(pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    if filtered_out(tgid) || !current_group_dead() {
        return Ok(0);
    }
    let key = process_key(current_task(), tgid)?;
    // Created if missing (a process that never switched out has syscall entries only), so that
    // user space sees the exit and frees everything at the next sweep.
    let entry = PROCESSES
        .get_ptr_mut(key)
        .or_else(|| create_current_process_entry(&key));
    if let Some(entry) = entry {
        // SAFETY: `entry` points into a live map value.
        unsafe { (*entry).exited = 1 };
    }
    Ok(0)
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
