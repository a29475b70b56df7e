//! Which series the daemon exports, and their totals. Pure: no BPF, no clock of its own.
//!
//! Each label set is assigned a bucket the first time it is seen, and keeps it: its own series
//! while fewer than `top` exist, else the shared `comm="other"` series. Sticky buckets keep every
//! counter monotonic. Counts of exited processes are kept in their bucket until no process has
//! had that label set for the grace period; then the series disappears. A process whose labels
//! change while it runs (exec renames it; its name is learnt late) leaves what its old series
//! showed there, and only what follows counts under the new one.
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use zctrace_common::{FdKind, ProcessKey};

use crate::{
    accounting::{Counters, ProcessFigures, Sum},
    workload::Workload,
};

pub const OTHER_COMM: &str = "other";

/// The labels that identify one exported series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub comm: String,
    /// Only for processes picked with `--pid`.
    pub pid: Option<u32>,
    /// Only with `--cgroup-label`.
    pub cgroup: Option<String>,
    /// Only with `--workload-labels`, and only what the cgroup path names.
    pub workload: Workload,
}

impl SeriesKey {
    pub fn other() -> SeriesKey {
        SeriesKey {
            comm: OTHER_COMM.to_string(),
            pid: None,
            cgroup: None,
            workload: Workload::default(),
        }
    }
}

/// One mechanism, as labelled in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowLabels {
    pub syscall: &'static str,
    pub src: FdKind,
    pub dst: FdKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTotals {
    pub calls: u64,
    pub bytes: u64,
    pub cpu_copy_bytes: u64,
}

impl FlowTotals {
    fn add(&mut self, more: &FlowTotals) {
        self.calls += more.calls;
        self.bytes += more.bytes;
        self.cpu_copy_bytes += more.cpu_copy_bytes;
    }
}

/// Sums of [`ProcessFigures`] over the processes of one series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesTotals {
    pub syscalls: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub flows: BTreeMap<FlowLabels, FlowTotals>,
    /// Observed copies are exported only where every copy routine is observed.
    pub counters: Counters,
}

impl SeriesTotals {
    pub fn add_process(&mut self, f: &ProcessFigures) {
        add_by_syscall(&mut self.syscalls, &f.syscalls);
        for path in &f.flows {
            let labels = FlowLabels {
                syscall: path.syscall,
                src: path.src,
                dst: path.dst,
            };
            let moved = FlowTotals {
                calls: path.calls,
                bytes: path.bytes,
                cpu_copy_bytes: path.cpu_copy_bytes,
            };
            self.flows.entry(labels).or_default().add(&moved);
            if path.errors > 0 {
                Sum::add(self.errors.entry(path.syscall).or_default(), &path.errors);
            }
        }
        self.counters.add(&f.counters);
    }

    pub fn merge(&mut self, other: &SeriesTotals) {
        add_by_syscall(&mut self.syscalls, &other.syscalls);
        add_by_syscall(&mut self.errors, &other.errors);
        for (labels, totals) in &other.flows {
            self.flows.entry(*labels).or_default().add(totals);
        }
        self.counters.add(&other.counters);
    }
}

fn add_by_syscall(into: &mut BTreeMap<&'static str, u64>, more: &BTreeMap<&'static str, u64>) {
    for (name, n) in more {
        Sum::add(into.entry(name).or_default(), n);
    }
}

struct Slot {
    retired: SeriesTotals,
    last_live: Instant,
}

/// Where a live process's counts are shown.
struct Attribution {
    series: SeriesKey,
    /// Counts shown under earlier label sets, not to be shown again.
    shown_elsewhere: Option<ProcessFigures>,
    /// The figures last rendered under `series`.
    last: ProcessFigures,
    last_seen: Instant,
}

pub struct SeriesBook {
    top: usize,
    /// Only comms matching get a series of their own (`--comm`).
    allow: Option<regex::Regex>,
    grace: Duration,
    own: HashMap<SeriesKey, Slot>,
    /// Label sets sent to the shared bucket, and when a process last had them.
    overflow: HashMap<SeriesKey, Instant>,
    other_retired: SeriesTotals,
    dropped: u64,
    processes: HashMap<ProcessKey, Attribution>,
}

impl SeriesBook {
    pub fn new(top: usize, grace: Duration, allow: Option<regex::Regex>) -> SeriesBook {
        SeriesBook {
            top,
            allow,
            grace,
            own: HashMap::new(),
            overflow: HashMap::new(),
            other_retired: SeriesTotals::default(),
            dropped: 0,
            processes: HashMap::new(),
        }
    }

    /// The name a live process was last shown under.
    pub fn comm_of(&self, process: &ProcessKey) -> Option<String> {
        self.processes.get(process).map(|seen| seen.series.comm.clone())
    }

    /// Label sets that did not get a series of their own, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Keeps the final counts of a process that exited.
    pub fn retire(&mut self, key: SeriesKey, figures: &ProcessFigures, now: Instant) {
        let share = self.attribute(key.clone(), figures, now);
        self.processes.remove(&figures.key);
        self.keep(key, &share, now);
    }

    /// The part of `figures` to show under `key`. When the process's labels changed since the
    /// last render, what the old series showed stays there as retired counts.
    fn attribute(&mut self, key: SeriesKey, figures: &ProcessFigures, now: Instant) -> ProcessFigures {
        let Some(seen) = self.processes.get_mut(&figures.key) else {
            self.processes.insert(
                figures.key,
                Attribution {
                    series: key,
                    shown_elsewhere: None,
                    last: figures.clone(),
                    last_seen: now,
                },
            );
            return figures.clone();
        };
        let renamed = (seen.series != key).then(|| {
            let shown = unshown(&seen.last, &seen.shown_elsewhere);
            seen.shown_elsewhere = Some(seen.last.clone());
            (std::mem::replace(&mut seen.series, key), shown)
        });
        seen.last = figures.clone();
        seen.last_seen = now;
        let share = unshown(figures, &seen.shown_elsewhere);
        if let Some((old, shown)) = renamed {
            self.keep(old, &shown, now);
        }
        share
    }

    /// Adds counts that no live process carries any more to `key`'s bucket.
    fn keep(&mut self, key: SeriesKey, figures: &ProcessFigures, now: Instant) {
        if self.assign(key.clone(), now) {
            self.own
                .get_mut(&key)
                .expect("just assigned")
                .retired
                .add_process(figures);
        } else {
            self.other_retired.add_process(figures);
        }
    }

    /// The series to export now: live processes plus retired counts, per bucket.
    pub fn render(
        &mut self,
        live: &[(SeriesKey, ProcessFigures)],
        now: Instant,
    ) -> Vec<(SeriesKey, SeriesTotals)> {
        self.expire(now);
        let mut totals: BTreeMap<SeriesKey, SeriesTotals> = BTreeMap::new();
        for (key, figures) in live {
            let share = self.attribute(key.clone(), figures, now);
            let bucket = if self.assign(key.clone(), now) {
                key.clone()
            } else {
                SeriesKey::other()
            };
            totals.entry(bucket).or_default().add_process(&share);
        }
        for (key, slot) in &self.own {
            // Most own series of a busy host are retired only: a copy beats entry-by-entry adds.
            match totals.get_mut(key) {
                Some(live) => live.merge(&slot.retired),
                None => {
                    totals.insert(key.clone(), slot.retired.clone());
                }
            }
        }
        if !self.overflow.is_empty() || totals.contains_key(&SeriesKey::other()) {
            totals
                .entry(SeriesKey::other())
                .or_default()
                .merge(&self.other_retired);
        }
        totals.into_iter().collect()
    }

    /// Assigns `key` its bucket on first sight; true when it has a series of its own.
    fn assign(&mut self, key: SeriesKey, now: Instant) -> bool {
        if let Some(slot) = self.own.get_mut(&key) {
            slot.last_live = now;
            return true;
        }
        if let Some(seen) = self.overflow.get_mut(&key) {
            *seen = now;
            return false;
        }
        // Processes picked with --pid always get their own series.
        let allowed = key.pid.is_some()
            || (key.comm != OTHER_COMM && self.allow.as_ref().is_none_or(|re| re.is_match(&key.comm)));
        if allowed && (self.own.len() < self.top || key.pid.is_some()) {
            self.own.insert(
                key,
                Slot {
                    retired: SeriesTotals::default(),
                    last_live: now,
                },
            );
            return true;
        }
        self.dropped += 1;
        self.overflow.insert(key, now);
        false
    }

    fn expire(&mut self, now: Instant) {
        let grace = self.grace;
        self.own
            .retain(|_, slot| now.duration_since(slot.last_live) <= grace);
        self.overflow.retain(|_, seen| now.duration_since(*seen) <= grace);
        self.processes
            .retain(|_, process| now.duration_since(process.last_seen) <= grace);
    }
}

fn unshown(figures: &ProcessFigures, shown_elsewhere: &Option<ProcessFigures>) -> ProcessFigures {
    match shown_elsewhere {
        Some(shown) => figures.since(shown),
        None => figures.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::{Basis, FlowFigures};

    fn key(comm: &str) -> SeriesKey {
        SeriesKey {
            comm: comm.into(),
            pid: None,
            cgroup: None,
            workload: Workload::default(),
        }
    }

    /// A process of its own (a new pid each call) that wrote `bytes` to TCP.
    fn sender(bytes: u64) -> ProcessFigures {
        static PIDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let tgid = PIDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sent_by(tgid, bytes)
    }

    /// Process `tgid` having written `bytes` to TCP so far, a byte per call.
    fn sent_by(tgid: u32, bytes: u64) -> ProcessFigures {
        ProcessFigures {
            key: ProcessKey {
                tgid,
                reserved: 0,
                start_boottime_ns: 1,
            },
            flows: vec![FlowFigures {
                syscall: "write",
                src: FdKind::User,
                dst: FdKind::Tcp,
                zerocopy_flag: false,
                calls: bytes,
                errors: 0,
                bytes,
                cpu_copy_bytes: bytes,
                basis: Basis::Model,
                relayed_bytes: 0,
            }],
            syscalls: BTreeMap::from([("write", bytes)]),
            counters: Counters {
                syscalls_total: bytes,
                voluntary_switches: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn bytes_of(rendered: &[(SeriesKey, SeriesTotals)], comm: &str) -> Option<u64> {
        rendered
            .iter()
            .find(|(k, _)| k.comm == comm)
            .map(|(_, t)| t.flows.values().map(|p| p.bytes).sum())
    }

    #[test]
    fn processes_of_one_comm_share_a_series() {
        let mut book = SeriesBook::new(10, Duration::from_secs(60), None);
        let now = Instant::now();
        let rendered = book.render(&[(key("nginx"), sender(10)), (key("nginx"), sender(5))], now);
        assert_eq!(rendered.len(), 1);
        assert_eq!(bytes_of(&rendered, "nginx"), Some(15));
        let totals = &rendered[0].1;
        assert_eq!(totals.syscalls["write"], 15, "each call counted once");
        assert_eq!(totals.counters.syscalls_total, 15);
        assert_eq!(totals.counters.voluntary_switches, 2);
    }

    #[test]
    fn counters_stay_monotonic_when_a_process_exits() {
        let mut book = SeriesBook::new(10, Duration::from_secs(60), None);
        let t0 = Instant::now();
        assert_eq!(
            bytes_of(
                &book.render(&[(key("a"), sender(100)), (key("a"), sender(1))], t0),
                "a"
            ),
            Some(101)
        );
        book.retire(key("a"), &sender(100), t0 + Duration::from_secs(1));
        let after = book.render(&[(key("a"), sender(1))], t0 + Duration::from_secs(2));
        assert_eq!(
            bytes_of(&after, "a"),
            Some(101),
            "the exited process's bytes are kept"
        );
    }

    #[test]
    fn a_renamed_process_leaves_its_old_series_as_it_was() {
        let mut book = SeriesBook::new(10, Duration::from_secs(60), None);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let before_exec = book.render(&[(key("bash"), sent_by(7, 10))], at(0));
        assert_eq!(bytes_of(&before_exec, "bash"), Some(10));
        let after_exec = book.render(&[(key("cat"), sent_by(7, 25))], at(1));
        assert_eq!(bytes_of(&after_exec, "bash"), Some(10), "bash never goes down");
        assert_eq!(
            bytes_of(&after_exec, "cat"),
            Some(15),
            "cat counts from the rename"
        );
        book.retire(key("cat"), &sent_by(7, 30), at(2));
        let exited = book.render(&[], at(3));
        assert_eq!(bytes_of(&exited, "bash"), Some(10));
        assert_eq!(
            bytes_of(&exited, "cat"),
            Some(20),
            "all 30 bytes, each counted once"
        );
    }

    #[test]
    fn series_beyond_top_go_to_other_and_are_counted() {
        let mut book = SeriesBook::new(2, Duration::from_secs(60), None);
        let now = Instant::now();
        let live: Vec<_> = ["a", "b", "c", "d"].iter().map(|c| (key(c), sender(1))).collect();
        let rendered = book.render(&live, now);
        assert_eq!(rendered.len(), 3);
        assert_eq!(bytes_of(&rendered, OTHER_COMM), Some(2));
        assert_eq!(book.dropped(), 2);
        book.render(&live, now);
        assert_eq!(
            book.dropped(),
            2,
            "a label set is dropped once, not once per scrape"
        );
    }

    #[test]
    fn exited_series_disappear_after_the_grace_period() {
        let grace = Duration::from_secs(30);
        let mut book = SeriesBook::new(10, grace, None);
        let t0 = Instant::now();
        book.render(&[(key("batch"), sender(7))], t0);
        book.retire(key("batch"), &sender(7), t0);
        assert_eq!(
            bytes_of(&book.render(&[], t0 + Duration::from_secs(10)), "batch"),
            Some(7)
        );
        assert!(book.render(&[], t0 + grace + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn a_freed_slot_goes_to_a_new_label_set_not_to_one_already_in_other() {
        let mut book = SeriesBook::new(1, Duration::from_secs(5), None);
        let t0 = Instant::now();
        book.render(&[(key("first"), sender(1)), (key("waiting"), sender(1))], t0);
        book.render(&[(key("waiting"), sender(1))], t0 + Duration::from_secs(3));
        let later = t0 + Duration::from_secs(7);
        let rendered = book.render(&[(key("waiting"), sender(1)), (key("new"), sender(1))], later);
        assert_eq!(
            bytes_of(&rendered, "waiting"),
            None,
            "stays in other, keeping other monotonic"
        );
        assert_eq!(bytes_of(&rendered, "new"), Some(1));
    }

    #[test]
    fn comm_allowlist_and_picked_pids() {
        let allow = regex::Regex::new("^(nginx|envoy)$").unwrap();
        let mut book = SeriesBook::new(1, Duration::from_secs(60), Some(allow));
        let picked = SeriesKey {
            comm: "java".into(),
            pid: Some(7),
            cgroup: None,
            workload: Workload::default(),
        };
        let live = [
            (key("nginx"), sender(1)),
            (key("envoy"), sender(2)),
            (key("bash"), sender(4)),
            (picked, sender(8)),
        ];
        let rendered = book.render(&live, Instant::now());
        assert_eq!(bytes_of(&rendered, "nginx"), Some(1));
        assert_eq!(
            bytes_of(&rendered, "java"),
            Some(8),
            "--pid series are exempt from --top and --comm"
        );
        assert_eq!(
            bytes_of(&rendered, OTHER_COMM),
            Some(6),
            "envoy (over --top) and bash (not allowed)"
        );
        assert_eq!(book.dropped(), 2);
    }
}
