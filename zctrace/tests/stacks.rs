//! `zctrace attach --stacks`: call sites weighted by CPU-copied bytes, and the kernel stacks of
//! observed copies, against a relay whose functions and byte counts are known.
mod common;

use std::{path::PathBuf, process::Command};

use common::*;

const RELAY_SIZE: u64 = 32 * MIB;
const CHUNK: &str = "16384";
const LOG_RECORD: &str = "1024";

struct Traced {
    report: serde_json::Value,
    /// (folded frames, weight)
    folded: Vec<(String, u64)>,
    svg: String,
    relayed: u64,
    logged: u64,
    /// Received by the draining thread, when relaying into TCP.
    drained: Option<u64>,
}

/// Where the relay writes: a file, or a loopback TCP connection a thread of it drains.
#[derive(PartialEq)]
enum Dst {
    File,
    Tcp,
}

/// Runs the relay under `attach --stacks KIND`, with folded stacks and a flame graph written out.
/// The stack map keys stacks by a hash of their addresses, which ASLR changes from run to run: a
/// stack whose bucket another holds is refused, and counted as collided; a stack caught as its
/// task loses its memory cannot be walked. Such a run is a counted loss, not a wrong attribution;
/// it is run again, up to `RUNS` in all (two losses in a row were seen once, on 5.10), and a loss
/// in the last fails the test. A full map fails it at once.
fn trace_relay(relay: Relay, name: &str, kind: &str, dst: Dst, probe_args: &[&str]) -> Traced {
    const RUNS: usize = 3;
    let mut run = 1;
    loop {
        let label = if run == 1 {
            name.to_string()
        } else {
            format!("{name}-run{run}")
        };
        let traced = trace_relay_once(relay, &label, kind, &dst, probe_args);
        let stacks = &traced.report["stacks"];
        let drops = &stacks["drops"];
        if stacks["dropped"] == 0 || drops["full"] != 0 || run == RUNS {
            return traced;
        }
        eprintln!("{name}: stacks dropped by chance ({drops}); running once more");
        run += 1;
    }
}

fn trace_relay_once(relay: Relay, name: &str, kind: &str, dst: &Dst, probe_args: &[&str]) -> Traced {
    let program = relay_program(relay);
    let folded_path = scratch_path(&format!("{name}.folded"));
    let svg_path = scratch_path(&format!("{name}.svg"));
    let output = Command::new(zctrace_bin())
        .args(["attach", "--json"])
        .args(probe_args)
        .args(["--stacks", kind, "--stacks-out"])
        .arg(&folded_path)
        .arg("--flamegraph")
        .arg(&svg_path)
        .arg("--")
        .arg(&program)
        .arg(test_file(RELAY_SIZE))
        .arg(match dst {
            Dst::File => scratch_path(&format!("{name}.out")),
            Dst::Tcp => PathBuf::from("tcp"),
        })
        .arg(scratch_path(&format!("{name}.log")))
        .args([CHUNK, LOG_RECORD])
        .output()
        .expect("zctrace attach");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "attach failed: {stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let report = serde_json::from_str(stdout.lines().last().expect("a report")).expect("report JSON");
    let figure = |name: &str| -> u64 {
        let start = stderr
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {stderr}"));
        stderr[start + name.len() + 1..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Traced {
        report,
        folded: read_folded(&folded_path),
        svg: std::fs::read_to_string(&svg_path).expect("the flame graph"),
        relayed: figure("relayed"),
        logged: figure("logged"),
        drained: (*dst == Dst::Tcp).then(|| figure("drained")),
    }
}

fn share(folded: &[(String, u64)], frame: &str) -> f64 {
    let total: u64 = folded.iter().map(|(_, w)| w).sum();
    let through: u64 = folded
        .iter()
        .filter(|(frames, _)| has_frame(frames, frame))
        .map(|(_, w)| w)
        .sum();
    through as f64 / total as f64
}

#[test]
fn copied_bytes_are_attributed_to_the_functions_that_copy_them() {
    if !privileged("copied_bytes_are_attributed_to_the_functions_that_copy_them") {
        return;
    }
    let traced = trace_relay(Relay::FramePointers, "fp", "user", Dst::File, &[]);
    assert_eq!(traced.relayed, RELAY_SIZE);
    assert!(
        traced.svg.contains("<svg") && traced.svg.contains("relay_body"),
        "flame graph:\n{}",
        traced.svg
    );
    // Each relayed byte is copied twice (read into user memory, write out of it), each log byte once.
    let copied = 2 * traced.relayed + traced.logged;
    let relay_share = share(&traced.folded, "relay_body");
    let log_share = share(&traced.folded, "write_log");
    let true_log_share = traced.logged as f64 / copied as f64;
    assert!(
        relay_share >= 0.95,
        "relay_body holds {relay_share:.4} of copied bytes:\n{:#?}",
        traced.folded
    );
    assert!(
        (log_share - true_log_share).abs() <= 0.01 * true_log_share,
        "write_log holds {log_share:.5} of copied bytes, truly {true_log_share:.5}"
    );
    let stacks = &traced.report["stacks"];
    assert_eq!(stacks["cpu_copy_basis"], "model");
    assert_eq!(stacks["dropped"], 0, "{stacks:#}");
    // With frame pointers the unwind goes on past the function that made the syscall.
    assert!(
        traced
            .folded
            .iter()
            .any(|(frames, _)| frames.contains(";main;write_log;")),
        "{:#?}",
        traced.folded
    );
    let top = &stacks["top"][0];
    assert!(
        top["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "relay_body"),
        "top call site: {top:#}"
    );
}

/// The weight of `relay_body`'s sites whose syscall is `syscall` (the folded leaf `[syscall ...]`).
fn relay_body_weight(folded: &[(String, u64)], syscall: &str) -> u64 {
    let leaf = format!(";[{syscall} ");
    folded
        .iter()
        .filter(|(frames, _)| has_frame(frames, "relay_body") && frames.contains(&leaf))
        .map(|(_, w)| w)
        .sum()
}

#[test]
fn sampled_stacks_estimate_each_heavy_site_within_a_tenth_of_its_bytes() {
    if !privileged("sampled_stacks_estimate_each_heavy_site_within_a_tenth_of_its_bytes") {
        return;
    }
    // 32 MiB read and written in 16 KiB chunks: about 2048 sampling points at each site, so a
    // tenth is more than four standard deviations.
    let period = 16 * 1024;
    let traced = trace_relay(
        Relay::FramePointers,
        "sampled",
        "user",
        Dst::File,
        &["--stacks-period", &period.to_string()],
    );
    assert_eq!(traced.report["stacks"]["sample_period_bytes"], period);
    assert!(traced.svg.contains("estimated from samples"));
    for syscall in ["read", "write"] {
        let estimate = relay_body_weight(&traced.folded, syscall);
        let error = estimate.abs_diff(traced.relayed) as f64 / traced.relayed as f64;
        assert!(
            error < 0.1,
            "relay_body's {syscall} sites: {estimate} copied bytes estimated, {} true:\n{:#?}",
            traced.relayed,
            traced.folded
        );
    }
    // Each sample stands for the calls between, too: relay_body read in CHUNK-byte calls.
    let read_calls: u64 = traced.report["stacks"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|site| {
            site["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "relay_body")
                && site["mechanism"].as_str().unwrap().starts_with("read")
        })
        .map(|site| site["calls"].as_u64().unwrap())
        .sum();
    let true_calls = traced.relayed / CHUNK.parse::<u64>().unwrap();
    assert!(
        read_calls.abs_diff(true_calls) * 10 < true_calls,
        "{read_calls} read calls estimated at relay_body, {true_calls} true: {:#}",
        traced.report["stacks"]["top"]
    );
}

#[test]
fn sampled_kernel_stacks_estimate_the_tcp_copies_within_a_tenth() {
    if !privileged("sampled_kernel_stacks_estimate_the_tcp_copies_within_a_tenth") {
        return;
    }
    let period = 16 * 1024;
    let traced = trace_relay(
        Relay::FramePointers,
        "kernel-sampled",
        "kernel",
        Dst::Tcp,
        &["--stacks-period", &period.to_string()],
    );
    assert_eq!(traced.report["stacks"]["sample_period_bytes"], period);
    // The TCP send and receive copies are observed on every kernel of the matrix.
    for copier in ["tcp_sendmsg_locked", "skb_copy_datagram_iter"] {
        let (_, estimate) = ending_in(&traced.folded, copier);
        assert!(
            estimate.abs_diff(RELAY_SIZE) * 10 < RELAY_SIZE,
            "{copier}: {estimate} bytes estimated, {RELAY_SIZE} copied:\n{:#?}",
            traced.folded
        );
    }
}

/// glibc's `read` and `write` keep no frame: a frame-pointer walk from inside one starts at its
/// caller's frame and so shows the caller's caller. The call site must still be `relay_body`:
/// single-threaded (a file), the wrappers keep their return address at the stack pointer; with
/// a draining thread (TCP), on x86_64 they move the stack pointer to call the cancellation
/// hooks, and on arm64 keep a frame.
#[test]
fn the_caller_of_a_frameless_libc_wrapper_is_recovered() {
    if !privileged("the_caller_of_a_frameless_libc_wrapper_is_recovered") {
        return;
    }
    for (dst, name) in [(Dst::File, "libc-file"), (Dst::Tcp, "libc-tcp")] {
        let traced = trace_relay(Relay::LibcWrappers, name, "user", dst, &[]);
        for syscall in ["read", "write"] {
            assert_eq!(
                relay_body_weight(&traced.folded, syscall),
                traced.relayed,
                "{name}: relay_body's {syscall} sites:\n{:#?}",
                traced.folded
            );
        }
        let caller_then_wrapper = |caller: &str| {
            traced
                .folded
                .iter()
                .filter(|(frames, _)| frames.contains(&format!(";main;{caller};")))
                .map(|(_, w)| w)
                .sum::<u64>()
        };
        assert_eq!(caller_then_wrapper("relay_body"), 2 * traced.relayed, "{name}");
        assert_eq!(caller_then_wrapper("write_log"), traced.logged, "{name}");
        if let Some(drained) = traced.drained {
            assert_eq!(
                through(&traced.folded.iter().collect::<Vec<_>>(), "drain_socket"),
                drained
            );
        }
    }
}

/// The same relay's observed copies, with both stacks: where the kernel hands copy hooks the
/// task's user registers (5.15), each TCP send copy's user stack has relay_body back above libc's
/// frameless `write`; elsewhere the report says it cannot.
#[test]
fn copies_keep_the_caller_of_a_frameless_libc_wrapper() {
    if !privileged("copies_keep_the_caller_of_a_frameless_libc_wrapper") {
        return;
    }
    let traced = trace_relay(Relay::LibcWrappers, "libc-both", "both", Dst::Tcp, &[]);
    // Whether the kernel has the helper, read from its BTF's strings, not as zctrace reads it.
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    let offered = btf.windows(23).any(|w| w == b"\0BPF_FUNC_task_pt_regs\0");
    let stacks = &traced.report["stacks"];
    assert_eq!(stacks["copy_site_callers"], offered, "{stacks:#}");
    let (sends, sent) = ending_in(&traced.folded, "tcp_sendmsg_locked");
    assert_eq!(sent, RELAY_SIZE, "{sends:#?}");
    // Elsewhere every byte is still under its copy, and the text report says why the caller
    // is missing.
    if offered {
        let caller_then_wrapper: u64 = sends
            .iter()
            .filter(|(frames, _)| frames.contains(";main;relay_body;"))
            .map(|(_, w)| w)
            .sum();
        assert_eq!(caller_then_wrapper, RELAY_SIZE, "{sends:#?}");
    }
}

#[test]
fn without_frame_pointers_the_stacks_shrink_but_no_byte_is_lost() {
    if !privileged("without_frame_pointers_the_stacks_shrink_but_no_byte_is_lost") {
        return;
    }
    let traced = trace_relay(Relay::NoFramePointers, "nofp", "user", Dst::File, &[]);
    let total: u64 = traced.folded.iter().map(|(_, w)| w).sum();
    let copied = 2 * traced.relayed + traced.logged;
    // The dynamic loader's reads and the program's closing line are copies too, a few KiB.
    assert!(
        total >= copied && total - copied < 64 * 1024,
        "folded stacks hold {total} copied bytes, the program copied {copied}"
    );
    // The frame that made the syscall is always there.
    assert!(
        share(&traced.folded, "relay_body") >= 0.95,
        "{:#?}",
        traced.folded
    );
    // Above the frame that made the syscall, only frames truly above it, in their order: its
    // caller found through its CFI where it keeps no frame, and on arm64, whose libc keeps frame
    // records, libc's start-up frames. Never a frame the walk made up.
    const ANCESTORS: [&str; 5] = [
        "_start",
        "__libc_start_main_impl",
        "__libc_start_main",
        "__libc_start_call_main",
        "main",
    ];
    for function in ["relay_body", "write_log"] {
        for (frames, _) in traced
            .folded
            .iter()
            .filter(|(frames, _)| has_frame(frames, function))
        {
            let above: Vec<&str> = frames.split(';').take_while(|f| *f != function).collect();
            let mut rest = ANCESTORS.iter();
            assert!(
                above.iter().all(|frame| rest.any(|a| a == frame)),
                "{function} called from {above:?} without frame pointers: {:#?}",
                traced.folded
            );
        }
    }
}

#[test]
fn an_existing_output_file_is_refused_before_tracing() {
    let existing = scratch_path("existing.folded");
    std::fs::write(&existing, "keep me").unwrap();
    let output = Command::new(zctrace_bin())
        .args(["attach", "--stacks", "--stacks-out"])
        .arg(&existing)
        .args(["--", "true"])
        .output()
        .expect("zctrace attach");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("never overwrites"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");
}

/// Folded lines that end in the copier `leaf` (a bracketed frame), and their total weight.
fn ending_in<'a>(folded: &'a [(String, u64)], leaf: &str) -> (Vec<&'a (String, u64)>, u64) {
    let lines = copied_by(folded, leaf);
    let total = lines.iter().map(|(_, w)| w).sum();
    (lines, total)
}

/// The weight of `lines` whose frames include `frame`.
fn through(lines: &[&(String, u64)], frame: &str) -> u64 {
    lines
        .iter()
        .filter(|(frames, _)| has_frame(frames, frame))
        .map(|(_, w)| w)
        .sum()
}

#[test]
fn kernel_stacks_show_the_kernel_path_of_each_observed_copy_below_its_caller() {
    if !privileged("kernel_stacks_show_the_kernel_path_of_each_observed_copy_below_its_caller") {
        return;
    }
    check_both_stacks(trace_relay(Relay::FramePointers, "both", "both", Dst::Tcp, &[]));
}

/// Kprobes take their stacks from a breakpoint rather than a trampoline: the same copies must show
/// the same kernel paths, without the probe's own frames.
#[test]
fn kernel_stacks_taken_by_kprobes_show_the_same_paths() {
    if !privileged("kernel_stacks_taken_by_kprobes_show_the_same_paths") {
        return;
    }
    let without_trampolines = ["--probe.without", "fentry,fexit"];
    check_both_stacks(trace_relay(
        Relay::FramePointers,
        "kprobes",
        "both",
        Dst::Tcp,
        &without_trampolines,
    ));
}

fn check_both_stacks(traced: Traced) {
    assert_eq!((traced.relayed, traced.drained), (RELAY_SIZE, Some(RELAY_SIZE)));
    let stacks = &traced.report["stacks"];
    assert_eq!(
        (&stacks["kind"], &stacks["cpu_copy_basis"], &stacks["dropped"]),
        (&"both".into(), &"observed".into(), &0.into()),
        "{stacks:#}"
    );
    let observed = &traced.report["observed"];
    // Copies seen at kretprobes where the kernel cannot unwind from there (before 5.15) keep
    // their user stacks, and the report names them; elsewhere the kernel's path shows.
    let unwound = stacks["copiers_without_kernel_stacks"].as_array().unwrap();
    let kernel_path = |copier: &str, path: &'static str| {
        if unwound.iter().any(|c| c == copier) {
            zctrace::stacks::UNRECORDED
        } else {
            path
        }
    };
    // The TCP send copies, each under the function that wrote and the kernel's write path.
    let (sends, sent) = ending_in(&traced.folded, "tcp_sendmsg_locked");
    assert_eq!(sent, observed["tcp_send_bytes"]["copy"].as_u64().unwrap());
    assert_eq!(through(&sends, "relay_body"), RELAY_SIZE, "{sends:#?}");
    let write_path = kernel_path("tcp_sendmsg_locked", "vfs_write");
    assert_eq!(through(&sends, write_path), RELAY_SIZE, "{sends:#?}");
    // The receive copies, under the draining thread's function and TCP's receive path.
    let (receives, received) = ending_in(&traced.folded, "skb_copy_datagram_iter");
    assert_eq!(received, observed["recv_copy_bytes"].as_u64().unwrap());
    assert_eq!(through(&receives, "drain_socket"), RELAY_SIZE, "{receives:#?}");
    assert_eq!(through(&receives, "tcp_recvmsg"), RELAY_SIZE, "{receives:#?}");
    // File reads copy where the kernel lets them be observed (tmpfs files by their own routine);
    // elsewhere the report says so.
    let unobserved = stacks["unobserved_copiers"].as_array().unwrap();
    let (mut reads, _) = ending_in(&traced.folded, "filemap_read");
    reads.extend(ending_in(&traced.folded, "shmem_file_read_iter").0);
    if unobserved.iter().any(|c| c == "filemap_read") {
        assert!(reads.is_empty(), "{reads:#?}");
        assert!(observed["copies_by_routine"].is_null());
    } else {
        assert_eq!(through(&reads, "relay_body"), RELAY_SIZE, "{:#?}", traced.folded);
        // Under relay_body, every read went through the kernel's read path.
        let through_read_path: u64 = ["filemap_read", "shmem_file_read_iter"]
            .into_iter()
            .map(|copier| {
                let (mut lines, _) = ending_in(&traced.folded, copier);
                lines.retain(|(frames, _)| has_frame(frames, "relay_body"));
                through(&lines, kernel_path(copier, "vfs_read"))
            })
            .sum();
        assert_eq!(through_read_path, RELAY_SIZE, "{:#?}", traced.folded);
    }
    // No observed copy is left out of the stacks.
    let total: u64 = traced.folded.iter().map(|(_, w)| w).sum();
    let observed_total = match traced.report["totals"]["observed_copy_bytes"].as_u64() {
        Some(all) => all,
        None => sent + received,
    };
    assert_eq!(total, observed_total, "{:#?}", traced.folded);
    assert!(
        traced.svg.contains("tcp_recvmsg") && traced.svg.contains("CPU-copied bytes (observed)"),
        "flame graph:\n{}",
        traced.svg
    );
}

#[test]
fn kernel_stacks_alone_hold_no_user_frames() {
    if !privileged("kernel_stacks_alone_hold_no_user_frames") {
        return;
    }
    let traced = trace_relay(Relay::FramePointers, "kernel", "kernel", Dst::Tcp, &[]);
    assert_eq!(traced.report["stacks"]["kind"], "kernel");
    let (sends, sent) = ending_in(&traced.folded, "tcp_sendmsg_locked");
    assert_eq!((through(&sends, "vfs_write"), sent), (RELAY_SIZE, RELAY_SIZE));
    assert!(
        traced
            .folded
            .iter()
            .all(|(frames, _)| !frames.contains("relay_body") && !frames.contains("drain_socket")),
        "{:#?}",
        traced.folded
    );
}

#[test]
fn a_weight_kernel_stacks_do_not_have_is_refused() {
    let output = Command::new(zctrace_bin())
        .args([
            "attach",
            "--stacks",
            "kernel",
            "--stack-weight",
            "moved",
            "--",
            "true",
        ])
        .output()
        .expect("zctrace attach");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--stack-weight moved needs --stacks user"),
        "{stderr}"
    );
}
