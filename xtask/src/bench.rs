//! `cargo xtask bench`: tracing overhead measured side by side, and the scrape benchmark.
//! A report, never a pass/fail: figures go into the README with this command.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, workspace_root};

struct Transfer {
    bytes_per_second: f64,
    cpu_seconds_per_gb: f64,
}

pub fn run(pairs: u32, size_mib: u64) -> Result<()> {
    let zctrace = workspace_root().join("target/release/zctrace");
    let dir = std::env::temp_dir().join("zctrace-bench");
    std::fs::create_dir_all(&dir)?;
    let file = payload(&dir, size_mib << 20)?;
    println!(
        "# traced vs untraced transfers: {pairs} pairs of {size_mib} MiB over loopback, alternating order"
    );
    println!(
        "{:<22} {:>14} {:>14} {:>8} {:>16} {:>16} {:>8}",
        "workload", "untraced MB/s", "traced MB/s", "ratio", "untraced CPU s/GB", "traced CPU s/GB", "ratio"
    );
    for (method, chunk) in [
        ("sendfile", 128 << 10),
        ("read-write", 64 << 10),
        ("read-write", 4 << 10),
    ] {
        let (mut plain, mut traced) = (Vec::new(), Vec::new());
        for pair in 0..pairs {
            // Alternate which runs first so warm-up and drift do not favour one side.
            if pair % 2 == 0 {
                plain.push(transfer(&zctrace, method, &file, chunk)?);
                traced.push(with_daemon(&zctrace, || {
                    transfer(&zctrace, method, &file, chunk)
                })?);
            } else {
                traced.push(with_daemon(&zctrace, || {
                    transfer(&zctrace, method, &file, chunk)
                })?);
                plain.push(transfer(&zctrace, method, &file, chunk)?);
            }
        }
        let rate = |runs: &[Transfer]| Stats::of(runs.iter().map(|t| t.bytes_per_second / 1e6).collect());
        let cpu = |runs: &[Transfer]| Stats::of(runs.iter().map(|t| t.cpu_seconds_per_gb).collect());
        let (pr, tr, pc, tc) = (rate(&plain), rate(&traced), cpu(&plain), cpu(&traced));
        println!(
            "{:<22} {:>14} {:>14} {:>8.3} {:>20} {:>20} {:>8.3}",
            format!("{method} {}KiB", chunk >> 10),
            pr.show(0),
            tr.show(0),
            tr.median / pr.median,
            pc.show(2),
            tc.show(2),
            tc.median / pc.median
        );
    }
    micro(&zctrace, pairs)?;
    daemon_footprint(&zctrace)?;
    println!("\n# scrape of 10,000 series (encode only, no maps)");
    cargo(&["bench", "--package", "zctrace", "--bench", "scrape"])
}

/// bpftrace counting the same per-process events as zctrace's hottest hooks: the peer to beat.
/// BEGIN runs once every probe is attached: its line is the signal to start measuring.
const BPFTRACE_PEER: &str = "BEGIN { printf(\"attached\\n\"); } \
    tracepoint:raw_syscalls:sys_exit { @syscalls[pid] = count(); } \
    tracepoint:sched:sched_switch { @switches[pid] = count(); }";

/// bpftrace finds tracepoints through tracefs, which this kind of machine does not mount at boot.
fn mount_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()?;
    if !status.success() {
        bail!("mounting tracefs on /sys/kernel/tracing failed: bpftrace needs it");
    }
    Ok(())
}

/// Nanoseconds per event of a workload that prints them, untraced, traced by zctrace, and by bpftrace.
fn micro(zctrace: &Path, pairs: u32) -> Result<()> {
    mount_tracefs()?;
    println!("\n# per-event cost: {pairs} rounds of untraced / zctrace / bpftrace, rotating order");
    println!(
        "{:<34} {:>22} {:>22} {:>22} {:>9} {:>12} {:>12}",
        "workload", "untraced ns", "zctrace ns", "bpftrace ns", "ratio", "zctrace +ns", "bpftrace +ns"
    );
    let workloads: [(&str, [&str; 3]); 2] = [
        (
            "getpid loop (not decoded)",
            ["workload", "getpid-loop", "2000000"],
        ),
        ("pipe ping-pong, per switch", ["workload", "ping-pong", "200000"]),
    ];
    for (name, args) in workloads {
        let run = || -> Result<f64> {
            let output = Command::new(zctrace).args(args).output()?;
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse::<f64>()
                .context("workload output")
        };
        let (mut plain, mut traced, mut peer) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..pairs {
            for step in 0..3 {
                match (round + step) % 3 {
                    0 => plain.push(run()?),
                    1 => traced.push(with_daemon(zctrace, run)?),
                    _ => peer.push(with_bpftrace(run)?),
                }
            }
        }
        let (p, t, b) = (Stats::of(plain), Stats::of(traced), Stats::of(peer));
        println!(
            "{:<34} {:>22} {:>22} {:>22} {:>9.3} {:>12.1} {:>12.1}",
            name,
            p.show(1),
            t.show(1),
            b.show(1),
            p.median / t.median,
            t.median - p.median,
            b.median - p.median
        );
    }
    Ok(())
}

fn with_bpftrace<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut bpftrace = Command::new("bpftrace")
        .args(["-e", BPFTRACE_PEER])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("bpftrace (installed by cargo xtask setup)")?;
    let stdout = bpftrace.stdout.take().context("bpftrace stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut attached = false;
    while let Some(line) = lines.next().transpose()? {
        if line.starts_with("attached") {
            attached = true;
            break;
        }
    }
    if !attached {
        bpftrace.wait()?;
        bail!("bpftrace exited without attaching its probes");
    }
    let result = work();
    let _ = Command::new("kill")
        .args(["-INT", &bpftrace.id().to_string()])
        .status();
    // Drain the printed maps so bpftrace can exit.
    for _ in lines {}
    bpftrace.wait()?;
    result
}

/// Resident memory and CPU of an idle daemon.
fn daemon_footprint(zctrace: &Path) -> Result<()> {
    let mut daemon = start_daemon(zctrace)?;
    let cpu_ticks = |pid: u32| -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
            .split_whitespace()
            .collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    };
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(daemon.id())?;
    let idle = Duration::from_secs(20);
    std::thread::sleep(idle);
    let used = cpu_ticks(daemon.id())? - before;
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id()))?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    daemon.wait()?;
    println!(
        "\n# idle daemon: {rss}; CPU {:.2}% of one core over {} s",
        used as f64 / idle.as_secs_f64(),
        idle.as_secs()
    );
    Ok(())
}

/// Median, min and max.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(mut values: Vec<f64>) -> Stats {
        values.sort_by(f64::total_cmp);
        Stats {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }

    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} [{:.d$}-{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

fn payload(dir: &Path, size: u64) -> Result<PathBuf> {
    let path = dir.join(format!("payload-{size}"));
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size) {
        let block: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for _ in 0..(size >> 20) {
            std::io::Write::write_all(&mut out, &block)?;
        }
    }
    Ok(path)
}

fn transfer(zctrace: &Path, method: &str, file: &Path, chunk: u64) -> Result<Transfer> {
    let mut receiver = Command::new(zctrace)
        .args(["serve", "--listen", "127.0.0.1:0", "--once"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(receiver.stdout.take().context("receiver stdout")?).lines();
    let first = lines.next().context("receiver said nothing")??;
    let addr = first
        .strip_prefix("listening on ")
        .context("receiver's first line")?
        .to_string();
    let output = Command::new(zctrace)
        .args(["send", "--method", method, "--file"])
        .arg(file)
        .args(["--to", &addr, "--chunk", &chunk.to_string()])
        .output()?;
    if !output.status.success() {
        bail!(
            "{method} sender failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    receiver.wait()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let bytes = report["bytes"].as_f64().context("bytes")?;
    let seconds = report["seconds"].as_f64().context("seconds")?;
    let cpu = report["cpu_seconds"].as_f64().context("cpu_seconds")?;
    Ok(Transfer {
        bytes_per_second: bytes / seconds,
        cpu_seconds_per_gb: cpu / (bytes / 1e9),
    })
}

/// Runs `work` while a zctrace daemon traces every process.
fn with_daemon<T>(zctrace: &Path, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut daemon = start_daemon(zctrace)?;
    let result = work();
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    daemon.wait()?;
    // Programs are freed shortly after the daemon exits; let the next run start clean.
    std::thread::sleep(Duration::from_millis(200));
    result
}

/// A zctrace daemon on a free loopback port, once it serves (its probes are attached by then).
fn start_daemon(zctrace: &Path) -> Result<Child> {
    let mut daemon = Command::new(zctrace)
        .args([
            "daemon",
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.level",
            "info",
        ])
        .stderr(Stdio::piped())
        .spawn()?;
    if let Err(e) = wait_for_line(&mut daemon, "serving metrics") {
        let _ = daemon.kill();
        let _ = daemon.wait();
        return Err(e);
    }
    Ok(daemon)
}

fn wait_for_line(child: &mut Child, needle: &str) -> Result<()> {
    let stderr = child.stderr.take().context("daemon stderr")?;
    for line in BufReader::new(stderr).lines() {
        if line?.contains(needle) {
            return Ok(());
        }
    }
    bail!("the daemon exited before {needle:?}")
}
