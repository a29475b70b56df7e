//! What must hold on every kernel of the matrix: the host's, and each one `cargo xtask vmtest`
//! boots. Kernels offer different hooks; zctrace must take the best each offers, say which, and
//! count the same.
mod common;

use std::{path::Path, process::Command};

use common::*;
use zctrace::{accounting::OBSERVED_ROUTINES, probes::catalog};

/// One row of `zctrace probes`.
struct ProbeRow {
    probe: String,
    mode: String,
    /// Each way's refusal, for a probe no way attached.
    reasons: String,
}

fn probes(extra: &[&str]) -> (Vec<ProbeRow>, String) {
    let output = Command::new(zctrace_bin())
        .args(extra)
        .arg("probes")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows: Vec<ProbeRow> = Vec::new();
    for line in stdout.lines().skip(1).filter(|l| !l.starts_with("cpu copies")) {
        match line.strip_prefix("    ") {
            Some(reasons) => rows.last_mut().expect("a probe row").reasons = reasons.to_string(),
            None => {
                let words: Vec<&str> = line.split_whitespace().collect();
                rows.push(ProbeRow {
                    probe: words[0].to_string(),
                    mode: words[1].to_string(),
                    reasons: String::new(),
                });
            }
        }
    }
    (rows, stdout)
}

/// Whether this kernel has kprobes, told by their perf event source rather than by zctrace.
fn kernel_has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

#[test]
fn every_probe_attaches_in_the_best_way_this_kernel_offers() {
    if !privileged("every_probe_attaches_in_the_best_way_this_kernel_offers") {
        return;
    }
    let (rows, stdout) = probes(&[]);
    println!("{stdout}");
    assert!(rows.len() >= 12, "{stdout}");
    for row in &rows {
        let observer = row.probe.starts_with("copy_");
        if !observer || kernel_has_kprobes() {
            assert_ne!(
                row.mode, "unavailable",
                "{} can attach here:\n{stdout}",
                row.probe
            );
        }
        if row.mode == "unavailable" {
            for way in catalog::probe(&row.probe).unwrap().ways {
                let mode = way.mode.label();
                assert!(
                    row.reasons.contains(&format!("{mode}: ")),
                    "{} says why {mode} failed:\n{stdout}",
                    row.probe
                );
            }
        }
    }
    let observed = rows
        .iter()
        .filter(|r| r.probe.starts_with("copy_"))
        .all(|r| r.mode != "unavailable");
    assert_eq!(stdout.contains("observed beside the model"), observed, "{stdout}");
    copy_observers_attach_as_the_matrix_expects(&rows, &stdout);
    sys_exit_attaches_as_the_matrix_expects(&rows, &stdout);
}

/// `cargo xtask vmtest` says how each kernel must run sys_exit: by tp_btf, or by the classic
/// tracepoint where the kernel would preempt a raw tracepoint's program and skip other runs.
fn sys_exit_attaches_as_the_matrix_expects(rows: &[ProbeRow], stdout: &str) {
    let Ok(expected) = std::env::var("ZCTRACE_EXPECT_SYS_EXIT") else {
        return;
    };
    let sys_exit = rows
        .iter()
        .find(|r| r.probe == "sys_exit")
        .expect("a sys_exit row");
    assert_eq!(sys_exit.mode, expected, "how sys_exit attaches here:\n{stdout}");
    println!("sys_exit attached by {expected}, as expected here");
}

/// `cargo xtask vmtest` says how each kernel of its matrix must observe copies (arm64 gained
/// trampolines in 6.4): by trampolines, or by kprobes.
fn copy_observers_attach_as_the_matrix_expects(rows: &[ProbeRow], stdout: &str) {
    let Ok(expected) = std::env::var("ZCTRACE_EXPECT_COPY_HOOKS") else {
        return;
    };
    let modes: &[&str] = match expected.as_str() {
        "trampolines" => &["fexit", "fentry"],
        "kprobes" => &["kprobe"],
        other => panic!("ZCTRACE_EXPECT_COPY_HOOKS={other}: neither trampolines nor kprobes"),
    };
    for row in rows.iter().filter(|r| r.probe.starts_with("copy_")) {
        assert!(
            modes.contains(&row.mode.as_str()),
            "{} attached by {}, this kernel should observe copies by {expected}:\n{stdout}",
            row.probe,
            row.mode
        );
    }
    println!("copy observers attached by {expected}, as expected here");
}

#[test]
fn each_way_down_the_chain_attaches_where_the_better_one_is_refused() {
    if !privileged("each_way_down_the_chain_attaches_where_the_better_one_is_refused") {
        return;
    }
    let (best, _) = probes(&[]);
    let (fallback, stdout) = probes(&["--probe.without", "fentry,fexit"]);
    for (row, best) in fallback.iter().zip(&best) {
        match best.mode.as_str() {
            "fentry" | "fexit" => assert!(
                kernel_has_kprobes() && row.mode == "kprobe" || row.mode == "unavailable",
                "{} falls back to kprobes where they exist:\n{stdout}",
                row.probe
            ),
            mode => assert_eq!(row.mode, mode, "{} keeps its way:\n{stdout}", row.probe),
        }
        if row.mode == "unavailable" {
            assert!(row.reasons.contains("left out by --probe.without"), "{stdout}");
        }
    }
}

#[test]
fn doctor_agrees_with_the_sender_by_kprobes_too() {
    if !privileged("doctor_agrees_with_the_sender_by_kprobes_too") {
        return;
    }
    let output = Command::new(zctrace_bin())
        .args(["--probe.without", "fentry,fexit", "doctor"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("all methods agree"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Observed copies of one routine, by its `routine` label.
fn routine(copies: &[u64], name: &str) -> u64 {
    copies[OBSERVED_ROUTINES.iter().position(|r| *r == name).unwrap()]
}

#[test]
fn observed_copies_agree_with_the_model_where_the_kernel_shows_them() {
    if !privileged("observed_copies_agree_with_the_model_where_the_kernel_shows_them") {
        return;
    }
    let tracer = load_tracer();
    if !tracer.copies_observed() {
        let hidden: Vec<_> = tracer
            .statuses()
            .iter()
            .filter(|s| s.probe.starts_with("copy_"))
            .filter(|s| matches!(&s.mode, zctrace::probes::ProbeMode::Unavailable(why) if why.contains("fexit: ")))
            .collect();
        assert!(
            !kernel_has_kprobes() && !hidden.is_empty(),
            "copies hidden only where no way exists"
        );
        return;
    }
    const SIZE: u64 = 16 * MIB;
    let file = test_file(SIZE);
    let within = |observed: u64, expected: u64| observed.abs_diff(expected) <= expected / 50;
    let payload_reads =
        |copies: &[u64]| routine(copies, "filemap_read") + routine(copies, "shmem_file_read_iter");
    for (method, read_copies) in [
        ("read-write", SIZE),
        ("mmap-write", 0),
        ("sendfile", 0),
        ("splice", 0),
    ] {
        let (f, _, _) = transfer(&tracer, method, &file, 64 * 1024);
        let copies = f.observed_copies().expect("observed");
        let observed = f.observed_copy_bytes().unwrap();
        println!(
            "{method}: observed {observed} by routine {copies:?}, model {}",
            f.cpu_copy_bytes()
        );
        assert!(
            within(observed, f.cpu_copy_bytes()),
            "{method}: {observed} vs {}",
            f.cpu_copy_bytes()
        );
        assert!(
            within(payload_reads(&copies), read_copies),
            "{method} reads: {copies:?}"
        );
    }
}
