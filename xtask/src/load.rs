//! `cargo xtask load`: many short-lived processes doing I/O under a daemon scraped every second.
//! A report of memory, CPU, scrape cost and what happened to the series, never a pass/fail.
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    bench::{alias, cpu_ticks, memory_kib, payload, scrape, start_daemon_with, Scrape, Stats},
    target_dir,
};

const GRACE: Duration = Duration::from_secs(20);
const FILE_SIZE: u64 = 1 << 20;
const PREFIX: &str = "zcload-";
/// Fewer series than processes alive within a grace period, so the overflow path is exercised.
const TOP: usize = 100;

pub fn run(processes: u32, seconds: u64) -> Result<()> {
    let zctrace = target_dir().join("release/zctrace");
    let dir = std::env::temp_dir().join("zctrace-load");
    std::fs::create_dir_all(&dir)?;
    let file = payload(&dir, FILE_SIZE)?;
    let grace = format!("{}s", GRACE.as_secs());
    let (mut daemon, address) = start_daemon_with(
        &zctrace,
        &["--series.grace-period", &grace, "--top", &TOP.to_string()],
    )?;
    let pid = daemon.id();
    let cpu_before = cpu_ticks(pid)?;
    let pace = Duration::from_secs(seconds) / processes.max(1);
    let started = Instant::now();
    let (mut next_scrape, mut spawned) = (started, 0u32);
    let mut scrapes = Vec::new();
    while spawned < processes || started.elapsed() < Duration::from_secs(seconds) {
        if Instant::now() >= next_scrape {
            scrapes.push(scrape(&address)?);
            next_scrape += Duration::from_secs(1);
        }
        if spawned < processes && started.elapsed() >= pace * spawned {
            run_cat(&dir, spawned, &file)?;
            spawned += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu_seconds = (cpu_ticks(pid)? - cpu_before) as f64 / 100.0;
    let end = scrape(&address)?;
    std::thread::sleep(GRACE + Duration::from_secs(5));
    let after = scrape(&address)?;
    let memory = memory_kib(pid)?;
    let (peak_rss, rss) = (memory.peak, memory.rss);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let exit = daemon.wait()?;
    report(processes, seconds, &scrapes, &end, &after);
    println!(
        "daemon: peak resident {:.1} MiB, {:.1} MiB at the end; CPU {cpu_seconds:.2} s over the run; exit on SIGTERM: {exit}",
        peak_rss as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    Ok(())
}

/// A `cat` under a name of its own, so each process has its own comm.
fn run_cat(dir: &Path, n: u32, file: &Path) -> Result<()> {
    let link = alias(dir, &format!("{PREFIX}{n:03}"), "/bin/cat")?;
    let status = Command::new(&link).arg(file).stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("{} failed: {status}", link.display());
    }
    Ok(())
}

/// Bytes each load comm wrote to /dev/null, as its own series last showed them.
fn null_bytes_by_comm(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| l.starts_with("zctrace_bytes_total{"))
        .filter(|l| l.contains("syscall=\"write\"") && l.contains("dst=\"null\""))
        .filter_map(|l| {
            let comm = l.split("comm=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit_once(' ')?.1.parse().ok()?;
            comm.starts_with(PREFIX).then(|| (comm.to_string(), value))
        })
        .collect()
}

/// Sum of a metric's samples whose labels contain every `filter`.
fn total(body: &str, name: &str, filter: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| filter.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

fn report(processes: u32, seconds: u64, scrapes: &[Scrape], end: &Scrape, after: &Scrape) {
    let millis = Stats::of(scrapes.iter().map(|s| s.millis).collect());
    let largest = scrapes.iter().map(|s| s.body.len()).max().unwrap_or(0);
    let mut last_seen = BTreeMap::new();
    let mut most_series = 0;
    for scrape in scrapes.iter().chain([end]) {
        let seen = null_bytes_by_comm(&scrape.body);
        most_series = most_series.max(seen.len());
        last_seen.extend(seen);
    }
    let own_bytes: f64 = last_seen.values().sum();
    let other = total(
        &end.body,
        "zctrace_bytes_total",
        &["syscall=\"write\"", "dst=\"null\"", "comm=\"other\""],
    );
    println!("# load: {processes} short-lived processes (cat of 1 MiB to /dev/null, each its own comm) over {seconds} s, --top {TOP}");
    println!(
        "scrapes: {} (one a second), {} ms [min-max], largest {:.0} KiB",
        scrapes.len(),
        millis.show(1),
        largest as f64 / 1024.0
    );
    println!(
        "series: {} load comms had their own (at most {most_series} at once); zctrace_series_dropped_total {}",
        last_seen.len(),
        total(&end.body, "zctrace_series_dropped_total", &[])
    );
    println!(
        "bytes to /dev/null: {:.0} MiB in load series + {:.0} MiB in comm=\"other\" = {:.0} MiB; the load wrote {} MiB",
        own_bytes / 1048576.0,
        other / 1048576.0,
        (own_bytes + other) / 1048576.0,
        (u64::from(processes) * FILE_SIZE) >> 20
    );
    println!(
        "maps: PROCESSES {} entries at the end of the load; failed updates {}",
        total(&end.body, "zctrace_map_entries", &["map=\"PROCESSES\""]),
        total(&end.body, "zctrace_map_update_errors_total", &[])
    );
    println!(
        "after the {} s grace period: {} load series left",
        GRACE.as_secs(),
        null_bytes_by_comm(&after.body).len()
    );
}
