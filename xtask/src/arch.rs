//! The architectures zctrace is built for, each as a static (musl) binary that carries its eBPF
//! object: x86_64 natively, aarch64 cross-compiled with Debian's gcc-aarch64-linux-gnu as linker.
//! aya-build compiles the eBPF programs for the target's architecture (`bpf_target_arch`), which
//! picks the syscall table and the `pt_regs` layout they read.
use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Context as _, Result};

use crate::{cargo_command, check, target_dir};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// Debian's name for it.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Points a cargo build at this architecture's static target, with its linker when that is
    /// a cross linker.
    pub fn target(self, cargo: &mut Command) {
        cargo.args(["--target", self.triple()]);
        if let Some(linker) = self.cross_linker() {
            let triple = self.triple().to_uppercase().replace('-', "_");
            cargo.env(format!("CARGO_TARGET_{triple}_LINKER"), linker);
        }
    }

    /// The linker, for a cross build.
    fn cross_linker(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Aarch64 => Some("aarch64-linux-gnu-gcc"),
        }
    }

    /// Its C compiler: the host's, or the cross compiler.
    pub fn c_compiler(self) -> &'static str {
        match self {
            Arch::X86_64 => "gcc",
            Arch::Aarch64 => "aarch64-linux-gnu-gcc",
        }
    }

    pub fn strip(self) -> &'static str {
        match self {
            Arch::X86_64 => "strip",
            Arch::Aarch64 => "aarch64-linux-gnu-strip",
        }
    }

    /// The ELF header's `e_machine`.
    fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }
}

/// Builds the static release binary for `arch`, checks that it is an ELF executable for that
/// machine, and returns its path.
pub fn static_binary(arch: Arch) -> Result<PathBuf> {
    let triple = arch.triple();
    let mut build = cargo_command(&["build", "--release", "--package", "zctrace"]);
    arch.target(&mut build);
    check(build)?;
    let binary = target_dir().join(triple).join("release/zctrace");
    let header = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    ensure!(
        header.starts_with(b"\x7fELF\x02\x01") && header.len() > 20,
        "{} is not a 64-bit little-endian ELF file",
        binary.display()
    );
    let machine = u16::from_le_bytes([header[18], header[19]]);
    ensure!(
        machine == arch.elf_machine(),
        "{} is built for ELF machine {machine}, not {arch:?} ({})",
        binary.display(),
        arch.elf_machine()
    );
    Ok(binary)
}
