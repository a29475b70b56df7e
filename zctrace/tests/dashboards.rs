//! The shipped dashboards, rules and deployment files: checked statically, by their own tools,
//! and against a real Prometheus scraping a real daemon.
mod common;

use std::{
    collections::BTreeSet,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;

fn dashboards() -> Vec<(String, serde_json::Value)> {
    ["zctrace-overview.json", "zctrace-process.json"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(repo(&format!("dashboards/{name}"))).unwrap();
            (
                name.to_string(),
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        })
        .collect()
}

/// (dashboard, panel title, PromQL) for every panel query.
fn panel_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    for (name, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                queries.push((
                    name.clone(),
                    panel["title"].as_str().unwrap().to_string(),
                    target["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    queries
}

fn rule_exprs() -> Vec<String> {
    let rules: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(repo("dashboards/rules.yml")).unwrap()).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["expr"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Metric names zctrace exports, from the golden scrape (plus the one only fexit hosts export).
fn exported_metrics() -> BTreeSet<String> {
    let golden = std::fs::read_to_string(repo("zctrace/src/exporter/testdata/metrics.prom")).unwrap();
    let mut names: BTreeSet<String> = golden
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(str::to_string))
        .collect();
    names.insert("zctrace_observed_copy_bytes_total".into());
    names
}

/// zctrace's metric names in `expr`, not the recording rules' (`level:zctrace_x:operation`).
fn referenced_metrics(expr: &str) -> Vec<String> {
    let re = regex::Regex::new(r"(?:^|[^:\w])(zctrace_[a-z_]+)\b").unwrap();
    re.captures_iter(expr).map(|c| c[1].to_string()).collect()
}

#[test]
fn dashboards_use_the_datasource_variable_and_only_exported_metrics() {
    let exported = exported_metrics();
    for (name, dashboard) in dashboards() {
        let variables: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for wanted in ["datasource", "job", "instance", "comm"] {
            assert!(variables.contains(&wanted), "{name} lacks ${wanted}");
        }
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() >= 6, "{name}");
        for panel in panels {
            let title = panel["title"].as_str().unwrap();
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}/{title}: hard-coded datasource"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}/{title} has no query");
            for target in targets {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{name}/{title}");
                let expr = target["expr"].as_str().unwrap();
                assert!(!expr.trim().is_empty(), "{name}/{title}: empty query");
                for metric in referenced_metrics(expr) {
                    assert!(
                        exported.contains(&metric),
                        "{name}/{title}: {metric} is not exported by zctrace"
                    );
                }
            }
        }
    }
    let overview = &dashboards()[0].1;
    let variables = overview["templating"]["list"].to_string();
    for wanted in ["\"namespace\"", "\"pod\""] {
        assert!(variables.contains(wanted), "the overview lacks ${wanted}");
    }
    let titles: Vec<&str> = overview["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for needed in [
        "Top processes",
        "copies per byte",
        "Zero-copy share",
        "Context switches",
        "Probe health",
        "Top pods",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(needed)),
            "overview lacks a {needed:?} panel"
        );
    }
    for expr in rule_exprs() {
        for metric in referenced_metrics(&expr) {
            assert!(exported.contains(&metric), "rules: {metric} is not exported");
        }
    }
}

#[test]
fn promtool_accepts_the_rules() {
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("dashboards/rules.yml"))
        .output()
        .expect("promtool");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn systemd_unit_verifies_cleanly() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/zctrace.service")).unwrap();
    for hardening in [
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(unit.contains(hardening), "unit lacks {hardening}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let path = scratch_path("zctrace.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/zctrace", zctrace_bin())).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn kubernetes_manifests_match_their_schemas() {
    let output = Command::new("kubernetes-validate")
        .args(["--strict"])
        .arg(repo("deploy/kubernetes/zctrace.yaml"))
        .output()
        .expect("kubernetes-validate (PyPI; cargo xtask setup installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), 4, "{text}");
    let manifests = std::fs::read_to_string(repo("deploy/kubernetes/zctrace.yaml")).unwrap();
    for needed in [
        "hostPID: true",
        "drop: [\"ALL\"]",
        "add: [\"BPF\", \"PERFMON\"]",
        "operator: Exists",
    ] {
        assert!(manifests.contains(needed), "DaemonSet lacks {needed}");
    }
    // No schema exists offline for the Prometheus Operator's CRD: check that it selects the Service.
    let monitor: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo("deploy/kubernetes/servicemonitor.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "zctrace"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

/// Grafana's variables, as a Prometheus query sees them for the test's data.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("$job", "zctrace")
        .replace("$instance", ".*")
        .replace("$comm", ".*")
        .replace("$namespace", ".*")
        .replace("$pod", ".*")
}

/// Pods as kube-state-metrics' fixture names them: (comm, cgroup under a test base, namespace, pod,
/// container). The relay runs under kubelet's systemd driver and containerd, the sendfile server
/// under the cgroupfs driver and CRI-O.
const PODS: [(&str, &str, &str, &str, &str); 2] = [
    (
        "zc-dash-relay",
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b1c1b5e_8f2a_4c4c_9a3e_0e6f6e0d9b1a.slice/cri-containerd-1111111111111111111111111111111111111111111111111111111111111111.scope",
        "shop",
        "checkout-6f7c9d8b5-x2k4q",
        "relay",
    ),
    (
        "zc-dash-sf",
        "/kubepods/besteffort/pod7c2d2c6f-9a3b-4d5d-8b4f-1f7a7f1e0c2b/crio-2222222222222222222222222222222222222222222222222222222222222222",
        "web",
        "static-0",
        "server",
    ),
];

#[test]
fn every_panel_and_rule_query_runs_against_real_data() {
    if !privileged("every_panel_and_rule_query_runs_against_real_data") {
        return;
    }
    let daemon = Daemon::start(&["--workload-labels"]);
    let fixture = std::fs::read_to_string(repo("zctrace/tests/fixtures/kube-state-metrics.prom")).unwrap();
    let kube_state_metrics = serve_exposition(fixture);
    let prometheus = Prometheus::start_jobs(
        &[
            ("zctrace", &daemon.addr),
            ("kube-state-metrics", &kube_state_metrics),
        ],
        Some(&repo("dashboards/rules.yml")),
    );
    let cgroups = TestCgroups::new("dashboards");
    let procs: Vec<_> = PODS
        .iter()
        .map(|pod| cgroups.procs(&cgroups.make(pod.1)))
        .collect();
    let file = test_file(4 * MIB);
    let queries = panel_queries();
    let deadline = Instant::now() + Duration::from_secs(90);
    let empty = loop {
        send_from_cgroup(PODS[0].0, &procs[0], "read-write", &file, 64 * 1024);
        send_from_cgroup(PODS[1].0, &procs[1], "sendfile", &file, 128 * 1024);
        sleep(Duration::from_millis(500));
        let empty: Vec<String> = queries
            .iter()
            .filter(|(_, _, expr)| prometheus.query(&substitute(expr)).is_empty())
            .map(|(dashboard, title, expr)| format!("{dashboard}/{title}: {expr}"))
            .collect();
        if empty.is_empty() || Instant::now() > deadline {
            break empty;
        }
    };
    assert!(
        empty.is_empty(),
        "panels without data after 90 s:\n{}",
        empty.join("\n")
    );
    for expr in rule_exprs() {
        prometheus.query(&expr);
    }
    let recorded = |comm: &str| -> Option<f64> {
        let result = prometheus.query(&format!(
            "zctrace:cpu_copies_per_delivered_byte:rate5m{{comm=\"{comm}\"}}"
        ));
        result
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    };
    // A sender's first scrape may show its start-up alone (its write into cgroup.procs is all it
    // has delivered yet): the rule is read once each sender's data flow has been scraped twice and
    // evaluated since.
    let deadline = Instant::now() + Duration::from_secs(30);
    let scraped_twice = |comm: &str, syscall: &str| {
        let twice = format!(
            "count_over_time(zctrace_bytes_total{{comm=\"{comm}\",syscall=\"{syscall}\",dst=\"tcp\"}}[5m]) >= 2"
        );
        !prometheus.query(&twice).is_empty()
    };
    while !(scraped_twice("zc-dash-relay", "write") && scraped_twice("zc-dash-sf", "sendfile"))
        && Instant::now() < deadline
    {
        sleep(Duration::from_millis(500));
    }
    sleep(Duration::from_millis(2500));
    let relay = recorded("zc-dash-relay").expect("the recording rule ran");
    assert!(
        (1.9..2.1).contains(&relay),
        "a read+write relay copies each delivered byte twice: {relay}"
    );
    let sendfile = recorded("zc-dash-sf").expect("recorded for sendfile");
    assert!(
        sendfile < 0.1,
        "sendfile copies almost nothing (start-up reads, header): {sendfile}"
    );
    // The join names each container and pod as kube-state-metrics does.
    for (_, _, namespace, pod, container) in PODS {
        let by_container = format!(
            "namespace_pod_container:zctrace_delivered_bytes:rate5m{{namespace=\"{namespace}\",pod=\"{pod}\",container=\"{container}\"}}"
        );
        assert_eq!(prometheus.query(&by_container).len(), 1, "{by_container}");
        let by_pod =
            format!("namespace_pod:zctrace_cpu_copy_bytes:rate5m{{namespace=\"{namespace}\",pod=\"{pod}\"}}");
        assert_eq!(prometheus.query(&by_pod).len(), 1, "{by_pod}");
    }
}
