//! Privileged: load the real programs, run workloads with known byte counts in child processes,
//! and check what zctrace attributes to each child.
mod common;

use std::{fs, process::Command};

use common::*;
use zctrace::procfs;
use zctrace_common::{
    FdKind::{self, *},
    ProcessKey, TcpPath,
};

const SIZE: u64 = 64 * MIB;

fn path_bytes(
    f: &zctrace::accounting::ProcessFigures,
    syscall: &str,
    src: FdKind,
    dst: FdKind,
) -> (u64, u64) {
    let path = f
        .flow(syscall, src, dst)
        .unwrap_or_else(|| panic!("{syscall} {src:?}->{dst:?} missing in {:#?}", f.flows));
    (path.bytes, path.cpu_copy_bytes)
}

fn assert_receiver_copied_everything(tracer: &zctrace::probes::Tracer, receiver: &ProcessKey, size: u64) {
    let figures = figures_of(tracer, receiver);
    assert_eq!(
        figures.counters.recv_copy_bytes,
        size + HEADER_LEN,
        "receive copies = bytes received"
    );
    let (read, copied) = path_bytes(&figures, "recvfrom", Tcp, User);
    assert_eq!((read, copied), (size + HEADER_LEN, size + HEADER_LEN));
}

#[test]
fn sendfile_to_tcp_moves_every_byte_without_a_copy() {
    if !privileged("sendfile_to_tcp_moves_every_byte_without_a_copy") {
        return;
    }
    let tracer = load_tracer();
    let (f, report, receiver) = transfer(&tracer, "sendfile", &test_file(SIZE), 128 * 1024);
    assert_eq!(path_bytes(&f, "sendfile", Regular, Tcp), (SIZE, 0));
    assert_eq!(
        f.flow("sendfile", Regular, Tcp).unwrap().calls,
        report["data_syscalls"].as_u64().unwrap()
    );
    assert_eq!(
        path_bytes(&f, "sendto", User, Tcp),
        (HEADER_LEN, HEADER_LEN),
        "the header"
    );
    assert_eq!(f.cpu_copy_bytes(), HEADER_LEN, "only the header copies");
    assert_eq!(
        f.counters.tcp(TcpPath::Splice),
        SIZE,
        "TCP saw the payload as spliced pages"
    );
    assert_eq!(f.counters.tcp(TcpPath::Copy), HEADER_LEN);
    assert_eq!(f.counters.tcp(TcpPath::Unclassified), 0);
    assert_receiver_copied_everything(&tracer, &receiver, SIZE);
}

#[test]
fn read_write_relay_copies_twice() {
    if !privileged("read_write_relay_copies_twice") {
        return;
    }
    let tracer = load_tracer();
    let chunk = 64 * 1024;
    let (f, report, receiver) = transfer(&tracer, "read-write", &test_file(SIZE), chunk);
    assert_eq!(path_bytes(&f, "read", Regular, User), (SIZE, SIZE));
    assert_eq!(path_bytes(&f, "write", User, Tcp), (SIZE, SIZE));
    let calls = f.flow("read", Regular, User).unwrap().calls + f.flow("write", User, Tcp).unwrap().calls;
    assert_eq!(
        calls,
        report["data_syscalls"].as_u64().unwrap(),
        "the sender's own count"
    );
    assert_eq!(
        f.flow("read", Regular, User).unwrap().calls,
        SIZE / chunk + 1,
        "one read per chunk and one at EOF"
    );
    assert_eq!(f.cpu_copy_bytes(), 2 * SIZE + HEADER_LEN);
    assert_eq!(f.counters.tcp(TcpPath::Copy), SIZE + HEADER_LEN);
    assert_receiver_copied_everything(&tracer, &receiver, SIZE);
}

#[test]
fn mmap_write_copies_once() {
    if !privileged("mmap_write_copies_once") {
        return;
    }
    let tracer = load_tracer();
    let (f, _, receiver) = transfer(&tracer, "mmap-write", &test_file(SIZE), 128 * 1024);
    assert_eq!(path_bytes(&f, "write", User, Tcp), (SIZE, SIZE));
    assert!(
        f.flow("read", Regular, User).is_none(),
        "the mapping is read without read()"
    );
    assert_eq!(f.cpu_copy_bytes(), SIZE + HEADER_LEN);
    assert_receiver_copied_everything(&tracer, &receiver, SIZE);
}

#[test]
fn splice_vmsplice_and_tee_copy_nothing() {
    if !privileged("splice_vmsplice_and_tee_copy_nothing") {
        return;
    }
    let tracer = load_tracer();
    let file = test_file(SIZE);

    let (f, _, receiver) = transfer(&tracer, "splice", &file, 128 * 1024);
    assert_eq!(path_bytes(&f, "splice", Regular, Pipe), (SIZE, 0));
    assert_eq!(path_bytes(&f, "splice", Pipe, Tcp), (SIZE, 0));
    assert_eq!(f.cpu_copy_bytes(), HEADER_LEN);
    assert_eq!(f.counters.tcp(TcpPath::Splice), SIZE);
    assert_receiver_copied_everything(&tracer, &receiver, SIZE);

    let (f, _, receiver) = transfer(&tracer, "vmsplice", &file, 64 * 1024);
    assert_eq!(path_bytes(&f, "vmsplice", User, Pipe), (SIZE, 0));
    assert_eq!(path_bytes(&f, "splice", Pipe, Tcp), (SIZE, 0));
    assert_eq!(f.cpu_copy_bytes(), HEADER_LEN);
    assert_receiver_copied_everything(&tracer, &receiver, SIZE);

    let (f, _, receiver) = transfer(&tracer, "tee", &file, 64 * 1024);
    assert_eq!(path_bytes(&f, "tee", Pipe, Pipe), (SIZE, 0));
    assert_eq!(path_bytes(&f, "splice", Pipe, Tcp), (SIZE, 0));
    assert_eq!(
        path_bytes(&f, "splice", Pipe, Null),
        (SIZE, 0),
        "the tee'd copy drained to /dev/null"
    );
    assert_eq!(f.cpu_copy_bytes(), HEADER_LEN, "tee copies nothing");
    assert_receiver_copied_everything(&tracer, &receiver, SIZE);
}

#[test]
fn file_to_file_transfers_copy_once() {
    if !privileged("file_to_file_transfers_copy_once") {
        return;
    }
    let tracer = load_tracer();
    let file = test_file(SIZE);
    let out = scratch_path("copy-out");

    let (f, _) = send(
        &tracer,
        "splice",
        &file,
        &["--to-file", out.to_str().unwrap()],
        128 * 1024,
    );
    assert_eq!(path_bytes(&f, "splice", Regular, Pipe), (SIZE, 0));
    assert_eq!(path_bytes(&f, "splice", Pipe, Regular), (SIZE, SIZE));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&file).unwrap());

    let (f, _) = send(
        &tracer,
        "sendfile",
        &file,
        &["--to-file", out.to_str().unwrap()],
        128 * 1024,
    );
    assert_eq!(path_bytes(&f, "sendfile", Regular, Regular), (SIZE, SIZE));
    assert_eq!(fs::metadata(&out).unwrap().len(), SIZE);
}

#[test]
fn msg_zerocopy_over_loopback_is_zerocopy_at_send_and_copied_later() {
    if !privileged("msg_zerocopy_over_loopback_is_zerocopy_at_send_and_copied_later") {
        return;
    }
    let tracer = load_tracer();
    let (f, report, receiver) = transfer(&tracer, "zerocopy", &test_file(SIZE), 128 * 1024);
    let path = f
        .flows
        .iter()
        .find(|p| p.syscall == "sendto" && p.zerocopy_flag)
        .expect("zerocopy sendto path");
    assert_eq!(path.calls, report["data_syscalls"].as_u64().unwrap());
    assert_eq!((path.bytes, path.cpu_copy_bytes), (SIZE, 0));
    assert_eq!(
        f.counters.tcp(TcpPath::Zerocopy),
        SIZE,
        "tcp_sendmsg_locked took the zerocopy path"
    );
    assert_eq!(
        f.counters.zerocopy_deferred_copy_bytes, SIZE,
        "the loopback receiver copies every pinned page"
    );
    assert_eq!(f.cpu_copy_bytes(), SIZE + HEADER_LEN);
    let (completions, copied) = (
        report["zerocopy_completions"].as_u64().unwrap(),
        report["zerocopy_copied"].as_u64().unwrap(),
    );
    assert!(completions > 0);
    assert_eq!(
        copied, completions,
        "the kernel reported every loopback completion as copied"
    );
    assert_receiver_copied_everything(&tracer, &receiver, SIZE);
}

#[test]
fn context_switches_match_the_kernels_own_counts() {
    if !privileged("context_switches_match_the_kernels_own_counts") {
        return;
    }
    let tracer = load_tracer();
    let mut hog = Command::new(zctrace_bin())
        .args(["workload", "spin", "--spin-ms", "1500"])
        .spawn()
        .expect("hog");
    let started = std::time::Instant::now();
    let workload = Workload::run(&["sleep-spin", "--sleeps", "200", "--spin-ms", "700"]);
    let pid = workload.traced.key.tgid;
    let (mut voluntary, mut involuntary) = (0u64, 0u64);
    let (mut cpu_ns, mut run_delay_ns) = (0u64, 0u64);
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        // The scheduler's own: CPU time, and time spent runnable but waiting for a CPU.
        let schedstat = fs::read_to_string(task.join("schedstat")).unwrap();
        let mut figures = schedstat.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        cpu_ns += figures.next().unwrap();
        run_delay_ns += figures.next().unwrap();
        let status = fs::read_to_string(task.join("status")).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        voluntary += field("voluntary_ctxt_switches:");
        involuntary += field("nonvoluntary_ctxt_switches:");
    }
    let f = figures_of(&tracer, &workload.traced.key);
    let lived_at_most = started.elapsed().as_nanos() as u64;
    let key = workload.finish();
    let _ = hog.wait();
    // A sleep whose timer fires before the task gets to schedule() does not switch: under TCG on
    // a busy host a few do, so the workload only has to have switched for most of them.
    assert!(
        voluntary >= 100,
        "200 sleeps are mostly voluntary switches, /proc says {voluntary}"
    );
    assert!(involuntary > 0, "spinning beside a pinned hog must be preempted");
    let within = |ours: u64, kernel: u64| ours.abs_diff(kernel) as f64 <= (kernel as f64 * 0.02).max(1.0);
    assert!(
        within(f.counters.voluntary_switches, voluntary),
        "voluntary: zctrace {} vs /proc {voluntary}",
        f.counters.voluntary_switches
    );
    assert!(
        within(f.counters.involuntary_switches, involuntary),
        "involuntary: zctrace {} vs /proc {involuntary}",
        f.counters.involuntary_switches
    );
    let offcpu = f.counters.offcpu_ns;
    assert!(
        offcpu >= 200 * 1_000_000,
        "200 sleeps of 1 ms are at least 0.2 s off CPU, got {offcpu} ns"
    );
    // Waiting beside the hog is off CPU too, all of it before the last switch-out zctrace has
    // seen (the workload then sleeps); only what came before its first switch is not counted.
    assert!(
        offcpu + 20_000_000 >= run_delay_ns,
        "off CPU {offcpu} ns, less than the {run_delay_ns} ns the scheduler says it waited"
    );
    // The scheduler's clock may run apart from the test's by the rate NTP slews it at.
    assert!(
        offcpu as f64 <= (lived_at_most - cpu_ns) as f64 * 1.01,
        "off CPU {offcpu} ns, more than the {lived_at_most} ns it lived less its {cpu_ns} ns on CPU"
    );
    assert_eq!(key.tgid, pid);
}

#[test]
fn syscall_counts_are_exact() {
    if !privileged("syscall_counts_are_exact") {
        return;
    }
    let tracer = load_tracer();
    let workload = Workload::run(&["getppid", "12345"]);
    let f = figures_of(&tracer, &workload.traced.key);
    workload.finish();
    assert_eq!(f.syscalls.get("getppid"), Some(&12345));
    assert!(f.counters.syscalls_total > 12345);
    assert_eq!(f.counters.mode_switches(), 2 * f.counters.syscalls_total);
}

#[test]
fn descriptor_kinds_hold_once_the_descriptor_table_grows() {
    if !privileged("descriptor_kinds_hold_once_the_descriptor_table_grows") {
        return;
    }
    let tracer = load_tracer();
    let rounds = 1000;
    let workload = Workload::run(&["grown-fd-table", &rounds.to_string()]);
    let f = figures_of(&tracer, &workload.traced.key);
    workload.finish();
    // Before the table grows, after it (a low descriptor), and past its embedded slots; and the
    // workload's "ready" line, into its stdout pipe.
    let ready = "ready\n".len() as u64;
    assert_eq!(
        path_bytes(&f, "write", User, Pipe),
        (3 * rounds + ready, 3 * rounds + ready)
    );
    assert_eq!(f.flow("write", User, Pipe).unwrap().calls, 3 * rounds + 1);
    assert_eq!(path_bytes(&f, "read", Pipe, User), (3 * rounds, 3 * rounds));
    assert_eq!(path_bytes(&f, "write", User, Unix), (rounds, rounds));
    assert_eq!(path_bytes(&f, "read", Unix, User), (rounds, rounds));
}

#[test]
fn every_kind_lands_right_at_a_reused_descriptor_number() {
    if !privileged("every_kind_lands_right_at_a_reused_descriptor_number") {
        return;
    }
    use zctrace::check::workload::{REUSED_FD_NUMBERS, REUSED_FD_WRITES};
    use zctrace_common::SocketKindCache::{Evictions, Misses};
    // A socket kind cache of 64 slots: sockets share slots all the time, and a slot often holds
    // a closed socket whose inode sits where a new one's does.
    let tracer = zctrace::probes::Tracer::load(&zctrace::probes::ProbeOptions {
        map_capacity: vec![("SOCKET_KINDS", 64)],
        ..Default::default()
    })
    .unwrap();
    let rounds = 1000;
    let workload = Workload::run(&["reused-fds", &rounds.to_string()]);
    let f = figures_of(&tracer, &workload.traced.key);
    workload.finish();
    let opened = rounds * REUSED_FD_NUMBERS.len() as u64;
    // The workload's "ready" line is one more write into a pipe, its stdout.
    let ready = "ready\n".len() as u64;
    for (kind, len) in REUSED_FD_WRITES {
        let (extra_bytes, extra_calls) = if kind == Pipe { (ready, 1) } else { (0, 0) };
        let flow = f
            .flow("write", User, kind)
            .unwrap_or_else(|| panic!("no write into {kind:?} in {:#?}", f.flows));
        assert_eq!(
            (flow.bytes, flow.calls),
            (opened * len as u64 + extra_bytes, opened + extra_calls),
            "writes into {kind:?}"
        );
    }
    let writes = f.flows.iter().filter(|flow| flow.syscall == "write").count();
    assert_eq!(
        writes,
        REUSED_FD_WRITES.len(),
        "no write under another kind: {:#?}",
        f.flows
    );
    let cache = tracer.socket_kind_cache().unwrap();
    assert!(
        cache[Misses as usize] >= 3 * opened && cache[Evictions as usize] > 0,
        "each new Unix, TCP and UDP socket is read at its first call, evicting another: {cache:?}"
    );
}

#[test]
fn a_recycled_pid_starts_from_zero_and_exited_processes_are_freed() {
    if !privileged("a_recycled_pid_starts_from_zero_and_exited_processes_are_freed") {
        return;
    }
    let mut tracer = load_tracer();
    let first = Workload::run(&["getppid", "500"]).finish();
    let (second, attempts) = (0..50)
        .find_map(|attempt| {
            fs::write("/proc/sys/kernel/ns_last_pid", (first.tgid - 1).to_string()).expect("ns_last_pid");
            let key = Workload::run(&["getppid", "7"]).finish();
            (key.tgid == first.tgid).then_some((key, attempt))
        })
        .expect("could not get the same PID back in 50 attempts");
    // Parallel tests may also have had a process under this PID: only ours count.
    let ours = |key: &ProcessKey| {
        key.tgid == first.tgid
            && [&first, &second]
                .iter()
                .any(|k| procfs::start_ticks(k) == procfs::start_ticks(key))
    };
    let snapshot = tracer.snapshot().unwrap();
    let mut same_pid: Vec<_> = zctrace::accounting::per_process(&snapshot, false)
        .into_iter()
        .filter(|f| ours(&f.key))
        .collect();
    same_pid.sort_by_key(|f| f.key.start_boottime_ns);
    let calls: Vec<_> = same_pid
        .iter()
        .map(|f| f.syscalls.get("getppid").copied())
        .collect();
    assert_eq!(
        calls,
        [Some(500), Some(7)],
        "two processes under one PID, after {attempts} retries"
    );
    assert!(same_pid[0].key.start_boottime_ns < same_pid[1].key.start_boottime_ns);

    let snapshot = tracer.snapshot().unwrap();
    let gone = tracer.forget_exited(&snapshot, false).unwrap();
    let recycled: Vec<_> = gone.iter().filter(|k| ours(k)).collect();
    assert_eq!(
        recycled.len(),
        2,
        "the kernel marked both exits, without asking /proc"
    );
    let after = tracer.snapshot().unwrap();
    assert!(
        after.syscalls.iter().all(|(k, _)| !ours(&k.process)),
        "their entries are freed"
    );
}

#[test]
fn a_full_map_counts_its_drops() {
    if !privileged("a_full_map_counts_its_drops") {
        return;
    }
    let tracer = zctrace::probes::Tracer::load(&zctrace::probes::ProbeOptions {
        map_capacity: vec![("SYSCALLS", 8), ("PROCESSES", 4)],
        ..Default::default()
    })
    .unwrap();
    for _ in 0..3 {
        Workload::run(&["getppid", "10"]).finish();
    }
    let snapshot = tracer.snapshot().unwrap();
    assert!(
        snapshot.update_errors(zctrace_common::MapSlot::Syscalls) > 0,
        "SYSCALLS drops counted"
    );
    assert!(
        snapshot.update_errors(zctrace_common::MapSlot::Processes) > 0,
        "PROCESSES drops counted"
    );
    let usage = tracer.map_usage(&snapshot).unwrap();
    let syscalls = usage.iter().find(|u| u.map == "SYSCALLS").unwrap();
    assert_eq!((syscalls.entries, syscalls.capacity), (8, 8));
}

#[test]
fn every_exit_is_marked_and_leaves_no_per_thread_entry() {
    if !privileged("every_exit_is_marked_and_leaves_no_per_thread_entry") {
        return;
    }
    const PROCESSES: usize = 200;
    let mut tracer = load_tracer();
    let thread_entries = |tracer: &zctrace::probes::Tracer| {
        let snapshot = tracer.snapshot().unwrap();
        let usage = tracer.map_usage(&snapshot).unwrap();
        usage.iter().find(|m| m.map == "THREADS").unwrap().entries
    };
    let before = thread_entries(&tracer);
    let keys: Vec<ProcessKey> = (0..PROCESSES)
        .map(|_| Traced::spawn(&mut Command::new("/bin/true")).wait_ok())
        .collect();
    let snapshot = tracer.snapshot().unwrap();
    let gone = tracer.forget_exited(&snapshot, false).unwrap();
    let unmarked: Vec<_> = keys
        .iter()
        .filter(|key| !gone.iter().any(|g| same_process(g, key)))
        .collect();
    assert!(
        unmarked.is_empty(),
        "the kernel marked every exit, even of processes that never switched out: {} unmarked",
        unmarked.len()
    );
    let after = tracer.snapshot().unwrap();
    let left: Vec<_> = after
        .processes
        .iter()
        .map(|(key, _)| *key)
        .chain(after.syscalls.iter().map(|(key, _)| key.process))
        .filter(|left| keys.iter().any(|k| same_process(k, left)))
        .collect();
    assert!(
        left.is_empty(),
        "folded processes leave no entries: {} left",
        left.len()
    );
    let grown = thread_entries(&tracer).saturating_sub(before);
    assert!(
        grown < PROCESSES as u64 / 2,
        "dead threads keep no entry: {grown} more after {PROCESSES} exits"
    );
}
