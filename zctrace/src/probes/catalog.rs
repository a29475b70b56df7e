//! Every probe zctrace can attach, and each probe's ways to attach, best first. A way is a set of
//! programs that together do the probe's job with one kind of hook; the first way the running
//! kernel accepts wins, judged from its BTF and by attaching, never from its version.
use zctrace_common::Copier;

/// The kind of kernel hook a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    TpBtf,
    /// A classic (perf) tracepoint, its target `category/name`.
    Tracepoint,
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
}

/// The hook kind a way is named by, as `zctrace probes` and the metrics report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    TpBtf,
    Fentry,
    Fexit,
    Tracepoint,
    Kprobe,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::TpBtf,
        Mode::Fentry,
        Mode::Fexit,
        Mode::Tracepoint,
        Mode::Kprobe,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Mode::TpBtf => "tp_btf",
            Mode::Fentry => "fentry",
            Mode::Fexit => "fexit",
            Mode::Tracepoint => "tracepoint",
            Mode::Kprobe => "kprobe",
        }
    }

    pub fn from_label(label: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.label() == label)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// The program's name in the eBPF object.
    pub name: &'static str,
    pub hook: Hook,
    /// The tracepoint or kernel function it attaches to.
    pub target: &'static str,
    /// Names other kernels give the same function; the first the kernel's BTF has is used.
    pub aliases: &'static [&'static str],
    /// How many parameters the program assumes `target` takes, checked against the kernel's BTF
    /// before loading (fexit reads the return value right after them).
    pub params: Option<usize>,
    /// Attached only where the kernel's BTF has `target`: a function some kernels route the same
    /// work through and others lack.
    pub optional: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Way {
    pub mode: Mode,
    pub programs: &'static [Program],
}

impl Way {
    /// Whether this way's programs run with preemption off on every kernel: a classic
    /// tracepoint's perf path disables it. Where the kernel runs raw tracepoint and trampoline
    /// programs preemptibly, it skips every other task's run of one on a CPU while one run there
    /// is preempted, so such a way goes first there.
    pub fn never_preempted(&self) -> bool {
        self.mode == Mode::Tracepoint
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Counts what the metrics report; attached unless `--probes` leaves it out.
    Counting,
    /// Observes a kernel copy routine; together they give the observed CPU copies.
    CopyObserver,
    /// A yardstick for the overhead bench, attached only when named.
    #[cfg(feature = "instruments")]
    Instrument,
}

impl Role {
    /// Attached unless `--probes` leaves it out; instruments only when named.
    pub fn by_default(self) -> bool {
        matches!(self, Role::Counting | Role::CopyObserver)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub name: &'static str,
    pub role: Role,
    pub ways: &'static [Way],
}

const fn program(name: &'static str, hook: Hook, target: &'static str, params: Option<usize>) -> Program {
    Program {
        name,
        hook,
        target,
        aliases: &[],
        params,
        optional: false,
    }
}

const fn tp(name: &'static str, tracepoint: &'static str) -> Program {
    program(name, Hook::TpBtf, tracepoint, None)
}

/// A tp_btf program that reads `args` of its tracepoint's arguments, checked against the
/// kernel's BTF: tracepoints gain arguments over time.
const fn tp_args(name: &'static str, tracepoint: &'static str, args: usize) -> Program {
    program(name, Hook::TpBtf, tracepoint, Some(args))
}

/// The classic tracepoint a syscall's exit also passes, for kernels that would skip runs of a
/// raw tracepoint's program (see [`Way::never_preempted`]).
const fn sys_exit_tracepoint(name: &'static str) -> Program {
    program(name, Hook::Tracepoint, SYS_EXIT_TRACEPOINT, None)
}

/// The classic tracepoint of every syscall's exit, as `category/name`.
pub const SYS_EXIT_TRACEPOINT: &str = "raw_syscalls/sys_exit";

const fn fexit(name: &'static str, function: &'static str, params: usize) -> Program {
    program(name, Hook::Fexit, function, Some(params))
}

const fn kprobe(name: &'static str, function: &'static str, params: usize) -> Program {
    program(name, Hook::Kprobe, function, Some(params))
}

const fn kretprobe(name: &'static str, function: &'static str) -> Program {
    program(name, Hook::Kretprobe, function, None)
}

const fn also_named(aliases: &'static [&'static str], program: Program) -> Program {
    Program { aliases, ..program }
}

const fn optional(program: Program) -> Program {
    Program {
        optional: true,
        ..program
    }
}

const TP_BTF: Mode = Mode::TpBtf;

/// filemap_read's name before 5.11, with the same parameters.
const BUFFERED_READ_BEFORE_5_11: &[&str] = &["generic_file_buffered_read"];

/// Every probe, counting ones first. Names are the `--probes` vocabulary and the `probe` label.
pub const PROBES: &[Probe] = &[
    Probe {
        name: "sys_exit",
        role: Role::Counting,
        ways: &[
            Way {
                mode: TP_BTF,
                programs: &[tp("sys_exit", "sys_exit")],
            },
            Way {
                mode: Mode::Tracepoint,
                programs: &[sys_exit_tracepoint("sys_exit_tracepoint")],
            },
        ],
    },
    Probe {
        name: "sched_switch",
        role: Role::Counting,
        ways: &[
            Way {
                mode: TP_BTF,
                programs: &[tp_args("sched_switch", "sched_switch", 4)],
            },
            // Before 5.18 the tracepoint hands over no prev_state.
            Way {
                mode: TP_BTF,
                programs: &[tp_args("sched_switch_task_state", "sched_switch", 3)],
            },
        ],
    },
    Probe {
        name: "sched_process_exit",
        role: Role::Counting,
        ways: &[Way {
            mode: TP_BTF,
            programs: &[tp("sched_process_exit", "sched_process_exit")],
        }],
    },
    Probe {
        name: "task_rename",
        role: Role::Counting,
        ways: &[Way {
            mode: TP_BTF,
            programs: &[tp("task_rename", "task_rename")],
        }],
    },
    Probe {
        name: "cgroup_attach_task",
        role: Role::Counting,
        ways: &[Way {
            mode: TP_BTF,
            programs: &[tp("cgroup_attach_task", "cgroup_attach_task")],
        }],
    },
    Probe {
        name: "tcp_send",
        role: Role::Counting,
        ways: &[
            Way {
                mode: TP_BTF,
                programs: &[
                    tp("tcp_sendmsg_locked", "tcp_sendmsg_locked"),
                    tp("sock_send_length", "sock_send_length"),
                ],
            },
            // Before 6.5 sendfile and splice reach TCP through do_tcp_sendpages.
            Way {
                mode: Mode::Fexit,
                programs: &[
                    fexit("tcp_sendmsg_exit", "tcp_sendmsg_locked", 3),
                    optional(fexit("tcp_sendpages_exit", "do_tcp_sendpages", 5)),
                ],
            },
            Way {
                mode: Mode::Kprobe,
                programs: &[
                    kprobe("tcp_sendmsg_entry", "tcp_sendmsg_locked", 3),
                    kretprobe("tcp_sendmsg_return", "tcp_sendmsg_locked"),
                    optional(kretprobe("tcp_sendpages_return", "do_tcp_sendpages")),
                ],
            },
        ],
    },
    Probe {
        name: "skb_copy_datagram_iovec",
        role: Role::Counting,
        ways: &[Way {
            mode: TP_BTF,
            programs: &[tp("skb_copy_datagram_iovec", "skb_copy_datagram_iovec")],
        }],
    },
    Probe {
        name: "copy_filemap_read",
        role: Role::CopyObserver,
        ways: &[
            Way {
                mode: Mode::Fexit,
                programs: &[also_named(
                    BUFFERED_READ_BEFORE_5_11,
                    fexit("filemap_read_exit", "filemap_read", 3),
                )],
            },
            Way {
                mode: Mode::Kprobe,
                programs: &[
                    also_named(
                        BUFFERED_READ_BEFORE_5_11,
                        kprobe("filemap_read_entry", "filemap_read", 3),
                    ),
                    also_named(
                        BUFFERED_READ_BEFORE_5_11,
                        kretprobe("filemap_read_return", "filemap_read"),
                    ),
                ],
            },
        ],
    },
    Probe {
        name: "copy_shmem_read",
        role: Role::CopyObserver,
        ways: &[
            Way {
                mode: Mode::Fexit,
                programs: &[fexit("shmem_read_exit", "shmem_file_read_iter", 2)],
            },
            Way {
                mode: Mode::Kprobe,
                programs: &[
                    kprobe("shmem_read_entry", "shmem_file_read_iter", 2),
                    kretprobe("shmem_read_return", "shmem_file_read_iter"),
                ],
            },
        ],
    },
    Probe {
        name: "copy_perform_write",
        role: Role::CopyObserver,
        ways: &[
            Way {
                mode: Mode::Fexit,
                programs: &[fexit("perform_write_exit", "generic_perform_write", 2)],
            },
            // Before 5.19 it takes (file, iter, pos).
            Way {
                mode: Mode::Fexit,
                programs: &[fexit("perform_write_exit_at_pos", "generic_perform_write", 3)],
            },
            Way {
                mode: Mode::Kprobe,
                programs: &[kretprobe("perform_write_return", "generic_perform_write")],
            },
        ],
    },
    Probe {
        name: "copy_pipe_read",
        role: Role::CopyObserver,
        ways: &[
            Way {
                mode: Mode::Fexit,
                programs: &[also_named(
                    &["anon_pipe_read"],
                    fexit("pipe_read_exit", "pipe_read", 2),
                )],
            },
            Way {
                mode: Mode::Kprobe,
                programs: &[also_named(
                    &["anon_pipe_read"],
                    kretprobe("pipe_read_return", "pipe_read"),
                )],
            },
        ],
    },
    Probe {
        name: "copy_pipe_write",
        role: Role::CopyObserver,
        ways: &[
            Way {
                mode: Mode::Fexit,
                programs: &[also_named(
                    &["anon_pipe_write"],
                    fexit("pipe_write_exit", "pipe_write", 2),
                )],
            },
            Way {
                mode: Mode::Kprobe,
                programs: &[also_named(
                    &["anon_pipe_write"],
                    kretprobe("pipe_write_return", "pipe_write"),
                )],
            },
        ],
    },
    Probe {
        name: "copy_zerocopy_deferred",
        role: Role::CopyObserver,
        ways: &[
            Way {
                mode: Mode::Fentry,
                programs: &[program(
                    "zerocopy_copy_entry",
                    Hook::Fentry,
                    "skb_copy_ubufs",
                    Some(2),
                )],
            },
            Way {
                mode: Mode::Kprobe,
                programs: &[kprobe("zerocopy_copy_kprobe", "skb_copy_ubufs", 2)],
            },
        ],
    },
    // An empty program: its cost at a hook is what the kernel charges to run any program there.
    #[cfg(feature = "instruments")]
    Probe {
        name: "floor",
        role: Role::Instrument,
        ways: &[
            Way {
                mode: TP_BTF,
                programs: &[tp("floor", "sys_exit")],
            },
            Way {
                mode: Mode::Tracepoint,
                programs: &[sys_exit_tracepoint("floor_tracepoint")],
            },
        ],
    },
    // The least a per-process counter can do: one hash add per hit, by tgid.
    #[cfg(feature = "instruments")]
    Probe {
        name: "counting_floor",
        role: Role::Instrument,
        ways: &[
            Way {
                mode: TP_BTF,
                programs: &[tp("counting_floor", "sys_exit")],
            },
            Way {
                mode: Mode::Tracepoint,
                programs: &[sys_exit_tracepoint("counting_floor_tracepoint")],
            },
        ],
    },
    // The least per-thread off-CPU timing can do at a switch.
    #[cfg(feature = "instruments")]
    Probe {
        name: "timing_floor",
        role: Role::Instrument,
        ways: &[Way {
            mode: TP_BTF,
            programs: &[tp("timing_floor", "sched_switch")],
        }],
    },
    // The counting floor at each hook the daemon counts syscalls, switches, sends and receives
    // at: a yardstick for whole workloads.
    #[cfg(feature = "instruments")]
    Probe {
        name: "counting_floors",
        role: Role::Instrument,
        ways: &[
            Way {
                mode: TP_BTF,
                programs: &[
                    tp("counting_floor", "sys_exit"),
                    tp("switch_counting_floor", "sched_switch"),
                    tp("send_counting_floor", "sock_send_length"),
                    tp("receive_counting_floor", "skb_copy_datagram_iovec"),
                ],
            },
            // sys_exit's floor where sys_exit moves to the classic tracepoint.
            Way {
                mode: Mode::Tracepoint,
                programs: &[
                    sys_exit_tracepoint("counting_floor_tracepoint"),
                    tp("switch_counting_floor", "sched_switch"),
                    tp("send_counting_floor", "sock_send_length"),
                    tp("receive_counting_floor", "skb_copy_datagram_iovec"),
                ],
            },
        ],
    },
];

pub fn probe(name: &str) -> Option<&'static Probe> {
    PROBES.iter().find(|p| p.name == name)
}

/// The probe that observes each copier's copies.
pub const COPIER_PROBES: [(&str, Copier); 8] = [
    ("copy_filemap_read", Copier::FilemapRead),
    ("copy_shmem_read", Copier::ShmemRead),
    ("copy_perform_write", Copier::PerformWrite),
    ("copy_pipe_read", Copier::PipeRead),
    ("copy_pipe_write", Copier::PipeWrite),
    ("copy_zerocopy_deferred", Copier::ZerocopyDeferred),
    ("tcp_send", Copier::TcpSend),
    ("skb_copy_datagram_iovec", Copier::SocketReceive),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_copier_is_observed_by_a_probe_of_the_catalog() {
        for (name, copier) in COPIER_PROBES {
            assert!(probe(name).is_some(), "{name} ({copier:?}) is not a probe");
        }
        for value in 0..COPIER_PROBES.len() as u8 {
            let copier = Copier::from_u8(value).expect("a copier");
            assert_eq!(COPIER_PROBES.iter().filter(|(_, c)| *c == copier).count(), 1);
        }
    }

    #[test]
    fn names_are_unique_and_every_way_has_a_required_program() {
        for (i, p) in PROBES.iter().enumerate() {
            assert!(PROBES[i + 1..].iter().all(|q| q.name != p.name), "{}", p.name);
            for way in p.ways {
                assert!(
                    way.programs.iter().any(|prog| !prog.optional),
                    "{} {:?}",
                    p.name,
                    way.mode
                );
            }
        }
    }

    #[test]
    fn ways_go_from_cheapest_to_costliest_hook() {
        for p in PROBES {
            assert!(p.ways.windows(2).all(|w| w[0].mode <= w[1].mode), "{}", p.name);
        }
    }

    #[test]
    fn copy_observers_are_named_for_the_dashboards_alert_exclusion() {
        for p in PROBES {
            assert_eq!(
                p.name.starts_with("copy_"),
                p.role == Role::CopyObserver,
                "{}",
                p.name
            );
        }
    }
}
