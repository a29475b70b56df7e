//! `cargo xtask vmtest`: the privileged suite inside kernels other than the host's, each booted
//! under qemu (TCG: KVM does not work on this project's VMs) from a Debian kernel package, with an
//! initramfs holding busybox, the zctrace binary and the test binaries.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{cargo_command, check, workspace_root};

/// One kernel of the matrix. The host's own kernel is the matrix's other point, covered by the
/// ordinary test run.
pub struct Kernel {
    /// Names the kernel in logs and in its cache directory under `target/vmtest/`.
    pub name: &'static str,
    /// Debian package names to choose from (a regex for `apt-cache search --names-only`); the
    /// newest match is booted, so the matrix follows the distribution's security updates.
    package: &'static str,
    qemu: &'static str,
    qemu_args: &'static [&'static str],
    console: &'static str,
}

pub const KERNELS: &[Kernel] = &[Kernel {
    name: "debian12-6.1-amd64",
    package: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
    qemu: "qemu-system-x86_64",
    qemu_args: &["-cpu", "max"],
    console: "ttyS0",
}];

/// The privileged tests that run in every VM: (test binary, test names; empty runs them all).
/// `kernel_matrix` runs uncaptured, so the console shows each kernel's modes and copies.
/// Left out: tests that need programs the VM does not carry (Prometheus, promtool, curl,
/// openssl, systemd-analyze) and the host-only overhead and load benchmarks.
const SUITE: &[(&str, &[&str])] = &[
    ("kernel_matrix", &[]),
    ("core_accounting", &[]),
    ("attach", &[]),
    ("bench_doctor", &[]),
    ("daemon", &["metrics_attribute_each_workload_to_its_process_name"]),
    ("daemon_shutdown", &[]),
];

/// How long one kernel's whole run may take before qemu is stopped.
const VM_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Where the binaries go inside the VM.
const VM_BIN: &str = "/opt/zctrace";

pub fn run(only: Option<&str>) -> Result<()> {
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| only.is_none_or(|name| k.name == name))
        .collect();
    if kernels.is_empty() {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        bail!("no kernel named {only:?}; the matrix has {}", names.join(", "));
    }
    let binaries = build_suite()?;
    for kernel in kernels {
        let started = Instant::now();
        let dir = workspace_root().join("target/vmtest").join(kernel.name);
        let vmlinuz = fetch_kernel(kernel, &dir)?;
        let initramfs = pack_initramfs(&dir, &binaries)?;
        boot(kernel, &vmlinuz, &initramfs)?;
        eprintln!(
            "vmtest: {} passed in {:.0} s",
            kernel.name,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The zctrace binary and the suite's test binaries, as `cargo test` builds them.
struct Binaries {
    zctrace: PathBuf,
    tests: Vec<(String, PathBuf)>,
}

fn build_suite() -> Result<Binaries> {
    let mut args = vec![
        "test",
        "--package",
        "zctrace",
        "--no-run",
        "--message-format=json",
    ];
    for (test, _) in SUITE {
        args.extend(["--test", test]);
    }
    let output = cargo_command(&args)
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
        if kinds.contains("\"test\"") && SUITE.iter().any(|(test, _)| *test == name) {
            tests.push((name.to_string(), PathBuf::from(executable)));
        } else if kinds.contains("\"bin\"") && name == "zctrace" {
            zctrace = Some(PathBuf::from(executable));
        }
    }
    let zctrace = zctrace.context("cargo built no zctrace binary")?;
    ensure!(
        tests.len() == SUITE.len(),
        "cargo built {} of {} test binaries",
        tests.len(),
        SUITE.len()
    );
    Ok(Binaries { zctrace, tests })
}

/// The newest kernel matching `kernel.package`, downloaded once and kept in `dir`.
fn fetch_kernel(kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    let package = newest_package(kernel.package)?;
    let vmlinuz = dir.join(format!("{package}.vmlinuz"));
    if vmlinuz.exists() {
        eprintln!("vmtest: {}: {package} (cached)", kernel.name);
        return Ok(vmlinuz);
    }
    eprintln!("vmtest: {}: downloading {package} from Debian", kernel.name);
    let unpacked = dir.join("unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked)?;
    let mut download = Command::new("apt-get");
    download.args(["download", "-q", &package]).current_dir(&unpacked);
    if check(download).is_err() {
        // The lists may predate the package: refresh them once.
        check(apt(&["update", "-q"]))?;
        let mut again = Command::new("apt-get");
        again.args(["download", "-q", &package]).current_dir(&unpacked);
        check(again)?;
    }
    let deb = single_file(&unpacked, ".deb")?;
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-x").arg(&deb).arg(unpacked.join("x"));
    check(extract)?;
    let boot = find_prefixed(&unpacked.join("x/boot"), "vmlinuz-")?;
    std::fs::rename(&boot, &vmlinuz)?;
    std::fs::remove_dir_all(&unpacked)?;
    Ok(vmlinuz)
}

fn newest_package(pattern: &str) -> Result<String> {
    let search = |refresh: bool| -> Result<Vec<String>> {
        if refresh {
            check(apt(&["update", "-q"]))?;
        }
        let output = Command::new("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()
            .context("apt-cache")?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    };
    let mut found = search(false)?;
    if found.is_empty() {
        found = search(true)?;
    }
    found
        .into_iter()
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
        .with_context(|| format!("Debian's archive has no package matching {pattern}"))
}

/// The numbers in a package name, for ordering `6.1.0-9` before `6.1.0-10`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn apt(args: &[&str]) -> Command {
    let mut command = Command::new("apt-get");
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    command
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
fn pack_initramfs(dir: &Path, binaries: &Binaries) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for sub in ["bin", "proc", "sys", "dev", "tmp", "root", &VM_BIN[1..]] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("/bin/busybox (Debian's busybox-static; `cargo xtask setup` installs it)")?;
    let mut executables = vec![("zctrace".to_string(), binaries.zctrace.clone())];
    executables.extend(binaries.tests.iter().cloned());
    for (name, path) in &executables {
        let target = root.join(&VM_BIN[1..]).join(name);
        let mut strip = Command::new("strip");
        strip.arg("--strip-debug").arg("-o").arg(&target).arg(path);
        check(strip)?;
        copy_libraries(path, &root)?;
    }
    let init = root.join("init");
    std::fs::write(&init, init_script())?;
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

/// Mounts what zctrace needs, runs each test binary one test at a time (some tests count what
/// is loaded in the whole kernel), reports each exit status, and powers off.
fn init_script() -> String {
    let mut script = format!(
        "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
export PATH=/bin:{VM_BIN} HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1
export ZCTRACE_BIN={VM_BIN}/zctrace ZCTRACE_REQUIRE_PRIVILEGED=1
echo \"zctrace-vm: kernel $(uname -r)\"
{VM_BIN}/zctrace probes 2>&1
"
    );
    for (test, names) in SUITE {
        let filter = match (*test, names.is_empty()) {
            ("kernel_matrix", _) => " --nocapture".to_string(),
            (_, true) => String::new(),
            (_, false) => format!(" --exact {}", names.join(" ")),
        };
        script += &format!(
            "echo \"zctrace-vm: {test} start\"\n{VM_BIN}/{test} --test-threads=1{filter} 2>&1\necho \"zctrace-vm: {test} exit=$?\"\n"
        );
    }
    script + "echo zctrace-vm: done\npoweroff -f\n"
}

/// Boots `vmlinuz` with the suite, shows its console as it runs, and fails unless every test
/// binary passed with nothing skipped.
fn boot(kernel: &Kernel, vmlinuz: &Path, initramfs: &Path) -> Result<()> {
    let mut qemu = Command::new(kernel.qemu);
    qemu.args(kernel.qemu_args)
        .args(["-smp", "2", "-m", "2048", "-display", "none", "-monitor", "none"])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &format!("console={} panic=-1 quiet", kernel.console)])
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
    let deadline = Instant::now() + VM_TIMEOUT;
    let mut console = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                println!("[{}] {line}", kernel.name);
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{}: no result within {VM_TIMEOUT:?}", kernel.name);
            }
        }
    }
    child.wait()?;
    verdict(kernel.name, &console)
}

/// Every test binary exited 0 having run at least one test, none ignored, and the VM finished.
fn verdict(kernel: &str, console: &[String]) -> Result<()> {
    ensure!(
        console.iter().any(|l| l == "zctrace-vm: done"),
        "{kernel}: the VM stopped before the suite finished"
    );
    let mut failed = Vec::new();
    for (test, _) in SUITE {
        let start = format!("zctrace-vm: {test} start");
        let end = format!("zctrace-vm: {test} exit=");
        let run: Vec<&String> = console
            .iter()
            .skip_while(|l| **l != start)
            .take_while(|l| !l.starts_with(&end))
            .collect();
        let exit_ok = console.iter().any(|l| *l == format!("{end}0"));
        let summary = run.iter().find(|l| l.starts_with("test result: ok."));
        let ran = summary.is_some_and(|s| !s.contains(" 0 passed") && s.contains(" 0 ignored"));
        if !exit_ok || !ran {
            failed.push(*test);
        }
    }
    ensure!(
        failed.is_empty(),
        "{kernel}: failed or skipped: {}",
        failed.join(", ")
    );
    Ok(())
}
