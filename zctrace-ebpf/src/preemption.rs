//! Asks, once at load, whether the kernel runs sys_exit's programs preemptibly.
use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::Array,
    programs::BtfTracePointContext,
};
use zctrace_common::{PreemptionProbe, NO_FIELD};

use crate::kernel::{current_task, offset, task_field};

/// Slot [`PreemptionProbe::Asker`]: the tgid user space asks from; slot
/// [`PreemptionProbe::Answer`]: 0 until a syscall of it exits, then 1 plus the task's
/// `migration_disabled` during the program.
#[map]
static PREEMPTION_PROBE: Array<u32> = Array::with_max_entries(PreemptionProbe::SLOTS, 0);

/// Why sys_exit: the hook whose programs the answer is for. A kernel that may preempt a program
/// disables migration instead (it keeps per-CPU state); one that may not leaves the count at 0.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_preemption(_ctx: BtfTracePointContext) -> u32 {
    match try_sys_exit_preemption() {
        Ok(r) | Err(r) => r,
    }
}

fn try_sys_exit_preemption() -> Result<u32, u32> {
    let task = current_task();
    let tgid: u32 = task_field(task, offset!(task_tgid));
    let asker = PREEMPTION_PROBE.get(PreemptionProbe::Asker as u32).ok_or(0u32)?;
    if tgid != *asker {
        return Ok(0);
    }
    let disabled = match offset!(task_migration_disabled) {
        offset if offset == NO_FIELD as u64 => 0,
        offset => task_field::<u16>(task, offset),
    };
    let answer = PREEMPTION_PROBE
        .get_ptr_mut(PreemptionProbe::Answer as u32)
        .ok_or(0u32)?;
    // SAFETY: a live array slot; only the asker's syscalls write it.
    unsafe { *answer = 1 + disabled as u32 };
    Ok(0)
}
