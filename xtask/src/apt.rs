//! apt with a source list, lists and cache of its own, so that fetching what the tests need
//! (a source package, other releases' kernels) leaves the machine's apt setup as it is.
use std::{
    cmp::Ordering,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::apt_sources::{self, Source};

pub struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    /// An apt whose only sources are `stanzas` (deb822), its state under `dir`.
    pub fn new(dir: &Path, stanzas: &[String]) -> Result<PrivateApt> {
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("sources.list.d/zctrace.sources"), stanzas.join("\n"))?;
        std::fs::write(dir.join("sources.list"), "")?;
        let options = vec![
            format!("Dir::Etc::SourceList={}", dir.join("sources.list").display()),
            format!("Dir::Etc::SourceParts={}", dir.join("sources.list.d").display()),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            // As root into directories apt's own user cannot write: say so, rather than be warned.
            "APT::Sandbox::User=root".to_string(),
        ];
        Ok(PrivateApt { options })
    }

    pub fn get(&self, args: &[&str]) -> Command {
        self.command("apt-get", args)
    }

    pub fn cache(&self, args: &[&str]) -> Command {
        self.command("apt-cache", args)
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.args(["-o", option]);
        }
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    }
}

/// The apt sources this machine uses: one-line `.list` entries and deb822 `.sources` stanzas.
pub fn machine_sources() -> Vec<Source> {
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
    sources
}

/// This machine's Debian release, by its codename (`bookworm`).
pub fn codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")
}

/// Debian's version order, as dpkg decides it.
pub fn version_order(a: &str, b: &str) -> Ordering {
    let is = |relation: &str| {
        Command::new("dpkg")
            .args(["--compare-versions", a, relation, b])
            .status()
            .is_ok_and(|s| s.success())
    };
    if is("lt") {
        Ordering::Less
    } else if is("gt") {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}
