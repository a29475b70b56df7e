//! `zctrace top`: every process, ranked by CPU-copied bytes per second.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use zctrace_common::ProcessKey;

use super::{
    advice::{classify, copies_per_byte_label},
    view::{catch_interrupts, interrupted, mb, Frame, View},
};
use crate::{
    accounting::{per_process, ProcessFigures},
    probes::{args::ProbeArgs, privileges, ProbeOptions, Tracer},
    procfs,
};

#[derive(Clone, Debug, clap::Args)]
pub struct TopArgs {
    /// Refresh interval.
    #[arg(long, default_value = "1s", allow_hyphen_values = true, value_parser = crate::duration::parse)]
    pub interval: Duration,
    /// Stop after this long; default: until q or Ctrl-C.
    #[arg(long, allow_hyphen_values = true, value_parser = crate::duration::parse)]
    pub duration: Option<Duration>,
    /// Rows shown.
    #[arg(long, default_value_t = 20, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub rows: u64,
    /// Plain lines instead of the terminal UI.
    #[arg(long)]
    pub plain: bool,
}

pub fn run(args: TopArgs, probe: &ProbeArgs) -> Result<()> {
    privileges::require()?;
    let tracer = Tracer::load(&ProbeOptions {
        relay_evidence: true,
        ..probe.options()
    })?;
    catch_interrupts()?;
    let started = Instant::now();
    let mut view = View::open(args.plain);
    let mut previous: HashMap<ProcessKey, ProcessFigures> = HashMap::new();
    while !interrupted() && args.duration.is_none_or(|d| started.elapsed() < d) {
        let now: HashMap<ProcessKey, ProcessFigures> =
            per_process(&tracer.snapshot()?, tracer.copies_observed())
                .into_iter()
                .map(|f| (f.key, f))
                .collect();
        let frame = rank(&now, &previous, &args, started);
        previous = now;
        let wait = args.duration.map_or(args.interval, |d| {
            args.interval.min(d.saturating_sub(started.elapsed()))
        });
        if view.show(&frame, wait, || false)? {
            break;
        }
    }
    view.close();
    Ok(())
}

/// Processes by CPU-copied bytes per second over the last interval.
fn rank(
    now: &HashMap<ProcessKey, ProcessFigures>,
    previous: &HashMap<ProcessKey, ProcessFigures>,
    args: &TopArgs,
    started: Instant,
) -> Frame {
    let seconds = args.interval.as_secs_f64();
    let mut recent: Vec<(&ProcessFigures, ProcessFigures)> = now
        .values()
        .map(|f| (f, previous.get(&f.key).map_or_else(|| f.clone(), |p| f.since(p))))
        .filter(|(_, d)| {
            d.counters.syscalls_total > 0
                || d.counters.voluntary_switches + d.counters.involuntary_switches > 0
        })
        .collect();
    recent.sort_by_key(|(_, d)| std::cmp::Reverse((d.cpu_copy_bytes(), d.bytes())));
    let copied: u64 = recent.iter().map(|(_, d)| d.cpu_copy_bytes()).sum();
    let rows = recent
        .iter()
        .take(args.rows as usize)
        .map(|(total, d)| {
            vec![
                total.key.tgid.to_string(),
                // A process with syscall entries only has no name in the maps yet.
                match total.comm.as_str() {
                    "" => procfs::comm(total.key.tgid).unwrap_or_else(|| procfs::UNKNOWN_COMM.into()),
                    comm => comm.to_string(),
                },
                mb(d.cpu_copy_bytes() as f64 / seconds),
                mb(d.bytes() as f64 / seconds),
                copies_per_byte_label(d),
                format!("{:.0}", d.counters.syscalls_total as f64 / seconds),
                format!(
                    "{:.0}",
                    (d.counters.voluntary_switches + d.counters.involuntary_switches) as f64 / seconds
                ),
                classify(total).label().to_string(),
            ]
        })
        .collect();
    Frame {
        title: format!("zctrace top: {:.0}s", started.elapsed().as_secs_f64()),
        summary: format!(
            "{} active processes, {} MB/s CPU-copied in all",
            recent.len(),
            mb(copied as f64 / seconds)
        ),
        header: vec![
            "pid",
            "comm",
            "copied MB/s",
            "moved MB/s",
            "copies/B",
            "syscalls/s",
            "ctxsw/s",
            "style",
        ],
        rows,
        widths: vec![8, 16, 12, 11, 9, 11, 9, 16],
        footer: Vec::new(),
    }
}
