//! Stacks for `attach --stacks`, aggregated here in bounded maps because an event per call would
//! cost more than the call: the user stack of each data-path syscall with the mechanism it used
//! (user mode), or the kernel stack, and the user stack with it, wherever a copy is observed.
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    macros::map,
    maps::{HashMap, StackTrace},
    programs::tracing::StackIdContext,
};
use zctrace_common::{
    Copier, CopyStackCounts, CopyStackKey, MapSlot, StackKey, StackMode, SyscallKey, SyscallStats, NO_STACK,
};

use crate::{
    kernel::stack_mode,
    maps::{add, count_error, zeroed_entry},
};

/// The errors `bpf_get_stackid` returns, negated: the bucket is another stack's, or the kernel
/// found no stack to walk.
const EEXIST: i32 = 17;
const EFAULT: i32 = 14;

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

/// The id of the current stack (user with `BPF_F_USER_STACK`), or [`NO_STACK`] with the reason
/// the map refused it counted: a user reading the report must tell a hash collision, which
/// another run may not repeat, from a stack that cannot be had.
#[inline(always)]
fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(error) => {
            count_error(match -error {
                EEXIST => MapSlot::StacksCollided,
                EFAULT => MapSlot::StacksUnwalkable,
                _ => MapSlot::Stacks,
            });
            NO_STACK
        }
    }
}

/// Counts one data-path call against the user stack it was made from. A call whose stack the
/// map cannot take is counted under [`NO_STACK`], so no bytes go missing; each stack or site
/// refused is one drop.
#[inline(always)]
pub fn record<C: StackIdContext>(ctx: &C, key: &SyscallKey, failed: bool, bytes: u64) {
    let user_stack = stack_id(ctx, BPF_F_USER_STACK as u64);
    let site = StackKey {
        user_stack,
        nr: key.nr,
        src: key.src,
        dst: key.dst,
        variant: key.variant as u8,
        reserved: [0; 3],
    };
    let entry = zeroed_entry(&STACK_COUNTS, &site);
    if entry.is_none() {
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
    let kernel_stack = stack_id(ctx, 0);
    let user_wanted = mode == StackMode::Both as u32 && copier != Copier::ZerocopyDeferred;
    let site = CopyStackKey {
        kernel_stack,
        user_stack: if user_wanted {
            stack_id(ctx, BPF_F_USER_STACK as u64)
        } else {
            NO_STACK
        },
        copier: copier as u8,
        reserved: [0; 7],
    };
    let entry = zeroed_entry(&COPY_STACK_COUNTS, &site);
    if entry.is_none() {
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
