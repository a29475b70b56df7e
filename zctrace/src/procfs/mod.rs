//! What `/proc` says about a process: whether the process a map key names is still alive, and
//! its live name.
use std::fs;

use zctrace_common::ProcessKey;

/// `/proc/PID/stat` reports start time in USER_HZ ticks; Linux fixes USER_HZ at 100.
const NS_PER_TICK: u64 = 1_000_000_000 / 100;

/// Field 22 (`starttime`) of a `/proc/PID/stat` line. `comm` may contain spaces and parentheses,
/// so fields are counted after the last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The key's start time in the ticks `/proc` uses.
pub fn start_ticks(key: &ProcessKey) -> u64 {
    key.start_boottime_ns / NS_PER_TICK
}

pub fn read_start_ticks(pid: u32) -> Option<u64> {
    parse_start_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// True while the process the key names (not a later one with the same PID) exists, zombies
/// included.
pub fn is_alive(key: &ProcessKey) -> bool {
    read_start_ticks(key.tgid) == Some(start_ticks(key))
}

/// The name of a process that exited before zctrace could learn it.
pub const UNKNOWN_COMM: &str = "unknown";

pub fn comm(pid: u32) -> Option<String> {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end_matches('\n').to_string())
}

/// The cgroup v2 path in a `/proc/PID/cgroup` file (the `0::` line), or the first v1 path.
pub fn parse_cgroup(text: &str) -> Option<String> {
    let path_of = |line: &str| line.splitn(3, ':').nth(2).map(str::to_string);
    text.lines()
        .find(|l| l.starts_with("0::"))
        .and_then(path_of)
        .or_else(|| text.lines().next().and_then(path_of))
}

pub fn cgroup(pid: u32) -> Option<String> {
    parse_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// Where the cgroup v2 hierarchy is mounted, from a `/proc/mounts` text.
pub fn parse_cgroup2_mount(mounts: &str) -> Option<std::path::PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, mount_point, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| mount_point.into())
    })
}

/// cgroup v2 ids (directory inode numbers) to paths relative to the hierarchy's root, which is how
/// `bpf_get_current_cgroup_id` names a cgroup.
pub fn cgroup_paths() -> std::collections::HashMap<u64, String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut paths = std::collections::HashMap::new();
    let Some(root) = fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|m| parse_cgroup2_mount(&m))
    else {
        return paths;
    };
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        if let Ok(meta) = fs::metadata(&dir) {
            let relative = dir
                .strip_prefix(&root)
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
    fn cgroup2_mount_is_found_among_v1_mounts() {
        let mounts =
            "cgroup /sys/fs/cgroup/memory cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            super::parse_cgroup2_mount(mounts),
            Some("/sys/fs/cgroup/unified".into())
        );
        assert_eq!(super::parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn our_own_cgroup_is_among_the_paths() {
        let ours = super::cgroup(std::process::id()).expect("own cgroup");
        assert!(
            super::cgroup_paths().values().any(|p| *p == ours),
            "{ours} not found"
        );
    }

    #[test]
    fn cgroup_v2_path_is_preferred() {
        assert_eq!(
            super::parse_cgroup("0::/kubepods/pod1/abc\n").as_deref(),
            Some("/kubepods/pod1/abc")
        );
        assert_eq!(
            super::parse_cgroup("12:cpu,cpuacct:/docker/x\n0::/system.slice/nginx.service\n").as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(
            super::parse_cgroup("3:memory:/legacy\n").as_deref(),
            Some("/legacy")
        );
        assert_eq!(super::parse_cgroup(""), None);
    }

    use super::*;

    #[test]
    fn start_ticks_are_found_after_a_hostile_comm() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(98765));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn key_start_converts_to_proc_ticks() {
        let key = ProcessKey {
            tgid: 1,
            reserved: 0,
            start_boottime_ns: 987_654_321_000,
        };
        assert_eq!(start_ticks(&key), 98_765);
    }

    #[test]
    fn this_process_is_alive_and_a_different_start_is_not() {
        let pid = std::process::id();
        let ticks = read_start_ticks(pid).expect("own stat");
        let me = ProcessKey {
            tgid: pid,
            reserved: 0,
            start_boottime_ns: ticks * NS_PER_TICK + 5,
        };
        assert!(is_alive(&me));
        let recycled = ProcessKey {
            start_boottime_ns: (ticks + 1) * NS_PER_TICK,
            ..me
        };
        assert!(!is_alive(&recycled));
        assert!(comm(pid).is_some());
    }
}
