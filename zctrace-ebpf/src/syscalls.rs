//! Every syscall's exit: per-process syscall counts, and for the data-path syscalls, the bytes
//! moved and the kinds of descriptor on each side.
use aya_ebpf::{
    helpers::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs},
    macros::{btf_tracepoint, tracepoint},
    programs::{tracing::StackIdContext, BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use zctrace_common::{
    nr, DataPath, FdKind, MapSlot, SyscallKey, Variant, FMODE_WRITE, MMSGHDR_LEN_OFFSET, MMSGHDR_SIZE,
    MMSG_WALK, MSG_ZEROCOPY, SYS_EXIT_RECORD_RET,
};

use crate::{
    kernel::{
        current_task, fd_file, field, filtered_out, offset, process_key, relay_evidence_wanted, task_field,
    },
    maps::{add, count_error, syscall_entry},
    relay, stacks,
};

/// Where a syscall's number and first arguments sit in `struct pt_regs` at its exit. x86_64's
/// layout is ptrace's ABI. arm64 writes the return value over x0, so its first argument is kept
/// in `orig_x0`, and its number in the 32-bit `syscallno`, both after the ptrace part.
#[cfg(bpf_target_arch = "x86_64")]
mod regs {
    /// di, si, dx, r10.
    pub const ARG0: u64 = 112;
    pub const ARG1: u64 = 104;
    pub const ARG2: u64 = 96;
    pub const ARG3: u64 = 56;

    /// orig_ax.
    #[inline(always)]
    pub fn syscall_nr(pt_regs: u64) -> i64 {
        crate::kernel::field(pt_regs, 120)
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod regs {
    /// orig_x0, then x1 to x3.
    pub const ARG0: u64 = 272;
    pub const ARG1: u64 = 8;
    pub const ARG2: u64 = 16;
    pub const ARG3: u64 = 24;

    /// syscallno, 32 bits.
    #[inline(always)]
    pub fn syscall_nr(pt_regs: u64) -> i64 {
        crate::kernel::field::<i32>(pt_regs, 280) as i64
    }
}

/// Why sys_exit: one hook sees every syscall with its return value (per-process syscall and mode
/// switch counts), and the arguments are still in pt_regs, so no enter/exit pairing map is needed.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> u32 {
    match try_sys_exit(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_sys_exit(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    count_exit(ctx, ctx.arg(0), ctx.arg(1))
}

/// Why the classic `raw_syscalls:sys_exit` too: where the kernel runs raw tracepoint programs
/// preemptibly (7.x), it skips every other task's run of sys_exit on a CPU while one run there
/// is preempted; the classic tracepoint runs its programs with preemption off. It costs more
/// per syscall, so user space chooses it only where the kernel runs programs preemptibly.
#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn sys_exit_tracepoint(ctx: TracePointContext) -> u32 {
    match try_sys_exit_tracepoint(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_sys_exit_tracepoint(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: the record is the program's context, readable at any aligned offset past 8.
    let ret = unsafe {
        *(ctx.as_ptr() as *const u8)
            .add(SYS_EXIT_RECORD_RET as usize)
            .cast::<i64>()
    };
    // SAFETY: both helpers take the current, BTF-typed task and have no other preconditions.
    let pt_regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    count_exit(ctx, pt_regs, ret)
}

/// Counts one syscall's exit, from its registers and return value, however the hook got them.
#[inline(always)]
fn count_exit<C: StackIdContext>(ctx: &C, pt_regs: u64, ret: i64) -> Result<u32, u32> {
    // The task's own field, not a helper call: the task is needed anyway.
    let task = current_task();
    let tgid: u32 = task_field(task, offset!(task_tgid));
    if filtered_out(tgid) {
        return Ok(0);
    }
    let Some(nr) = syscall_nr(pt_regs) else {
        return Ok(0);
    };
    let (src, dst) = kinds(nr, task, pt_regs);
    // Read again: the verifier then knows nothing of which arm of `kinds` the call took, so the
    // paths out of every arm are one to it from here on, and it checks what follows once.
    let Some(nr) = syscall_nr(pt_regs) else {
        return Ok(0);
    };
    let (variant, bytes) = amounts(nr, pt_regs, ret);
    let call = Call {
        src,
        dst,
        variant,
        bytes,
    };
    let key = SyscallKey {
        process: process_key(task, tgid)?,
        nr,
        src: call.src as u8,
        dst: call.dst as u8,
        variant: call.variant as u32,
    };
    // Only data-path calls have kinds: the call sites `attach --stacks` is after. The kind is
    // looked at only once stacks are known to be wanted: where they are not (the daemon), the
    // verifier then never tells one kind from another, and checks what follows once for all.
    if stacks::syscall_sites_wanted() && opaque(call.src as u64) != FdKind::None as u64 {
        stacks::record(ctx, pt_regs, &key, ret < 0, call.bytes);
    }
    let relayed = relay_evidence(nr, task, pt_regs, &call);
    let entry = syscall_entry(&key).ok_or(0u32)?;
    // SAFETY: `entry` points into a live map value.
    unsafe {
        add(&raw mut (*entry).calls, 1);
        if ret < 0 {
            add(&raw mut (*entry).errors, 1);
        } else if call.bytes > 0 {
            add(&raw mut (*entry).bytes, call.bytes);
        }
        if relayed > 0 {
            add(&raw mut (*entry).relayed_bytes, relayed);
        }
    }
    Ok(0)
}

/// For the calls that take one plain buffer: a read notes what it filled, and a send returns how
/// many of its bytes came from the buffer the same thread's last read filled.
#[inline(always)]
fn relay_evidence(nr: u16, task: u64, pt_regs: u64, call: &Call) -> u64 {
    // First, so that where it is not wanted (the daemon) the verifier drops the rest.
    if !relay_evidence_wanted() || call.bytes == 0 {
        return 0;
    }
    let reading = match nr {
        nr::READ | nr::PREAD64 | nr::RECVFROM => true,
        nr::WRITE | nr::PWRITE64 | nr::SENDTO => false,
        _ => return 0,
    };
    let buffer: u64 = field(pt_regs, regs::ARG1);
    let tid: u32 = task_field(task, offset!(task_pid));
    if reading {
        relay::filled(tid, buffer, call.bytes);
        0
    } else {
        relay::relayed(tid, buffer, call.bytes)
    }
}

/// What a syscall moved, between what.
struct Call {
    src: FdKind,
    dst: FdKind,
    variant: Variant,
    bytes: u64,
}

/// The syscall's number, if it is one.
#[inline(always)]
fn syscall_nr(pt_regs: u64) -> Option<u16> {
    let nr = regs::syscall_nr(pt_regs);
    (0..=u16::MAX as i64).contains(&nr).then_some(nr as u16)
}

/// One side of a data-path call, before its descriptor is looked at: the descriptor (the 32 bits
/// of its register the kernel takes), [`USER_SIDE`] or [`NO_SIDE`].
type Side = u64;

/// The caller's own memory, as a [`Side`]: above every 32-bit descriptor.
const USER_SIDE: Side = 1 << 32;

/// A call that moves no data, as a [`Side`].
const NO_SIDE: Side = 1 << 33;

/// What each side of a data-path call is. Every call in here is inlined (a BPF subprogram call
/// costs a return, which this host's SRSO mitigation makes as dear as the rest of the walk), and
/// the descriptor walk appears once per side, after the match: the sides pass through [`opaque`],
/// so that LLVM cannot copy a walk into each arm, where the verifier would check every copy.
#[inline(always)]
fn kinds(nr: u16, task: u64, pt_regs: u64) -> (FdKind, FdKind) {
    let fd = |offset: u64| field::<u64>(pt_regs, offset) & u32::MAX as u64;
    let (src, dst) = match DataPath::of(nr) {
        DataPath::IntoUser => (fd(regs::ARG0), USER_SIDE),
        DataPath::FromUser => (USER_SIDE, fd(regs::ARG0)),
        DataPath::Sendfile => (fd(regs::ARG1), fd(regs::ARG0)),
        DataPath::Tee => (fd(regs::ARG0), fd(regs::ARG1)),
        DataPath::Splice => (fd(regs::ARG0), fd(regs::ARG2)),
        DataPath::Vmsplice => return vmsplice_direction(task, fd(regs::ARG0)),
        DataPath::None => (NO_SIDE, NO_SIDE),
    };
    (side_kind(task, opaque(src)), side_kind(task, opaque(dst)))
}

/// What a data-path call moved, and how.
#[inline(always)]
fn amounts(nr: u16, pt_regs: u64, ret: i64) -> (Variant, u64) {
    let arg = |offset: u64| field::<u64>(pt_regs, offset);
    let moved = if ret > 0 { ret as u64 } else { 0 };
    match nr {
        nr::RECVMMSG => (Variant::Plain, mmsg_bytes(arg(regs::ARG1), ret)),
        nr::SENDTO => (send_variant(arg(regs::ARG3)), moved),
        nr::SENDMSG => (send_variant(arg(regs::ARG2)), moved),
        nr::SENDMMSG => (send_variant(arg(regs::ARG3)), mmsg_bytes(arg(regs::ARG1), ret)),
        _ if DataPath::of(nr) == DataPath::None => (Variant::Plain, 0),
        _ => (Variant::Plain, moved),
    }
}

/// `value`, which LLVM can no longer see through, at the cost of one register move. (An empty
/// template would emit no instruction but a line of debug info, which the kernel refuses to
/// share with the next instruction.)
#[inline(always)]
fn opaque(mut value: u64) -> u64 {
    // SAFETY: copies a register onto itself.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) value, options(pure, nomem, nostack)) };
    value
}

#[inline(always)]
fn side_kind(task: u64, side: Side) -> FdKind {
    match side {
        USER_SIDE => FdKind::User,
        NO_SIDE => FdKind::None,
        fd => fd_kind(task, fd),
    }
}

#[inline(always)]
fn fd_kind(task: u64, fd: u64) -> FdKind {
    // A negative `int`: no descriptor.
    if fd > i32::MAX as u64 {
        return FdKind::None;
    }
    // A match, not `map_or`: LLVM would make the closure a subprogram, one call per descriptor.
    match fd_file(task, fd) {
        Some(file) => file.kind(),
        None => FdKind::None,
    }
}

#[inline(always)]
fn send_variant(flags: u64) -> Variant {
    if flags & MSG_ZEROCOPY != 0 {
        Variant::Zerocopy
    } else {
        Variant::Plain
    }
}

/// vmsplice maps user pages into a pipe opened for writing, and copies out of one opened for reading.
#[inline(always)]
fn vmsplice_direction(task: u64, fd: u64) -> (FdKind, FdKind) {
    let Some(file) = fd_file(task, fd) else {
        return (FdKind::User, FdKind::None);
    };
    let kind = file.kind();
    let mode: u32 = file.get(offset!(file_mode)).unwrap_or(FMODE_WRITE);
    if mode & FMODE_WRITE != 0 {
        (FdKind::User, kind)
    } else {
        (kind, FdKind::User)
    }
}

/// sendmmsg/recvmmsg return a message count; the bytes are the `msg_len` of each message.
#[inline(always)]
fn mmsg_bytes(vector: u64, ret: i64) -> u64 {
    if ret <= 0 {
        return 0;
    }
    // A copy the verifier does not tie to `ret`: each exit of the walk would otherwise leave
    // `ret` in a range of its own, and the verifier would check all that follows once per exit.
    let messages = opaque(ret as u64 & u32::MAX as u64);
    if messages > MMSG_WALK as u64 {
        count_error(MapSlot::MmsgTruncated);
    }
    let mut total = 0u64;
    for i in 0..MMSG_WALK as u64 {
        if i >= messages {
            break;
        }
        let len_ptr = (vector + i * MMSGHDR_SIZE + MMSGHDR_LEN_OFFSET) as *const u32;
        // SAFETY: bpf_probe_read_user checks the address.
        total += unsafe { bpf_probe_read_user(len_ptr) }.unwrap_or(0) as u64;
    }
    total
}
