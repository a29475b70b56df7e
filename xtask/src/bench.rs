//! `cargo xtask bench`: tracing overhead measured side by side, and the scrape benchmark.
//! A report, never a pass/fail: figures go into the README with this command.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, target_dir};

struct Transfer {
    bytes_per_second: f64,
    cpu_seconds_per_gb: f64,
}

pub fn run(pairs: u32, size_mib: u64) -> Result<()> {
    let zctrace = target_dir().join("release/zctrace");
    let dir = std::env::temp_dir().join("zctrace-bench");
    std::fs::create_dir_all(&dir)?;
    let file = payload(&dir, size_mib << 20)?;
    mount_tracefs()?;
    daemon_footprint(&zctrace)?;
    daemon_scrape(&zctrace, &dir)?;
    transfers(&zctrace, &file, pairs, size_mib)?;
    micro(&zctrace, pairs)?;
    whole_workloads(&zctrace, &file, pairs)?;
    stacks_overhead(&zctrace, &file, pairs)?;
    profiles_overhead(&zctrace, &file, pairs)?;
    per_program(&zctrace, pairs, "")?;
    println!("\n# scrape of 10,000 series (encode only, no maps)");
    cargo(&["bench", "--package", "zctrace", "--bench", "scrape"])
}

/// Only the part named by `only`: the daemon scrape for `scrape`, the whole workloads against
/// their floors for `whole`, `attach --stacks` against `attach` for `stacks`, the daemon with
/// and without `--profiles` for `profiles`, else the per-program A/B of the programs whose label
/// contains it.
pub fn only(pairs: u32, size_mib: u64, only: &str) -> Result<()> {
    let zctrace = target_dir().join("release/zctrace");
    let dir = std::env::temp_dir().join("zctrace-bench");
    std::fs::create_dir_all(&dir)?;
    match only {
        "scrape" => return daemon_scrape(&zctrace, &dir),
        "whole" => return whole_workloads(&zctrace, &payload(&dir, size_mib << 20)?, pairs),
        "stacks" => return stacks_overhead(&zctrace, &payload(&dir, size_mib << 20)?, pairs),
        "profiles" => return profiles_overhead(&zctrace, &payload(&dir, size_mib << 20)?, pairs),
        _ => {}
    }
    per_program(&zctrace, pairs, only)
}

/// bpftrace counting the same per-process events as zctrace: the peer to beat.
/// BEGIN runs once every probe is attached: its line is the signal to start measuring.
const BPFTRACE_PEER: &str = "BEGIN { printf(\"attached\\n\"); } \
    tracepoint:raw_syscalls:sys_exit { @syscalls[pid] = count(); } \
    tracepoint:sched:sched_switch { @switches[pid] = count(); } \
    tracepoint:sock:sock_send_length { @sent[pid] = sum(args->ret); } \
    tracepoint:skb:skb_copy_datagram_iovec { @received[pid] = sum(args->len); } \
    tracepoint:sched:sched_process_exit { @exited[pid] = count(); }";

/// Micro-workloads that print nanoseconds per event.
const GETPID: [&str; 3] = ["workload", "getpid-loop", "2000000"];
const PIPE_LOOP: [&str; 3] = ["workload", "pipe-loop", "1000000"];
const SOCKET_LOOP: [&str; 3] = ["workload", "socket-loop", "1000000"];
const PING_PONG: [&str; 3] = ["workload", "ping-pong", "200000"];
const TCP_PING_PONG: [&str; 3] = ["workload", "tcp-ping-pong", "50000"];
const SPAWN: [&str; 3] = ["workload", "spawn", "300"];
const RENAME: [&str; 3] = ["workload", "rename", "200000"];

/// Each program alone, and the `floor` (empty) and `counting_floor` (one hash add per tgid)
/// instruments at its hook, on a workload that hits it once per reported event:
/// (label, daemon flags, workload).
const PROGRAMS: &[(&str, &[&str], [&str; 3])] = &[
    ("sys_exit, per syscall", &["--probes", "sys_exit"], GETPID),
    ("floor at sys_exit", &["--probes", "floor"], GETPID),
    (
        "counting floor at sys_exit",
        &["--probes", "counting_floor"],
        GETPID,
    ),
    (
        "sys_exit, per data-path call (1-byte pipe write or read)",
        &["--probes", "sys_exit"],
        PIPE_LOOP,
    ),
    (
        "counting floor at sys_exit, pipe calls",
        &["--probes", "counting_floor"],
        PIPE_LOOP,
    ),
    (
        "sys_exit, per socket call (1-byte Unix socket write or read)",
        &["--probes", "sys_exit"],
        SOCKET_LOOP,
    ),
    (
        "counting floor at sys_exit, socket calls",
        &["--probes", "counting_floor"],
        SOCKET_LOOP,
    ),
    (
        "sched_switch, per switch",
        &["--probes", "sched_switch"],
        PING_PONG,
    ),
    (
        "floor at sched_switch",
        &["--probes", "floor", "--probe.hook", "floor=sched_switch"],
        PING_PONG,
    ),
    (
        "counting floor at sched_switch",
        &[
            "--probes",
            "counting_floor",
            "--probe.hook",
            "counting_floor=sched_switch",
        ],
        PING_PONG,
    ),
    (
        "timing floor at sched_switch",
        &["--probes", "timing_floor"],
        PING_PONG,
    ),
    (
        "tcp_send (as this kernel attaches it), per send",
        &["--probes", "tcp_send"],
        TCP_PING_PONG,
    ),
    (
        "floor at tcp_sendmsg_locked",
        &["--probes", "floor", "--probe.hook", "floor=tcp_sendmsg_locked"],
        TCP_PING_PONG,
    ),
    (
        "counting floor at sock_send_length",
        &[
            "--probes",
            "counting_floor",
            "--probe.hook",
            "counting_floor=sock_send_length",
        ],
        TCP_PING_PONG,
    ),
    (
        "skb_copy_datagram_iovec, per receive",
        &["--probes", "skb_copy_datagram_iovec"],
        TCP_PING_PONG,
    ),
    (
        "task_rename, per prctl rename",
        &["--probes", "task_rename"],
        RENAME,
    ),
    (
        "task_rename+sched_process_exit, per process (exec renames)",
        &["--probes", "task_rename,sched_process_exit"],
        SPAWN,
    ),
];

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

/// The reference sender untraced, under zctrace and under bpftrace: throughput and sender CPU.
fn transfers(zctrace: &Path, file: &Path, rounds: u32, size_mib: u64) -> Result<()> {
    println!(
        "\n# transfers: {rounds} rounds of {size_mib} MiB over loopback, untraced / zctrace / bpftrace, rotating order"
    );
    println!(
        "{:<18} {:>18} {:>18} {:>18} {:>7} {:>7} {:>18} {:>18} {:>18}",
        "workload",
        "untraced MB/s",
        "zctrace MB/s",
        "bpftrace MB/s",
        "ratio",
        "bpf",
        "untraced CPU s/GB",
        "zctrace CPU s/GB",
        "bpftrace CPU s/GB"
    );
    for (method, chunk) in [
        ("sendfile", 128 << 10),
        ("read-write", 64 << 10),
        ("read-write", 4 << 10),
    ] {
        let runs = three_ways(zctrace, rounds, || transfer(zctrace, method, file, chunk))?;
        let rate = |runs: &[Transfer]| Stats::of(runs.iter().map(|t| t.bytes_per_second / 1e6).collect());
        let cpu = |runs: &[Transfer]| Stats::of(runs.iter().map(|t| t.cpu_seconds_per_gb).collect());
        let [plain, traced, peer] = runs.each_ref().map(|r| (rate(r), cpu(r)));
        println!(
            "{:<18} {:>18} {:>18} {:>18} {:>7.3} {:>7.3} {:>18} {:>18} {:>18}",
            format!("{method} {}KiB", chunk >> 10),
            plain.0.show(0),
            traced.0.show(0),
            peer.0.show(0),
            traced.0.median / plain.0.median,
            peer.0.median / plain.0.median,
            plain.1.show(2),
            traced.1.show(2),
            peer.1.show(2),
        );
    }
    Ok(())
}

/// `rounds` runs each of `run` untraced, under zctrace and under bpftrace, rotating which goes
/// first so warm-up and drift favour none.
fn three_ways<T>(zctrace: &Path, rounds: u32, run: impl Fn() -> Result<T>) -> Result<[Vec<T>; 3]> {
    rotating(rounds, |side| match side {
        0 => run(),
        1 => with_daemon(zctrace, &[], &run),
        _ => with_bpftrace(&run),
    })
}

/// `rounds` runs of each of `N` sides, the side going first rotating round by round.
fn rotating<T, const N: usize>(rounds: u32, run: impl Fn(usize) -> Result<T>) -> Result<[Vec<T>; N]> {
    let mut results = std::array::from_fn(|_| Vec::new());
    for round in 0..rounds as usize {
        for step in 0..N {
            let side = (round + step) % N;
            results[side].push(run(side)?);
        }
    }
    Ok(results)
}

/// Which way a workload's figure moves when it runs faster.
enum Faster {
    Smaller,
    Larger,
}

/// Whole workloads untraced, under the full daemon, and under only the counting floors at the
/// hooks it counts at. What the floors alone cost a workload, no design that counts the same
/// events per process can avoid: a target they miss is out of reach.
fn whole_workloads(zctrace: &Path, file: &Path, rounds: u32) -> Result<()> {
    println!("\n# whole workloads: untraced / full daemon / counting floors only (`--probes counting_floors`), {rounds} rounds, rotating order");
    println!(
        "{:<32} {:>22} {:>22} {:>22} {:>13} {:>13}",
        "workload", "untraced", "full daemon", "counting floors", "daemon ratio", "floors ratio"
    );
    workload_rows(
        zctrace,
        file,
        rounds,
        [None, Some(&[]), Some(&["--probes", "counting_floors"])],
    )
}

/// How a workload runs in a comparison: untraced, or beside a daemon with these flags.
type Way = Option<&'static [&'static str]>;

/// The whole workloads, the pipe ping-pong and the 4 KiB relay, a row each under `ways`.
fn workload_rows(zctrace: &Path, file: &Path, rounds: u32, ways: [Way; 3]) -> Result<()> {
    let ping_pong = || ns_per_event(zctrace, &PING_PONG);
    workload_row(
        zctrace,
        rounds,
        ways,
        "pipe ping-pong, ns per switch",
        Faster::Smaller,
        &ping_pong,
    )?;
    let relay = || transfer(zctrace, "read-write", file, 4 << 10).map(|t| t.bytes_per_second / 1e6);
    workload_row(
        zctrace,
        rounds,
        ways,
        "read-write 4 KiB relay, MB/s",
        Faster::Larger,
        &relay,
    )
}

/// One row of [`workload_rows`]: a workload's figure each of the three `ways` (rotating order),
/// and the speed of the second and third relative to the first (below 1 is slower).
fn workload_row(
    zctrace: &Path,
    rounds: u32,
    ways: [Way; 3],
    name: &str,
    faster: Faster,
    run: &dyn Fn() -> Result<f64>,
) -> Result<()> {
    let sides: [Vec<f64>; 3] = rotating(rounds, |way| match ways[way] {
        None => run(),
        Some(flags) => with_daemon(zctrace, flags, run),
    })?;
    let [base, second, third] = sides.map(Stats::of);
    let speed = |with: &Stats| match faster {
        Faster::Larger => with.median / base.median,
        Faster::Smaller => base.median / with.median,
    };
    println!(
        "{:<32} {:>22} {:>22} {:>22} {:>13.3} {:>13.3}",
        name,
        base.show(1),
        second.show(1),
        third.show(1),
        speed(&second),
        speed(&third)
    );
    Ok(())
}

/// Nanoseconds per event of a workload that prints them, untraced, traced by zctrace, and by bpftrace.
fn micro(zctrace: &Path, pairs: u32) -> Result<()> {
    println!("\n# per-event cost: {pairs} rounds of untraced / zctrace / bpftrace, rotating order");
    println!(
        "{:<36} {:>22} {:>22} {:>22} {:>9} {:>12} {:>12}",
        "workload", "untraced ns", "zctrace ns", "bpftrace ns", "ratio", "zctrace +ns", "bpftrace +ns"
    );
    let workloads = [
        ("getpid loop (not decoded), per call", GETPID),
        ("pipe ping-pong, per switch", PING_PONG),
        ("TCP ping-pong, per message", TCP_PING_PONG),
        ("spawn /bin/true, per process", SPAWN),
    ];
    for (name, args) in workloads {
        let [plain, traced, peer] = three_ways(zctrace, pairs, || ns_per_event(zctrace, &args))?;
        let (p, t, b) = (Stats::of(plain), Stats::of(traced), Stats::of(peer));
        println!(
            "{:<36} {:>22} {:>22} {:>22} {:>9.3} {:>12.1} {:>12.1}",
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

/// Each program's cost per hit by A/B timing: the workload untraced, then with only that program.
fn per_program(zctrace: &Path, pairs: u32, only: &str) -> Result<()> {
    println!("\n# cost per hit of each program alone (A/B, {pairs} alternating pairs); floor = an empty program at the same hook");
    println!(
        "{:<40} {:>22} {:>22} {:>12} {:>12}",
        "program", "untraced ns", "with it ns", "+ns per hit", "+ns (mins)"
    );
    for (name, flags, args) in PROGRAMS.iter().filter(|(name, ..)| name.contains(only)) {
        let run = || ns_per_event(zctrace, args);
        let (mut plain, mut traced) = (Vec::new(), Vec::new());
        for pair in 0..pairs {
            if pair % 2 == 0 {
                plain.push(run()?);
                traced.push(with_daemon(zctrace, flags, run)?);
            } else {
                traced.push(with_daemon(zctrace, flags, run)?);
                plain.push(run()?);
            }
        }
        let (p, t) = (Stats::of(plain), Stats::of(traced));
        // The difference of minimums is steadier where run-to-run noise is large.
        println!(
            "{:<40} {:>22} {:>22} {:>12.1} {:>12.1}",
            name,
            p.show(1),
            t.show(1),
            t.median - p.median,
            t.min - p.min
        );
    }
    Ok(())
}

fn ns_per_event(zctrace: &Path, args: &[&str]) -> Result<f64> {
    let output = Command::new(zctrace).args(args).output()?;
    if !output.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse::<f64>()
        .with_context(|| format!("{args:?} output"))
}

/// How long bpftrace may take to attach before the bench gives up on it rather than hang.
const BPFTRACE_ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

fn with_bpftrace<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    // Unbuffered: piped, bpftrace would hold "attached" in a full buffer.
    let mut bpftrace = Command::new("bpftrace")
        .args(["-B", "none", "-e", BPFTRACE_PEER])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("bpftrace (installed by cargo xtask setup)")?;
    let stdout = bpftrace.stdout.take().context("bpftrace stdout")?;
    // Read on a thread of its own, so that waiting for "attached" can time out; the thread
    // also drains the maps bpftrace prints at exit.
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("attached") {
                let _ = attached_tx.send(());
            }
        }
    });
    let stop = |bpftrace: &mut Child| {
        let _ = Command::new("kill")
            .args(["-INT", &bpftrace.id().to_string()])
            .status();
    };
    if attached_rx.recv_timeout(BPFTRACE_ATTACH_TIMEOUT).is_err() {
        stop(&mut bpftrace);
        let _ = bpftrace.kill();
        bpftrace.wait()?;
        bail!("bpftrace did not attach its probes within {BPFTRACE_ATTACH_TIMEOUT:?}");
    }
    let result = work();
    stop(&mut bpftrace);
    let _ = reader.join();
    bpftrace.wait()?;
    result
}

/// Resident memory and CPU of an idle daemon.
fn daemon_footprint(zctrace: &Path) -> Result<()> {
    let (mut daemon, _) = start_daemon_with(zctrace, &[])?;
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(daemon.id())?;
    let idle = Duration::from_secs(20);
    std::thread::sleep(idle);
    let used = cpu_ticks(daemon.id())? - before;
    let rss = memory_kib(daemon.id())?.rss;
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    daemon.wait()?;
    println!(
        "\n# idle daemon: {:.1} MiB resident; CPU {:.2}% of one core over {} s",
        rss as f64 / 1024.0,
        used as f64 / idle.as_secs_f64(),
        idle.as_secs()
    );
    Ok(())
}

/// A real daemon's scrape once short-lived processes under names of their own have given it at
/// least 10,000 series: the time and size curl sees.
fn daemon_scrape(zctrace: &Path, dir: &Path) -> Result<()> {
    let (mut daemon, address) = start_daemon_with(zctrace, &["--top", "5000"])?;
    let samples = |body: &str| body.lines().filter(|l| !l.starts_with('#')).count();
    let mut spawned = 0;
    while samples(&scrape(&address)?.body) < 10_000 {
        for _ in 0..50 {
            Command::new(alias(dir, &format!("zcscrape-{spawned:04}"), "/bin/true")?).status()?;
            spawned += 1;
        }
    }
    let runs: Vec<Scrape> = (0..20).map(|_| scrape(&address)).collect::<Result<_>>()?;
    let millis = Stats::of(runs.iter().map(|r| r.millis).collect());
    let kib = runs.iter().map(|r| r.body.len()).max().unwrap_or(0) as f64 / 1024.0;
    let series = runs.iter().map(|r| samples(&r.body)).max().unwrap_or(0);
    let rss = memory_kib(daemon.id())?.rss;
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    daemon.wait()?;
    println!(
        "\n# daemon scrape over HTTP, {series} series from {spawned} processes: {} ms [min-max], {kib:.0} KiB, daemon {:.1} MiB resident",
        millis.show(1),
        rss as f64 / 1024.0
    );
    Ok(())
}

/// One GET of a daemon's /metrics.
pub(crate) struct Scrape {
    /// From the request to the body's last byte, read into memory as Prometheus reads it.
    pub millis: f64,
    pub body: String,
}

/// Timed in process: curl writing 750 KiB to a pipe or a file added 1.5 to 2.5 ms of its own.
pub(crate) fn scrape(address: &str) -> Result<Scrape> {
    let started = Instant::now();
    let body = ureq::get(&format!("http://{address}/metrics"))
        .call()
        .with_context(|| format!("scraping {address}"))?
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()?;
    Ok(Scrape {
        millis: started.elapsed().as_secs_f64() * 1e3,
        body,
    })
}

/// `dir/name`, a symlink to `target`: running it gives the process `name` as its comm.
pub(crate) fn alias(dir: &Path, name: &str, target: &str) -> Result<PathBuf> {
    let link = dir.join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(target, &link)?;
    }
    Ok(link)
}

/// User plus system CPU time of a process, in clock ticks (1/100 s).
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = procfs::process::Process::new(pid as i32)?.stat()?;
    Ok(stat.utime + stat.stime)
}

/// Resident memory now and at its peak, in KiB.
pub(crate) struct Memory {
    pub rss: u64,
    pub peak: u64,
}

pub(crate) fn memory_kib(pid: u32) -> Result<Memory> {
    let status = procfs::process::Process::new(pid as i32)?.status()?;
    let (rss, peak) = status
        .vmrss
        .zip(status.vmhwm)
        .context("no VmRSS or VmHWM in /proc/PID/status")?;
    Ok(Memory { rss, peak })
}

/// Median, min and max.
pub(crate) struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    pub(crate) fn of(mut values: Vec<f64>) -> Stats {
        values.sort_by(f64::total_cmp);
        Stats {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }

    pub(crate) fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} [{:.d$}-{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

pub(crate) fn payload(dir: &Path, size: u64) -> Result<PathBuf> {
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

/// How the sender of [`stacks_overhead`] runs: directly, under `attach`, under `attach --stacks`
/// (user stacks at every data-path syscall), under `attach --stacks both` (both stacks at every
/// observed copy), and under `attach --stacks` sampling a stack per 512 KiB on average.
const ATTACH_WAYS: [&[&str]; 5] = [
    &[],
    &["attach", "--json", "--"],
    &["attach", "--json", "--stacks", "--"],
    &["attach", "--json", "--stacks", "both", "--"],
    &["attach", "--json", "--stacks", "--stacks-period", "524288", "--"],
];

/// What recording stacks adds to a relay, against attach without them and against no tracing, by
/// the sender's own timing (attach's start-up is not in it).
fn stacks_overhead(zctrace: &Path, file: &Path, rounds: u32) -> Result<()> {
    println!(
        "\n# attach --stacks: read-write relays, {rounds} rounds of untraced / attach / attach --stacks / attach --stacks both / attach --stacks --stacks-period 524288, rotating order; ratios to untraced"
    );
    println!(
        "{:<18} {:>20} {:>20} {:>20} {:>20} {:>20} {:>8} {:>8} {:>8} {:>8}",
        "workload",
        "untraced MB/s",
        "attach MB/s",
        "--stacks MB/s",
        "--stacks both MB/s",
        "sampled MB/s",
        "attach",
        "stacks",
        "both",
        "sampled"
    );
    for chunk in [64 << 10, 4 << 10] {
        let runs: [Vec<Transfer>; 5] = rotating(rounds, |way| {
            transfer_via(zctrace, ATTACH_WAYS[way], "read-write", file, chunk)
        })?;
        let [plain, attached, user, both, sampled] = runs
            .each_ref()
            .map(|r| Stats::of(r.iter().map(|t| t.bytes_per_second / 1e6).collect()));
        println!(
            "{:<18} {:>20} {:>20} {:>20} {:>20} {:>20} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            format!("read-write {}KiB", chunk >> 10),
            plain.show(0),
            attached.show(0),
            user.show(0),
            both.show(0),
            sampled.show(0),
            attached.median / plain.median,
            user.median / plain.median,
            both.median / plain.median,
            sampled.median / plain.median,
        );
    }
    Ok(())
}

/// What the daemon's byte-sampled profiles add to the whole workloads the daemon is measured on,
/// against the same daemon without them: at the default period, and at a sixteenth of it.
fn profiles_overhead(zctrace: &Path, file: &Path, rounds: u32) -> Result<()> {
    println!(
        "\n# daemon --profiles: {rounds} rounds of daemon / daemon --profiles (1 MiB period) / --profiles.period 65536, rotating order; ratios to the daemon without profiles"
    );
    println!(
        "{:<32} {:>22} {:>22} {:>22} {:>13} {:>13}",
        "workload", "daemon", "--profiles", "period 65536", "profiles", "64 KiB"
    );
    let ways: [Way; 3] = [
        Some(&[]),
        Some(&["--profiles"]),
        Some(&["--profiles", "--profiles.period", "65536"]),
    ];
    workload_rows(zctrace, file, rounds, ways)?;
    let memory = |flags: &[&str]| profiled_daemon_memory(zctrace, file, flags);
    let (plain, profiled) = (memory(&[])?, memory(&["--profiles"])?);
    println!(
        "daemon resident memory after a 4 KiB relay and a profile, MiB: {:.1} (peak {:.1}); with --profiles {:.1} (peak {:.1})",
        plain.rss as f64 / 1024.0,
        plain.peak as f64 / 1024.0,
        profiled.rss as f64 / 1024.0,
        profiled.peak as f64 / 1024.0,
    );
    Ok(())
}

/// A daemon's resident memory once a 4 KiB relay has run beside it and its copy profile (where
/// it has one) has been taken: the kernel's symbols, the relay's named sites and the profile.
fn profiled_daemon_memory(zctrace: &Path, file: &Path, flags: &[&str]) -> Result<Memory> {
    with_daemon_at(zctrace, flags, |daemon, address| {
        transfer(zctrace, "read-write", file, 4 << 10)?;
        if flags.contains(&"--profiles") {
            ureq::get(&format!("http://{address}/debug/pprof/copies"))
                .call()
                .with_context(|| format!("the profile from {address}"))?
                .body_mut()
                .read_to_vec()?;
        }
        memory_kib(daemon.id())
    })
}

fn transfer(zctrace: &Path, method: &str, file: &Path, chunk: u64) -> Result<Transfer> {
    transfer_via(zctrace, &[], method, file, chunk)
}

/// One transfer to a `zctrace serve` receiver, its sender started through `wrapper` (zctrace's
/// arguments before the sender's own command line; empty: started directly).
fn transfer_via(zctrace: &Path, wrapper: &[&str], method: &str, file: &Path, chunk: u64) -> Result<Transfer> {
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
    let mut sender = Command::new(zctrace);
    if !wrapper.is_empty() {
        sender.args(wrapper).arg(zctrace);
    }
    let output = sender
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
    // The sender's report is its first line; under attach, attach's own report follows.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().next().context("no report")?)?;
    let bytes = report["bytes"].as_f64().context("bytes")?;
    let seconds = report["seconds"].as_f64().context("seconds")?;
    let cpu = report["cpu_seconds"].as_f64().context("cpu_seconds")?;
    Ok(Transfer {
        bytes_per_second: bytes / seconds,
        cpu_seconds_per_gb: cpu / (bytes / 1e9),
    })
}

/// Runs `work` while a zctrace daemon (with `flags`) traces every process.
fn with_daemon<T>(zctrace: &Path, flags: &[&str], work: impl FnOnce() -> Result<T>) -> Result<T> {
    with_daemon_at(zctrace, flags, |_, _| work())
}

/// Runs `work` on a zctrace daemon (with `flags`) and the address it serves on, while it traces
/// every process.
fn with_daemon_at<T>(
    zctrace: &Path,
    flags: &[&str],
    work: impl FnOnce(&Child, &str) -> Result<T>,
) -> Result<T> {
    let (mut daemon, address) = start_daemon_with(zctrace, flags)?;
    let result = work(&daemon, &address);
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    daemon.wait()?;
    // Programs are freed shortly after the daemon exits; let the next run start clean.
    std::thread::sleep(Duration::from_millis(200));
    result
}

/// A zctrace daemon with `extra` flags on a free loopback port, and the address it serves on.
pub(crate) fn start_daemon_with(zctrace: &Path, extra: &[&str]) -> Result<(Child, String)> {
    let mut daemon = Command::new(zctrace)
        .args([
            "daemon",
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.level",
            "info",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()?;
    match serving_address(&mut daemon) {
        Ok(address) => Ok((daemon, address)),
        Err(e) => {
            let _ = daemon.kill();
            let _ = daemon.wait();
            Err(e)
        }
    }
}

fn serving_address(child: &mut Child) -> Result<String> {
    let stderr = child.stderr.take().context("daemon stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if line.contains("serving metrics") {
            let address = line.split("address=").nth(1).context("no address= in the log")?;
            return Ok(address.split_whitespace().next().unwrap_or_default().to_string());
        }
    }
    bail!("the daemon exited before serving metrics")
}
