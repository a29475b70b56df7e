use zctrace_common::{
    nr, Copier, CopyStackCounts, CopyStackKey, FdKind, StackKey, SyscallStats, Variant, NO_STACK,
};

use super::*;

fn key(nr: u16, src: FdKind, dst: FdKind, variant: Variant) -> StackKey {
    StackKey {
        user_stack: 7,
        tgid: 42,
        nr,
        src: src as u8,
        dst: dst as u8,
        variant: variant as u8,
        ..StackKey::default()
    }
}

fn stats(calls: u64, bytes: u64) -> SyscallStats {
    SyscallStats {
        calls,
        bytes,
        ..SyscallStats::default()
    }
}

fn frames(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn a_site_weighs_its_bytes_by_the_copy_model() {
    let write = Site::new(
        &key(nr::WRITE, FdKind::User, FdKind::Tcp, Variant::Plain),
        &stats(4, 4096),
        frames(&["main", "send_body"]),
    );
    assert_eq!(
        (write.mechanism.as_str(), write.copied_bytes),
        ("write user->tcp", 4096)
    );
    let sendfile = Site::new(
        &key(nr::SENDFILE, FdKind::Regular, FdKind::Tcp, Variant::Plain),
        &stats(1, 1 << 20),
        frames(&["main"]),
    );
    assert_eq!(sendfile.copied_bytes, 0);
    let zerocopy = Site::new(
        &key(nr::SENDMSG, FdKind::User, FdKind::Tcp, Variant::Zerocopy),
        &stats(1, 100),
        frames(&["main"]),
    );
    assert_eq!(
        (zerocopy.mechanism.as_str(), zerocopy.copied_bytes),
        ("sendmsg+zc user->tcp", 0)
    );
}

#[test]
fn sites_with_the_same_frames_and_mechanism_merge() {
    let site = |bytes| Site {
        frames: frames(&["main", "relay"]),
        mechanism: "read file->user".into(),
        calls: 1,
        bytes,
        copied_bytes: bytes,
    };
    let other = Site {
        mechanism: "write user->file".into(),
        ..site(5)
    };
    let merged = merge(vec![site(10), other.clone(), site(20)]);
    assert_eq!(merged.len(), 2);
    assert_eq!(
        (merged[0].calls, merged[0].bytes, merged[0].copied_bytes),
        (2, 30, 30)
    );
    assert_eq!(merged[1], other);
}

#[test]
fn folded_lines_put_the_mechanism_at_the_leaf_heaviest_first() {
    let sites = [
        Site {
            frames: frames(&["main", "log;line"]),
            mechanism: "write user->file".into(),
            calls: 9,
            bytes: 10,
            copied_bytes: 10,
        },
        Site {
            frames: vec![],
            mechanism: "read file->user".into(),
            calls: 1,
            bytes: 500,
            copied_bytes: 500,
        },
        Site {
            frames: frames(&["main", "sendfile_body"]),
            mechanism: "sendfile file->tcp".into(),
            calls: 1,
            bytes: 1000,
            copied_bytes: 0,
        },
    ];
    assert_eq!(
        folded(&sites, Weight::Copied),
        [
            "[stack not recorded];[read file->user] 500",
            "main;log:line;[write user->file] 10"
        ]
    );
    assert_eq!(
        folded(&sites, Weight::Moved)[0],
        "main;sendfile_body;[sendfile file->tcp] 1000"
    );
    assert_eq!(
        folded(&sites, Weight::Calls)[0],
        "main;log:line;[write user->file] 9"
    );
}

#[test]
fn top_sites_carry_their_share_of_copied_bytes() {
    let site = |name: &str, copied| Site {
        frames: frames(&[name]),
        mechanism: "write user->pipe".into(),
        calls: 1,
        bytes: copied,
        copied_bytes: copied,
    };
    let top = top(&[site("a", 25), site("b", 75), site("c", 0)], 2);
    assert_eq!(top.len(), 2);
    assert_eq!((top[0].frames[0].as_str(), top[0].cpu_copy_share), ("b", 0.75));
    assert_eq!((top[1].frames[0].as_str(), top[1].cpu_copy_share), ("a", 0.25));
    assert_eq!(super::top(&[site("z", 0)], 1)[0].cpu_copy_share, 0.0);
}

/// The flame graph of `lines`, weighted by copied bytes on `basis`.
fn copied_svg(lines: &[&str], basis: Basis) -> String {
    svg_of(lines, basis, false)
}

fn svg_of(lines: &[&str], basis: Basis, sampled: bool) -> String {
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut svg = Vec::new();
    flamegraph(&lines, Weight::Copied, basis, sampled, &mut svg).unwrap();
    String::from_utf8(svg).unwrap()
}

#[test]
fn a_sampled_flame_graph_says_its_figures_are_estimates() {
    let lines = ["main;relay;[read file->user] 100"];
    assert!(
        svg_of(&lines, Basis::Model, true).contains("CPU-copied bytes (copy model), estimated from samples")
    );
    assert!(!svg_of(&lines, Basis::Model, false).contains("estimated"));
}

#[test]
fn a_flame_graph_of_nothing_says_so() {
    let svg = copied_svg(&[], Basis::Model);
    assert!(
        svg.starts_with("<svg") && svg.contains("no CPU-copied bytes"),
        "{svg}"
    );
    let svg = copied_svg(&["main;relay;[read file->user] 100"], Basis::Model);
    assert!(
        svg.contains("relay") && svg.contains("[read file-&gt;user]"),
        "{svg}"
    );
}

fn copy_key(copier: Copier) -> CopyStackKey {
    CopyStackKey {
        kernel_stack: 3,
        user_stack: 4,
        tgid: 42,
        copier: copier as u8,
        ..CopyStackKey::default()
    }
}

const COPIES: CopyStackCounts = CopyStackCounts {
    copies: 2,
    bytes: 8192,
};

#[test]
fn a_copy_site_puts_user_frames_above_kernel_frames_without_the_tracing_ones() {
    let kernel = frames(&[
        "entry_SYSCALL_64",
        "vfs_read",
        "filemap_read",
        "__traceiter_filemap_read",
        "bpf_trampoline_6442",
        "[kernel] 0xffffffffc0001000",
    ]);
    let site = Site::at_copy(
        StackKind::Both,
        &copy_key(Copier::FilemapRead),
        &COPIES,
        frames(&["main", "relay"]),
        kernel.clone(),
    );
    assert_eq!(
        site.frames,
        frames(&["main", "relay", "entry_SYSCALL_64", "vfs_read", "filemap_read"])
    );
    assert_eq!(
        (site.mechanism.as_str(), site.calls, site.bytes, site.copied_bytes),
        ("filemap_read copy", 2, 8192, 8192)
    );
    let alone = Site::at_copy(
        StackKind::Kernel,
        &copy_key(Copier::TcpSend),
        &COPIES,
        Vec::new(),
        kernel,
    );
    assert_eq!(alone.frames[0], "entry_SYSCALL_64");
    assert_eq!(alone.mechanism, "tcp_sendmsg_locked copy");
}

#[test]
fn a_copy_site_says_which_stack_went_unrecorded_and_when_no_task_asked() {
    let unrecorded = CopyStackKey {
        user_stack: NO_STACK,
        ..copy_key(Copier::SocketReceive)
    };
    let site = Site::at_copy(
        StackKind::Both,
        &unrecorded,
        &COPIES,
        vec![],
        frames(&["tcp_recvmsg"]),
    );
    assert_eq!(site.frames, [UNRECORDED, "tcp_recvmsg"]);
    let deferred = Site::at_copy(
        StackKind::Both,
        &copy_key(Copier::ZerocopyDeferred),
        &COPIES,
        vec![],
        vec![],
    );
    assert_eq!(deferred.frames, [IN_SOFTIRQ, UNRECORDED]);
    assert_eq!(
        folded(&[deferred], Weight::Calls),
        ["[receive softirq];[stack not recorded];[skb_copy_ubufs copy] 2"]
    );
}

#[test]
fn kinds_say_where_their_copied_bytes_come_from() {
    assert_eq!(StackKind::User.basis(), Basis::Model);
    assert_eq!(StackKind::Kernel.basis(), Basis::Observed);
    assert_eq!(StackKind::Both.basis(), Basis::Observed);
    let svg = copied_svg(&["vfs_read;[filemap_read copy] 100"], Basis::Observed);
    assert!(svg.contains("CPU-copied bytes (observed)"), "{svg}");
}
