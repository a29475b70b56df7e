//! Loading and attaching the eBPF programs, reporting what attached in which mode, and reading
//! the maps.
mod batch;
pub mod offsets;
pub mod privileges;

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePoint, FExit},
    Btf, Ebpf, EbpfLoader,
};
use zctrace_common::{MapSlot, ProbeConfig, ProcessKey, ProcessStats, SyscallKey, SyscallStats, MAP_SLOTS};

use std::{
    collections::BTreeSet,
    os::fd::{BorrowedFd, OwnedFd},
};

use crate::{accounting::RawSnapshot, procfs};

/// The BTF tracepoints zctrace counts with: (program, tracepoint).
const TRACEPOINTS: &[(&str, &str)] = &[
    ("sys_exit", "sys_exit"),
    ("sched_switch", "sched_switch"),
    ("sched_process_exit", "sched_process_exit"),
    ("sched_process_exec", "sched_process_exec"),
    ("tcp_sendmsg_locked", "tcp_sendmsg_locked"),
    ("sock_send_length", "sock_send_length"),
    ("skb_copy_datagram_iovec", "skb_copy_datagram_iovec"),
];

/// Measuring instruments, attached only when asked for by name (`--probes floor`): an empty
/// program, whose cost is the kernel's own price for running any program at that hook, and the
/// least a per-process counter can do there (one hash add by tgid).
const INSTRUMENTS: &[(&str, &str)] = &[("floor", "sys_exit"), ("counting_floor", "sys_exit")];

/// Programs that observe the kernel's copy routines directly, where fexit is allowed.
const COPY_OBSERVERS: &[(&str, &str)] = &[
    ("copy_to_iter_exit", "_copy_to_iter"),
    ("copy_from_iter_exit", "_copy_from_iter"),
    ("copy_page_from_iter_atomic_exit", "copy_page_from_iter_atomic"),
];

/// Why a copy observer is unavailable when fexit was not asked for.
pub const NOT_REQUESTED: &str = "not requested";

/// The bounded maps, reported by [`Tracer::map_usage`]; their sizes are set in the eBPF crate.
pub const SIZED_MAPS: [&str; 4] = ["SYSCALLS", "PROCESSES", "OFFCPU_START", "PENDING_SEND"];

#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// Trace only this process (tgid); `None` traces every process.
    pub filter_tgid: Option<u32>,
    /// Overrides of map sizes, by map name.
    pub map_capacity: Vec<(&'static str, u32)>,
    /// Try fexit on the kernel's copy routines (falls back to the copy model when refused).
    pub observe_copies: bool,
    /// Attach only these probes (see [`probe_names`]); `None` attaches every counting probe.
    pub only: Option<Vec<String>>,
    /// (probe, tracepoint): attach a probe at another tracepoint than its own.
    pub retarget: Vec<(String, String)>,
}

impl ProbeOptions {
    fn selected(&self, probe: &str) -> bool {
        match &self.only {
            Some(only) => only.iter().any(|p| p == probe),
            None => TRACEPOINTS.iter().any(|(p, _)| *p == probe),
        }
    }

    fn hook<'a>(&'a self, probe: &str, default: &'a str) -> &'a str {
        self.retarget
            .iter()
            .find(|(p, _)| p == probe)
            .map_or(default, |(_, hook)| hook)
    }
}

/// Every probe and instrument that `--probes` can name.
pub fn probe_names() -> impl Iterator<Item = &'static str> {
    TRACEPOINTS.iter().chain(INSTRUMENTS).map(|(probe, _)| *probe)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    /// Attached as a BTF tracepoint.
    TpBtf,
    /// Attached as fexit (BPF trampoline).
    Fexit,
    /// Left out by `--probes`.
    Off,
    /// Not attached; the reason is the kernel's.
    Unavailable(String),
}

impl ProbeMode {
    pub fn is_attached(&self) -> bool {
        matches!(self, ProbeMode::TpBtf | ProbeMode::Fexit)
    }

    pub fn label(&self) -> &'static str {
        match self {
            ProbeMode::TpBtf => "tp_btf",
            ProbeMode::Fexit => "fexit",
            ProbeMode::Off => "off",
            ProbeMode::Unavailable(_) => "unavailable",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProbeStatus {
    pub probe: &'static str,
    pub hook: String,
    pub mode: ProbeMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

pub struct Tracer {
    ebpf: Ebpf,
    statuses: Vec<ProbeStatus>,
    /// The bounded maps, in [`SIZED_MAPS`] order.
    bounded: Vec<BoundedMap>,
}

impl Tracer {
    /// Loads the programs and attaches every probe the kernel allows. A probe that fails is
    /// reported in [`Tracer::statuses`] and the others keep working; the load fails only when no
    /// counting probe attached at all.
    pub fn load(options: &ProbeOptions) -> Result<Tracer> {
        let mut ebpf = load_programs(options)?;
        let btf = Btf::from_sys_fs().context("loading kernel BTF for BTF tracepoints")?;
        let mut statuses = attach_tracepoints(&mut ebpf, options, &btf);
        if !statuses.iter().any(|s| s.mode.is_attached()) {
            let reasons: Vec<String> = statuses
                .iter()
                .map(|s| format!("{}: {:?}", s.probe, s.mode))
                .collect();
            anyhow::bail!(
                "{}",
                privilege_hint(&format!("no probe attached ({})", reasons.join("; ")))
            );
        }
        statuses.extend(attach_copy_observers(&mut ebpf, options, &btf));
        drop(btf);
        // Parsing BTF leaves ~20 MiB of freed heap behind; hand it back to the system.
        // SAFETY: malloc_trim only releases free memory.
        unsafe { libc::malloc_trim(0) };
        let bounded = bounded_maps(&ebpf)?;
        Ok(Tracer {
            ebpf,
            statuses,
            bounded,
        })
    }

    pub fn statuses(&self) -> &[ProbeStatus] {
        &self.statuses
    }

    /// True when every copy routine is observed, so CPU copies are measured rather than modelled.
    pub fn copies_observed(&self) -> bool {
        self.statuses
            .iter()
            .filter(|s| COPY_OBSERVERS.iter().any(|(p, _)| *p == s.probe))
            .all(|s| s.mode == ProbeMode::Fexit)
    }

    pub fn snapshot(&self) -> Result<RawSnapshot> {
        let errors: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map("MAP_UPDATE_ERRORS")?)?;
        let mut update_errors = [0u64; MAP_SLOTS as usize];
        for (slot, total) in update_errors.iter_mut().enumerate() {
            *total = errors.get(&(slot as u32), 0)?.iter().sum();
        }
        Ok(RawSnapshot {
            syscalls: self.read_all(MapSlot::Syscalls)?,
            processes: self.read_all(MapSlot::Processes)?,
            update_errors,
        })
    }

    /// Frees the entries of the snapshot's processes that have exited (fold their counts in from
    /// `snapshot` first) and returns their keys. The kernel marks exits; `check_proc` also asks
    /// `/proc` about the rest, which catches exits the probes could not mark.
    pub fn forget_exited(&mut self, snapshot: &RawSnapshot, check_proc: bool) -> Result<Vec<ProcessKey>> {
        let marked = snapshot
            .processes
            .iter()
            .filter(|(_, stats)| stats.exited != 0)
            .map(|(key, _)| *key);
        let unmarked = snapshot
            .processes
            .iter()
            .filter(|(_, stats)| stats.exited == 0)
            .map(|(key, _)| *key)
            .chain(snapshot.syscalls.iter().map(|(key, _)| key.process));
        let gone: BTreeSet<ProcessKey> = marked
            .chain(unmarked.filter(|key| check_proc && !procfs::is_alive(key)))
            .collect();
        let mut syscalls: HashMap<_, SyscallKey, SyscallStats> =
            HashMap::try_from(self.ebpf.map_mut("SYSCALLS").context("SYSCALLS map missing")?)?;
        for (key, _) in snapshot
            .syscalls
            .iter()
            .filter(|(key, _)| gone.contains(&key.process))
        {
            let _ = syscalls.remove(key);
        }
        let mut processes: HashMap<_, ProcessKey, ProcessStats> =
            HashMap::try_from(self.ebpf.map_mut("PROCESSES").context("PROCESSES map missing")?)?;
        for key in &gone {
            let _ = processes.remove(key);
        }
        Ok(gone.into_iter().collect())
    }

    /// Entries and capacity of each bounded map.
    pub fn map_usage(&self, snapshot: &RawSnapshot) -> Result<Vec<MapUsage>> {
        // The snapshot has just walked SYSCALLS and PROCESSES; only the per-thread maps need a walk.
        let entries = [
            snapshot.syscalls.len(),
            snapshot.processes.len(),
            self.read_all::<u32, u64>(MapSlot::OffcpuStart)?.len(),
            self.read_all::<u64, [u32; 2]>(MapSlot::PendingSend)?.len(),
        ];
        Ok(SIZED_MAPS
            .iter()
            .zip(entries)
            .zip(&self.bounded)
            .map(|((&map, entries), bounded)| MapUsage {
                map,
                entries: entries as u64,
                capacity: bounded.capacity,
            })
            .collect())
    }

    /// Every entry of one of the [`SIZED_MAPS`], whose slot is also its index there.
    fn read_all<K: aya::Pod, V: aya::Pod>(&self, map: MapSlot) -> Result<Vec<(K, V)>> {
        let index = map as usize;
        batch::lookup_all(&self.bounded[index].fd)
            .with_context(|| format!("reading the {} map", SIZED_MAPS[index]))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("{name} map missing from the eBPF object"))
    }
}

/// Creates the maps and parses the programs, with the kernel's offsets and the options filled in.
fn load_programs(options: &ProbeOptions) -> Result<Ebpf> {
    let offsets = offsets::resolve(&offsets::kernel_btf()?)?;
    let config = ProbeConfig {
        filter_tgid: options.filter_tgid.unwrap_or(0),
        reserved: 0,
    };
    let mut loader = EbpfLoader::new();
    // The loader parses the kernel's BTF for CO-RE, which these programs do not use (offsets come
    // from OFFSETS): drop that copy before parsing the one attaching needs, so two never coexist
    // (about 20 MiB each).
    loader
        .btf(None)
        .override_global("OFFSETS", &offsets, true)
        .override_global("CONFIG", &config, true);
    for (map, capacity) in &options.map_capacity {
        loader.map_max_entries(map, *capacity);
    }
    loader
        .load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zctrace")))
        .context(privilege_hint("loading zctrace's eBPF programs"))
}

/// Attaches the selected counting probes and instruments; a failure is a status, not an error.
fn attach_tracepoints(ebpf: &mut Ebpf, options: &ProbeOptions, btf: &Btf) -> Vec<ProbeStatus> {
    let mut statuses = Vec::new();
    for &(probe, hook) in TRACEPOINTS.iter().chain(INSTRUMENTS) {
        let is_instrument = INSTRUMENTS.iter().any(|(p, _)| *p == probe);
        let hook = options.hook(probe, hook).to_string();
        let mode = match options.selected(probe) {
            false if is_instrument => continue,
            false => ProbeMode::Off,
            true => match attach_tracepoint(ebpf, probe, &hook, btf) {
                Ok(()) => ProbeMode::TpBtf,
                Err(e) => ProbeMode::Unavailable(format!("{e:#}")),
            },
        };
        statuses.push(ProbeStatus { probe, hook, mode });
    }
    statuses
}

fn attach_copy_observers(ebpf: &mut Ebpf, options: &ProbeOptions, btf: &Btf) -> Vec<ProbeStatus> {
    COPY_OBSERVERS
        .iter()
        .map(|&(probe, hook)| {
            let mode = if !options.observe_copies {
                ProbeMode::Unavailable(NOT_REQUESTED.into())
            } else {
                match attach_fexit(ebpf, probe, hook, btf) {
                    Ok(()) => ProbeMode::Fexit,
                    Err(e) => ProbeMode::Unavailable(format!("{e:#}")),
                }
            };
            ProbeStatus {
                probe,
                hook: hook.to_string(),
                mode,
            }
        })
        .collect()
}

/// A bounded map: a descriptor of our own for batch reads, and its capacity, read once.
struct BoundedMap {
    fd: OwnedFd,
    capacity: u64,
}

/// The [`SIZED_MAPS`], their descriptors found through /proc/self/fdinfo by map id: aya keeps
/// its descriptors private, and asking the kernel by id would need CAP_SYS_ADMIN.
fn bounded_maps(ebpf: &Ebpf) -> Result<Vec<BoundedMap>> {
    let mut wanted = Vec::new();
    for name in SIZED_MAPS {
        let Some(aya::maps::Map::HashMap(data)) = ebpf.map(name) else {
            anyhow::bail!("{name} is missing or not a hash map");
        };
        let info = data.info()?;
        wanted.push((name, format!("map_id:\t{}", info.id()), info.max_entries() as u64));
    }
    let mut found: Vec<Option<OwnedFd>> = wanted.iter().map(|_| None).collect();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        if let Some(index) = wanted.iter().position(|(_, id, _)| info.lines().any(|l| l == id)) {
            // SAFETY: the descriptor is open (aya holds it) for as long as the borrow is used.
            found[index] = Some(unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?);
        }
    }
    wanted
        .into_iter()
        .zip(found)
        .map(|((name, _, capacity), fd)| {
            let fd = fd.with_context(|| format!("no descriptor of the {name} map in /proc/self/fdinfo"))?;
            Ok(BoundedMap { fd, capacity })
        })
        .collect()
}

fn attach_tracepoint(ebpf: &mut Ebpf, probe: &str, hook: &str, btf: &Btf) -> Result<()> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(probe)
        .with_context(|| format!("program {probe} missing"))?
        .try_into()?;
    program.load(hook, btf)?;
    program.attach()?;
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, probe: &str, hook: &str, btf: &Btf) -> Result<()> {
    let program: &mut FExit = ebpf
        .program_mut(probe)
        .with_context(|| format!("program {probe} missing"))?
        .try_into()?;
    program.load(hook, btf)?;
    program.attach()?;
    Ok(())
}

/// Adds what to do about the usual cause of a load failure: missing privileges.
fn privilege_hint(what: &str) -> String {
    if nix_is_root() {
        what.to_string()
    } else {
        format!("{what}: zctrace needs root, or CAP_BPF and CAP_PERFMON (run it with sudo)")
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Which [`MapSlot`] an error counter is, as a metric label.
pub fn slot_label(slot: usize) -> &'static str {
    match slot {
        s if s == MapSlot::Syscalls as usize => "SYSCALLS",
        s if s == MapSlot::Processes as usize => "PROCESSES",
        s if s == MapSlot::OffcpuStart as usize => "OFFCPU_START",
        s if s == MapSlot::PendingSend as usize => "PENDING_SEND",
        _ => "MMSG_TRUNCATED",
    }
}
