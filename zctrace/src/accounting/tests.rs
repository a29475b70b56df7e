use zctrace_common::{nr, CopyRoutine, Variant};

use super::*;

const SENDER: ProcessKey = ProcessKey {
    tgid: 42,
    reserved: 0,
    start_boottime_ns: 7_000_000_000,
};
const RECYCLED: ProcessKey = ProcessKey {
    tgid: 42,
    reserved: 0,
    start_boottime_ns: 9_000_000_000,
};

fn syscall(
    process: ProcessKey,
    nr: u16,
    src: FdKind,
    dst: FdKind,
    calls: u64,
    bytes: u64,
) -> (SyscallKey, SyscallStats) {
    let key = SyscallKey {
        process,
        nr,
        src: src as u8,
        dst: dst as u8,
        ..SyscallKey::default()
    };
    (
        key,
        SyscallStats {
            calls,
            bytes,
            ..SyscallStats::default()
        },
    )
}

fn comm(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

/// What one process delivers, from its syscall flows alone.
fn delivered(flows: &[(u16, FdKind, FdKind, u64)]) -> u64 {
    let snapshot = RawSnapshot {
        syscalls: flows
            .iter()
            .map(|&(nr, src, dst, bytes)| syscall(SENDER, nr, src, dst, 1, bytes))
            .collect(),
        processes: vec![(SENDER, ProcessStats::default())],
        ..Default::default()
    };
    per_process(&snapshot, false)[0].delivered_bytes()
}

#[test]
fn a_pipe_a_process_fills_and_drains_itself_delivers_nothing_of_its_own() {
    let n = 1 << 20;
    let (file, pipe, tcp, user) = (FdKind::Regular, FdKind::Pipe, FdKind::Tcp, FdKind::User);
    // A splice pipeline: file into a pipe, the pipe into TCP.
    assert_eq!(
        delivered(&[(nr::SPLICE, file, pipe, n), (nr::SPLICE, pipe, tcp, n)]),
        n
    );
    // vmsplice into a pipe, then splice out: the same.
    assert_eq!(
        delivered(&[(nr::VMSPLICE, user, pipe, n), (nr::SPLICE, pipe, tcp, n)]),
        n
    );
    // A writer into a pipe another process drains, and a filter between two pipes, deliver all.
    assert_eq!(delivered(&[(nr::WRITE, user, pipe, n)]), n);
    assert_eq!(delivered(&[(nr::SPLICE, pipe, pipe, n)]), n);
    // Mixed: sends from memory beside a pipeline count once each.
    let mixed = [
        (nr::SPLICE, file, pipe, n),
        (nr::SPLICE, pipe, tcp, n),
        (nr::WRITE, user, tcp, n),
    ];
    assert_eq!(delivered(&mixed), 2 * n);
}

#[test]
fn read_write_relay_copies_every_delivered_byte_twice() {
    let size = 64 << 20;
    let snapshot = RawSnapshot {
        syscalls: vec![
            syscall(SENDER, nr::READ, FdKind::Regular, FdKind::User, 1025, size),
            syscall(SENDER, nr::WRITE, FdKind::User, FdKind::Tcp, 1024, size),
            syscall(SENDER, 110, FdKind::None, FdKind::None, 5, 0),
        ],
        processes: vec![(
            SENDER,
            ProcessStats {
                comm: comm("relay"),
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    let figures = per_process(&snapshot, false);
    assert_eq!(figures.len(), 1);
    let relay = &figures[0];
    assert_eq!(relay.comm, "relay");
    assert_eq!(relay.bytes(), 2 * size);
    assert_eq!(relay.delivered_bytes(), size);
    assert_eq!(relay.cpu_copy_bytes(), 2 * size);
    assert_eq!(relay.copies_per_byte(), Some(2.0));
    assert_eq!(relay.counters.syscalls_total, 1025 + 1024 + 5);
    assert_eq!(relay.counters.mode_switches(), 2 * (1025 + 1024 + 5));
    assert_eq!(relay.syscalls.get("getppid"), Some(&5));
    assert_eq!(relay.flows.len(), 2, "getppid is not a data path");
}

#[test]
fn sendfile_to_tcp_copies_nothing() {
    let snapshot = RawSnapshot {
        syscalls: vec![syscall(
            SENDER,
            nr::SENDFILE,
            FdKind::Regular,
            FdKind::Tcp,
            512,
            1 << 26,
        )],
        ..Default::default()
    };
    let sender = &per_process(&snapshot, false)[0];
    let path = sender
        .flow("sendfile", FdKind::Regular, FdKind::Tcp)
        .expect("sendfile path");
    assert_eq!((path.bytes, path.cpu_copy_bytes), (1 << 26, 0));
    assert_eq!(sender.copies_per_byte(), Some(0.0));
}

#[test]
fn zerocopy_deferred_copies_count_toward_the_model_total() {
    let (mut key, stats) = syscall(SENDER, nr::SENDMSG, FdKind::User, FdKind::Tcp, 10, 1000);
    key.variant = Variant::Zerocopy as u32;
    let mut process = ProcessStats::default();
    process.tcp_send_bytes[TcpPath::Zerocopy as usize] = 1000;
    process.tcp_zerocopy_local_bytes = 1000;
    let snapshot = RawSnapshot {
        syscalls: vec![(key, stats)],
        processes: vec![(SENDER, process)],
        ..Default::default()
    };
    let sender = &per_process(&snapshot, false)[0];
    assert_eq!(sender.flows[0].cpu_copy_bytes, 0, "no copy at send time");
    assert!(sender.flows[0].zerocopy_flag);
    assert_eq!(sender.counters.tcp(TcpPath::Zerocopy), 1000);
    assert_eq!(sender.cpu_copy_bytes(), 1000, "the loopback receiver's copy");
}

#[test]
fn observed_copies_stand_beside_the_model_by_routine_only_when_traced() {
    let mut process = ProcessStats {
        recv_copy_bytes: 5,
        ..Default::default()
    };
    process.observed_copy_bytes[CopyRoutine::FilemapRead as usize] = 70;
    process.tcp_send_bytes[TcpPath::Copy as usize] = 100;
    process.tcp_send_bytes[TcpPath::Splice as usize] = 900;
    let snapshot = RawSnapshot {
        syscalls: vec![syscall(SENDER, nr::WRITE, FdKind::User, FdKind::Tcp, 1, 100)],
        processes: vec![(SENDER, process)],
        ..Default::default()
    };
    let traced = &per_process(&snapshot, true)[0];
    assert_eq!(traced.cpu_copy_bytes(), 100, "the headline stays the model's");
    assert_eq!(
        traced.observed_copy_bytes(),
        Some(70 + 100 + 5),
        "spliced bytes are no copies"
    );
    let by_routine = traced.observed_copies().unwrap();
    let routine = |name| by_routine[OBSERVED_ROUTINES.iter().position(|r| *r == name).unwrap()];
    assert_eq!(
        (
            routine("filemap_read"),
            routine("tcp_sendmsg_locked"),
            routine("skb_copy_datagram_iter")
        ),
        (70, 100, 5)
    );
    assert_eq!(per_process(&snapshot, false)[0].observed_copy_bytes(), None);
    assert_eq!(
        traced.since(&ProcessFigures::default()).observed_copy_bytes(),
        Some(175),
        "a process unseen before copied everything since"
    );
}

#[test]
fn a_recycled_pid_is_a_different_process() {
    let snapshot = RawSnapshot {
        syscalls: vec![
            syscall(SENDER, nr::WRITE, FdKind::User, FdKind::Pipe, 3, 300),
            syscall(RECYCLED, nr::WRITE, FdKind::User, FdKind::Pipe, 1, 5),
        ],
        ..Default::default()
    };
    let figures = per_process(&snapshot, false);
    assert_eq!(figures.len(), 2);
    assert_eq!(figures[1].key, RECYCLED);
    assert_eq!(figures[1].bytes(), 5);
}

#[test]
fn nothing_delivered_has_no_copies_per_byte() {
    let snapshot = RawSnapshot {
        syscalls: vec![syscall(SENDER, nr::READ, FdKind::Tcp, FdKind::User, 1, 10)],
        ..Default::default()
    };
    assert_eq!(per_process(&snapshot, false)[0].copies_per_byte(), None);
    assert_eq!(ratio(1, 0), None);
}

#[test]
fn syscall_names_are_found() {
    assert_eq!(syscall_name(nr::SENDFILE), "sendfile");
    assert_eq!(syscall_name(110), "getppid");
    assert_eq!(syscall_name(9999), "unknown");
}

#[test]
fn comm_stops_at_nul_and_survives_bad_utf8() {
    assert_eq!(comm_from_bytes(b"nginx\0\0\0"), "nginx");
    assert_eq!(comm_from_bytes(&[0x66, 0xff, 0]), "f\u{fffd}");
}

#[test]
fn since_keeps_only_what_happened_in_between() {
    let before = RawSnapshot {
        syscalls: vec![
            syscall(SENDER, nr::READ, FdKind::Regular, FdKind::User, 3, 4000),
            syscall(SENDER, 110, FdKind::None, FdKind::None, 2, 0),
        ],
        processes: vec![(
            SENDER,
            ProcessStats {
                voluntary_switches: 5,
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    let after = RawSnapshot {
        syscalls: vec![
            syscall(SENDER, nr::READ, FdKind::Regular, FdKind::User, 3, 4000),
            syscall(SENDER, nr::SENDFILE, FdKind::Regular, FdKind::Tcp, 8, 1 << 20),
            syscall(SENDER, 110, FdKind::None, FdKind::None, 4, 0),
        ],
        processes: vec![(
            SENDER,
            ProcessStats {
                voluntary_switches: 9,
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    let delta = per_process(&after, false)[0].since(&per_process(&before, false)[0]);
    assert_eq!(delta.flows.len(), 1, "the idle read path is left out");
    assert_eq!(delta.flows[0].syscall, "sendfile");
    assert_eq!(delta.bytes(), 1 << 20);
    assert_eq!(delta.syscalls.get("getppid"), Some(&2));
    assert_eq!(delta.counters.syscalls_total, 10);
    assert_eq!(delta.counters.voluntary_switches, 4);
}

#[test]
fn tcp_sends_without_syscalls_count_as_delivered_and_their_copies_as_copied() {
    let mut process = ProcessStats::default();
    process.tcp_send_bytes[TcpPath::Splice as usize] = 1000;
    process.tcp_send_bytes[TcpPath::Copy as usize] = 524;
    let snapshot = RawSnapshot {
        syscalls: vec![syscall(SENDER, nr::SENDTO, FdKind::User, FdKind::Tcp, 1, 24)],
        processes: vec![(SENDER, process)],
        ..Default::default()
    };
    let f = &per_process(&snapshot, false)[0];
    assert_eq!(
        f.tcp_without_syscalls(),
        (1500, 500),
        "io_uring moved 1500 bytes, 500 of them copied"
    );
    assert_eq!(f.delivered_bytes(), 1524);
    assert_eq!(f.cpu_copy_bytes(), 524);
}

#[test]
fn live_threads_add_to_their_process_and_a_process_of_threads_alone_is_kept() {
    let thread = |process, voluntary, offcpu_ns| ThreadSwitches {
        process,
        voluntary,
        involuntary: 1,
        offcpu_ns,
        ..ThreadSwitches::default()
    };
    let folded = ProcessStats {
        comm: comm("server"),
        voluntary_switches: 10,
        offcpu_ns: 1_000,
        ..Default::default()
    };
    let snapshot = RawSnapshot::read(
        vec![],
        vec![(SENDER, folded)],
        vec![
            (100, thread(SENDER, 5, 200)),
            (101, thread(SENDER, 7, 300)),
            (200, thread(RECYCLED, 3, 50)),
        ],
        [0; MAP_SLOTS as usize],
    );
    let stats = |key| snapshot.processes.iter().find(|(k, _)| *k == key).unwrap().1;
    let sender = stats(SENDER);
    assert_eq!(
        (
            sender.voluntary_switches,
            sender.involuntary_switches,
            sender.offcpu_ns
        ),
        (22, 2, 1_500)
    );
    assert_eq!(sender.comm, comm("server"));
    let recycled = stats(RECYCLED);
    assert_eq!((recycled.voluntary_switches, recycled.offcpu_ns), (3, 50));
    assert_eq!(
        snapshot.threads.len(),
        3,
        "the threads read are kept for their sweep"
    );
}

#[test]
fn switch_figures_never_go_down_between_reads_and_gone_processes_are_forgotten() {
    let stats = |voluntary, offcpu_ns| ProcessStats {
        voluntary_switches: voluntary,
        offcpu_ns,
        ..Default::default()
    };
    let mut floor = SwitchFloor::default();
    let mut first = vec![(SENDER, stats(30, 5_000))];
    floor.hold(&mut first);
    // A thread exited between the two map reads: its counts are in neither.
    let mut dipped = vec![(SENDER, stats(20, 4_000)), (RECYCLED, stats(1, 10))];
    floor.hold(&mut dipped);
    assert_eq!(
        (dipped[0].1.voluntary_switches, dipped[0].1.offcpu_ns),
        (30, 5_000)
    );
    assert_eq!(dipped[1].1.voluntary_switches, 1);
    let mut folded = vec![(SENDER, stats(35, 6_000))];
    floor.hold(&mut folded);
    assert_eq!(
        (folded[0].1.voluntary_switches, folded[0].1.offcpu_ns),
        (35, 6_000)
    );
    let mut recycled_again = vec![(RECYCLED, stats(0, 0))];
    floor.hold(&mut recycled_again);
    assert_eq!(
        recycled_again[0].1.voluntary_switches, 0,
        "RECYCLED was absent from the last read, so it was forgotten"
    );
}

#[test]
fn a_process_trees_figures_add_up_flow_by_flow() {
    const CHILD: ProcessKey = ProcessKey {
        tgid: 43,
        reserved: 0,
        start_boottime_ns: 8_000_000_000,
    };
    let snapshot = RawSnapshot {
        syscalls: vec![
            syscall(SENDER, nr::WRITE, FdKind::User, FdKind::Tcp, 10, 1000),
            syscall(CHILD, nr::WRITE, FdKind::User, FdKind::Tcp, 5, 500),
            syscall(CHILD, nr::READ, FdKind::Tcp, FdKind::User, 7, 700),
        ],
        processes: vec![(
            CHILD,
            ProcessStats {
                parent_tgid: SENDER.tgid,
                voluntary_switches: 3,
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    let figures = per_process(&snapshot, false);
    let child = figures.iter().find(|f| f.key == CHILD).unwrap();
    assert_eq!(child.parent_tgid, SENDER.tgid);
    let mut total = figures.iter().find(|f| f.key == SENDER).unwrap().clone();
    total.add(child);
    let write = total.flow("write", FdKind::User, FdKind::Tcp).unwrap();
    assert_eq!((write.calls, write.bytes, write.cpu_copy_bytes), (15, 1500, 1500));
    assert_eq!(total.bytes(), 1500 + 700);
    assert_eq!(total.syscalls.get("write"), Some(&15));
    assert_eq!(total.counters.syscalls_total, 22);
    assert_eq!(total.counters.voluntary_switches, 3);
    assert_eq!(total.key, SENDER, "the total keeps the root's identity");
}
