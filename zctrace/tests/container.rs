//! The container image as the DaemonSet runs it: podman (runc) with exactly the pod's host
//! namespaces, capabilities, filesystem and mounts, serving a host workload's figures, and
//! leaving nothing loaded once stopped. `cargo xtask image` builds the image (`cargo xtask test`
//! does, as root).
mod common;

use std::{
    collections::BTreeSet,
    process::{Command, Output},
    sync::Mutex,
    time::Duration,
};

use common::*;
use serde::Deserialize as _;
use serde_norway::Value;

fn daemonset() -> Value {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/zctrace.yaml")).unwrap();
    let daemonset = serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .find(|document| document["kind"] == "DaemonSet");
    daemonset.expect("a DaemonSet in zctrace.yaml")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The image, the unit and the pod run the same binary with the same flags.
#[test]
fn the_image_the_unit_and_the_daemonset_run_the_same_flags() {
    let pod = &daemonset()["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    let containerfile = std::fs::read_to_string(repo("deploy/container/Containerfile")).unwrap();
    let cmd: Vec<String> = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .map(|json| serde_json::from_str(json).unwrap())
        .expect("CMD in the Containerfile");
    assert_eq!(args, cmd, "DaemonSet args against the image's CMD");
    let unit = std::fs::read_to_string(repo("deploy/systemd/zctrace.service")).unwrap();
    let exec: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart")
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(exec, cmd, "the systemd unit's flags against the image's");
    assert_eq!(
        container["image"].as_str(),
        Some(format!("ghcr.io/zctrace/zctrace:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "the DaemonSet names the tag `cargo xtask image` builds"
    );
}

/// podman flags for every setting of the pod and its container that shapes what the process may
/// do. A setting this does not know fails the test, so that what CI runs is what the cluster gets.
fn podman_flags(pod: &Value) -> Vec<String> {
    let mut flags = Vec::new();
    let container = &pod["containers"][0];
    assert_eq!(pod["hostPID"], true);
    flags.push("--pid=host".to_string());
    assert_eq!(pod["hostNetwork"], true);
    flags.push("--network=host".to_string());
    for (key, value) in container["securityContext"]
        .as_mapping()
        .expect("securityContext")
    {
        match (key.as_str().unwrap(), value) {
            ("runAsUser", user) => flags.push(format!("--user={}", user.as_u64().unwrap())),
            ("allowPrivilegeEscalation", Value::Bool(false)) => {
                flags.push("--security-opt=no-new-privileges".into())
            }
            ("readOnlyRootFilesystem", Value::Bool(true)) => flags.push("--read-only".into()),
            ("capabilities", caps) => {
                flags.extend(strings(&caps["drop"]).iter().map(|c| format!("--cap-drop={c}")));
                flags.extend(strings(&caps["add"]).iter().map(|c| format!("--cap-add=CAP_{c}")));
            }
            ("seccompProfile", profile) if profile["type"] == "Unconfined" => {
                flags.push("--security-opt=seccomp=unconfined".into())
            }
            (other, value) => panic!("securityContext.{other}: {value:?} has no podman equivalent here"),
        }
    }
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    for mount in container["volumeMounts"].as_sequence().expect("volumeMounts") {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        let host = volume["hostPath"]["path"].as_str().expect("a hostPath volume");
        let mode = if mount["readOnly"] == true { "ro" } else { "rw" };
        flags.push(format!(
            "--volume={host}:{}:{mode}",
            mount["mountPath"].as_str().unwrap()
        ));
    }
    flags
}

/// podman as `cargo xtask image` runs it, with no default ulimits (podman's exceed this host's
/// hard limits).
fn podman(args: &[&str]) -> Output {
    let conf = scratch_path("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    Command::new("podman")
        .args(["--storage-driver", "vfs", "--runtime", "runc"])
        .args(args)
        .env("CONTAINERS_CONF", &conf)
        .output()
        .expect("podman (cargo xtask setup installs it)")
}

/// A running container, removed when dropped.
struct Container(String);

impl Container {
    /// A field of `podman inspect`, by its Go template.
    fn inspect(&self, format: &str) -> String {
        let output = podman(&["inspect", "--format", format, &self.0]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "5", &self.0]);
    }
}

/// The tests here count the programs loaded on the host before and after their daemon runs.
static ONE_DAEMON_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The DaemonSet's pod as podman runs it, serving on a loopback port of its own.
struct DaemonSet {
    container: Container,
    port: u16,
}

impl DaemonSet {
    /// Runs `pod`'s container with its args, served on loopback only, on a port no other test
    /// holds; returns once it serves `/metrics`.
    fn run(pod: &Value, name: &str) -> DaemonSet {
        let image = pod["containers"][0]["image"].as_str().unwrap().to_string();
        assert!(
            podman(&["image", "exists", &image]).status.success(),
            "{image} is not built: run `cargo xtask image` (cargo xtask test does)"
        );
        let port = free_port();
        let name = format!("zctrace-test-{name}-{}", std::process::id());
        let mut run: Vec<String> = ["run", "--detach", "--name", &name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        run.extend(podman_flags(pod));
        run.push(image);
        let args = strings(&pod["containers"][0]["args"]);
        assert!(args.iter().any(|a| a.starts_with("--web.listen-address=")));
        run.extend(
            args.into_iter()
                .map(|arg| match arg.starts_with("--web.listen-address=") {
                    true => format!("--web.listen-address=127.0.0.1:{port}"),
                    false => arg,
                }),
        );
        let started = podman(&run.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            started.status.success(),
            "podman run: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let daemonset = DaemonSet {
            container: Container(name),
            port,
        };
        eventually("the container serves /metrics", Duration::from_secs(60), || {
            daemonset
                .get("/metrics")
                .map_err(|e| format!("{e}\n{}", daemonset.logs()))
        });
        daemonset
    }

    fn get(&self, path: &str) -> Result<String, String> {
        let bytes = self.get_bytes(path)?;
        String::from_utf8(bytes).map_err(|e| format!("{e}"))
    }

    fn get_bytes(&self, path: &str) -> Result<Vec<u8>, String> {
        let response = ureq::get(&format!("http://127.0.0.1:{}{path}", self.port))
            .call()
            .map_err(|e| format!("{e}"))?;
        response.into_body().read_to_vec().map_err(|e| format!("{e}"))
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&podman(&["logs", &self.container.0]).stderr).into_owned()
    }
}

#[test]
fn the_daemonset_container_serves_a_host_workload_and_leaves_nothing_loaded() {
    if !privileged("the_daemonset_container_serves_a_host_workload_and_leaves_nothing_loaded") {
        return;
    }
    let pod = &daemonset()["spec"]["template"]["spec"];
    let _alone = ONE_DAEMON_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let image = pod["containers"][0]["image"].as_str().unwrap().to_string();
    let before = loaded_zctrace_program_ids();
    let daemonset = DaemonSet::run(pod, "serves");
    let (container, metrics) = (&daemonset.container, || daemonset.get("/metrics"));
    let logs = || daemonset.logs();
    // One name for every node: a manifest list with an image per architecture.
    let list: serde_json::Value =
        serde_json::from_slice(&podman(&["manifest", "inspect", &image]).stdout).expect("a manifest list");
    let mut platforms: Vec<&str> = list["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    platforms.sort_unstable();
    assert_eq!(platforms, ["amd64", "arm64"]);
    let annotations = podman(&["image", "inspect", "--format", "{{json .Annotations}}", &image]);
    let annotations: serde_json::Value = serde_json::from_slice(&annotations.stdout).expect("annotations");
    assert_eq!(
        annotations["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(annotations["org.opencontainers.image.revision"]
        .as_str()
        .is_some_and(|r| r.len() == 40));

    // A host service: the pod names it from the host's cgroup hierarchy it mounts.
    let cgroups = TestCgroups::new("podtest");
    let service = cgroups.make("/system.slice/zc-podtest.service");
    send_from_cgroup(
        "zc-podtest",
        &cgroups.procs(&service),
        "read-write",
        &test_file(8 * MIB),
        64 * 1024,
    );
    // The sender's own flows: the shell that moved it wrote its pid to a file before the exec.
    let flow = |syscall| {
        let (src, dst) = if syscall == "read" {
            ("file", "user")
        } else {
            ("user", "tcp")
        };
        [
            ("comm", "zc-podtest"),
            ("systemd_unit", "zc-podtest.service"),
            ("syscall", syscall),
            ("src", src),
            ("dst", dst),
        ]
    };
    let body = eventually(
        "the host workload's bytes and copies",
        Duration::from_secs(30),
        || {
            let body = metrics()?;
            let moved = sample(&body, "zctrace_bytes_total", &flow("write")).unwrap_or(0.0);
            (moved >= (8 * MIB) as f64)
                .then_some(body)
                .ok_or(format!("write bytes {moved}"))
        },
    );
    assert_eq!(
        sample(&body, "zctrace_cpu_copy_bytes_total", &flow("read")),
        sample(&body, "zctrace_bytes_total", &flow("read")),
        "the file read copies every byte it reads"
    );
    assert!(
        sample(&body, "zctrace_cpu_copy_bytes_total", &flow("write")).unwrap_or(0.0) >= (8 * MIB) as f64,
        "the socket write copies every byte"
    );
    assert_eq!(
        sample(&body, "zctrace_cgroup_hierarchy_visible", &[]),
        Some(1.0),
        "{}",
        logs()
    );

    let stopped = podman(&["stop", "--time", "10", &container.0]);
    assert!(
        stopped.status.success(),
        "podman stop: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "zctrace exits cleanly on the runtime's SIGTERM:\n{}",
        logs()
    );
    nothing_left_loaded(before);
}

/// Waits until every zctrace program loaded now was loaded `before` the daemon started: the
/// next test counts from there. The kernel frees a program once its last link and descriptor
/// close, after a grace period; an earlier test's may be freed meanwhile too.
fn nothing_left_loaded(before: BTreeSet<u32>) {
    eventually(
        "no zctrace program loaded after the stop",
        Duration::from_secs(10),
        || {
            let left: Vec<u32> = loaded_zctrace_program_ids()
                .difference(&before)
                .copied()
                .collect();
            left.is_empty()
                .then_some(())
                .ok_or(format!("programs {left:?} still loaded, {before:?} before"))
        },
    );
}

/// The DaemonSet with `profiles.yaml` applied as `kubectl patch` applies it: its lists replace
/// the DaemonSet's.
fn daemonset_with_profiles() -> Value {
    let mut patched = daemonset();
    let text = std::fs::read_to_string(repo("deploy/kubernetes/profiles.yaml")).unwrap();
    let patch: Value = serde_norway::from_str(&text).unwrap();
    let from = &patch["spec"]["template"]["spec"]["containers"][0];
    let into = &mut patched["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(from["name"], into["name"]);
    let (args, caps) = (
        strings(&into["args"]),
        strings(&into["securityContext"]["capabilities"]["add"]),
    );
    assert_eq!(strings(&from["args"]), [args, vec!["--profiles".into()]].concat());
    assert_eq!(
        strings(&from["securityContext"]["capabilities"]["add"]),
        [caps, vec!["SYS_PTRACE".into()]].concat()
    );
    into["args"] = from["args"].clone();
    into["securityContext"]["capabilities"]["add"] = from["securityContext"]["capabilities"]["add"].clone();
    patched
}

/// A relay in a container of its own, its binary only in the container's filesystem: the
/// DaemonSet's daemon, in a container too, names its frames through /proc/PID/root, and labels
/// its samples with its container.
#[test]
fn the_daemonset_profiles_a_containerized_relay_by_its_own_frames() {
    if !privileged("the_daemonset_profiles_a_containerized_relay_by_its_own_frames") {
        return;
    }
    let _alone = ONE_DAEMON_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = loaded_zctrace_program_ids();
    let patched = daemonset_with_profiles();
    let daemonset = DaemonSet::run(&patched["spec"]["template"]["spec"], "profiles");
    let rootfs = static_relay_rootfs();
    // A stack the daemon's shared stack map refuses (another process's holds its bucket) is
    // counted and shown as not recorded: run the relay again, at new addresses, saying why.
    for run in 1..=3 {
        let (pid, id, relayed, profile) = profile_containerized_relay(&daemonset, &rootfs, run);
        let top = pprof_top(&profile, pid);
        if run < 3 && top.iter().any(|(_, f)| f == zctrace::stacks::UNRECORDED) {
            let metrics = daemonset.get("/metrics").unwrap_or_default();
            let drops: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("zctrace_map_update_errors_total{map=\"STACKS"))
                .collect();
            eprintln!("a stack of the relay's was not recorded ({drops:?}); running once more: {top:?}");
            continue;
        }
        assert_eq!(
            top.first().map(|(_, f)| f.as_str()),
            Some("relay_body"),
            "{top:?}\n{}",
            daemonset.logs()
        );
        // The pod samples at the default period, 1 MiB: the relay's 64 MiB through relay_body
        // are about 64 points, a Poisson count whose standard deviation is an eighth of it.
        let copied = 2 * relayed;
        let points = copied as f64 / (1024.0 * 1024.0);
        let four_deviations = 4.0 * copied as f64 / points.sqrt();
        assert!(
            (top[0].0.abs_diff(copied) as f64) < four_deviations,
            "relay_body: {top:?}, {copied} copied"
        );
        let tags = pprof_tags(&profile, pid);
        assert!(
            tags.contains(&id),
            "the relay's samples carry its container {id}: {tags}"
        );
        break;
    }
    drop(daemonset);
    nothing_left_loaded(before);
}

/// `attach --stacks`, pointed at a relay in a container of its own, names its frames: the
/// binary is only in the container's filesystem, and the relay has exited when they are named.
#[test]
fn attach_names_the_frames_of_a_process_in_a_container() {
    if !privileged("attach_names_the_frames_of_a_process_in_a_container") {
        return;
    }
    let _alone = ONE_DAEMON_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rootfs = static_relay_rootfs();
    // The relay's input is a FIFO: it waits in open until attach is tracing it.
    let fifo = scratch_path("attached-relay.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let name = format!("zctrace-attached-relay-{}", std::process::id());
    let relay = relay_in_container(name, &rootfs, &fifo, &[]);
    let pid = relay.inspect("{{.State.Pid}}");
    let folded = scratch_path("attached-relay.folded");
    let (attach, _log) = attach_started(&[
        "--pid",
        &pid,
        "--stacks",
        "user",
        "--stacks-out",
        folded.to_str().unwrap(),
    ]);
    let mut input = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let chunk = vec![7u8; MIB as usize];
    for _ in 0..8 {
        std::io::Write::write_all(&mut input, &chunk).unwrap();
    }
    drop(input);
    assert!(podman(&["wait", &relay.0]).status.success());
    report_of(attach.wait_with_output().unwrap());
    // Each relayed byte is copied twice under relay_body: read from the FIFO, written to /out.
    let folded = read_folded(&folded);
    let through_relay_body: u64 = folded
        .iter()
        .filter(|(frames, _)| has_frame(frames, "relay_body"))
        .map(|(_, weight)| weight)
        .sum();
    assert!(
        through_relay_body * 10 >= 2 * 8 * MIB * 9,
        "{through_relay_body} bytes under relay_body: {folded:#?}"
    );
}

/// Runs the relay in a container of its own from `rootfs`, then takes the daemon's profile:
/// the relay's pid on the host, its container's id, the bytes it relayed, and the profile's path.
fn profile_containerized_relay(
    daemonset: &DaemonSet,
    rootfs: &std::path::Path,
    run: u32,
) -> (u32, String, u64, std::path::PathBuf) {
    let name = format!("zctrace-relay-{}-{run}", std::process::id());
    // Alive past a sweep of the daemon, which names frames while their process lives.
    let relay = relay_in_container(name, rootfs, &test_file(32 * MIB), &["3000"]);
    let (pid, id) = (
        relay.inspect("{{.State.Pid}}").parse().expect("the relay's pid"),
        relay.inspect("{{.Id}}"),
    );
    assert!(podman(&["wait", &relay.0]).status.success());
    let stderr = String::from_utf8_lossy(&podman(&["logs", &relay.0]).stderr).into_owned();
    let relayed = stderr
        .split_whitespace()
        .find_map(|field| field.strip_prefix("relayed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("relayed= in {stderr}"));
    let profile = scratch_path(&format!("containerized-{run}.pb.gz"));
    let bytes = daemonset
        .get_bytes("/debug/pprof/copies")
        .unwrap_or_else(|e| panic!("{e}\n{}", daemonset.logs()));
    std::fs::write(&profile, bytes).unwrap();
    (pid, id, relayed, profile)
}

/// The static relay of `rootfs` started in a container of its own named `name`, relaying `input`
/// (its `/in`) in 16 KiB chunks with a 1 KiB log record each, `extra` appended to its arguments.
fn relay_in_container(
    name: String,
    rootfs: &std::path::Path,
    input: &std::path::Path,
    extra: &[&str],
) -> Container {
    let volume = format!("--volume={}:/in:ro", input.display());
    let run = [
        "run",
        "--detach",
        "--name",
        &name,
        "--network=none",
        &volume,
        "--rootfs",
        rootfs.to_str().unwrap(),
        "/relay",
        "/in",
        "/out",
        "/log",
        "16384",
        "1024",
    ];
    let started = podman(&[&run[..], extra].concat());
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    Container(name)
}

/// A root filesystem holding only the stack relay, built static (position-independent, so that
/// each run lies at new addresses), at `/relay`: a path the host does not have.
fn static_relay_rootfs() -> std::path::PathBuf {
    let rootfs = scratch_path("relay-rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let status = Command::new("gcc")
        .args([
            "-O2",
            "-Wall",
            "-Werror",
            "-pthread",
            "-static",
            "-fno-omit-frame-pointer",
            "-o",
        ])
        .arg(rootfs.join("relay"))
        .arg(repo("zctrace/tests/programs/stack_relay.c"))
        .status()
        .expect("gcc");
    assert!(status.success(), "building a static stack_relay.c");
    rootfs
}
