//! Maps and the helpers that update them. Fixed-size hashes, so a full map is a counted failure
//! (never a silent eviction); user space frees the entries of exited processes.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_cgroup_id,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use zctrace_common::{
    MapSlot, PendingSend, ProcessKey, ProcessStats, SocketKindCache, SocketKindSlot, SyscallKey,
    SyscallStats, ThreadSwitches, MAP_SLOTS, SOCKET_KIND_CACHE_COUNTS, SOCKET_KIND_SLOTS,
};

use crate::kernel::{current_task, current_task_exiting, leader_comm, offset, task_field};

#[map]
pub static SYSCALLS: HashMap<SyscallKey, SyscallStats> =
    HashMap::with_max_entries(MapSlot::Syscalls.capacity(), 0);

#[map]
pub static PROCESSES: HashMap<ProcessKey, ProcessStats> =
    HashMap::with_max_entries(MapSlot::Processes.capacity(), 0);

/// Per thread (tid): its switches and off-CPU time, until its exit folds them into its process.
#[map]
pub static THREADS: HashMap<u32, ThreadSwitches> = HashMap::with_max_entries(MapSlot::Threads.capacity(), 0);

/// Per thread (pid_tgid): how `tcp_sendmsg_locked` classified a spliced or zerocopy send in
/// progress, until `sock_send_length` reports its bytes, for a send that changed CPU meanwhile.
#[map]
pub static PENDING_SEND: HashMap<u64, PendingSend> =
    HashMap::with_max_entries(MapSlot::PendingSend.capacity(), 0);

/// The last send classified on a CPU, tagged with its thread and that thread's migration count:
/// a send that ends where it began finds its classification here, without a hash lookup.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StagedSend {
    pub pid_tgid: u64,
    pub migrations: u64,
    pub pending: PendingSend,
}

#[map]
pub static STAGED_SEND: PerCpuArray<StagedSend> = PerCpuArray::with_max_entries(1, 0);

/// Per thread (pid_tgid): the bytes of a read in progress that will not be copies, from its
/// kprobe to its kretprobe (only where copies are observed with kprobes).
#[map]
pub static PENDING_COPY: HashMap<u64, i64> = HashMap::with_max_entries(MapSlot::PendingCopy.capacity(), 0);

/// Per socket (`struct sock *`): the process whose MSG_ZEROCOPY sends on it go to a loopback
/// receiver, whose copy of them runs in a softirq on whatever task the CPU is running. LRU: a
/// closed socket's entry ages out instead of filling the map; an evicted one only sends its
/// copies to the task that runs them.
#[map]
pub static ZEROCOPY_SENDERS: LruHashMap<u64, ProcessKey> = LruHashMap::with_max_entries(4096, 0);

/// Socket kinds already read, direct-mapped by inode number: an array, whose lookup the verifier
/// inlines, where a hash lookup would cost about what reading the `sock` does.
#[map]
pub static SOCKET_KINDS: Array<SocketKindSlot> = Array::with_max_entries(SOCKET_KIND_SLOTS, 0);

/// The socket kind cache's misses, fills and evictions, indexed by [`SocketKindCache`].
#[map]
pub static SOCKET_KIND_CACHE: PerCpuArray<u64> = PerCpuArray::with_max_entries(SOCKET_KIND_CACHE_COUNTS, 0);

/// Failed updates, indexed by [`MapSlot`].
#[map]
pub static MAP_UPDATE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAP_SLOTS, 0);

#[inline(always)]
pub fn add(counter: *mut u64, value: u64) {
    // SAFETY: `counter` points into a map value the kernel keeps alive for this program run.
    // The BPF target has no AtomicU64::fetch_add; this intrinsic lowers to BPF_ATOMIC add.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

#[inline(always)]
pub fn count_error(slot: MapSlot) {
    bump(&MAP_UPDATE_ERRORS, slot as u32);
}

#[inline(always)]
pub fn count_socket_kind_cache(event: SocketKindCache) {
    bump(&SOCKET_KIND_CACHE, event as u32);
}

/// Adds one to this CPU's counter at `slot`.
#[inline(always)]
fn bump(counters: &PerCpuArray<u64>, slot: u32) {
    if let Some(counter) = counters.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

/// The syscall entry for `key`, created zeroed on first use.
#[inline(always)]
pub fn syscall_entry(key: &SyscallKey) -> Option<*mut SyscallStats> {
    let entry = zeroed_entry(&SYSCALLS, key);
    if entry.is_none() {
        count_error(MapSlot::Syscalls);
    }
    entry
}

/// The entry for `key` in `map`, created zeroed on first use; `None` when the map is full.
#[inline(always)]
pub fn zeroed_entry<K, V: Default>(map: &HashMap<K, V>, key: &K) -> Option<*mut V> {
    if let Some(entry) = map.get_ptr_mut(key) {
        return Some(entry);
    }
    // A concurrent insert of the same key fails with EEXIST: the lookup below then finds it.
    let _ = map.insert(key, V::default(), BPF_NOEXIST as u64);
    map.get_ptr_mut(key)
}

/// The process entry of the current task, with its cgroup recorded (an entry created for a task
/// being switched in could not know it). An exiting task gets none: its entry, marked at
/// sched_process_exit, may already be folded and freed, and a new one would never be marked.
#[inline(always)]
pub fn current_process_entry(key: &ProcessKey) -> Option<*mut ProcessStats> {
    match PROCESSES.get_ptr_mut(key) {
        Some(entry) => Some(with_cgroup(entry)),
        None if current_task_exiting() => None,
        None => create_current_process_entry(key),
    }
}

/// Creates the current task's process entry, named and with its cgroup, even while it exits.
#[inline(always)]
pub fn create_current_process_entry(key: &ProcessKey) -> Option<*mut ProcessStats> {
    if let Some(entry) = PROCESSES.get_ptr_mut(key) {
        return Some(with_cgroup(entry));
    }
    let task = current_task();
    let parent: u64 = task_field(task, offset!(task_real_parent));
    let fresh = ProcessStats {
        comm: leader_comm(task),
        parent_tgid: task_field(parent, offset!(task_tgid)),
        ..ProcessStats::default()
    };
    let _ = PROCESSES.insert(key, fresh, BPF_NOEXIST as u64);
    let entry = PROCESSES.get_ptr_mut(key);
    if entry.is_none() {
        count_error(MapSlot::Processes);
    }
    entry.map(with_cgroup)
}

#[inline(always)]
fn with_cgroup(entry: *mut ProcessStats) -> *mut ProcessStats {
    // SAFETY: `entry` points into a live map value; the helper has no preconditions.
    unsafe {
        if (*entry).cgroup_id == 0 {
            (*entry).cgroup_id = bpf_get_current_cgroup_id();
        }
    }
    entry
}
