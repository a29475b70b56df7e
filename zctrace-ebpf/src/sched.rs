//! Scheduler context switches per process, split as the kernel's nvcsw/nivcsw are, off-CPU time,
//! and the life events of a process: exit, rename and a move to another cgroup.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use zctrace_common::{MapSlot, ProcessKey, ProcessStats, ThreadSwitches, NO_FIELD};

use crate::{
    kernel::{
        current_group_dead, current_task, current_task_exiting, field, filtered_out, offset, process_key,
        read,
    },
    maps::{
        add, count_error, create_current_process_entry, current_process_entry, PENDING_COPY, PENDING_SEND,
        PROCESSES, THREADS,
    },
};

/// Why sched_switch: it is where the kernel decides voluntary vs involuntary (the same test as its
/// nvcsw/nivcsw accounting). Off-CPU time needs no switch-in: between two switch-outs of a
/// thread, the wall time less its CPU time was spent off CPU. So only the task going out is
/// touched, once, in its own entry.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let prev_state: u64 = ctx.arg(3);
    match try_sched_switch(&ctx, prev_state as u32) {
        Ok(r) | Err(r) => r,
    }
}

/// Why a second sched_switch program: before 5.18 the tracepoint does not hand over the state
/// the task leaves in (it has 3 arguments), so it is read from the task, which still holds it.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_task_state(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg(1);
    match try_sched_switch(&ctx, field(task, offset!(task_state))) {
        Ok(r) | Err(r) => r,
    }
}

/// Inlined into both programs: a BPF subprogram call per switch costs more than the work.
#[inline(always)]
fn try_sched_switch(ctx: &BtfTracePointContext, prev_state: u32) -> Result<u32, u32> {
    let preempt: u64 = ctx.arg(0);
    // The task going out is the one running: its own fields name it, without a helper call.
    let task: u64 = ctx.arg(1);
    let tgid: u32 = field(task, offset!(task_tgid));
    if filtered_out(tgid) {
        return Ok(0);
    }
    // A task that blocks (state not TASK_RUNNING) without being preempted switched voluntarily.
    let voluntary = preempt & 1 == 0 && prev_state != 0;
    let tid: u32 = field(task, offset!(task_pid));
    let started: u64 = field(task, offset!(task_start_boottime));
    match THREADS.get_ptr_mut(tid) {
        // SAFETY: `thread` points into a live map value.
        Some(thread) if unsafe { (*thread).thread_start_ns } == started => {
            count_switch(thread, voluntary, task);
            Ok(0)
        }
        _ => first_switch(tid, started, process_key(task, tgid)?, voluntary, task),
    }
}

/// A tid that is reused keeps no counts of the thread that had it.
#[inline(always)]
fn same_process(thread: *mut ThreadSwitches, key: &ProcessKey) -> bool {
    // SAFETY: `thread` points into a live map value.
    unsafe { (*thread).process == *key }
}

/// Counts a switch-out of the current thread, in its own entry: only it writes there.
#[inline(always)]
fn count_switch(thread: *mut ThreadSwitches, voluntary: bool, task: u64) {
    let runtime: u64 = field(task, offset!(task_runtime));
    let now = switch_out_time(thread, task, runtime);
    // SAFETY: `thread` points into a live map value that only this thread writes.
    unsafe {
        if voluntary {
            (*thread).voluntary += 1;
        } else {
            (*thread).involuntary += 1;
        }
        if (*thread).last_out_ns != 0 {
            let wall = now.saturating_sub((*thread).last_out_ns);
            let on_cpu = runtime.saturating_sub((*thread).last_runtime_ns);
            (*thread).offcpu_ns += wall.saturating_sub(on_cpu);
        }
        (*thread).last_out_ns = now;
        (*thread).last_runtime_ns = runtime;
    }
}

/// The time of this switch-out. Where the kernel keeps `sched_info`, it is the scheduler's clock
/// when the thread went on CPU plus the CPU time it has run since: two field loads, where the
/// clock helper is a call that costs more than a hash lookup. That CPU time is measured from the
/// thread's last switch-out, or at its first from where the fair class marked it (a real-time
/// thread's first off-CPU gap may be undercounted).
#[inline(always)]
fn switch_out_time(thread: *mut ThreadSwitches, task: u64, runtime: u64) -> u64 {
    if offset!(task_last_arrival) == NO_FIELD as u64 {
        // SAFETY: the helper has no preconditions.
        return unsafe { bpf_ktime_get_ns() };
    }
    let arrived: u64 = field(task, offset!(task_last_arrival));
    // SAFETY: `thread` points into a live map value.
    let (last_out, last_runtime) = unsafe { ((*thread).last_out_ns, (*thread).last_runtime_ns) };
    let runtime_at_arrival = match last_out {
        0 => field(task, offset!(task_stint_start_runtime)),
        _ => last_runtime,
    };
    arrived + runtime.saturating_sub(runtime_at_arrival)
}

/// The thread's first switch seen: its process entry is made now (named, with its cgroup) and its
/// own entry starts timing, replacing any entry a gone thread with the same tid left. An exiting
/// thread, whose entry was folded at its exit, and one the full map has no room for are counted
/// in the process entry directly.
#[inline(always)]
fn first_switch(tid: u32, started: u64, key: ProcessKey, voluntary: bool, task: u64) -> Result<u32, u32> {
    let entry = current_process_entry(&key).ok_or(0u32)?;
    if !current_task_exiting() {
        let fresh = ThreadSwitches {
            process: key,
            thread_start_ns: started,
            ..ThreadSwitches::default()
        };
        if THREADS.insert(tid, fresh, 0).is_ok() {
            if let Some(thread) = THREADS.get_ptr_mut(tid) {
                count_switch(thread, voluntary, task);
                return Ok(0);
            }
        }
        count_error(MapSlot::Threads);
    }
    // SAFETY: `entry` points into a live map value.
    unsafe {
        if voluntary {
            add(&raw mut (*entry).voluntary_switches, 1);
        } else {
            add(&raw mut (*entry).involuntary_switches, 1);
        }
    }
    Ok(0)
}

/// Moves the exiting thread's counts into its process entry, where it has one, and frees its
/// entry either way.
#[inline(always)]
fn fold_thread(tid: u32, key: &ProcessKey, entry: Option<*mut ProcessStats>) {
    let Some(thread) = THREADS.get_ptr_mut(tid) else {
        return;
    };
    if let Some(entry) = entry.filter(|_| same_process(thread, key)) {
        // SAFETY: the exiting thread's own entry and a live map value.
        unsafe {
            add(&raw mut (*entry).voluntary_switches, (*thread).voluntary);
            add(&raw mut (*entry).involuntary_switches, (*thread).involuntary);
            add(&raw mut (*entry).offcpu_ns, (*thread).offcpu_ns);
        }
    }
    let _ = THREADS.remove(tid);
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
    let entry = exiting_process_entry(&key, group_dead);
    fold_thread(pid_tgid as u32, &key, entry);
    if let Some(entry) = entry.filter(|_| group_dead) {
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

/// Why cgroup_attach_task: every move of a process into another cgroup passes it once the move is
/// done, whoever moves it (runc and systemd move a container's or service's first process before
/// it execs), so the process's later counts go under its new cgroup as its later names do.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> u32 {
    match try_cgroup_attach_task(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_cgroup_attach_task(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let task: u64 = ctx.arg(2);
    let tgid: u32 = field(task, offset!(task_tgid));
    if filtered_out(tgid) {
        return Ok(0);
    }
    // A process without an entry yet takes its cgroup when one is created. Whatever hierarchy the
    // move was in, the v2 cgroup is read, as it is for every other process.
    let entry = PROCESSES.get_ptr_mut(process_key(task, tgid)?).ok_or(0u32)?;
    let css_set: u64 = read(task, offset!(task_cgroups))?;
    let cgroup: u64 = read(css_set, offset!(css_set_dfl_cgrp))?;
    let kernfs_node: u64 = read(cgroup, offset!(cgroup_kn))?;
    let cgroup_id: u64 = read(kernfs_node, offset!(kernfs_node_id))?;
    // SAFETY: `entry` points into a live map value.
    unsafe { (*entry).cgroup_id = cgroup_id };
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
