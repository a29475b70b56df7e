//! The reference sender: moves a file over TCP (or into a file) by every method Linux offers, and
//! keeps its own count of what it did, as ground truth for zctrace's probes.
mod header;
mod mapping;
mod methods;
pub mod receiver;
mod sys;
mod uring;
mod zerocopy;

use std::{
    fs::File,
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result};
pub use header::{checksum_of, Header, HEADER_LEN};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// read() into a buffer, write() it out: two CPU copies per byte.
    ReadWrite,
    /// mmap() the file, write() from the mapping: one copy.
    MmapWrite,
    /// sendfile() file to socket: page references, no copy.
    Sendfile,
    /// splice() file -> pipe -> socket: no copy.
    Splice,
    /// vmsplice() a mapping into a pipe, splice() pipe -> socket: no copy.
    Vmsplice,
    /// splice() file -> pipe, tee() to a second pipe, splice() both out: no copy.
    Tee,
    /// io_uring SPLICE file -> pipe -> socket: no copy, fewer syscalls.
    IoUring,
    /// send(MSG_ZEROCOPY) from a mapping on an SO_ZEROCOPY socket: pinned pages.
    Zerocopy,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::ReadWrite,
        Method::MmapWrite,
        Method::Sendfile,
        Method::Splice,
        Method::Vmsplice,
        Method::Tee,
        Method::IoUring,
        Method::Zerocopy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::ReadWrite => "read-write",
            Method::MmapWrite => "mmap-write",
            Method::Sendfile => "sendfile",
            Method::Splice => "splice",
            Method::Vmsplice => "vmsplice",
            Method::Tee => "tee",
            Method::IoUring => "io-uring",
            Method::Zerocopy => "zerocopy",
        }
    }
}

/// Where the bytes go.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A `zctrace serve` receiver: a header (length, checksum) then the file.
    Tcp(SocketAddr),
    /// A regular file (no header): sendfile and splice then copy page cache to page cache.
    File(PathBuf),
}

/// What the sender itself counted: the ground truth zctrace's figures are checked against.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct SendReport {
    pub method: String,
    pub bytes: u64,
    pub header_bytes: u64,
    pub checksum: u32,
    /// Data-path syscalls the method made (header and setup excluded).
    pub data_syscalls: u64,
    /// MSG_ZEROCOPY sends the kernel reported complete, and how many of those it had to copy.
    pub zerocopy_completions: u64,
    pub zerocopy_copied: u64,
    /// Bytes TCP sent again on the MSG_ZEROCOPY socket: a local receiver copies each resend too.
    #[serde(default)]
    pub zerocopy_resent_bytes: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// Counts kept while a method runs.
#[derive(Default)]
pub(crate) struct Tally {
    pub bytes: u64,
    pub syscalls: u64,
    pub zerocopy_completions: u64,
    pub zerocopy_copied: u64,
    pub zerocopy_resent_bytes: u64,
}

#[derive(Clone, Debug, clap::Args)]
pub struct SendArgs {
    #[arg(long, value_enum)]
    pub method: Method,
    #[arg(long)]
    pub file: PathBuf,
    /// Receiver address, for example 127.0.0.1:9471.
    #[arg(long, required_unless_present = "to_file", conflicts_with = "to_file")]
    pub to: Option<SocketAddr>,
    /// Write into this regular file instead of a socket (read-write, sendfile, splice).
    #[arg(long)]
    pub to_file: Option<PathBuf>,
    /// Bytes per syscall.
    #[arg(long, default_value_t = 128 * 1024, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub chunk: u64,
}

impl SendArgs {
    pub fn options<'a>(&'a self, progress: Option<&'a dyn Fn(u64)>) -> SendOptions<'a> {
        let destination = match (&self.to, &self.to_file) {
            (Some(addr), _) => Destination::Tcp(*addr),
            (None, Some(path)) => Destination::File(path.clone()),
            (None, None) => unreachable!("clap requires --to or --to-file"),
        };
        SendOptions {
            method: self.method,
            file: &self.file,
            destination,
            chunk: self.chunk as usize,
            progress,
        }
    }
}

pub struct SendOptions<'a> {
    pub method: Method,
    pub file: &'a Path,
    pub destination: Destination,
    pub chunk: usize,
    /// Called with the bytes sent so far (for a progress bar).
    pub progress: Option<&'a dyn Fn(u64)>,
}

pub fn send(options: &SendOptions) -> Result<SendReport> {
    anyhow::ensure!(options.chunk > 0, "--chunk must be at least 1 byte");
    let file = File::open(options.file).with_context(|| format!("opening {}", options.file.display()))?;
    let size = file.metadata()?.len();
    anyhow::ensure!(
        file.metadata()?.is_file(),
        "{} is not a regular file",
        options.file.display()
    );
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let (tally, header_bytes, checksum) = match &options.destination {
        Destination::Tcp(addr) => {
            let checksum = checksum_of(&file, size)?;
            let mut socket = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
            let header = Header { len: size, checksum };
            socket.write_all(&header.encode()).context("sending the header")?;
            let tally = methods::run(options, &file, size, socket.into())?;
            (tally, HEADER_LEN as u64, checksum)
        }
        Destination::File(path) => {
            anyhow::ensure!(
                matches!(
                    options.method,
                    Method::Sendfile | Method::Splice | Method::ReadWrite
                ),
                "--to-file supports read-write, sendfile and splice; {} needs a socket",
                options.method.name()
            );
            let out = open_destination(path, &file, options.file)?;
            (methods::run(options, &file, size, out.into())?, 0, 0)
        }
    };
    anyhow::ensure!(
        tally.bytes == size,
        "sent {} of {size} bytes: the file changed size while it was being sent",
        tally.bytes
    );
    Ok(SendReport {
        method: options.method.name().to_string(),
        bytes: tally.bytes,
        header_bytes,
        checksum,
        data_syscalls: tally.syscalls,
        zerocopy_completions: tally.zerocopy_completions,
        zerocopy_copied: tally.zerocopy_copied,
        zerocopy_resent_bytes: tally.zerocopy_resent_bytes,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu_before,
    })
}

/// Opens `path` for writing, truncated, unless it is the very file being sent (`source`, opened
/// from `source_path`): compared by device and inode once both are open, so a symlink, a hard
/// link or a swap between a check and the open cannot slip through.
fn open_destination(path: &Path, source: &File, source_path: &Path) -> Result<File> {
    use std::os::unix::fs::MetadataExt as _;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let (to, from) = (out.metadata()?, source.metadata()?);
    anyhow::ensure!(
        (to.dev(), to.ino()) != (from.dev(), from.ino()),
        "--to-file {} is the file being sent ({}): refusing to overwrite it",
        path.display(),
        source_path.display()
    );
    out.set_len(0)
        .with_context(|| format!("truncating {}", path.display()))?;
    Ok(out)
}

/// User plus system CPU time of this process so far.
pub fn cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    usage.map_or(0.0, |u| {
        let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        tv(u.user_time()) + tv(u.system_time())
    })
}
