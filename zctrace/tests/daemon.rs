//! The daemon as Prometheus sees it: real workloads, real scrapes, a real Prometheus server.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;

const SIZE: u64 = 16 * MIB;

#[test]
fn metrics_attribute_each_workload_to_its_process_name() {
    if !privileged("metrics_attribute_each_workload_to_its_process_name") {
        return;
    }
    let daemon = Daemon::start(&[]);
    let file = test_file(SIZE);
    send_as(&renamed_zctrace("zc-sendfile"), "sendfile", &file, 128 * 1024);
    send_as(&renamed_zctrace("zc-readwrite"), "read-write", &file, 64 * 1024);
    let metrics = daemon.metrics();
    let bytes = |comm, syscall, src, dst| {
        sample(
            &metrics,
            "zctrace_bytes_total",
            &[("comm", comm), ("syscall", syscall), ("src", src), ("dst", dst)],
        )
    };
    let copies = |comm, syscall, src, dst| {
        sample(
            &metrics,
            "zctrace_cpu_copy_bytes_total",
            &[
                ("comm", comm),
                ("syscall", syscall),
                ("src", src),
                ("dst", dst),
                ("basis", "model"),
            ],
        )
    };
    let size = SIZE as f64;
    assert_eq!(
        bytes("zc-sendfile", "sendfile", "file", "tcp"),
        Some(size),
        "{metrics}"
    );
    assert_eq!(copies("zc-sendfile", "sendfile", "file", "tcp"), Some(0.0));
    assert_eq!(bytes("zc-readwrite", "write", "user", "tcp"), Some(size));
    assert_eq!(copies("zc-readwrite", "write", "user", "tcp"), Some(size));
    let read = copies("zc-readwrite", "read", "file", "user").expect("read path");
    assert!(
        (size..size + 65536.0).contains(&read),
        "the file plus the loader's few KiB, got {read}"
    );
    let total_copies = |comm: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("zctrace_cpu_copy_bytes_total{") && l.contains(&format!("comm=\"{comm}\""))
            })
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    assert!(
        total_copies("zc-sendfile") < 65536.0,
        "sendfile copies only start-up reads and its header"
    );
    assert!(total_copies("zc-readwrite") >= 2.0 * size);
    assert_eq!(
        sample(
            &metrics,
            "zctrace_tcp_send_bytes_total",
            &[("comm", "zc-sendfile"), ("path", "splice")]
        ),
        Some(size)
    );
    let sys_exit: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("zctrace_probe_attached{probe=\"sys_exit\"") && l.ends_with(" 1"))
        .collect();
    assert_eq!(sys_exit.len(), 1, "{metrics}");
    let mode = sys_exit[0]
        .split("mode=\"")
        .nth(1)
        .and_then(|m| m.split('"').next());
    assert!(sys_exit_mode_expected(mode.unwrap_or_default()), "{metrics}");
    let observers: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("zctrace_probe_attached{") && l.contains("probe=\"copy_"))
        .collect();
    assert_eq!(observers.len(), 6, "{metrics}");
    assert_eq!(
        metrics.contains("zctrace_observed_copy_bytes_total{"),
        observers.iter().all(|l| l.ends_with(" 1")),
        "observed copies are exported exactly where every copy routine is observed"
    );
    assert!(metrics.contains("zctrace_build_info{"));
}

/// Apart from the attribution test, which also runs in VMs that have no promtool.
#[test]
fn metrics_pass_promtool_in_both_formats() {
    if !privileged("metrics_pass_promtool_in_both_formats") {
        return;
    }
    let daemon = Daemon::start(&[]);
    send_as(
        &renamed_zctrace("zc-linted"),
        "read-write",
        &test_file(MIB),
        64 * 1024,
    );
    let metrics = daemon.metrics();
    assert!(metrics.contains("comm=\"zc-linted\""), "{metrics}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}",
        String::from_utf8_lossy(&lint.stdout)
    );

    let (status, content_type, body) =
        daemon.get("/metrics", Some("application/openmetrics-text;version=1.0.0"));
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"));
    let (status, _, landing) = daemon.get("/", None);
    assert_eq!(status, 200);
    assert!(landing.contains("href=\"/metrics\""));
}

/// Once attached, the daemon keeps no capability; with `--profiles`, only `CAP_SYS_PTRACE`, to
/// read other processes' mappings and files while it names their frames.
#[test]
fn capabilities_are_dropped_once_the_probes_are_attached() {
    if !privileged("capabilities_are_dropped_once_the_probes_are_attached") {
        return;
    }
    const CAP_SYS_PTRACE: u64 = 1 << 19;
    // Kernels before 5.19 with unprivileged BPF off refuse map reads without CAP_BPF.
    const CAP_BPF: u64 = 1 << 39;
    let cases = [
        (&[][..], 0, "dropped all"),
        (&["--profiles"][..], CAP_SYS_PTRACE, "kept CAP_SYS_PTRACE"),
    ];
    for (args, kept, said) in cases {
        let daemon = Daemon::start(args);
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
        let cap = |name: &str| {
            let hex = status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim();
            u64::from_str_radix(hex, 16).unwrap()
        };
        let log = daemon.log.lock().unwrap().clone();
        let kept_bpf = log.contains("kept CAP_BPF");
        let expected = kept | if kept_bpf { CAP_BPF } else { 0 };
        assert_eq!(cap("CapEff:"), expected, "{args:?}");
        assert_eq!(cap("CapPrm:"), expected, "{args:?}");
        assert!(kept_bpf || log.contains(said), "the log says so: {log}");
        assert!(
            daemon.metrics().contains("zctrace_syscalls_total"),
            "scrapes still read the maps"
        );
    }
}

#[test]
fn prometheus_scrapes_the_daemon_and_rates_its_copies() {
    if !privileged("prometheus_scrapes_the_daemon_and_rates_its_copies") {
        return;
    }
    let daemon = Daemon::start(&[]);
    let prometheus = Prometheus::start(&daemon.addr, None);
    let file = test_file(4 * MIB);
    let relay = renamed_zctrace("zc-prom-relay");
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = "sum by (comm) (rate(zctrace_cpu_copy_bytes_total{comm=\"zc-prom-relay\"}[10s]))";
    let rate = loop {
        send_as(&relay, "read-write", &file, 64 * 1024);
        sleep(Duration::from_millis(500));
        let result = prometheus.query(query);
        if let Some(value) = result
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
        {
            if value > 0.0 {
                break value;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no rate for the relay after 60 s: {result:?}\n{}",
            daemon.log.lock().unwrap()
        );
    };
    assert!(rate > 0.0);
    let up = prometheus.query("up{job=\"zctrace\"}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
}

#[test]
fn cgroup_label_groups_series_by_container() {
    if !privileged("cgroup_label_groups_series_by_container") {
        return;
    }
    let daemon = Daemon::start(&["--cgroup-label"]);
    send_as(
        &renamed_zctrace("zc-cgroup"),
        "sendfile",
        &test_file(MIB),
        128 * 1024,
    );
    let ours = zctrace::procfs::cgroup(std::process::id()).expect("our own cgroup");
    let metrics = daemon.metrics();
    assert_eq!(
        sample(
            &metrics,
            "zctrace_bytes_total",
            &[("comm", "zc-cgroup"), ("cgroup", &ours), ("syscall", "sendfile")]
        ),
        Some(MIB as f64),
        "the sender inherits the test's cgroup {ours}"
    );
}

/// As runc starts a container's first process and systemd a service's: the process has run in
/// one cgroup, is moved to another, and then execs. What it does after the move is the new
/// cgroup's, and so is the workload its path names; what came before (up to the scrape before
/// the move) stays with the old.
#[test]
fn a_process_that_moves_to_another_cgroup_and_execs_is_counted_under_the_new_one() {
    if !privileged("a_process_that_moves_to_another_cgroup_and_execs_is_counted_under_the_new_one") {
        return;
    }
    let daemon = Daemon::start(&["--cgroup-label", "--workload-labels"]);
    let ours = zctrace::procfs::cgroup(std::process::id()).expect("our own cgroup");
    const CONTAINER: &str = "4f3c9a7e1b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e";
    const POD: &str = "5e2a8f1c-3b7d-4e8a-9c1f-2d6b0a4e7f91";
    let cgroups = TestCgroups::new("moved");
    let moved = cgroups.make(&format!("/kubepods/besteffort/pod{POD}/{CONTAINER}"));
    let receiver = Receiver::start(&[]);
    let file = test_file(MIB);
    let script = format!(
        "read line < {file}; read go; echo $$ > {procs}; exec {zctrace} send --method sendfile --file {file} --to {to} --chunk 131072",
        file = file.display(),
        procs = cgroups.procs(&moved).display(),
        zctrace = renamed_zctrace("zc-moved").display(),
        to = receiver.addr,
    );
    let mut shell = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The shell has read a line of the file in our cgroup: scraped now, it is ours for good.
    eventually("the shell's read", Duration::from_secs(20), || {
        let metrics = daemon.metrics();
        sample(
            &metrics,
            "zctrace_syscalls_total",
            &[("comm", "sh"), ("cgroup", &ours), ("syscall", "read")],
        )
        .ok_or_else(|| "not yet".to_string())
    });
    use std::io::Write as _;
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(shell.wait().unwrap().success(), "the moved sender failed");
    receiver.finish();
    let metrics = daemon.metrics();
    let sendfile = |labels: &[(&str, &str)]| {
        let mut labels = labels.to_vec();
        labels.extend([("comm", "zc-moved"), ("syscall", "sendfile")]);
        sample(&metrics, "zctrace_bytes_total", &labels)
    };
    assert_eq!(
        sendfile(&[("cgroup", &moved), ("container_id", CONTAINER), ("pod_uid", POD)]),
        Some(MIB as f64),
        "{metrics}"
    );
    assert_eq!(
        sendfile(&[("cgroup", &ours)]),
        None,
        "nothing after the move stays in {ours}:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, "zctrace_cgroup_hierarchy_visible", &[]),
        Some(1.0)
    );
}

/// A daemon run as a pod runs on a cgroup v2 node: in a cgroup of its own, in a new cgroup
/// namespace and mount namespace where the runtime mounts cgroup2 afresh, which shows the pod's
/// own subtree only. With `host_view`, the host's hierarchy is bound over that mount read-only,
/// as the DaemonSet's hostPath volume does.
fn daemon_in_a_pod(pod_procs: &Path, host_view: bool, args: &[&str]) -> Daemon {
    use std::{ffi::CString, os::unix::process::CommandExt as _};

    use nix::{
        mount::{mount, umount2, MntFlags, MsFlags},
        sched::{unshare, CloneFlags},
    };
    let cstring = |path: &Path| CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let procs = cstring(pod_procs);
    let cgroup2 = cstring(&zctrace::procfs::cgroup2_mount().unwrap());
    let stash_dir = scratch_path(&format!("host-cgroup-view-{host_view}"));
    std::fs::create_dir_all(&stash_dir).unwrap();
    let stash = cstring(&stash_dir);
    let none: Option<&std::ffi::CStr> = None;
    let configure = move |command: &mut Command| {
        // SAFETY: only system calls, on strings made before the fork.
        unsafe {
            command.pre_exec(move || {
                // "0" moves the writer itself.
                let fd = nix::fcntl::open(
                    procs.as_c_str(),
                    nix::fcntl::OFlag::O_WRONLY,
                    nix::sys::stat::Mode::empty(),
                )?;
                nix::unistd::write(&fd, b"0")?;
                unshare(CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWNS)?;
                mount(none, c"/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
                if host_view {
                    mount(
                        Some(cgroup2.as_c_str()),
                        stash.as_c_str(),
                        none,
                        MsFlags::MS_BIND,
                        none,
                    )?;
                }
                // The kernel refuses a cgroup2 mount on top of one: the runtime's is a fresh one.
                umount2(cgroup2.as_c_str(), MntFlags::MNT_DETACH)?;
                mount(
                    Some(c"cgroup2"),
                    cgroup2.as_c_str(),
                    Some(c"cgroup2"),
                    MsFlags::empty(),
                    none,
                )?;
                if host_view {
                    mount(
                        Some(stash.as_c_str()),
                        cgroup2.as_c_str(),
                        none,
                        MsFlags::MS_BIND,
                        none,
                    )?;
                    let read_only = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                    mount(none, cgroup2.as_c_str(), none, read_only, none)?;
                }
                Ok(())
            })
        };
    };
    Daemon::start_configured("127.0.0.1:0", args, configure)
}

/// On a cgroup v2 node a pod sees its own cgroup only. With the host's hierarchy mounted as the
/// DaemonSet mounts it, every workload on the node is named: containers of two pods (kubelet's
/// systemd and cgroupfs drivers, containerd and CRI-O) and a host service. Without it, the daemon
/// says it cannot name them, rather than naming them wrongly.
#[test]
fn a_daemon_in_a_pod_names_every_workload_on_the_node_from_the_host_hierarchy() {
    if !privileged("a_daemon_in_a_pod_names_every_workload_on_the_node_from_the_host_hierarchy") {
        return;
    }
    const CONTAINERD: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const CRIO: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const SYSTEMD_POD: &str = "6b1c1b5e-8f2a-4c4c-9a3e-0e6f6e0d9b1a";
    const CGROUPFS_POD: &str = "7c2d2c6f-9a3b-4d5d-8b4f-1f7a7f1e0c2b";
    let cgroups = TestCgroups::new("pods");
    let daemon_pod = cgroups.make("/kubepods/besteffort/podzctrace/daemon");
    let workloads = [
        (
            "zc-containerd",
            cgroups.make(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CONTAINERD}.scope",
                SYSTEMD_POD.replace('-', "_")
            )),
            vec![("container_id", CONTAINERD), ("pod_uid", SYSTEMD_POD)],
        ),
        (
            "zc-crio",
            cgroups.make(&format!("/kubepods/burstable/pod{CGROUPFS_POD}/crio-{CRIO}")),
            vec![("container_id", CRIO), ("pod_uid", CGROUPFS_POD)],
        ),
        (
            "zc-service",
            cgroups.make("/system.slice/zc-test.service"),
            vec![("systemd_unit", "zc-test.service")],
        ),
    ];
    let blind = daemon_in_a_pod(&cgroups.procs(&daemon_pod), false, &["--workload-labels"]);
    let seeing = daemon_in_a_pod(&cgroups.procs(&daemon_pod), true, &["--workload-labels"]);
    for (comm, cgroup, _) in &workloads {
        send_from_cgroup(
            comm,
            &cgroups.procs(cgroup),
            "sendfile",
            &test_file(MIB),
            128 * 1024,
        );
    }
    let bytes = |metrics: &str, comm: &str, labels: &[(&str, &str)]| {
        let mut labels = labels.to_vec();
        labels.extend([("comm", comm), ("syscall", "sendfile")]);
        sample(metrics, "zctrace_bytes_total", &labels)
    };
    let metrics = seeing.metrics();
    assert_eq!(
        sample(&metrics, "zctrace_cgroup_hierarchy_visible", &[]),
        Some(1.0)
    );
    for (comm, _, labels) in &workloads {
        assert_eq!(
            bytes(&metrics, comm, labels),
            Some(MIB as f64),
            "{comm}:\n{metrics}"
        );
    }
    let metrics = blind.metrics();
    assert_eq!(
        sample(&metrics, "zctrace_cgroup_hierarchy_visible", &[]),
        Some(0.0)
    );
    for (comm, _, _) in &workloads {
        assert_eq!(bytes(&metrics, comm, &[]), Some(MIB as f64), "{comm}:\n{metrics}");
    }
    for label in ["container_id=", "pod_uid=", "systemd_unit="] {
        assert!(
            !metrics.contains(label),
            "a blind daemon names nothing:\n{metrics}"
        );
    }
    let log = blind.log.lock().unwrap().clone();
    assert!(
        log.contains("is a subtree of the cgroup v2 hierarchy") && log.contains("labels are left out"),
        "{log}"
    );
}

/// The daemon's copy profile (`--profiles`), read by `go tool pprof` (Debian's golang-go, a
/// reader nobody here wrote): the relay's heaviest function is its top entry, within a tenth of
/// the bytes it truly copied (2 per relayed byte, as `attach --stacks` counts exactly), and the
/// function that writes the log is there too, and its samples are labelled with the service it
/// runs in (`--workload-labels`). The daemon holds every process's stacks in one
/// map keyed by a hash of their addresses: where another process's stack holds the relay's
/// bucket, the relay's calls there are counted under `[stack not recorded]`, a counted loss of
/// chance that another run does not repeat; the test runs again then, up to three runs in all.
#[test]
fn go_tool_pprof_reads_the_daemons_copy_profile_of_a_relay() {
    if !privileged("go_tool_pprof_reads_the_daemons_copy_profile_of_a_relay") {
        return;
    }
    let (top, relayed, _) =
        profiled_relay_in_three_runs("profiled", &ProfiledRun::calls(Relay::FramePointers, pprof_top));
    let (flat, function) = &top[0];
    assert_eq!(function, "relay_body", "{top:?}");
    let copied = 2 * relayed;
    assert!(
        flat.abs_diff(copied) * 10 < copied,
        "relay_body: {flat} bytes estimated, {copied} copied: {top:?}"
    );
    assert!(top.iter().any(|(_, f)| f == "write_log"), "{top:?}");
}

/// Through libc's frameless `read` and `write`, the profile still holds their caller: the
/// wrappers are where the bytes sit (flat), relay_body above them (cumulative).
#[test]
fn the_daemons_profile_shows_the_caller_of_libcs_frameless_wrappers() {
    if !privileged("the_daemons_profile_shows_the_caller_of_libcs_frameless_wrappers") {
        return;
    }
    let (top, relayed, _) = profiled_relay_in_three_runs(
        "profiled-libc",
        &ProfiledRun::calls(Relay::LibcWrappers, pprof_top_cumulative),
    );
    let copied = 2 * relayed;
    let relay_body = top.iter().find(|(_, f)| f == "relay_body");
    assert!(
        relay_body.is_some_and(|(cum, _)| cum.abs_diff(copied) * 10 < copied),
        "relay_body above {copied} copied bytes: {top:?}"
    );
    assert!(top.iter().any(|(_, f)| f == "write_log"), "{top:?}");
}

/// The kernel copy profile holds the copies the kernel made for the relay, the kernel's frames
/// below the functions that asked for them: its TCP sends under relay_body and `ksys_write`, the
/// draining thread's receives under drain_socket and `tcp_recvmsg`, each within 10% of the bytes
/// (the TCP send and receive copies are observed on every kernel; a file read's copy too where
/// the kernel lets zctrace see it, also under relay_body). The relay calls libc's frameless
/// wrappers: relay_body is their caller, which the copy hooks take from the task's registers.
#[test]
fn the_daemons_kernel_copy_profile_shows_each_copy_below_its_caller() {
    if !privileged("the_daemons_kernel_copy_profile_shows_each_copy_below_its_caller") {
        return;
    }
    let run = ProfiledRun {
        relay: Relay::LibcWrappers,
        tcp: true,
        profile: "/debug/pprof/kernel_copies",
        rows: pprof_top_cumulative,
    };
    let (top, relayed, drained) = profiled_relay_in_three_runs("profiled-kernel", &run);
    assert_eq!(drained, relayed);
    let cumulative = |function: &str| top.iter().find(|(_, f)| f == function).map_or(0, |(cum, _)| *cum);
    let (sent, received) = (cumulative("relay_body"), cumulative("drain_socket"));
    assert!(
        sent * 10 > relayed * 9,
        "relay_body above {sent} copied bytes, {relayed} sent: {top:?}"
    );
    assert!(
        received.abs_diff(drained) * 10 < drained,
        "drain_socket above {received} copied bytes, {drained} received: {top:?}"
    );
    // The kernel's frames below them: the write that sent, and TCP's receive that copied.
    assert!(cumulative("ksys_write") * 10 > relayed * 9, "{top:?}");
    assert!(
        cumulative("tcp_recvmsg").abs_diff(drained) * 10 < drained,
        "{top:?}"
    );
}

/// The daemon's profiles load and attribute on every kernel of the matrix, both architectures
/// (the VMs carry no Go, so the profiles are decoded here): the relay's call sites name
/// relay_body, and its draining thread's observed receive copies name drain_socket above
/// `tcp_recvmsg`, the kernel's frames named after the daemon dropped its capabilities.
#[test]
fn the_daemons_profiles_name_the_relays_call_and_copy_sites() {
    if !privileged("the_daemons_profiles_name_the_relays_call_and_copy_sites") {
        return;
    }
    let daemon = Daemon::start(&["--profiles", "--profiles.period", "16384"]);
    let relay = Command::new(relay_program(Relay::FramePointers))
        .arg(test_file(8 * MIB))
        .args(["tcp", scratch_path("profiled-everywhere.log").to_str().unwrap()])
        // It lingers past a sweep of the daemon, which names its frames while it lives: under
        // the VMs' emulation a sweep that names the test binary's frames takes seconds.
        .args(["16384", "1024", "6000"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("the relay");
    let pid = relay.id();
    assert!(relay.wait_with_output().unwrap().status.success());
    let frames = |path: &str| profiled_stacks(&daemon, path, pid);
    let has = |stacks: &[Vec<String>], frame: &str| stacks.iter().any(|s| s.iter().any(|f| f == frame));
    let calls = frames("/debug/pprof/copies");
    assert!(
        has(&calls, "relay_body") && has(&calls, "drain_socket"),
        "{calls:#?}"
    );
    let copies = frames("/debug/pprof/kernel_copies");
    let received = copies
        .iter()
        .filter(|s| s.iter().any(|f| f == "drain_socket"))
        .any(|s| s.iter().any(|f| f == "tcp_recvmsg"));
    assert!(received, "{copies:#?}");
}

/// A relay whose binary is deleted while it runs, as a package upgrade replaces a running
/// service's: the daemon opens it through the process's exe link and names its frames.
#[test]
fn the_daemons_profiles_name_a_binary_deleted_while_it_runs() {
    if !privileged("the_daemons_profiles_name_a_binary_deleted_while_it_runs") {
        return;
    }
    let daemon = Daemon::start(&["--profiles", "--profiles.period", "16384"]);
    let binary = scratch_path("deleted-relay");
    std::fs::copy(relay_program(Relay::FramePointers), &binary).unwrap();
    let relay = Command::new(&binary)
        .arg(test_file(8 * MIB))
        .args([
            scratch_path("deleted-relay.out"),
            scratch_path("deleted-relay.log"),
        ])
        // It lingers past a sweep of the daemon, as in the test above.
        .args(["16384", "1024", "6000"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("the relay");
    // spawn returns once the exec succeeded: the relay maps the binary deleted here.
    std::fs::remove_file(&binary).unwrap();
    let pid = relay.id();
    assert!(relay.wait_with_output().unwrap().status.success());
    let calls = profiled_stacks(&daemon, "/debug/pprof/copies", pid);
    assert!(
        calls.iter().any(|s| s.iter().any(|f| f == "relay_body")),
        "{calls:#?}"
    );
}

/// The stacks of `pid`'s samples in the daemon's profile at `path`, root first, by function name.
fn profiled_stacks(daemon: &Daemon, path: &str, pid: u32) -> Vec<Vec<String>> {
    let file = format!("stacks-{pid}{}.pb.gz", path.len());
    let profile = decoded_profile(&daemon.profile(path, &file));
    let name = |id: i64| profile.string_table[id as usize].clone();
    let pid_key = profile
        .string_table
        .iter()
        .position(|s| s == "pid")
        .expect("pid label") as i64;
    profile
        .sample
        .iter()
        .filter(|s| {
            s.label
                .iter()
                .any(|l| l.key == pid_key && l.num == i64::from(pid))
        })
        .map(|s| {
            s.location_id
                .iter()
                .map(|id| {
                    let function = profile.location[*id as usize - 1].line[0].function_id;
                    name(profile.function[function as usize - 1].name)
                })
                .collect()
        })
        .collect()
}

/// A profile over a window longer than the daemon's connection idle deadline is served: while
/// the daemon owes the client its answer, the wait is not the client's idleness.
#[test]
fn a_profile_window_longer_than_the_idle_deadline_is_served() {
    if !privileged("a_profile_window_longer_than_the_idle_deadline_is_served") {
        return;
    }
    let daemon = Daemon::start(&["--profiles"]);
    let seconds = zctrace::exporter::connections::IDLE_TIMEOUT.as_secs() + 2;
    let path = format!("/debug/pprof/copies?seconds={seconds}");
    let profile = decoded_profile(&daemon.profile(&path, "longer-than-idle.pb.gz"));
    assert_eq!(profile.duration_nanos, seconds as i64 * 1_000_000_000);
}

/// A served profile, decoded as zctrace wrote it.
fn decoded_profile(path: &Path) -> zctrace::stacks::pprof::Profile {
    use std::io::Read as _;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .expect("a gzipped profile");
    prost::Message::decode(raw.as_slice()).expect("a profile.proto")
}

/// How a profiled relay runs: its build, whether it writes into TCP (a thread of it drains the
/// other end) or a file, which profile is read, and which `go tool pprof` rows of it.
struct ProfiledRun {
    relay: Relay,
    tcp: bool,
    profile: &'static str,
    rows: fn(&Path, u32) -> Vec<(u64, String)>,
}

impl ProfiledRun {
    /// Into a file, read by its call sites.
    fn calls(relay: Relay, rows: fn(&Path, u32) -> Vec<(u64, String)>) -> ProfiledRun {
        ProfiledRun {
            relay,
            tcp: false,
            profile: "/debug/pprof/copies",
            rows,
        }
    }
}

/// `profiled_relay`'s figures, run again (up to three runs) while a stack of the relay's collided
/// with another process's in the daemon's shared stack map.
fn profiled_relay_in_three_runs(name: &str, run: &ProfiledRun) -> (Vec<(u64, String)>, u64, u64) {
    let mut runs = 1;
    loop {
        let figures = profiled_relay(&format!("{name}-{runs}"), run);
        if runs == 3 || !figures.0.iter().any(|(_, f)| f == zctrace::stacks::UNRECORDED) {
            return figures;
        }
        eprintln!(
            "a stack of the relay's collided with another process's; running once more: {:?}",
            figures.0
        );
        runs += 1;
    }
}

/// Runs the stack relay beside a daemon with profiles; its rows of the profile, and the bytes it
/// relayed and drained.
fn profiled_relay(name: &str, run: &ProfiledRun) -> (Vec<(u64, String)>, u64, u64) {
    let program = relay_program(run.relay);
    let daemon = Daemon::start(&["--profiles", "--profiles.period", "16384", "--workload-labels"]);
    // A host service, as the daemon names workloads from cgroup paths.
    let cgroups = TestCgroups::new(name);
    let service = cgroups.make("/system.slice/zc-profiled.service");
    let dst = if run.tcp {
        "tcp".into()
    } else {
        scratch_path(&format!("{name}.out"))
    };
    // It lingers past a sweep of the daemon, which names its frames while it lives.
    let relay = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {} {} {} {} 16384 1024 3000",
            cgroups.procs(&service).display(),
            program.display(),
            test_file(32 * MIB).display(),
            dst.display(),
            scratch_path(&format!("{name}.log")).display(),
        ))
        .stderr(Stdio::piped())
        .spawn()
        .expect("the relay");
    let pid = relay.id();
    let output = relay.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let figure = |name: &str| -> u64 {
        stderr
            .split_whitespace()
            .find_map(|field| field.strip_prefix(name))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stderr}"))
    };
    let profile = daemon.profile(run.profile, &format!("{name}.pb.gz"));
    // A profiler can name the frames again: the relay's mapping names its file and build ID.
    let mapping = format!("{} {}", program.display(), build_id(&program));
    let raw = pprof_raw(&profile);
    assert!(raw.contains(&mapping), "no mapping `{mapping}` in:\n{raw}");
    let tags = pprof_tags(&profile, pid);
    assert!(
        tags.contains("systemd_unit") && tags.contains("zc-profiled.service"),
        "the relay's samples carry its workload: {tags}"
    );
    ((run.rows)(&profile, pid), figure("relayed="), figure("drained="))
}
