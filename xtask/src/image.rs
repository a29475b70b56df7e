//! `cargo xtask image`: the OCI images the DaemonSet runs, for x86_64 and arm64 nodes under one
//! manifest list. No registry is reachable from where they are built, so each starts from scratch
//! around a static (musl) binary that carries its eBPF object.
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{
    arch::{self, Arch},
    check, target_dir, workspace_root,
};

const SOURCE: &str = "https://github.com/zctrace/zctrace";

/// The image reference the DaemonSet names: the registry path with this build's version.
fn reference() -> String {
    format!("ghcr.io/zctrace/zctrace:{}", env!("CARGO_PKG_VERSION"))
}

/// podman with the settings that work on hosts like this one: the vfs storage driver (no
/// overlay needed) and runc (crun refuses hybrid cgroup layouts).
fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(["--storage-driver", "vfs", "--runtime", "runc"]);
    command
}

/// Builds the static binary and an image for each architecture, and the multi-arch manifest list
/// the DaemonSet names, which resolves to the image of each node's architecture. Prints each
/// image's size.
pub fn build() -> Result<()> {
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .context("git rev-parse")?;
    let revision = String::from_utf8_lossy(&revision.stdout).trim().to_string();
    let reference = reference();
    // An earlier build's list or single image under the same name gives way to this one.
    for remove in [&["manifest", "rm"][..], &["rmi", "--force"]] {
        let _ = podman()
            .args(remove)
            .arg(&reference)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let mut create = podman();
    create.args(["manifest", "create", &reference]);
    check(create)?;
    for arch in Arch::ALL {
        let image = build_one(arch, &reference, &revision)?;
        let mut add = podman();
        add.args(["manifest", "add", &reference])
            .arg(format!("containers-storage:{image}"));
        check(add)?;
    }
    eprintln!("xtask: built {reference}, a manifest list for {:?}", Arch::ALL);
    Ok(())
}

/// One architecture's image, tagged `<reference>-<debian arch>`; returns that tag.
fn build_one(arch: Arch, reference: &str, revision: &str) -> Result<String> {
    let binary = arch::static_binary(arch)?;
    let context = target_dir().join("image").join(arch.debian());
    std::fs::create_dir_all(&context)?;
    let mut strip = Command::new(arch.strip());
    strip.arg("-o").arg(context.join("zctrace")).arg(&binary);
    check(strip)?;
    let image = format!("{reference}-{}", arch.debian());
    let mut build = podman();
    // FROM scratch and one COPY: no instruction runs, so a foreign architecture needs no emulator.
    build
        .args(["build", "--format", "oci", "--tag", &image])
        .args(["--platform", &format!("linux/{}", arch.debian())])
        .arg("--file")
        .arg(workspace_root().join("deploy/container/Containerfile"));
    for (key, value) in [
        ("version", env!("CARGO_PKG_VERSION")),
        ("source", SOURCE),
        ("revision", revision),
        ("title", "zctrace"),
        ("licenses", "MIT OR Apache-2.0"),
    ] {
        build.args(["--annotation", &format!("org.opencontainers.image.{key}={value}")]);
    }
    build.arg(&context);
    check(build)?;
    let size = podman()
        .args(["image", "inspect", "--format", "{{.Size}}", &image])
        .output()
        .context("podman image inspect")?;
    let bytes: f64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    eprintln!("xtask: built {image}, {:.1} MB", bytes / 1e6);
    Ok(image)
}
