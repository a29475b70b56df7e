//! `zctrace bench`: every method side by side on loopback, each traced by zctrace, with the
//! sender's own counts beside zctrace's and any disagreement flagged.
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::bracketed::{measured_without_missed_runs, BracketedSend};
use crate::{
    accounting::{Basis, ProcessFigures},
    probes::{args::ProbeArgs, privileges, ProbeOptions, Tracer},
    sender::{receiver, Method, SendReport, HEADER_LEN},
};

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Bytes per transfer.
    #[arg(long, default_value_t = 256 << 20, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    pub size: u64,
    /// Methods to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub methods: Vec<Method>,
    /// Bytes per syscall.
    #[arg(long, default_value_t = 128 * 1024, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub chunk: u64,
    /// Print the rows as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw throughput and copies per byte into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub method: &'static str,
    pub bytes: u64,
    pub bytes_per_second: f64,
    pub sender_cpu_seconds_per_gb: f64,
    /// zctrace's figures for the transfer alone (start-up excluded).
    pub traced_tcp_bytes: u64,
    /// By the copy model.
    pub cpu_copy_bytes: u64,
    pub cpu_copy_basis: &'static str,
    pub copies_per_byte: f64,
    /// Seen at the kernel's copy routines, where this kernel lets all of them be observed.
    pub observed_copy_bytes: Option<u64>,
    pub observed_copies_per_byte: Option<f64>,
    /// MSG_ZEROCOPY bytes zctrace counts as copied later by a loopback receiver.
    pub zerocopy_deferred_copy_bytes: u64,
    pub syscalls: u64,
    pub mode_switches: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// The sender's own counts.
    pub sender_data_syscalls: u64,
    pub zerocopy_completions: u64,
    pub zerocopy_copied: u64,
    pub zerocopy_resent_bytes: u64,
    /// Why zctrace's figures and the sender's disagree, if they do.
    pub disagreement: Option<String>,
}

/// `zctrace bench`: runs the methods and prints their table, JSON rows or plot.
pub fn print(args: &BenchArgs, probe: &ProbeArgs) -> Result<()> {
    let rows = run(args, probe)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows));
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, svg(&rows)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub fn run(args: &BenchArgs, probe: &ProbeArgs) -> Result<Vec<BenchRow>> {
    privileges::require()?;
    let payload = unlinked_payload(args.size)?;
    // The senders open it through this process's descriptor: the file has no name to leave behind.
    let file = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&payload)
    ));
    let methods = if args.methods.is_empty() {
        Method::ALL.to_vec()
    } else {
        args.methods.clone()
    };
    let rows = methods
        .iter()
        .map(|&m| measured_without_missed_runs(|| one(m, &file, args.chunk, probe)))
        .collect::<Result<Vec<_>>>();
    drop(payload);
    rows
}

fn one(method: Method, file: &Path, chunk: u64, probe: &ProbeArgs) -> Result<BenchRow> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    // The receiver discards by splice, so throughput is the sender's, not the receiver's copy.
    let receiving = std::thread::spawn(move || receiver::discard_one(&listener));
    let args: Vec<String> = vec![
        "--method".into(),
        method.name().into(),
        "--file".into(),
        file.display().to_string(),
        "--to".into(),
        addr,
        "--chunk".into(),
        chunk.to_string(),
    ];
    let sender = BracketedSend::spawn(&std::env::current_exe()?, &args)?;
    let tracer = Tracer::load(&ProbeOptions {
        filter_tgid: Some(sender.pid()),
        ..probe.options()
    })?;
    let (f, report) = sender.run(&tracer)?;
    receiving
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let expected = report.bytes + HEADER_LEN as u64;
    let problems = disagreements(&f, &report);
    Ok(BenchRow {
        method: method.name(),
        bytes: report.bytes,
        bytes_per_second: report.bytes as f64 / report.seconds.max(1e-9),
        sender_cpu_seconds_per_gb: report.cpu_seconds / (report.bytes.max(1) as f64 / 1e9),
        traced_tcp_bytes: f.tcp_delivered_bytes(),
        cpu_copy_bytes: f.cpu_copy_bytes(),
        cpu_copy_basis: Basis::Model.label(),
        copies_per_byte: f.cpu_copy_bytes() as f64 / expected as f64,
        observed_copy_bytes: f.observed_copy_bytes(),
        observed_copies_per_byte: f.observed_copy_bytes().map(|o| o as f64 / expected as f64),
        zerocopy_deferred_copy_bytes: f.counters.zerocopy_deferred_copy_bytes,
        syscalls: f.counters.syscalls_total,
        mode_switches: f.counters.mode_switches(),
        voluntary_switches: f.counters.voluntary_switches,
        involuntary_switches: f.counters.involuntary_switches,
        sender_data_syscalls: report.data_syscalls,
        zerocopy_completions: report.zerocopy_completions,
        zerocopy_copied: report.zerocopy_copied,
        zerocopy_resent_bytes: report.zerocopy_resent_bytes,
        disagreement: (!problems.is_empty()).then(|| problems.join("; ")),
    })
}

/// How far observed copies may stray from the model's, and zctrace's deferred zerocopy copies
/// from what the kernel's completions imply, as a share of the bytes sent.
pub const TOLERANCE: f64 = 0.02;

/// Where zctrace's figures for one transfer (`f`) disagree with the sender's own counts, with
/// the kernel's zerocopy completion report, or with each other (observed against modelled).
pub fn disagreements(f: &ProcessFigures, report: &SendReport) -> Vec<String> {
    let expected = report.bytes + HEADER_LEN as u64;
    let slack = (expected as f64 * TOLERANCE) as u64;
    // A local receiver copies a zerocopy segment again each time TCP sends it again; the model
    // and the kernel's completion report count each byte once, so observed copies may exceed
    // them by that much.
    let resent = resent_copies(report);
    let mut problems = Vec::new();
    if f.tcp_delivered_bytes() != expected {
        problems.push(format!(
            "zctrace saw {} bytes sent over TCP, the sender sent {expected}",
            f.tcp_delivered_bytes()
        ));
    }
    if f.counters.syscalls_total < report.data_syscalls {
        problems.push(format!(
            "zctrace counted {} syscalls, fewer than the sender's {} data calls",
            f.counters.syscalls_total, report.data_syscalls
        ));
    }
    if let Some(observed) = f.observed_copy_bytes() {
        let model = f.cpu_copy_bytes();
        if observed + slack < model || observed > model + resent + slack {
            problems.push(format!(
                "observed copies ({observed} bytes) and the model's ({model}) differ by more than {:.0}% \
                 (and the {resent} bytes of zerocopy segments TCP sent again)",
                TOLERANCE * 100.0
            ));
        }
    }
    if report.zerocopy_completions > 0 {
        let kernel_copied =
            (report.bytes as f64 * report.zerocopy_copied as f64 / report.zerocopy_completions as f64) as u64;
        if kernel_copied.abs_diff(f.counters.zerocopy_deferred_copy_bytes) > slack {
            problems.push(format!(
                "the kernel reported {} of {} zerocopy sends copied (about {kernel_copied} bytes), \
                 zctrace counted {} deferred copies",
                report.zerocopy_copied, report.zerocopy_completions, f.counters.zerocopy_deferred_copy_bytes
            ));
        }
    }
    problems
}

/// The bytes TCP sent again on a MSG_ZEROCOPY socket, in the share the kernel reported copied.
fn resent_copies(report: &SendReport) -> u64 {
    if report.zerocopy_completions == 0 {
        return 0;
    }
    (report.zerocopy_resent_bytes as f64 * report.zerocopy_copied as f64 / report.zerocopy_completions as f64)
        as u64
}

pub fn table(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<11} {:>9} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}  {}\n",
        "method",
        "MB/s",
        "CPU s/GB",
        "bytes",
        "copies/B",
        "observed",
        "syscalls",
        "switches",
        "ctxsw",
        "zc done",
        "zc copy",
        "check"
    );
    for r in rows {
        out += &format!(
            "{:<11} {:>9.0} {:>10.3} {:>11} {:>9.2} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}  {}\n",
            r.method,
            r.bytes_per_second / 1e6,
            r.sender_cpu_seconds_per_gb,
            r.bytes,
            r.copies_per_byte,
            r.observed_copies_per_byte
                .map_or("-".to_string(), |c| format!("{c:.2}")),
            r.syscalls,
            r.mode_switches,
            r.voluntary_switches + r.involuntary_switches,
            r.zerocopy_completions,
            r.zerocopy_copied,
            r.disagreement.as_deref().unwrap_or("agrees")
        );
    }
    out
}

/// Two bar charts side by side: throughput and CPU copies per byte.
pub fn svg(rows: &[BenchRow]) -> String {
    let (bar, gap, left, height) = (28.0, 12.0, 90.0, 220.0);
    let panel = |title: &str, x0: f64, values: Vec<f64>, label: &dyn Fn(f64) -> String| {
        let max = values.iter().cloned().fold(f64::MIN_POSITIVE, f64::max);
        let mut out =
            format!("<text x=\"{x0}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{title}</text>\n");
        for (i, (row, value)) in rows.iter().zip(&values).enumerate() {
            let y = 35.0 + i as f64 * (bar + gap);
            let width = value / max * height;
            out += &format!(
                "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{}\" y=\"{y}\" width=\"{width:.1}\" height=\"{bar}\" fill=\"#4e79a7\"/>\
                 <text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>\n",
                x0 + left - 6.0,
                y + bar * 0.65,
                row.method,
                x0 + left,
                x0 + left + width + 4.0,
                y + bar * 0.65,
                label(*value)
            );
        }
        out
    };
    let width = 2.0 * (left + height + 80.0);
    let total_height = 45.0 + rows.len() as f64 * (bar + gap);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{total_height}\" font-family=\"sans-serif\">\n{}{}</svg>\n",
        panel("Throughput (MB/s)", 0.0, rows.iter().map(|r| r.bytes_per_second / 1e6).collect(), &|v| format!("{v:.0}")),
        panel("CPU copies per byte", left + height + 80.0, rows.iter().map(|r| r.copies_per_byte).collect(), &|v| format!("{v:.2}"))
    )
}

/// A payload of `size` bytes in the temporary directory that no name points to, so a bench
/// killed at any moment leaves nothing behind: O_TMPFILE, or where the filesystem lacks it, a
/// file unlinked as soon as it is created (before any byte is written).
fn unlinked_payload(size: u64) -> Result<std::fs::File> {
    use nix::{fcntl::OFlag, sys::stat::Mode};
    let dir = std::env::temp_dir();
    let file = match nix::fcntl::open(
        &dir,
        OFlag::O_TMPFILE | OFlag::O_RDWR,
        Mode::S_IRUSR | Mode::S_IWUSR,
    ) {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => {
            let path = dir.join(format!("zctrace-bench-payload-{}", std::process::id()));
            let file =
                std::fs::File::create_new(&path).with_context(|| format!("creating {}", path.display()))?;
            std::fs::remove_file(&path)?;
            file
        }
    };
    write_payload(&file, size)?;
    Ok(file)
}

fn write_payload(file: &std::fs::File, size: u64) -> Result<()> {
    use std::io::Write as _;
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut out = std::io::BufWriter::new(file);
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &'static str, mbps: f64, copies: f64) -> BenchRow {
        BenchRow {
            method,
            bytes: 1,
            bytes_per_second: mbps * 1e6,
            sender_cpu_seconds_per_gb: 0.5,
            traced_tcp_bytes: 25,
            cpu_copy_bytes: 0,
            cpu_copy_basis: "model",
            copies_per_byte: copies,
            observed_copy_bytes: None,
            observed_copies_per_byte: None,
            zerocopy_deferred_copy_bytes: 0,
            syscalls: 1,
            mode_switches: 2,
            voluntary_switches: 0,
            involuntary_switches: 0,
            sender_data_syscalls: 1,
            zerocopy_completions: 0,
            zerocopy_copied: 0,
            zerocopy_resent_bytes: 0,
            disagreement: None,
        }
    }

    #[test]
    fn plot_has_a_bar_per_method_per_panel() {
        let svg = svg(&[row("sendfile", 6000.0, 0.0), row("read-write", 3000.0, 2.0)]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains(">sendfile<") && svg.contains(">2.00<") && svg.contains(">6000<"));
    }

    const PAYLOAD: u64 = 1 << 20;

    fn zerocopy_send(completions: u64, copied: u64) -> SendReport {
        resending(completions, copied, 0)
    }

    fn resending(completions: u64, copied: u64, resent: u64) -> SendReport {
        SendReport {
            method: "zerocopy".into(),
            bytes: PAYLOAD,
            header_bytes: HEADER_LEN as u64,
            checksum: 0,
            data_syscalls: 8,
            zerocopy_completions: completions,
            zerocopy_copied: copied,
            zerocopy_resent_bytes: resent,
            seconds: 1.0,
            cpu_seconds: 1.0,
        }
    }

    /// What zctrace saw of a zerocopy transfer, `deferred` bytes of it copied by the receiver.
    fn seen(deferred: u64, observed: Option<u64>) -> ProcessFigures {
        let mut f = ProcessFigures {
            copies_observed: observed.is_some(),
            ..Default::default()
        };
        f.counters.syscalls_total = 9;
        f.counters.zerocopy_deferred_copy_bytes = deferred;
        f.counters.observed_copies[0] = observed.unwrap_or_default();
        f.counters.tcp_send[zctrace_common::TcpPath::Zerocopy as usize] = PAYLOAD + HEADER_LEN as u64;
        f
    }

    #[test]
    fn zerocopy_copies_must_match_the_kernels_completion_report() {
        assert!(disagreements(&seen(PAYLOAD, None), &zerocopy_send(8, 8)).is_empty());
        assert!(disagreements(&seen(0, None), &zerocopy_send(8, 0)).is_empty());
        let missed = disagreements(&seen(0, None), &zerocopy_send(8, 8));
        assert!(missed[0].contains("8 of 8 zerocopy sends copied"), "{missed:?}");
        assert_eq!(disagreements(&seen(PAYLOAD, None), &zerocopy_send(8, 0)).len(), 1);
    }

    #[test]
    fn a_zerocopy_segment_sent_again_may_be_observed_copied_again() {
        let model = PAYLOAD;
        let resent = PAYLOAD / 10;
        let copied_twice = seen(PAYLOAD, Some(model + resent));
        assert!(disagreements(&copied_twice, &resending(8, 8, resent)).is_empty());
        let problems = disagreements(&copied_twice, &zerocopy_send(8, 8));
        assert!(problems[0].contains("(and the 0 bytes"), "{problems:?}");
        let beyond = seen(PAYLOAD, Some(model + 2 * resent));
        assert_eq!(disagreements(&beyond, &resending(8, 8, resent)).len(), 1);
        // Fewer copies than the model is never explained by resending.
        let short = seen(PAYLOAD, Some(model - resent));
        assert_eq!(disagreements(&short, &resending(8, 8, resent)).len(), 1);
    }

    #[test]
    fn observed_copies_must_stay_within_tolerance_of_the_model() {
        let model = PAYLOAD;
        let near = model + (model as f64 * TOLERANCE * 0.9) as u64;
        assert!(disagreements(&seen(PAYLOAD, Some(near)), &zerocopy_send(8, 8)).is_empty());
        let far = model + (model as f64 * TOLERANCE * 1.5) as u64;
        let problems = disagreements(&seen(PAYLOAD, Some(far)), &zerocopy_send(8, 8));
        assert!(problems[0].contains("differ by more than 2%"), "{problems:?}");
    }

    #[test]
    fn table_flags_disagreement() {
        let mut bad = row("splice", 1.0, 0.0);
        bad.disagreement = Some("zctrace saw 1 bytes delivered, the sender sent 25".into());
        let table = table(&[row("sendfile", 1.0, 0.0), bad]);
        assert!(table.contains("agrees"));
        assert!(table.contains("the sender sent 25"));
    }
}
