//! `zctrace bench` and `zctrace doctor` on this machine: zctrace agrees with the sender.
mod common;

use std::process::Command;

use common::*;

#[test]
fn bench_json_agrees_with_the_sender_and_plots() {
    if !privileged("bench_json_agrees_with_the_sender_and_plots") {
        return;
    }
    let plot = scratch_path("bench.svg");
    let output = Command::new(zctrace_bin())
        .args([
            "bench",
            "--json",
            "--size",
            &(8 * MIB).to_string(),
            "--methods",
            "read-write,sendfile,zerocopy",
            "--plot",
        ])
        .arg(&plot)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    let row = |m: &str| rows.iter().find(|r| r["method"] == m).unwrap().clone();
    for r in &rows {
        assert!(r["disagreement"].is_null(), "{r}");
        assert_eq!(r["traced_tcp_bytes"], 8 * MIB + HEADER_LEN);
    }
    let copies = |m: &str| row(m)["copies_per_byte"].as_f64().unwrap();
    assert!(
        (copies("read-write") - 2.0).abs() < 0.01,
        "{}",
        copies("read-write")
    );
    assert!(copies("sendfile") < 0.001);
    assert_eq!(
        row("zerocopy")["zerocopy_copied"],
        row("zerocopy")["zerocopy_completions"]
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<rect").count(), 6);
}

#[test]
fn doctor_reports_probe_modes_and_passes_its_self_check() {
    if !privileged("doctor_reports_probe_modes_and_passes_its_self_check") {
        return;
    }
    let output = Command::new(zctrace_bin()).arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("sys_exit") && stdout.contains("tp_btf"));
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("method "))
        .skip(1)
        .take_while(|l| !l.starts_with("all methods"))
        .collect();
    assert_eq!(rows.len(), 8, "{stdout}");
    let observed = stdout.contains("observed beside the model");
    for row in rows {
        assert!(row.ends_with("agrees"), "{row}");
        let observed_column = row.split_whitespace().nth(5).unwrap();
        assert_eq!(observed_column != "-", observed, "{row}");
    }
    assert!(stdout.contains("all methods agree"));
}
