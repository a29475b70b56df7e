//! The TCP send path (copied, spliced or zerocopy) and socket receive copies.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext};
use zctrace_common::{MapSlot, TcpPath, IFF_LOOPBACK, MSG_SPLICE_PAGES, MSG_ZEROCOPY, NETIF_F_SG};

use crate::{
    kernel::{current_task, field, filtered_out, is_tcp, offset, process_key, read},
    maps::{add, count_error, current_process_entry, PendingSend, PENDING_SEND},
};

/// Why tcp_sendmsg_locked: it sees the send's msg_flags and the route's capabilities, the two
/// things that decide whether TCP copies, references page cache pages, or pins user pages.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> u32 {
    match try_tcp_sendmsg_locked(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_tcp_sendmsg_locked(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if filtered_out((pid_tgid >> 32) as u32) {
        return Ok(0);
    }
    let sk: u64 = ctx.arg(0);
    let msg: u64 = ctx.arg(1);
    let flags: u32 = field(msg, offset!(msghdr_flags));
    let route_caps: u64 = field(sk, offset!(sock_route_caps));
    let scatter_gather = route_caps & NETIF_F_SG != 0;
    let path = if flags as u64 & MSG_ZEROCOPY != 0 && scatter_gather && zerocopy_allowed(sk, msg) {
        TcpPath::Zerocopy
    } else if flags & MSG_SPLICE_PAGES != 0 && scatter_gather {
        TcpPath::Splice
    } else {
        TcpPath::Copy
    };
    let pending = PendingSend {
        path: path as u32,
        loopback: (path == TcpPath::Zerocopy && routes_to_loopback(sk)) as u32,
    };
    // The hook fires once per segment of a send: overwrite in place after the first.
    if let Some(slot) = PENDING_SEND.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread writes its own entry.
        unsafe { *slot = pending };
    } else if PENDING_SEND.insert(pid_tgid, pending, 0).is_err() {
        count_error(MapSlot::PendingSend);
    }
    Ok(0)
}

/// MSG_ZEROCOPY is honoured for io_uring's buffers (msg_ubuf) or an `SO_ZEROCOPY` socket.
#[inline(always)]
fn zerocopy_allowed(sk: u64, msg: u64) -> bool {
    let ubuf: u64 = field(msg, offset!(msghdr_ubuf));
    let sk_flags: u64 = field(sk, offset!(sock_flags));
    ubuf != 0 || sk_flags & (1 << offset!(sock_zerocopy_bit)) != 0
}

/// A loopback receiver copies zerocopy pages when it queues them (skb_orphan_frags_rx).
#[inline(always)]
fn routes_to_loopback(sk: u64) -> bool {
    let dev_flags = read::<u64>(sk, offset!(sock_dst_cache))
        .and_then(|dst| read::<u64>(dst, offset!(dst_dev)))
        .and_then(|dev| read::<u32>(dev, offset!(netdev_flags)));
    matches!(dev_flags, Ok(flags) if flags & IFF_LOOPBACK != 0)
}

/// Why sock_send_length: it reports the bytes each socket send really moved, sendfile and splice
/// included, right after tcp_sendmsg returns.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    match try_sock_send_length(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_sock_send_length(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let sk: u64 = ctx.arg(0);
    let sent: i32 = ctx.arg(1);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if sent <= 0 || filtered_out(tgid) || !is_tcp(sk) {
        return Ok(0);
    }
    let unclassified = PendingSend {
        path: TcpPath::Unclassified as u32,
        loopback: 0,
    };
    // Consumed in place rather than deleted (a delete costs more than the lookup); the entry is
    // freed when the thread exits.
    let pending = match PENDING_SEND.get_ptr_mut(pid_tgid) {
        // SAFETY: only this thread reads and writes its own entry.
        Some(slot) => unsafe { core::mem::replace(&mut *slot, unclassified) },
        None => unclassified,
    };
    let path = pending.path;
    let key = process_key(current_task(), tgid)?;
    let entry = current_process_entry(&key).ok_or(0u32)?;
    // SAFETY: `entry` points into a live map value; `path` is below TCP_PATHS.
    unsafe {
        add(&raw mut (*entry).tcp_send_bytes[(path & 3) as usize], sent as u64);
        if path == TcpPath::Zerocopy as u32 && pending.loopback != 0 {
            add(&raw mut (*entry).tcp_zerocopy_local_bytes, sent as u64);
        }
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
    Ok(0)
}
