//! The TCP send path (copied, spliced or zerocopy) and socket receive copies.
//!
//! The send path has three ways in, and user space attaches the first the kernel allows: the
//! `tcp_sendmsg_locked` and `sock_send_length` tracepoints (recent kernels); fexit on the send
//! functions (kernels with BPF trampolines but without those tracepoints, such as 6.1); kprobes
//! on the same functions. All three share the classification and the counting below.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit, kprobe, kretprobe},
    programs::{tracing::StackIdContext, BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext},
};
use zctrace_common::{
    Copier, MapSlot, PendingSend, TcpPath, IFF_LOOPBACK, MSG_SPLICE_PAGES, MSG_ZEROCOPY, NETIF_F_SG, NO_FIELD,
};

use crate::{
    kernel::{
        current_task, filtered_out, is_tcp, offset, process_key, read, task_field, Access, Typed, Untyped,
    },
    maps::{
        add, count_error, current_process_entry, StagedSend, PENDING_SEND, STAGED_SEND, ZEROCOPY_SENDERS,
    },
    stacks,
};

/// Why tcp_sendmsg_locked: it sees the send's msg_flags and the route's capabilities, the two
/// things that decide whether TCP copies, references page cache pages, or pins user pages.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> u32 {
    match remember_send::<Typed>(ctx.arg(0), ctx.arg(1)) {
        Ok(r) | Err(r) => r,
    }
}

/// Why sock_send_length: it reports the bytes each socket send really moved, sendfile and splice
/// included, right after tcp_sendmsg returns.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let sent: i32 = ctx.arg(1);
    if !is_tcp(sk) {
        return 0;
    }
    match count_pending_send(&ctx, sent as i64) {
        Ok(r) | Err(r) => r,
    }
}

/// Why fexit on tcp_sendmsg_locked: where the tracepoints are missing, one trampoline sees the
/// send's flags and socket and, at exit, the bytes it moved.
#[fexit(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_exit(ctx: FExitContext) -> u32 {
    let sent: i32 = ctx.arg(3);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let counted =
        classify::<Typed>(ctx.arg(0), ctx.arg(1)).and_then(|send| count_send(&ctx, tgid, send, sent as i64));
    match counted {
        Ok(r) | Err(r) => r,
    }
}

/// Why fexit on do_tcp_sendpages: before 6.5, sendfile and splice reach TCP here instead of
/// through tcp_sendmsg_locked, and only from a scatter-gather route, so every byte is a page
/// reference.
#[fexit(function = "do_tcp_sendpages")]
pub fn tcp_sendpages_exit(ctx: FExitContext) -> u32 {
    let sent: i64 = ctx.arg(5);
    match count_spliced(&ctx, sent) {
        Ok(r) | Err(r) => r,
    }
}

/// Why a kprobe on tcp_sendmsg_locked: where trampolines are refused, its entry still sees the
/// flags and socket; the bytes come at its return.
#[kprobe]
pub fn tcp_sendmsg_entry(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(msg)) = (ctx.arg(0), ctx.arg(1)) else {
        return 0;
    };
    match remember_send::<Untyped>(sk, msg) {
        Ok(r) | Err(r) => r,
    }
}

/// Why a kretprobe on tcp_sendmsg_locked: its return value is the bytes the send moved.
#[kretprobe]
pub fn tcp_sendmsg_return(ctx: RetProbeContext) -> u32 {
    let sent: i32 = ctx.ret();
    match count_pending_send(&ctx, sent as i64) {
        Ok(r) | Err(r) => r,
    }
}

/// Why a kretprobe on do_tcp_sendpages: as its fexit twin, where trampolines are refused.
#[kretprobe]
pub fn tcp_sendpages_return(ctx: RetProbeContext) -> u32 {
    let sent: i64 = ctx.ret();
    match count_spliced(&ctx, sent) {
        Ok(r) | Err(r) => r,
    }
}

/// How TCP will move this send's payload, from its flags and the socket's route.
#[inline(always)]
fn classify<A: Access>(sk: u64, msg: u64) -> Result<PendingSend, u32> {
    let flags: u32 = A::get(msg, offset!(msghdr_flags))?;
    let route_caps: u64 = A::get(sk, offset!(sock_route_caps))?;
    let scatter_gather = route_caps & NETIF_F_SG != 0;
    let path = if flags as u64 & MSG_ZEROCOPY != 0 && scatter_gather && zerocopy_allowed::<A>(sk, msg)? {
        TcpPath::Zerocopy
    } else if flags & MSG_SPLICE_PAGES != 0 && scatter_gather {
        TcpPath::Splice
    } else {
        TcpPath::Copy
    };
    let loopback = path == TcpPath::Zerocopy && routes_to_loopback(sk);
    if loopback {
        remember_zerocopy_sender(sk);
    }
    Ok(PendingSend {
        path: path as u32,
        loopback: loopback as u32,
    })
}

/// Names the current process as the sender on `sk`, for the deferred copy of its pages.
#[inline(always)]
fn remember_zerocopy_sender(sk: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Ok(key) = process_key(current_task(), tgid) {
        let _ = ZEROCOPY_SENDERS.insert(sk, key, 0);
    }
}

/// MSG_ZEROCOPY is honoured for io_uring's buffers (msg_ubuf, where the kernel has it) or an
/// `SO_ZEROCOPY` socket.
#[inline(always)]
fn zerocopy_allowed<A: Access>(sk: u64, msg: u64) -> Result<bool, u32> {
    let ubuf: u64 = if offset!(msghdr_ubuf) == NO_FIELD as u64 {
        0
    } else {
        A::get(msg, offset!(msghdr_ubuf))?
    };
    let sk_flags: u64 = A::get(sk, offset!(sock_flags))?;
    Ok(ubuf != 0 || sk_flags & (1 << offset!(sock_zerocopy_bit)) != 0)
}

/// A loopback receiver copies zerocopy pages when it queues them (skb_orphan_frags_rx).
#[inline(always)]
fn routes_to_loopback(sk: u64) -> bool {
    let dev_flags = read::<u64>(sk, offset!(sock_dst_cache))
        .and_then(|dst| read::<u64>(dst, offset!(dst_dev)))
        .and_then(|dev| read::<u32>(dev, offset!(netdev_flags)));
    matches!(dev_flags, Ok(flags) if flags & IFF_LOOPBACK != 0)
}

/// Keeps the classification of the current thread's send until its byte count is known: on
/// this CPU for every send, and by thread for the spliced and zerocopy ones, in case the send
/// sleeps and resumes elsewhere. A plain send is a copy, which a thread's kept entry says
/// between its other sends, so only this CPU's slot is written for it.
#[inline(always)]
fn remember_send<A: Access>(sk: u64, msg: u64) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if filtered_out((pid_tgid >> 32) as u32) {
        return Ok(0);
    }
    let flags: u32 = A::get(msg, offset!(msghdr_flags))?;
    let pending = if flags as u64 & (MSG_ZEROCOPY | MSG_SPLICE_PAGES as u64) == 0 {
        COPY
    } else {
        classify::<A>(sk, msg)?
    };
    stage_send(pid_tgid, pending);
    if pending == COPY {
        return Ok(0);
    }
    // The tracepoint fires once per segment of a send: overwrite in place after the first.
    if let Some(slot) = PENDING_SEND.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread writes its own entry.
        unsafe { *slot = pending };
    } else if PENDING_SEND.insert(pid_tgid, pending, 0).is_err() {
        count_error(MapSlot::PendingSend);
    }
    Ok(0)
}

const COPY: PendingSend = PendingSend {
    path: TcpPath::Copy as u32,
    loopback: 0,
};

#[inline(always)]
fn migrations() -> u64 {
    task_field(current_task(), offset!(task_migrations))
}

#[inline(always)]
fn stage_send(pid_tgid: u64, pending: PendingSend) {
    if let Some(staged) = STAGED_SEND.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the send hooks run with preemption disabled.
        unsafe {
            *staged = StagedSend {
                pid_tgid,
                migrations: migrations(),
                pending,
            }
        };
    }
}

/// The classification staged on this CPU, if the current thread staged it and has not moved
/// since: a thread that stayed put overwrote any older one of its own.
#[inline(always)]
fn take_staged(pid_tgid: u64) -> Option<PendingSend> {
    let staged = STAGED_SEND.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; the send hooks run with preemption disabled.
    unsafe {
        if (*staged).pid_tgid != pid_tgid || (*staged).migrations != migrations() {
            return None;
        }
        (*staged).pid_tgid = 0;
        Some((*staged).pending)
    }
}

/// The current thread's kept classification, spent: its entry says copy until its next
/// spliced or zerocopy send. A thread without one gets one, so that a full map, which may have
/// refused its classification, shows as unclassified rather than as a copy.
#[inline(always)]
fn spend_kept(pid_tgid: u64) -> PendingSend {
    match PENDING_SEND.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread reads and writes its own entry.
        Some(slot) => unsafe { core::mem::replace(&mut *slot, COPY) },
        None => match PENDING_SEND.insert(pid_tgid, COPY, 0) {
            Ok(()) => COPY,
            Err(_) => PendingSend {
                path: TcpPath::Unclassified as u32,
                ..COPY
            },
        },
    }
}

/// Counts `sent` bytes under the classification of the current thread's send.
#[inline(always)]
fn count_pending_send<C: StackIdContext>(ctx: &C, sent: i64) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if filtered_out(tgid) {
        return Ok(0);
    }
    // Spent even by a failed send, so that no classification outlives its send.
    let pending = match take_staged(pid_tgid) {
        Some(staged) if staged == COPY => staged,
        Some(staged) => {
            spend_kept(pid_tgid);
            staged
        }
        None => spend_kept(pid_tgid),
    };
    count_send(ctx, tgid, pending, sent)
}

#[inline(always)]
fn count_spliced<C: StackIdContext>(ctx: &C, sent: i64) -> Result<u32, u32> {
    let spliced = PendingSend {
        path: TcpPath::Splice as u32,
        ..COPY
    };
    count_send(ctx, (bpf_get_current_pid_tgid() >> 32) as u32, spliced, sent)
}

#[inline(always)]
fn count_send<C: StackIdContext>(ctx: &C, tgid: u32, send: PendingSend, sent: i64) -> Result<u32, u32> {
    if sent <= 0 || filtered_out(tgid) {
        return Ok(0);
    }
    let key = process_key(current_task(), tgid)?;
    let entry = current_process_entry(&key).ok_or(0u32)?;
    // SAFETY: `entry` points into a live map value; the index is masked below TCP_PATHS.
    unsafe {
        add(
            &raw mut (*entry).tcp_send_bytes[(send.path & 3) as usize],
            sent as u64,
        );
        if send.path == TcpPath::Zerocopy as u32 && send.loopback != 0 {
            add(&raw mut (*entry).tcp_zerocopy_local_bytes, sent as u64);
        }
    }
    if send.path == TcpPath::Copy as u32 {
        stacks::record_copy(ctx, Copier::TcpSend, sent as u64);
    }
    Ok(0)
}

/// Why skb_copy_datagram_iovec: every socket receive into user memory copies through it, and it
/// carries the exact length copied.
#[btf_tracepoint(function = "skb_copy_datagram_iovec")]
pub fn skb_copy_datagram_iovec(ctx: BtfTracePointContext) -> u32 {
    match try_skb_copy_datagram_iovec(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_skb_copy_datagram_iovec(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let copied: i32 = ctx.arg(1);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if copied <= 0 || filtered_out(tgid) {
        return Ok(0);
    }
    let key = process_key(current_task(), tgid)?;
    let entry = current_process_entry(&key).ok_or(0u32)?;
    // SAFETY: `entry` points into a live map value.
    unsafe { add(&raw mut (*entry).recv_copy_bytes, copied as u64) };
    stacks::record_copy(ctx, Copier::SocketReceive, copied as u64);
    Ok(0)
}
