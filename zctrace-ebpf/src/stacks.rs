//! Stacks for `attach --stacks` and the daemon's profiles, aggregated here in bounded maps
//! because an event per call would cost more than the call: the user stack of each data-path
//! syscall with the mechanism it used (user mode), or the kernel stack, and the user stack with
//! it, wherever a copy is observed.
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, StackTrace},
    programs::tracing::StackIdContext,
};
use zctrace_common::{
    Copier, CopyStackCounts, CopyStackKey, MapSlot, SampledStream, StackKey, StackMode, SyscallKey,
    SyscallStats, NO_STACK, SAMPLE_GAPS,
};

use crate::{
    kernel::{current_user_regs, field, sample_period, stack_mode},
    maps::{add, count_error, zeroed_entry},
};

/// The errors `bpf_get_stackid` returns, negated: the bucket is another stack's, or the kernel
/// found no stack to walk.
const EEXIST: i32 = 17;
const EFAULT: i32 = 14;

/// One entry until `attach --stacks` or the daemon's profiles size it.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

/// Preallocated, like every hash map here: kprobe programs use them, and before 5.13 the kernel
/// warns that a map allocating at run time is unsafe there (it could recurse into the allocator).
#[map]
static STACK_COUNTS: HashMap<StackKey, SyscallStats> = HashMap::with_max_entries(1, 0);

#[map]
static COPY_STACK_COUNTS: HashMap<CopyStackKey, CopyStackCounts> = HashMap::with_max_entries(1, 0);

/// Per CPU, for each [`SampledStream`], the bytes left before its next sampling point; 0 before
/// the first gap is drawn.
#[map]
static SAMPLE_LEFT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Gaps to draw from, [`SAMPLE_GAPS`] of them when sampling (user space sizes and fills it).
#[map]
static SAMPLE_GAP_QUANTILES: Array<u64> = Array::with_max_entries(1, 0);

/// True when `attach --stacks user` or the daemon's profiles asked for the call sites of
/// data-path syscalls.
#[inline(always)]
pub fn syscall_sites_wanted() -> bool {
    let mode = stack_mode();
    mode == StackMode::User as u32 || mode == StackMode::Profiles as u32
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

/// What one recorded stack stands for: every call, or with sampling the calls and bytes between
/// sampling points, so that sums over stacks estimate the totals without bias.
struct Weight {
    calls: u64,
    bytes: u64,
}

/// The weight of a call or copy of `bytes`, or `None` when sampling passes it by. A stack is
/// taken where the stream's bytes cross a sampling point; the points fall at random, with
/// exponential gaps of mean `period` (a Poisson process, as heap profilers sample allocations),
/// so each point stands for `period` bytes and each call for `period / bytes` calls.
#[inline(always)]
fn weight(stream: SampledStream, bytes: u64) -> Option<Weight> {
    let period = sample_period();
    if period == 0 {
        return Some(Weight { calls: 1, bytes });
    }
    let left = SAMPLE_LEFT.get_ptr_mut(stream as u32)?;
    // SAFETY: this CPU's slot of a live map.
    let left = unsafe { &mut *left };
    if *left == 0 {
        *left = gap(period);
    }
    if bytes < *left {
        *left -= bytes;
        return None;
    }
    let beyond = bytes - *left;
    *left = gap(period);
    // Past the first point, the expected count of further ones, rounded up or down at random in
    // proportion, so that it stays exact on average.
    // SAFETY: no preconditions.
    let fraction = u64::from(unsafe { bpf_get_prandom_u32() }) % period;
    let points = 1 + (beyond + fraction) / period;
    let estimate = points * period;
    Some(Weight {
        calls: estimate / bytes,
        bytes: estimate,
    })
}

/// The current task's process.
#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// A gap to the next sampling point, drawn from user space's quantiles (never 0).
#[inline(always)]
fn gap(period: u64) -> u64 {
    // SAFETY: no preconditions.
    let pick = unsafe { bpf_get_prandom_u32() } & (SAMPLE_GAPS - 1);
    SAMPLE_GAP_QUANTILES.get(pick).copied().unwrap_or(period).max(1)
}

/// Counts one data-path call against the user stack it was made from. A call whose stack the
/// map cannot take is counted under [`NO_STACK`], so no bytes go missing; each stack or site
/// refused is one drop. With sampling, only calls at a sampling point are recorded, and failed
/// calls, which move no bytes, never are.
#[inline(always)]
pub fn record<C: StackIdContext>(ctx: &C, pt_regs: u64, key: &SyscallKey, failed: bool, bytes: u64) {
    let Some(weight) = weight(SampledStream::Syscalls, bytes) else {
        return;
    };
    let user_stack = stack_id(ctx, BPF_F_USER_STACK as u64);
    let (caller, caller_slot) = frameless_caller(pt_regs);
    let site = StackKey {
        user_stack,
        tgid: key.process.tgid,
        caller,
        nr: key.nr,
        src: key.src,
        dst: key.dst,
        variant: key.variant as u8,
        caller_slot,
        reserved: [0; 2],
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
        add(&raw mut (*entry).calls, weight.calls);
        if failed {
            add(&raw mut (*entry).errors, 1);
        } else {
            add(&raw mut (*entry).bytes, weight.bytes);
        }
    }
}

/// Counts `bytes` the current task just saw `copier` copy against the kernel stack of the copy
/// (and the user stack, with the caller a frameless leaf hides where the kernel hands over the
/// task's user registers, in both mode and for profiles), when `attach --stacks kernel|both` or
/// the daemon's profiles asked for them. As in [`record`], a stack the map refused is
/// [`NO_STACK`] and one drop. A deferred zerocopy copy runs in a softirq, whose user stack and
/// process belong to whatever task it interrupted, so it gets neither.
#[inline(always)]
pub fn record_copy<C: StackIdContext>(ctx: &C, copier: Copier, bytes: u64) {
    let mode = stack_mode();
    if mode < StackMode::Kernel as u32 {
        return;
    }
    let Some(weight) = weight(SampledStream::Copies, bytes) else {
        return;
    };
    let kernel_stack = stack_id(ctx, 0);
    let in_softirq = copier == Copier::ZerocopyDeferred;
    let user_wanted = mode == StackMode::Both as u32 || mode == StackMode::Profiles as u32;
    let (user_stack, (caller, caller_slot)) = if user_wanted && !in_softirq {
        let caller = current_user_regs().map_or((0, 0), frameless_caller);
        (stack_id(ctx, BPF_F_USER_STACK as u64), caller)
    } else {
        (NO_STACK, (0, 0))
    };
    let site = CopyStackKey {
        kernel_stack,
        user_stack,
        tgid: if in_softirq { 0 } else { current_tgid() },
        copier: copier as u8,
        caller_slot,
        reserved: [0; 2],
        caller,
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
        add(&raw mut (*entry).copies, weight.calls);
        add(&raw mut (*entry).bytes, weight.bytes);
    }
}

/// The lowest user address a return address can be: below it lie small integers (descriptors,
/// lengths), which need no read to be ruled out.
const LOWEST_TEXT: u64 = 0x10000;

/// The first of the [`CALLER_SLOTS`] words at the user stack pointer that follows a call
/// instruction, and its slot; (0, 0) if none does. A frameless leaf (libc's syscall wrappers)
/// leaves its return address there, which the frame-pointer walk skips; user space keeps it only
/// where the leaf's CFI puts the return address in that very slot.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn frameless_caller(pt_regs: u64) -> (u64, u8) {
    /// sp in `struct pt_regs`.
    const SP: u64 = 152;
    let sp: u64 = field(pt_regs, SP);
    // SAFETY: a fault-guarded read of the task's own stack.
    let Ok(words) = (unsafe { bpf_probe_read_user(sp as *const [u64; zctrace_common::CALLER_SLOTS]) }) else {
        return (0, 0);
    };
    for (slot, word) in words.into_iter().enumerate() {
        if follows_call(word) {
            return (word, slot as u8);
        }
    }
    (0, 0)
}

/// Whether the bytes before `address` end in a call: direct (e8 rel32), through memory at a
/// RIP-relative address (ff 15 disp32, as -fno-plt calls), or through a register (ff d0+r).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn follows_call(address: u64) -> bool {
    if !(LOWEST_TEXT..1 << 47).contains(&address) {
        return false;
    }
    // SAFETY: a fault-guarded read of the task's own memory.
    let Ok(code) = (unsafe { bpf_probe_read_user((address - 8) as *const [u8; 8]) }) else {
        return false;
    };
    code[3] == 0xe8 || (code[2] == 0xff && code[3] == 0x15) || (code[6] == 0xff && code[7] & 0xf8 == 0xd0)
}

/// The link register, if the instruction before it is a call (bl, blr): a leaf that keeps no
/// frame never saves it, so it is its caller's return address.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn frameless_caller(pt_regs: u64) -> (u64, u8) {
    /// regs[30] in `struct pt_regs`.
    const LR: u64 = 240;
    let lr: u64 = field(pt_regs, LR);
    if !(LOWEST_TEXT..1 << 48).contains(&lr) {
        return (0, 0);
    }
    // SAFETY: a fault-guarded read of the task's own memory.
    let Ok(call) = (unsafe { bpf_probe_read_user((lr - 4) as *const u32) }) else {
        return (0, 0);
    };
    let bl = call & 0xfc00_0000 == 0x9400_0000;
    let blr = call & 0xffff_fc1f == 0xd63f_0000;
    (if bl || blr { lr } else { 0 }, 0)
}
