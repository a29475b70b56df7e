//! The overhead benchmark's yardsticks, attached only on request (`--probes floor` or
//! `--probes counting_floor`, moved to another hook with `--probe.hook`, or `--probes
//! counting_floors` at every hook the daemon counts at, and `--probes timing_floor`).
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::HashMap,
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::maps::add;

/// Hits per tgid for the counting floors; allocated only when used.
#[map]
static FLOOR_COUNTS: HashMap<u32, u64> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Switch-outs and the time of the last, per tid, for `timing_floor`.
#[map]
static FLOOR_TIMES: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

// An empty program: its cost at a hook is what the kernel charges to run any program there.
#[btf_tracepoint(function = "sys_exit")]
pub fn floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

// The least a per-process counter can do: one hash lookup and an atomic add per hit, by tgid.
// Against it, a target that even this misses is out of reach for per-process counting.
#[btf_tracepoint(function = "sys_exit")]
pub fn counting_floor(_ctx: BtfTracePointContext) -> u32 {
    count_hit()
}

// The same two floors at the classic sys_exit tracepoint, which sys_exit moves to where the
// kernel runs raw tracepoint programs preemptibly, so that it is still measured against its hook.
#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn floor_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn counting_floor_tracepoint(_ctx: TracePointContext) -> u32 {
    count_hit()
}

// The counting floor at the other hooks the daemon counts at, so that all four can run at once
// (`--probes counting_floors`): the least a per-process tracer of the same events costs.
#[btf_tracepoint(function = "sched_switch")]
pub fn switch_counting_floor(_ctx: BtfTracePointContext) -> u32 {
    count_hit()
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn send_counting_floor(_ctx: BtfTracePointContext) -> u32 {
    count_hit()
}

#[btf_tracepoint(function = "skb_copy_datagram_iovec")]
pub fn receive_counting_floor(_ctx: BtfTracePointContext) -> u32 {
    count_hit()
}

// The least a per-thread off-CPU timer can do at a switch: the counting floor keyed by thread,
// and the clock read and the store of the switch-out time that any such timing needs.
#[btf_tracepoint(function = "sched_switch")]
pub fn timing_floor(_ctx: BtfTracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match FLOOR_TIMES.get_ptr_mut(tid) {
        // SAFETY: only this thread writes its own entry.
        Some(times) => unsafe { *times = [(*times)[0] + 1, now] },
        None => {
            let _ = FLOOR_TIMES.insert(tid, [1, now], BPF_NOEXIST as u64);
        }
    }
    0
}

#[inline(always)]
fn count_hit() -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match FLOOR_COUNTS.get_ptr_mut(tgid) {
        Some(count) => add(count, 1),
        None => {
            let _ = FLOOR_COUNTS.insert(tgid, 1, BPF_NOEXIST as u64);
        }
    }
    0
}
