//! Stacks for `attach --stacks`, aggregated here in bounded maps because an event per call would
//! cost more than the call: the user stack of each data-path syscall with the mechanism it used
//! (user mode), or the kernel stack, and the user stack with it, wherever a copy is observed.
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    macros::map,
    maps::{HashMap, StackTrace},
    programs::{tracing::StackIdContext, BtfTracePointContext},
};
use zctrace_common::{
    Copier, CopyStackCounts, CopyStackKey, MapSlot, StackKey, StackMode, SyscallKey, SyscallStats, NO_STACK,
};

use crate::{
    kernel::stack_mode,
    maps::{add, count_error, zeroed_entry},
};

/// One entry until `attach --stacks` sizes it: the daemon never records stacks.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

/// Preallocated, like every hash map here: kprobe programs use them, and before 5.13 the kernel
/// warns that a map allocating at run time is unsafe there (it could recurse into the allocator).
#[map]
static STACK_COUNTS: HashMap<StackKey, SyscallStats> = HashMap::with_max_entries(1, 0);

#[map]
static COPY_STACK_COUNTS: HashMap<CopyStackKey, CopyStackCounts> = HashMap::with_max_entries(1, 0);

/// True when `attach --stacks user` asked for the call sites of data-path syscalls.
#[inline(always)]
pub fn syscall_sites_wanted() -> bool {
    stack_mode() == StackMode::User as u32
}

/// Counts one data-path call against the user stack it was made from. A call whose stack the
/// map cannot take is counted under [`NO_STACK`], so no bytes go missing; a call that could not
/// be recorded whole is one drop.
#[inline(always)]
pub fn record(ctx: &BtfTracePointContext, key: &SyscallKey, failed: bool, bytes: u64) {
    let stack = ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64).ok();
    let site = StackKey {
        user_stack: stack.map_or(NO_STACK, |id| id as i32),
        nr: key.nr,
        src: key.src,
        dst: key.dst,
        variant: key.variant as u8,
        reserved: [0; 3],
    };
    let entry = zeroed_entry(&STACK_COUNTS, &site);
    if stack.is_none() || entry.is_none() {
        count_error(MapSlot::Stacks);
    }
    let Some(entry) = entry else {
        return;
    };
    // SAFETY: `entry` points into a live map value.
    unsafe {
        add(&raw mut (*entry).calls, 1);
        if failed {
            add(&raw mut (*entry).errors, 1);
        } else {
            add(&raw mut (*entry).bytes, bytes);
        }
    }
}

/// Counts `bytes` the current task just saw `copier` copy against the kernel stack of the copy
/// (and the user stack, in both mode), when `attach --stacks kernel|both` asked for them. As in
/// [`record`], a stack the map refused is [`NO_STACK`] and one drop. A deferred zerocopy copy runs
/// in a softirq, whose user stack belongs to whatever task it interrupted, so it gets none.
#[inline(always)]
pub fn record_copy<C: StackIdContext>(ctx: &C, copier: Copier, bytes: u64) {
    let mode = stack_mode();
    if mode < StackMode::Kernel as u32 {
        return;
    }
    let kernel = ctx.get_stackid(&STACKS, 0).ok();
    let user_wanted = mode == StackMode::Both as u32 && copier != Copier::ZerocopyDeferred;
    let user = if user_wanted {
        ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64).ok()
    } else {
        None
    };
    let site = CopyStackKey {
        kernel_stack: kernel.map_or(NO_STACK, |id| id as i32),
        user_stack: user.map_or(NO_STACK, |id| id as i32),
        copier: copier as u8,
        reserved: [0; 7],
    };
    let entry = zeroed_entry(&COPY_STACK_COUNTS, &site);
    if kernel.is_none() || (user_wanted && user.is_none()) || entry.is_none() {
        count_error(MapSlot::Stacks);
    }
    let Some(entry) = entry else {
        return;
    };
    // SAFETY: `entry` points into a live map value.
    unsafe {
        add(&raw mut (*entry).copies, 1);
        add(&raw mut (*entry).bytes, bytes);
    }
}
