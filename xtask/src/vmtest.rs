//! `cargo xtask vmtest`: the privileged suite inside kernels other than the host's, each booted
//! under qemu (TCG: KVM does not work on this project's VMs) from a Debian kernel package, with an
//! initramfs holding busybox, the zctrace binary and the test binaries. arm64 kernels boot under
//! qemu-system-aarch64, with zctrace and the tests cross-built as static arm64 binaries and
//! Debian's arm64 busybox.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{apt, apt_sources, arch::Arch, cargo_command, check, setup, target_dir, workspace_root};

/// One kernel of the matrix. The host's own kernel is the matrix's other point, covered by the
/// ordinary test run.
pub struct Kernel {
    /// Names the kernel in logs and in its cache directory under `target/vmtest/`.
    pub name: &'static str,
    /// Debian package names to choose from (a regex for `apt-cache search --names-only` over
    /// [`SUITES`]); the newest match that downloads is booted, so the matrix follows the
    /// distribution's updates.
    package: &'static str,
    arch: Arch,
    qemu: &'static str,
    qemu_args: &'static [&'static str],
    console: &'static str,
    suite: Suite,
    /// How the copy routines must be observed there, which `kernel_matrix` checks: Debian's
    /// cloud kernels all have both, but arm64 gained BPF trampolines only in 6.4.
    copy_hooks: CopyHooks,
    /// How sys_exit must attach there, which `kernel_matrix` checks: by tp_btf where the kernel
    /// runs its programs unpreempted, by the classic tracepoint where it may preempt them (7.3
    /// amd64: lazy preemption with preemptible RCU; arm64's 7.3 has RCU that does not preempt).
    sys_exit: &'static str,
}

#[derive(Clone, Copy)]
enum CopyHooks {
    Trampolines,
    Kprobes,
}

impl CopyHooks {
    fn label(self) -> &'static str {
        match self {
            CopyHooks::Trampolines => "trampolines",
            CopyHooks::Kprobes => "kprobes",
        }
    }
}

const X86_64_QEMU: (&str, &[&str], &str) = ("qemu-system-x86_64", &["-cpu", "max"], "ttyS0");
// pauth-impdef: the architected pointer-authentication algorithm is slow to emulate.
const ARM64_QEMU: (&str, &[&str], &str) = (
    "qemu-system-aarch64",
    &["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
    "ttyAMA0",
);

const fn kernel(
    name: &'static str,
    package: &'static str,
    arch: Arch,
    (qemu, qemu_args, console): (&'static str, &'static [&'static str], &'static str),
    suite: Suite,
    (copy_hooks, sys_exit): (CopyHooks, &'static str),
) -> Kernel {
    Kernel {
        name,
        package,
        arch,
        qemu,
        qemu_args,
        console,
        suite,
        copy_hooks,
        sys_exit,
    }
}

/// The matrix: the oldest kernels of the fleets zctrace claims (Debian 11's 5.10, of the
/// RHEL 9 / Ubuntu 22.04 era), the LTS kernels between, and the newest Debian carries, whose
/// `linux-image-*` is only a metapackage from 7.x on (the kernel is in `linux-binary-*`).
pub const KERNELS: &[Kernel] = &[
    kernel(
        "debian11-5.10-amd64",
        r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
        Arch::X86_64,
        X86_64_QEMU,
        FULL_SUITE,
        (CopyHooks::Trampolines, "tp_btf"),
    ),
    kernel(
        "debian12-6.1-amd64",
        r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        Arch::X86_64,
        X86_64_QEMU,
        BETWEEN_SUITE,
        (CopyHooks::Trampolines, "tp_btf"),
    ),
    kernel(
        "debian13-6.12-amd64",
        r"^linux-image-6\.12\.[0-9]+\+deb13-cloud-amd64-unsigned$",
        Arch::X86_64,
        X86_64_QEMU,
        BETWEEN_SUITE,
        (CopyHooks::Trampolines, "tp_btf"),
    ),
    kernel(
        "debian-newest-amd64",
        r"^linux-binary-[0-9.]+\+deb[0-9]+-cloud-amd64$",
        Arch::X86_64,
        X86_64_QEMU,
        CORE_SUITE,
        (CopyHooks::Trampolines, "tracepoint"),
    ),
    kernel(
        "debian12-6.1-arm64",
        r"^linux-image-6\.1\.0-[0-9]+-cloud-arm64-unsigned$",
        Arch::Aarch64,
        ARM64_QEMU,
        CORE_SUITE,
        (CopyHooks::Kprobes, "tp_btf"),
    ),
    kernel(
        "debian-newest-arm64",
        r"^linux-binary-[0-9.]+\+deb[0-9]+-cloud-arm64$",
        Arch::Aarch64,
        ARM64_QEMU,
        CORE_SUITE,
        (CopyHooks::Trampolines, "tp_btf"),
    ),
];

/// Test binaries to run, each with the test names to run (empty runs them all).
type Suite = &'static [(&'static str, &'static [&'static str])];

/// The privileged tests that run in the x86_64 VMs. `kernel_matrix` runs uncaptured, so the
/// console shows each kernel's modes and copies. Left out: tests that need programs the VM does
/// not carry (Prometheus, promtool, curl, openssl, systemd-analyze), the host-only overhead and
/// load benchmarks, and, to keep CI within its time, the naming tests whose kernel side the
/// daemon's already covers (attach and top).
const FULL_SUITE: Suite = &[
    ("kernel_matrix", &[]),
    ("core_accounting", &[]),
    ("attach", &[]),
    ("stacks", &[]),
    // The profile test reads with `go tool pprof`, which the VMs do not carry.
    (
        "nginx_stacks",
        &[
            "nginx_without_sendfile_copies_from_its_event_loop_down_to_pread_and_writev",
            "nginx_with_sendfile_copies_only_its_headers",
            "nginx_without_sendfile_shows_each_copy_from_its_event_loop_into_the_kernel",
        ],
    ),
    ("bench_doctor", &[]),
    (
        "daemon",
        &[
            "metrics_attribute_each_workload_to_its_process_name",
            "a_process_that_moves_to_another_cgroup_and_execs_is_counted_under_the_new_one",
            "a_daemon_in_a_pod_names_every_workload_on_the_node_from_the_host_hierarchy",
            "the_daemons_profiles_name_the_relays_call_and_copy_sites",
        ],
    ),
    ("daemon_shutdown", &[]),
    (
        "naming",
        &[
            "the_daemon_reports_a_prctl_renamed_process_under_its_new_name",
            "a_process_is_named_by_its_leader_not_by_the_thread_that_works",
            "idle_processes_get_no_series_at_zero_and_no_process_an_empty_name",
        ],
    ),
];

/// arm64, and the x86_64 kernels between the matrix's ends, run the suite's architecture- and
/// kernel-dependent part: every probe in its best way and down its
/// chains, doctor agreeing for every method and the observed copies with the model
/// (kernel_matrix, bench_doctor); attach's copies per byte; the accounting of every mechanism and
/// exit cleanup; user and kernel stacks (arm64 unwinds by frame records); a daemon scrape, its
/// profiles, and shutdown. Left out: nginx (built for the host only) and the naming tests, which are
/// architecture-neutral user-space logic that the x86_64 runs at the matrix's ends cover.
const CORE_SUITE: Suite = &[
    ("kernel_matrix", &[]),
    ("core_accounting", &[]),
    ("attach", &[]),
    ("stacks", &[]),
    ("bench_doctor", &[]),
    (
        "daemon",
        &[
            "metrics_attribute_each_workload_to_its_process_name",
            "the_daemons_profiles_name_the_relays_call_and_copy_sites",
        ],
    ),
    ("daemon_shutdown", &[]),
];

/// The x86_64 kernels between the matrix's ends (6.1, 6.12) run what must hold on every kernel,
/// and no more (CI's time): every probe in its best way and observed copies equal to the model,
/// doctor for every method, attach's copies per byte from launch, exits leaving no entries,
/// descriptor kinds at reused numbers, a process's cgroup after it moves, the daemon's attribution
/// and shutdown. They offer no hook that the kernels on either side do not, and 6.1's whole core
/// suite runs on arm64.
const BETWEEN_SUITE: Suite = &[
    ("kernel_matrix", &[]),
    (
        "core_accounting",
        &[
            "every_exit_is_marked_and_leaves_no_per_thread_entry",
            "a_recycled_pid_starts_from_zero_and_exited_processes_are_freed",
            "every_kind_lands_right_at_a_reused_descriptor_number",
        ],
    ),
    (
        "attach",
        &[
            "sendfile_report",
            "read_write_report",
            "mmap_write_report",
            "splice_report",
            "a_command_that_moves_to_another_cgroup_is_reported_in_the_new_one",
        ],
    ),
    ("bench_doctor", &[]),
    (
        "daemon",
        &[
            "metrics_attribute_each_workload_to_its_process_name",
            "a_process_that_moves_to_another_cgroup_and_execs_is_counted_under_the_new_one",
            "the_daemons_profiles_name_the_relays_call_and_copy_sites",
        ],
    ),
    ("daemon_shutdown", &[]),
];

/// How long one boot, which runs a kernel's whole suite, may take before qemu is stopped.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where the binaries go inside the VM.
const VM_BIN: &str = "/opt/zctrace";

/// Boots each kernel of the matrix (or only `only`) to run its suite (or only `test`).
pub fn run(only: Option<&str>, test: Option<&str>) -> Result<()> {
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| only.is_none_or(|name| k.name == name))
        .collect();
    if kernels.is_empty() {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        bail!("no kernel named {only:?}; the matrix has {}", names.join(", "));
    }
    if let Some(test) = test {
        let known = kernels
            .iter()
            .any(|k| k.suite.iter().any(|(name, _)| *name == test));
        let mut names: Vec<&str> = kernels
            .iter()
            .flat_map(|k| k.suite.iter().map(|(name, _)| *name))
            .collect();
        names.sort_unstable();
        names.dedup();
        ensure!(
            known,
            "no test binary named {test} in the suite of {}; it has {}",
            only.unwrap_or("any kernel"),
            names.join(", ")
        );
    }
    let mut prepared = Vec::new();
    for kernel in kernels {
        let suite: Vec<&'static str> = kernel
            .suite
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| test.is_none_or(|t| t == *name))
            .collect();
        if suite.is_empty() {
            eprintln!("vmtest: {}: its suite has no {test:?}", kernel.name);
            continue;
        }
        prepared.push(prepare(kernel, suite)?);
    }
    boot_all(prepared)
}

/// A kernel ready to boot: its image, and an initramfs holding its suite.
struct Prepared {
    kernel: &'static Kernel,
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    suite: Vec<&'static str>,
}

fn prepare(kernel: &'static Kernel, suite: Vec<&'static str>) -> Result<Prepared> {
    let binaries = build_suite(kernel)?;
    let dir = target_dir().join("vmtest").join(kernel.name);
    let vmlinuz = fetch_kernel(kernel, &dir)?;
    let initramfs = pack_initramfs(kernel, &dir, &binaries)?;
    Ok(Prepared {
        kernel,
        vmlinuz,
        initramfs,
        suite,
    })
}

/// Boots the prepared kernels, one per host core at once (or `ZCTRACE_VM_JOBS`), longest suites
/// first (by their binaries; arm64 emulates slower). Each guest's vCPUs share one host thread
/// (single-threaded TCG), so guests side by side do not slow each other much: two ran each about
/// 12% slower than one alone on multi-threaded TCG. Every kernel runs to its end, and all failures
/// are told together.
fn boot_all(mut prepared: Vec<Prepared>) -> Result<()> {
    let jobs = vm_jobs()?.min(prepared.len()).max(1);
    prepared.sort_by_key(|p| (std::cmp::Reverse(p.suite.len()), p.kernel.arch != Arch::Aarch64));
    let queue = std::sync::Mutex::new(prepared.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let Some(next) = queue.lock().unwrap().next() else {
                    return;
                };
                let started = Instant::now();
                let outcome = run_with_one_retry_after_a_stall(
                    next.kernel,
                    &next.vmlinuz,
                    &next.initramfs,
                    &next.suite,
                );
                match outcome {
                    Ok(()) => eprintln!(
                        "vmtest: {} passed in {:.0} s",
                        next.kernel.name,
                        started.elapsed().as_secs_f64()
                    ),
                    Err(error) => failures.lock().unwrap().push(format!("{error:#}")),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn vm_jobs() -> Result<usize> {
    match std::env::var("ZCTRACE_VM_JOBS") {
        Ok(jobs) => jobs
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .with_context(|| format!("ZCTRACE_VM_JOBS={jobs}: not a positive number")),
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    }
}

/// How a boot ended, when it did not fail.
enum Outcome {
    Passed,
    /// The guest kernel reported a soft lockup or an RCU stall, or a test binary printed nothing
    /// for `QUIET_LIMIT` (emulated timers and IPIs under TCG can lose a wake-up); the boot was
    /// stopped once the console showed where everything waited. Holds the binaries that had
    /// passed before.
    Stalled(Vec<String>),
}

/// Boots the kernel once for all of `suite`, one test binary after another (a boot of its own
/// each spent about 15 s per binary on booting alone). After a stall, the binaries not yet done
/// get one more boot, so that one emulation hiccup does not fail the matrix while a second does.
fn run_with_one_retry_after_a_stall(
    kernel: &Kernel,
    vmlinuz: &Path,
    initramfs: &Path,
    suite: &[&str],
) -> Result<()> {
    let mut left: Vec<&str> = suite.to_vec();
    for attempt in 1..=2 {
        match boot(kernel, vmlinuz, initramfs, &left)? {
            Outcome::Passed => return Ok(()),
            Outcome::Stalled(done) => {
                left.retain(|test| !done.iter().any(|d| d == test));
                if attempt == 1 {
                    eprintln!(
                        "vmtest: {}: the guest stalled while running {} (lines above); booting once more for {}",
                        kernel.name,
                        left[0],
                        left.join(", ")
                    );
                }
            }
        }
    }
    bail!("{}: {}: the guest stalled twice", kernel.name, left[0])
}

/// The zctrace binary and the suite's test binaries, as `cargo test` builds them.
struct Binaries {
    zctrace: PathBuf,
    tests: Vec<(String, PathBuf)>,
}

/// Builds `kernel`'s suite: as the host builds it for x86_64 (dynamically linked: the VM gets
/// the libraries `ldd` names), as static musl binaries for other architectures.
fn build_suite(kernel: &Kernel) -> Result<Binaries> {
    let mut args = vec![
        "test",
        "--package",
        "zctrace",
        "--no-run",
        "--message-format=json",
    ];
    for (test, _) in kernel.suite {
        args.extend(["--test", test]);
    }
    let mut build = cargo_command(&args);
    if kernel.arch != Arch::X86_64 {
        kernel.arch.target(&mut build);
    }
    let output = build
        .stderr(Stdio::inherit())
        .output()
        .context("building the suite")?;
    ensure!(output.status.success(), "building the suite failed");
    let mut tests = Vec::new();
    let mut zctrace = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(executable)) =
            (message["target"]["name"].as_str(), message["executable"].as_str())
        else {
            continue;
        };
        let kinds = message["target"]["kind"].to_string();
        if kinds.contains("\"test\"") && kernel.suite.iter().any(|(test, _)| *test == name) {
            tests.push((name.to_string(), PathBuf::from(executable)));
        } else if kinds.contains("\"bin\"") && name == "zctrace" {
            zctrace = Some(PathBuf::from(executable));
        }
    }
    let zctrace = zctrace.context("cargo built no zctrace binary")?;
    ensure!(
        tests.len() == kernel.suite.len(),
        "cargo built {} of {} test binaries",
        tests.len(),
        kernel.suite.len()
    );
    Ok(Binaries { zctrace, tests })
}

/// The Debian suites the matrix's kernels (and arm64's busybox) come from, read with an apt of
/// their own under the target directory, so the machine's sources stay as they are.
const SUITES: &[&str] = &[
    "bullseye",
    "bullseye-security",
    "bookworm",
    "bookworm-security",
    "trixie",
    "trixie-backports",
    "sid",
];

/// An apt over [`SUITES`], its lists refreshed once per run.
fn kernel_archive() -> Result<&'static apt::PrivateApt> {
    static ARCHIVE: std::sync::OnceLock<apt::PrivateApt> = std::sync::OnceLock::new();
    if let Some(archive) = ARCHIVE.get() {
        return Ok(archive);
    }
    let codename = apt::codename()?;
    let stanzas = apt_sources::other_release_stanzas(&apt::machine_sources(), &codename, SUITES);
    ensure!(
        !stanzas.is_empty(),
        "no apt source of this machine serves Debian {codename}: cannot reach the kernels' suites"
    );
    let archive = apt::PrivateApt::new(&target_dir().join("vmtest/apt"), &stanzas)?;
    eprintln!("vmtest: reading the kernels' suites: {}", SUITES.join(" "));
    check(archive.get(&["update", "-q"]))?;
    Ok(ARCHIVE.get_or_init(|| archive))
}

/// The newest kernel matching `kernel.package` that downloads, kept in `dir`. A package the
/// index lists but the archive does not serve (withdrawn, or not yet mirrored) gives way to the
/// next newest, and the log says which was booted.
fn fetch_kernel(kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    let candidates = packages_newest_first(kernel.package)?;
    for package in &candidates {
        let vmlinuz = dir.join(format!("{package}.vmlinuz"));
        if vmlinuz.exists() {
            eprintln!("vmtest: {}: booting {package} (cached)", kernel.name);
            return Ok(vmlinuz);
        }
        let unpacked = extract_package(&format!("{package}:{}", kernel.arch.debian()), dir);
        match unpacked.and_then(|tree| move_kernel_image(&tree, &vmlinuz)) {
            Ok(()) => {
                eprintln!(
                    "vmtest: {}: booting {package}, downloaded from Debian",
                    kernel.name
                );
                return Ok(vmlinuz);
            }
            // apt has printed why (a 404, mostly); the command line would add nothing.
            Err(_) => eprintln!(
                "vmtest: {}: {package} did not download; trying the next newest",
                kernel.name
            ),
        }
    }
    bail!("{}: none of {} downloaded", kernel.name, candidates.join(", "))
}

/// The kernel image in an unpacked kernel package: `boot/vmlinuz-*` until 6.x,
/// `usr/lib/modules/*/vmlinuz` in 7.x's `linux-binary-*`.
fn move_kernel_image(tree: &Path, to: &Path) -> Result<()> {
    let boot = find_prefixed(&tree.join("boot"), "vmlinuz-");
    let found = boot.or_else(|_| {
        let modules = single_file(&tree.join("usr/lib/modules"), "")?;
        Ok::<_, anyhow::Error>(modules.join("vmlinuz"))
    })?;
    ensure!(found.is_file(), "the package holds no kernel image");
    std::fs::rename(&found, to)?;
    Ok(())
}

/// Debian's static busybox for `arch`: the host's own for x86_64, else extracted from the
/// foreign package (`cargo xtask setup` adds arm64 to dpkg's architectures).
fn busybox(arch: Arch, dir: &Path) -> Result<PathBuf> {
    if arch == Arch::X86_64 {
        return Ok(PathBuf::from("/bin/busybox"));
    }
    let busybox = dir.join("busybox");
    if !busybox.exists() {
        let tree = extract_package(&format!("busybox-static:{}", arch.debian()), dir)?;
        // /bin, or /usr/bin in releases merged into /usr (trixie on).
        let found = ["bin/busybox", "usr/bin/busybox"]
            .map(|path| tree.join(path))
            .into_iter()
            .find(|path| path.is_file())
            .context("busybox-static holds no bin/busybox or usr/bin/busybox")?;
        std::fs::rename(found, &busybox)?;
    }
    Ok(busybox)
}

/// Downloads `package` and unpacks it under `dir/unpacked/x`, which it returns.
fn extract_package(package: &str, dir: &Path) -> Result<PathBuf> {
    let unpacked = dir.join("unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked)?;
    let mut download = kernel_archive()?.get(&["download", "-q", package]);
    download.current_dir(&unpacked);
    check(download)?;
    let deb = single_file(&unpacked, ".deb")?;
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-x").arg(&deb).arg(unpacked.join("x"));
    check(extract)?;
    Ok(unpacked.join("x"))
}

/// Packages whose names match `pattern`, newest first.
fn packages_newest_first(pattern: &str) -> Result<Vec<String>> {
    let output = kernel_archive()?
        .cache(&["search", "--names-only", pattern])
        .output()
        .context("apt-cache")?;
    let mut found: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    ensure!(
        !found.is_empty(),
        "Debian's archive has no package matching {pattern}"
    );
    found.sort_by_key(|name| std::cmp::Reverse(version_key(name)));
    Ok(found)
}

/// The numbers in a package name, for ordering `6.1.0-9` before `6.1.0-10`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn single_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    ensure!(found.len() == 1, "expected one *{suffix} in {}", dir.display());
    Ok(found.remove(0))
}

fn find_prefixed(dir: &Path, prefix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// An uncompressed newc initramfs: busybox, the binaries (debug info stripped), the libraries
/// they load, and `/init`, which runs the suite and powers off.
fn pack_initramfs(kernel: &Kernel, dir: &Path, binaries: &Binaries) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", &VM_BIN[1..]] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy(busybox(kernel.arch, dir)?, root.join("bin/busybox"))
        .context("busybox (Debian's busybox-static; `cargo xtask setup` installs it)")?;
    let mut executables = vec![("zctrace".to_string(), binaries.zctrace.clone())];
    executables.extend(binaries.tests.iter().cloned());
    executables.extend(build_programs(kernel.arch, dir)?);
    // nginx with frame pointers is built for the host only.
    if kernel.arch == Arch::X86_64 {
        executables.push(("nginx".to_string(), setup::nginx_binary()));
    }
    for (name, path) in &executables {
        let target = root.join(&VM_BIN[1..]).join(name);
        let mut strip = Command::new(kernel.arch.strip());
        strip.arg("--strip-debug").arg("-o").arg(&target).arg(path);
        check(strip)?;
        copy_libraries(path, &root)?;
    }
    // nginx looks up its worker user even as root, and finds none without these.
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n",
    )?;
    let init = root.join("init");
    std::fs::write(&init, init_script(kernel.suite))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let archive = dir.join("initramfs.cpio");
    let files = Command::new("find")
        .arg(".")
        .current_dir(&root)
        .output()
        .context("listing the initramfs")?;
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&archive)?)
        .spawn()
        .context("cpio (`cargo xtask setup` installs it)")?;
    std::io::Write::write_all(cpio.stdin.as_mut().context("cpio stdin")?, &files.stdout)?;
    drop(cpio.stdin.take());
    ensure!(cpio.wait()?.success(), "cpio failed");
    Ok(archive)
}

/// The C programs tests build with gcc, which the VM has not: (name in the VM, gcc flags). The
/// stacks test finds them through `ZCTRACE_STACK_RELAY` (the name less its variant).
const PROGRAMS: &[(&str, &[&str])] = &[
    ("stack-relay-fp", &["-fno-omit-frame-pointer"]),
    ("stack-relay-nofp", &["-fomit-frame-pointer"]),
    (
        "stack-relay-libc",
        &["-fno-omit-frame-pointer", "-DLIBC_WRAPPERS"],
    ),
];

/// Built for `arch`: by the host's gcc for x86_64, else by its cross compiler.
fn build_programs(arch: Arch, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let source = workspace_root().join("zctrace/tests/programs/stack_relay.c");
    PROGRAMS
        .iter()
        .map(|(name, flags)| {
            let out = dir.join(name);
            let mut gcc = Command::new(arch.c_compiler());
            // Static, as the VM has no other architecture's libc; position-independent, so that
            // each run lies at new addresses and a stack-map collision is not met again.
            if arch != Arch::X86_64 {
                gcc.arg("-static-pie");
            }
            gcc.args(["-O2", "-Wall", "-Werror", "-pthread"])
                .args(*flags)
                .arg("-o")
                .arg(&out)
                .arg(&source);
            check(gcc)?;
            Ok((name.to_string(), out))
        })
        .collect()
}

/// Copies the shared libraries `ldd` lists for `binary` to the same paths under `root`.
fn copy_libraries(binary: &Path, root: &Path) -> Result<()> {
    let output = Command::new("ldd").arg(binary).output().context("ldd")?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(library) = line
            .split_whitespace()
            .find(|word| word.starts_with('/'))
            .map(Path::new)
        else {
            continue;
        };
        let target = root.join(library.strip_prefix("/")?);
        if !target.exists() {
            std::fs::create_dir_all(target.parent().context("library path")?)?;
            std::fs::copy(library, &target).with_context(|| format!("copying {}", library.display()))?;
        }
    }
    Ok(())
}

/// Mounts what zctrace needs, runs each test binary the kernel command line names
/// (`zctrace.tests=A,B`) in turn, one test at a time (some tests count what the whole kernel has
/// loaded), reports each one's exit status, and powers off. A binary that prints nothing for
/// `QUIET_LIMIT` has every task's state and kernel stack printed, then the guest stops: a hang
/// shows where it waits instead of only timing out.
fn init_script(suite: Suite) -> String {
    let mut script = format!(
        "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
export PATH=/bin:{VM_BIN} HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1
export ZCTRACE_BIN={VM_BIN}/zctrace ZCTRACE_REQUIRE_PRIVILEGED=1 ZCTRACE_STACK_RELAY={VM_BIN}/stack-relay ZCTRACE_NGINX={VM_BIN}/nginx
tests=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^zctrace.tests=//p' | tr ',' ' ')
export ZCTRACE_EXPECT_COPY_HOOKS=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^zctrace.copy_hooks=//p')
export ZCTRACE_EXPECT_SYS_EXIT=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^zctrace.sys_exit=//p')
run_test() {{
case $1 in
"
    );
    for (test, names) in suite {
        let filter = match (*test, names.is_empty()) {
            ("kernel_matrix", _) => " --nocapture".to_string(),
            (_, true) => String::new(),
            (_, false) => format!(" --exact {}", names.join(" ")),
        };
        script += &format!("{test}) set -- {test} --test-threads=1{filter} ;;\n");
    }
    script
        + &format!(
            "*) echo \"zctrace-vm: no test named $1\"; poweroff -f ;;
esac
test=$1; shift
echo \"zctrace-vm: kernel $(uname -r), $test start\"
: > /tmp/output; rm -f /tmp/status
( {VM_BIN}/$test \"$@\"; echo $? > /tmp/status ) > /tmp/output 2>&1 &
tail -f /tmp/output & tailer=$!
quiet=0; size=0
while [ ! -e /tmp/status ]; do
  sleep 5
  now=$(wc -c < /tmp/output)
  if [ \"$now\" != \"$size\" ]; then size=$now; quiet=0; else quiet=$((quiet + 5)); fi
  if [ $quiet -ge {quiet} ]; then
    echo; echo \"{NO_PROGRESS} $quiet s; every user task, as the kernel sees it:\"
    for task in /proc/[0-9]*/task/[0-9]*; do
      [ -n \"$(tr -d '\\0' < $task/cmdline 2>/dev/null)\" ] || continue
      echo \"$task $(cat $task/comm) $(sed -n 's/^State:\\t//p' $task/status) wchan=$(cat $task/wchan)\"
      cat $task/stack
    done 2>/dev/null
    poweroff -f
  fi
done
sleep 2
kill $tailer
echo \"zctrace-vm: $test exit=$(cat /tmp/status)\"
}}
for test in $tests; do run_test $test; done
poweroff -f
",
            quiet = QUIET_LIMIT.as_secs()
        )
}

/// How long a test binary may print nothing before the guest shows where it waits and stops.
/// The slowest single test prints within a minute or two under TCG.
const QUIET_LIMIT: Duration = Duration::from_secs(240);
const NO_PROGRESS: &str = "zctrace-vm: no output for";

/// How long the console may stay silent before the host stops the guest as stalled: past the
/// guest's own watchdog (`QUIET_LIMIT`) and the task listing it prints.
const GUEST_SILENCE: Duration = Duration::from_secs(360);

/// Kernel messages that mean the guest stopped making progress.
const STALLS: [&str; 3] = ["soft lockup", "self-detected stall", "detected stalls on CPUs"];

/// Boots `vmlinuz` to run one test binary and shows its console as it runs. Fails unless the
/// binary passed with nothing skipped.
fn boot(kernel: &Kernel, vmlinuz: &Path, initramfs: &Path, tests: &[&str]) -> Result<Outcome> {
    // On a stall, every CPU's stack is printed (loglevel 5 lets warnings through).
    let append = format!(
        "console={} panic=-1 loglevel=5 softlockup_all_cpu_backtrace=1 zctrace.tests={} zctrace.copy_hooks={} zctrace.sys_exit={}",
        kernel.console,
        tests.join(","),
        kernel.copy_hooks.label(),
        kernel.sys_exit
    );
    let mut qemu = Command::new(kernel.qemu);
    // One host thread runs both vCPUs: a guest then takes one host core, and the next guest the
    // other. Multi-threaded TCG gained little here for a guest alone.
    qemu.args(kernel.qemu_args)
        .args(["-accel", "tcg,thread=single"])
        .args(["-smp", "2", "-m", "2048", "-display", "none", "-monitor", "none"])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = qemu
        .spawn()
        .with_context(|| format!("{} (`cargo xtask setup` installs qemu)", kernel.qemu))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line.trim_end_matches('\r').to_string());
        }
    });
    let show = |line: &str| println!("[{}] {line}", kernel.name);
    let deadline = Instant::now() + VM_TIMEOUT;
    let mut console = Vec::new();
    let mut went_quiet = false;
    let mut last_line = Instant::now();
    let stalled = loop {
        let wait = deadline
            .min(last_line + GUEST_SILENCE)
            .saturating_duration_since(Instant::now());
        match lines.recv_timeout(wait) {
            Ok(line) if STALLS.iter().any(|stall| line.contains(stall)) => {
                show(&line);
                // Let every CPU's backtrace reach the log before stopping the guest.
                std::thread::sleep(Duration::from_secs(5));
                lines.try_iter().for_each(|line| show(&line));
                break true;
            }
            Ok(line) => {
                last_line = Instant::now();
                // The guest prints every task's stack after this line, then powers off.
                went_quiet |= line.starts_with(NO_PROGRESS);
                show(&line);
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break went_quiet,
            // Not even the guest's own watchdog spoke: its timers stopped (a wake-up TCG lost).
            Err(mpsc::RecvTimeoutError::Timeout) if last_line.elapsed() >= GUEST_SILENCE => {
                show(&format!(
                    "vmtest: the guest printed nothing for {GUEST_SILENCE:?}; stopping it"
                ));
                break true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{}: no result within {VM_TIMEOUT:?}", kernel.name);
            }
        }
    };
    let _ = child.kill();
    child.wait()?;
    let mut passed = Vec::new();
    for test in tests {
        match verdict(test, &console) {
            Verdict::Passed => passed.push(test.to_string()),
            Verdict::Failed => bail!("{}: {test} failed, or skipped a test", kernel.name),
            Verdict::Unfinished if stalled => return Ok(Outcome::Stalled(passed)),
            Verdict::Unfinished => bail!("{}: {test} did not finish", kernel.name),
        }
    }
    Ok(Outcome::Passed)
}

enum Verdict {
    /// Exited 0 having run at least one test, none ignored.
    Passed,
    Failed,
    Unfinished,
}

/// How `test` ended, from its part of the console: the lines between its start and its exit.
fn verdict(test: &str, console: &[String]) -> Verdict {
    let start = format!(", {test} start");
    let Some(from) = console
        .iter()
        .position(|l| l.starts_with("zctrace-vm: kernel") && l.ends_with(&start))
    else {
        return Verdict::Unfinished;
    };
    let exit = format!("zctrace-vm: {test} exit=");
    let Some(length) = console[from..].iter().position(|l| l.starts_with(&exit)) else {
        return Verdict::Unfinished;
    };
    let part = &console[from..=from + length];
    let exited_ok = part.last().is_some_and(|l| *l == format!("{exit}0"));
    let summary = part.iter().find(|l| l.starts_with("test result: ok."));
    let ran = summary.is_some_and(|s| !s.contains(" 0 passed") && s.contains(" 0 ignored"));
    if exited_ok && ran {
        Verdict::Passed
    } else {
        Verdict::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suites_init_script_is_valid_shell_with_a_case_per_binary() {
        for suite in [FULL_SUITE, CORE_SUITE, BETWEEN_SUITE] {
            let script = init_script(suite);
            let check = Command::new("sh").args(["-n", "-c", &script]).output().unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
            for (test, names) in suite {
                assert!(script.contains(&format!("\n{test}) set -- {test} ")), "{test}");
                // `--exact` runs nothing for a name that matches no test, and says nothing.
                let source = std::fs::read_to_string(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../zctrace/tests/{test}.rs")),
                )
                .unwrap();
                for name in *names {
                    assert!(source.contains(&format!("fn {name}()")), "{test}: no test {name}");
                }
            }
        }
    }

    #[test]
    fn each_binary_is_judged_by_its_own_part_of_the_console() {
        let console: Vec<String> = [
            "zctrace-vm: kernel 5.10.0-43-cloud-amd64, attach start",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "zctrace-vm: attach exit=0",
            "zctrace-vm: kernel 5.10.0-43-cloud-amd64, stacks start",
            "test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out",
            "zctrace-vm: stacks exit=0",
            "zctrace-vm: kernel 5.10.0-43-cloud-amd64, daemon start",
        ]
        .map(String::from)
        .to_vec();
        assert!(matches!(verdict("attach", &console), Verdict::Passed));
        assert!(matches!(verdict("stacks", &console), Verdict::Failed));
        assert!(matches!(verdict("daemon", &console), Verdict::Unfinished));
        assert!(matches!(verdict("naming", &console), Verdict::Unfinished));
    }

    #[test]
    fn kernel_packages_order_by_their_numbers() {
        let mut names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-10-cloud-amd64",
        ];
        names.sort_by_key(|n| std::cmp::Reverse(version_key(n)));
        assert_eq!(names[0], "linux-image-6.1.0-10-cloud-amd64");
    }
}
