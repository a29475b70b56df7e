//! Loading and attaching the eBPF programs, each probe in the best way the running kernel offers,
//! reporting which way that was (or why none worked), and reading the maps.
pub mod args;
mod batch;
pub mod btf;
pub mod catalog;
mod missed;
mod preemption;
pub mod privileges;
mod tracefs;

use std::{
    collections::{BTreeSet, HashSet},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::Mutex,
};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{HashMap, PerCpuArray, StackTraceMap},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use catalog::{Hook, Probe, Program, COPIER_PROBES, PROBES};
pub use catalog::{Mode, Role};
use zctrace_common::{
    Copier, CopyStackCounts, CopyStackKey, KernelOffsets, MapSlot, PendingSend, ProbeConfig, ProcessKey,
    ProcessStats, SocketKindCache, StackKey, StackMode, SyscallKey, SyscallStats, ThreadSwitches, MAP_SLOTS,
    SAMPLE_GAPS, SOCKET_KIND_CACHE_COUNTS, SOCKET_KIND_SLOTS,
};

use crate::{
    accounting::{RawSnapshot, SwitchFloor},
    procfs,
};

#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// Trace only this process (tgid); `None` traces every process.
    pub filter_tgid: Option<u32>,
    /// Overrides of map sizes, by map name.
    pub map_capacity: Vec<(&'static str, u32)>,
    /// Attach only these probes (see [`probe_names`]); `None` attaches every counting probe and
    /// copy observer.
    pub only: Option<Vec<String>>,
    /// (probe, target): attach a probe's programs to another tracepoint or function.
    pub retarget: Vec<(String, String)>,
    /// Modes not to try, as if the kernel refused them: shows the next way down each chain on
    /// kernels that have the better one.
    pub without: Vec<Mode>,
    /// The stacks `attach --stacks` records; `None` records none.
    pub stacks: Option<StackMode>,
    /// With stacks: take one about once per this many bytes (see `stacks::sampling`); `None`
    /// takes every call's and copy's.
    pub sample_period: Option<u64>,
    /// Count the bytes each thread sends from the buffer its last read filled (what an I/O
    /// style is decided from), at a hash lookup per one-buffer read or send.
    pub relay_evidence: bool,
}

impl ProbeOptions {
    /// Slots of the socket kind cache: its `map_capacity` override, which must be a power of two
    /// (the programs mask inode numbers with it), or the default.
    fn socket_kind_slots(&self) -> Result<u32> {
        let Some(&(_, slots)) = self.map_capacity.iter().find(|(map, _)| *map == "SOCKET_KINDS") else {
            return Ok(SOCKET_KIND_SLOTS);
        };
        anyhow::ensure!(
            slots.is_power_of_two(),
            "SOCKET_KINDS needs a power of two slots, not {slots}"
        );
        Ok(slots)
    }
}

/// Distinct stacks `attach --stacks` keeps (about 1 KiB of kernel memory each), and sites (a
/// stack with one mechanism or copier) it counts; past either, calls are counted as drops.
pub const STACK_CAPACITY: u32 = 4096;
pub const STACK_SITE_CAPACITY: u32 = 16384;

impl ProbeOptions {
    fn selected(&self, probe: &Probe) -> bool {
        match &self.only {
            Some(only) => only.iter().any(|p| p == probe.name),
            None => probe.role.by_default(),
        }
    }

    /// Where `program` attaches here: the retargeted hook, else the first of its names the
    /// kernel's BTF has.
    fn target<'a>(&'a self, probe: &str, program: &'a Program, kernel: &btf_rs::Btf) -> &'a str {
        if let Some((_, target)) = self.retarget.iter().find(|(p, _)| p == probe) {
            return target;
        }
        program
            .aliases
            .iter()
            .copied()
            .find(|alias| {
                btf::function_params(kernel, program.target).is_none()
                    && btf::function_params(kernel, alias).is_some()
            })
            .unwrap_or(program.target)
    }
}

/// Every probe and instrument that `--probes` can name.
pub fn probe_names() -> impl Iterator<Item = &'static str> {
    PROBES.iter().map(|probe| probe.name)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    Attached(Mode),
    /// Left out by `--probes`.
    Off,
    /// No way attached; the kernel's reason for each way tried.
    Unavailable(String),
}

impl ProbeMode {
    pub fn is_attached(&self) -> bool {
        matches!(self, ProbeMode::Attached(_))
    }

    pub fn label(&self) -> &'static str {
        match self {
            ProbeMode::Attached(mode) => mode.label(),
            ProbeMode::Off => "off",
            ProbeMode::Unavailable(_) => "unavailable",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProbeStatus {
    pub probe: &'static str,
    pub role: Role,
    /// What the attached way hooks (or the best way would have), comma-separated.
    pub hooks: String,
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
    /// The bounded maps, in [`MapSlot::SIZED`] order.
    bounded: Vec<BoundedMap>,
    switch_floor: Mutex<SwitchFloor>,
    /// Whether a kernel stack taken at a kretprobe reaches past the kretprobe's trampoline: the
    /// unwinders learned to in 5.15 (through `kretprobe_find_ret_addr`, or `rethook_find_ret_addr`
    /// where kretprobes run on rethook).
    kretprobe_stacks: bool,
    /// Whether a copy hook can read the task's user registers (`bpf_task_pt_regs`, 5.15), for
    /// the caller a frameless leaf hides from its user stack.
    copy_site_callers: bool,
    socket_kind_slots: u32,
}

impl Tracer {
    /// Loads the programs and attaches every selected probe in the best way the kernel allows.
    /// A probe that cannot attach is reported in [`Tracer::statuses`] and the others keep
    /// working; the load fails only when no selected probe attached at all.
    pub fn load(options: &ProbeOptions) -> Result<Tracer> {
        let kernel = btf::kernel_btf()?;
        let socket_kind_slots = options.socket_kind_slots()?;
        let offsets = btf::resolve(&kernel)?;
        let copy_site_callers = offsets.task_regs_typed != 0;
        let mut ebpf = load_programs(options, &offsets, socket_kind_slots)?;
        let btf = Btf::from_sys_fs().context("loading kernel BTF for BTF tracepoints")?;
        let preemptible = asks_about_preemption(options) && runs_preemptibly(&mut ebpf, &btf);
        let statuses = attach_probes(&mut ebpf, options, &btf, &kernel, preemptible);
        // Only `attach --stacks` asks; the daemon's start-up need not search BTF for it.
        let kretprobe_stacks = options.stacks.is_none()
            || ["kretprobe_find_ret_addr", "rethook_find_ret_addr"]
                .iter()
                .any(|f| btf::function_params(&kernel, f).is_some());
        if !statuses.iter().any(|s| s.mode.is_attached()) {
            let reasons: Vec<String> = statuses
                .iter()
                .filter(|s| s.mode != ProbeMode::Off)
                .map(|s| format!("{}: {:?}", s.probe, s.mode))
                .collect();
            anyhow::bail!(
                "{}",
                privilege_hint(&format!("no probe attached ({})", reasons.join("; ")))
            );
        }
        drop((btf, kernel));
        // Parsing BTF leaves ~20 MiB of freed heap behind; hand it back to the system.
        give_back_freed_memory();
        let bounded = bounded_maps(&ebpf)?;
        Ok(Tracer {
            ebpf,
            statuses,
            bounded,
            switch_floor: Mutex::default(),
            kretprobe_stacks,
            copy_site_callers,
            socket_kind_slots,
        })
    }

    pub fn statuses(&self) -> &[ProbeStatus] {
        &self.statuses
    }

    /// True when every copy routine is observed, so the observed CPU copies are complete.
    pub fn copies_observed(&self) -> bool {
        self.statuses
            .iter()
            .filter(|s| s.role == Role::CopyObserver)
            .all(|s| s.mode.is_attached())
    }

    /// Copiers whose probe did not attach: their copies go unobserved, so they have no stacks.
    pub fn unobserved_copiers(&self) -> Vec<Copier> {
        COPIER_PROBES
            .into_iter()
            .filter(|(probe, _)| {
                !self
                    .statuses
                    .iter()
                    .any(|s| s.probe == *probe && s.mode.is_attached())
            })
            .map(|(_, copier)| copier)
            .collect()
    }

    /// Whether copy sites' user stacks get the caller a frameless leaf hides, as call sites' do.
    pub fn copy_site_callers(&self) -> bool {
        self.copy_site_callers
    }

    /// Copiers observed at a kretprobe on a kernel that cannot unwind a kernel stack from there:
    /// their copies are counted, their kernel stacks are not recorded.
    pub fn copiers_without_kernel_stacks(&self) -> Vec<Copier> {
        if self.kretprobe_stacks {
            return Vec::new();
        }
        COPIER_PROBES
            .into_iter()
            .filter(|(probe, _)| {
                self.statuses.iter().any(|s| {
                    s.probe == *probe
                        && s.mode == ProbeMode::Attached(Mode::Kprobe)
                        && counts_at_kretprobe(probe)
                })
            })
            .map(|(_, copier)| copier)
            .collect()
    }

    /// Failed updates so far, summed over CPUs, indexed by [`MapSlot`].
    pub fn update_errors(&self) -> Result<[u64; MAP_SLOTS as usize]> {
        self.per_cpu_totals("MAP_UPDATE_ERRORS")
    }

    /// The socket kind cache's counts so far, summed over CPUs, indexed by [`SocketKindCache`].
    pub fn socket_kind_cache(&self) -> Result<[u64; SOCKET_KIND_CACHE_COUNTS as usize]> {
        self.per_cpu_totals("SOCKET_KIND_CACHE")
    }

    /// Each slot of a per-CPU array of counters, summed over CPUs.
    fn per_cpu_totals<const SLOTS: usize>(&self, map: &str) -> Result<[u64; SLOTS]> {
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(map)?)?;
        let mut totals = [0u64; SLOTS];
        for (slot, total) in (0u32..).zip(totals.iter_mut()) {
            *total = counts.get(&slot, 0)?.iter().sum();
        }
        Ok(totals)
    }

    /// Runs the kernel skipped, by program, where the kernel counts them.
    pub fn missed_runs(&self) -> Result<Vec<(String, u64)>> {
        let mut missed = Vec::new();
        for (name, program) in self.ebpf.programs() {
            let Ok(fd) = program.fd() else { continue };
            if let Some(runs) = missed::recursion_misses(fd.as_fd())? {
                missed.push((name.to_string(), runs));
            }
        }
        Ok(missed)
    }

    pub fn snapshot(&self) -> Result<RawSnapshot> {
        let update_errors = self.update_errors()?;
        // Processes before threads: a thread folded in between is missed this once, never
        // counted twice, and the switch floor holds its figures where the last read left them.
        let processes = self.read_all(MapSlot::Processes)?;
        let mut snapshot = RawSnapshot::read(
            self.read_all(MapSlot::Syscalls)?,
            processes,
            self.read_all(MapSlot::Threads)?,
            update_errors,
        );
        self.switch_floor
            .lock()
            .expect("switch floor")
            .hold(&mut snapshot.processes);
        Ok(snapshot)
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
        // Threads whose exit went unseen (sched_process_exit off) would otherwise stay.
        let mut threads: HashMap<_, u32, ThreadSwitches> =
            HashMap::try_from(self.ebpf.map_mut("THREADS").context("THREADS map missing")?)?;
        for (tid, _) in snapshot.threads.iter().filter(|(_, t)| gone.contains(&t.process)) {
            let _ = threads.remove(tid);
        }
        Ok(gone.into_iter().collect())
    }

    /// Entries and capacity of each bounded map.
    pub fn map_usage(&self, snapshot: &RawSnapshot) -> Result<Vec<MapUsage>> {
        // The snapshot has just walked SYSCALLS, PROCESSES and THREADS; the pending maps need a walk.
        let entries = [
            snapshot.syscalls.len(),
            snapshot.processes.len(),
            snapshot.threads.len(),
            self.read_all::<u64, PendingSend>(MapSlot::PendingSend)?.len(),
            self.read_all::<u64, i64>(MapSlot::PendingCopy)?.len(),
        ];
        let socket_kinds = MapUsage {
            map: "SOCKET_KINDS",
            // Two CPUs may fill one empty slot at once, each counting it.
            entries: self.socket_kind_cache()?[SocketKindCache::Fills as usize]
                .min(self.socket_kind_slots.into()),
            capacity: self.socket_kind_slots.into(),
        };
        Ok(MapSlot::SIZED
            .iter()
            .zip(entries)
            .zip(&self.bounded)
            .map(|((slot, entries), bounded)| MapUsage {
                map: slot.name(),
                entries: entries as u64,
                capacity: bounded.capacity,
            })
            .chain([socket_kinds])
            .collect())
    }

    /// Every entry of one of the [`MapSlot::SIZED`] maps, whose slot is also its index there.
    fn read_all<K: aya::Pod, V: aya::Pod>(&self, map: MapSlot) -> Result<Vec<(K, V)>> {
        batch::lookup_all(&self.bounded[map as usize].fd)
            .with_context(|| format!("reading the {} map", map.name()))
    }

    /// The call sites `attach --stacks` recorded: each one's counts, and its user stack's
    /// addresses, leaf first (none when the stack could not be recorded).
    pub fn stack_sites(&self) -> Result<Vec<(StackKey, SyscallStats, Vec<u64>)>> {
        self.call_sites()?
            .into_iter()
            .map(|(key, stats)| Ok((key, stats, self.stack(key.user_stack)?)))
            .collect()
    }

    /// The call sites `attach --stacks` recorded, with their counts and without their stacks.
    pub fn call_sites(&self) -> Result<Vec<(StackKey, SyscallStats)>> {
        self.read_hash_map(CALL_SITES)
    }

    /// A recorded stack's addresses, leaf first; none for [`zctrace_common::NO_STACK`] or a
    /// stack the map no longer holds.
    pub fn stack(&self, id: i32) -> Result<Vec<u64>> {
        let stacks = StackTraceMap::try_from(self.map("STACKS")?)?;
        Ok(u32::try_from(id)
            .ok()
            .and_then(|id| stacks.get(&id, 0).ok())
            .map(|trace| trace.frames().iter().map(|frame| frame.ip).collect())
            .unwrap_or_default())
    }

    /// Every entry of the hash map `name`, read in batches.
    fn read_hash_map<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<Vec<(K, V)>> {
        let aya::maps::Map::HashMap(map) = self.map(name)? else {
            return Err(anyhow!("{name} is not a hash map"));
        };
        batch::lookup_all(map.fd()).with_context(|| format!("reading the {name} map"))
    }

    /// Removes the call sites `calls` and copy sites `copies` from the kernel's maps, and the
    /// stacks no other site uses.
    pub fn forget_stack_sites(&mut self, calls: &[StackKey], copies: &[CopyStackKey]) -> Result<()> {
        // Every sweep asks; most have nothing to forget, and no map need be walked for that.
        if calls.is_empty() && copies.is_empty() {
            return Ok(());
        }
        let mut kept = self.forget_sites::<_, SyscallStats>(CALL_SITES, calls, call_site_stacks)?;
        kept.extend(self.forget_sites::<_, CopyStackCounts>(COPY_SITES, copies, copy_site_stacks)?);
        let forgotten: Vec<i32> = calls
            .iter()
            .flat_map(call_site_stacks)
            .chain(copies.iter().flat_map(copy_site_stacks))
            .filter(|id| !kept.contains(id))
            .collect();
        let mut stacks = StackTraceMap::try_from(self.ebpf.map_mut("STACKS").context("STACKS map missing")?)?;
        for id in forgotten {
            if let Ok(id) = u32::try_from(id) {
                let _ = stacks.remove(&id);
            }
        }
        Ok(())
    }

    /// Removes `keys` from the site map `name`; the stack ids its other sites still use.
    fn forget_sites<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
        keys: &[K],
        stacks_of: fn(&K) -> Vec<i32>,
    ) -> Result<HashSet<i32>> {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("{name} map missing"))?;
        let mut counts: HashMap<_, K, V> = HashMap::try_from(map)?;
        for key in keys {
            let _ = counts.remove(key);
        }
        Ok(counts
            .keys()
            .filter_map(Result::ok)
            .flat_map(|k| stacks_of(&k))
            .collect())
    }

    /// The copies `attach --stacks kernel|both` saw, by site.
    pub fn copy_stack_sites(&self) -> Result<Vec<CopyStackSite>> {
        self.copy_sites()?
            .into_iter()
            .map(|(key, copies)| self.copy_stack_site(key, copies))
            .collect()
    }

    /// The copy site `key`, with its counts and its stacks' addresses.
    pub fn copy_stack_site(&self, key: CopyStackKey, copies: CopyStackCounts) -> Result<CopyStackSite> {
        Ok(CopyStackSite {
            kernel: self.stack(key.kernel_stack)?,
            user: self.stack(key.user_stack)?,
            key,
            copies,
        })
    }

    /// The copy sites `attach --stacks kernel|both` saw, with their counts and without their
    /// stacks.
    pub fn copy_sites(&self) -> Result<Vec<(CopyStackKey, CopyStackCounts)>> {
        self.read_hash_map(COPY_SITES)
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("{name} map missing from the eBPF object"))
    }
}

/// Whether `probe`'s kprobe way counts at a function's return.
fn counts_at_kretprobe(probe: &str) -> bool {
    catalog::probe(probe).is_some_and(|p| {
        p.ways
            .iter()
            .filter(|w| w.mode == Mode::Kprobe)
            .any(|w| w.programs.iter().any(|prog| prog.hook == Hook::Kretprobe))
    })
}

/// One copy site's counts, and its kernel and user stacks' addresses, leaf first (none when not
/// recorded).
pub struct CopyStackSite {
    pub key: CopyStackKey,
    pub copies: CopyStackCounts,
    pub kernel: Vec<u64>,
    pub user: Vec<u64>,
}

/// Creates the maps and parses the programs, with the kernel's offsets and the options filled in.
fn load_programs(options: &ProbeOptions, offsets: &KernelOffsets, socket_kind_slots: u32) -> Result<Ebpf> {
    let config = ProbeConfig {
        filter_tgid: options.filter_tgid.unwrap_or(0),
        record_stacks: options.stacks.map_or(0, |mode| mode as u32),
        relay_evidence: options.relay_evidence as u32,
        socket_kind_slots,
        sample_period: options.sample_period.unwrap_or(0),
    };
    let mut loader = EbpfLoader::new();
    // The loader parses the kernel's BTF for CO-RE, which these programs do not use (offsets come
    // from OFFSETS): drop that copy before parsing the one attaching needs, so two never coexist
    // (about 20 MiB each).
    loader
        .btf(None)
        .override_global("OFFSETS", offsets, true)
        .override_global("CONFIG", &config, true);
    if let Some(mode) = options.stacks {
        let sites: &[&str] = match mode {
            StackMode::User => &[CALL_SITES],
            StackMode::Kernel | StackMode::Both => &[COPY_SITES],
            StackMode::Profiles => &[CALL_SITES, COPY_SITES],
        };
        loader.map_max_entries("STACKS", STACK_CAPACITY);
        for map in sites {
            loader.map_max_entries(map, STACK_SITE_CAPACITY);
        }
    }
    if options.sample_period.is_some() {
        loader.map_max_entries(SAMPLE_GAP_MAP, SAMPLE_GAPS);
    }
    for (map, capacity) in &options.map_capacity {
        loader.map_max_entries(map, *capacity);
    }
    let mut ebpf = loader
        .load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zctrace")))
        .context(privilege_hint("loading zctrace's eBPF programs"))?;
    if let Some(period) = options.sample_period {
        fill_sampling_gaps(&mut ebpf, period)?;
    }
    Ok(ebpf)
}

/// The ids in `STACKS` of a call site's user stack, and of a copy site's kernel and user stacks.
fn call_site_stacks(key: &StackKey) -> Vec<i32> {
    vec![key.user_stack]
}

fn copy_site_stacks(key: &CopyStackKey) -> Vec<i32> {
    vec![key.kernel_stack, key.user_stack]
}

/// The maps of call sites (user stacks of data-path calls) and copy sites (stacks of observed
/// copies).
const CALL_SITES: &str = "STACK_COUNTS";
const COPY_SITES: &str = "COPY_STACK_COUNTS";

/// The map the programs draw gaps between sampling points from.
const SAMPLE_GAP_MAP: &str = "SAMPLE_GAP_QUANTILES";

/// Gives the programs their gaps before any is attached, so the first draw is from them too.
fn fill_sampling_gaps(ebpf: &mut Ebpf, period: u64) -> Result<()> {
    let mut gaps: aya::maps::Array<_, u64> = ebpf
        .map_mut(SAMPLE_GAP_MAP)
        .context("the eBPF object has no sampling gap map")?
        .try_into()?;
    for (index, gap) in (0..).zip(crate::stacks::sampling::gaps(period)) {
        gaps.set(index, gap, 0)?;
    }
    Ok(())
}

/// Whether a selected probe has a way the kernel never preempts to prefer where it would.
fn asks_about_preemption(options: &ProbeOptions) -> bool {
    PROBES
        .iter()
        .filter(|probe| options.selected(probe))
        .any(|probe| probe.ways.iter().any(|way| way.never_preempted()))
}

/// Asks the kernel; a kernel that cannot answer is taken to run programs unpreempted, as every
/// kernel before 7.x did, and the skips the kernel counts would still show.
fn runs_preemptibly(ebpf: &mut Ebpf, btf: &Btf) -> bool {
    match preemption::sys_exit_runs_preemptibly(ebpf, btf) {
        Ok(preemptible) => {
            if preemptible {
                tracing::info!("the kernel runs sys_exit's programs preemptibly: sys_exit moves to the classic tracepoint");
            }
            preemptible
        }
        Err(e) => {
            tracing::warn!("could not ask whether the kernel runs sys_exit's programs preemptibly: {e:#}");
            false
        }
    }
}

/// Attaches each selected probe; a probe no way attaches is a status, not an error.
fn attach_probes(
    ebpf: &mut Ebpf,
    options: &ProbeOptions,
    btf: &Btf,
    kernel: &btf_rs::Btf,
    preemptible: bool,
) -> Vec<ProbeStatus> {
    PROBES
        .iter()
        .filter_map(|probe| {
            let selected = options.selected(probe);
            if !selected && !probe.role.by_default() {
                return None;
            }
            let mut status = ProbeStatus {
                probe: probe.name,
                role: probe.role,
                hooks: hooks(options, probe, &probe.ways[0], kernel),
                mode: ProbeMode::Off,
            };
            if selected {
                status.mode = attach_probe(
                    ebpf,
                    options,
                    probe,
                    (btf, kernel),
                    preemptible,
                    &mut status.hooks,
                );
            }
            Some(status)
        })
        .collect()
}

/// Tries each way of `probe` in turn; the first that attaches wins, and `hooks` says what it hooks.
fn attach_probe(
    ebpf: &mut Ebpf,
    options: &ProbeOptions,
    probe: &Probe,
    (btf, kernel): (&Btf, &btf_rs::Btf),
    preemptible: bool,
    hooks_out: &mut String,
) -> ProbeMode {
    let mut refusals = Vec::new();
    for way in ways_in_order(probe, preemptible) {
        let attached = if options.without.contains(&way.mode) {
            Err(anyhow!("left out by --probe.without"))
        } else {
            attach_way(ebpf, options, probe, way, btf, kernel)
        };
        match attached {
            Ok(()) => {
                *hooks_out = hooks(options, probe, way, kernel);
                return ProbeMode::Attached(way.mode);
            }
            Err(e) => refusals.push(format!("{}: {e:#}", way.mode.label())),
        }
    }
    ProbeMode::Unavailable(refusals.join("; "))
}

/// `probe`'s ways best first: where the kernel runs programs preemptibly, a way it never
/// preempts comes first, and the others, in their order, are the fallback.
fn ways_in_order(probe: &Probe, preemptible: bool) -> Vec<&'static catalog::Way> {
    let mut ways: Vec<&catalog::Way> = probe.ways.iter().collect();
    if preemptible {
        ways.sort_by_key(|way| !way.never_preempted());
    }
    ways
}

/// The programs of `way` this kernel needs: optional ones only where BTF has their function.
fn programs_here<'a>(
    options: &'a ProbeOptions,
    probe: &'a Probe,
    way: &'a catalog::Way,
    kernel: &'a btf_rs::Btf,
) -> impl Iterator<Item = (&'static Program, &'a str)> + 'a {
    way.programs
        .iter()
        .map(move |program| (program, options.target(probe.name, program, kernel)))
        .filter(|(program, target)| !program.optional || btf::function_params(kernel, target).is_some())
}

fn hooks(options: &ProbeOptions, probe: &Probe, way: &catalog::Way, kernel: &btf_rs::Btf) -> String {
    let mut targets: Vec<&str> = programs_here(options, probe, way, kernel)
        .map(|(_, t)| t)
        .collect();
    targets.dedup();
    targets.join(",")
}

/// Attaches every program of `way`, or none: a failure unloads what this way already attached.
fn attach_way(
    ebpf: &mut Ebpf,
    options: &ProbeOptions,
    probe: &Probe,
    way: &catalog::Way,
    btf: &Btf,
    kernel: &btf_rs::Btf,
) -> Result<()> {
    let mut attached = Vec::new();
    for (program, target) in programs_here(options, probe, way, kernel) {
        let result =
            check_params(kernel, program, target).and_then(|()| attach_program(ebpf, program, target, btf));
        if let Err(e) = result {
            for name in attached {
                unload(ebpf, name);
            }
            return Err(e.context(target.to_string()));
        }
        attached.push(program.name);
    }
    Ok(())
}

/// Refuses a function whose parameters differ from what the program reads (another kernel's
/// signature), rather than letting it read the wrong argument.
fn check_params(kernel: &btf_rs::Btf, program: &Program, target: &str) -> Result<()> {
    let Some(expected) = program.params else {
        return Ok(());
    };
    let found = match program.hook {
        Hook::TpBtf => btf::tracepoint_args(kernel, target),
        _ => btf::function_params(kernel, target),
    };
    match found {
        None => Err(anyhow!("the kernel's BTF has no {target}")),
        Some(found) if found != expected => Err(anyhow!(
            "{target} has {found} parameters on this kernel, {} reads {expected}",
            program.name
        )),
        Some(_) => Ok(()),
    }
}

fn attach_program(ebpf: &mut Ebpf, program: &Program, target: &str, btf: &Btf) -> Result<()> {
    let loaded = ebpf
        .program_mut(program.name)
        .with_context(|| format!("program {} missing", program.name))?;
    let attached = match program.hook {
        Hook::TpBtf => {
            let p: &mut BtfTracePoint = loaded.try_into()?;
            p.load(target, btf).and_then(|()| p.attach().map(drop))
        }
        Hook::Fentry => {
            let p: &mut FEntry = loaded.try_into()?;
            p.load(target, btf).and_then(|()| p.attach().map(drop))
        }
        Hook::Fexit => {
            let p: &mut FExit = loaded.try_into()?;
            p.load(target, btf).and_then(|()| p.attach().map(drop))
        }
        Hook::Kprobe | Hook::Kretprobe => {
            let p: &mut KProbe = loaded.try_into()?;
            p.load().and_then(|()| p.attach(target, 0).map(drop))
        }
        Hook::Tracepoint => {
            let (category, name) = target
                .split_once('/')
                .with_context(|| format!("{target} is not category/name"))?;
            tracefs::check_record(category, name)?;
            let p: &mut TracePoint = loaded.try_into()?;
            p.load().and_then(|()| p.attach(category, name).map(drop))
        }
    };
    if attached.is_err() {
        unload(ebpf, program.name);
    }
    Ok(attached?)
}

/// Detaches and unloads a program a failed way had attached.
fn unload(ebpf: &mut Ebpf, name: &str) {
    use aya::programs::Program as Loaded;
    let _ = match ebpf.program_mut(name) {
        Some(Loaded::BtfTracePoint(p)) => p.unload(),
        Some(Loaded::FEntry(p)) => p.unload(),
        Some(Loaded::FExit(p)) => p.unload(),
        Some(Loaded::KProbe(p)) => p.unload(),
        Some(Loaded::TracePoint(p)) => p.unload(),
        _ => Ok(()),
    };
}

/// A bounded map: a descriptor of our own for batch reads, and its capacity, read once.
struct BoundedMap {
    fd: OwnedFd,
    capacity: u64,
}

/// The [`MapSlot::SIZED`] maps, their descriptors found through /proc/self/fdinfo by map id: aya
/// keeps its descriptors private, and asking the kernel by id would need CAP_SYS_ADMIN.
fn bounded_maps(ebpf: &Ebpf) -> Result<Vec<BoundedMap>> {
    let mut wanted = Vec::new();
    for name in MapSlot::SIZED.map(MapSlot::name) {
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

/// Returns freed heap that glibc keeps in its arenas to the system. musl (the container image's
/// libc) gives freed memory back by itself and has no malloc_trim.
pub(crate) fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Adds what to do about the usual cause of a load failure: missing privileges.
fn privilege_hint(what: &str) -> String {
    match privileges::require() {
        Ok(()) => what.to_string(),
        Err(missing) => format!("{what}: {missing}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(probe: &str, preemptible: bool) -> Vec<Mode> {
        let probe = catalog::probe(probe).expect("a probe");
        ways_in_order(probe, preemptible)
            .iter()
            .map(|way| way.mode)
            .collect()
    }

    #[test]
    fn only_a_way_never_preempted_moves_ahead_where_the_kernel_preempts() {
        assert_eq!(modes("sys_exit", false), [Mode::TpBtf, Mode::Tracepoint]);
        assert_eq!(modes("sys_exit", true), [Mode::Tracepoint, Mode::TpBtf]);
        // Without such a way, the order stays the catalog's, cheapest first.
        let tcp_send = [Mode::TpBtf, Mode::Fexit, Mode::Kprobe];
        assert_eq!(modes("tcp_send", false), tcp_send);
        assert_eq!(modes("tcp_send", true), tcp_send);
    }
}
