//! Pure accounting: raw map contents in, per-process figures out. No BPF, no root, unit-tested.
pub mod copy_model;
mod syscall_names;

use std::collections::BTreeMap;

use zctrace_common::{
    FdKind, MapSlot, ProcessKey, ProcessStats, SyscallKey, SyscallStats, TcpPath, Variant, COPY_ROUTINES,
    MAP_SLOTS,
};

pub use copy_model::{kind_label, Source};

/// Everything the maps held at one moment.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    pub syscalls: Vec<(SyscallKey, SyscallStats)>,
    pub processes: Vec<(ProcessKey, ProcessStats)>,
    /// Failed updates by [`MapSlot`], summed over CPUs.
    pub update_errors: [u64; MAP_SLOTS as usize],
}

impl RawSnapshot {
    pub fn update_errors(&self, slot: MapSlot) -> u64 {
        self.update_errors[slot as usize]
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
pub struct PathFigures {
    pub syscall: &'static str,
    pub src: FdKind,
    pub dst: FdKind,
    pub zerocopy_flag: bool,
    pub calls: u64,
    pub errors: u64,
    pub bytes: u64,
    pub cpu_copy_bytes: u64,
    pub source: Source,
}

/// TCP send bytes by the path the kernel took (observed at `tcp_sendmsg_locked`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSend {
    pub copy: u64,
    pub splice: u64,
    pub zerocopy: u64,
    pub unclassified: u64,
}

impl std::ops::AddAssign for TcpSend {
    fn add_assign(&mut self, other: TcpSend) {
        self.copy += other.copy;
        self.splice += other.splice;
        self.zerocopy += other.zerocopy;
        self.unclassified += other.unclassified;
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    pub key: ProcessKey,
    pub comm: String,
    /// Data-path mechanisms, largest byte count first.
    pub paths: Vec<PathFigures>,
    /// Calls per syscall name, every syscall included.
    pub syscalls: BTreeMap<&'static str, u64>,
    pub syscalls_total: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub offcpu_ns: u64,
    /// Exact socket-to-user receive copies (observed).
    pub recv_copy_bytes: u64,
    pub tcp_send: TcpSend,
    /// MSG_ZEROCOPY bytes sent over a loopback route: the receiver copies them (model).
    pub zerocopy_deferred_copy_bytes: u64,
    /// Copies seen at the kernel's copy routines, where every one of them could be observed.
    pub observed_copies: Option<ObservedCopies>,
    /// cgroup v2 id of the process (0 when not yet known).
    pub cgroup_id: u64,
}

impl ProcessFigures {
    /// Every syscall enters and leaves the kernel: two mode switches.
    pub fn mode_switches(&self) -> u64 {
        self.syscalls_total * 2
    }

    /// Bytes moved by all data-path syscalls.
    pub fn bytes(&self) -> u64 {
        self.paths.iter().map(|p| p.bytes).sum()
    }

    /// Bytes that left the process: written to a file, pipe or socket, by syscalls or by
    /// io_uring.
    pub fn delivered_bytes(&self) -> u64 {
        let by_syscalls: u64 = self
            .paths
            .iter()
            .filter(|p| p.dst != FdKind::User)
            .map(|p| p.bytes)
            .sum();
        by_syscalls + self.tcp_without_syscalls().0
    }

    /// CPU-copied bytes by the copy model, the deferred zerocopy copies and the copies of TCP
    /// sends no syscall carried included.
    pub fn modelled_cpu_copy_bytes(&self) -> u64 {
        let by_syscalls: u64 = self.paths.iter().map(|p| p.cpu_copy_bytes).sum();
        by_syscalls + self.zerocopy_deferred_copy_bytes + self.tcp_without_syscalls().1
    }

    /// Bytes sent over TCP, by syscalls or by io_uring.
    pub fn tcp_delivered_bytes(&self) -> u64 {
        let by_syscalls: u64 = self
            .paths
            .iter()
            .filter(|p| p.dst == FdKind::Tcp)
            .map(|p| p.bytes)
            .sum();
        by_syscalls + self.tcp_without_syscalls().0
    }

    /// TCP bytes sent, and of those copied, that no send syscall of the process carried (io_uring
    /// requests): seen at `tcp_sendmsg`, beyond what the syscall paths account for.
    pub fn tcp_without_syscalls(&self) -> (u64, u64) {
        let to_tcp = |copied_only: bool| -> u64 {
            self.paths
                .iter()
                .filter(|p| {
                    p.dst == FdKind::Tcp && (!copied_only || (p.src == FdKind::User && !p.zerocopy_flag))
                })
                .map(|p| p.bytes)
                .sum()
        };
        let t = &self.tcp_send;
        let bytes = (t.copy + t.splice + t.zerocopy + t.unclassified).saturating_sub(to_tcp(false));
        (bytes, t.copy.saturating_sub(to_tcp(true)).min(bytes))
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

    /// CPU-copied bytes seen in the kernel, where the copy routines could be observed.
    pub fn observed_copy_bytes(&self) -> Option<u64> {
        self.observed_copies.map(|copies| copies.iter().sum())
    }

    /// Observed CPU copies per delivered byte, where observed.
    pub fn observed_copies_per_byte(&self) -> Option<f64> {
        ratio(self.observed_copy_bytes()?, self.delivered_bytes())
    }

    pub fn path(&self, syscall: &str, src: FdKind, dst: FdKind) -> Option<&PathFigures> {
        self.paths
            .iter()
            .find(|p| p.syscall == syscall && p.src == src && p.dst == dst)
    }

    /// What happened between `before` (an earlier look at the same process) and `self`. Paths
    /// with no activity in between are left out.
    pub fn since(&self, before: &ProcessFigures) -> ProcessFigures {
        let paths = self
            .paths
            .iter()
            .filter_map(|now| {
                let earlier = before.paths.iter().find(|p| p.same_mechanism(now));
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
            paths,
            syscalls,
            syscalls_total: self.syscalls_total - before.syscalls_total,
            voluntary_switches: self.voluntary_switches - before.voluntary_switches,
            involuntary_switches: self.involuntary_switches - before.involuntary_switches,
            offcpu_ns: self.offcpu_ns - before.offcpu_ns,
            recv_copy_bytes: self.recv_copy_bytes - before.recv_copy_bytes,
            tcp_send: TcpSend {
                copy: self.tcp_send.copy - before.tcp_send.copy,
                splice: self.tcp_send.splice - before.tcp_send.splice,
                zerocopy: self.tcp_send.zerocopy - before.tcp_send.zerocopy,
                unclassified: self.tcp_send.unclassified - before.tcp_send.unclassified,
            },
            zerocopy_deferred_copy_bytes: self.zerocopy_deferred_copy_bytes
                - before.zerocopy_deferred_copy_bytes,
            // A process first seen after `before` was taken has copied nothing before it.
            observed_copies: self.observed_copies.map(|now| {
                let then = before.observed_copies.unwrap_or_default();
                std::array::from_fn(|i| now[i] - then[i])
            }),
            cgroup_id: self.cgroup_id,
        }
    }
}

impl PathFigures {
    fn same_mechanism(&self, other: &PathFigures) -> bool {
        (self.syscall, self.src, self.dst, self.zerocopy_flag)
            == (other.syscall, other.src, other.dst, other.zerocopy_flag)
    }

    fn since(&self, before: &PathFigures) -> PathFigures {
        PathFigures {
            calls: self.calls - before.calls,
            errors: self.errors - before.errors,
            bytes: self.bytes - before.bytes,
            cpu_copy_bytes: self.cpu_copy_bytes - before.cpu_copy_bytes,
            ..self.clone()
        }
    }
}

/// `numerator / denominator`, or `None` for a zero denominator.
pub fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator != 0).then(|| numerator as f64 / denominator as f64)
}

pub fn syscall_name(nr: u16) -> &'static str {
    syscall_names::SYSCALL_NAMES
        .binary_search_by_key(&nr, |&(n, _)| n)
        .map(|i| syscall_names::SYSCALL_NAMES[i].1)
        .unwrap_or("unknown")
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
                .paths
                .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.syscall.cmp(b.syscall)));
            figures
        })
        .collect()
}

fn apply_process_stats(figures: &mut ProcessFigures, stats: &ProcessStats, copies_observed: bool) {
    figures.comm = comm_from_bytes(&stats.comm);
    figures.voluntary_switches = stats.voluntary_switches;
    figures.involuntary_switches = stats.involuntary_switches;
    figures.offcpu_ns = stats.offcpu_ns;
    figures.recv_copy_bytes = stats.recv_copy_bytes;
    let tcp = |path: TcpPath| stats.tcp_send_bytes[path as usize];
    figures.tcp_send = TcpSend {
        copy: tcp(TcpPath::Copy),
        splice: tcp(TcpPath::Splice),
        zerocopy: tcp(TcpPath::Zerocopy),
        unclassified: tcp(TcpPath::Unclassified),
    };
    figures.zerocopy_deferred_copy_bytes = stats.tcp_zerocopy_local_bytes;
    figures.observed_copies = copies_observed.then(|| observed_copies(stats));
    figures.cgroup_id = stats.cgroup_id;
}

fn apply_syscall(figures: &mut ProcessFigures, key: &SyscallKey, stats: &SyscallStats) {
    let name = syscall_name(key.nr);
    *figures.syscalls.entry(name).or_default() += stats.calls;
    figures.syscalls_total += stats.calls;
    if !copy_model::is_data_path(key.nr) {
        return;
    }
    let (src, dst) = (FdKind::from_u8(key.src), FdKind::from_u8(key.dst));
    let zerocopy_flag = key.variant == Variant::Zerocopy as u8;
    let variant = if zerocopy_flag {
        Variant::Zerocopy
    } else {
        Variant::Plain
    };
    let copies = copy_model::copies_per_byte(key.nr, dst, variant);
    figures.paths.push(PathFigures {
        syscall: name,
        src,
        dst,
        zerocopy_flag,
        calls: stats.calls,
        errors: stats.errors,
        bytes: stats.bytes,
        cpu_copy_bytes: stats.bytes * copies,
        source: Source::Model,
    });
}

fn observed_copies(stats: &ProcessStats) -> ObservedCopies {
    let mut copies = [0; OBSERVED_ROUTINES.len()];
    copies[..COPY_ROUTINES].copy_from_slice(&stats.observed_copy_bytes);
    copies[COPY_ROUTINES] = stats.tcp_send_bytes[TcpPath::Copy as usize];
    copies[COPY_ROUTINES + 1] = stats.recv_copy_bytes;
    copies
}

/// A kernel `comm` (NUL-padded, not always UTF-8) as a string.
pub fn comm_from_bytes(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests;
