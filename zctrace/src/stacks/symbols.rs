//! Frame names for one process's user stacks and for kernel stacks, by blazesym. User addresses
//! are turned into file offsets through the process's mappings, which a thread re-reads while it
//! lives (an exec, a library loaded), so stacks recorded just before it exited are still named. A
//! frame no symbol covers is `module+0xoffset`. Kernel addresses are named from
//! `/proc/kallsyms`, the running kernel's own table (a vmlinux found on disk may not match it).
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use blazesym::{
    symbolize::{
        source::{Elf, Kernel, Source},
        Input, Symbolized, Symbolizer,
    },
    MaybeDefault,
};
use zctrace_common::{CopyStackKey, StackKey};

use super::{
    kallsyms::KernelSymbols,
    unwind::{frameless_return, ReturnAddress},
};

/// One file-backed mapping of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    file_offset: u64,
    /// Where the daemon reads the file (through the process's root).
    path: PathBuf,
    /// The file's path as the process sees it.
    shown_path: PathBuf,
}

/// A named user frame, and where it lies, so that a profiler can name it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub name: String,
    pub at: Option<Located>,
}

/// An address in a mapped file: for a caller, the byte before its return address (the call).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Located {
    pub address: u64,
    pub mapping: MappedFile,
}

/// A file mapping of a process, as pprof describes one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    /// As the process sees it.
    pub path: String,
    /// The ELF's GNU build ID in hex, where it has one.
    pub build_id: Option<String>,
}

/// How often the mappings are re-read: short enough to see a brief command's exec.
const WATCH_EVERY: Duration = Duration::from_millis(20);

pub struct Frames {
    mappings: Arc<Mutex<Vec<Mapping>>>,
    names: HashMap<u64, String>,
    symbolizer: Symbolizer,
    /// Where each leaf seen keeps its return address, if it keeps no frame.
    leaf_returns: HashMap<u64, Option<ReturnAddress>>,
    build_ids: HashMap<PathBuf, Option<String>>,
    /// Kernel names read while they could be: the daemon's, once it has dropped its privileges.
    kernel_symbols: Option<Arc<KernelSymbols>>,
    /// Whether DWARF is read besides symbol tables: `attach` reads it; the daemon, which names
    /// every process's frames between its sweeps, keeps to symbol tables, which name the same
    /// functions at a fraction of the cost (a big binary's DWARF takes seconds).
    dwarf: bool,
    /// The process's files, open while its frames are named.
    held: Arc<Mutex<HeldFiles>>,
}

/// A return address the kernel found beside a user stack, at a data-path call or an observed
/// copy, which the frame-pointer walk skips where the leaf keeps no frame; and the stack slot it
/// was found in (x86_64). See [`StackKey::caller`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HiddenCaller {
    pub address: u64,
    pub slot: u8,
}

impl From<&StackKey> for HiddenCaller {
    fn from(key: &StackKey) -> HiddenCaller {
        HiddenCaller {
            address: key.caller,
            slot: key.caller_slot,
        }
    }
}

impl From<&CopyStackKey> for HiddenCaller {
    fn from(key: &CopyStackKey) -> HiddenCaller {
        HiddenCaller {
            address: key.caller,
            slot: key.caller_slot,
        }
    }
}

/// A process's mapped files, opened through its own root (a container's files are not at those
/// paths on the host) and held open, so that they can be read after it exits, at
/// `/proc/self/fd/N`.
#[derive(Default)]
struct HeldFiles {
    /// By the path through the process's root: where the file is held, if it could be opened.
    by_path: HashMap<PathBuf, Option<(PathBuf, std::fs::File)>>,
}

impl HeldFiles {
    /// `pid`'s `mappings`, each at the path its file is held at, or else at its path through
    /// the process's root.
    fn hold(&mut self, pid: u32, mappings: Vec<Mapping>) -> Vec<Mapping> {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        // A binary replaced while it runs (a package upgrade) is gone from every path, and its
        // mappings read "PATH (deleted)"; the process's own exe link still opens it.
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let exe_shown = std::cell::OnceCell::new();
        let is_exe =
            |shown: &PathBuf| exe_shown.get_or_init(|| std::fs::read_link(&exe).ok()).as_ref() == Some(shown);
        mappings
            .into_iter()
            .map(|m| {
                let through_root = root.join(m.shown_path.strip_prefix("/").unwrap_or(&m.shown_path));
                let held = self.by_path.entry(through_root.clone()).or_insert_with(|| {
                    let file = match std::fs::File::open(&through_root) {
                        Err(_) if is_exe(&m.shown_path) => std::fs::File::open(&exe),
                        opened => opened,
                    };
                    file.ok().map(|file| {
                        use std::os::fd::AsRawFd as _;
                        (PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())), file)
                    })
                });
                let path = held.as_ref().map_or(through_root, |(path, _)| path.clone());
                Mapping { path, ..m }
            })
            .collect()
    }
}

/// Whether `pid` sees the same root directory as this process: its files are at their paths.
fn shares_our_root(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let identity = |path: String| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
    match (
        identity(format!("/proc/{pid}/root")),
        identity("/proc/self/root".into()),
    ) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => true,
    }
}

impl Frames {
    /// Names for `pid`'s frames; its mappings are watched until it exits. A process in a
    /// container of its own has its files held as they are seen, since they are named after it
    /// exits; a process that shares this root has them named at their paths, where their
    /// separate debug files are found too.
    pub fn watch(pid: u32) -> Frames {
        let frames = Frames::kernel_only();
        let watched = Arc::clone(&frames.mappings);
        let held = (!shares_our_root(pid)).then(|| Arc::clone(&frames.held));
        std::thread::spawn(move || {
            // A zombie has no mappings left: the last ones seen are the ones its stacks used.
            while let Some(mut latest) = read_mappings(pid).filter(|m| !m.is_empty()) {
                if let Some(held) = &held {
                    latest = held.lock().unwrap_or_else(|e| e.into_inner()).hold(pid, latest);
                }
                *watched.lock().unwrap_or_else(|e| e.into_inner()) = latest;
                std::thread::sleep(WATCH_EVERY);
            }
        });
        frames
    }

    /// Names for `pid`'s frames from its mappings as they are now, its files held open now, so
    /// that they can be read after it exits; `None` once it is gone. For the daemon, which names
    /// many processes' stacks while they live: no thread watches them.
    pub fn live(pid: u32) -> Option<Frames> {
        let frames = Frames::kernel_only();
        let mappings = read_mappings(pid).filter(|m| !m.is_empty())?;
        let mappings = frames
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hold(pid, mappings);
        *frames.mappings.lock().unwrap_or_else(|e| e.into_inner()) = mappings;
        Some(Frames {
            dwarf: false,
            ..frames
        })
    }

    /// Names for kernel frames only: no process's mappings are watched.
    pub fn kernel_only() -> Frames {
        Frames {
            mappings: Arc::default(),
            names: HashMap::new(),
            symbolizer: Symbolizer::new(),
            leaf_returns: HashMap::new(),
            build_ids: HashMap::new(),
            kernel_symbols: None,
            dwarf: true,
            held: Arc::default(),
        }
    }

    /// Kernel frames named from `symbols`, not from `/proc/kallsyms` as it reads now.
    pub fn with_kernel_symbols(mut self, symbols: Option<Arc<KernelSymbols>>) -> Frames {
        self.kernel_symbols = symbols;
        self
    }

    /// Names of a user stack's frames, root first, from the kernel's addresses (leaf first).
    pub fn names(&mut self, ips: &[u64]) -> Vec<String> {
        self.named(ips, Self::name_user)
    }

    /// Names of a call or copy site's user frames, root first: its stack's, and the caller the
    /// walk skipped when the leaf keeps no frame, where the kernel found its return address in
    /// the place the leaf's CFI says it is.
    pub fn names_with_caller(&mut self, caller: HiddenCaller, ips: &[u64]) -> Vec<String> {
        let ips = self.with_hidden_caller(caller, ips);
        self.names(&ips)
    }

    /// [`Frames::names_with_caller`], each frame with where it lies.
    pub fn frames_with_caller(&mut self, caller: HiddenCaller, ips: &[u64]) -> Vec<Frame> {
        let ips = self.with_hidden_caller(caller, ips);
        self.frames(&ips)
    }

    /// A user stack's frames, root first, each with where it lies.
    pub fn frames(&mut self, ips: &[u64]) -> Vec<Frame> {
        let names = self.names(ips);
        let located = lookups(ips).into_iter().rev().map(|ip| self.located(ip));
        names
            .into_iter()
            .zip(located)
            .map(|(name, at)| Frame { name, at })
            .collect()
    }

    fn located(&mut self, address: u64) -> Option<Located> {
        let mapping = self.mapping_of(address)?;
        let build_id = self
            .build_ids
            .entry(mapping.path.clone())
            .or_insert_with(|| build_id(&mapping.path))
            .clone();
        Some(Located {
            address,
            mapping: MappedFile {
                start: mapping.start,
                end: mapping.end,
                file_offset: mapping.file_offset,
                path: mapping.shown_path.display().to_string(),
                build_id,
            },
        })
    }

    fn mapping_of(&self, address: u64) -> Option<Mapping> {
        self.mappings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|m| (m.start..m.end).contains(&address))
            .cloned()
    }

    /// The stack's addresses, leaf first, with the caller the walk skipped put back.
    fn with_hidden_caller(&mut self, caller: HiddenCaller, ips: &[u64]) -> Vec<u64> {
        let hidden = match (ips.first(), ips.get(1)) {
            (Some(&leaf), next) if caller.address != 0 && next != Some(&caller.address) => {
                let found = if cfg!(target_arch = "aarch64") {
                    ReturnAddress::LinkRegister
                } else {
                    ReturnAddress::StackSlot(caller.slot)
                };
                self.leaf_return(leaf) == Some(found)
            }
            _ => false,
        };
        let mut ips = ips.to_vec();
        if hidden {
            ips.insert(1, caller.address);
        }
        ips
    }

    fn leaf_return(&mut self, leaf: u64) -> Option<ReturnAddress> {
        if let Some(known) = self.leaf_returns.get(&leaf) {
            return *known;
        }
        let found = self
            .mapping_of(leaf)
            .and_then(|m| frameless_return(&m.path, leaf - m.start + m.file_offset));
        self.leaf_returns.insert(leaf, found);
        found
    }

    /// Names of a kernel stack's frames, root first, from its addresses (leaf first).
    pub fn kernel_names(&mut self, ips: &[u64]) -> Vec<String> {
        self.named(ips, Self::name_kernel)
    }

    fn named(&mut self, ips: &[u64], name_all: fn(&mut Self, &[u64])) -> Vec<String> {
        let lookups = lookups(ips);
        let missing: Vec<u64> = lookups
            .iter()
            .copied()
            .filter(|ip| !self.names.contains_key(ip))
            .collect();
        name_all(self, &missing);
        lookups.iter().rev().map(|ip| self.names[ip].clone()).collect()
    }

    fn name_kernel(&mut self, ips: &[u64]) {
        if let Some(symbols) = &self.kernel_symbols {
            for ip in ips {
                let name = symbols
                    .name(*ip)
                    .map_or_else(|| format!("[kernel] {ip:#x}"), str::to_string);
                self.names.insert(*ip, name);
            }
            return;
        }
        let kernel = Kernel {
            vmlinux: MaybeDefault::None,
            ..Kernel::default()
        };
        let symbolized = self
            .symbolizer
            .symbolize(&Source::Kernel(kernel), Input::AbsAddr(ips))
            .unwrap_or_default();
        for (i, ip) in ips.iter().enumerate() {
            let name = match symbolized.get(i) {
                Some(Symbolized::Sym(sym)) => sym.name.to_string(),
                _ => format!("[kernel] {ip:#x}"),
            };
            self.names.insert(*ip, name);
        }
    }

    fn name_user(&mut self, ips: &[u64]) {
        let mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Read at one path, named as the process sees it.
        let mut by_file: HashMap<(PathBuf, PathBuf), Vec<(u64, u64)>> = HashMap::new();
        for &ip in ips {
            match mappings.iter().find(|m| (m.start..m.end).contains(&ip)) {
                Some(m) => by_file
                    .entry((m.path.clone(), m.shown_path.clone()))
                    .or_default()
                    .push((ip, ip - m.start + m.file_offset)),
                None => {
                    self.names.insert(ip, format!("[unknown] {ip:#x}"));
                }
            }
        }
        for ((path, shown_path), ips) in by_file {
            let offsets: Vec<u64> = ips.iter().map(|(_, offset)| *offset).collect();
            let symbolized = self
                .symbolizer
                .symbolize(
                    &Source::Elf(Elf {
                        debug_syms: self.dwarf,
                        ..Elf::new(&path)
                    }),
                    Input::FileOffset(&offsets),
                )
                .unwrap_or_else(|e| {
                    // Named by their file and offset, which is all there is to name them by.
                    tracing::debug!("naming frames in {}: {e}", path.display());
                    Vec::new()
                });
            let module = shown_path.file_name().map_or_else(
                || shown_path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            for (i, (ip, offset)) in ips.into_iter().enumerate() {
                let name = match symbolized.get(i) {
                    Some(Symbolized::Sym(sym)) => sym.name.to_string(),
                    _ => format!("{module}+{offset:#x}"),
                };
                self.names.insert(ip, name);
            }
        }
    }
}

/// The addresses a stack's frames are named by: past the leaf, each address is a return address,
/// and the call is the byte before it.
fn lookups(ips: &[u64]) -> Vec<u64> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
        .collect()
}

/// The GNU build ID of the ELF file at `path`, in hex.
fn build_id(path: &std::path::Path) -> Option<String> {
    use object::Object as _;
    let file = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// The process's file-backed mappings, or `None` once it is gone.
fn read_mappings(pid: u32) -> Option<Vec<Mapping>> {
    let maps = procfs::process::Process::new(pid as i32).ok()?.maps().ok()?;
    Some(
        maps.into_iter()
            .filter_map(|m| match m.pathname {
                procfs::process::MMapPath::Path(path) => Some(Mapping {
                    start: m.address.0,
                    end: m.address.1,
                    file_offset: m.offset,
                    shown_path: path.clone(),
                    path,
                }),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each mapped file is opened once, however often the mappings are read again (a watched
    /// process's are read every 20 ms), and read through the descriptor held.
    #[test]
    fn each_mapped_file_is_held_once() {
        let pid = std::process::id();
        let mut held = HeldFiles::default();
        let first = held.hold(pid, read_mappings(pid).unwrap());
        let again = held.hold(pid, read_mappings(pid).unwrap());
        let paths =
            |mappings: &[Mapping]| -> Vec<PathBuf> { mappings.iter().map(|m| m.path.clone()).collect() };
        assert_eq!(paths(&first), paths(&again));
        let files: std::collections::HashSet<&PathBuf> = first.iter().map(|m| &m.shown_path).collect();
        assert_eq!(held.by_path.len(), files.len());
        assert!(
            first.iter().all(|m| m.path.starts_with("/proc/self/fd/")),
            "{first:?}"
        );
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe_mapping = first.iter().find(|m| m.shown_path == exe).unwrap();
        assert_eq!(std::fs::read_link(&exe_mapping.path).unwrap(), exe);
    }

    /// The daemon reads a process's files through descriptors it holds; a frame no symbol covers
    /// is still named by the file as the process knows it.
    #[test]
    fn a_live_process_frame_without_a_symbol_is_named_by_its_file() {
        let pid = std::process::id();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let header = read_mappings(pid)
            .unwrap()
            .into_iter()
            .find(|m| m.shown_path == exe && m.file_offset == 0)
            .expect("the executable's first mapping");
        let mut frames = Frames::live(pid).expect("this process's mappings");
        let name = &frames.names(&[header.start])[0];
        let module = exe.file_name().unwrap().to_string_lossy();
        assert_eq!(name, &format!("{module}+0x0"));
        let located = frames.frames(&[header.start])[0].at.clone().expect("located");
        assert_eq!(located.mapping.path, exe.display().to_string());
    }
}
