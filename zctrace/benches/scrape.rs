//! A scrape with 10,000 series: how long encoding takes and how large the response is. The
//! processes live in `CONTAINERS` pods' containers, labelled as `--workload-labels` labels them.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use zctrace::{
    accounting::{Basis, Counters, FlowFigures, ProcessFigures},
    exporter::{
        scrape::{Format, Scrape},
        series::{SeriesBook, SeriesKey},
    },
    workload::Workload,
};
use zctrace_common::{FdKind, ProcessKey};

/// Each process series yields this many samples with the paths below.
const PROCESSES: usize = 500;
const CONTAINERS: usize = 200;

fn process(i: usize) -> (SeriesKey, ProcessFigures) {
    let path = |syscall, src, dst, bytes| FlowFigures {
        syscall,
        src,
        dst,
        zerocopy_flag: false,
        calls: 10,
        errors: 0,
        bytes,
        cpu_copy_bytes: bytes,
        basis: Basis::Model,
        relayed_bytes: 0,
    };
    let figures = ProcessFigures {
        flows: vec![
            path("read", FdKind::Regular, FdKind::User, i as u64 * 4096),
            path("write", FdKind::User, FdKind::Tcp, i as u64 * 4096),
            path("sendfile", FdKind::Regular, FdKind::Tcp, 1 << 20),
        ],
        syscalls: BTreeMap::from([
            ("read", 10),
            ("write", 10),
            ("sendfile", 10),
            ("epoll_wait", 5),
            ("futex", 3),
        ]),
        counters: Counters {
            syscalls_total: 38,
            ..Default::default()
        },
        key: ProcessKey {
            tgid: i as u32 + 1,
            ..Default::default()
        },
        ..Default::default()
    };
    (
        SeriesKey {
            comm: format!("service-{i}"),
            pid: None,
            cgroup: None,
            workload: container(i % CONTAINERS),
        },
        figures,
    )
}

/// Container `n` of a pod of its own, as a kubelet's cgroup path would name them.
fn container(n: usize) -> Workload {
    Workload {
        container_id: Some(format!("{n:064x}")),
        pod_uid: Some(format!("{n:08x}-0000-4000-8000-{n:012x}")),
        systemd_unit: None,
    }
}

fn main() {
    let live: Vec<_> = (0..PROCESSES).map(process).collect();
    let mut book = SeriesBook::new(PROCESSES, Duration::from_secs(300), None);
    let series = book.render(&live, Instant::now());
    let rounds = 30;
    let mut times = Vec::new();
    let mut size = 0;
    let mut samples = 0;
    for _ in 0..rounds {
        let scrape = Scrape {
            series: series.clone(),
            kernel: "bench".into(),
            ..Default::default()
        };
        let started = Instant::now();
        let body = scrape.encode(Format::PrometheusText).expect("encode");
        times.push(started.elapsed());
        size = body.len();
        samples = body.lines().filter(|l| !l.starts_with('#')).count();
    }
    times.sort();
    println!(
        "scrape encode: {samples} series of {PROCESSES} processes in {CONTAINERS} containers, {:.1} KiB, median {:.2} ms (min {:.2}, max {:.2}) over {rounds} rounds",
        size as f64 / 1024.0,
        times[rounds / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[rounds - 1].as_secs_f64() * 1e3
    );
}
