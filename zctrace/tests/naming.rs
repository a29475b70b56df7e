//! Processes are named as `ps -o comm` names them: after prctl(PR_SET_NAME) renames, by their
//! thread-group leader rather than a worker thread, never with an empty name; and a series
//! appears only once it has something to say.
mod common;

use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use common::*;

const SIZE: u64 = MIB;
const RUNS: u64 = 20;

/// Arguments of a renamer: `new_name` after a pseudo-random delay, asleep in odd runs (so it has
/// switched out and has an entry under its old name) and on CPU in even ones.
fn rename_then_send(run: u64, new_name: &str, to: &str) -> Vec<String> {
    let after_ms = (run * 37) % 41;
    let file = test_file(SIZE);
    let mut args: Vec<String> = ["workload", "rename-then-send", "--name", new_name, "--after-ms"]
        .map(String::from)
        .to_vec();
    args.push(after_ms.to_string());
    if run.is_multiple_of(2) {
        args.push("--spin".into());
    }
    args.extend(["--method", "read-write", "--chunk", "65536", "--to", to, "--file"].map(String::from));
    args.push(file.display().to_string());
    args
}

/// Runs one renamer, started as `old_name`, against a fresh receiver. Tests running at once use
/// names of their own.
fn run_renamer(run: u64, old_name: &str, new_name: &str) {
    let receiver = Receiver::start(&[]);
    let status = Command::new(renamed_zctrace(old_name))
        .args(rename_then_send(run, new_name, &receiver.addr))
        .status()
        .unwrap();
    assert!(status.success(), "renamer {run}");
    receiver.finish();
}

fn tcp_writes(metrics: &str, comm: &str) -> Option<f64> {
    sample(
        metrics,
        "zctrace_bytes_total",
        &[
            ("comm", comm),
            ("syscall", "write"),
            ("src", "user"),
            ("dst", "tcp"),
        ],
    )
}

#[test]
fn the_daemon_reports_a_prctl_renamed_process_under_its_new_name() {
    if !privileged("the_daemon_reports_a_prctl_renamed_process_under_its_new_name") {
        return;
    }
    let daemon = Daemon::start(&[]);
    for run in 0..RUNS {
        run_renamer(run, "zc-early-d", "zc-renamed-d");
    }
    let metrics = daemon.metrics();
    // Each run writes the payload (its header goes by sendto).
    let expected = (RUNS * SIZE) as f64;
    assert_eq!(tcp_writes(&metrics, "zc-renamed-d"), Some(expected), "{metrics}");
    assert_eq!(
        tcp_writes(&metrics, "zc-early-d"),
        None,
        "nothing was sent before the rename"
    );
}

#[test]
fn attach_reports_a_prctl_renamed_process_under_its_new_name() {
    if !privileged("attach_reports_a_prctl_renamed_process_under_its_new_name") {
        return;
    }
    for run in 0..RUNS {
        let receiver = Receiver::start(&[]);
        let report = attach_report(
            Command::new(zctrace_bin())
                .args(["attach", "--json", "--"])
                .arg(renamed_zctrace("zc-early-a"))
                .args(rename_then_send(run, "zc-renamed-a", &receiver.addr)),
        );
        receiver.finish();
        assert_eq!(report["comm"], "zc-renamed-a", "run {run}");
        let written: u64 = report["flows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["syscall"] == "write" && p["dst"] == "tcp")
            .map(|p| p["bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(written, SIZE, "run {run}");
    }
}

#[test]
fn top_shows_a_prctl_renamed_process_under_its_new_name() {
    if !privileged("top_shows_a_prctl_renamed_process_under_its_new_name") {
        return;
    }
    let top = Command::new(zctrace_bin())
        .args([
            "top",
            "--plain",
            "--interval",
            "0.5",
            "--duration",
            "12",
            "--rows",
            "200",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_secs(2));
    for run in 0..RUNS {
        run_renamer(run, "zc-early-t", "zc-renamed-t");
    }
    let output = top.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&output.stdout).into_owned();
    let rows = |comm: &str| -> Vec<Vec<String>> {
        lines
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .filter(|words| words.get(1).is_some_and(|c| c == comm))
            .collect()
    };
    assert!(!rows("zc-renamed-t").is_empty(), "{lines}");
    // Columns: pid comm copied-MB/s moved-MB/s ... ; the old name moved at most start-up bytes.
    for row in rows("zc-early-t") {
        let moved: f64 = row[3].parse().unwrap_or(0.0);
        assert!(moved < 0.5, "only start-up under the old name: {row:?}\n{lines}");
    }
}

#[test]
fn a_process_is_named_by_its_leader_not_by_the_thread_that_works() {
    if !privileged("a_process_is_named_by_its_leader_not_by_the_thread_that_works") {
        return;
    }
    let daemon = Daemon::start(&[]);
    let receiver = Receiver::start(&[]);
    let status = Command::new(renamed_zctrace("zc-leader"))
        .args(["workload", "send-from-thread", "--worker", "zc-worker"])
        .args([
            "--method",
            "read-write",
            "--chunk",
            "65536",
            "--to",
            &receiver.addr,
            "--file",
        ])
        .arg(test_file(SIZE))
        .status()
        .unwrap();
    assert!(status.success());
    receiver.finish();
    let metrics = daemon.metrics();
    assert_eq!(tcp_writes(&metrics, "zc-leader"), Some(SIZE as f64), "{metrics}");
    assert!(!metrics.contains("comm=\"zc-worker\""), "{metrics}");
}

#[test]
fn idle_processes_get_no_series_at_zero_and_no_process_an_empty_name() {
    if !privileged("idle_processes_get_no_series_at_zero_and_no_process_an_empty_name") {
        return;
    }
    let daemon = Daemon::start(&["--series.grace-period", "60"]);
    // zctrace's own sleeper rather than sleep(1), which is busybox in the VMs and would take its
    // name for an applet's.
    let idle: Vec<_> = (0..50)
        .map(|_| {
            Command::new(renamed_zctrace("zc-idle"))
                .args(["workload", "sleep-spin", "--sleeps", "1500", "--spin-ms", "0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    sleep(Duration::from_secs(1));
    let while_alive = daemon.metrics();
    for mut process in idle {
        process.wait().unwrap();
    }
    // The sweep folds exits every 2 s; let it retire all fifty.
    sleep(Duration::from_secs(5));
    let after_exit = daemon.metrics();
    for metrics in [&while_alive, &after_exit] {
        assert!(metrics.contains("comm=\"zc-idle\""), "{metrics}");
        assert!(!metrics.contains("comm=\"\""), "{metrics}");
        // A path that moved bytes shows its copies even at 0; nothing else may sit at 0.
        let zeros: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("comm=\"zc-idle\"") && l.ends_with(" 0"))
            .filter(|l| !l.starts_with("zctrace_cpu_copy_bytes_total{"))
            .collect();
        assert!(zeros.is_empty(), "series at zero: {zeros:#?}");
    }
}
