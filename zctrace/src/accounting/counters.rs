//! The per-process counters that are plain sums, each declared once: where the kernel keeps it
//! and how it is exported. Adding, subtracting and merging them is written here and nowhere else:
//! the process figures, the series totals and the attach report embed one [`Counters`], and the
//! scrape encoder walks [`FAMILIES`].
use zctrace_common::{ProcessStats, TcpPath, COPY_ROUTINES};

use super::{Basis, ObservedCopies, OBSERVED_ROUTINES};

/// A counter, or a fixed family of them, that sums.
pub trait Sum: Copy {
    fn add(&mut self, more: &Self);
    /// What was counted since `earlier`, an earlier reading of the same counter.
    fn since(&self, earlier: &Self) -> Self;
}

impl Sum for u64 {
    fn add(&mut self, more: &u64) {
        *self += more;
    }

    fn since(&self, earlier: &u64) -> u64 {
        self - earlier
    }
}

impl<const N: usize> Sum for [u64; N] {
    fn add(&mut self, more: &[u64; N]) {
        self.iter_mut().zip(more).for_each(|(total, more)| *total += more);
    }

    fn since(&self, earlier: &[u64; N]) -> [u64; N] {
        std::array::from_fn(|i| self[i] - earlier[i])
    }
}

/// A counter's value in a sample: a count, or seconds (a float).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Count(u64),
    Seconds(f64),
}

impl Value {
    pub fn is_zero(self) -> bool {
        self == Value::Count(0) || self == Value::Seconds(0.0)
    }
}

/// The extra labels and value of each sample of one series.
pub type Samples = Vec<(Vec<(&'static str, &'static str)>, Value)>;

/// A metric family read from each series' [`Counters`].
pub struct Family {
    pub metric: &'static str,
    pub help: &'static str,
    pub samples: fn(&Counters) -> Samples,
}

/// Declares [`Counters`], one entry per counter: its type, how it is read from the kernel's
/// [`ProcessStats`], and the metric family it is exported as (one counter may carry a family
/// that reads its siblings too), in the order the families are exported.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $field:ident: $ty:ty = |$stats:ident| $from_kernel:expr
        $(=> $metric:literal, $help:literal, |$c:ident| $samples:expr)?;)*) => {
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $field: $ty,)*
        }

        impl Counters {
            /// The counters the kernel keeps in a process's entry.
            pub fn from_kernel(stats: &ProcessStats) -> Counters {
                Counters { $($field: (|$stats: &ProcessStats| -> $ty { $from_kernel })(stats),)* }
            }

            pub fn add(&mut self, more: &Counters) {
                $(Sum::add(&mut self.$field, &more.$field);)*
            }

            /// What was counted since `earlier`, an earlier reading of the same process.
            pub fn since(&self, earlier: &Counters) -> Counters {
                Counters { $($field: Sum::since(&self.$field, &earlier.$field),)* }
            }
        }

        /// How the counters are exported, per series; the scrape encoder walks this.
        pub const FAMILIES: &[Family] = &[
            $($(Family { metric: $metric, help: $help, samples: |$c: &Counters| $samples },)?)*
        ];
    };
}

counters! {
    /// TCP send bytes by the path `tcp_sendmsg_locked` took (observed), by [`TcpPath`].
    tcp_send: [u64; zctrace_common::TCP_PATHS] = |s| s.tcp_send_bytes
        => "zctrace_tcp_send_bytes", "TCP send bytes by the path tcp_sendmsg took (observed).",
        |c| labelled("path", &TCP_PATH_LABELS, &c.tcp_send);
    /// Exact socket-to-user receive copies (observed).
    recv_copy_bytes: u64 = |s| s.recv_copy_bytes
        => "zctrace_recv_copy_bytes", "Socket-to-user receive copies, exact (observed).",
        |c| one(&[], Value::Count(c.recv_copy_bytes));
    /// MSG_ZEROCOPY bytes sent over a loopback route: the receiver copies them (model).
    zerocopy_deferred_copy_bytes: u64 = |s| s.tcp_zerocopy_local_bytes
        => "zctrace_zerocopy_deferred_copy_bytes",
        "MSG_ZEROCOPY bytes sent to a loopback receiver, which copies them (model).",
        |c| one(&[("basis", Basis::Model.label())], Value::Count(c.zerocopy_deferred_copy_bytes));
    /// Copies seen at the kernel's copy routines, in [`OBSERVED_ROUTINES`] order; all zero unless
    /// every routine is observed.
    observed_copies: ObservedCopies = |s| observed_copies(s)
        => "zctrace_observed_copy_bytes", "CPU-copied bytes seen at the kernel routine that copied them (observed).",
        |c| labelled("routine", &OBSERVED_ROUTINES, &c.observed_copies);
    /// Every syscall, counted from the syscall entries rather than the process entry.
    syscalls_total: u64 = |_s| 0
        => "zctrace_mode_switches", "User/kernel mode switches from syscalls (two per syscall).",
        |c| one(&[], Value::Count(c.mode_switches()));
    voluntary_switches: u64 = |s| s.voluntary_switches
        => "zctrace_context_switches", "Scheduler context switches, as the kernel's nvcsw/nivcsw split them.",
        |c| labelled("kind", &["voluntary", "involuntary"], &[c.voluntary_switches, c.involuntary_switches]);
    involuntary_switches: u64 = |s| s.involuntary_switches;
    offcpu_ns: u64 = |s| s.offcpu_ns
        => "zctrace_offcpu_seconds", "Time threads spent switched out.",
        |c| one(&[], Value::Seconds(c.offcpu_ns as f64 / 1e9));
}

fn one(labels: &[(&'static str, &'static str)], value: Value) -> Samples {
    vec![(labels.to_vec(), value)]
}

/// One sample per element of a counter family, labelled `label`=its name.
fn labelled(label: &'static str, names: &[&'static str], values: &[u64]) -> Samples {
    names
        .iter()
        .zip(values)
        .map(|(name, value)| (vec![(label, *name)], Value::Count(*value)))
        .collect()
}

impl Counters {
    /// TCP send bytes down one path.
    pub fn tcp(&self, path: TcpPath) -> u64 {
        self.tcp_send[path as usize]
    }

    /// Every TCP send byte, whichever path it took.
    pub fn tcp_sent(&self) -> u64 {
        self.tcp_send.iter().sum()
    }

    /// Every syscall enters and leaves the kernel: two mode switches.
    pub fn mode_switches(&self) -> u64 {
        self.syscalls_total * 2
    }

    pub fn context_switches(&self) -> u64 {
        self.voluntary_switches + self.involuntary_switches
    }
}

fn observed_copies(stats: &ProcessStats) -> ObservedCopies {
    let mut copies = [0; OBSERVED_ROUTINES.len()];
    copies[..COPY_ROUTINES].copy_from_slice(&stats.observed_copy_bytes);
    copies[COPY_ROUTINES] = stats.tcp_send_bytes[TcpPath::Copy as usize];
    copies[COPY_ROUTINES + 1] = stats.recv_copy_bytes;
    copies
}

/// The `path` label of each TCP send path, in [`TcpPath`] order.
const TCP_PATH_LABELS: [&str; zctrace_common::TCP_PATHS] = ["copy", "splice", "zerocopy", "unclassified"];
