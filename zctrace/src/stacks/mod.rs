//! Where the copies happen (`attach --stacks`): the call sites of data-path syscalls, each a user
//! stack and the mechanism its syscall used, weighted by the bytes the CPU copied for them by the
//! copy model; or the kernel stacks (with the user stacks above them) of the copies the kernel
//! was seen making, weighted by the bytes observed. Pure: the kernel side aggregates,
//! [`symbols`] names the frames, this module folds and ranks.
pub mod kallsyms;
pub mod pprof;
pub mod sampling;
pub mod symbols;
pub mod unwind;

use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;
use zctrace_common::{Copier, CopyStackCounts, CopyStackKey, StackKey, StackMode, SyscallStats};

use crate::accounting::{Basis, Mechanism, OBSERVED_ROUTINES};

/// Which stacks `attach --stacks` records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StackKind {
    /// The user stack of each data-path syscall, weighted by the copy model: every mechanism,
    /// on every kernel.
    #[default]
    User,
    /// The kernel stack of each copy the kernel is seen making, weighted by the bytes observed:
    /// the code path inside the kernel that copies.
    Kernel,
    /// Both, the user frames above the kernel frames of each observed copy.
    Both,
}

impl StackKind {
    pub fn mode(self) -> StackMode {
        match self {
            StackKind::User => StackMode::User,
            StackKind::Kernel => StackMode::Kernel,
            StackKind::Both => StackMode::Both,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            StackKind::User => "user",
            StackKind::Kernel => "kernel",
            StackKind::Both => "both",
        }
    }

    /// Where the copied bytes of its sites come from.
    pub fn basis(self) -> Basis {
        match self {
            StackKind::User => Basis::Model,
            StackKind::Kernel | StackKind::Both => Basis::Observed,
        }
    }
}

/// A copy site's user frames when the copy ran in a softirq, on no particular task's behalf.
pub const IN_SOFTIRQ: &str = "[receive softirq]";

/// What a folded stack or flame graph is weighted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Weight {
    /// Bytes the CPU copied, by the copy model.
    #[default]
    Copied,
    /// Bytes the calls moved (user stacks only: at a copy, what moved is what was copied).
    Moved,
    /// Calls.
    Calls,
}

/// The frame a call site shows when the stack map could not take its stack.
pub const UNRECORDED: &str = "[stack not recorded]";

/// One call site: a user stack, root first, and the mechanism its syscalls used; or one copy
/// site: its stacks, root first, and the routine that copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Site {
    pub frames: Vec<String>,
    pub mechanism: String,
    /// Syscalls made, or copies seen, there.
    pub calls: u64,
    pub bytes: u64,
    /// At a call site, by the copy model (the kernel counts bytes per stack, not copies); at a
    /// copy site, observed.
    pub copied_bytes: u64,
}

impl Site {
    /// A site from the kernel's counts, given its stack's frame names (root first; empty when the
    /// stack could not be recorded).
    pub fn new(key: &StackKey, stats: &SyscallStats, frames: Vec<String>) -> Site {
        let mechanism = Mechanism::from_key(key.nr, key.src, key.dst, key.variant);
        Site {
            frames,
            mechanism: mechanism.label(),
            calls: stats.calls,
            bytes: stats.bytes,
            copied_bytes: stats.bytes * mechanism.copies(),
        }
    }

    /// A copy site from the kernel's counts, given the names of its kernel stack's frames and,
    /// in both mode, of its user stack's (root first; empty when not recorded).
    pub fn at_copy(
        kind: StackKind,
        key: &CopyStackKey,
        counts: &CopyStackCounts,
        user: Vec<String>,
        kernel: Vec<String>,
    ) -> Site {
        let recorded = |frames: Vec<String>| {
            if frames.is_empty() {
                vec![UNRECORDED.to_string()]
            } else {
                frames
            }
        };
        let copier = Copier::from_u8(key.copier);
        let mut frames = match (kind, copier) {
            (StackKind::Both, Some(Copier::ZerocopyDeferred)) => vec![IN_SOFTIRQ.to_string()],
            (StackKind::Both, _) => recorded(user),
            _ => Vec::new(),
        };
        frames.extend(recorded(without_tracing_frames(kernel)));
        let routine = copier.map_or("unknown copier", |c| OBSERVED_ROUTINES[c as usize]);
        Site {
            frames,
            mechanism: format!("{routine} copy"),
            calls: counts.copies,
            bytes: counts.bytes,
            copied_bytes: counts.bytes,
        }
    }

    fn weight(&self, weight: Weight) -> u64 {
        match weight {
            Weight::Copied => self.copied_bytes,
            Weight::Moved => self.bytes,
            Weight::Calls => self.calls,
        }
    }

    /// The stack as one folded line's frames: root first, then the mechanism as the leaf, so a
    /// flame graph shows which syscall or copier each stack ended in.
    fn folded_frames(&self) -> String {
        let mut frames: Vec<String> = if self.frames.is_empty() {
            vec![UNRECORDED.to_string()]
        } else {
            self.frames.iter().map(|f| f.replace(';', ":")).collect()
        };
        frames.push(format!("[{}]", self.mechanism));
        frames.join(";")
    }
}

/// Leaf-end frames of the tracing machinery itself (the BPF program, the tracepoint, trampoline
/// or kprobe that ran it), which every kernel stack taken at a hook ends in.
const TRACING_FRAMES: [&str; 10] = [
    "bpf_",
    "__bpf_",
    "__traceiter_",
    "trace_call_bpf",
    "kprobe",
    "kretprobe",
    "__kretprobe",
    "rethook",
    "arch_rethook",
    "[kernel] ",
];

/// A kernel stack (root first) without the tracing frames at its leaf end.
fn without_tracing_frames(mut frames: Vec<String>) -> Vec<String> {
    while frames
        .last()
        .is_some_and(|f| TRACING_FRAMES.iter().any(|prefix| f.starts_with(prefix)))
    {
        frames.pop();
    }
    frames
}

/// Sites with the same frames and mechanism merged: distinct stack ids can name the same frames
/// (return addresses within one function).
pub fn merge(sites: Vec<Site>) -> Vec<Site> {
    let mut merged: Vec<Site> = Vec::new();
    for site in sites {
        match merged
            .iter_mut()
            .find(|m| m.frames == site.frames && m.mechanism == site.mechanism)
        {
            Some(m) => {
                m.calls += site.calls;
                m.bytes += site.bytes;
                m.copied_bytes += site.copied_bytes;
            }
            None => merged.push(site),
        }
    }
    merged
}

/// Folded stacks ("root;…;leaf;[mechanism] weight"), heaviest first; sites that weigh nothing are
/// left out, as flame graph tools expect.
pub fn folded(sites: &[Site], weight: Weight) -> Vec<String> {
    let mut lines: Vec<(u64, String)> = sites
        .iter()
        .filter(|s| s.weight(weight) > 0)
        .map(|s| (s.weight(weight), s.folded_frames()))
        .collect();
    lines.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    lines
        .into_iter()
        .map(|(w, frames)| format!("{frames} {w}"))
        .collect()
}

/// One of the heaviest call sites, for the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopSite {
    /// Root first.
    pub frames: Vec<String>,
    pub mechanism: String,
    pub calls: u64,
    pub bytes: u64,
    pub cpu_copy_bytes: u64,
    /// Of all the copied bytes the stacks hold.
    pub cpu_copy_share: f64,
}

/// The `n` sites that copied the most, with their share of all copied bytes.
pub fn top(sites: &[Site], n: usize) -> Vec<TopSite> {
    let total: u64 = sites.iter().map(|s| s.copied_bytes).sum();
    let mut ranked: Vec<&Site> = sites.iter().collect();
    ranked.sort_by(|a, b| b.copied_bytes.cmp(&a.copied_bytes).then(b.bytes.cmp(&a.bytes)));
    ranked
        .into_iter()
        .take(n)
        .map(|s| TopSite {
            frames: s.frames.clone(),
            mechanism: s.mechanism.clone(),
            calls: s.calls,
            bytes: s.bytes,
            cpu_copy_bytes: s.copied_bytes,
            cpu_copy_share: if total == 0 {
                0.0
            } else {
                s.copied_bytes as f64 / total as f64
            },
        })
        .collect()
}

/// Creates `path` for output, refusing to replace a file that exists.
pub fn create_output(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::File::create_new(path).with_context(|| {
        format!(
            "{}: cannot create it (zctrace never overwrites an existing file)",
            path.display()
        )
    })
}

/// An SVG flame graph of folded lines, by inferno; with no lines, an SVG that says so (inferno
/// treats an empty profile as an error, but "nothing was copied" is an answer).
pub fn flamegraph(
    lines: &[String],
    weight: Weight,
    basis: Basis,
    sampled: bool,
    mut out: impl Write,
) -> Result<()> {
    let counted = match (weight, basis) {
        (Weight::Copied, Basis::Model) => "CPU-copied bytes (copy model)",
        (Weight::Copied, Basis::Observed) => "CPU-copied bytes (observed)",
        (Weight::Moved, _) => "bytes moved",
        (Weight::Calls, Basis::Model) => "calls",
        (Weight::Calls, Basis::Observed) => "copies",
    };
    let count_name = if sampled {
        format!("{counted}, estimated from samples")
    } else {
        counted.to_string()
    };
    if lines.is_empty() {
        writeln!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"60\">\
             <text x=\"600\" y=\"35\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"16\">\
             zctrace: no {count_name} were recorded, so this flame graph is empty</text></svg>"
        )?;
        return Ok(());
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = "zctrace: where the copies happen".to_string();
    options.subtitle = Some(match basis {
        Basis::Model => "leaf frames in brackets: the syscall and what it moved bytes between".to_string(),
        Basis::Observed => "leaf frames in brackets: the kernel routine seen copying".to_string(),
    });
    options.count_name = count_name;
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .context("drawing the flame graph")
}

#[cfg(test)]
mod tests;
