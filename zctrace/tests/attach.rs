//! `zctrace attach`: the JSON report of real workloads, and every way to get it wrong.
mod common;

use std::process::Command;

use common::*;

const SIZE: u64 = 16 * MIB;

/// `zctrace attach --json -- zctrace send ...`; the report is the last line of stdout.
fn attach_send(method: &str, extra: &[&str]) -> serde_json::Value {
    let receiver = Receiver::start(&[]);
    let file = test_file(SIZE);
    let report = attach_report(
        Command::new(zctrace_bin())
            .args(["attach", "--json"])
            .args(extra)
            .args(["--", zctrace_bin(), "send", "--method", method, "--file"])
            .arg(&file)
            .args(["--to", &receiver.addr, "--chunk", "65536"]),
    );
    receiver.finish();
    report
}

fn path<'a>(report: &'a serde_json::Value, syscall: &str, src: &str, dst: &str) -> &'a serde_json::Value {
    report["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["syscall"] == syscall && p["src"] == src && p["dst"] == dst)
        .unwrap_or_else(|| panic!("no {syscall} {src}->{dst} in {report:#}"))
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn sendfile_report() {
    if !privileged("sendfile_report") {
        return;
    }
    let r = attach_send("sendfile", &[]);
    assert_eq!(r["io_style"], "sendfile");
    assert_eq!(u(&path(&r, "sendfile", "file", "tcp")["bytes"]), SIZE);
    assert_eq!(u(&path(&r, "sendfile", "file", "tcp")["cpu_copy_bytes"]), 0);
    assert_eq!(path(&r, "sendfile", "file", "tcp")["basis"], "model");
    assert!(r["totals"]["copies_per_byte"].as_f64().unwrap() < 0.01);
    assert_eq!(u(&r["observed"]["tcp_send_bytes"]["splice"]), SIZE);
    assert_eq!(
        (r["exited"].as_bool(), r["exit_code"].as_i64()),
        (Some(true), Some(0))
    );
    assert_eq!(r["comm"], "zctrace");
    assert!(u(&r["totals"]["syscalls"]) > 0);
    assert_eq!(u(&r["totals"]["mode_switches"]), 2 * u(&r["totals"]["syscalls"]));
    assert!(
        r["advice"].as_array().unwrap().is_empty(),
        "nothing to improve: {}",
        r["advice"]
    );
}

#[test]
fn read_write_report() {
    if !privileged("read_write_report") {
        return;
    }
    let r = attach_send("read-write", &[]);
    assert_eq!(r["io_style"], "read_write_relay");
    assert_eq!(u(&path(&r, "write", "user", "tcp")["bytes"]), SIZE);
    assert!(u(&path(&r, "read", "file", "user")["bytes"]) >= SIZE);
    let copies = r["totals"]["copies_per_byte"].as_f64().unwrap();
    assert!(
        (1.99..2.01).contains(&copies),
        "two copies per delivered byte, got {copies}"
    );
    assert!(r["advice"][0].as_str().unwrap().contains("sendfile()"));
}

#[test]
fn mmap_write_report() {
    if !privileged("mmap_write_report") {
        return;
    }
    let r = attach_send("mmap-write", &[]);
    assert_eq!(r["io_style"], "mmap_write");
    assert_eq!(u(&path(&r, "write", "user", "tcp")["cpu_copy_bytes"]), SIZE);
    let copies = r["totals"]["copies_per_byte"].as_f64().unwrap();
    assert!(
        (0.99..1.01).contains(&copies),
        "one copy per delivered byte, got {copies}"
    );
}

#[test]
fn splice_report() {
    if !privileged("splice_report") {
        return;
    }
    let r = attach_send("splice", &[]);
    assert_eq!(r["io_style"], "splice_pipeline");
    assert_eq!(u(&path(&r, "splice", "file", "pipe")["bytes"]), SIZE);
    assert_eq!(u(&path(&r, "splice", "pipe", "tcp")["bytes"]), SIZE);
    assert_eq!(u(&path(&r, "splice", "pipe", "tcp")["cpu_copy_bytes"]), 0);
}

#[test]
fn a_file_writer_that_sends_by_sendfile_is_a_sendfile_sender() {
    if !privileged("a_file_writer_that_sends_by_sendfile_is_a_sendfile_sender") {
        return;
    }
    let receiver = Receiver::start(&[]);
    let file = scratch_path("written-then-sent");
    let r = attach_report(
        Command::new(zctrace_bin())
            .args([
                "attach",
                "--json",
                "--",
                zctrace_bin(),
                "workload",
                "write-file-then-send",
            ])
            .args([
                "--size",
                &SIZE.to_string(),
                "--method",
                "sendfile",
                "--to",
                &receiver.addr,
                "--file",
            ])
            .arg(&file),
    );
    receiver.finish();
    assert_eq!(u(&path(&r, "write", "user", "file")["bytes"]), SIZE);
    assert_eq!(u(&path(&r, "sendfile", "file", "tcp")["bytes"]), SIZE);
    assert_eq!(r["io_style"], "sendfile", "{r:#}");
}

#[test]
fn attach_works_beside_a_running_daemon() {
    if !privileged("attach_works_beside_a_running_daemon") {
        return;
    }
    let daemon = Daemon::start(&[]);
    let r = attach_send("sendfile", &[]);
    assert_eq!(u(&path(&r, "sendfile", "file", "tcp")["bytes"]), SIZE);
    assert!(daemon.metrics().contains("zctrace_bytes_total"));
}

#[test]
fn a_process_that_exits_midway_is_reported_as_exited() {
    if !privileged("a_process_that_exits_midway_is_reported_as_exited") {
        return;
    }
    let mut sleeper = Command::new("sleep").arg("1").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let reaper = std::thread::spawn(move || sleeper.wait());
    let started = std::time::Instant::now();
    let output = Command::new(zctrace_bin())
        .args(["attach", "--json", "--duration", "120s", "--pid", &pid])
        .output()
        .unwrap();
    reaper.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Far below --duration, even where loading the probes is slow (emulated VMs).
    assert!(
        started.elapsed().as_secs() < 60,
        "stopped when the process exited, not at --duration"
    );
    let r: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(r["exited"], true);
    assert!(String::from_utf8_lossy(&output.stderr).contains("exited"));
}

#[test]
fn a_command_that_cannot_start_is_an_error() {
    if !privileged("a_command_that_cannot_start_is_an_error") {
        return;
    }
    let output = Command::new(zctrace_bin())
        .args(["attach", "--json", "--", "/nonexistent/zctrace-no-such-command"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot start \"/nonexistent/zctrace-no-such-command\": ENOENT"),
        "{stderr}"
    );
}

#[test]
fn bad_pids_are_refused_with_the_reason() {
    fails_with(&["attach", "--pid", "0"], "--pid");
    fails_with(&["attach", "--pid", "-7"], "--pid");
    fails_with(&["attach", "--pid", "4194304"], "--pid 4194304: no such process");
    fails_with(&["attach", "--pid", "2"], "is a kernel thread");
    fails_with(&["attach"], "--pid");
    fails_with(&["attach", "--pid", "1", "--duration", "forever"], "--duration");
}

/// A launched command that moves itself into a container's cgroup and execs, as runc starts a
/// container's first process: the report names the cgroup it moved to, and that container.
#[test]
fn a_command_that_moves_to_another_cgroup_is_reported_in_the_new_one() {
    if !privileged("a_command_that_moves_to_another_cgroup_is_reported_in_the_new_one") {
        return;
    }
    const CONTAINER: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    let cgroups = TestCgroups::new("attach-moved");
    let moved = cgroups.make(&format!("/system.slice/docker-{CONTAINER}.scope"));
    let receiver = Receiver::start(&[]);
    let script = format!(
        "read line < {file}; echo $$ > {procs} && exec {zctrace} send --method sendfile --file {file} --to {to} --chunk 65536",
        file = test_file(MIB).display(),
        procs = cgroups.procs(&moved).display(),
        zctrace = zctrace_bin(),
        to = receiver.addr,
    );
    let report =
        attach_report(Command::new(zctrace_bin()).args(["attach", "--json", "--", "sh", "-c", &script]));
    receiver.finish();
    assert_eq!(report["cgroup"], moved.as_str(), "{report:#}");
    assert_eq!(report["workload"]["container_id"], CONTAINER, "{report:#}");
    assert!(u(&report["totals"]["bytes"]) >= MIB, "{report:#}");
}

/// With `--output`, the report goes to its own file and a launched command's stdout stays the
/// command's own: `cat FILE` prints FILE byte for byte.
#[test]
fn the_report_in_its_own_file_leaves_the_commands_output_untouched() {
    if !privileged("the_report_in_its_own_file_leaves_the_commands_output_untouched") {
        return;
    }
    let file = test_file(MIB);
    let report_path = scratch_path("cat-report.json");
    let _ = std::fs::remove_file(&report_path);
    let output = Command::new(zctrace_bin())
        .args(["attach", "--json", "--output"])
        .arg(&report_path)
        .args(["--", "cat"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stdout == std::fs::read(&file).unwrap(),
        "cat's output was changed"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["comm"], "cat");
    assert_eq!(
        u(&path(&report, "write", "user", "pipe")["bytes"]),
        MIB,
        "{report:#}"
    );
}
