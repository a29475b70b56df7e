//! The cgroup ids the kernel reports, named by their paths in the cgroup v2 hierarchy.
use std::{collections::HashMap, path::PathBuf};

use crate::procfs;

/// Names cgroup ids from one view of the hierarchy: the whole of it, or nothing. A subtree (what
/// a pod sees of its own cgroup namespace) would name other processes' cgroups wrongly or not at
/// all, so it names none.
pub struct CgroupNames {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
}

impl CgroupNames {
    /// Reads the hierarchy at `root`, or where this process sees cgroup2 mounted.
    pub fn new(root: Option<PathBuf>) -> CgroupNames {
        let root = root.or_else(procfs::cgroup2_mount);
        let root = match root {
            Some(root) if procfs::is_cgroup_hierarchy_root(&root) => Some(root),
            Some(root) => {
                tracing::warn!(
                    "{} is not the top of the cgroup v2 hierarchy (a cgroup namespace's view): cgroup and workload labels are left out; mount the host's /sys/fs/cgroup read-only and name it with --cgroup-root",
                    root.display()
                );
                None
            }
            None => {
                tracing::warn!("no cgroup v2 hierarchy is mounted: cgroup and workload labels are left out");
                None
            }
        };
        CgroupNames {
            root,
            paths: HashMap::new(),
        }
    }

    /// Whether every cgroup can be named (`zctrace_cgroup_hierarchy_visible`).
    pub fn complete(&self) -> bool {
        self.root.is_some()
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
