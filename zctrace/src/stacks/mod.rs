//! Where the copies happen (`attach --stacks`): the call sites of data-path syscalls, each a user
//! stack and the mechanism its syscall used, weighted by the bytes the CPU copied for them. Pure:
//! the kernel side aggregates, [`symbols`] names the frames, this module folds and ranks.
pub mod symbols;

use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;
use zctrace_common::{StackKey, SyscallStats};

use crate::accounting::Mechanism;

/// What a folded stack or flame graph is weighted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Weight {
    /// Bytes the CPU copied, by the copy model.
    #[default]
    Copied,
    /// Bytes the calls moved.
    Moved,
    /// Calls.
    Calls,
}

/// The frame a call site shows when the stack map could not take its stack.
pub const UNRECORDED: &str = "[stack not recorded]";

/// One call site: a user stack, root first, and the mechanism its syscalls used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Site {
    pub frames: Vec<String>,
    pub mechanism: String,
    pub calls: u64,
    pub bytes: u64,
    /// By the copy model: the kernel counts bytes per stack, not copies.
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

    fn weight(&self, weight: Weight) -> u64 {
        match weight {
            Weight::Copied => self.copied_bytes,
            Weight::Moved => self.bytes,
            Weight::Calls => self.calls,
        }
    }

    /// The stack as one folded line's frames: root first, then the mechanism as the leaf, so a
    /// flame graph shows which syscall each stack ended in.
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
pub fn flamegraph(lines: &[String], weight: Weight, mut out: impl Write) -> Result<()> {
    let count_name = match weight {
        Weight::Copied => "CPU-copied bytes (copy model)",
        Weight::Moved => "bytes moved",
        Weight::Calls => "calls",
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
    options.subtitle =
        Some("leaf frames in brackets: the syscall and what it moved bytes between".to_string());
    options.count_name = count_name.to_string();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .context("drawing the flame graph")
}

#[cfg(test)]
mod tests;
