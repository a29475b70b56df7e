//! Reading kernel structs through offsets resolved from BTF at load time.
use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel};
use zctrace_common::{
    FdKind, KernelOffsets, ProbeConfig, ProcessKey, AF_INET, AF_INET6, AF_UNIX, DEV_NULL, IPPROTO_TCP,
    IPPROTO_UDP, PF_EXITING, SOCK_DGRAM, SOCK_STREAM, S_IFCHR, S_IFIFO, S_IFMT, S_IFREG, S_IFSOCK,
};

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
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    file_mode: 0,
    inode_mode: 0,
    inode_rdev: 0,
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
};

#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    filter_tgid: 0,
    record_stacks: 0,
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

/// The stacks `attach --stacks` asked for, as a [`zctrace_common::StackMode`] value; 0 for none.
#[inline(always)]
pub fn stack_mode() -> u32 {
    // SAFETY: as in `filtered_out`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.record_stacks) }
}

#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: the helper has no preconditions; its result is BTF-typed, so `field` can read it.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// True once the current task has begun to exit (past sched_process_exit or about to be).
#[inline(always)]
pub fn current_task_exiting() -> bool {
    field::<u32>(current_task(), offset!(task_flags)) & PF_EXITING != 0
}

/// True when no thread of the current task's group is left running: `do_exit` decrements
/// `signal->live` before sched_process_exit, whichever arguments that tracepoint has.
#[inline(always)]
pub fn current_group_dead() -> bool {
    let signal: u64 = field(current_task(), offset!(task_signal));
    field::<i32>(signal, offset!(signal_live)) == 0
}

/// The name of the process `task` belongs to: its thread-group leader's, as `ps -o comm` shows;
/// a thread's own name never names the process.
#[inline(always)]
pub fn leader_comm(task: u64) -> [u8; 16] {
    let leader: u64 = field(task, offset!(task_group_leader));
    read(leader, offset!(task_comm)).unwrap_or_default()
}

/// Key of the process `task` belongs to, given its tgid.
#[inline(always)]
pub fn process_key(task: u64, tgid: u32) -> Result<ProcessKey, u32> {
    let leader: u64 = field(task, offset!(task_group_leader));
    let start_boottime_ns: u64 = field(leader, offset!(task_start_boottime));
    Ok(ProcessKey {
        tgid,
        reserved: 0,
        start_boottime_ns,
    })
}

/// The `struct file *` behind descriptor `fd` of `task`.
#[inline(always)]
pub fn fd_file(task: u64, fd: u64) -> Result<u64, u32> {
    let files: u64 = field(task, offset!(task_files));
    if files == 0 {
        return Err(1);
    }
    let fdt: u64 = field(files, offset!(files_fdt));
    let max_fds: u32 = field(fdt, offset!(fdtable_max_fds));
    if fd >= max_fds as u64 {
        return Err(1);
    }
    let fd_array: u64 = field(fdt, offset!(fdtable_fd));
    read(fd_array, fd * 8)
}

#[inline(always)]
pub fn file_kind(file: u64) -> FdKind {
    let Ok(inode) = read::<u64>(file, offset!(file_inode)) else {
        return FdKind::None;
    };
    let Ok(mode) = read::<u16>(inode, offset!(inode_mode)) else {
        return FdKind::None;
    };
    match mode & S_IFMT {
        S_IFREG => FdKind::Regular,
        S_IFIFO => FdKind::Pipe,
        S_IFSOCK => socket_kind(file).unwrap_or(FdKind::OtherSocket),
        S_IFCHR if read::<u32>(inode, offset!(inode_rdev)) == Ok(DEV_NULL) => FdKind::Null,
        _ => FdKind::Other,
    }
}

#[inline(always)]
fn socket_kind(file: u64) -> Result<FdKind, u32> {
    let socket: u64 = read(file, offset!(file_private_data))?;
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
