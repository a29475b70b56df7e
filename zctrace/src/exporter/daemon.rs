//! The daemon's state: the loaded probes, the series book, and what one scrape reads.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use zctrace_common::{MapSlot, SocketKindCache};

use super::{
    connections::HttpStats,
    profiles::{Profiles, Unnamed},
    scrape::{Format, Scrape},
    series::{SeriesBook, SeriesKey},
};
use crate::{
    accounting::{per_process, ProcessFigures},
    probes::Tracer,
    procfs,
    stacks::pprof::ProfileSample,
    workload::{cgroups::CgroupNames, Workload},
};

/// How often exited processes are folded into their series and freed.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// How often the profiles' new sites are named: a process that exits sooner than this after its
/// first sampled call leaves its sites unnamed, its mappings gone.
pub const NAMING_INTERVAL: Duration = Duration::from_millis(500);
/// Every this many sweeps, `/proc` is asked about processes the kernel did not mark as exited.
const FULL_CHECK_EVERY: u64 = 15;

pub struct Daemon {
    state: Mutex<State>,
    /// Held by whoever names the profiles' new sites, from reading them to keeping their names,
    /// and by the sweep: no sweep retires a process between the two.
    naming: Mutex<()>,
    kernel: String,
    started: SystemTime,
    http: Arc<HttpStats>,
}

/// Which extra labels a process's series carries.
pub struct Labels {
    /// Processes whose series also carry their pid.
    pub pids: HashSet<u32>,
    /// Label every series with the process's cgroup path.
    pub cgroup: bool,
    /// Label every series with the workload its cgroup path names.
    pub workload: bool,
}

struct State {
    tracer: Tracer,
    book: SeriesBook,
    labels: Labels,
    cgroups: CgroupNames,
    sweeps: u64,
    profiles: Option<Profiles>,
}

impl Daemon {
    pub fn new(
        tracer: Tracer,
        book: SeriesBook,
        labels: Labels,
        cgroups: CgroupNames,
        http: Arc<HttpStats>,
        profiles: Option<Profiles>,
    ) -> Daemon {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Daemon {
            state: Mutex::new(State {
                tracer,
                book,
                labels,
                cgroups,
                sweeps: 0,
                profiles,
            }),
            naming: Mutex::new(()),
            kernel,
            started: SystemTime::now(),
            http,
        }
    }

    /// Folds the final counts of exited processes into their series and frees their entries.
    pub fn sweep(&self) -> Result<usize> {
        // The naming task names new sites every NAMING_INTERVAL; the sweep only takes its turn.
        let _turn = self.naming.lock().expect("naming turn");
        let mut state = self.state.lock().expect("daemon state");
        let state = &mut *state;
        state.sweeps += 1;
        let full_check = state.sweeps.is_multiple_of(FULL_CHECK_EVERY);
        let snapshot = state.tracer.snapshot()?;
        let gone: HashSet<_> = state
            .tracer
            .forget_exited(&snapshot, full_check)?
            .into_iter()
            .collect();
        let processes = per_process(&snapshot, state.tracer.copies_observed());
        if let Some(profiles) = &mut state.profiles {
            if state.labels.workload {
                for figures in &processes {
                    let path = state.cgroups.path(figures.cgroup_id).unwrap_or_default();
                    profiles.note_workload(figures.key.tgid, Workload::from_cgroup_path(path));
                }
            }
            let tgids = gone.iter().map(|key| key.tgid).collect();
            profiles.collect(&mut state.tracer, &tgids)?;
        }
        let now = Instant::now();
        for figures in processes {
            if gone.contains(&figures.key) {
                let key = state.series_key(&figures);
                state.book.retire(key, &figures, now);
            }
        }
        Ok(gone.len())
    }

    /// Every process's sampled call sites so far, and the sampling period; `None` without
    /// `--profiles`.
    pub fn profile_samples(&self) -> Result<Option<(Vec<ProfileSample>, u64)>> {
        self.with_new_sites_named(|state| {
            let Some(profiles) = &state.profiles else {
                return Ok(None);
            };
            Ok(Some((profiles.samples(&state.tracer)?, profiles.period)))
        })
    }

    /// Names the profiles' new sites, if profiles are on.
    pub fn name_new_sites(&self) -> Result<()> {
        self.with_new_sites_named(|_| Ok(()))
    }

    pub fn profiles_on(&self) -> bool {
        self.state.lock().expect("daemon state").profiles.is_some()
    }

    /// Names the profiles' new sites, then runs `then` on the state. The sites are read and
    /// their names kept under the state's lock, but named without it: naming reads processes'
    /// files and symbol tables, and a scrape, which needs only the state, does not wait for it.
    fn with_new_sites_named<T>(&self, then: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let _turn = self.naming.lock().expect("naming turn");
        let unnamed = {
            let state = self.state.lock().expect("daemon state");
            let tracer = &state.tracer;
            state.profiles.as_ref().map(|p| p.unnamed(tracer)).transpose()?
        };
        let naming = unnamed.map(Unnamed::name);
        let mut state = self.state.lock().expect("daemon state");
        if let (Some(profiles), Some(naming)) = (&mut state.profiles, naming) {
            profiles.learn(naming);
        }
        then(&mut state)
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Reads the maps and encodes every metric.
    pub fn scrape(&self, format: Format) -> Result<String> {
        let started = Instant::now();
        let mut state = self.state.lock().expect("daemon state");
        let snapshot = state.tracer.snapshot()?;
        let observed = state.tracer.copies_observed();
        let live: Vec<(SeriesKey, ProcessFigures)> = per_process(&snapshot, observed)
            .into_iter()
            .map(|f| (state.series_key(&f), f))
            .collect();
        let series = state.book.render(&live, Instant::now());
        let maps = state.tracer.map_usage(&snapshot)?;
        let socket_kind_cache = state.tracer.socket_kind_cache()?;
        let scrape = Scrape {
            series,
            probes: state
                .tracer
                .statuses()
                .iter()
                .map(|s| {
                    (
                        s.probe.to_string(),
                        s.mode.label().to_string(),
                        s.mode.is_attached(),
                    )
                })
                .collect(),
            maps: maps
                .into_iter()
                .map(|m| (m.map.to_string(), m.entries, m.capacity))
                .collect(),
            update_errors: snapshot
                .update_errors
                .iter()
                .zip(MapSlot::ALL)
                .map(|(n, slot)| (slot.name().to_string(), *n))
                .collect(),
            missed_runs: state.tracer.missed_runs()?,
            socket_kind_misses: socket_kind_cache[SocketKindCache::Misses as usize],
            socket_kind_evictions: socket_kind_cache[SocketKindCache::Evictions as usize],
            series_dropped: state.book.dropped(),
            profile_sites_dropped: state.profiles.as_ref().map_or(0, |p| p.dropped),
            cgroup_hierarchy_visible: state.cgroups.complete(),
            http_connections: self
                .http
                .open_connections
                .load(std::sync::atomic::Ordering::Relaxed),
            http_refused: self.http.refused(),
            kernel: self.kernel.clone(),
            start_time_seconds: self
                .started
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            collect_seconds: started.elapsed().as_secs_f64(),
        };
        drop(state);
        scrape.encode(format).context("encoding metrics")
    }
}

impl State {
    fn series_key(&mut self, figures: &ProcessFigures) -> SeriesKey {
        let pid = self
            .labels
            .pids
            .contains(&figures.key.tgid)
            .then_some(figures.key.tgid);
        let path = if self.labels.cgroup || self.labels.workload {
            self.cgroups.path(figures.cgroup_id).unwrap_or_default()
        } else {
            ""
        };
        let cgroup = self.labels.cgroup.then(|| path.to_string());
        let workload = if self.labels.workload {
            Workload::from_cgroup_path(path)
        } else {
            Workload::default()
        };
        // A process with syscall entries only has no name in the maps: /proc knows it while it
        // lives, and the series book remembers it once seen. A process never seen alive and
        // never named (its exit missed) is "unknown", never an empty label.
        let comm = match figures.comm.as_str() {
            "" => procfs::is_alive(&figures.key)
                .then(|| procfs::comm(figures.key.tgid))
                .flatten()
                .or_else(|| self.book.comm_of(&figures.key))
                .unwrap_or_else(|| procfs::UNKNOWN_COMM.to_string()),
            comm => comm.to_string(),
        };
        SeriesKey {
            comm,
            pid,
            cgroup,
            workload,
        }
    }
}
