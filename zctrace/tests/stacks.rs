//! `zctrace attach --stacks`: call sites weighted by CPU-copied bytes, against a relay whose
//! functions and byte counts are known.
mod common;

use std::{path::PathBuf, process::Command};

use common::*;

const RELAY_SIZE: u64 = 32 * MIB;
const CHUNK: &str = "16384";
const LOG_RECORD: &str = "1024";

/// `tests/programs/stack_relay.c`, built with or without frame pointers (by `cargo xtask vmtest`
/// on the host, where the tests run in a VM without a compiler).
fn relay_program(frame_pointers: bool) -> PathBuf {
    let variant = if frame_pointers { "fp" } else { "nofp" };
    if let Ok(prefix) = std::env::var("ZCTRACE_STACK_RELAY") {
        return PathBuf::from(format!("{prefix}-{variant}"));
    }
    let out = scratch_path(&format!("relay-{variant}"));
    let flag = if frame_pointers {
        "-fno-omit-frame-pointer"
    } else {
        "-fomit-frame-pointer"
    };
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", flag, "-o"])
        .arg(&out)
        .arg(repo("zctrace/tests/programs/stack_relay.c"))
        .status()
        .expect("gcc");
    assert!(status.success(), "building stack_relay.c");
    out
}

struct Traced {
    report: serde_json::Value,
    /// (folded frames, weight)
    folded: Vec<(String, u64)>,
    relayed: u64,
    logged: u64,
}

/// Runs the relay under `attach --stacks`, with folded stacks and a flame graph written out.
fn trace_relay(frame_pointers: bool, name: &str) -> Traced {
    let program = relay_program(frame_pointers);
    let folded_path = scratch_path(&format!("{name}.folded"));
    let svg_path = scratch_path(&format!("{name}.svg"));
    let output = Command::new(zctrace_bin())
        .args(["attach", "--json", "--stacks", "--stacks-out"])
        .arg(&folded_path)
        .arg("--flamegraph")
        .arg(&svg_path)
        .arg("--")
        .arg(&program)
        .arg(test_file(RELAY_SIZE))
        .arg(scratch_path(&format!("{name}.out")))
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
    let folded = read_folded(&folded_path);
    let svg = std::fs::read_to_string(&svg_path).expect("the flame graph");
    assert!(
        svg.contains("<svg") && svg.contains("relay_body"),
        "flame graph:\n{svg}"
    );
    Traced {
        report,
        folded,
        relayed: figure("relayed"),
        logged: figure("logged"),
    }
}

fn share(folded: &[(String, u64)], frame: &str) -> f64 {
    let total: u64 = folded.iter().map(|(_, w)| w).sum();
    let through: u64 = folded
        .iter()
        .filter(|(frames, _)| frames.split(';').any(|f| f == frame))
        .map(|(_, w)| w)
        .sum();
    through as f64 / total as f64
}

#[test]
fn copied_bytes_are_attributed_to_the_functions_that_copy_them() {
    if !privileged("copied_bytes_are_attributed_to_the_functions_that_copy_them") {
        return;
    }
    let traced = trace_relay(true, "fp");
    assert_eq!(traced.relayed, RELAY_SIZE);
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

#[test]
fn without_frame_pointers_the_stacks_shrink_but_no_byte_is_lost() {
    if !privileged("without_frame_pointers_the_stacks_shrink_but_no_byte_is_lost") {
        return;
    }
    let traced = trace_relay(false, "nofp");
    let total: u64 = traced.folded.iter().map(|(_, w)| w).sum();
    let copied = 2 * traced.relayed + traced.logged;
    // The dynamic loader's reads and the program's closing line are copies too, a few KiB.
    assert!(
        total >= copied && total - copied < 64 * 1024,
        "folded stacks hold {total} copied bytes, the program copied {copied}"
    );
    // The frame that made the syscall is always there; its callers are not.
    assert!(
        share(&traced.folded, "relay_body") >= 0.95,
        "{:#?}",
        traced.folded
    );
    assert!(
        traced
            .folded
            .iter()
            .all(|(frames, _)| !frames.contains("main;write_log;")),
        "an unwind without frame pointers still reached main: {:#?}",
        traced.folded
    );
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
