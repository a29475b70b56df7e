use std::{collections::BTreeMap, process::Command};

use zctrace_common::FdKind;

use super::*;
use crate::{
    accounting::Counters,
    exporter::series::{FlowLabels, FlowTotals},
    workload::Workload,
};

fn fixture() -> Scrape {
    let mut totals = SeriesTotals {
        syscalls: BTreeMap::from([("sendfile", 512), ("getppid", 3)]),
        counters: Counters {
            syscalls_total: 515,
            voluntary_switches: 40,
            involuntary_switches: 2,
            offcpu_ns: 1_500_000_000,
            recv_copy_bytes: 24,
            tcp_send: [24, 67_108_864, 0, 0],
            ..Default::default()
        },
        ..Default::default()
    };
    totals.flows.insert(
        FlowLabels {
            syscall: "sendfile",
            src: FdKind::Regular,
            dst: FdKind::Tcp,
        },
        FlowTotals {
            calls: 512,
            bytes: 67_108_864,
            cpu_copy_bytes: 0,
        },
    );
    let hostile = SeriesKey {
        comm: "a\"b\\c\nd".into(),
        pid: Some(42),
        cgroup: None,
        workload: Workload {
            container_id: Some("4f3c9a7e1b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e".into()),
            pod_uid: Some("5e2a8f1c-3b7d-4e8a-9c1f-2d6b0a4e7f91".into()),
            systemd_unit: None,
        },
    };
    Scrape {
        series: vec![(hostile, totals)],
        probes: vec![
            ("sys_exit".into(), "tp_btf".into(), true),
            ("copy_to_iter_exit".into(), "unavailable".into(), false),
        ],
        maps: vec![("SYSCALLS".into(), 10, 65536)],
        update_errors: vec![("SYSCALLS".into(), 0)],
        missed_runs: vec![("sys_exit".into(), 4)],
        socket_kind_misses: 7,
        socket_kind_evictions: 2,
        series_dropped: 1,
        profile_sites_dropped: 2,
        cgroup_hierarchy_visible: true,
        http_connections: 3,
        http_refused: vec![("unauthorized", 2), ("throttled", 0)],
        kernel: "6.18.0-test".into(),
        start_time_seconds: 1_795_000_000.0,
        collect_seconds: 0.25,
    }
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/exporter/testdata")
        .join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "{name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)"
    );
}

#[test]
fn openmetrics_output_matches_the_golden_file() {
    golden(
        "metrics.openmetrics",
        &fixture().encode(Format::OpenMetrics).unwrap(),
    );
}

#[test]
fn prometheus_text_output_matches_the_golden_file() {
    golden("metrics.prom", &fixture().encode(Format::PrometheusText).unwrap());
}

#[test]
fn hostile_comm_names_are_escaped() {
    let text = fixture().encode(Format::PrometheusText).unwrap();
    assert!(text.contains(r#"comm="a\"b\\c\nd""#), "{text}");
    assert!(!text.contains("# EOF"));
}

#[test]
fn counters_are_declared_by_their_sample_name_in_prometheus_text() {
    let text = to_prometheus_text("# HELP x_bytes Bytes.\n# TYPE x_bytes counter\n# UNIT x_bytes bytes\nx_bytes_total 1\n# TYPE g gauge\ng 2\n# EOF\n");
    assert_eq!(
        text,
        "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total 1\n# TYPE g gauge\ng 2\n"
    );
}

#[test]
fn accept_header_picks_the_format() {
    assert_eq!(
        Format::negotiate(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )),
        Format::OpenMetrics
    );
    assert_eq!(Format::negotiate(Some("text/plain")), Format::PrometheusText);
    assert_eq!(Format::negotiate(None), Format::PrometheusText);
}

#[test]
fn promtool_accepts_the_output() {
    let text = fixture().encode(Format::PrometheusText).unwrap();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
