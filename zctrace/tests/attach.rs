//! `zctrace attach`: the JSON report of real workloads, and every way to get it wrong.
mod common;

use std::process::Command;

use common::*;

const SIZE: u64 = 16 * MIB;

/// `zctrace attach --json -- zctrace send ...`; the report is the last line of stdout.
fn attach_send(method: &str, extra: &[&str]) -> serde_json::Value {
    without_missed_runs(method, || {
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
    })
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
        copy_path_advice(&r).is_empty(),
        "nothing to improve: {}",
        r["advice"]
    );
}

/// The report's advice without the CPU-competition finding, where the report's own context
/// switches bear it out: a busy or emulated machine preempts even a sender that copies nothing.
fn copy_path_advice(r: &serde_json::Value) -> Vec<&str> {
    let switches = &r["totals"]["context_switches"];
    let involuntary = u(&switches["involuntary"]);
    let preempted = involuntary * 2 > involuntary + u(&switches["voluntary"]);
    let competing = format!("{involuntary} of ");
    r["advice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .filter(|a| !(preempted && a.starts_with(&competing) && a.contains("were involuntary")))
        .collect()
}

#[test]
fn read_write_report() {
    if !privileged("read_write_report") {
        return;
    }
    let r = attach_send("read-write", &[]);
    assert_eq!(r["io_style"], "read_write_relay");
    assert_eq!(u(&path(&r, "write", "user", "tcp")["bytes"]), SIZE);
    // The kernel saw most writes leave from the buffer the read before had filled: the evidence
    // of a relay. Its first chunks, before the thread's first switch-out, go unseen.
    let relayed = u(&path(&r, "write", "user", "tcp")["relayed_bytes"]);
    assert!((SIZE / 2..=SIZE).contains(&relayed), "{r:#}");
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
    assert_eq!(r["io_style"], "send_from_memory");
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
    let file = scratch_path("written-then-sent");
    let r = without_missed_runs("write-file-then-send", || {
        let receiver = Receiver::start(&[]);
        let report = attach_report(
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
        report
    });
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

/// The plain view of a command that exits mid-interval ends when it exits, not at the interval.
#[test]
fn a_short_command_ends_the_plain_view_when_it_exits() {
    if !privileged("a_short_command_ends_the_plain_view_when_it_exits") {
        return;
    }
    let output = Command::new(zctrace_bin())
        .args(["attach", "--plain", "--interval", "30s", "--", "sleep", "0.3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seconds: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("zctrace report for pid "))
        .and_then(|l| l.split(" over ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no report line: {stdout}"));
    assert!(
        (0.3..15.0).contains(&seconds),
        "traced for {seconds} s, not until the interval:\n{stdout}"
    );
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
    // By write (coreutils) or sendfile (busybox), every byte went into the pipe.
    let flows = report["flows"].as_array().unwrap();
    let into_pipe: u64 = flows
        .iter()
        .filter(|f| f["dst"] == "pipe")
        .map(|f| u(&f["bytes"]))
        .sum();
    assert_eq!(into_pipe, MIB, "{report:#}");
    // zctrace's gate before the exec is no data-path call of the command's.
    assert!(!flows.iter().any(|f| f["src"] == "pipe"), "{report:#}");
}

/// A shell line that starts two senders in the background, one by sendfile and one by
/// read-write, each to its own receiver, and waits for both: the shell moves no data itself.
fn two_senders(file: &std::path::Path, receivers: &[Receiver; 2]) -> String {
    format!(
        "{} & {} & wait",
        send_command("sendfile", file, &receivers[0]),
        send_command("read-write", file, &receivers[1])
    )
}

/// A shell command line that sends `file` to `receiver` by `method`.
fn send_command(method: &str, file: &std::path::Path, receiver: &Receiver) -> String {
    format!(
        "{} send --method {method} --file {} --to {} --chunk 65536",
        zctrace_bin(),
        file.display(),
        receiver.addr
    )
}

/// Exactly the transfers of [`two_senders`]: one by sendfile, one by read-write.
fn check_two_transfers(report: &serde_json::Value) {
    for (syscall, src) in [("sendfile", "file"), ("write", "user")] {
        let bytes = u(&path(report, syscall, src, "tcp")["bytes"]);
        assert_eq!(bytes, SIZE, "{syscall}: {report:#}");
    }
}

/// The pids of the report's process rows.
fn row_pids(report: &serde_json::Value) -> Vec<u64> {
    let rows = report["processes"].as_array().expect("a row per process");
    rows.iter().map(|r| u(&r["pid"])).collect()
}

/// The tree's totals: exactly the two children's transfers, and each process's row adds up to
/// them.
fn check_tree(report: &serde_json::Value, shell: u32) {
    check_two_transfers(report);
    // The read-write sender's reads of the file, and the start-up reads of every process.
    let read = u(&path(report, "read", "file", "user")["bytes"]);
    assert!((SIZE..SIZE + MIB).contains(&read), "{report:#}");
    let rows = report["processes"].as_array().expect("a row per process");
    assert_eq!(rows[0]["pid"], shell, "the traced process first: {report:#}");
    let senders = rows
        .iter()
        .filter(|r| r["parent_pid"] == shell && u(&r["bytes"]) >= SIZE);
    assert_eq!(senders.count(), 2, "{report:#}");
    check_rows_add_up(report);
}

/// A shell that waits for a line on its stdin, then becomes (exec) `command`.
fn held(command: &str) -> std::process::Child {
    Command::new("sh")
        .args(["-c", &format!("read go; {command}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Lets a [`held`] shell go on, and checks that it succeeded.
fn release(mut held: std::process::Child) {
    use std::io::Write as _;
    held.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(held.wait().unwrap().success());
}

/// `attach --follow -- sh -c '…'`: a shell wrapper is traced with the processes it starts.
#[test]
fn follow_traces_a_shell_wrapper_with_the_processes_it_starts() {
    if !privileged("follow_traces_a_shell_wrapper_with_the_processes_it_starts") {
        return;
    }
    let report = without_missed_runs("a followed shell wrapper", || {
        let receivers = [Receiver::start(&[]), Receiver::start(&[])];
        let script = two_senders(&test_file(SIZE), &receivers);
        let report = attach_report(
            Command::new(zctrace_bin()).args(["attach", "--json", "--follow", "--", "sh", "-c", &script]),
        );
        for receiver in receivers {
            receiver.finish();
        }
        report
    });
    check_tree(&report, u(&report["pid"]) as u32);
}

/// `attach --follow --pid` of a process that forks its workers after the attach: its children's
/// bytes and copies are the tree's.
#[test]
fn follow_traces_the_children_a_running_process_forks() {
    if !privileged("follow_traces_the_children_a_running_process_forks") {
        return;
    }
    let report = without_missed_runs("a followed running process", || {
        let receivers = [Receiver::start(&[]), Receiver::start(&[])];
        let shell = held(&two_senders(&test_file(SIZE), &receivers));
        let pid = shell.id();
        let (attach, _log) = attach_started(&["--follow", "--pid", &pid.to_string()]);
        release(shell);
        let report = report_of(attach.wait_with_output().unwrap());
        for receiver in receivers {
            receiver.finish();
        }
        assert_eq!(u(&report["pid"]), u64::from(pid), "{report:#}");
        report
    });
    check_tree(&report, u(&report["pid"]) as u32);
}

/// `attach --pid A --pid B`: two running processes traced together, each exactly, with a row
/// each that adds up to the totals.
#[test]
fn several_pids_are_traced_together() {
    if !privileged("several_pids_are_traced_together") {
        return;
    }
    let report = without_missed_runs("several traced processes", || {
        let receivers = [Receiver::start(&[]), Receiver::start(&[])];
        let file = test_file(SIZE);
        let send = |method: &str, receiver: &Receiver| {
            held(&format!("exec {}", send_command(method, &file, receiver)))
        };
        let senders = [send("sendfile", &receivers[0]), send("read-write", &receivers[1])];
        let pids = senders.each_ref().map(|s| s.id());
        let (attach, _log) = attach_started(&["--pid", &pids[0].to_string(), "--pid", &pids[1].to_string()]);
        senders.into_iter().for_each(release);
        let report = report_of(attach.wait_with_output().unwrap());
        for receiver in receivers {
            receiver.finish();
        }
        assert_eq!(report["pids"], serde_json::json!(pids), "{report:#}");
        report
    });
    let pids: Vec<u64> = report["pids"].as_array().unwrap().iter().map(u).collect();
    assert_eq!(u(&report["pid"]), pids[0], "{report:#}");
    check_two_transfers(&report);
    let rows = row_pids(&report);
    assert_eq!(rows.len(), 2, "only the two traced processes: {report:#}");
    assert!(rows.iter().all(|pid| pids.contains(pid)), "{report:#}");
    check_rows_add_up(&report);
}

/// `attach --container ID`: every process of a container, found by its cgroup under the start
/// of its id, and no other process.
#[test]
fn a_container_is_traced_by_the_start_of_its_id() {
    if !privileged("a_container_is_traced_by_the_start_of_its_id") {
        return;
    }
    const CONTAINER: &str = "4444444444444444444444444444444444444444444444444444444444444444";
    let cgroups = TestCgroups::new("attach-container");
    let scope = cgroups.make(&format!("/system.slice/docker-{CONTAINER}.scope"));
    let report = without_missed_runs("a traced container", || {
        let receivers = [Receiver::start(&[]), Receiver::start(&[]), Receiver::start(&[])];
        let file = test_file(SIZE);
        let send = |method: &str, receiver: &Receiver, inside: bool| {
            let enter = match inside {
                true => format!("echo $$ > {}; ", cgroups.procs(&scope).display()),
                false => String::new(),
            };
            held(&format!("{enter}exec {}", send_command(method, &file, receiver)))
        };
        let senders = [
            send("sendfile", &receivers[0], true),
            send("read-write", &receivers[1], true),
            send("splice", &receivers[2], false),
        ];
        let pids = senders.each_ref().map(|s| u64::from(s.id()));
        let (attach, _log) = attach_started(&["--container", &CONTAINER[..12]]);
        senders.into_iter().for_each(release);
        let attach_pid = nix::unistd::Pid::from_raw(attach.id() as i32);
        nix::sys::signal::kill(attach_pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let report = report_of(attach.wait_with_output().unwrap());
        for receiver in receivers {
            receiver.finish();
        }
        let rows = row_pids(&report);
        assert_eq!(rows.len(), 2, "the container's two processes: {report:#}");
        assert!(rows.contains(&pids[0]) && rows.contains(&pids[1]), "{report:#}");
        report
    });
    assert_eq!(report["target"], format!("container {CONTAINER}"), "{report:#}");
    assert!(report.get("pid").is_none(), "{report:#}");
    check_two_transfers(&report);
    let flows = report["flows"].as_array().unwrap();
    assert!(
        !flows.iter().any(|f| f["syscall"] == "splice"),
        "the outsider's splices: {report:#}"
    );
    check_rows_add_up(&report);
}

/// A container or unit that no cgroup here is, or an id that is not one, is refused up front.
#[test]
fn a_container_or_unit_that_is_not_here_is_refused() {
    if !privileged("a_container_or_unit_that_is_not_here_is_refused") {
        return;
    }
    let refusal = |args: &[&str]| {
        let output = Command::new(zctrace_bin())
            .arg("attach")
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let missing = refusal(&["--container", "fedcba9876543210"]);
    assert!(
        missing.contains("no container on this host has an id starting fedcba9876543210"),
        "{missing}"
    );
    let unit = refusal(&["--unit", "zctrace-no-such-unit"]);
    assert!(unit.contains("zctrace-no-such-unit.service"), "{unit}");
    let bad = refusal(&["--container", "XYZ"]);
    assert!(bad.contains("is not a container id"), "{bad}");
}

/// Without --follow, a parent that moved nothing while its children exist says where to look.
#[test]
fn an_idle_parent_says_its_children_can_be_followed() {
    if !privileged("an_idle_parent_says_its_children_can_be_followed") {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    // Its child outlives attach's start-up, which takes a while under emulation; both go with
    // their process group.
    let mut shell = Command::new("sh")
        .args(["-c", "sleep 600 & wait"])
        .process_group(0)
        .spawn()
        .unwrap();
    let output = Command::new(zctrace_bin())
        .args([
            "attach",
            "--json",
            "--duration",
            "1",
            "--pid",
            &shell.id().to_string(),
        ])
        .output()
        .unwrap();
    let group = nix::unistd::Pid::from_raw(shell.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = shell.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("moved no bytes itself, but has 1 child processes: --follow traces them too"),
        "{stderr}"
    );
}
