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

pub fn comm(pid: u32) -> Option<String> {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
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
