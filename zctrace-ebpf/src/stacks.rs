//! Call sites for `attach --stacks`: the user stack of each data-path syscall, with the mechanism
//! it used, and the calls and bytes moved made from it. Aggregated here, in two bounded maps,
//! because an event per call would cost more than the call.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK},
    macros::map,
    maps::{HashMap, StackTrace},
    programs::{tracing::StackIdContext, BtfTracePointContext},
};
use zctrace_common::{MapSlot, StackKey, SyscallKey, SyscallStats, NO_STACK};

use crate::maps::{add, count_error, zeroed_entry};

/// One entry until `attach --stacks` sizes it: the daemon never records stacks.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

#[map]
static STACK_COUNTS: HashMap<StackKey, SyscallStats> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

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
        variant: key.variant,
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
