//! The attach report: what one process did, as JSON or as text. Pure.
use std::collections::BTreeMap;

use serde::Serialize;
use zctrace_common::{Copier, MapSlot, TcpPath};

use super::advice::{advise, classify, meaningful, IoStyle};
use crate::{
    accounting::{kind_label, Basis, ProcessFigures, OBSERVED_ROUTINES},
    stacks::{self, Site, StackKind, TopSite},
    workload::Workload,
};

#[derive(Debug, Serialize)]
pub struct Report {
    /// The traced process; with several `--pid`s, the first; none for a container or unit.
    #[serde(skip_serializing_if = "is_zero")]
    pub pid: u32,
    /// `--container` or `--unit`: `container <id>` or `unit <name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// With several `--pid`s: each of them, in the order given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    pub comm: String,
    /// The process's cgroup v2 path when last seen, where zctrace can name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container, pod or service that path names.
    pub workload: Workload,
    pub duration_seconds: f64,
    /// The process exited before tracing ended; the report covers what was seen.
    pub exited: bool,
    /// Exit code of a command zctrace launched, when it exited normally.
    pub exit_code: Option<i32>,
    pub totals: Totals,
    pub flows: Vec<FlowReport>,
    /// Figures the probes saw in the kernel rather than inferred.
    pub observed: Observed,
    pub io_style: IoStyle,
    pub advice: Vec<String>,
    /// With `--stacks`: where the copies happen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacks: Option<StacksReport>,
    /// With `--follow` or several `--pid`s: each process (the totals are their sum), the traced
    /// ones first, then by bytes moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<ProcessRow>>,
    /// Runs of zctrace's programs the kernel skipped (a program already running on that CPU), for
    /// every process: at most that many of the traced process's events are missing.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub missed_runs: BTreeMap<String, u64>,
}

/// One process of a followed tree.
#[derive(Debug, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    /// Its parent when first seen.
    pub parent_pid: u32,
    pub comm: String,
    pub bytes: u64,
    pub delivered_bytes: u64,
    pub cpu_copy_bytes: u64,
    pub copies_per_byte: Option<f64>,
    pub syscalls: u64,
}

/// The call or copy sites `attach --stacks` recorded.
#[derive(Debug, Serialize)]
pub struct StacksReport {
    /// user, kernel or both.
    pub kind: &'static str,
    /// Copied bytes per user-stack call site come from the copy model (the kernel counts the
    /// bytes each stack moved, and the model says how often the CPU copied them); per copy site,
    /// from the copies observed.
    pub cpu_copy_basis: &'static str,
    /// Call sites, or copy sites with kernel stacks.
    pub call_sites: usize,
    /// Stacks or sites the bounded maps could not take. Each call is still in the totals; one
    /// whose stack alone was refused is under a site with no frames.
    pub dropped: u64,
    /// The drops by reason.
    pub drops: StackDrops,
    /// With kernel stacks: the copy routines this kernel does not let zctrace observe, whose
    /// copies therefore have no stack (the totals still model them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unobserved_copiers: Option<Vec<&'static str>>,
    /// With kernel stacks: the copy routines observed at a kretprobe on a kernel that cannot
    /// unwind past it (before 5.15), whose copies are counted under `[stack not recorded]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copiers_without_kernel_stacks: Option<Vec<&'static str>>,
    /// With both stacks: whether each copy's user stack gets the caller a frameless leaf (libc's
    /// syscall wrappers) hides, which needs the task's user registers at the copy (5.15).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_site_callers: Option<bool>,
    /// The heaviest sites by CPU-copied bytes.
    pub top: Vec<TopSite>,
    /// Null when every call (or copy) was recorded. Otherwise a stack was taken about once per
    /// this many bytes, and each site's calls and bytes are sampled estimates.
    pub sample_period_bytes: Option<u64>,
}

impl StacksReport {
    pub fn new(
        kind: StackKind,
        sites: &[Site],
        drops: StackDrops,
        unobserved: &[Copier],
        unwound: &[Copier],
    ) -> StacksReport {
        let names = |copiers: &[Copier]| -> Option<Vec<&'static str>> {
            (kind != StackKind::User)
                .then(|| copiers.iter().map(|c| OBSERVED_ROUTINES[*c as usize]).collect())
        };
        StacksReport {
            kind: kind.label(),
            cpu_copy_basis: kind.basis().label(),
            call_sites: sites.len(),
            dropped: drops.full + drops.collided + drops.unwalkable,
            drops,
            unobserved_copiers: names(unobserved),
            copiers_without_kernel_stacks: names(unwound),
            copy_site_callers: None,
            top: stacks::top(sites, TOP_SITES),
            sample_period_bytes: None,
        }
    }

    /// Says, with both stacks, whether copy sites' user stacks get their hidden callers.
    pub fn copy_site_callers(self, recovered: bool) -> StacksReport {
        StacksReport {
            copy_site_callers: (self.kind == StackKind::Both.label()).then_some(recovered),
            ..self
        }
    }

    pub fn sampled(self, period: Option<u64>) -> StacksReport {
        StacksReport {
            sample_period_bytes: period,
            ..self
        }
    }
}

/// Why stacks or sites went unrecorded.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct StackDrops {
    /// The stack map or a count map had no room.
    pub full: u64,
    /// Another stack held the stack's bucket (the map keys stacks by a hash of their addresses,
    /// which ASLR changes from run to run).
    pub collided: u64,
    /// The kernel had no stack to walk (a user stack of a task without user memory).
    pub unwalkable: u64,
}

impl StackDrops {
    pub fn new(update_errors: &[u64]) -> StackDrops {
        StackDrops {
            full: update_errors[MapSlot::Stacks as usize],
            collided: update_errors[MapSlot::StacksCollided as usize],
            unwalkable: update_errors[MapSlot::StacksUnwalkable as usize],
        }
    }

    /// "N dropped", with the reasons of any.
    fn text(&self, total: u64) -> String {
        let reasons: Vec<String> = [
            (self.full, "maps full"),
            (self.collided, "collided"),
            (self.unwalkable, "unwalkable"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect();
        if reasons.is_empty() {
            format!("{total} dropped")
        } else {
            format!("{total} dropped: {}", reasons.join(", "))
        }
    }
}

/// Call sites the report lists.
const TOP_SITES: usize = 10;

/// Innermost frames a one-line call site shows.
const SITE_FRAMES: usize = 4;

/// One line per call site: its share of copied bytes, its mechanism, its innermost frames.
pub fn top_sites_lines(sites: &[TopSite]) -> Vec<String> {
    sites
        .iter()
        .map(|s| {
            let inner = &s.frames[s.frames.len().saturating_sub(SITE_FRAMES)..];
            format!(
                "{:>5.1}%  {:<24} {}",
                s.cpu_copy_share * 100.0,
                s.mechanism,
                if inner.is_empty() {
                    stacks::UNRECORDED.to_string()
                } else {
                    inner.join(" > ")
                }
            )
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub bytes: u64,
    pub delivered_bytes: u64,
    /// By the copy model (labelled by `cpu_copy_basis`), which covers every data-path syscall.
    pub cpu_copy_bytes: u64,
    pub cpu_copy_basis: &'static str,
    /// Null until 64 KiB were delivered: before that a ratio says more about start-up than I/O.
    pub copies_per_byte: Option<f64>,
    /// Seen at the kernel's copy routines, where this kernel lets every one be observed.
    pub observed_copy_bytes: Option<u64>,
    /// Null until 64 KiB were delivered, as `copies_per_byte`.
    pub observed_copies_per_byte: Option<f64>,
    pub syscalls: u64,
    pub mode_switches: u64,
    pub context_switches: ContextSwitches,
    pub offcpu_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ContextSwitches {
    pub voluntary: u64,
    pub involuntary: u64,
}

#[derive(Debug, Serialize)]
pub struct FlowReport {
    pub syscall: &'static str,
    pub src: &'static str,
    pub dst: &'static str,
    pub zerocopy_flag: bool,
    pub calls: u64,
    pub errors: u64,
    pub bytes: u64,
    pub cpu_copy_bytes: u64,
    pub basis: &'static str,
    /// Bytes the kernel saw sent from the buffer the same thread's last read filled (observed;
    /// one-buffer calls only, so a lower bound). Absent where none were.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub relayed_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Observed {
    pub recv_copy_bytes: u64,
    pub tcp_send_bytes: TcpSendBytes,
    /// MSG_ZEROCOPY bytes sent to a loopback receiver, which copies them: inferred (model), and
    /// included in `totals.cpu_copy_bytes`.
    pub zerocopy_deferred_copy_bytes_model: u64,
    /// CPU-copied bytes by the kernel routine that copied them, where observed.
    pub copies_by_routine: Option<BTreeMap<&'static str, u64>>,
}

#[derive(Debug, Serialize)]
pub struct TcpSendBytes {
    pub copy: u64,
    pub splice: u64,
    pub zerocopy: u64,
    pub unclassified: u64,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

/// `pid 12`, or `pids 12, 15` for several.
pub fn pids_label(pid: u32, pids: &[u32]) -> String {
    if pids.len() > 1 {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        format!("pids {}", pids.join(", "))
    } else {
        format!("pid {pid}")
    }
}

impl Report {
    pub fn new(
        pid: u32,
        f: &ProcessFigures,
        duration_seconds: f64,
        exited: bool,
        exit_code: Option<i32>,
    ) -> Report {
        let io_style = classify(f);
        Report {
            pid,
            target: None,
            pids: Vec::new(),
            comm: f.comm.clone(),
            cgroup: None,
            workload: Workload::default(),
            processes: None,
            missed_runs: BTreeMap::new(),
            duration_seconds,
            exited,
            exit_code,
            totals: Totals {
                bytes: f.bytes(),
                delivered_bytes: f.delivered_bytes(),
                cpu_copy_bytes: f.cpu_copy_bytes(),
                cpu_copy_basis: Basis::Model.label(),
                copies_per_byte: meaningful(f, f.copies_per_byte()),
                observed_copy_bytes: f.observed_copy_bytes(),
                observed_copies_per_byte: meaningful(f, f.observed_copies_per_byte()),
                syscalls: f.counters.syscalls_total,
                mode_switches: f.counters.mode_switches(),
                context_switches: ContextSwitches {
                    voluntary: f.counters.voluntary_switches,
                    involuntary: f.counters.involuntary_switches,
                },
                offcpu_seconds: f.counters.offcpu_ns as f64 / 1e9,
            },
            flows: f
                .flows
                .iter()
                .map(|p| FlowReport {
                    syscall: p.syscall,
                    src: kind_label(p.src),
                    dst: kind_label(p.dst),
                    zerocopy_flag: p.zerocopy_flag,
                    calls: p.calls,
                    errors: p.errors,
                    bytes: p.bytes,
                    cpu_copy_bytes: p.cpu_copy_bytes,
                    basis: p.basis.label(),
                    relayed_bytes: p.relayed_bytes,
                })
                .collect(),
            observed: Observed {
                recv_copy_bytes: f.counters.recv_copy_bytes,
                tcp_send_bytes: TcpSendBytes {
                    copy: f.counters.tcp(TcpPath::Copy),
                    splice: f.counters.tcp(TcpPath::Splice),
                    zerocopy: f.counters.tcp(TcpPath::Zerocopy),
                    unclassified: f.counters.tcp(TcpPath::Unclassified),
                },
                zerocopy_deferred_copy_bytes_model: f.counters.zerocopy_deferred_copy_bytes,
                copies_by_routine: f
                    .observed_copies()
                    .map(|copies| OBSERVED_ROUTINES.into_iter().zip(copies).collect()),
            },
            io_style,
            advice: advise(f, io_style),
            stacks: None,
        }
    }

    /// Each process of a followed tree.
    pub fn with_processes(self, processes: &[ProcessFigures]) -> Report {
        let mut rows: Vec<ProcessRow> = processes
            .iter()
            .map(|f| ProcessRow {
                pid: f.key.tgid,
                parent_pid: f.parent_tgid,
                comm: f.comm.clone(),
                bytes: f.bytes(),
                delivered_bytes: f.delivered_bytes(),
                cpu_copy_bytes: f.cpu_copy_bytes(),
                copies_per_byte: meaningful(f, f.copies_per_byte()),
                syscalls: f.counters.syscalls_total,
            })
            .collect();
        let traced = |pid: u32| pid == self.pid || self.pids.contains(&pid);
        rows.sort_by_key(|r| (!traced(r.pid), std::cmp::Reverse(r.bytes), r.pid));
        Report {
            processes: Some(rows),
            ..self
        }
    }

    /// The container or unit traced, all of whose processes the report covers.
    pub fn with_target(self, target: Option<String>) -> Report {
        Report { target, ..self }
    }

    /// What the report is of: a container, a unit, or its pids.
    fn subject(&self) -> String {
        self.target
            .clone()
            .unwrap_or_else(|| pids_label(self.pid, &self.pids))
    }

    /// Every process traced at once, when there are several.
    pub fn with_pids(self, pids: &[u32]) -> Report {
        Report {
            pids: if pids.len() > 1 { pids.to_vec() } else { Vec::new() },
            ..self
        }
    }

    /// The process's cgroup path, and the workload it names.
    pub fn with_cgroup(self, path: Option<&str>) -> Report {
        Report {
            cgroup: path.map(str::to_string),
            workload: path.map(Workload::from_cgroup_path).unwrap_or_default(),
            ..self
        }
    }

    /// The programs of which the kernel skipped runs.
    pub fn with_missed_runs(self, missed: Vec<(String, u64)>) -> Report {
        Report {
            missed_runs: missed.into_iter().filter(|(_, n)| *n > 0).collect(),
            ..self
        }
    }

    pub fn with_stacks(self, stacks: StacksReport) -> Report {
        Report {
            stacks: Some(stacks),
            ..self
        }
    }

    fn cgroup_line(&self) -> String {
        match &self.cgroup {
            Some(cgroup) if self.workload.is_empty() => format!("cgroup {cgroup}\n"),
            Some(cgroup) => format!("cgroup {cgroup}  {}\n", self.workload.text()),
            None => String::new(),
        }
    }

    pub fn text(&self) -> String {
        let t = &self.totals;
        let mut out = format!(
            "zctrace report for {} ({}) over {:.1} s{}\n{}\
             bytes moved {}  delivered {}  CPU-copied {} ({})  copies per delivered byte {}\n\
             {}\n\
             syscalls {}  mode switches {}  context switches {} voluntary / {} involuntary  off-CPU {:.2} s\n\
             I/O style: {}\n\n{:<16} {:<7} {:<7} {:>10} {:>14} {:>14}  basis\n",
            self.subject(),
            self.comm,
            self.duration_seconds,
            if self.exited { " (the process exited)" } else { "" },
            self.cgroup_line(),
            t.bytes,
            t.delivered_bytes,
            t.cpu_copy_bytes,
            t.cpu_copy_basis,
            t.copies_per_byte.map_or("-".to_string(), |c| format!("{c:.2}")),
            self.observed_line(),
            t.syscalls,
            t.mode_switches,
            t.context_switches.voluntary,
            t.context_switches.involuntary,
            t.offcpu_seconds,
            self.io_style.label(),
            "syscall",
            "src",
            "dst",
            "calls",
            "bytes",
            "cpu copied",
        );
        for p in &self.flows {
            let zc = if p.zerocopy_flag { "+zc" } else { "" };
            out += &format!(
                "{:<16} {:<7} {:<7} {:>10} {:>14} {:>14}  {}\n",
                format!("{}{zc}", p.syscall),
                p.src,
                p.dst,
                p.calls,
                p.bytes,
                p.cpu_copy_bytes,
                p.basis
            );
        }
        if !self.missed_runs.is_empty() {
            let runs: Vec<String> = self.missed_runs.iter().map(|(p, n)| format!("{p} {n}")).collect();
            out += &format!(
                "the kernel skipped runs of zctrace's programs ({}): up to that many events are missing\n",
                runs.join(", ")
            );
        }
        if let Some(processes) = &self.processes {
            out += &format!(
                "\n{} processes (the totals above are their sum):\n{:>8} {:>8} {:<16} {:>14} {:>14} {:>14} {:>12}\n",
                processes.len(),
                "pid",
                "parent",
                "comm",
                "bytes",
                "delivered",
                "cpu copied",
                "copies/byte"
            );
            for p in processes {
                out += &format!(
                    "{:>8} {:>8} {:<16} {:>14} {:>14} {:>14} {:>12}\n",
                    p.pid,
                    p.parent_pid,
                    p.comm,
                    p.bytes,
                    p.delivered_bytes,
                    p.cpu_copy_bytes,
                    p.copies_per_byte.map_or("-".to_string(), |c| format!("{c:.2}"))
                );
            }
        }
        if let Some(stacks) = &self.stacks {
            out += &format!(
                "\ntop {} sites by CPU-copied bytes ({} stacks, {}; {} sites, {}):\n",
                if stacks.kind == "user" { "call" } else { "copy" },
                stacks.kind,
                stacks.cpu_copy_basis,
                stacks.call_sites,
                stacks.drops.text(stacks.dropped)
            );
            if let Some(period) = stacks.sample_period_bytes {
                out += &format!(
                    "sampled: a stack about once per {period} bytes, each standing for the bytes between; \
                     the sites' figures are estimates (the totals above are exact)\n"
                );
            }
            if let Some(unobserved) = stacks.unobserved_copiers.as_ref().filter(|u| !u.is_empty()) {
                out += &format!(
                    "not observed on this kernel, so without stacks (--stacks user shows their call sites): {}\n",
                    unobserved.join(", ")
                );
            }
            if let Some(unwound) = stacks
                .copiers_without_kernel_stacks
                .as_ref()
                .filter(|u| !u.is_empty())
            {
                out += &format!(
                    "seen at kretprobes, whose kernel stacks this kernel cannot unwind (before 5.15), so under [stack not recorded]: {}\n",
                    unwound.join(", ")
                );
            }
            if stacks.copy_site_callers == Some(false) {
                out += "copies' user stacks lack the caller a frameless function (libc's syscall wrappers) hides: \
                        this kernel does not hand copy hooks the task's registers (bpf_task_pt_regs, 5.15); \
                        --stacks user shows it at the call\n";
            }
            top_sites_lines(&stacks.top)
                .iter()
                .for_each(|l| out += &format!("{l}\n"));
        }
        for advice in &self.advice {
            out += &format!("\nadvice: {advice}");
        }
        out
    }

    fn observed_line(&self) -> String {
        let Some(by_routine) = &self.observed.copies_by_routine else {
            return "observed CPU copies: none here, this kernel hides its copy routines (see zctrace probes)"
                .into();
        };
        let routines: Vec<String> = by_routine
            .iter()
            .filter(|(_, bytes)| **bytes > 0)
            .map(|(routine, bytes)| format!("{routine} {bytes}"))
            .collect();
        format!(
            "observed CPU copies {} ({} per delivered byte): {}",
            self.totals.observed_copy_bytes.unwrap_or(0),
            self.totals
                .observed_copies_per_byte
                .map_or("-".to_string(), |c| format!("{c:.2}")),
            if routines.is_empty() {
                "none".into()
            } else {
                routines.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_stacks(kind: StackKind, unobserved: &[Copier]) -> Report {
        with_stacks_unwound(kind, unobserved, &[])
    }

    fn with_stacks_unwound(kind: StackKind, unobserved: &[Copier], unwound: &[Copier]) -> Report {
        let figures = ProcessFigures::default();
        let site = Site {
            frames: vec!["vfs_write".into()],
            mechanism: "tcp_sendmsg_locked copy".into(),
            calls: 1,
            bytes: 10,
            copied_bytes: 10,
        };
        Report::new(1, &figures, 1.0, false, None).with_stacks(StacksReport::new(
            kind,
            &[site],
            StackDrops::default(),
            unobserved,
            unwound,
        ))
    }

    #[test]
    fn several_pids_name_the_report_and_lead_its_process_rows() {
        let process = |tgid: u32, parent_tgid: u32| ProcessFigures {
            key: zctrace_common::ProcessKey {
                tgid,
                ..Default::default()
            },
            parent_tgid,
            ..Default::default()
        };
        let processes = [process(5, 9), process(9, 1), process(7, 1)];
        let report = Report::new(7, &processes[2], 1.0, false, None)
            .with_pids(&[7, 9])
            .with_processes(&processes);
        let rows: Vec<u32> = report.processes.iter().flatten().map(|r| r.pid).collect();
        assert_eq!(rows, [7, 9, 5]);
        assert!(
            report.text().starts_with("zctrace report for pids 7, 9 ("),
            "{}",
            report.text()
        );
        let one = Report::new(7, &processes[2], 1.0, false, None).with_pids(&[7]);
        assert!(one.pids.is_empty());
        assert!(one.text().starts_with("zctrace report for pid 7 ("));
    }

    #[test]
    fn copies_per_byte_is_null_until_enough_was_delivered() {
        let mut figures = ProcessFigures::default();
        figures.flows.push(crate::accounting::FlowFigures {
            syscall: "write",
            src: zctrace_common::FdKind::User,
            dst: zctrace_common::FdKind::Tcp,
            zerocopy_flag: false,
            calls: 1,
            errors: 0,
            bytes: 9,
            cpu_copy_bytes: 9,
            basis: Basis::Model,
            relayed_bytes: 0,
        });
        let report = Report::new(1, &figures, 1.0, false, None);
        assert_eq!(report.totals.copies_per_byte, None);
        assert!(
            report.text().contains("copies per delivered byte -"),
            "{}",
            report.text()
        );
        figures.flows[0].bytes = 1 << 20;
        figures.flows[0].cpu_copy_bytes = 1 << 20;
        assert_eq!(
            Report::new(1, &figures, 1.0, false, None).totals.copies_per_byte,
            Some(1.0)
        );
    }

    #[test]
    fn skipped_program_runs_are_told_and_none_is_silent() {
        let quiet = Report::new(1, &ProcessFigures::default(), 1.0, false, None)
            .with_missed_runs(vec![("sys_exit".into(), 0), ("sched_switch".into(), 0)]);
        assert!(quiet.missed_runs.is_empty());
        assert!(!quiet.text().contains("skipped"), "{}", quiet.text());
        let report = Report::new(1, &ProcessFigures::default(), 1.0, false, None)
            .with_missed_runs(vec![("sys_exit".into(), 10), ("sched_switch".into(), 0)]);
        assert_eq!(report.missed_runs, BTreeMap::from([("sys_exit".to_string(), 10)]));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["missed_runs"]["sys_exit"], 10);
        assert!(
            report.text().contains(
                "skipped runs of zctrace's programs (sys_exit 10): up to that many events are missing"
            ),
            "{}",
            report.text()
        );
    }

    #[test]
    fn stack_drops_are_summed_and_told_by_reason() {
        let mut update_errors = [0; zctrace_common::MAP_SLOTS as usize];
        update_errors[MapSlot::StacksCollided as usize] = 2;
        update_errors[MapSlot::StacksUnwalkable as usize] = 1;
        update_errors[MapSlot::Syscalls as usize] = 7;
        let drops = StackDrops::new(&update_errors);
        let report = Report::new(1, &ProcessFigures::default(), 1.0, false, None)
            .with_stacks(StacksReport::new(StackKind::Both, &[], drops, &[], &[]));
        assert_eq!(report.stacks.as_ref().unwrap().dropped, 3);
        let text = report.text();
        assert!(
            text.contains("0 sites, 3 dropped: 2 collided, 1 unwalkable)"),
            "{text}"
        );
        let clean = with_stacks(StackKind::Both, &[]).text();
        assert!(clean.contains("1 sites, 0 dropped)"), "{clean}");
    }

    #[test]
    fn kernel_stacks_name_the_copiers_seen_where_the_kernel_cannot_unwind() {
        let report = with_stacks_unwound(StackKind::Both, &[], &[Copier::TcpSend]);
        let stacks = report.stacks.as_ref().unwrap();
        assert_eq!(
            stacks.copiers_without_kernel_stacks.as_deref(),
            Some(&["tcp_sendmsg_locked"][..])
        );
        let text = report.text();
        assert!(
            text.contains("cannot unwind (before 5.15), so under [stack not recorded]: tcp_sendmsg_locked"),
            "{text}"
        );
        let user = with_stacks_unwound(StackKind::User, &[], &[Copier::TcpSend]);
        assert_eq!(user.stacks.unwrap().copiers_without_kernel_stacks, None);
    }

    #[test]
    fn both_stacks_say_when_copies_lack_the_callers_frameless_functions_hide() {
        let report = |kind, recovered| {
            let stacks =
                StacksReport::new(kind, &[], StackDrops::default(), &[], &[]).copy_site_callers(recovered);
            Report::new(1, &ProcessFigures::default(), 1.0, false, None).with_stacks(stacks)
        };
        let missing = report(StackKind::Both, false);
        assert_eq!(missing.stacks.as_ref().unwrap().copy_site_callers, Some(false));
        assert!(
            missing.text().contains("(bpf_task_pt_regs, 5.15)"),
            "{}",
            missing.text()
        );
        let recovered = report(StackKind::Both, true);
        assert_eq!(recovered.stacks.as_ref().unwrap().copy_site_callers, Some(true));
        assert!(!recovered.text().contains("bpf_task_pt_regs"));
        // Call sites take the caller from sys_exit's registers, on every kernel.
        let user = report(StackKind::User, false);
        assert_eq!(user.stacks.as_ref().unwrap().copy_site_callers, None);
        assert!(!user.text().contains("bpf_task_pt_regs"));
    }

    #[test]
    fn kernel_stacks_name_the_copiers_they_cannot_see() {
        let report = with_stacks(StackKind::Kernel, &[Copier::FilemapRead, Copier::PipeWrite]);
        let stacks = report.stacks.as_ref().unwrap();
        assert_eq!((stacks.kind, stacks.cpu_copy_basis), ("kernel", "observed"));
        assert_eq!(
            stacks.unobserved_copiers.as_deref(),
            Some(&["filemap_read", "pipe_write"][..])
        );
        let text = report.text();
        assert!(text.contains("top copy sites"), "{text}");
        assert!(
            text.contains("without stacks (--stacks user shows their call sites): filemap_read, pipe_write"),
            "{text}"
        );
    }

    #[test]
    fn user_stacks_are_modelled_and_miss_no_copier() {
        let report = with_stacks(StackKind::User, &[]);
        let stacks = report.stacks.as_ref().unwrap();
        assert_eq!((stacks.kind, stacks.cpu_copy_basis), ("user", "model"));
        assert_eq!(stacks.unobserved_copiers, None);
        let text = report.text();
        assert!(
            text.contains("top call sites") && !text.contains("not observed"),
            "{text}"
        );
    }
}
