use super::{Workload, WorkloadTarget};

const ID: &str = "4f3c9a7e1b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e";
const INNER: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const UID: &str = "5e2a8f1c-3b7d-4e8a-9c1f-2d6b0a4e7f91";
const UID_SYSTEMD: &str = "5e2a8f1c_3b7d_4e8a_9c1f_2d6b0a4e7f91";

fn expect(container: Option<&str>, pod: Option<&str>, unit: Option<&str>) -> Workload {
    Workload {
        container_id: container.map(str::to_string),
        pod_uid: pod.map(str::to_string),
        systemd_unit: unit.map(str::to_string),
    }
}

#[test]
fn every_layout_kubelet_and_the_runtimes_create_is_read() {
    let table = [
        // kubelet's systemd driver, containerd, each QoS class.
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"),
            expect(Some(ID), Some(UID), None),
        ),
        (
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"),
            expect(Some(ID), Some(UID), None),
        ),
        (
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"),
            expect(Some(ID), Some(UID), None),
        ),
        // CRI-O, and its monitor, which is the pod's but no container's.
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"),
            expect(Some(ID), Some(UID), None),
        ),
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope"),
            expect(None, Some(UID), None),
        ),
        // kubelet's cgroupfs driver.
        (format!("/kubepods/burstable/pod{UID}/{ID}"), expect(Some(ID), Some(UID), None)),
        (format!("/kubepods/pod{UID}/{ID}"), expect(Some(ID), Some(UID), None)),
        (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), expect(Some(ID), Some(UID), None)),
        (format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}"), expect(None, Some(UID), None)),
        // A pod's own cgroup, before its containers start.
        (format!("/kubepods/besteffort/pod{UID}"), expect(None, Some(UID), None)),
        // Docker, both drivers; podman rootful, rootless and under cgroupfs.
        (format!("/system.slice/docker-{ID}.scope"), expect(Some(ID), None, None)),
        (format!("/docker/{ID}"), expect(Some(ID), None, None)),
        (format!("/machine.slice/libpod-{ID}.scope"), expect(Some(ID), None, None)),
        (format!("/machine.slice/libpod-{ID}.scope/container"), expect(Some(ID), None, None)),
        (
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            expect(Some(ID), None, None),
        ),
        (format!("/libpod_parent/libpod-{ID}"), expect(Some(ID), None, None)),
        // A node that is itself a container (kind): the inner container is the workload.
        (
            format!("/system.slice/docker-{ID}.scope/kubepods/burstable/pod{UID}/{INNER}"),
            expect(Some(INNER), Some(UID), None),
        ),
        // As a process in another cgroup namespace reads it.
        (
            format!("/../../kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"),
            expect(Some(ID), Some(UID), None),
        ),
        // Host services, a user's service, and what names no workload.
        ("/system.slice/nginx.service".to_string(), expect(None, None, Some("nginx.service"))),
        ("/system.slice/containerd.service".to_string(), expect(None, None, Some("containerd.service"))),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service".to_string(),
            expect(None, None, Some("foo.service")),
        ),
        ("/user.slice/user-1000.slice/session-3.scope".to_string(), expect(None, None, None)),
        ("/".to_string(), expect(None, None, None)),
        (String::new(), expect(None, None, None)),
    ];
    for (path, workload) in table {
        assert_eq!(Workload::from_cgroup_path(&path), workload, "{path}");
    }
}

#[test]
fn near_misses_name_no_workload() {
    let short = &ID[1..];
    let upper = ID.to_uppercase();
    for path in [
        format!("/system.slice/docker-{short}.scope"),
        format!("/system.slice/docker-{upper}.scope"),
        format!("/system.slice/docker-{ID}.mount"),
        format!("/system.slice/runc-{ID}.scope"),
        format!("/kubepods/burstable/pod{}/x", &UID[1..]),
        format!("/kubepods/burstable/pod{}", UID.replace('-', "")),
        format!("/system.slice/kubepods-pod{UID_SYSTEMD}.scope"),
        format!("/system.slice/other-pod{UID_SYSTEMD}.slice"),
    ] {
        assert!(Workload::from_cgroup_path(&path).is_empty(), "{path}");
    }
}

#[test]
fn a_container_is_found_by_the_start_of_its_id_and_only_if_unique() {
    let paths = [
        format!("/system.slice/docker-{ID}.scope"),
        format!("/kubepods/burstable/pod{UID}/{INNER}"),
        "/system.slice/nginx.service".to_string(),
    ];
    let resolve = |target: WorkloadTarget| target.resolve(paths.iter().map(String::as_str));
    let short = WorkloadTarget::container(&ID[..12]).unwrap();
    assert_eq!(resolve(short), Ok(WorkloadTarget::Container(ID.to_string())));
    let both = WorkloadTarget::container("").map_err(|e| e.contains("not a container id"));
    assert_eq!(both, Err(true));
    assert!(resolve(WorkloadTarget::container("0a").unwrap()).is_ok());
    let none = resolve(WorkloadTarget::container("ffff").unwrap()).unwrap_err();
    assert!(none.contains("no container"), "{none}");
    assert!(WorkloadTarget::container("4F3C").is_err());
    assert!(WorkloadTarget::container(&format!("{ID}0")).is_err());
    // Two ids starting the same are ambiguous.
    let twins = [
        format!("/docker/{ID}"),
        format!("/docker/{}{}", &ID[..4], "0".repeat(60)),
    ];
    let ambiguous = WorkloadTarget::container("4f3c")
        .unwrap()
        .resolve(twins.iter().map(String::as_str))
        .unwrap_err();
    assert!(ambiguous.contains("2 containers"), "{ambiguous}");
}

#[test]
fn a_unit_matches_its_own_processes_and_not_a_containers() {
    let unit = WorkloadTarget::unit("nginx").unwrap();
    assert_eq!(unit, WorkloadTarget::unit("nginx.service").unwrap());
    assert_eq!(unit.label(), "unit nginx.service");
    assert!(unit.matches(&Workload::from_cgroup_path("/system.slice/nginx.service")));
    assert!(!unit.matches(&Workload::from_cgroup_path("/system.slice/nginx-debug.service")));
    // A container started by a runtime under that unit is the container's.
    let inside = format!("/system.slice/nginx.service/docker-{ID}.scope");
    assert!(!unit.matches(&Workload::from_cgroup_path(&inside)));
    assert!(WorkloadTarget::unit("a/b").is_err());
    let missing = unit
        .resolve(["/system.slice/sshd.service"].into_iter())
        .unwrap_err();
    assert!(missing.contains("nginx.service"), "{missing}");
}
