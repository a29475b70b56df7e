//! The daemon's copy profiles in pprof's format (profile.proto, gzipped), which `go tool pprof`,
//! Parca and Pyroscope read: each sampled call site (or observed copy site) a sample, its frames
//! locations with their mappings, and its process, mechanism and workload labels; call sites
//! weighted by CPU-copied bytes (the copy model), bytes moved and calls, copy sites by the bytes
//! and copies observed, all estimated from byte samples.
//! Only the messages and fields zctrace fills are declared, with profile.proto's tags.
use std::{collections::HashMap, io::Write as _, time::Duration};

use anyhow::Result;
use flate2::{write::GzEncoder, Compression};

use super::{
    symbols::{Located, MappedFile},
    Site,
};
use crate::workload::Workload;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
}

/// What a profile's samples are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileKind {
    /// Data-path syscalls' call sites (user stacks), their copies by the copy model.
    Calls,
    /// Copies the kernel was seen making, their kernel stacks below their user stacks.
    Copies,
}

impl ProfileKind {
    /// The sample types, in the order of each sample's values; the first is the default.
    pub fn sample_types(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ProfileKind::Calls => &[
                ("copied_bytes", "bytes"),
                ("moved_bytes", "bytes"),
                ("calls", "count"),
            ],
            ProfileKind::Copies => &[("copied_bytes", "bytes"), ("copies", "count")],
        }
    }

    fn values(self, site: &Site) -> Vec<u64> {
        match self {
            ProfileKind::Calls => vec![site.copied_bytes, site.bytes, site.calls],
            ProfileKind::Copies => vec![site.copied_bytes, site.calls],
        }
    }

    /// The bytes the sampling points fall by: moved ones for call sites, copied ones for copy
    /// sites.
    fn sampled_bytes(self) -> &'static str {
        match self {
            ProfileKind::Calls => "moved",
            ProfileKind::Copies => "copied",
        }
    }

    /// What the profile's values are, and how they were come by.
    fn comments(self, period: u64) -> Vec<String> {
        let sampled = |what: &str| {
            format!(
                "zctrace {what} profile: a stack was taken about once per {period} bytes {}, at random \
                 points, and each stands for the bytes between: every value is a sampled estimate",
                self.sampled_bytes(),
            )
        };
        match self {
            ProfileKind::Calls => vec![
                sampled("copy"),
                "copied_bytes: bytes the CPU copied, by zctrace's copy model (modelled, not observed)".into(),
                "moved_bytes and calls: the data-path syscalls' bytes and calls, from the same samples"
                    .into(),
                "label mechanism: the syscall and what it moved bytes between".into(),
            ],
            ProfileKind::Copies => vec![
                sampled("kernel copy"),
                "copied_bytes and copies: copies the kernel was seen making (observed), with their kernel \
                 stacks below their user stacks"
                    .into(),
                "label mechanism: the kernel routine seen copying".into(),
            ],
        }
    }
}

/// One process's call site or copy site over the profile's time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileSample {
    pub pid: u32,
    pub kind: ProfileKind,
    pub comm: String,
    /// Its container, pod or service, where the daemon labels workloads.
    pub workload: Workload,
    pub site: Site,
    /// Where each of the site's frames lies, root first, where known.
    pub located: Vec<Option<Located>>,
}

/// What the profile covers.
pub struct Window {
    /// Wall-clock start, in nanoseconds since the epoch.
    pub start_nanos: i64,
    pub duration: Duration,
    /// Bytes moved per sampling point, on average.
    pub period: u64,
}

/// The `kind` profile of those of `samples` that are of that kind, as profile.proto.
pub fn profile(samples: &[ProfileSample], kind: ProfileKind, window: &Window) -> Profile {
    let mut builder = Builder::default();
    builder.string("");
    let sample_type = kind
        .sample_types()
        .iter()
        .map(|(kind, unit)| builder.value_type(kind, unit))
        .collect();
    let comment = kind
        .comments(window.period)
        .iter()
        .map(|c| builder.string(c))
        .collect();
    let pid_key = builder.string("pid");
    let sample = samples
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| {
            let texts = [
                ("comm", Some(&s.comm)),
                ("mechanism", Some(&s.site.mechanism)),
                ("container_id", s.workload.container_id.as_ref()),
                ("pod_uid", s.workload.pod_uid.as_ref()),
                ("systemd_unit", s.workload.systemd_unit.as_ref()),
            ];
            let mut label: Vec<Label> = texts
                .into_iter()
                .filter_map(|(key, value)| {
                    Some(Label {
                        key: builder.string(key),
                        str: builder.string(value?),
                        num: 0,
                    })
                })
                .collect();
            label.push(Label {
                key: pid_key,
                str: 0,
                num: i64::from(s.pid),
            });
            Sample {
                location_id: builder.stack(s),
                value: kind
                    .values(&s.site)
                    .into_iter()
                    .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
                    .collect(),
                label,
            }
        })
        .collect();
    let period_type = Some(builder.value_type(&format!("{}_bytes", kind.sampled_bytes()), "bytes"));
    Profile {
        sample_type,
        sample,
        mapping: builder.mappings,
        location: builder.locations,
        function: builder.functions,
        string_table: builder.strings,
        time_nanos: window.start_nanos,
        duration_nanos: i64::try_from(window.duration.as_nanos()).unwrap_or(i64::MAX),
        period_type,
        period: i64::try_from(window.period).unwrap_or(i64::MAX),
        comment,
        default_sample_type: 1,
    }
}

/// The profile, encoded and gzipped, as pprof serves it.
pub fn gzipped(profile: &Profile) -> Result<Vec<u8>> {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(&prost::Message::encode_to_vec(profile))?;
    Ok(gzip.finish()?)
}

/// The string table; a function per distinct frame name, a mapping per distinct file mapping, and
/// a location per distinct name and address.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<String, u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<MappedFile, u64>,
    locations: Vec<Location>,
    location_ids: HashMap<(String, Option<Located>), u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    /// The sample's locations, leaf first: the function that made the syscall is the leaf, so
    /// that a profile's top entries are code (its mechanism is a label).
    fn stack(&mut self, sample: &ProfileSample) -> Vec<u64> {
        let frames = &sample.site.frames;
        if frames.is_empty() {
            return vec![self.location(super::UNRECORDED, None)];
        }
        let located = sample.located.iter().cloned().chain(std::iter::repeat(None));
        let stack: Vec<u64> = frames
            .iter()
            .zip(located)
            .map(|(name, at)| self.location(name, at))
            .collect();
        stack.into_iter().rev().collect()
    }

    fn location(&mut self, name: &str, at: Option<Located>) -> u64 {
        let key = (name.to_string(), at);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        let function_id = self.function(name);
        let (mapping_id, address) = match &key.1 {
            Some(at) => (self.mapping(&at.mapping), at.address),
            None => (0, 0),
        };
        self.locations.push(Location {
            id,
            mapping_id,
            address,
            line: vec![Line { function_id }],
        });
        self.location_ids.insert(key, id);
        id
    }

    fn function(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.function_ids.get(name) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name_id = self.string(name);
        self.functions.push(Function {
            id,
            name: name_id,
            system_name: name_id,
        });
        self.function_ids.insert(name.to_string(), id);
        id
    }

    fn mapping(&mut self, file: &MappedFile) -> u64 {
        if let Some(&id) = self.mapping_ids.get(file) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(&file.path);
        let build_id = self.string(file.build_id.as_deref().unwrap_or(""));
        self.mappings.push(Mapping {
            id,
            memory_start: file.start,
            memory_limit: file.end,
            file_offset: file.file_offset,
            filename,
            build_id,
            has_functions: true,
        });
        self.mapping_ids.insert(file.clone(), id);
        id
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use prost::Message as _;

    use super::*;

    fn sample(pid: u32, frames: &[&str], mechanism: &str, copied: u64) -> ProfileSample {
        ProfileSample {
            pid,
            kind: ProfileKind::Calls,
            comm: "relay".into(),
            workload: Workload::default(),
            site: Site {
                frames: frames.iter().map(|f| f.to_string()).collect(),
                mechanism: mechanism.into(),
                calls: 3,
                bytes: copied,
                copied_bytes: copied,
            },
            located: Vec::new(),
        }
    }

    #[test]
    fn a_kernel_copy_profile_holds_only_copy_sites_with_observed_values() {
        let window = Window {
            start_nanos: 0,
            duration: Duration::from_secs(1),
            period: 4096,
        };
        let copy = ProfileSample {
            kind: ProfileKind::Copies,
            ..sample(7, &["relay_body", "tcp_sendmsg"], "tcp_sendmsg_locked copy", 300)
        };
        let samples = [sample(7, &["main", "relay_body"], "write user->tcp", 100), copy];
        let profile = profile(&samples, ProfileKind::Copies, &window);
        let name = |id: i64| profile.string_table[id as usize].as_str();
        let types: Vec<&str> = profile.sample_type.iter().map(|t| name(t.r#type)).collect();
        assert_eq!(types, ["copied_bytes", "copies"]);
        assert_eq!(profile.sample.len(), 1);
        assert_eq!(profile.sample[0].value, [300, 3]);
        assert_eq!(name(profile.period_type.as_ref().unwrap().r#type), "copied_bytes");
        let comments: Vec<&str> = profile.comment.iter().map(|c| name(*c)).collect();
        assert!(comments.iter().any(|c| c.contains("(observed)")), "{comments:?}");
        assert!(comments.iter().all(|c| !c.contains("modelled")), "{comments:?}");
        let calls = super::profile(&samples, ProfileKind::Calls, &window);
        assert_eq!(
            (calls.sample.len(), calls.sample[0].value.as_slice()),
            (1, &[100, 100, 3][..])
        );
    }

    #[test]
    fn located_frames_carry_their_address_and_their_files_mapping_and_build_id() {
        let relay = MappedFile {
            start: 0x5000,
            end: 0x9000,
            file_offset: 0x1000,
            path: "/usr/bin/relay".into(),
            build_id: Some("4e2f".into()),
        };
        let at = |address| {
            Some(Located {
                address,
                mapping: relay.clone(),
            })
        };
        let window = Window {
            start_nanos: 0,
            duration: Duration::from_secs(1),
            period: 4096,
        };
        let samples = [
            ProfileSample {
                located: vec![at(0x5100), at(0x5200)],
                ..sample(7, &["main", "relay_body"], "read file->user", 10)
            },
            // The same function at another address is another location of the same function.
            ProfileSample {
                located: vec![at(0x5100), None],
                ..sample(7, &["main", "relay_body"], "write user->file", 10)
            },
        ];
        let profile = profile(&samples, ProfileKind::Calls, &window);
        let name = |id: i64| profile.string_table[id as usize].as_str();
        assert_eq!(profile.mapping.len(), 1);
        let mapping = &profile.mapping[0];
        assert_eq!(
            (mapping.memory_start, mapping.memory_limit, mapping.file_offset),
            (0x5000, 0x9000, 0x1000)
        );
        assert_eq!(
            (name(mapping.filename), name(mapping.build_id)),
            ("/usr/bin/relay", "4e2f")
        );
        let location = |id: u64| &profile.location[id as usize - 1];
        let leaf = location(profile.sample[0].location_id[0]);
        assert_eq!((leaf.address, leaf.mapping_id), (0x5200, mapping.id));
        let unlocated = location(profile.sample[1].location_id[0]);
        assert_eq!((unlocated.address, unlocated.mapping_id), (0, 0));
        assert_eq!(leaf.line[0].function_id, unlocated.line[0].function_id);
        assert_eq!(profile.sample[0].location_id[1], profile.sample[1].location_id[1]);
        assert_eq!(profile.location.len(), 3);
        assert_eq!(profile.function.len(), 2);
    }

    fn decoded(bytes: &[u8]) -> Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut raw).unwrap();
        Profile::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn samples_keep_their_frames_leaf_first_their_values_and_their_process() {
        let window = Window {
            start_nanos: 1,
            duration: Duration::from_secs(2),
            period: 4096,
        };
        let in_pod = ProfileSample {
            workload: Workload {
                pod_uid: Some("4f3c9a7e-1b2d-4c5e-8f90-a1b2c3d4e5f6".into()),
                systemd_unit: Some("kubelet.service".into()),
                ..Workload::default()
            },
            ..sample(9, &["main"], "read file->user", 1)
        };
        let samples = [
            sample(7, &["main", "relay_body"], "read file->user", 100),
            sample(8, &["main", "write_log"], "write user->file", 5),
            in_pod,
        ];
        let profile = decoded(&gzipped(&profile(&samples, ProfileKind::Calls, &window)).unwrap());
        let name = |id: i64| profile.string_table[id as usize].as_str();
        let frames = |s: &Sample| -> Vec<&str> {
            s.location_id
                .iter()
                .map(|id| {
                    let location = &profile.location[*id as usize - 1];
                    name(profile.function[location.line[0].function_id as usize - 1].name)
                })
                .collect()
        };
        assert_eq!(profile.string_table[0], "");
        assert_eq!(name(profile.sample_type[0].r#type), "copied_bytes");
        assert_eq!(name(profile.sample_type[0].unit), "bytes");
        assert_eq!(profile.sample.len(), 3);
        assert_eq!(frames(&profile.sample[0]), ["relay_body", "main"]);

        assert_eq!(profile.sample[0].value, [100, 100, 3]);
        let labels = |s: &Sample| -> Vec<(String, String)> {
            s.label
                .iter()
                .map(|l| {
                    let value = if l.str == 0 {
                        l.num.to_string()
                    } else {
                        name(l.str).to_string()
                    };
                    (name(l.key).to_string(), value)
                })
                .collect()
        };
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(
            labels(&profile.sample[1]),
            pairs(&[("comm", "relay"), ("mechanism", "write user->file"), ("pid", "8")])
        );
        assert_eq!(
            labels(&profile.sample[2]),
            pairs(&[
                ("comm", "relay"),
                ("mechanism", "read file->user"),
                ("pod_uid", "4f3c9a7e-1b2d-4c5e-8f90-a1b2c3d4e5f6"),
                ("systemd_unit", "kubelet.service"),
                ("pid", "9"),
            ])
        );
        // Frames shared by samples are one location.
        assert_eq!(profile.sample[0].location_id[1], profile.sample[1].location_id[1]);
        assert_eq!((profile.period, profile.duration_nanos), (4096, 2_000_000_000));
        assert_eq!(name(profile.period_type.as_ref().unwrap().r#type), "moved_bytes");
        let comments: Vec<&str> = profile.comment.iter().map(|c| name(*c)).collect();
        assert!(comments.iter().any(|c| c.contains("sampled estimate")));
        assert!(comments.iter().any(|c| c.contains("modelled, not observed")));
    }
}
