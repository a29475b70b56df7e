//! The daemon's copy profiles (`--profiles`): every process's sampled call sites of data-path
//! syscalls, and the copies the kernel was seen making with their kernel stacks, their frames
//! named while the process lives (its mappings and files are gone after), and kept once it
//! exits, when its entries leave the kernel's maps. Served as pprof by `/debug/pprof/copies` and
//! `/debug/pprof/kernel_copies`.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use anyhow::Result;
use zctrace_common::{CopyStackKey, StackKey, SyscallStats};

use crate::{
    probes::{CopyStackSite, Tracer},
    procfs,
    stacks::{
        kallsyms::KernelSymbols,
        pprof::{ProfileKind, ProfileSample},
        symbols::{Frame, Frames, Located},
        Site, StackKind,
    },
    workload::Workload,
};

pub struct Profiles {
    /// Bytes per sampling point, on average.
    pub period: u64,
    /// Kernel names, read before the daemon dropped the right to see kernel addresses.
    kernel_symbols: Option<Arc<KernelSymbols>>,
    /// The frames of each process's sites, named while it lived.
    named: HashMap<Named, NamedFrames>,
    comms: HashMap<u32, String>,
    /// Processes whose mappings could not be read: they exited, or the daemon may not read
    /// them. No pass reads their sites' stacks again, since no pass could name them.
    unnameable: HashSet<u32>,
    /// Each process's workload, with `--workload-labels`.
    workloads: HashMap<u32, Workload>,
    /// The sites of processes that exited, at most [`RETIRED_SITES`].
    retired: Vec<ProfileSample>,
    /// Sites of exited processes past [`RETIRED_SITES`], not kept.
    pub dropped: u64,
}

/// Sites of exited processes the profiles keep: a host that starts many short-lived processes
/// would otherwise grow them without end.
pub const RETIRED_SITES: usize = 16384;

/// What a site's frame names are kept by: its process, and its stacks (a call site's user stack
/// and hidden caller, a copy site's kernel and user stacks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Named {
    Call(u32, i32, u64),
    Copy(u32, i32, i32, u64),
}

impl Named {
    fn call(key: &StackKey) -> Named {
        Named::Call(key.tgid, key.user_stack, key.caller)
    }

    fn copy(key: &CopyStackKey) -> Named {
        Named::Copy(key.tgid, key.kernel_stack, key.user_stack, key.caller)
    }

    fn tgid(&self) -> u32 {
        match *self {
            Named::Call(tgid, ..) | Named::Copy(tgid, ..) => tgid,
        }
    }
}

/// A site's user frames, and for a copy site its kernel frames, root first.
struct NamedFrames {
    user: Vec<Frame>,
    kernel: Vec<String>,
}

/// Every site the kernel's maps hold now.
struct Sites {
    calls: Vec<(StackKey, SyscallStats, Vec<u64>)>,
    copies: Vec<CopyStackSite>,
}

impl Sites {
    fn read(tracer: &Tracer) -> Result<Sites> {
        Ok(Sites {
            calls: tracer.stack_sites()?,
            copies: tracer.copy_stack_sites()?,
        })
    }
}

impl Profiles {
    pub fn new(period: u64, kernel_symbols: Option<KernelSymbols>) -> Profiles {
        Profiles {
            period,
            kernel_symbols: kernel_symbols.map(Arc::new),
            named: HashMap::new(),
            comms: HashMap::new(),
            unnameable: HashSet::new(),
            workloads: HashMap::new(),
            retired: Vec::new(),
            dropped: 0,
        }
    }

    /// The sites the kernel's maps hold that are not named yet, to be named with no lock held.
    /// Only their keys are read for the other sites: this runs every
    /// [`NAMING_INTERVAL`](super::daemon::NAMING_INTERVAL).
    pub fn unnamed(&self, tracer: &Tracer) -> Result<Unnamed> {
        let new = |named: &Named| !self.named.contains_key(named) && !self.unnameable.contains(&named.tgid());
        let mut sites = Vec::new();
        for (key, _) in tracer.call_sites()? {
            let named = Named::call(&key);
            if new(&named) {
                sites.push((named, UnnamedSite::Call(key, tracer.stack(key.user_stack)?)));
            }
        }
        for (key, copies) in tracer.copy_sites()? {
            let named = Named::copy(&key);
            if new(&named) {
                sites.push((named, UnnamedSite::Copy(tracer.copy_stack_site(key, copies)?)));
            }
        }
        Ok(Unnamed {
            sites,
            kernel_symbols: self.kernel_symbols.clone(),
        })
    }

    /// Keeps the names `naming` gave, for the sites and processes not named meanwhile.
    pub fn learn(&mut self, naming: Naming) {
        for (named, frames) in naming.frames {
            self.named.entry(named).or_insert(frames);
        }
        for (tgid, comm) in naming.comms {
            self.comms.entry(tgid).or_insert(comm);
        }
        self.unnameable.extend(naming.unnameable);
    }

    /// Moves the sites of the processes in `gone` out of the kernel's maps, into the profiles'
    /// own keeping, with the names they were given while they lived.
    pub fn collect(&mut self, tracer: &mut Tracer, gone: &HashSet<u32>) -> Result<()> {
        let sites = Sites::read(tracer)?;
        let calls: Vec<&(StackKey, SyscallStats, Vec<u64>)> = sites
            .calls
            .iter()
            .filter(|(key, ..)| gone.contains(&key.tgid))
            .collect();
        let copies: Vec<&CopyStackSite> = sites
            .copies
            .iter()
            .filter(|site| gone.contains(&site.key.tgid))
            .collect();
        let samples: Vec<ProfileSample> = calls
            .iter()
            .map(|(key, stats, _)| self.call_sample(key, stats))
            .chain(copies.iter().map(|site| self.copy_sample(site)))
            .collect();
        let (kept, dropped) = bounded(merged(
            std::mem::take(&mut self.retired).into_iter().chain(samples),
        ));
        self.retired = kept;
        self.dropped += dropped;
        let call_keys: Vec<StackKey> = calls.iter().map(|(key, ..)| *key).collect();
        let copy_keys: Vec<CopyStackKey> = copies.iter().map(|site| site.key).collect();
        tracer.forget_stack_sites(&call_keys, &copy_keys)?;
        self.named.retain(|named, _| !gone.contains(&named.tgid()));
        self.comms.retain(|tgid, _| !gone.contains(tgid));
        self.unnameable.retain(|tgid| !gone.contains(tgid));
        self.workloads.retain(|tgid, _| !gone.contains(tgid));
        Ok(())
    }

    /// The workload `tgid`'s cgroup names, for its samples' labels.
    pub fn note_workload(&mut self, tgid: u32, workload: Workload) {
        self.workloads.insert(tgid, workload);
    }

    /// Every process's sites since the daemon started.
    pub fn samples(&self, tracer: &Tracer) -> Result<Vec<ProfileSample>> {
        let sites = Sites::read(tracer)?;
        let live = sites
            .calls
            .iter()
            .map(|(key, stats, _)| self.call_sample(key, stats))
            .chain(sites.copies.iter().map(|site| self.copy_sample(site)));
        Ok(merged(self.retired.iter().cloned().chain(live)))
    }

    fn call_sample(&self, key: &StackKey, stats: &SyscallStats) -> ProfileSample {
        let (frames, located) = user_frames(self.named.get(&Named::call(key)));
        self.sample(
            key.tgid,
            ProfileKind::Calls,
            Site::new(key, stats, frames),
            located,
        )
    }

    /// A copy site's sample: its user frames above its kernel frames, as `attach --stacks both`
    /// shows them.
    fn copy_sample(&self, site: &CopyStackSite) -> ProfileSample {
        let named = self.named.get(&Named::copy(&site.key));
        let (user, located) = user_frames(named);
        let kernel = named.map_or_else(Vec::new, |named| named.kernel.clone());
        let tgid = site.key.tgid;
        let site = Site::at_copy(StackKind::Both, &site.key, &site.copies, user, kernel);
        self.sample(tgid, ProfileKind::Copies, site, located)
    }

    fn sample(
        &self,
        tgid: u32,
        kind: ProfileKind,
        site: Site,
        located: Vec<Option<Located>>,
    ) -> ProfileSample {
        ProfileSample {
            pid: tgid,
            kind,
            comm: self
                .comms
                .get(&tgid)
                .cloned()
                .unwrap_or_else(|| procfs::UNKNOWN_COMM.to_string()),
            workload: self.workloads.get(&tgid).cloned().unwrap_or_default(),
            site,
            located,
        }
    }
}

/// A site's user frame names and where each lies, root first; [`NOT_NAMED`] if it has none.
fn user_frames(named: Option<&NamedFrames>) -> (Vec<String>, Vec<Option<Located>>) {
    match named {
        Some(named) => named.user.iter().map(|f| (f.name.clone(), f.at.clone())).unzip(),
        None => (vec![NOT_NAMED.to_string()], vec![None]),
    }
}

/// Sites the kernel's maps hold, before they are named: owned, so that they are named with the
/// daemon's state unlocked.
pub struct Unnamed {
    sites: Vec<(Named, UnnamedSite)>,
    kernel_symbols: Option<Arc<KernelSymbols>>,
}

enum UnnamedSite {
    Call(StackKey, Vec<u64>),
    Copy(CopyStackSite),
}

/// What naming gave: each site's frames, and each process's comm.
pub struct Naming {
    frames: Vec<(Named, NamedFrames)>,
    comms: Vec<(u32, String)>,
    unnameable: Vec<u32>,
}

impl Unnamed {
    /// Names the sites from their processes' mappings as they are now. This reads each
    /// process's files and symbol tables: the slow part of profiling, done under no lock.
    pub fn name(self) -> Naming {
        let mut naming = Naming {
            frames: Vec::new(),
            comms: Vec::new(),
            unnameable: Vec::new(),
        };
        // Every process's mappings and files first, before naming any: naming a big binary's
        // frames takes a while, and a short-lived process may exit meanwhile. A process that
        // exited since it made its calls has no mappings left to name by; a copy in a softirq
        // has no process, only kernel frames.
        let mut processes: HashMap<u32, Option<Frames>> = HashMap::new();
        for tgid in self.sites.iter().map(|(named, _)| named.tgid()) {
            if processes.contains_key(&tgid) {
                continue;
            }
            naming.comms.extend(procfs::comm(tgid).map(|comm| (tgid, comm)));
            let frames = match tgid {
                0 => Some(Frames::kernel_only()),
                _ => Frames::live(tgid),
            };
            if frames.is_none() {
                tracing::debug!(tgid, "exited before its frames could be named, or unreadable");
                naming.unnameable.push(tgid);
            }
            let frames = frames.map(|f| f.with_kernel_symbols(self.kernel_symbols.clone()));
            processes.insert(tgid, frames);
        }
        for (named, site) in self.sites {
            let tgid = named.tgid();
            let Some(process) = processes.get_mut(&tgid).and_then(Option::as_mut) else {
                continue;
            };
            let frames = match site {
                UnnamedSite::Call(key, ips) => NamedFrames {
                    user: process.frames_with_caller((&key).into(), &ips),
                    kernel: Vec::new(),
                },
                UnnamedSite::Copy(site) => NamedFrames {
                    user: process.frames_with_caller((&site.key).into(), &site.user),
                    kernel: process.kernel_names(&site.kernel),
                },
            };
            naming.frames.push((named, frames));
        }
        naming
    }
}

/// The frames of a site whose process exited before the daemon could name them, or whose
/// mappings the daemon may not read (it lacks CAP_SYS_PTRACE; it says so when it starts).
pub const NOT_NAMED: &str = "[frames not named: exited first, or unreadable]";

/// What makes two samples one site: the same process, frames and mechanism.
fn identity(sample: &ProfileSample) -> (u32, &[String], &str) {
    (sample.pid, &sample.site.frames, &sample.site.mechanism)
}

/// Samples of the same site added together.
fn merged(samples: impl Iterator<Item = ProfileSample>) -> Vec<ProfileSample> {
    let mut index: HashMap<(u32, Vec<String>, String), usize> = HashMap::new();
    let mut out: Vec<ProfileSample> = Vec::new();
    for sample in samples {
        let (pid, frames, mechanism) = identity(&sample);
        let identity = (pid, frames.to_vec(), mechanism.to_string());
        match index.get(&identity) {
            Some(&i) => add(&mut out[i].site, &sample.site, u64::saturating_add),
            None => {
                index.insert(identity, out.len());
                out.push(sample);
            }
        }
    }
    out
}

/// At most [`RETIRED_SITES`] of `samples`, and how many more there were.
fn bounded(mut samples: Vec<ProfileSample>) -> (Vec<ProfileSample>, u64) {
    let over = samples.len().saturating_sub(RETIRED_SITES);
    samples.truncate(RETIRED_SITES);
    (samples, over as u64)
}

fn add(into: &mut Site, from: &Site, op: fn(u64, u64) -> u64) {
    into.calls = op(into.calls, from.calls);
    into.bytes = op(into.bytes, from.bytes);
    into.copied_bytes = op(into.copied_bytes, from.copied_bytes);
}

/// What `later` holds beyond `earlier`: the samples of the time between two readings.
pub fn delta(earlier: &[ProfileSample], later: Vec<ProfileSample>) -> Vec<ProfileSample> {
    later
        .into_iter()
        .filter_map(|mut sample| {
            if let Some(before) = earlier.iter().find(|e| identity(e) == identity(&sample)) {
                add(&mut sample.site, &before.site, u64::saturating_sub);
            }
            (sample.site.bytes > 0 || sample.site.calls > 0).then_some(sample)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, frame: &str, bytes: u64) -> ProfileSample {
        ProfileSample {
            pid,
            kind: ProfileKind::Calls,
            located: vec![None, None],
            comm: "relay".into(),
            workload: Workload::default(),
            site: Site {
                frames: vec!["main".into(), frame.into()],
                mechanism: "read file->user".into(),
                calls: bytes / 4,
                bytes,
                copied_bytes: bytes,
            },
        }
    }

    #[test]
    fn the_same_site_of_the_same_process_is_one_sample() {
        let merged = merged(
            [
                sample(1, "a", 8),
                sample(1, "a", 4),
                sample(2, "a", 4),
                sample(1, "b", 4),
            ]
            .into_iter(),
        );
        assert_eq!(merged.len(), 3);
        assert_eq!((merged[0].site.bytes, merged[0].site.calls), (12, 3));
    }

    #[test]
    fn exited_processes_keep_a_bounded_number_of_sites_and_the_rest_are_counted() {
        let many: Vec<ProfileSample> = (0..RETIRED_SITES as u32 + 3)
            .map(|pid| sample(pid, "a", 4))
            .collect();
        let (kept, dropped) = bounded(many);
        assert_eq!((kept.len(), dropped), (RETIRED_SITES, 3));
        let (kept, dropped) = bounded(vec![sample(1, "a", 4)]);
        assert_eq!((kept.len(), dropped), (1, 0));
    }

    #[test]
    fn a_window_holds_what_grew_in_it_and_what_appeared() {
        let earlier = [sample(1, "a", 8), sample(1, "b", 4)];
        let later = vec![sample(1, "a", 20), sample(1, "b", 4), sample(3, "c", 4)];
        let window = delta(&earlier, later);
        assert_eq!(window, [sample(1, "a", 12), sample(3, "c", 4)]);
    }
}
