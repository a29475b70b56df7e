//! Types shared by the eBPF programs and the user-space side.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree on the layout byte for
//! byte, and so the kernel never hashes uninitialised padding inside a map key.
#![no_std]

/// Identifies one process across PID reuse: its tgid plus the boot-time nanosecond at which its
/// thread-group leader started (`task_struct::start_boottime`, the clock `/proc/PID/stat` uses).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub tgid: u32,
    pub reserved: u32,
    pub start_boottime_ns: u64,
}

/// One mechanism of one process: a syscall and the kinds of what it moved bytes between.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    pub process: ProcessKey,
    /// Syscall number, in the numbering of the architecture the programs run on.
    pub nr: u16,
    /// [`FdKind`] of the source (`User` when the source is the caller's memory).
    pub src: u8,
    /// [`FdKind`] of the destination (`User` when the destination is the caller's memory).
    pub dst: u8,
    /// [`Variant`]: a flag that changes the copy count, such as `MSG_ZEROCOPY`. A `u32`, so
    /// that the key has no reserved bytes, which LLVM zeroes with a memset call per syscall.
    pub variant: u32,
}

/// Counts for one [`SyscallKey`]; updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStats {
    pub calls: u64,
    /// Bytes the calls reported as moved (sum of successful return values).
    pub bytes: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Bytes sent from the buffer the same thread's last read had filled (read, pread64 and
    /// recvfrom into, write, pwrite64 and sendto out of one buffer): evidence of a relay, a
    /// lower bound.
    pub relayed_bytes: u64,
}

/// Per-process counters that do not belong to one syscall; updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// `comm` of the thread that created the entry (user space prefers the live name).
    pub comm: [u8; 16],
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub offcpu_ns: u64,
    /// Exact bytes copied from socket buffers to user memory (`skb_copy_datagram_iovec`).
    pub recv_copy_bytes: u64,
    /// TCP send bytes by the path `tcp_sendmsg_locked` chose; indexed by [`TcpPath`].
    pub tcp_send_bytes: [u64; TCP_PATHS],
    /// MSG_ZEROCOPY bytes sent to a loopback route, where the receiver forces a deferred copy.
    pub tcp_zerocopy_local_bytes: u64,
    /// Bytes copied by each kernel routine zctrace observes, indexed by [`CopyRoutine`] (all 0
    /// where the kernel allows neither trampolines nor kprobes on them).
    pub observed_copy_bytes: [u64; COPY_ROUTINES],
    /// Non-zero once the whole thread group has exited: user space may fold and free the entry.
    pub exited: u64,
    /// cgroup v2 id (the cgroup directory's inode number) of the process, for container labels.
    pub cgroup_id: u64,
    /// tgid of the process's parent when the entry was made, which keeps a process tree whole
    /// for `attach --follow` after a parent in the middle has exited.
    pub parent_tgid: u32,
    pub reserved: u32,
}

/// How `tcp_sendmsg_locked` moved a send's payload.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpPath {
    /// Copied from user memory into the skb.
    Copy = 0,
    /// Page references (`MSG_SPLICE_PAGES` on a scatter-gather route): sendfile, splice.
    Splice = 1,
    /// User pages pinned (`MSG_ZEROCOPY` on an `SO_ZEROCOPY` socket with a scatter-gather route).
    Zerocopy = 2,
    /// No classification was recorded for the send (the PENDING_SEND map was full).
    Unclassified = 3,
}
pub const TCP_PATHS: usize = 4;

/// A kernel routine whose copies are observed at its exit, where trampolines or kprobes reach it.
/// TCP send copies and socket receive copies are observed by the TCP send path and
/// `skb_copy_datagram_iovec` instead.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyRoutine {
    /// `filemap_read`: page cache to a user (or kernel) buffer.
    FilemapRead = 0,
    /// `shmem_file_read_iter`: tmpfs pages to a buffer (tmpfs does not read through filemap_read).
    ShmemRead = 1,
    /// `generic_perform_write`: a buffer into the page cache.
    PerformWrite = 2,
    /// `pipe_read`: pipe buffers to a buffer.
    PipeRead = 3,
    /// `pipe_write`: a buffer into pipe buffers.
    PipeWrite = 4,
    /// `skb_copy_ubufs`: MSG_ZEROCOPY pages copied because a local receiver queues them.
    ZerocopyDeferred = 5,
}
pub const COPY_ROUTINES: usize = 6;

/// One thread's context switches and off-CPU time, kept per thread so that a switch touches one
/// entry. User space adds live threads' counts to their process; a thread's exit folds them in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSwitches {
    pub process: ProcessKey,
    /// The thread's own start time: with its tid, it names the thread, so an entry left by a
    /// thread whose tid is reused is never taken for the new one's.
    pub thread_start_ns: u64,
    pub voluntary: u64,
    pub involuntary: u64,
    pub offcpu_ns: u64,
    /// When the thread last switched out (0 until it has), and its CPU time then: the next
    /// switch-out's wall time since, less the CPU time since, was spent off CPU. The clock is
    /// the scheduler's where the kernel keeps `sched_info`, `bpf_ktime_get_ns` elsewhere.
    pub last_out_ns: u64,
    pub last_runtime_ns: u64,
    /// The buffer the thread's last read (read, pread64, recvfrom) filled, and how much of it:
    /// a send from there relays what was read.
    pub last_fill_buffer: u64,
    pub last_fill_len: u64,
}

/// What `tcp_sendmsg_locked` decided about the send in progress on one thread, kept until its
/// byte count is known (at `sock_send_length`, or the function's return for kprobes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSend {
    /// A [`TcpPath`].
    pub path: u32,
    /// Non-zero when the route is a loopback device.
    pub loopback: u32,
}

/// What a file descriptor refers to, as far as the copy model cares.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FdKind {
    None = 0,
    /// The caller's own memory (the other side of read/write-style calls).
    User = 1,
    Regular = 2,
    Pipe = 3,
    Tcp = 4,
    Udp = 5,
    Unix = 6,
    OtherSocket = 7,
    Other = 8,
    /// The null device: writes and splices into it copy nothing.
    Null = 9,
}

impl FdKind {
    pub const fn from_u8(v: u8) -> FdKind {
        match v {
            1 => FdKind::User,
            2 => FdKind::Regular,
            3 => FdKind::Pipe,
            4 => FdKind::Tcp,
            5 => FdKind::Udp,
            6 => FdKind::Unix,
            7 => FdKind::OtherSocket,
            8 => FdKind::Other,
            9 => FdKind::Null,
            _ => FdKind::None,
        }
    }
}

/// A socket's kind, remembered in slot `i_ino % SOCKET_KIND_SLOTS` of `SOCKET_KINDS` so that a
/// socket's `sock` is read once, not on every call. A hit needs both the inode's address and its
/// number: a socket freed and another made at the same address gets a new number (sockfs
/// numbers every inode from one counter).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketKindSlot {
    /// The socket's inode; 0 while the slot is empty.
    pub inode: u64,
    /// `i_ino << 8 | kind`, one word, so that no reader can pair one socket's number with
    /// another's kind while a slot is rewritten.
    pub ino_kind: u64,
}

/// Slots of `SOCKET_KINDS` unless the loader is asked for other: a power of two, 256 KiB in all.
pub const SOCKET_KIND_SLOTS: u32 = 16384;

impl SocketKindSlot {
    pub const fn new(inode: u64, ino: u64, kind: FdKind) -> SocketKindSlot {
        SocketKindSlot {
            inode,
            ino_kind: ino << 8 | kind as u64,
        }
    }

    /// The slot an inode number goes to, of `slots` (a power of two).
    pub const fn index(ino: u64, slots: u32) -> u32 {
        ino as u32 & slots.wrapping_sub(1)
    }

    /// The kind remembered for this socket, if the slot holds this one.
    pub const fn kind_of(inode: u64, ino: u64, slot_inode: u64, slot_ino_kind: u64) -> Option<FdKind> {
        if slot_inode == inode && slot_ino_kind >> 8 == ino << 8 >> 8 {
            Some(FdKind::from_u8(slot_ino_kind as u8))
        } else {
            None
        }
    }
}

/// What `SOCKET_KIND_CACHE` counts, by index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKindCache {
    /// A call on a socket the cache did not hold: its `sock` was read.
    Misses = 0,
    /// Misses that filled an empty slot: the slots in use.
    Fills = 1,
    /// Misses that replaced another socket's slot.
    Evictions = 2,
}
pub const SOCKET_KIND_CACHE_COUNTS: u32 = 3;

/// Flags of a call that change how many copies it makes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Plain = 0,
    /// A send with `MSG_ZEROCOPY`.
    Zerocopy = 1,
}

/// Indices into the `MAP_UPDATE_ERRORS` per-CPU array: one slot per map an update can fail on.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapSlot {
    Syscalls = 0,
    Processes = 1,
    /// A full THREADS map: the thread's switches are counted in its process entry instead, its
    /// off-CPU time is not.
    Threads = 2,
    PendingSend = 3,
    PendingCopy = 4,
    /// Not a map: sendmmsg/recvmmsg vectors longer than the programs walk (bytes undercounted).
    MmsgTruncated = 5,
    /// A call site `attach --stacks` could not record whole: the stack map or its count map was
    /// full (the call is still counted in SYSCALLS).
    Stacks = 6,
    /// A stack the stack map refused because another stack holds its bucket: the map keys
    /// stacks by a hash of their addresses and keeps the first.
    StacksCollided = 7,
    /// A stack the kernel could not walk, as for a user stack where the task has no user memory.
    StacksUnwalkable = 8,
}
pub const MAP_SLOTS: u32 = 9;

impl MapSlot {
    pub const ALL: [MapSlot; MAP_SLOTS as usize] = [
        MapSlot::Syscalls,
        MapSlot::Processes,
        MapSlot::Threads,
        MapSlot::PendingSend,
        MapSlot::PendingCopy,
        MapSlot::MmsgTruncated,
        MapSlot::Stacks,
        MapSlot::StacksCollided,
        MapSlot::StacksUnwalkable,
    ];
    /// The bounded hash maps: full ones count failed updates, and their use is exported.
    pub const SIZED: [MapSlot; 5] = [
        MapSlot::Syscalls,
        MapSlot::Processes,
        MapSlot::Threads,
        MapSlot::PendingSend,
        MapSlot::PendingCopy,
    ];

    /// The map's name in the eBPF object (the label its drops are exported under).
    pub const fn name(self) -> &'static str {
        match self {
            MapSlot::Syscalls => "SYSCALLS",
            MapSlot::Processes => "PROCESSES",
            MapSlot::Threads => "THREADS",
            MapSlot::PendingSend => "PENDING_SEND",
            MapSlot::PendingCopy => "PENDING_COPY",
            MapSlot::MmsgTruncated => "MMSG_TRUNCATED",
            MapSlot::Stacks => "STACKS",
            MapSlot::StacksCollided => "STACKS_COLLIDED",
            MapSlot::StacksUnwalkable => "STACKS_UNWALKABLE",
        }
    }

    /// Entries the map is created with, unless the loader overrides it.
    pub const fn capacity(self) -> u32 {
        match self {
            MapSlot::Syscalls | MapSlot::Threads => 65536,
            MapSlot::Processes | MapSlot::PendingSend | MapSlot::PendingCopy => 16384,
            MapSlot::MmsgTruncated
            | MapSlot::Stacks
            | MapSlot::StacksCollided
            | MapSlot::StacksUnwalkable => 0,
        }
    }
}

/// Length of `files_struct.fd_array` (`NR_OPEN_DEFAULT`, one bit per descriptor in a `long`):
/// the programs read its slots at constant offsets, and the loader checks the kernel agrees.
pub const EMBEDDED_FDS: usize = 64;

/// Kernel struct field offsets, resolved from `/sys/kernel/btf/vmlinux` at load time (aya emits no
/// CO-RE relocations from Rust) and handed to the programs as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_files: u32,
    pub task_comm: u32,
    pub task_flags: u32,
    pub task_signal: u32,
    /// `signal_struct.live`: threads of the group not yet past the start of `do_exit`.
    pub signal_live: u32,
    pub files_fdt: u32,
    /// `files_struct.fd_array`: the [`EMBEDDED_FDS`] descriptor slots a process starts with.
    pub files_fd_array: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub file_mode: u32,
    pub inode_mode: u32,
    pub inode_rdev: u32,
    /// `inode.i_ino`: sockfs numbers every socket's inode anew.
    pub inode_ino: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub sock_type: u32,
    pub sock_protocol: u32,
    pub sock_route_caps: u32,
    pub sock_flags: u32,
    pub sock_dst_cache: u32,
    pub dst_dev: u32,
    pub netdev_flags: u32,
    pub msghdr_flags: u32,
    /// [`NO_FIELD`] before io_uring zerocopy sends (6.0).
    pub msghdr_ubuf: u32,
    /// Bit number of `SOCK_ZEROCOPY` in `sock::sk_flags` (an enum value, read from BTF too).
    pub sock_zerocopy_bit: u32,
    pub iov_iter_type: u32,
    /// `ITER_PIPE`: a splice into a pipe, which references pages rather than copying them. Only
    /// kernels before 6.5 have it; elsewhere it is a value no iterator has.
    pub iter_pipe: u32,
    pub skb_data_len: u32,
    pub skb_head: u32,
    /// `sk_buff.end`: on 64-bit kernels, the offset of `skb_shared_info` from `head`.
    pub skb_end: u32,
    pub skb_cb: u32,
    pub skb_sk: u32,
    pub shinfo_destructor_arg: u32,
    /// `task_struct.se.sum_exec_runtime`: the thread's CPU time, in nanoseconds.
    pub task_runtime: u32,
    /// `task_struct.se.nr_migrations`: how often the thread has changed CPU.
    pub task_migrations: u32,
    /// `task_struct.se.prev_sum_exec_runtime`: the thread's CPU time when it last went on CPU
    /// (kept by the fair class, which runs all but real-time threads).
    pub task_stint_start_runtime: u32,
    /// `task_struct.sched_info.last_arrival`: the scheduler's clock when the thread last went on
    /// CPU; [`NO_FIELD`] where the kernel keeps no `sched_info` (`CONFIG_SCHED_INFO` off).
    pub task_last_arrival: u32,
    /// 1 where the kernel has `bpf_get_current_task_btf` (5.11), whose BTF-typed task plain loads
    /// can read; 0 where the current task is read through the probe-read helper.
    pub current_task_typed: u32,
    /// 1 where the kernel has `bpf_task_pt_regs` (5.15): a copy hook then reads the task's user
    /// registers, for the caller a frameless leaf hides.
    pub task_regs_typed: u32,
    /// `task_struct.__state` (`state`, a `long`, before 5.14: its low half on little-endian).
    pub task_state: u32,
    /// `task_struct.real_parent`: the process that forked this one, or its reaper once it exited.
    pub task_real_parent: u32,
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn` and `kernfs_node.id`: the path to a
    /// task's cgroup v2 id, the id `bpf_get_current_cgroup_id` gives for the current task.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `task_struct.migration_disabled`: nonzero while a program runs with migration disabled
    /// rather than preemption, that is, preemptibly; [`NO_FIELD`] where the kernel has none.
    pub task_migration_disabled: u32,
}

/// Where a syscall's return value sits in a `raw_syscalls:sys_exit` record: after the common
/// header and the syscall's number. User space checks it against the event's tracefs format.
pub const SYS_EXIT_RECORD_RET: u32 = 16;

/// The slots of the map that asks whether the kernel runs sys_exit's programs preemptibly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreemptionProbe {
    Asker = 0,
    Answer = 1,
}

impl PreemptionProbe {
    pub const SLOTS: u32 = 2;
}

/// The offset of a field the running kernel does not have.
pub const NO_FIELD: u32 = u32::MAX;

/// Run-time configuration of the programs, set as a global before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Trace only this tgid; 0 traces every process.
    pub filter_tgid: u32,
    /// Which stacks `attach --stacks` records: a [`StackMode`] as u32 (0: none).
    pub record_stacks: u32,
    /// 1 where a process's I/O style is wanted (`attach`, `top`): sys_exit then keeps each
    /// thread's last read buffer and counts the bytes sent from it. The daemon, which names no
    /// styles, does not pay for it.
    pub relay_evidence: u32,
    /// Slots of `SOCKET_KINDS`, a power of two: [`SOCKET_KIND_SLOTS`] unless a test asks for
    /// fewer, to make sockets share slots.
    pub socket_kind_slots: u32,
    /// With stacks: 0 records every call and copy; otherwise a stack is taken about once per
    /// this many bytes, at random points, and weighted to stand for the bytes between.
    pub sample_period: u64,
}

/// Gaps between sampling points to draw from at random (a power of two): quantiles of the
/// exponential distribution with the sampling period as mean, filled in by user space.
pub const SAMPLE_GAPS: u32 = 256;

/// Byte streams sampled apart, each with its own sampling points on every CPU.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampledStream {
    /// Bytes moved by data-path syscalls (user stacks).
    Syscalls = 0,
    /// Bytes the kernel was seen copying (kernel stacks).
    Copies = 1,
}

/// The stacks `attach --stacks` asks the programs for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackMode {
    /// The user stack of each data-path syscall, at its exit ([`StackKey`]).
    User = 1,
    /// The kernel stack wherever a copy is observed ([`CopyStackKey`]).
    Kernel = 2,
    /// Both stacks wherever a copy is observed.
    Both = 3,
    /// The daemon's profiles: [`StackMode::User`]'s call sites and [`StackMode::Both`]'s copy
    /// sites, of every process.
    Profiles = 4,
}

/// A stack id that was not recorded (the stack map refused it, or none was asked for).
pub const NO_STACK: i32 = -1;

/// One call site of one mechanism, for `attach --stacks`: the stack a data-path syscall was
/// made from, and the syscall and kinds that say what it moved between.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// Id in the `STACKS` map, or [`NO_STACK`].
    pub user_stack: i32,
    /// The process that made the call: the daemon's profiles hold every process's stacks.
    pub tgid: u32,
    /// A return address the frame-pointer walk may have skipped, or 0: the first word of the
    /// [`CALLER_SLOTS`] at the user stack pointer that follows a call instruction (x86_64), or the
    /// link register when it does (arm64). Where the leaf function keeps no frame (libc's
    /// syscall wrappers), it is its caller's; user space checks that against the leaf's CFI.
    pub caller: u64,
    pub nr: u16,
    pub src: u8,
    pub dst: u8,
    pub variant: u8,
    /// Which of the [`CALLER_SLOTS`] held `caller` (x86_64; 0 on arm64).
    pub caller_slot: u8,
    pub reserved: [u8; 2],
}

/// The words at the user stack pointer searched for a frameless leaf's return address: libc's
/// wrappers keep it at the stack pointer, or 0x28 above it where they make room to call the
/// cancellation hooks.
pub const CALLER_SLOTS: usize = 8;

/// Who copied, for a copy observed with its stack: a [`CopyRoutine`] (same values), or one of
/// the TCP copies observed by the send and receive paths.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copier {
    FilemapRead = 0,
    ShmemRead = 1,
    PerformWrite = 2,
    PipeRead = 3,
    PipeWrite = 4,
    ZerocopyDeferred = 5,
    /// A TCP send that copied its payload from user memory into skbs.
    TcpSend = 6,
    /// A socket receive into user memory (`skb_copy_datagram_iter`).
    SocketReceive = 7,
}

impl Copier {
    pub const fn from_routine(routine: CopyRoutine) -> Copier {
        match routine {
            CopyRoutine::FilemapRead => Copier::FilemapRead,
            CopyRoutine::ShmemRead => Copier::ShmemRead,
            CopyRoutine::PerformWrite => Copier::PerformWrite,
            CopyRoutine::PipeRead => Copier::PipeRead,
            CopyRoutine::PipeWrite => Copier::PipeWrite,
            CopyRoutine::ZerocopyDeferred => Copier::ZerocopyDeferred,
        }
    }

    pub fn from_u8(value: u8) -> Option<Copier> {
        const ALL: [Copier; 8] = [
            Copier::FilemapRead,
            Copier::ShmemRead,
            Copier::PerformWrite,
            Copier::PipeRead,
            Copier::PipeWrite,
            Copier::ZerocopyDeferred,
            Copier::TcpSend,
            Copier::SocketReceive,
        ];
        ALL.get(value as usize).copied()
    }
}

/// One place copies were observed, for `attach --stacks kernel|both`: the kernel stack at the
/// copy, the user stack too when both were asked for, and who copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CopyStackKey {
    /// Ids in the `STACKS` map, or [`NO_STACK`].
    pub kernel_stack: i32,
    pub user_stack: i32,
    /// The process the copy was made for; 0 for a copy in a softirq, on no process's behalf.
    pub tgid: u32,
    /// A [`Copier`].
    pub copier: u8,
    /// As [`StackKey::caller_slot`].
    pub caller_slot: u8,
    pub reserved: [u8; 2],
    /// As [`StackKey::caller`], with the user stack; 0 without it, or where the kernel does not
    /// hand copy hooks the task's user registers.
    pub caller: u64,
}

/// The copies observed at one [`CopyStackKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStackCounts {
    /// Times the copier ran there.
    pub copies: u64,
    pub bytes: u64,
}

/// Longest mmsghdr vector whose `msg_len` fields the programs sum; the rest is counted as truncated.
pub const MMSG_WALK: u32 = 32;
/// `sizeof(struct mmsghdr)` and the offset of its `msg_len` on 64-bit Linux.
pub const MMSGHDR_SIZE: u64 = 64;
pub const MMSGHDR_LEN_OFFSET: u64 = 56;

pub const MSG_ZEROCOPY: u64 = 0x400_0000;
pub const MSG_SPLICE_PAGES: u32 = 0x800_0000;
pub const NETIF_F_SG: u64 = 1;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const FMODE_WRITE: u32 = 0x2;
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;
/// `task_struct.flags` bit set once a task has begun to exit (include/linux/sched.h).
pub const PF_EXITING: u32 = 0x4;
pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFIFO: u16 = 0o010000;
pub const S_IFCHR: u16 = 0o020000;
/// `/dev/null` as the kernel encodes it in `i_rdev`: MKDEV(1, 3).
pub const DEV_NULL: u32 = (1 << 20) | 3;

/// Which sides a data-path syscall moves bytes between, by its number: the one list of
/// data-path syscalls, which the programs read a call's sides and its amount by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPath {
    /// From its first argument's descriptor into the caller's memory (read, recv and kin).
    IntoUser,
    /// From the caller's memory into its first argument's descriptor (write, send and kin).
    FromUser,
    /// sendfile: from the second argument's descriptor into the first's.
    Sendfile,
    /// tee: from the first argument's pipe into the second's.
    Tee,
    /// splice and copy_file_range: from the first argument's descriptor into the third's.
    Splice,
    /// vmsplice: between the caller's memory and a pipe, which way the pipe's mode says.
    Vmsplice,
    /// Moves no data.
    None,
}

impl DataPath {
    #[inline(always)]
    pub const fn of(syscall: u16) -> DataPath {
        match syscall {
            nr::READ
            | nr::PREAD64
            | nr::READV
            | nr::PREADV
            | nr::PREADV2
            | nr::RECVFROM
            | nr::RECVMSG
            | nr::RECVMMSG => DataPath::IntoUser,
            nr::WRITE
            | nr::PWRITE64
            | nr::WRITEV
            | nr::PWRITEV
            | nr::PWRITEV2
            | nr::SENDTO
            | nr::SENDMSG
            | nr::SENDMMSG => DataPath::FromUser,
            nr::SENDFILE => DataPath::Sendfile,
            nr::TEE => DataPath::Tee,
            nr::SPLICE | nr::COPY_FILE_RANGE => DataPath::Splice,
            nr::VMSPLICE => DataPath::Vmsplice,
            _ => DataPath::None,
        }
    }
}

/// Numbers of the data-path syscalls the programs decode, for the architecture being built: the
/// target's own for user space, `bpf_target_arch` (set by aya-build from it) for the programs.
pub mod nr {
    #[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
    pub use aarch64::*;
    #[cfg(any(target_arch = "x86_64", bpf_target_arch = "x86_64"))]
    pub use x86_64::*;

    #[cfg(not(any(
        target_arch = "x86_64",
        bpf_target_arch = "x86_64",
        target_arch = "aarch64",
        bpf_target_arch = "aarch64"
    )))]
    compile_error!("zctrace knows the syscall numbers of x86_64 and aarch64 only");

    /// x86_64's own table.
    pub mod x86_64 {
        pub const READ: u16 = 0;
        pub const WRITE: u16 = 1;
        pub const PREAD64: u16 = 17;
        pub const PWRITE64: u16 = 18;
        pub const READV: u16 = 19;
        pub const WRITEV: u16 = 20;
        pub const SENDFILE: u16 = 40;
        pub const SENDTO: u16 = 44;
        pub const RECVFROM: u16 = 45;
        pub const SENDMSG: u16 = 46;
        pub const RECVMSG: u16 = 47;
        pub const SPLICE: u16 = 275;
        pub const TEE: u16 = 276;
        pub const VMSPLICE: u16 = 278;
        pub const PREADV: u16 = 295;
        pub const PWRITEV: u16 = 296;
        pub const RECVMMSG: u16 = 299;
        pub const SENDMMSG: u16 = 307;
        pub const COPY_FILE_RANGE: u16 = 326;
        pub const PREADV2: u16 = 327;
        pub const PWRITEV2: u16 = 328;
    }

    /// arm64 uses the generic table (asm-generic/unistd.h): no `open`, `sendfile` is 71.
    pub mod aarch64 {
        pub const READ: u16 = 63;
        pub const WRITE: u16 = 64;
        pub const READV: u16 = 65;
        pub const WRITEV: u16 = 66;
        pub const PREAD64: u16 = 67;
        pub const PWRITE64: u16 = 68;
        pub const PREADV: u16 = 69;
        pub const PWRITEV: u16 = 70;
        pub const SENDFILE: u16 = 71;
        pub const VMSPLICE: u16 = 75;
        pub const SPLICE: u16 = 76;
        pub const TEE: u16 = 77;
        pub const SENDTO: u16 = 206;
        pub const RECVFROM: u16 = 207;
        pub const SENDMSG: u16 = 211;
        pub const RECVMSG: u16 = 212;
        pub const RECVMMSG: u16 = 243;
        pub const SENDMMSG: u16 = 269;
        pub const COPY_FILE_RANGE: u16 = 285;
        pub const PREADV2: u16 = 286;
        pub const PWRITEV2: u16 = 287;
    }

    /// The syscalls whose bytes and descriptor kinds the programs decode.
    pub const DATA_PATH: [u16; 21] = [
        READ,
        PREAD64,
        READV,
        PREADV,
        PREADV2,
        WRITE,
        PWRITE64,
        WRITEV,
        PWRITEV,
        PWRITEV2,
        SENDTO,
        SENDMSG,
        SENDMMSG,
        RECVFROM,
        RECVMSG,
        RECVMMSG,
        SENDFILE,
        SPLICE,
        TEE,
        VMSPLICE,
        COPY_FILE_RANGE,
    ];

    pub fn is_data_path(nr: u16) -> bool {
        DATA_PATH.contains(&nr)
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // Each is repr(C), holds only integers, and has no implicit padding (see the layout tests).
    // SAFETY: as above.
    unsafe impl aya::Pod for ProcessKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SyscallKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SyscallStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProcessStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PendingSend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ThreadSwitches {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CopyStackKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CopyStackCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketKindSlot {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    /// Each table against the syscalls crate's, by name.
    #[test]
    fn syscall_tables_match_each_architectures_own() {
        macro_rules! check {
            ($ours:ident, $theirs:ident, $($name:ident => $sysno:ident),+) => {
                $(assert_eq!(
                    nr::$ours::$name as u32,
                    syscalls::$theirs::Sysno::$sysno as u32,
                    "{} {}", stringify!($theirs), stringify!($sysno)
                );)+
            };
        }
        macro_rules! check_all {
            ($ours:ident, $theirs:ident) => {
                check!($ours, $theirs,
                    READ => read, WRITE => write, PREAD64 => pread64, PWRITE64 => pwrite64,
                    READV => readv, WRITEV => writev, SENDFILE => sendfile, SENDTO => sendto,
                    RECVFROM => recvfrom, SENDMSG => sendmsg, RECVMSG => recvmsg, SPLICE => splice,
                    TEE => tee, VMSPLICE => vmsplice, PREADV => preadv, PWRITEV => pwritev,
                    RECVMMSG => recvmmsg, SENDMMSG => sendmmsg, COPY_FILE_RANGE => copy_file_range,
                    PREADV2 => preadv2, PWRITEV2 => pwritev2)
            };
        }
        check_all!(x86_64, x86_64);
        check_all!(aarch64, aarch64);
    }

    #[test]
    fn only_decoded_syscalls_are_data_path() {
        assert!(nr::is_data_path(nr::SENDFILE));
        assert!(nr::is_data_path(nr::RECVMMSG));
        let getpid = syscalls::Sysno::getpid as u16;
        let getppid = syscalls::Sysno::getppid as u16;
        assert!(!nr::is_data_path(getpid) && !nr::is_data_path(getppid));
    }

    #[test]
    fn every_slot_sits_at_its_own_index() {
        for (index, slot) in MapSlot::ALL.iter().enumerate() {
            assert_eq!(*slot as usize, index, "{}", slot.name());
        }
        assert!(MapSlot::SIZED.iter().all(|slot| slot.capacity() > 0));
        // User space indexes its sized maps by slot.
        assert!(MapSlot::SIZED
            .iter()
            .enumerate()
            .all(|(i, slot)| *slot as usize == i));
    }

    #[test]
    fn shared_types_have_no_implicit_padding() {
        assert_eq!(size_of::<ProcessKey>(), 4 + 4 + 8);
        assert_eq!(size_of::<SyscallKey>(), 16 + 2 + 1 + 1 + 4);
        assert_eq!(size_of::<StackKey>(), 4 + 4 + 8 + 2 + 1 + 1 + 1 + 1 + 2);
        assert_eq!(size_of::<CopyStackKey>(), 4 + 4 + 4 + 1 + 1 + 2 + 8);
        assert_eq!(size_of::<CopyStackCounts>(), 2 * 8);
        assert_eq!(size_of::<SyscallStats>(), 4 * 8);
        assert_eq!(
            size_of::<ProcessStats>(),
            16 + 8 * (4 + TCP_PATHS + 1 + COPY_ROUTINES + 2) + 4 + 4
        );
        assert_eq!(size_of::<KernelOffsets>(), 52 * 4);
        assert_eq!(size_of::<SocketKindSlot>(), 2 * 8);
        assert_eq!(size_of::<PendingSend>(), 8);
        assert_eq!(size_of::<ThreadSwitches>(), 16 + 8 * 8);
        assert_eq!(size_of::<ProbeConfig>(), 4 * 4 + 8);
    }

    #[test]
    fn every_data_path_syscall_has_its_sides_and_no_other_call_has_any() {
        assert_eq!(DataPath::of(nr::PREADV2), DataPath::IntoUser);
        assert_eq!(DataPath::of(nr::RECVMMSG), DataPath::IntoUser);
        assert_eq!(DataPath::of(nr::PWRITEV2), DataPath::FromUser);
        assert_eq!(DataPath::of(nr::SENDMMSG), DataPath::FromUser);
        assert_eq!(DataPath::of(nr::COPY_FILE_RANGE), DataPath::Splice);
        assert_eq!(DataPath::of(nr::VMSPLICE), DataPath::Vmsplice);
        // getpid on both architectures' tables, and a number no table has.
        for other in [39, 172, u16::MAX] {
            assert_eq!(DataPath::of(other), DataPath::None);
        }
    }

    #[test]
    fn a_socket_kind_slot_answers_only_for_its_own_socket() {
        let (inode, ino) = (0xffff_8880_1234_5600, 48_213);
        let slot = SocketKindSlot::new(inode, ino, FdKind::Tcp);
        let ask = |inode, ino| SocketKindSlot::kind_of(inode, ino, slot.inode, slot.ino_kind);
        assert_eq!(ask(inode, ino), Some(FdKind::Tcp));
        // A socket made where a closed one was: same address, new number.
        assert_eq!(ask(inode, ino + 1), None);
        // Another socket whose number shares the slot.
        assert_eq!(ask(inode + 0x700, ino + SOCKET_KIND_SLOTS as u64), None);
        // Half rewritten by another socket: its address with this socket's word.
        let other = SocketKindSlot::new(inode + 0x700, ino + 1, FdKind::Unix);
        assert_eq!(
            SocketKindSlot::kind_of(other.inode, ino + 1, other.inode, slot.ino_kind),
            None
        );
        let empty = SocketKindSlot::default();
        assert_eq!(
            SocketKindSlot::kind_of(inode, ino, empty.inode, empty.ino_kind),
            None
        );
        assert!(SOCKET_KIND_SLOTS.is_power_of_two());
        let slots = SOCKET_KIND_SLOTS;
        assert_eq!(
            SocketKindSlot::index(ino + slots as u64, slots),
            SocketKindSlot::index(ino, slots)
        );
        assert!(SocketKindSlot::index(u64::MAX, slots) < slots);
        assert_eq!(SocketKindSlot::index(ino, 1), 0);
    }

    #[test]
    fn copiers_round_trip_and_routines_keep_their_values() {
        for v in 0..8u8 {
            assert_eq!(Copier::from_u8(v).map(|c| c as u8), Some(v));
        }
        assert_eq!(Copier::from_u8(8), None);
        for (i, routine) in [
            CopyRoutine::FilemapRead,
            CopyRoutine::ShmemRead,
            CopyRoutine::PerformWrite,
            CopyRoutine::PipeRead,
            CopyRoutine::PipeWrite,
            CopyRoutine::ZerocopyDeferred,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(routine as usize, i);
            assert_eq!(Copier::from_routine(routine) as u8, routine as u8);
        }
    }

    #[test]
    fn fd_kind_round_trips_through_u8() {
        for v in 0..=9u8 {
            assert_eq!(FdKind::from_u8(v) as u8, v);
        }
        assert_eq!(FdKind::from_u8(200), FdKind::None);
    }
}
