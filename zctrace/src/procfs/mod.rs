//! What `/proc` says about a process: whether the process a map key names is still alive, its
//! live name, its cgroup, and whether it is a kernel thread. Parsing is the procfs crate's, which
//! xtask's measurements use too.
use std::fs;

use procfs::process::Process;
use zctrace_common::ProcessKey;

/// `/proc/PID/stat` reports start time in USER_HZ ticks; Linux fixes USER_HZ at 100.
const NS_PER_TICK: u64 = 1_000_000_000 / 100;

/// The key's start time in the ticks `/proc` uses.
pub fn start_ticks(key: &ProcessKey) -> u64 {
    key.start_boottime_ns / NS_PER_TICK
}

fn stat(pid: u32) -> Option<procfs::process::Stat> {
    Process::new(pid as i32).ok()?.stat().ok()
}

/// `starttime` of `/proc/PID/stat`, in ticks.
pub fn read_start_ticks(pid: u32) -> Option<u64> {
    Some(stat(pid)?.starttime)
}

/// True while the process the key names (not a later one with the same PID) exists, zombies
/// included.
pub fn is_alive(key: &ProcessKey) -> bool {
    read_start_ticks(key.tgid) == Some(start_ticks(key))
}

/// `Some(true)` for a kernel thread, `None` when no such process exists.
pub fn is_kernel_thread(pid: u32) -> Option<bool> {
    const PF_KTHREAD: u32 = 0x0020_0000;
    Some(stat(pid)?.flags & PF_KTHREAD != 0)
}

/// Every live process's parent: tgid to the tgid of its parent.
pub fn parents() -> std::collections::HashMap<u32, u32> {
    procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|process| process.stat().ok())
        .map(|stat| (stat.pid as u32, stat.ppid as u32))
        .collect()
}

/// The name of a process that exited before zctrace could learn it.
pub const UNKNOWN_COMM: &str = "unknown";

pub fn comm(pid: u32) -> Option<String> {
    Some(stat(pid)?.comm)
}

/// The process's cgroup v2 path, or its first v1 path.
pub fn cgroup(pid: u32) -> Option<String> {
    let groups = Process::new(pid as i32).ok()?.cgroups().ok()?.0;
    let v2 = groups.iter().find(|g| g.hierarchy == 0);
    v2.or(groups.first()).map(|g| g.pathname.clone())
}

/// Where this process sees the cgroup v2 hierarchy mounted.
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    procfs::mounts()
        .ok()?
        .into_iter()
        .find(|m| m.fs_vfstype == "cgroup2")
        .map(|m| std::path::PathBuf::from(m.fs_file))
}

/// The cgroup v2 hierarchy at `mount`, or at `mount/unified` where systemd's hybrid layout puts
/// it under the v1 controllers.
pub fn cgroup2_at(mount: &std::path::Path) -> Option<std::path::PathBuf> {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    [mount.to_path_buf(), mount.join("unified")]
        .into_iter()
        .find(|dir| statfs(dir).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC))
}

/// Whether `root` is the top of its cgroup v2 hierarchy (the root cgroup's id is 1), rather than
/// a subtree, as a container's own cgroup mount is.
pub fn is_cgroup_hierarchy_root(root: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(root).is_ok_and(|m| m.ino() == 1)
}

/// cgroup v2 ids (directory inode numbers) to paths relative to `root`, which is how
/// `bpf_get_current_cgroup_id` names a cgroup when `root` is the hierarchy's top.
pub fn cgroup_paths(root: &std::path::Path) -> std::collections::HashMap<u64, String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut paths = std::collections::HashMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(meta) = fs::metadata(&dir) {
            let relative = dir
                .strip_prefix(root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_default();
            paths.insert(meta.ino(), relative);
        }
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        pending.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    paths
}

#[cfg(test)]
mod tests {
    #[test]
    fn our_own_cgroup_is_among_the_paths() {
        let ours = super::cgroup(std::process::id()).expect("own cgroup");
        let root = super::cgroup2_mount().expect("a cgroup2 mount");
        assert!(super::is_cgroup_hierarchy_root(&root), "{}", root.display());
        assert_eq!(super::cgroup2_at(&root).as_ref(), Some(&root));
        let above = root.parent().unwrap();
        let hybrid = root.ends_with("unified");
        assert_eq!(
            super::cgroup2_at(above).as_ref() == Some(&root),
            hybrid,
            "{}",
            above.display()
        );
        assert!(
            super::cgroup_paths(&root).values().any(|p| *p == ours),
            "{ours} not found"
        );
    }

    #[test]
    fn a_process_is_told_from_a_kernel_thread() {
        assert_eq!(super::is_kernel_thread(std::process::id()), Some(false));
        assert_eq!(super::is_kernel_thread(2), Some(true), "kthreadd");
        assert_eq!(super::is_kernel_thread(u32::MAX), None);
    }

    #[test]
    fn our_start_time_is_read() {
        let ticks = super::read_start_ticks(std::process::id()).expect("own stat");
        assert!(ticks > 0);
        assert!(super::comm(std::process::id()).is_some());
    }
}
