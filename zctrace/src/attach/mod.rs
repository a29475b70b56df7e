//! `zctrace attach` (one process, live, then a report with advice) and `zctrace top` (every
//! process, ranked by CPU-copied bytes per second).
mod advice;
mod launch;
pub mod report;
mod top;
mod tree;
mod view;

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use advice::copies_per_byte_label;
use anyhow::{bail, Context as _, Result};
use launch::Gated;
use report::{pids_label, top_sites_lines, Report, StackDrops, StacksReport};
pub use top::{run as run_top, TopArgs};
use view::{catch_interrupts, interrupted, mb, Frame, View};
use zctrace_common::ProcessKey;

use crate::{
    accounting::{kind_label, per_process, ProcessFigures},
    probes::{args::ProbeArgs, privileges, ProbeOptions, Tracer},
    procfs,
    stacks::{self, symbols::Frames, Site, StackKind, Weight},
    workload::{cgroups::CgroupNames, Workload, WorkloadTarget},
};

#[derive(Clone, Debug, clap::Args)]
pub struct AttachArgs {
    /// The process to trace (all its threads). Repeat it, or list pids separated by commas, to
    /// trace several processes together: the report shows each and their sum.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..), required_unless_present_any = ["command", "container", "unit"], conflicts_with = "command")]
    pub pid: Vec<u32>,
    /// Trace every process of this container, by its runtime's id or the start of it (as
    /// `docker ps` shows it), as their cgroups say, until Ctrl-C or --duration.
    #[arg(long, value_parser = WorkloadTarget::container, conflicts_with_all = ["pid", "command", "follow", "unit"])]
    pub container: Option<WorkloadTarget>,
    /// Trace every process of this systemd service (`nginx` or `nginx.service`), as their
    /// cgroups say, until Ctrl-C or --duration.
    #[arg(long, value_parser = WorkloadTarget::unit, conflicts_with_all = ["pid", "command", "follow"])]
    pub unit: Option<WorkloadTarget>,
    /// Stop after this long (for example 30s); default: until Ctrl-C or the process exits.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::duration::parse)]
    pub duration: Option<Duration>,
    /// Refresh interval of the live view.
    #[arg(long, default_value = "1s", allow_hyphen_values = true, value_parser = crate::duration::parse)]
    pub interval: Duration,
    /// Print the final report as one JSON object (and no live view).
    #[arg(long)]
    pub json: bool,
    /// Plain lines instead of the terminal UI.
    #[arg(long)]
    pub plain: bool,
    /// Trace the process's descendants too, those alive now and those it forks while traced
    /// (strace's -f): the report shows each process and their sum. The probes then count every
    /// process on the machine while attached, and the tree is picked out here.
    #[arg(long, short = 'f', conflicts_with = "stacks")]
    pub follow: bool,
    /// Write the final report to this new file rather than stdout, which a launched command
    /// shares (as strace -o and perf -o do).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Record stacks, to show which code path copies: `user` (alone, the default) the user stack
    /// of each data-path syscall; `kernel` the kernel stack of each copy the kernel is seen
    /// making; `both` the user and kernel stacks of each observed copy. The report lists the top
    /// sites, the live view the top three.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "user")]
    pub stacks: Option<StackKind>,
    /// Write the call sites as folded stacks (the input of flame graph tools) to this new file.
    #[arg(long, requires = "stacks")]
    pub stacks_out: Option<PathBuf>,
    /// Write an SVG flame graph of the call sites to this new file.
    #[arg(long, requires = "stacks")]
    pub flamegraph: Option<PathBuf>,
    /// Take a stack about once per this many bytes, at random points, each standing for the
    /// bytes between (an unbiased estimate, as heap profilers sample allocations): the cost then
    /// grows with bytes, not calls, for a busy process. Without it every call is recorded.
    #[arg(long, value_name = "BYTES", requires = "stacks", value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub stacks_period: Option<u64>,
    /// What folded stacks and the flame graph are weighted by.
    #[arg(long, value_enum, default_value = "copied", requires = "stacks")]
    pub stack_weight: Weight,
    /// A command to start and trace until it exits.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Refuses PIDs that cannot be traced, with the reason.
fn check_pid(pid: u32) -> Result<()> {
    let kernel_thread =
        procfs::is_kernel_thread(pid).with_context(|| format!("--pid {pid}: no such process"))?;
    if kernel_thread {
        bail!(
            "--pid {pid} ({}) is a kernel thread: it makes no syscalls to trace",
            procfs::comm(pid).unwrap_or_default()
        );
    }
    Ok(())
}

/// Refuses output files that exist before any tracing starts (zctrace never overwrites one),
/// and a weight the chosen stacks do not have.
fn check_outputs(args: &AttachArgs) -> Result<()> {
    if args.stack_weight == Weight::Moved && args.stacks.is_some_and(|kind| kind != StackKind::User) {
        bail!(
            "--stack-weight moved needs --stacks user: kernel stacks are taken at the copies, \
             where the bytes moved are the bytes copied; use copied or calls"
        );
    }
    for path in [&args.output, &args.stacks_out, &args.flamegraph]
        .into_iter()
        .flatten()
    {
        if path.exists() {
            bail!(
                "{} exists: zctrace never overwrites a file; name a new one",
                path.display()
            );
        }
    }
    Ok(())
}

pub fn run(args: AttachArgs, probe: &ProbeArgs) -> Result<()> {
    let mut pids: Vec<u32> = Vec::new();
    for &pid in &args.pid {
        check_pid(pid)?;
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    let workload = args.container.as_ref().or(args.unit.as_ref());
    if (pids.len() > 1 || workload.is_some()) && args.stacks.is_some() {
        bail!("--stacks records one process's stacks: name a single --pid");
    }
    let workload = workload.map(workload_target).transpose()?;
    check_outputs(&args)?;
    privileges::require()?;
    let mut launched = if args.command.is_empty() {
        None
    } else {
        Some(Gated::spawn(&args.command)?)
    };
    if let Some(child) = &launched {
        pids.push(child.pid.as_raw() as u32);
    }
    // Several processes are picked out of the whole machine's counts, as a followed tree is.
    let several = args.follow || pids.len() != 1;
    let tracer = Tracer::load(&ProbeOptions {
        filter_tgid: (!several).then(|| pids[0]),
        stacks: args.stacks.map(StackKind::mode),
        sample_period: args.stacks_period,
        relay_evidence: true,
        ..probe.options()
    });
    let tracer = match (tracer, &mut launched) {
        (Ok(tracer), Some(child)) => child.release().map(|()| tracer)?,
        (Ok(tracer), None) => tracer,
        (Err(e), Some(child)) => {
            let _ = nix::sys::signal::kill(child.pid, nix::sys::signal::Signal::SIGKILL);
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    catch_interrupts()?;
    tracing::info!(?pids, follow = args.follow, "probes attached; tracing");
    let session = Session {
        // Kernel stacks alone need no user frames, so no watch of the process's mappings.
        stacks: args.stacks.map(|kind| {
            let frames = match kind {
                StackKind::Kernel => Frames::kernel_only(),
                StackKind::User | StackKind::Both => Frames::watch(pids[0]),
            };
            (kind, RefCell::new(frames))
        }),
        tracer,
        pids,
        started: Instant::now(),
        launched,
        follow: args.follow,
        retired: several.then(HashMap::new),
        workload,
    };
    session.trace(&args)
}

/// The container or unit as this host's cgroups name it, and the names to find its processes by.
fn workload_target(target: &WorkloadTarget) -> Result<(WorkloadTarget, CgroupNames)> {
    let mut names = CgroupNames::new(None, false)?;
    if !names.complete() {
        bail!(
            "--container and --unit find processes by their cgroups, and this view of the cgroup \
             hierarchy is not whole (see --cgroup-root of the daemon)"
        );
    }
    let resolved = target.resolve(names.all_paths()).map_err(anyhow::Error::msg)?;
    Ok((resolved, names))
}

struct Session {
    tracer: Tracer,
    /// The traced processes, as given; the first names the report.
    pids: Vec<u32>,
    started: Instant,
    launched: Option<Gated>,
    /// With `--stacks`: which stacks, and names for their frames.
    stacks: Option<(StackKind, RefCell<Frames>)>,
    /// `--follow`: their descendants are traced too.
    follow: bool,
    /// With `--follow`, several pids or a workload: the final figures of the traced processes
    /// that exited, kept once their entries are freed.
    retired: Option<HashMap<ProcessKey, ProcessFigures>>,
    /// `--container` or `--unit`: its processes are traced, found by their cgroups' names.
    workload: Option<(WorkloadTarget, CgroupNames)>,
}

/// Why tracing stopped.
enum End {
    Asked,
    Exited(Option<i32>),
}

impl Session {
    /// The traced process, or each traced process (with `--follow`, each of their trees),
    /// exited ones included.
    fn processes(&mut self) -> Result<Vec<ProcessFigures>> {
        let snapshot = self.tracer.snapshot()?;
        let all = per_process(&snapshot, self.tracer.copies_observed());
        let Some(retired) = &mut self.retired else {
            return Ok(all.into_iter().filter(|f| f.key.tgid == self.pids[0]).collect());
        };
        let members: HashSet<u32> = if let Some((target, names)) = &mut self.workload {
            let mut ours = |f: &ProcessFigures| {
                names
                    .path(f.cgroup_id)
                    .is_some_and(|path| target.matches(&Workload::from_cgroup_path(path)))
            };
            all.iter()
                .chain(retired.values())
                .filter(|f| ours(f))
                .map(|f| f.key.tgid)
                .collect()
        } else if self.follow {
            // A parent recorded when the entry was made outlives the parent, where /proc would
            // show the child reparented.
            let mut parents = procfs::parents();
            for f in all.iter().chain(retired.values()).filter(|f| f.parent_tgid != 0) {
                parents.insert(f.key.tgid, f.parent_tgid);
            }
            self.pids
                .iter()
                .flat_map(|&root| tree::members(root, &parents))
                .collect()
        } else {
            self.pids.iter().copied().collect()
        };
        // Every exited process's entry is freed, as the daemon frees them: the maps stay
        // bounded while the whole machine is counted.
        let gone: HashSet<ProcessKey> = self.tracer.forget_exited(&snapshot, false)?.into_iter().collect();
        let mut live = Vec::new();
        for f in all.into_iter().filter(|f| members.contains(&f.key.tgid)) {
            if gone.contains(&f.key) {
                // Its entries are freed now: counts seen under the same key later are new ones.
                retired
                    .entry(f.key)
                    .and_modify(|earlier| earlier.add(&f))
                    .or_insert(f);
            } else {
                live.push(f);
            }
        }
        live.extend(retired.values().cloned());
        Ok(live)
    }

    /// The first traced process's figures, with every other traced process's added; for a
    /// workload, named after its busiest process.
    fn total(&self, processes: &[ProcessFigures]) -> ProcessFigures {
        let pid = self.pids.first().copied().unwrap_or(0);
        let busiest = processes.iter().max_by_key(|f| f.bytes()).map(|f| f.comm.clone());
        let root = processes.iter().find(|f| f.key.tgid == pid);
        let mut total = root.cloned().unwrap_or_else(|| ProcessFigures {
            key: ProcessKey {
                tgid: pid,
                ..ProcessKey::default()
            },
            comm: match pid {
                0 => busiest.unwrap_or_default(),
                pid => procfs::comm(pid).unwrap_or_default(),
            },
            copies_observed: self.tracer.copies_observed(),
            ..Default::default()
        });
        for f in processes.iter().filter(|f| f.key.tgid != pid) {
            total.add(f);
        }
        total
    }

    fn figures(&mut self) -> Result<ProcessFigures> {
        let processes = self.processes()?;
        Ok(self.total(&processes))
    }

    /// The recorded call or copy sites, named and merged; none without `--stacks`.
    fn sites(&self) -> Result<Vec<Site>> {
        let Some((kind, frames)) = &self.stacks else {
            return Ok(Vec::new());
        };
        let mut frames = frames.borrow_mut();
        let sites = match kind {
            StackKind::User => self
                .tracer
                .stack_sites()?
                .into_iter()
                .map(|(key, stats, ips)| {
                    Site::new(&key, &stats, frames.names_with_caller((&key).into(), &ips))
                })
                .collect(),
            StackKind::Kernel | StackKind::Both => self
                .tracer
                .copy_stack_sites()?
                .into_iter()
                .map(|site| {
                    let user = frames.names_with_caller((&site.key).into(), &site.user);
                    let kernel = frames.kernel_names(&site.kernel);
                    Site::at_copy(*kind, &site.key, &site.copies, user, kernel)
                })
                .collect(),
        };
        Ok(stacks::merge(sites))
    }

    /// What is traced: a container, a unit, or pids.
    fn subject(&self) -> String {
        match &self.workload {
            Some((target, _)) => target.label(),
            None => pids_label(self.pids[0], &self.pids),
        }
    }

    fn ended(&self) -> Option<End> {
        match &self.launched {
            Some(child) => child.exit_code().map(End::Exited),
            // A workload's processes come and go; it is traced until asked to stop.
            None if self.workload.is_some() => None,
            None => {
                let gone = |pid: &u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
                self.pids.iter().all(gone).then_some(End::Exited(None))
            }
        }
    }

    fn trace(mut self, args: &AttachArgs) -> Result<()> {
        let mut view = if args.json {
            None
        } else {
            Some(View::open(args.plain))
        };
        let mut previous = self.figures()?;
        let end = loop {
            if let Some(end) = self.ended() {
                break end;
            }
            if interrupted() || args.duration.is_some_and(|d| self.started.elapsed() >= d) {
                break End::Asked;
            }
            let wait = args.duration.map_or(args.interval, |d| {
                args.interval.min(d.saturating_sub(self.started.elapsed()))
            });
            match &mut view {
                Some(view) => {
                    let now = self.figures()?;
                    let mut frame = self.frame(&now, &now.since(&previous), args.interval);
                    if self.stacks.is_some() {
                        frame.footer = top_sites_lines(&stacks::top(&self.sites()?, 3));
                    }
                    previous = now;
                    if view.show(&frame, wait, || self.ended().is_some())? {
                        break End::Asked;
                    }
                }
                None => std::thread::sleep(wait.min(Duration::from_millis(100))),
            }
        };
        if let Some(view) = view {
            view.close();
        }
        let processes = self.processes()?;
        let figures = self.total(&processes);
        let (exited, code) = match end {
            End::Exited(code) => (true, code),
            End::Asked => (false, None),
        };
        let mut report = Report::new(
            figures.key.tgid,
            &figures,
            self.started.elapsed().as_secs_f64(),
            exited,
            code,
        )
        .with_pids(&self.pids)
        .with_target(self.workload.as_ref().map(|(target, _)| target.label()));
        // The cgroup the kernel last saw the process in, named from the whole hierarchy.
        let mut cgroups = CgroupNames::new(None, false)?;
        report = report
            .with_cgroup(cgroups.path(figures.cgroup_id))
            .with_missed_runs(self.tracer.missed_runs()?);
        if self.retired.is_some() {
            report = report.with_processes(&processes);
        }
        if !self.follow && self.workload.is_none() && figures.bytes() == 0 {
            let children = procfs::parents()
                .values()
                .filter(|p| self.pids.contains(p))
                .count();
            if children > 0 {
                eprintln!(
                    "zctrace: {} moved no bytes itself, but has {children} child processes: --follow traces them too",
                    self.subject()
                );
            }
        }
        if let Some((kind, _)) = self.stacks {
            let sites = self.sites()?;
            self.write_stacks(args, kind, &sites)?;
            // Only the drop counters: a whole snapshot would read every map again.
            let drops = StackDrops::new(&self.tracer.update_errors()?);
            let (unobserved, unwound) = match kind {
                StackKind::User => (Vec::new(), Vec::new()),
                StackKind::Kernel | StackKind::Both => (
                    self.tracer.unobserved_copiers(),
                    self.tracer.copiers_without_kernel_stacks(),
                ),
            };
            report = report.with_stacks(
                StacksReport::new(kind, &sites, drops, &unobserved, &unwound)
                    .copy_site_callers(self.tracer.copy_site_callers())
                    .sampled(args.stacks_period),
            );
        }
        if exited {
            eprintln!(
                "zctrace: {} exited; the report covers what was seen until then",
                self.subject()
            );
        }
        let text = if args.json {
            serde_json::to_string(&report)?
        } else {
            report.text()
        };
        match &args.output {
            Some(path) => writeln!(stacks::create_output(path)?, "{text}")?,
            None => println!("{text}"),
        }
        Ok(())
    }

    fn write_stacks(&self, args: &AttachArgs, kind: StackKind, sites: &[Site]) -> Result<()> {
        let lines = stacks::folded(sites, args.stack_weight);
        if let Some(path) = &args.stacks_out {
            let mut file = stacks::create_output(path)?;
            for line in &lines {
                writeln!(file, "{line}")?;
            }
        }
        if let Some(path) = &args.flamegraph {
            stacks::flamegraph(
                &lines,
                args.stack_weight,
                kind.basis(),
                args.stacks_period.is_some(),
                stacks::create_output(path)?,
            )?;
        }
        Ok(())
    }

    fn frame(&self, total: &ProcessFigures, last: &ProcessFigures, interval: Duration) -> Frame {
        let per_second = |v: u64| v as f64 / interval.as_secs_f64();
        let summary = format!(
            "{:>6.1}s  moved {} MB/s  CPU-copied {} MB/s  copies/byte {}  syscalls {:.0}/s  ctxsw {:.0}/s vol {:.0}/s invol  off-CPU {:.2} s",
            self.started.elapsed().as_secs_f64(),
            mb(per_second(last.bytes())),
            mb(per_second(last.cpu_copy_bytes())),
            copies_per_byte_label(total),
            per_second(last.counters.syscalls_total),
            per_second(last.counters.voluntary_switches),
            per_second(last.counters.involuntary_switches),
            total.counters.offcpu_ns as f64 / 1e9,
        );
        let rows = total
            .flows
            .iter()
            .map(|p| {
                let recent = last
                    .flows
                    .iter()
                    .find(|l| l.syscall == p.syscall && l.src == p.src && l.dst == p.dst);
                let rate = |pick: fn(&crate::accounting::FlowFigures) -> u64| {
                    recent.map_or(0.0, |r| per_second(pick(r)))
                };
                vec![
                    format!("{}{}", p.syscall, if p.zerocopy_flag { "+zc" } else { "" }),
                    format!("{}->{}", kind_label(p.src), kind_label(p.dst)),
                    format!("{:.0}", rate(|r| r.calls)),
                    mb(rate(|r| r.bytes)),
                    mb(rate(|r| r.cpu_copy_bytes)),
                    mb(p.bytes as f64),
                    mb(p.cpu_copy_bytes as f64),
                    p.basis.label().to_string(),
                ]
            })
            .collect();
        Frame {
            title: format!("zctrace attach: {} ({})", self.subject(), total.comm),
            summary,
            header: vec![
                "syscall",
                "path",
                "calls/s",
                "MB/s",
                "copied MB/s",
                "MB total",
                "copied MB",
                "basis",
            ],
            rows,
            widths: vec![16, 14, 9, 9, 12, 10, 10, 8],
            footer: Vec::new(),
        }
    }
}
