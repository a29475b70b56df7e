//! The daemon's copy profiles (`--profiles`): every process's sampled call sites, their frames
//! named while the process lives (its mappings and files are gone after), and kept once it exits,
//! when its entries leave the kernel's maps. Served as pprof by `/debug/pprof/copies`.
use std::collections::{HashMap, HashSet};

use anyhow::Result;
use zctrace_common::{StackKey, SyscallStats};

use crate::{
    probes::Tracer,
    procfs,
    stacks::{
        pprof::ProfileSample,
        symbols::{Frame, Frames},
        Site,
    },
    workload::Workload,
};

pub struct Profiles {
    /// Bytes moved per sampling point, on average.
    pub period: u64,
    /// The frames of each process's call sites, named while it lived.
    named: HashMap<NamedAs, Vec<Frame>>,
    comms: HashMap<u32, String>,
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

impl Profiles {
    pub fn new(period: u64) -> Profiles {
        Profiles {
            period,
            named: HashMap::new(),
            comms: HashMap::new(),
            workloads: HashMap::new(),
            retired: Vec::new(),
            dropped: 0,
        }
    }

    /// Names the stacks of live processes seen for the first time, and moves the sites of the
    /// processes in `gone` out of the kernel's maps, into the profiles' own keeping.
    pub fn collect(&mut self, tracer: &mut Tracer, gone: &HashSet<u32>) -> Result<()> {
        let sites = tracer.stack_sites()?;
        self.name_new(&sites, gone);
        let (retiring, _): (Vec<_>, Vec<_>) =
            sites.into_iter().partition(|(key, ..)| gone.contains(&key.tgid));
        let keys: Vec<StackKey> = retiring.iter().map(|(key, ..)| *key).collect();
        let samples: Vec<ProfileSample> = retiring
            .iter()
            .map(|(key, stats, _)| self.sample(key, stats))
            .collect();
        let (kept, dropped) = bounded(merged(
            std::mem::take(&mut self.retired).into_iter().chain(samples),
        ));
        self.retired = kept;
        self.dropped += dropped;
        tracer.forget_stack_sites(&keys)?;
        self.named.retain(|(tgid, ..), _| !gone.contains(tgid));
        self.comms.retain(|tgid, _| !gone.contains(tgid));
        self.workloads.retain(|tgid, _| !gone.contains(tgid));
        Ok(())
    }

    /// The workload `tgid`'s cgroup names, for its samples' labels.
    pub fn note_workload(&mut self, tgid: u32, workload: Workload) {
        self.workloads.insert(tgid, workload);
    }

    /// Every process's sites since the daemon started, the new ones named now.
    pub fn samples(&mut self, tracer: &Tracer) -> Result<Vec<ProfileSample>> {
        let sites = tracer.stack_sites()?;
        self.name_new(&sites, &HashSet::new());
        let live = sites.iter().map(|(key, stats, _)| self.sample(key, stats));
        Ok(merged(self.retired.iter().cloned().chain(live)))
    }

    /// Names the stacks not named yet, from their processes' mappings as they are now.
    fn name_new(&mut self, sites: &[(StackKey, SyscallStats, Vec<u64>)], gone: &HashSet<u32>) {
        let mut frames: HashMap<u32, Option<Frames>> = HashMap::new();
        for (key, _, ips) in sites {
            if gone.contains(&key.tgid) || self.named.contains_key(&named_as(key)) {
                continue;
            }
            // A process that exited since it made its calls has no mappings left to name by.
            let Some(process) = frames.entry(key.tgid).or_insert_with(|| Frames::live(key.tgid)) else {
                continue;
            };
            let frames = process.call_site_frames(key, ips);
            // Named by offsets because a file could not be read: another pass may read it.
            if !process.complete() {
                continue;
            }
            self.named.insert(named_as(key), frames);
            if let Some(comm) = procfs::comm(key.tgid) {
                self.comms.entry(key.tgid).or_insert(comm);
            }
        }
    }

    fn sample(&self, key: &StackKey, stats: &SyscallStats) -> ProfileSample {
        let (frames, located) = match self.named.get(&named_as(key)) {
            Some(frames) => frames.iter().map(|f| (f.name.clone(), f.at.clone())).unzip(),
            None => (vec![NOT_NAMED.to_string()], vec![None]),
        };
        ProfileSample {
            located,
            pid: key.tgid,
            comm: self
                .comms
                .get(&key.tgid)
                .cloned()
                .unwrap_or_else(|| procfs::UNKNOWN_COMM.to_string()),
            workload: self.workloads.get(&key.tgid).cloned().unwrap_or_default(),
            site: Site::new(key, stats, frames),
        }
    }
}

/// What a call site's frame names are kept by: its process, stack and hidden caller.
type NamedAs = (u32, i32, u64);

fn named_as(key: &StackKey) -> NamedAs {
    (key.tgid, key.user_stack, key.caller)
}

/// The frames of a site whose process exited before the daemon could name them, or whose
/// mappings the daemon may not read (it lacks CAP_SYS_PTRACE; it says so when it starts).
pub const NOT_NAMED: &str = "[frames not named: exited first, or unreadable]";

/// Samples of the same process, frames and mechanism added together.
fn merged(samples: impl Iterator<Item = ProfileSample>) -> Vec<ProfileSample> {
    let mut index: HashMap<(u32, Vec<String>, String), usize> = HashMap::new();
    let mut out: Vec<ProfileSample> = Vec::new();
    for sample in samples {
        let identity = (
            sample.pid,
            sample.site.frames.clone(),
            sample.site.mechanism.clone(),
        );
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
            if let Some(before) = earlier.iter().find(|e| {
                e.pid == sample.pid
                    && e.site.frames == sample.site.frames
                    && e.site.mechanism == sample.site.mechanism
            }) {
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
