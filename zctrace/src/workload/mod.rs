//! Who a process works for, read from its cgroup v2 path alone (no API server, no extra
//! privilege): the container runtime's id and the pod's uid, in the layouts kubelet and the
//! runtimes create, or the systemd unit of a host service. Pure, but for `cgroups`, which reads
//! the hierarchy.
pub mod cgroups;

/// A process's workload, as far as its cgroup path tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Workload {
    /// The runtime's 64-hex container id, as kube-state-metrics carries it after `containerd://`
    /// or `cri-o://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The pod's uid, with dashes, as `kube_pod_info{uid}` carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The systemd service of a process outside any container, as node_exporter names units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
}

/// Scope prefixes the runtimes give a container under the systemd cgroup driver. A `conmon`
/// scope holds the runtime's monitor, not the container, so it is not among them.
const SCOPE_PREFIXES: [&str; 4] = ["cri-containerd-", "crio-", "docker-", "libpod-"];

impl Workload {
    /// Reads `path` (as `/proc/PID/cgroup` or the cgroup tree names it, with or without a
    /// `/../` prefix from a cgroup namespace). The innermost container and pod win, so a runtime
    /// nested in another container is read as the inner one.
    pub fn from_cgroup_path(path: &str) -> Workload {
        let mut workload = Workload::default();
        for segment in path.split('/').filter(|s| !s.is_empty() && *s != "..") {
            if let Some(uid) = pod_uid(segment) {
                workload.pod_uid = Some(uid);
            }
            if let Some(id) = container_id(segment) {
                workload.container_id = Some(id.to_string());
            }
            if segment.ends_with(".service") {
                workload.systemd_unit = Some(segment.to_string());
            }
        }
        if workload.container_id.is_some() || workload.pod_uid.is_some() {
            // A container's processes belong to it; the unit would be its runtime's.
            workload.systemd_unit = None;
        }
        workload
    }

    pub fn is_empty(&self) -> bool {
        *self == Workload::default()
    }

    /// `name=value` for each label present, for a one-line view.
    pub fn text(&self) -> String {
        [
            ("container_id", &self.container_id),
            ("pod_uid", &self.pod_uid),
            ("systemd_unit", &self.systemd_unit),
        ]
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// A container or systemd service `attach` traces every process of, as their cgroup paths say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadTarget {
    /// A container's id, or the start of one (`docker ps` shows 12 hex digits).
    Container(String),
    /// A systemd service, `.service` included.
    Unit(String),
}

impl WorkloadTarget {
    /// `--container ID`: hex digits, the whole id or the start of it.
    pub fn container(id: &str) -> Result<WorkloadTarget, String> {
        let hex = id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if id.is_empty() || id.len() > 64 || !hex {
            return Err(format!(
                "{id:?} is not a container id: up to 64 lowercase hex digits, or the start of them"
            ));
        }
        Ok(WorkloadTarget::Container(id.to_string()))
    }

    /// `--unit NAME`: a service, named with or without `.service`.
    pub fn unit(name: &str) -> Result<WorkloadTarget, String> {
        let name = name.trim_end_matches(".service");
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "{name:?} is not a systemd service name (like nginx or nginx.service)"
            ));
        }
        Ok(WorkloadTarget::Unit(format!("{name}.service")))
    }

    pub fn matches(&self, workload: &Workload) -> bool {
        match self {
            WorkloadTarget::Container(id) => workload.container_id.as_deref() == Some(id),
            WorkloadTarget::Unit(name) => workload.systemd_unit.as_deref() == Some(name),
        }
    }

    /// The target as the cgroup paths in `paths` have it: the whole id of the one container
    /// whose id starts with the one given, or the unit if some cgroup is its own.
    pub fn resolve<'a>(&self, paths: impl Iterator<Item = &'a str>) -> Result<WorkloadTarget, String> {
        let workloads: Vec<Workload> = paths.map(Workload::from_cgroup_path).collect();
        match self {
            WorkloadTarget::Container(start) => {
                let mut ids: Vec<&str> = workloads
                    .iter()
                    .filter_map(|w| w.container_id.as_deref())
                    .filter(|id| id.starts_with(start.as_str()))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                match ids[..] {
                    [id] => Ok(WorkloadTarget::Container(id.to_string())),
                    [] => Err(format!("no container on this host has an id starting {start}")),
                    _ => Err(format!(
                        "{} containers have ids starting {start}: give more of the id",
                        ids.len()
                    )),
                }
            }
            WorkloadTarget::Unit(name) => {
                if workloads.iter().any(|w| self.matches(w)) {
                    Ok(self.clone())
                } else {
                    Err(format!("no cgroup on this host is systemd's {name}"))
                }
            }
        }
    }

    /// `container <id>` or `unit <name>`.
    pub fn label(&self) -> String {
        match self {
            WorkloadTarget::Container(id) => format!("container {id}"),
            WorkloadTarget::Unit(name) => format!("unit {name}"),
        }
    }
}

/// `<prefix><64 hex>.scope` (systemd driver), `<prefix><64 hex>` (CRI-O and podman under the
/// cgroupfs driver), or a bare 64-hex directory (containerd under cgroupfs, `/docker/<id>`).
fn container_id(segment: &str) -> Option<&str> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = SCOPE_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    (id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(id)
}

/// `pod<uid>` (cgroupfs driver) or `kubepods[-<class>]-pod<uid with _>.slice` (systemd driver).
fn pod_uid(segment: &str) -> Option<String> {
    let raw = match segment.strip_suffix(".slice") {
        Some(slice) if slice.starts_with("kubepods") => slice.rsplit_once("-pod")?.1,
        Some(_) => return None,
        None => segment.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// A UUID as Kubernetes writes one: 8-4-4-4-12 lowercase hex digits.
fn is_uid(uid: &str) -> bool {
    let groups: Vec<&str> = uid.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests;
