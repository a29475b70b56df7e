//! What kind of I/O a process does, and what it could change: pure functions of its figures.
use zctrace_common::{FdKind, TcpPath};

use crate::accounting::ProcessFigures;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStyle {
    /// read() into a buffer, then write()/send() it out.
    ReadWriteRelay,
    /// Bytes sent with write()/send() from memory that no read() filled: a cache, generated
    /// data, or a mapped file.
    SendFromMemory,
    Sendfile,
    /// splice/vmsplice/tee through pipes.
    SplicePipeline,
    ZerocopySend,
    /// Bytes left over TCP without send syscalls to carry them: io_uring did.
    IoUring,
    /// Mostly reads from sockets or pipes.
    SocketReceiver,
    /// Mostly reads files into memory.
    FileReader,
    /// Writes files, and sends little.
    FileWriter,
    /// Too little moved to say.
    Idle,
}

/// Below this, a process has not moved enough data for a style, a ratio or advice to mean anything.
pub const MEANINGFUL_BYTES: u64 = 64 * 1024;

impl IoStyle {
    pub fn label(self) -> &'static str {
        match self {
            IoStyle::ReadWriteRelay => "read_write_relay",
            IoStyle::SendFromMemory => "send_from_memory",
            IoStyle::Sendfile => "sendfile",
            IoStyle::SplicePipeline => "splice_pipeline",
            IoStyle::ZerocopySend => "zerocopy_send",
            IoStyle::IoUring => "io_uring",
            IoStyle::SocketReceiver => "socket_receiver",
            IoStyle::FileReader => "file_reader",
            IoStyle::FileWriter => "file_writer",
            IoStyle::Idle => "idle",
        }
    }
}

impl serde::Serialize for IoStyle {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

/// `ratio`, when enough was delivered for a ratio to mean something: 9 bytes delivered after a
/// program's start-up reads would give thousands of copies per byte.
pub fn meaningful(f: &ProcessFigures, ratio: Option<f64>) -> Option<f64> {
    ratio.filter(|_| f.delivered_bytes() >= MEANINGFUL_BYTES)
}

/// Copies per delivered byte, when it means something.
pub fn copies_per_byte_label(f: &ProcessFigures) -> String {
    meaningful(f, f.copies_per_byte()).map_or("-".to_string(), |c| format!("{c:.2}"))
}

fn delivered_by(f: &ProcessFigures, pick: impl Fn(&str, FdKind, FdKind, bool) -> bool) -> u64 {
    f.flows
        .iter()
        .filter(|p| p.dst != FdKind::User && pick(p.syscall, p.src, p.dst, p.zerocopy_flag))
        .map(|p| p.bytes)
        .sum()
}

/// Bytes that left for sockets and pipes: what an I/O style is about. File writes are not sends.
fn sent_by(f: &ProcessFigures, pick: impl Fn(&str, FdKind, FdKind, bool) -> bool) -> u64 {
    delivered_by(f, |syscall, src, dst, zc| {
        is_outbound(dst) && pick(syscall, src, dst, zc)
    })
}

fn is_outbound(kind: FdKind) -> bool {
    matches!(
        kind,
        FdKind::Tcp | FdKind::Udp | FdKind::Unix | FdKind::OtherSocket | FdKind::Pipe
    )
}

fn written_to_files(f: &ProcessFigures) -> u64 {
    delivered_by(f, |_, _, dst, _| dst == FdKind::Regular)
}

fn read_from_files(f: &ProcessFigures) -> u64 {
    f.flows
        .iter()
        .filter(|p| p.src == FdKind::Regular && p.dst == FdKind::User)
        .map(|p| p.bytes)
        .sum()
}

fn read_into_user(f: &ProcessFigures) -> u64 {
    f.flows
        .iter()
        .filter(|p| p.dst == FdKind::User)
        .map(|p| p.bytes)
        .sum()
}

pub fn classify(f: &ProcessFigures) -> IoStyle {
    let tcp_sent = f.counters.tcp_sent();
    let sent_by_syscalls = delivered_by(f, |_, _, dst, _| matches!(dst, FdKind::Tcp));
    if tcp_sent >= MEANINGFUL_BYTES
        && sent_by_syscalls < tcp_sent / 2
        && f.syscalls.contains_key("io_uring_enter")
    {
        return IoStyle::IoUring;
    }
    let sent = sent_by(f, |_, _, _, _| true);
    if sent < MEANINGFUL_BYTES {
        return if written_to_files(f) >= MEANINGFUL_BYTES {
            IoStyle::FileWriter
        } else if read_into_user(f) >= MEANINGFUL_BYTES {
            if read_from_files(f) * 2 >= read_into_user(f) {
                IoStyle::FileReader
            } else {
                IoStyle::SocketReceiver
            }
        } else {
            IoStyle::Idle
        };
    }
    let share = |bytes: u64| bytes as f64 / sent as f64;
    let sendfile = sent_by(f, |s, _, _, _| s == "sendfile");
    let spliced = sent_by(f, |s, _, _, _| matches!(s, "splice" | "vmsplice" | "tee"));
    let zerocopy = sent_by(f, |_, _, _, zc| zc);
    let copied_out = sent_by(f, |s, src, _, zc| src == FdKind::User && !zc && s != "vmsplice");
    let best = [
        (sendfile, IoStyle::Sendfile),
        (spliced, IoStyle::SplicePipeline),
        (zerocopy, IoStyle::ZerocopySend),
        (copied_out, IoStyle::SendFromMemory),
    ]
    .into_iter()
    .max_by_key(|(bytes, _)| *bytes)
    .expect("four candidates");
    match best {
        (bytes, IoStyle::SendFromMemory) if relays(f, bytes, share) => IoStyle::ReadWriteRelay,
        (_, style) => style,
    }
}

/// Whether most of the `copied_out` bytes sent from memory are bytes a read had just put there:
/// from the kernel's evidence where the sends give it (one-buffer calls, whose buffer is
/// compared with the last read's), else from volumes alone (vectored sends name no one buffer).
fn relays(f: &ProcessFigures, copied_out: u64, share: impl Fn(u64) -> f64) -> bool {
    let witnessed = sent_by(f, |syscall, src, _, zc| {
        src == FdKind::User && !zc && matches!(syscall, "write" | "pwrite64" | "sendto")
    });
    if witnessed * 2 >= copied_out {
        relayed(f) * 2 >= witnessed
    } else {
        share(read_into_user(f).min(copied_out)) >= 0.5
    }
}

/// Bytes written to files from the buffer a read had just filled (observed).
fn relayed_into_files(f: &ProcessFigures) -> u64 {
    relayed_to(f, |dst| dst == FdKind::Regular)
}

/// For a process that writes to files what it reads: file to file, `copy_file_range()`; socket
/// to file, `splice()` through a pipe.
fn file_relay_advice(f: &ProcessFigures) -> String {
    let from_sockets: u64 = f
        .flows
        .iter()
        .filter(|p| p.dst == FdKind::User && is_outbound(p.src) && p.src != FdKind::Pipe)
        .map(|p| p.bytes)
        .sum();
    let (written, relayed) = (mb(written_to_files(f)), mb(relayed_into_files(f)));
    if from_sockets > read_from_files(f) {
        format!(
            "receiving from sockets and writing to files copied {written} through user space (two CPU \
             copies a byte; {relayed} seen written straight from the buffer a receive had just filled); \
             splice() from the socket into a pipe, then from the pipe into the file, moves it without them"
        )
    } else {
        format!(
            "read() and write() copied {written} from files into files through user space (two CPU copies \
             a byte; {relayed} seen written straight from the buffer a read had just filled); \
             copy_file_range() copies in the kernel, once, or not at all on a filesystem that shares extents"
        )
    }
}

/// Bytes sent from the buffer the same thread's last read had filled (observed).
fn relayed(f: &ProcessFigures) -> u64 {
    relayed_to(f, is_outbound)
}

/// Bytes written to endpoints `pick` takes from the buffer the same thread's last read filled.
fn relayed_to(f: &ProcessFigures, pick: fn(FdKind) -> bool) -> u64 {
    f.flows
        .iter()
        .filter(|p| p.src == FdKind::User && pick(p.dst))
        .map(|p| p.relayed_bytes)
        .sum()
}

/// Sends from memory at least this large on average gain from MSG_ZEROCOPY, whose page pinning
/// and completion notices cost more than copying smaller ones (the kernel's documentation puts
/// the break-even near 10 KB).
const ZEROCOPY_WORTH: u64 = 10_000;

/// Below this on average, sends are small: more calls than the bytes need.
const SMALL_SEND: u64 = 16 * 1024;

/// The average copied send to a stream socket (TCP or Unix).
fn average_stream_send(f: &ProcessFigures) -> u64 {
    let (calls, bytes) = f
        .flows
        .iter()
        .filter(|p| matches!(p.dst, FdKind::Tcp | FdKind::Unix) && p.src == FdKind::User && !p.zerocopy_flag)
        .fold((0, 0), |(calls, bytes), p| (calls + p.calls, bytes + p.bytes));
    bytes.checked_div(calls).unwrap_or(0)
}

/// Many small sends: for datagrams, segmentation offload or batching calls; for replies that
/// each answer a receive, batching replies; else larger buffers.
fn small_sends_advice(f: &ProcessFigures, udp: u64) -> Option<String> {
    let calls_to =
        |pick: fn(FdKind) -> bool| -> u64 { f.flows.iter().filter(|p| pick(p.dst)).map(|p| p.calls).sum() };
    let sends = calls_to(|dst| dst != FdKind::User);
    let delivered = f.delivered_bytes();
    if sends <= 100 || delivered < MEANINGFUL_BYTES || delivered / sends >= SMALL_SEND {
        return None;
    }
    let average = delivered / sends;
    if udp * 2 >= delivered {
        return Some(format!(
            "the average datagram carried {average} bytes over {sends} calls: UDP segmentation offload \
             (the UDP_SEGMENT socket option) or sendmmsg() sends many per call"
        ));
    }
    let receives = f
        .flows
        .iter()
        .filter(|p| p.dst == FdKind::User && p.src != FdKind::Regular)
        .map(|p| p.calls)
        .sum::<u64>();
    if receives * 2 >= sends && receives <= sends * 2 {
        return Some(format!(
            "each of {sends} sends answered about one receive, {average} bytes at a time: one reply per \
             request; batching replies (writev(), or clients pipelining requests) cuts syscalls, larger \
             buffers would not"
        ));
    }
    Some(format!(
        "the average send moved only {average} bytes over {sends} calls: larger buffers (64 KiB or more) \
         would cut syscalls and mode switches"
    ))
}

/// Sizes in the view's unit (decimal megabytes), so advice and table agree.
fn mb(bytes: u64) -> String {
    format!("{} MB", super::view::mb(bytes as f64))
}

/// Advice grounded in the figures; empty when there is nothing to say.
pub fn advise(f: &ProcessFigures, style: IoStyle) -> Vec<String> {
    let mut advice = Vec::new();
    let to_sockets = delivered_by(f, |_, src, dst, zc| {
        src == FdKind::User && !zc && matches!(dst, FdKind::Tcp | FdKind::Unix | FdKind::Udp)
    });
    let udp = delivered_by(f, |_, _, dst, _| dst == FdKind::Udp);
    match style {
        IoStyle::ReadWriteRelay if read_from_files(f) * 2 >= read_into_user(f) => advice.push(format!(
            "read()+write() copied {} through user space twice ({} of CPU copies); from a file, \
             sendfile() or splice() would move it with 0 CPU copies and about half the syscalls",
            mb(to_sockets),
            mb(f.cpu_copy_bytes())
        )),
        // sendfile() cannot read a socket: splice through a pipe is the one zero-copy relay.
        IoStyle::ReadWriteRelay if udp * 2 < to_sockets => advice.push(format!(
            "read()+write() copied {} through user space twice ({} of CPU copies; {} seen sent straight \
             from the buffer a read had just filled); splice() through a pipe moves socket to socket \
             without the copies (sendfile() cannot read from a socket)",
            mb(to_sockets),
            mb(f.cpu_copy_bytes()),
            mb(relayed(f))
        )),
        // Small sends from memory are requests' replies or messages, not a file's contents: there
        // the small-sends advice below is the one that applies.
        IoStyle::SendFromMemory
            if to_sockets.saturating_sub(udp) >= MEANINGFUL_BYTES && average_stream_send(f) >= SMALL_SEND =>
        {
            let to_streams = to_sockets.saturating_sub(udp);
            let large = average_stream_send(f) >= ZEROCOPY_WORTH;
            advice.push(format!(
                "write() from memory copied {} into socket buffers; if that memory maps a file, sendfile() \
                 avoids the copy (and the SIGBUS a truncated file causes under mmap){}",
                mb(to_streams),
                if large {
                    "; for these large sends to a remote receiver, MSG_ZEROCOPY avoids it too"
                } else {
                    ""
                }
            ))
        }
        // Files written from the buffer a read had just filled: whichever source the reads were
        // mostly from says how to skip user space.
        IoStyle::FileWriter
            if relayed_into_files(f) >= MEANINGFUL_BYTES
                && relayed_into_files(f) * 2 >= written_to_files(f) =>
        {
            advice.push(file_relay_advice(f))
        }
        _ => {}
    }
    if f.counters.tcp(TcpPath::Zerocopy) > 0
        && f.counters.zerocopy_deferred_copy_bytes * 10 >= f.counters.tcp(TcpPath::Zerocopy) * 9
    {
        advice.push(format!(
            "all {} of MSG_ZEROCOPY sends went to a local receiver, which copies them anyway: the pinning and \
             completion handling cost more than a plain send() here",
            mb(f.counters.tcp(TcpPath::Zerocopy))
        ));
    }
    if let Some(small) = small_sends_advice(f, udp) {
        advice.push(small);
    }
    let switches = f.counters.voluntary_switches + f.counters.involuntary_switches;
    if switches > 100 && f.counters.involuntary_switches * 2 > switches {
        advice.push(format!(
            "{} of {switches} context switches were involuntary (preempted): the process competes for CPU",
            f.counters.involuntary_switches
        ));
    }
    if f.counters.tcp(TcpPath::Unclassified) > 0 {
        advice.push(format!(
            "{} of TCP sends could not be classified (a map was full)",
            mb(f.counters.tcp(TcpPath::Unclassified))
        ));
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::{Basis, Counters, FlowFigures};

    fn flow(
        syscall: &'static str,
        src: FdKind,
        dst: FdKind,
        calls: u64,
        bytes: u64,
        copies: u64,
    ) -> FlowFigures {
        FlowFigures {
            syscall,
            src,
            dst,
            zerocopy_flag: false,
            calls,
            errors: 0,
            bytes,
            cpu_copy_bytes: bytes * copies,
            basis: Basis::Model,
            relayed_bytes: 0,
        }
    }

    const MIB: u64 = 1 << 20;

    /// A flow whose sends the kernel saw leave from the buffer a read had just filled.
    fn relayed(flow: FlowFigures, relayed_bytes: u64) -> FlowFigures {
        FlowFigures {
            relayed_bytes,
            ..flow
        }
    }

    #[test]
    fn a_read_write_relay_is_told_about_sendfile() {
        let f = ProcessFigures {
            flows: vec![
                flow("read", FdKind::Regular, FdKind::User, 1000, 64 * MIB, 1),
                relayed(
                    flow("write", FdKind::User, FdKind::Tcp, 1000, 64 * MIB, 1),
                    64 * MIB,
                ),
            ],
            ..Default::default()
        };
        assert_eq!(classify(&f), IoStyle::ReadWriteRelay);
        let advice = advise(&f, IoStyle::ReadWriteRelay);
        assert!(
            advice[0].contains("67.1 MB through user space twice"),
            "{advice:?}"
        );
        assert!(advice[0].contains("sendfile()"));
    }

    #[test]
    fn writes_without_reads_are_sends_from_memory() {
        let f = ProcessFigures {
            flows: vec![flow("write", FdKind::User, FdKind::Tcp, 512, 64 * MIB, 1)],
            ..Default::default()
        };
        assert_eq!(classify(&f), IoStyle::SendFromMemory);
        let advice = advise(&f, IoStyle::SendFromMemory);
        assert!(advice[0].contains("SIGBUS"), "{advice:?}");
        assert!(advice[0].contains("MSG_ZEROCOPY"), "128 KiB sends: {advice:?}");
        let small = ProcessFigures {
            flows: vec![flow("write", FdKind::User, FdKind::Tcp, 64 * 1024, 64 * MIB, 1)],
            ..Default::default()
        };
        let advice = advise(&small, classify(&small));
        assert!(!advice[0].contains("MSG_ZEROCOPY"), "1 KiB sends: {advice:?}");
    }

    /// Calls each advice names, and where each can work: nothing may advise a call that cannot
    /// work for the process's endpoints.
    fn names_only_what_works(advice: &[String], from_files: bool) {
        for line in advice {
            if line.contains("sendfile()") && !line.contains("sendfile() cannot") {
                assert!(
                    from_files || line.contains("maps a file"),
                    "sendfile for a socket source: {line}"
                );
            }
        }
    }

    #[test]
    fn a_socket_to_socket_relay_is_told_about_splice_not_sendfile() {
        let f = ProcessFigures {
            flows: vec![
                flow("read", FdKind::Tcp, FdKind::User, 1000, 64 * MIB, 1),
                relayed(
                    flow("write", FdKind::User, FdKind::Tcp, 1000, 64 * MIB, 1),
                    60 * MIB,
                ),
            ],
            ..Default::default()
        };
        assert_eq!(classify(&f), IoStyle::ReadWriteRelay);
        let advice = advise(&f, IoStyle::ReadWriteRelay);
        assert!(advice[0].contains("splice() through a pipe"), "{advice:?}");
        assert!(advice[0].contains("62.9 MB seen sent straight"), "{advice:?}");
        names_only_what_works(&advice, false);
    }

    /// A key-value store reads requests and writes replies of about the same volume, but from
    /// its memory, not from what it read: no relay, and no relay advice.
    #[test]
    fn reads_and_sends_of_one_volume_are_no_relay_without_the_evidence() {
        let f = ProcessFigures {
            flows: vec![
                flow("read", FdKind::Tcp, FdKind::User, 50_000, 64 * MIB, 1),
                relayed(flow("write", FdKind::User, FdKind::Tcp, 50_000, 64 * MIB, 1), MIB),
            ],
            ..Default::default()
        };
        assert_eq!(classify(&f), IoStyle::SendFromMemory);
        let advice = advise(&f, classify(&f));
        assert!(!advice.iter().any(|a| a.contains("splice()")), "{advice:?}");
        names_only_what_works(&advice, false);
        // Vectored sends name no one buffer: there the volumes decide, as before.
        let vectored = ProcessFigures {
            flows: vec![
                flow("read", FdKind::Tcp, FdKind::User, 1000, 64 * MIB, 1),
                flow("writev", FdKind::User, FdKind::Tcp, 1000, 64 * MIB, 1),
            ],
            ..Default::default()
        };
        assert_eq!(classify(&vectored), IoStyle::ReadWriteRelay);
    }

    #[test]
    fn small_datagrams_are_told_about_segmentation_offload_and_replies_about_batching() {
        let datagrams = ProcessFigures {
            flows: vec![flow("sendto", FdKind::User, FdKind::Udp, 50_000, 70_000_000, 1)],
            ..Default::default()
        };
        assert_eq!(classify(&datagrams), IoStyle::SendFromMemory);
        let advice = advise(&datagrams, classify(&datagrams));
        assert_eq!(
            advice.len(),
            1,
            "no file or MSG_ZEROCOPY advice for datagrams: {advice:?}"
        );
        assert!(
            advice[0].contains("UDP_SEGMENT") && advice[0].contains("sendmmsg()"),
            "{advice:?}"
        );
        names_only_what_works(&advice, false);
        let replies = ProcessFigures {
            flows: vec![
                flow("read", FdKind::Tcp, FdKind::User, 20_000, 2 * MIB, 1),
                flow("write", FdKind::User, FdKind::Tcp, 20_000, 20 * MIB, 1),
            ],
            ..Default::default()
        };
        let advice = advise(&replies, classify(&replies));
        assert!(
            advice.iter().any(|a| a.contains("batching replies")),
            "{advice:?}"
        );
        assert!(
            !advice.iter().any(|a| a.contains("larger buffers (64 KiB")),
            "{advice:?}"
        );
        names_only_what_works(&advice, false);
    }

    #[test]
    fn writing_a_file_then_sendfiling_it_is_sendfile_not_mmap_write() {
        let f = ProcessFigures {
            flows: vec![
                flow("write", FdKind::User, FdKind::Regular, 256, 16 * MIB, 1),
                flow("sendfile", FdKind::Regular, FdKind::Tcp, 128, 16 * MIB, 0),
            ],
            ..Default::default()
        };
        assert_eq!(classify(&f), IoStyle::Sendfile);
        assert!(advise(&f, IoStyle::Sendfile).is_empty());
    }

    #[test]
    fn file_writers_are_their_own_style_and_a_file_copy_is_told_about_copy_file_range() {
        let writer = ProcessFigures {
            flows: vec![flow("write", FdKind::User, FdKind::Regular, 256, 16 * MIB, 1)],
            ..Default::default()
        };
        assert_eq!(classify(&writer), IoStyle::FileWriter);
        assert!(
            advise(&writer, IoStyle::FileWriter).is_empty(),
            "nothing to say about a plain writer"
        );
        let copier = ProcessFigures {
            flows: vec![
                flow("read", FdKind::Regular, FdKind::User, 256, 16 * MIB, 1),
                relayed(
                    flow("write", FdKind::User, FdKind::Regular, 256, 16 * MIB, 1),
                    16 * MIB,
                ),
            ],
            ..Default::default()
        };
        assert_eq!(classify(&copier), IoStyle::FileWriter);
        assert!(advise(&copier, IoStyle::FileWriter)[0].contains("copy_file_range()"));
        // Start-up reads (a runtime's own files) and writes of what it made are no file copy.
        let unrelated = ProcessFigures {
            flows: vec![
                flow("read", FdKind::Regular, FdKind::User, 256, 2 * MIB, 1),
                flow("write", FdKind::User, FdKind::Regular, 256, 16 * MIB, 1),
            ],
            ..Default::default()
        };
        assert!(advise(&unrelated, classify(&unrelated)).is_empty());
    }

    #[test]
    fn a_socket_to_file_writer_is_told_about_splice() {
        let f = ProcessFigures {
            flows: vec![
                flow("recvfrom", FdKind::Tcp, FdKind::User, 1000, 64 * MIB, 1),
                relayed(
                    flow("write", FdKind::User, FdKind::Regular, 1000, 64 * MIB, 1),
                    64 * MIB,
                ),
            ],
            ..Default::default()
        };
        assert_eq!(classify(&f), IoStyle::FileWriter);
        let advice = advise(&f, IoStyle::FileWriter);
        assert!(
            advice[0].contains("splice() from the socket into a pipe"),
            "{advice:?}"
        );
        names_only_what_works(&advice, false);
        // Written from memory it fills itself, not from what it received: nothing to splice.
        let generated = ProcessFigures {
            flows: vec![
                flow("recvfrom", FdKind::Tcp, FdKind::User, 1000, 64 * MIB, 1),
                flow("write", FdKind::User, FdKind::Regular, 1000, 64 * MIB, 1),
            ],
            ..Default::default()
        };
        assert!(advise(&generated, classify(&generated)).is_empty());
    }

    #[test]
    fn zero_copy_styles_are_recognised_and_left_alone() {
        let sendfile = ProcessFigures {
            flows: vec![flow("sendfile", FdKind::Regular, FdKind::Tcp, 512, 64 * MIB, 0)],
            ..Default::default()
        };
        assert_eq!(classify(&sendfile), IoStyle::Sendfile);
        assert!(advise(&sendfile, IoStyle::Sendfile).is_empty());
        let splice = ProcessFigures {
            flows: vec![
                flow("splice", FdKind::Regular, FdKind::Pipe, 512, 64 * MIB, 0),
                flow("splice", FdKind::Pipe, FdKind::Tcp, 512, 64 * MIB, 0),
            ],
            ..Default::default()
        };
        assert_eq!(classify(&splice), IoStyle::SplicePipeline);
    }

    #[test]
    fn zerocopy_to_a_local_receiver_is_called_out() {
        let mut send = flow("sendto", FdKind::User, FdKind::Tcp, 512, 64 * MIB, 0);
        send.zerocopy_flag = true;
        let f = ProcessFigures {
            flows: vec![send],
            counters: Counters {
                tcp_send: [0, 0, 64 * MIB, 0],
                zerocopy_deferred_copy_bytes: 64 * MIB,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(classify(&f), IoStyle::ZerocopySend);
        assert!(advise(&f, IoStyle::ZerocopySend)
            .iter()
            .any(|a| a.contains("local receiver")));
    }

    #[test]
    fn io_uring_sends_have_no_send_syscalls() {
        let f = ProcessFigures {
            counters: Counters {
                tcp_send: [0, 64 * MIB, 0, 0],
                ..Default::default()
            },
            syscalls: [("io_uring_enter", 600)].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(classify(&f), IoStyle::IoUring);
    }

    #[test]
    fn small_sends_and_preemption_get_advice() {
        let f = ProcessFigures {
            flows: vec![flow("write", FdKind::User, FdKind::Tcp, 100_000, 100 * MIB, 1)],
            counters: Counters {
                voluntary_switches: 10,
                involuntary_switches: 500,
                ..Default::default()
            },
            ..Default::default()
        };
        let advice = advise(&f, classify(&f));
        assert!(
            advice
                .iter()
                .any(|a| a.contains("average send moved only 1048 bytes")),
            "{advice:?}"
        );
        assert!(advice.iter().any(|a| a.contains("involuntary")));
    }

    #[test]
    fn nothing_moved_is_idle_and_reading_is_told_by_its_source() {
        assert_eq!(classify(&ProcessFigures::default()), IoStyle::Idle);
        let receiver = ProcessFigures {
            flows: vec![flow("recvfrom", FdKind::Tcp, FdKind::User, 100, 64 * MIB, 1)],
            ..Default::default()
        };
        assert_eq!(classify(&receiver), IoStyle::SocketReceiver);
        let reader = ProcessFigures {
            flows: vec![flow("read", FdKind::Regular, FdKind::User, 100, 64 * MIB, 1)],
            ..Default::default()
        };
        assert_eq!(classify(&reader), IoStyle::FileReader);
    }
}
