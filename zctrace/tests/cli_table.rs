//! Bad values for every flag of every subcommand: each is refused with a message that names the
//! flag or the problem, and a non-zero exit, before anything is loaded.
mod common;

const CASES: &[(&[&str], &str)] = &[
    (&["no-such-command"], "unrecognized subcommand"),
    (&["--log.level", "loud", "probes"], "--log.level"),
    (
        &["daemon", "--web.listen-address", "::::"],
        "--web.listen-address",
    ),
    (&["daemon", "--web.telemetry-path", ""], "--web.telemetry-path"),
    (
        &["daemon", "--web.telemetry-path", "/*rest"],
        "\"/*rest\" is a route pattern, not a path",
    ),
    (
        &["daemon", "--web.telemetry-path", "/{x}"],
        "\"/{x}\" is a route pattern, not a path",
    ),
    (
        &["daemon", "--web.telemetry-path", "/a/:id"],
        "is a route pattern, not a path",
    ),
    (
        &["--probe.without", "uprobe", "probes"],
        "no mode named \"uprobe\"",
    ),
    (&["daemon", "--top", "-1"], "--top"),
    (&["daemon", "--pid", "abc"], "--pid"),
    (&["daemon", "--comm", "a{2,1}"], "invalid regex"),
    (
        &["daemon", "--series.grace-period", "-5m"],
        "--series.grace-period",
    ),
    (&["daemon", "--cgroup-label=yes"], "--cgroup-label"),
    (
        &["daemon", "--cgroup-root", "/nonexistent"],
        "--cgroup-root: /nonexistent: no cgroup v2 hierarchy is mounted there",
    ),
    (
        &["daemon", "--cgroup-root", "/proc"],
        "--cgroup-root: /proc: no cgroup v2 hierarchy is mounted there",
    ),
    (
        &["daemon", "--probes", "sys_exit,kprobe"],
        "no probe named \"kprobe\"",
    ),
    (&["daemon", "--probe.hook", "sys_exit"], "not PROBE=TARGET"),
    (&["attach", "--pid", "1", "--interval", "fast"], "--interval"),
    (&["attach", "--pid", "1", "--pid", "2"], "--pid"),
    (&["attach", "--pid", "99999999999"], "--pid"),
    (
        &["attach", "--pid", "1", "--output", "/etc/hostname"],
        "/etc/hostname exists: zctrace never overwrites a file",
    ),
    (&["top", "--rows", "0"], "--rows"),
    (&["top", "--duration", "x"], "--duration"),
    (
        &[
            "send",
            "--method",
            "sendfile",
            "--file",
            "/etc/hostname",
            "--to",
            "localhost",
        ],
        "--to",
    ),
    (
        &[
            "send",
            "--method",
            "sendfile",
            "--file",
            "/etc/hostname",
            "--to",
            "127.0.0.1:1",
            "--chunk",
            "2000000000",
        ],
        "--chunk",
    ),
    (&["serve", "--close-after", "many"], "--close-after"),
    (&["bench", "--size", "0"], "--size"),
    (&["bench", "--methods", "smoke-signals"], "--methods"),
    (&["bench", "--chunk", "-4"], "--chunk"),
    (&["workload", "getppid", "lots"], "COUNT"),
];

#[test]
fn every_bad_flag_is_refused_by_name() {
    for (args, expected) in CASES {
        common::fails_with(args, expected);
    }
}
