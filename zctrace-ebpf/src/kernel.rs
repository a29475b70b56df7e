//! Reading kernel structs through offsets resolved from BTF at load time.
use core::arch::asm;

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs,
};
use zctrace_common::{
    FdKind, KernelOffsets, ProbeConfig, ProcessKey, SocketKindCache, SocketKindSlot, AF_INET, AF_INET6,
    AF_UNIX, DEV_NULL, EMBEDDED_FDS, IPPROTO_TCP, IPPROTO_UDP, PF_EXITING, SOCK_DGRAM, SOCK_STREAM, S_IFCHR,
    S_IFIFO, S_IFMT, S_IFREG, S_IFSOCK,
};

use crate::maps::{count_socket_kind_cache, SOCKET_KINDS};

#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_files: 0,
    task_comm: 0,
    task_flags: 0,
    task_signal: 0,
    signal_live: 0,
    files_fdt: 0,
    files_fd_array: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    file_mode: 0,
    inode_mode: 0,
    inode_rdev: 0,
    inode_ino: 0,
    socket_sk: 0,
    sock_family: 0,
    sock_type: 0,
    sock_protocol: 0,
    sock_route_caps: 0,
    sock_flags: 0,
    sock_dst_cache: 0,
    dst_dev: 0,
    netdev_flags: 0,
    msghdr_flags: 0,
    msghdr_ubuf: 0,
    sock_zerocopy_bit: 0,
    iov_iter_type: 0,
    iter_pipe: 0,
    skb_data_len: 0,
    skb_head: 0,
    skb_end: 0,
    skb_cb: 0,
    skb_sk: 0,
    shinfo_destructor_arg: 0,
    task_runtime: 0,
    task_migrations: 0,
    task_stint_start_runtime: 0,
    task_last_arrival: 0,
    current_task_typed: 0,
    task_regs_typed: 0,
    task_state: 0,
    task_real_parent: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    task_migration_disabled: 0,
};

#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    filter_tgid: 0,
    record_stacks: 0,
    relay_evidence: 0,
    socket_kind_slots: 0,
    sample_period: 0,
};

/// Reads one field of `OFFSETS`; volatile so the loader's value is used, not the zero above.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a static, aligned and always initialised; the loader only rewrites its bytes.
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::OFFSETS.$field) } as u64
    };
}
pub(crate) use offset;

/// Reads a `T` at `base + offset` of kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u64) -> Result<T, u32> {
    if base == 0 {
        return Err(1);
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad pointer is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T) }.map_err(|_| 1)
}

/// Reads a `T` at `base + offset` of a kernel object the verifier knows the BTF type of (a
/// tp_btf argument, `current_task`, or a pointer loaded from one): a plain load that the JIT
/// guards against faults, several times cheaper than a helper call. The offset must come from
/// `OFFSETS`, which the verifier sees as constants.
#[inline(always)]
pub fn field<T: Copy>(base: u64, offset: u64) -> T {
    // SAFETY: the verifier checks the access against the type's BTF and turns it into a
    // fault-guarded load.
    unsafe { core::ptr::read_volatile((base + offset) as *const T) }
}

/// How a program reads the kernel objects its hook hands it.
pub trait Access {
    fn get<T: Copy>(base: u64, offset: u64) -> Result<T, u32>;
}

/// Through BTF-typed pointers (tp_btf, fentry and fexit arguments): guarded plain loads.
pub struct Typed;

/// Through untyped ones (kprobe registers): the probe-read helper.
pub struct Untyped;

impl Access for Typed {
    #[inline(always)]
    fn get<T: Copy>(base: u64, offset: u64) -> Result<T, u32> {
        Ok(field(base, offset))
    }
}

impl Access for Untyped {
    #[inline(always)]
    fn get<T: Copy>(base: u64, offset: u64) -> Result<T, u32> {
        read(base, offset)
    }
}

/// True when the process should be skipped because another one was asked for.
#[inline(always)]
pub fn filtered_out(tgid: u32) -> bool {
    // SAFETY: a static, aligned and always initialised; volatile so the loader's value is read.
    let wanted = unsafe { core::ptr::read_volatile(&raw const CONFIG.filter_tgid) };
    tgid == 0 || (wanted != 0 && wanted != tgid)
}

/// Whether user space wants the evidence of relays (see [`crate::relay`]).
#[inline(always)]
pub fn relay_evidence_wanted() -> bool {
    // SAFETY: as in `filtered_out`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.relay_evidence) != 0 }
}

/// The stacks `attach --stacks` asked for, as a [`zctrace_common::StackMode`] value; 0 for none.
#[inline(always)]
pub fn stack_mode() -> u32 {
    // SAFETY: as in `filtered_out`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.record_stacks) }
}

/// With stacks, the bytes between stacks taken on average; 0 takes every one.
#[inline(always)]
pub fn sample_period() -> u64 {
    // SAFETY: as in `filtered_out`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.sample_period) }
}

/// The current task: BTF-typed where the kernel has `bpf_get_current_task_btf` (5.11), else a
/// plain address. Read it and what it points to with [`task_field`].
#[inline(always)]
pub fn current_task() -> u64 {
    // The verifier keeps only the branch this kernel has: `current_task_typed` is a constant to it.
    if offset!(current_task_typed) != 0 {
        // SAFETY: the helper has no preconditions.
        unsafe { bpf_get_current_task_btf() as u64 }
    } else {
        // SAFETY: as above.
        unsafe { bpf_get_current_task() }
    }
}

/// The current task's user registers, as saved when it entered the kernel, BTF-typed; `None`
/// where the kernel has no `bpf_task_pt_regs` (before 5.15).
#[inline(always)]
pub fn current_user_regs() -> Option<u64> {
    // As in `current_task`: the verifier keeps only the branch this kernel has.
    if offset!(task_regs_typed) == 0 {
        return None;
    }
    // SAFETY: the helpers have no preconditions; the task pointer is the helper's own.
    Some(unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64)
}

/// Reads a `T` at `base + offset`, where `base` is the current task or an object reached through
/// its pointers: plain loads where [`current_task`] is typed, the probe-read helper before 5.11.
#[inline(always)]
pub fn task_field<T: Copy + Default>(base: u64, offset: u64) -> T {
    if offset!(current_task_typed) != 0 {
        field(base, offset)
    } else {
        read(base, offset).unwrap_or_default()
    }
}

/// True once the current task has begun to exit (past sched_process_exit or about to be).
#[inline(always)]
pub fn current_task_exiting() -> bool {
    task_field::<u32>(current_task(), offset!(task_flags)) & PF_EXITING != 0
}

/// True when no thread of the current task's group is left running: `do_exit` decrements
/// `signal->live` before sched_process_exit, whichever arguments that tracepoint has.
#[inline(always)]
pub fn current_group_dead() -> bool {
    let signal: u64 = task_field(current_task(), offset!(task_signal));
    task_field::<i32>(signal, offset!(signal_live)) == 0
}

/// The name of the process `task` belongs to: its thread-group leader's, as `ps -o comm` shows;
/// a thread's own name never names the process.
#[inline(always)]
pub fn leader_comm(task: u64) -> [u8; 16] {
    let leader: u64 = task_field(task, offset!(task_group_leader));
    read(leader, offset!(task_comm)).unwrap_or_default()
}

/// Key of the process `task` belongs to, given its tgid.
#[inline(always)]
pub fn process_key(task: u64, tgid: u32) -> Result<ProcessKey, u32> {
    let leader: u64 = task_field(task, offset!(task_group_leader));
    let start_boottime_ns: u64 = task_field(leader, offset!(task_start_boottime));
    Ok(ProcessKey {
        tgid,
        reserved: 0,
        start_boottime_ns,
    })
}

/// The file behind a descriptor, and whether the verifier knows it as a `struct file`.
pub enum FdFile {
    /// Read from `files_struct.fd_array` at a constant offset: plain loads reach its fields.
    Typed(u64),
    /// Read out of a grown descriptor table with the probe-read helper.
    Untyped(u64),
}

impl FdFile {
    /// Reads a `T` at `offset` of the file, the way its pointer allows.
    #[inline(always)]
    pub fn get<T: Copy>(&self, offset: u64) -> Result<T, u32> {
        match *self {
            FdFile::Typed(file) => Typed::get(file, offset),
            FdFile::Untyped(file) => Untyped::get(file, offset),
        }
    }

    #[inline(always)]
    pub fn kind(&self) -> FdKind {
        match *self {
            FdFile::Typed(file) => file_kind::<Typed>(file),
            FdFile::Untyped(file) => file_kind::<Untyped>(file),
        }
    }
}

/// The `struct file *` behind descriptor `fd` of `task`.
#[inline(always)]
pub fn fd_file(task: u64, fd: u64) -> Option<FdFile> {
    let files: u64 = task_field(task, offset!(task_files));
    if files == 0 {
        return None;
    }
    let fdt: u64 = task_field(files, offset!(files_fdt));
    let max_fds: u32 = task_field(fdt, offset!(fdtable_max_fds));
    if fd >= max_fds as u64 {
        return None;
    }
    // A pointer to pointers carries no BTF type, and the verifier forbids a variable offset into
    // a typed struct, so a slot of the table is read with the helper (about 30 ns), unless the
    // table is still the one embedded in a typed `files_struct`, whose slots have constant
    // offsets.
    let slots: u64 = task_field(fdt, offset!(fdtable_fd));
    let embedded_slots = offset!(files_fd_array);
    let typed = offset!(current_task_typed) != 0;
    if typed && slots == files + embedded_slots && fd < EMBEDDED_FDS as u64 {
        return Some(FdFile::Typed(embedded_fd_slot(files, embedded_slots, fd)));
    }
    read(slots, fd * 8).ok().map(FdFile::Untyped)
}

/// Slot `fd` of the descriptor array at `slots` inside `files`: a `match` that LLVM lowers to a
/// tree of comparisons (BPF has no jump tables), each leaf a load at a constant offset.
#[inline(always)]
fn embedded_fd_slot(files: u64, slots: u64, fd: u64) -> u64 {
    macro_rules! leaves {
        ($($slot:literal)*) => {
            match fd {
                $($slot => fd_slot::<$slot>(files, slots),)*
                _ => 0,
            }
        };
    }
    const _: () = assert!(EMBEDDED_FDS == 64);
    leaves!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
        32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63)
}

/// The load of one slot, in assembly so that LLVM cannot merge the leaves back into one load
/// at a computed offset, which the verifier would refuse.
#[inline(always)]
fn fd_slot<const SLOT: u64>(files: u64, slots: u64) -> u64 {
    let file: u64;
    // SAFETY: `files` is a BTF-typed `files_struct` and `slots` the offset of its `fd_array`,
    // which has EMBEDDED_FDS slots; the verifier checks the load against BTF and guards it.
    unsafe {
        asm!(
            "{base} += {slots}",
            "{file} = *(u64 *)({base} + {at})",
            base = inout(reg) files => _,
            slots = in(reg) slots,
            at = const SLOT * 8,
            file = lateout(reg) file,
            options(readonly, nostack, preserves_flags),
        );
    }
    file
}

/// The kind of `file`, read through `A`.
#[inline(always)]
fn file_kind<A: Access>(file: u64) -> FdKind {
    let Ok(inode) = A::get::<u64>(file, offset!(file_inode)) else {
        return FdKind::None;
    };
    let Ok(mode) = A::get::<u16>(inode, offset!(inode_mode)) else {
        return FdKind::None;
    };
    match mode & S_IFMT {
        S_IFREG => FdKind::Regular,
        S_IFIFO => FdKind::Pipe,
        S_IFSOCK => socket_kind::<A>(file, inode),
        S_IFCHR if A::get::<u32>(inode, offset!(inode_rdev)) == Ok(DEV_NULL) => FdKind::Null,
        _ => FdKind::Other,
    }
}

/// What socket is behind `file` (whose inode is `inode`): remembered from an earlier call where
/// the cache holds this very socket, else read from its `sock` and remembered.
#[inline(always)]
fn socket_kind<A: Access>(file: u64, inode: u64) -> FdKind {
    let Ok(ino) = A::get::<u64>(inode, offset!(inode_ino)) else {
        return FdKind::OtherSocket;
    };
    // SAFETY: as in `filtered_out`.
    let slots = unsafe { core::ptr::read_volatile(&raw const CONFIG.socket_kind_slots) };
    let Some(slot) = SOCKET_KINDS.get_ptr_mut(SocketKindSlot::index(ino, slots)) else {
        return FdKind::OtherSocket;
    };
    // SAFETY: a live array slot. Another CPU may be rewriting it: `kind_of` then finds no match.
    let (slot_inode, slot_ino_kind) = unsafe { ((*slot).inode, (*slot).ino_kind) };
    if let Some(kind) = SocketKindSlot::kind_of(inode, ino, slot_inode, slot_ino_kind) {
        return kind;
    }
    count_socket_kind_cache(SocketKindCache::Misses);
    let Ok(kind) = read_socket_kind::<A>(file) else {
        return FdKind::OtherSocket;
    };
    count_socket_kind_cache(if slot_inode == 0 {
        SocketKindCache::Fills
    } else {
        SocketKindCache::Evictions
    });
    // SAFETY: as above.
    unsafe {
        (*slot).inode = inode;
        (*slot).ino_kind = SocketKindSlot::new(inode, ino, kind).ino_kind;
    }
    kind
}

/// `file->private_data` is a `void *`, so the socket behind it is read with the helper.
#[inline(always)]
fn read_socket_kind<A: Access>(file: u64) -> Result<FdKind, u32> {
    let socket: u64 = A::get(file, offset!(file_private_data))?;
    let sk: u64 = read(socket, offset!(socket_sk))?;
    let family: u16 = read(sk, offset!(sock_family))?;
    let sk_type: u16 = read(sk, offset!(sock_type))?;
    let protocol: u16 = read(sk, offset!(sock_protocol))?;
    Ok(match (family, sk_type, protocol) {
        (AF_UNIX, _, _) => FdKind::Unix,
        (AF_INET | AF_INET6, SOCK_STREAM, IPPROTO_TCP) => FdKind::Tcp,
        (AF_INET | AF_INET6, SOCK_DGRAM, IPPROTO_UDP) => FdKind::Udp,
        _ => FdKind::OtherSocket,
    })
}

/// True when `sk` (BTF-typed: a tp_btf argument) is an IPv4/IPv6 TCP socket.
#[inline(always)]
pub fn is_tcp(sk: u64) -> bool {
    let family: u16 = field(sk, offset!(sock_family));
    let protocol: u16 = field(sk, offset!(sock_protocol));
    (family == AF_INET || family == AF_INET6) && protocol == IPPROTO_TCP
}
