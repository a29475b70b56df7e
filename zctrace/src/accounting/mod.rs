//! Pure accounting: raw map contents in, per-process figures out. No BPF, no root, unit-tested.
pub mod copy_model;
mod counters;

use std::collections::{BTreeMap, HashMap};

pub use copy_model::{kind_label, Basis, Mechanism};
pub use counters::{Counters, Family, Sum, Value, FAMILIES};
use zctrace_common::{
    nr, FdKind, MapSlot, ProcessKey, ProcessStats, SyscallKey, SyscallStats, TcpPath, ThreadSwitches,
    COPY_ROUTINES, MAP_SLOTS,
};

/// Everything the maps held at one moment.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    pub syscalls: Vec<(SyscallKey, SyscallStats)>,
    /// With their live threads' switches and off-CPU time added (see [`RawSnapshot::read`]).
    pub processes: Vec<(ProcessKey, ProcessStats)>,
    /// Live threads, as read: their counts are already in `processes`.
    pub threads: Vec<(u32, ThreadSwitches)>,
    /// Failed updates by [`MapSlot`], summed over CPUs.
    pub update_errors: [u64; MAP_SLOTS as usize],
}

impl RawSnapshot {
    /// The maps as read. Each process gets its live threads' counts on top of what its entry
    /// holds (the folded counts of its exited threads); a process known from its threads alone
    /// gets an entry of its own.
    pub fn read(
        syscalls: Vec<(SyscallKey, SyscallStats)>,
        mut processes: Vec<(ProcessKey, ProcessStats)>,
        threads: Vec<(u32, ThreadSwitches)>,
        update_errors: [u64; MAP_SLOTS as usize],
    ) -> RawSnapshot {
        let mut index: HashMap<ProcessKey, usize> = processes
            .iter()
            .enumerate()
            .map(|(i, (key, _))| (*key, i))
            .collect();
        for (_, thread) in &threads {
            let slot = *index.entry(thread.process).or_insert_with(|| {
                processes.push((thread.process, ProcessStats::default()));
                processes.len() - 1
            });
            let stats = &mut processes[slot].1;
            stats.voluntary_switches += thread.voluntary;
            stats.involuntary_switches += thread.involuntary;
            stats.offcpu_ns += thread.offcpu_ns;
        }
        RawSnapshot {
            syscalls,
            processes,
            threads,
            update_errors,
        }
    }

    pub fn update_errors(&self, slot: MapSlot) -> u64 {
        self.update_errors[slot as usize]
    }
}

/// Context switches and off-CPU time as last read for each process, so that none goes down
/// between reads: a thread that exits between the reads of PROCESSES and THREADS is in neither
/// for that one read.
#[derive(Debug, Default)]
pub struct SwitchFloor(HashMap<ProcessKey, [u64; 3]>);

impl SwitchFloor {
    /// Raises each process's figures to what an earlier read showed; forgets processes no longer
    /// in the maps.
    pub fn hold(&mut self, processes: &mut [(ProcessKey, ProcessStats)]) {
        let mut held = HashMap::with_capacity(processes.len());
        for (key, stats) in processes.iter_mut() {
            let mut floor = self.0.get(key).copied().unwrap_or_default();
            let read = [
                stats.voluntary_switches,
                stats.involuntary_switches,
                stats.offcpu_ns,
            ];
            for (floor, read) in floor.iter_mut().zip(read) {
                *floor = (*floor).max(read);
            }
            [
                stats.voluntary_switches,
                stats.involuntary_switches,
                stats.offcpu_ns,
            ] = floor;
            held.insert(*key, floor);
        }
        self.0 = held;
    }
}

/// The kernel routines whose copies are observed, as the `routine` label names them: the copy
/// observers' (in [`zctrace_common::CopyRoutine`] order), then TCP sends down the copy path and
/// socket receives, which the TCP probes observe.
pub const OBSERVED_ROUTINES: [&str; COPY_ROUTINES + 2] = [
    "filemap_read",
    "shmem_file_read_iter",
    "generic_perform_write",
    "pipe_read",
    "pipe_write",
    "skb_copy_ubufs",
    "tcp_sendmsg_locked",
    "skb_copy_datagram_iter",
];

/// CPU-copied bytes seen in the kernel, by routine, in [`OBSERVED_ROUTINES`] order.
pub type ObservedCopies = [u64; OBSERVED_ROUTINES.len()];

/// One mechanism of one process: a data-path syscall between two kinds of endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowFigures {
    pub syscall: &'static str,
    pub src: FdKind,
    pub dst: FdKind,
    pub zerocopy_flag: bool,
    pub calls: u64,
    pub errors: u64,
    pub bytes: u64,
    pub cpu_copy_bytes: u64,
    pub basis: Basis,
    /// Sent from the buffer the same thread's last read had filled: seen in the kernel (buffer
    /// addresses), a lower bound on the bytes relayed.
    pub relayed_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    pub key: ProcessKey,
    pub comm: String,
    /// Data-path mechanisms, largest byte count first.
    pub flows: Vec<FlowFigures>,
    /// Calls per syscall name, every syscall included.
    pub syscalls: BTreeMap<&'static str, u64>,
    pub counters: Counters,
    /// Every copy routine could be observed on this kernel: `counters.observed_copies` holds.
    pub copies_observed: bool,
    /// cgroup v2 id of the process (0 when not yet known).
    pub cgroup_id: u64,
    /// tgid of the parent that forked the process, as the kernel saw it first (0: not known).
    pub parent_tgid: u32,
}

impl ProcessFigures {
    /// Bytes moved by all data-path syscalls.
    pub fn bytes(&self) -> u64 {
        self.flows.iter().map(|p| p.bytes).sum()
    }

    /// Bytes that left the process: written to a file, pipe or socket, by syscalls or by
    /// io_uring; bytes it passed through a pipe of its own count once.
    pub fn delivered_bytes(&self) -> u64 {
        let bytes = |pick: fn(&FlowFigures) -> bool| -> u64 {
            self.flows.iter().filter(|p| pick(p)).map(|p| p.bytes).sum()
        };
        let by_syscalls = bytes(|p| p.dst != FdKind::User);
        // A pipe the process fills and drains itself (a splice pipeline's middle) delivers
        // nothing: its bytes are delivered where they are drained to.
        let filled = bytes(|p| p.dst == FdKind::Pipe && p.src != FdKind::Pipe);
        let drained = bytes(|p| p.src == FdKind::Pipe && p.dst != FdKind::User);
        by_syscalls - filled.min(drained) + self.tcp_without_syscalls().0
    }

    /// CPU-copied bytes by the copy model, the deferred zerocopy copies and the copies of TCP
    /// sends no syscall carried included.
    pub fn modelled_cpu_copy_bytes(&self) -> u64 {
        let by_syscalls: u64 = self.flows.iter().map(|p| p.cpu_copy_bytes).sum();
        by_syscalls + self.counters.zerocopy_deferred_copy_bytes + self.tcp_without_syscalls().1
    }

    /// Bytes sent over TCP, by syscalls or by io_uring.
    pub fn tcp_delivered_bytes(&self) -> u64 {
        let by_syscalls: u64 = self
            .flows
            .iter()
            .filter(|p| p.dst == FdKind::Tcp)
            .map(|p| p.bytes)
            .sum();
        by_syscalls + self.tcp_without_syscalls().0
    }

    /// TCP bytes sent, and of those copied, that no send syscall of the process carried (io_uring
    /// requests): seen at `tcp_sendmsg`, beyond what the syscall flows account for.
    pub fn tcp_without_syscalls(&self) -> (u64, u64) {
        let to_tcp = |copied_only: bool| -> u64 {
            self.flows
                .iter()
                .filter(|p| {
                    p.dst == FdKind::Tcp && (!copied_only || (p.src == FdKind::User && !p.zerocopy_flag))
                })
                .map(|p| p.bytes)
                .sum()
        };
        let bytes = self.counters.tcp_sent().saturating_sub(to_tcp(false));
        let copied = self.counters.tcp(TcpPath::Copy).saturating_sub(to_tcp(true));
        (bytes, copied.min(bytes))
    }

    /// CPU-copied bytes by the copy model: the headline figure on every kernel, since the model
    /// covers every data-path syscall and the observers only the routines a kernel lets them see.
    pub fn cpu_copy_bytes(&self) -> u64 {
        self.modelled_cpu_copy_bytes()
    }

    /// CPU copies per delivered byte, by the model; `None` when nothing was delivered.
    pub fn copies_per_byte(&self) -> Option<f64> {
        ratio(self.cpu_copy_bytes(), self.delivered_bytes())
    }

    /// Copies by routine, where every copy routine could be observed.
    pub fn observed_copies(&self) -> Option<ObservedCopies> {
        self.copies_observed.then_some(self.counters.observed_copies)
    }

    /// CPU-copied bytes seen in the kernel, where the copy routines could be observed.
    pub fn observed_copy_bytes(&self) -> Option<u64> {
        self.observed_copies().map(|copies| copies.iter().sum())
    }

    /// Observed CPU copies per delivered byte, where observed.
    pub fn observed_copies_per_byte(&self) -> Option<f64> {
        ratio(self.observed_copy_bytes()?, self.delivered_bytes())
    }

    pub fn flow(&self, syscall: &str, src: FdKind, dst: FdKind) -> Option<&FlowFigures> {
        self.flows
            .iter()
            .find(|p| p.syscall == syscall && p.src == src && p.dst == dst)
    }

    /// What happened between `before` (an earlier look at the same process) and `self`. Paths
    /// with no activity in between are left out.
    /// Adds `more`, another process's figures, as a process tree's total counts them: flows of
    /// the same mechanism merged, counters and syscall counts summed. The key, name and cgroup
    /// stay this one's.
    pub fn add(&mut self, more: &ProcessFigures) {
        for flow in &more.flows {
            match self.flows.iter_mut().find(|f| f.same_mechanism(flow)) {
                Some(same) => {
                    same.calls += flow.calls;
                    same.errors += flow.errors;
                    same.bytes += flow.bytes;
                    same.cpu_copy_bytes += flow.cpu_copy_bytes;
                    same.relayed_bytes += flow.relayed_bytes;
                }
                None => self.flows.push(flow.clone()),
            }
        }
        self.flows.sort_by_key(|f| std::cmp::Reverse(f.bytes));
        for (name, calls) in &more.syscalls {
            *self.syscalls.entry(name).or_default() += calls;
        }
        self.counters.add(&more.counters);
        self.copies_observed &= more.copies_observed;
    }

    pub fn since(&self, before: &ProcessFigures) -> ProcessFigures {
        let flows = self
            .flows
            .iter()
            .filter_map(|now| {
                let earlier = before.flows.iter().find(|p| p.same_mechanism(now));
                let delta = match earlier {
                    Some(earlier) => now.since(earlier),
                    None => now.clone(),
                };
                (delta.calls > 0).then_some(delta)
            })
            .collect();
        let syscalls = self
            .syscalls
            .iter()
            .map(|(name, calls)| (*name, calls - before.syscalls.get(name).copied().unwrap_or(0)))
            .filter(|(_, calls)| *calls > 0)
            .collect();
        ProcessFigures {
            key: self.key,
            comm: self.comm.clone(),
            flows,
            syscalls,
            // A process first seen after `before` was taken counted nothing before it: its
            // `before` is all zeros.
            counters: self.counters.since(&before.counters),
            copies_observed: self.copies_observed,
            cgroup_id: self.cgroup_id,
            parent_tgid: self.parent_tgid,
        }
    }
}

impl FlowFigures {
    fn same_mechanism(&self, other: &FlowFigures) -> bool {
        (self.syscall, self.src, self.dst, self.zerocopy_flag)
            == (other.syscall, other.src, other.dst, other.zerocopy_flag)
    }

    fn since(&self, before: &FlowFigures) -> FlowFigures {
        FlowFigures {
            calls: self.calls - before.calls,
            errors: self.errors - before.errors,
            bytes: self.bytes - before.bytes,
            cpu_copy_bytes: self.cpu_copy_bytes - before.cpu_copy_bytes,
            relayed_bytes: self.relayed_bytes - before.relayed_bytes,
            ..self.clone()
        }
    }
}

/// `numerator / denominator`, or `None` for a zero denominator.
pub fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator != 0).then(|| numerator as f64 / denominator as f64)
}

/// The syscall's name on this architecture; "unknown" for numbers newer than the syscalls crate.
pub fn syscall_name(nr: u16) -> &'static str {
    syscalls::Sysno::new(nr.into()).map_or("unknown", |sysno| sysno.name())
}

/// Per-process figures from a snapshot. `copies_observed` says the kernel's copy routines were
/// traced, so their counts replace the model's.
pub fn per_process(snapshot: &RawSnapshot, copies_observed: bool) -> Vec<ProcessFigures> {
    let mut by_key: BTreeMap<ProcessKey, ProcessFigures> = BTreeMap::new();
    for (key, stats) in &snapshot.processes {
        let figures = by_key.entry(*key).or_default();
        apply_process_stats(figures, stats, copies_observed);
    }
    for (key, stats) in &snapshot.syscalls {
        let figures = by_key.entry(key.process).or_default();
        apply_syscall(figures, key, stats);
    }
    by_key
        .into_iter()
        .map(|(key, mut figures)| {
            figures.key = key;
            figures
                .flows
                .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.syscall.cmp(b.syscall)));
            figures
        })
        .collect()
}

fn apply_process_stats(figures: &mut ProcessFigures, stats: &ProcessStats, copies_observed: bool) {
    figures.comm = comm_from_bytes(&stats.comm);
    // Syscalls are counted from the syscall entries, which may be applied first.
    let syscalls_total = figures.counters.syscalls_total;
    figures.counters = Counters {
        syscalls_total,
        ..Counters::from_kernel(stats)
    };
    if !copies_observed {
        // Part of them are TCP figures observed on any kernel; alone, they would mislead.
        figures.counters.observed_copies = ObservedCopies::default();
    }
    figures.copies_observed = copies_observed;
    figures.cgroup_id = stats.cgroup_id;
    figures.parent_tgid = stats.parent_tgid;
}

fn apply_syscall(figures: &mut ProcessFigures, key: &SyscallKey, stats: &SyscallStats) {
    let name = syscall_name(key.nr);
    *figures.syscalls.entry(name).or_default() += stats.calls;
    figures.counters.syscalls_total += stats.calls;
    if !nr::is_data_path(key.nr) {
        return;
    }
    let mechanism = Mechanism::from_key(key.nr, key.src, key.dst, key.variant as u8);
    figures.flows.push(FlowFigures {
        syscall: name,
        src: mechanism.src,
        dst: mechanism.dst,
        zerocopy_flag: mechanism.zerocopy_flag,
        calls: stats.calls,
        errors: stats.errors,
        bytes: stats.bytes,
        cpu_copy_bytes: stats.bytes * mechanism.copies(),
        basis: Basis::Model,
        relayed_bytes: stats.relayed_bytes,
    });
}

/// A kernel `comm` (NUL-padded, not always UTF-8) as a string.
pub fn comm_from_bytes(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests;
