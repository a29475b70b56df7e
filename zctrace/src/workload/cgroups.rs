//! The cgroup ids the kernel reports, named by their paths in the cgroup v2 hierarchy.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::procfs;

/// The top of the cgroup v2 hierarchy mounted at `mount` (or under it, on a hybrid host).
fn whole_hierarchy(mount: &Path) -> Result<PathBuf> {
    let Some(hierarchy) = procfs::cgroup2_at(mount) else {
        bail!("{}: no cgroup v2 hierarchy is mounted there", mount.display());
    };
    if !procfs::is_cgroup_hierarchy_root(&hierarchy) {
        bail!(
            "{} is a subtree of the cgroup v2 hierarchy (a cgroup namespace's view), not its top: \
             other processes' cgroups cannot be named from it; mount the host's /sys/fs/cgroup \
             read-only (the DaemonSet does) and name it with --cgroup-root",
            hierarchy.display()
        );
    }
    Ok(hierarchy)
}

/// Names cgroup ids from one view of the hierarchy: the whole of it, or nothing. A subtree (what
/// a pod sees of its own cgroup namespace) would name other processes' cgroups wrongly or not at
/// all, so it names none.
pub struct CgroupNames {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
}

impl CgroupNames {
    /// Reads the hierarchy at `root`, which must be its top, or where this process sees cgroup2
    /// mounted. There a view that is not whole leaves labels out, with a warning when `labelling`.
    pub fn new(root: Option<PathBuf>, labelling: bool) -> Result<CgroupNames> {
        let root = match root {
            Some(asked) => Some(whole_hierarchy(&asked).context("--cgroup-root")?),
            None => {
                let found = procfs::cgroup2_mount()
                    .context("no cgroup v2 hierarchy is mounted")
                    .and_then(|mount| whole_hierarchy(&mount));
                if let (Err(error), true) = (&found, labelling) {
                    tracing::warn!("{error:#}; cgroup and workload labels are left out");
                }
                found.ok()
            }
        };
        Ok(CgroupNames {
            root,
            paths: HashMap::new(),
        })
    }

    /// Whether every cgroup can be named (`zctrace_cgroup_hierarchy_visible`).
    pub fn complete(&self) -> bool {
        self.root.is_some()
    }

    /// Every cgroup's path, read afresh; none where the hierarchy is not whole.
    pub fn all_paths(&mut self) -> impl Iterator<Item = &str> {
        if let Some(root) = &self.root {
            self.paths = procfs::cgroup_paths(root);
        }
        self.paths.values().map(String::as_str)
    }

    /// The path of cgroup `id`, rescanning the hierarchy when the id is new. A cgroup removed
    /// before it was seen is remembered as unnamed rather than rescanned at every scrape.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        let root = self.root.as_ref()?;
        if id != 0 && !self.paths.contains_key(&id) {
            self.paths = procfs::cgroup_paths(root);
        }
        let path = self.paths.entry(id).or_default();
        (!path.is_empty()).then_some(path.as_str())
    }
}
