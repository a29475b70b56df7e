//! Idempotent installation of the build and test toolchain: each step checks first, says what
//! it found or did, and installs only what is missing.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{apt_sources, arch::Arch, check, target_dir};

/// Debian packages: LLVM 22 for bpf-linker, the real programs the tests and bench run, and what
/// `vmtest` boots other kernels with.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "prometheus",
    "bpftool",
    "bpftrace",
    "systemd",
    "curl",
    "openssl",
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "cpio",
    "podman",
    "buildah",
    "runc",
    "musl-tools",
    "gcc-aarch64-linux-gnu",
    // Only recommended by the cross compiler, yet its C builds (ring's) need the arm64 headers.
    "libc6-dev-arm64-cross",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Python tools the tests use: Kubernetes manifest validation against bundled schemas.
const PYPI_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes_validate")];

pub fn ensure() -> Result<()> {
    foreign_architectures()?;
    debian_packages()?;
    python_tools()?;
    nightly_rust_src()?;
    musl_targets()?;
    bpf_linker()?;
    nginx_with_frame_pointers()
}

/// nginx's upstream source as Debian 12 ships it, and its SHA-256: apt checks what it downloads
/// against the archive's signed index, this checks that the archive still serves the source the
/// tests were written against.
const NGINX_ORIG: &str = "nginx_1.22.1.orig.tar.gz";
const NGINX_SHA256: &str = "9ebb333a9e82b952acd3e2b4aeb1d4ff6406f72491bab6cd9fe69f0dea737f31";

/// The nginx that setup builds with frame pointers.
pub fn nginx_binary() -> PathBuf {
    target_dir().join("nginx-fp/sbin/nginx")
}

/// nginx built with frame pointers, for the `attach --stacks` test on a real server: Debian's own
/// nginx has none, so the kernel cannot unwind its stacks (README, "Where the copies happen").
/// Built without the modules that need PCRE or zlib; about 15 s.
fn nginx_with_frame_pointers() -> Result<()> {
    let prefix = target_dir().join("nginx-fp");
    if nginx_binary().exists() {
        say(&format!(
            "present: nginx with frame pointers ({})",
            prefix.display()
        ));
        return Ok(());
    }
    say(&format!(
        "building nginx with frame pointers into {}",
        prefix.display()
    ));
    let build = target_dir().join("nginx-build");
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build)?;
    debian_source("nginx", &build)?;
    let mut verify = Command::new("sh");
    verify
        .arg("-c")
        .arg(format!(
            "echo '{NGINX_SHA256}  {NGINX_ORIG}' | sha256sum -c --quiet"
        ))
        .current_dir(&build);
    check(verify)
        .with_context(|| format!("Debian's nginx source is not {NGINX_ORIG} with SHA-256 {NGINX_SHA256}"))?;
    let mut unpack = Command::new("tar");
    unpack
        .args(["xzf", NGINX_ORIG, "--strip-components=1"])
        .current_dir(&build);
    check(unpack)?;
    let mut configure = Command::new("./configure");
    configure
        .arg(format!("--prefix={}", prefix.display()))
        .args([
            "--with-cc-opt=-O2 -fno-omit-frame-pointer",
            "--without-http_rewrite_module",
            "--without-http_gzip_module",
        ])
        .stdout(Stdio::null())
        .current_dir(&build);
    check(configure)?;
    let mut make = Command::new("make");
    make.args(["-j2", "install"])
        .stdout(Stdio::null())
        .current_dir(&build);
    check(make)
}

/// Downloads `package`'s Debian source files into `dir`, through apt, from the source
/// counterparts of the machine's own Debian archives. Those go in a list and state of their own
/// under `dir`, so the machine's apt configuration and lists stay as they are.
fn debian_source(package: &str, dir: &Path) -> Result<()> {
    let apt_dir = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(apt_dir.join(sub))?;
    }
    let codename = os_release_codename()?;
    let stanzas = apt_sources::source_stanzas(&machine_apt_sources()?, &codename);
    ensure!(
        !stanzas.is_empty(),
        "no apt source of this machine serves Debian {codename}: cannot fetch {package}'s source"
    );
    std::fs::write(
        apt_dir.join("sources.list.d/machine-src.sources"),
        stanzas.join("\n"),
    )?;
    let list = apt_dir.join("sources.list");
    std::fs::write(&list, "")?;
    let options = [
        format!("Dir::Etc::SourceList={}", list.display()),
        format!(
            "Dir::Etc::SourceParts={}",
            apt_dir.join("sources.list.d").display()
        ),
        format!("Dir::State::Lists={}", apt_dir.join("lists").display()),
        format!("Dir::Cache={}", apt_dir.join("cache").display()),
        // As root into a directory apt's own user cannot write: say so, rather than be warned.
        "APT::Sandbox::User=root".to_string(),
    ];
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        for option in &options {
            command.args(["-o", option]);
        }
        command.args(args).current_dir(dir);
        command
    };
    check(apt(&["update", "-q"]))?;
    // The newest version the index lists may not be served yet (or any more): take the next.
    let versions = source_versions(&options, package)?;
    for version in &versions {
        let wanted = format!("{package}={version}");
        if apt(&["source", "-q", "--download-only", &wanted])
            .status()
            .is_ok_and(|s| s.success())
        {
            say(&format!("downloaded Debian's source of {wanted}"));
            return Ok(());
        }
        say(&format!(
            "Debian's source of {wanted} did not download; trying an older one"
        ));
    }
    bail!("none of {package}'s source versions {versions:?} downloaded through apt")
}

/// The versions of source package `package` that the apt index under `options` lists, newest
/// first.
fn source_versions(options: &[String], package: &str) -> Result<Vec<String>> {
    let mut showsrc = Command::new("apt-cache");
    for option in options {
        showsrc.args(["-o", option]);
    }
    let output = showsrc
        .args(["showsrc", "--only-source", package])
        .output()
        .context("apt-cache showsrc")?;
    let mut versions: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .map(str::to_string)
        .collect();
    versions.sort_by(|a, b| debian_version_order(b, a));
    versions.dedup();
    ensure!(!versions.is_empty(), "apt lists no source package {package}");
    Ok(versions)
}

/// Debian's version order, as dpkg decides it.
fn debian_version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let is = |relation: &str| {
        Command::new("dpkg")
            .args(["--compare-versions", a, relation, b])
            .status()
            .is_ok_and(|s| s.success())
    };
    if is("lt") {
        std::cmp::Ordering::Less
    } else if is("gt") {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

/// The apt sources this machine uses: one-line `.list` entries and deb822 `.sources` stanzas.
fn machine_apt_sources() -> Result<Vec<apt_sources::Source>> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut listed: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        listed.sort();
        files.extend(listed);
    }
    let mut sources = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("list") => sources.extend(apt_sources::parse_one_line(&text)),
            Some("sources") => sources.extend(apt_sources::parse_deb822(&text)),
            _ => {}
        }
    }
    Ok(sources)
}

fn os_release_codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")
}

fn python_tools() -> Result<()> {
    for (package, module) in PYPI_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status();
        if present.is_ok_and(|s| s.success()) {
            say(&format!("present: PyPI package {package}"));
            continue;
        }
        say(&format!("installing PyPI package {package}"));
        let mut install = Command::new("python3");
        install.args(["-m", "pip", "install", "--quiet", package]);
        check(install)?;
    }
    Ok(())
}

/// dpkg's other architectures, whose packages `vmtest` downloads (never installs): arm64's
/// kernel and busybox.
fn foreign_architectures() -> Result<()> {
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let wanted = Arch::Aarch64.debian();
    if foreign.lines().any(|a| a == wanted) {
        say(&format!("present: dpkg architecture {wanted}"));
        return Ok(());
    }
    say(&format!(
        "adding dpkg architecture {wanted} (the arm64 VM's kernel and busybox)"
    ));
    let mut add = Command::new("dpkg");
    add.args(["--add-architecture", wanted]);
    check(add)?;
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    check(update)
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        say(&format!("present: Debian packages {}", DEBIAN_PACKAGES.join(" ")));
        return Ok(());
    }
    say(&format!("installing Debian packages: {}", missing.join(" ")));
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    check(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    check(install)
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Nightly with rust-src (build-std=core for the BPF target) and rustfmt (import grouping).
fn nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output();
    let listed = match installed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            say("installing: nightly toolchain");
            let mut toolchain = Command::new("rustup");
            toolchain.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
            check(toolchain)?;
            String::new()
        }
    };
    for component in ["rust-src", "rustfmt"] {
        if listed.lines().any(|l| l.starts_with(component)) {
            say(&format!("present: nightly {component}"));
            continue;
        }
        say(&format!("installing: {component} for nightly"));
        let mut add = Command::new("rustup");
        add.args(["component", "add", component, "--toolchain", "nightly"]);
        check(add)?;
    }
    Ok(())
}

/// The static targets zctrace's released binaries are built for (the container image's among
/// them).
fn musl_targets() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for arch in Arch::ALL {
        let triple = arch.triple();
        if installed.lines().any(|l| l == triple) {
            say(&format!("present: rust target {triple}"));
            continue;
        }
        say(&format!(
            "installing: rust target {triple} (a static release binary)"
        ));
        let mut add = Command::new("rustup");
        add.args(["target", "add", triple]);
        check(add)?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let found = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if found.is_ok_and(|s| s.success()) {
        say("present: bpf-linker");
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).exists() {
        bail!("{LLVM_PREFIX} is missing: install llvm-22-dev first");
    }
    say("installing: bpf-linker built against LLVM 22 (about a minute)");
    let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path)
        .env("LLVM_PREFIX", LLVM_PREFIX);
    check(install)
}

fn say(message: &str) {
    eprintln!("setup: {message}");
}
