//! Faults the daemon must ride out: a probe the kernel lacks, a restart, and processes that exit
//! or get their PID recycled while Prometheus scrapes.
mod common;

use std::{
    collections::HashMap,
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;

/// Runs `binary ARGS` to completion with no input and returns its PID.
fn run_to_exit(binary: &Path, args: &[&str]) -> u32 {
    let mut command = Command::new(binary);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    Traced::spawn(&mut command).wait_ok().tgid
}

/// Polls the daemon until `ready` accepts its metrics; returns them.
fn metrics_once(daemon: &Daemon, what: &str, ready: impl Fn(&str) -> bool) -> String {
    eventually(what, Duration::from_secs(30), || {
        let metrics = daemon.metrics();
        if ready(&metrics) {
            Ok(metrics)
        } else {
            Err(metrics)
        }
    })
}

fn getppid_calls(metrics: &str, comm: &str) -> Option<f64> {
    sample(
        metrics,
        "zctrace_syscalls_total",
        &[("comm", comm), ("syscall", "getppid")],
    )
}

#[test]
fn a_probe_the_kernel_lacks_is_reported_and_the_others_count() {
    if !privileged("a_probe_the_kernel_lacks_is_reported_and_the_others_count") {
        return;
    }
    // Not the exec or exit probe: without those, names and exits would (rightly) degrade.
    let daemon = Daemon::start(&[
        "--probe.hook",
        "skb_copy_datagram_iovec=zctrace_no_such_tracepoint",
    ]);
    run_to_exit(&renamed_zctrace("zc-lacking"), &["workload", "getppid", "2345"]);
    let metrics = metrics_once(&daemon, "zc-lacking's calls", |m| {
        getppid_calls(m, "zc-lacking").is_some()
    });
    assert_eq!(getppid_calls(&metrics, "zc-lacking"), Some(2345.0));
    let attached = |probe| sample(&metrics, "zctrace_probe_attached", &[("probe", probe)]);
    assert_eq!(
        sample(
            &metrics,
            "zctrace_probe_attached",
            &[("probe", "skb_copy_datagram_iovec"), ("mode", "unavailable")]
        ),
        Some(0.0)
    );
    for probe in [
        "sys_exit",
        "sched_switch",
        "sched_process_exit",
        "task_rename",
        "tcp_send",
    ] {
        assert_eq!(attached(probe), Some(1.0), "{probe}");
    }
    let log = daemon.log.lock().unwrap().clone();
    assert!(
        log.contains("WARN") && log.contains("zctrace_no_such_tracepoint"),
        "the failure and its reason are logged:\n{log}"
    );
    // Runs the kernel skipped are exported wherever it counts them (bpf_prog_info, from 5.12).
    let btf = zctrace::probes::btf::kernel_btf().unwrap();
    let counted = zctrace::probes::btf::field_offset(&btf, "bpf_prog_info", "recursion_misses").is_ok();
    let missed = sample(
        &metrics,
        "zctrace_program_missed_runs_total",
        &[("program", "sys_exit")],
    );
    assert_eq!(missed.is_some(), counted, "sys_exit's skipped runs: {missed:?}");
}

#[test]
fn a_restart_resets_counters_cleanly_for_prometheus() {
    if !privileged("a_restart_resets_counters_cleanly_for_prometheus") {
        return;
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let first = Daemon::start_at(&listen, &[]);
    let prometheus = Prometheus::start(&listen, None);
    let binary = renamed_zctrace("zc-restart");
    let series = r#"zctrace_syscalls_total{comm="zc-restart",syscall="getppid"}"#;
    let scraped = |value: f64| {
        eventually(
            &format!("Prometheus scraping {value}"),
            Duration::from_secs(30),
            || {
                let result = prometheus.query(&format!("{series} == {value}"));
                if result.is_empty() {
                    Err(format!("{:?}", prometheus.query(series)))
                } else {
                    Ok(())
                }
            },
        )
    };
    run_to_exit(&binary, &["workload", "getppid", "1000"]);
    scraped(1000.0);
    assert!(first.stop().success());

    let second = Daemon::start_at(&listen, &[]);
    run_to_exit(&binary, &["workload", "getppid", "700"]);
    scraped(700.0);
    let metrics = second.metrics();
    assert_eq!(
        getppid_calls(&metrics, "zc-restart"),
        Some(700.0),
        "the new daemon counts from zero: what ran before it is not carried over"
    );
    let value = |promql: &str| -> f64 {
        let result = prometheus.query(promql);
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    assert_eq!(value(&format!("resets({series}[5m])")), 1.0);
    assert_eq!(value("changes(zctrace_start_time_seconds[5m])"), 1.0);
    let increase = value(&format!("increase({series}[5m])"));
    assert!(
        increase >= 700.0,
        "increase() counts across the reset, got {increase}"
    );
}

/// Remembers every counter's last value and panics if one goes down.
#[derive(Default)]
struct MonotonicCheck {
    last: HashMap<String, f64>,
}

impl MonotonicCheck {
    fn check(&mut self, scrape: usize, body: &str) {
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            if !series.split('{').next().unwrap().ends_with("_total") {
                continue;
            }
            if let Some(previous) = self.last.insert(series.to_string(), value) {
                assert!(
                    value >= previous,
                    "scrape {scrape}: {series} went from {previous} to {value}"
                );
            }
        }
    }
}

fn null_writes(metrics: &str, comm: &str) -> Option<f64> {
    sample(
        metrics,
        "zctrace_bytes_total",
        &[("comm", comm), ("syscall", "write"), ("dst", "null")],
    )
}

#[test]
fn processes_that_exit_or_recycle_a_pid_mid_scrape_lose_nothing() {
    if !privileged("processes_that_exit_or_recycle_a_pid_mid_scrape_lose_nothing") {
        return;
    }
    const CHURN: usize = 60;
    const TOP: usize = 30;
    const FILE: u64 = 256 * 1024;
    let daemon = Arc::new(Daemon::start(&[
        "--comm",
        "^zc-",
        "--top",
        &TOP.to_string(),
        "--series.grace-period",
        "4s",
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (daemon, stop) = (daemon.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut check = MonotonicCheck::default();
            let mut scrapes = 0;
            while !stop.load(Ordering::Relaxed) {
                check.check(scrapes, &daemon.metrics());
                scrapes += 1;
            }
            scrapes
        })
    };
    // First, so its comm gets a series of its own before the churn fills --top.
    let recycler = renamed_zctrace("zc-recycle");
    let first = run_to_exit(&recycler, &["workload", "getppid", "300"]);
    let recycled = (0..50).any(|_| {
        fs::write("/proc/sys/kernel/ns_last_pid", (first - 1).to_string()).expect("ns_last_pid");
        run_to_exit(&recycler, &["workload", "getppid", "500"]) == first
    });
    assert!(recycled, "could not get PID {first} back in 50 attempts");
    let file = test_file(FILE);
    for n in 0..CHURN {
        let status = Command::new(named_link("/bin/cat", &format!("zc-churn-{n:02}")))
            .arg(&file)
            .stdout(fs::File::create("/dev/null").unwrap())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let settled = metrics_once(&daemon, "both processes behind one PID (300 + 500 calls)", |m| {
        getppid_calls(m, "zc-recycle") == Some(800.0)
    });
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("a counter went down mid-scrape");
    assert!(scrapes > 10, "only {scrapes} scrapes");

    let own: Vec<String> = (0..CHURN)
        .map(|n| format!("zc-churn-{n:02}"))
        .filter(|comm| null_writes(&settled, comm).is_some())
        .collect();
    assert!(!own.is_empty() && own.len() < TOP, "{} churn series", own.len());
    for comm in &own {
        assert_eq!(null_writes(&settled, comm), Some(FILE as f64), "{comm}");
    }
    let overflow = (CHURN - own.len()) as f64 * FILE as f64;
    assert!(
        null_writes(&settled, "other").unwrap_or(0.0) >= overflow,
        "the churn beyond --top is summed in comm=\"other\", not lost"
    );
    let dropped = sample(&settled, "zctrace_series_dropped_total", &[]).expect("drops are exported");
    assert!(dropped >= (CHURN - own.len()) as f64, "dropped {dropped}");

    let gone = metrics_once(&daemon, "the end of the grace period", |m| {
        !m.contains("comm=\"zc-churn-") && !m.contains("comm=\"zc-recycle\"")
    });
    assert!(
        null_writes(&gone, "other").unwrap_or(0.0) >= overflow,
        "comm=\"other\" keeps its counts"
    );
}

#[test]
fn a_daemon_with_only_an_instrument_serves() {
    if !privileged("a_daemon_with_only_an_instrument_serves") {
        return;
    }
    // The overhead bench times each program alone, the empty `floor` among them.
    let daemon = Daemon::start(&["--probes", "floor"]);
    let metrics = daemon.metrics();
    let attached = |probe, mode| {
        sample(
            &metrics,
            "zctrace_probe_attached",
            &[("probe", probe), ("mode", mode)],
        )
    };
    assert_eq!(attached("floor", "tp_btf"), Some(1.0), "{metrics}");
    assert_eq!(attached("sys_exit", "off"), Some(0.0), "{metrics}");
}
