//! What the agent saw in one interval: the immutable input of `decide`.
//!
//! `sense` builds one [`Snapshot`] per tick from the BPF maps, `/proc`,
//! cgroupfs and sock_diag. Counts are for that interval only. A figure that
//! could not be read is `None` (or the entry is absent): no data is not zero.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// A cgroup path relative to the cgroup2 mount, always starting with `/`
/// and never ending with one (except the root, `/`). Example: `/workload/api`.
///
/// Shared, so that the snapshot of every tick can name a thousand cgroups
/// without copying their paths; two handles of one path compare equal
/// without comparing the text (the std `Arc<str>` compares the text).
#[derive(Debug, Clone, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CgroupPath(std::sync::Arc<str>);

impl std::hash::Hash for CgroupPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for CgroupPath {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Ord for CgroupPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if std::sync::Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for CgroupPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a string is not a [`CgroupPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupPathError {
    /// The path does not start with `/`.
    #[error(
        "cgroup path {0:?} must start with '/' (it is relative to the cgroup2 mount, e.g. \"/workload/api\")"
    )]
    NotAbsolute(String),
    /// The path has `.` or `..` components.
    #[error("cgroup path {0:?} must not contain '.' or '..' components")]
    DotComponent(String),
}

impl CgroupPath {
    /// The root cgroup, `/`.
    pub fn root() -> Self {
        Self("/".into())
    }

    /// Parses and normalises (`//a/b/` becomes `/a/b`).
    pub fn new(path: &str) -> Result<Self, CgroupPathError> {
        if !path.starts_with('/') {
            return Err(CgroupPathError::NotAbsolute(path.to_owned()));
        }
        let mut out = String::with_capacity(path.len());
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(CgroupPathError::DotComponent(path.to_owned()));
            }
            out.push('/');
            out.push_str(part);
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(Self(out.into()))
    }

    /// The path as a string, e.g. `/workload/api`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without its leading `/`, to join onto a mount point.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// True if `self` is `other` or lies below it.
    pub fn is_within(&self, other: &CgroupPath) -> bool {
        let (me, other) = (&*self.0, &*other.0);
        other == "/"
            || me == other
            || (me.starts_with(other) && me.as_bytes().get(other.len()) == Some(&b'/'))
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CgroupPath {
    type Error = CgroupPathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<CgroupPath> for String {
    fn from(p: CgroupPath) -> Self {
        p.0.to_string()
    }
}

/// Run-queue latency over one interval: how long tasks waited between
/// becoming runnable and running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunqStats {
    /// Number of waits measured in the interval.
    pub count: u64,
    /// Median wait, microseconds.
    pub p50_us: u64,
    /// 99th percentile wait, microseconds.
    pub p99_us: u64,
    /// Longest wait, microseconds (upper bound of its histogram bucket).
    pub max_us: u64,
}

/// Pressure stall information, `some` lines, 10 s averages, in percent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    /// `cpu some avg10`.
    pub cpu_some_avg10: f64,
    /// `memory some avg10`.
    pub memory_some_avg10: f64,
    /// `io some avg10`.
    pub io_some_avg10: f64,
}

/// Host-wide figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// Run-queue latency of every task on the host; `None` if the probe is missing.
    pub runq: Option<RunqStats>,
    /// Host PSI; `None` if `/proc/pressure` is absent.
    pub psi: Option<Psi>,
}

/// CPU throttling of a cgroup's quota over the interval (from `cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Throttling {
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Time throttled, microseconds.
    pub throttled_us: u64,
}

/// Figures of one cgroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// Path relative to the cgroup2 mount.
    pub path: CgroupPath,
    /// cgroup2 id (the inode number of its directory).
    pub id: u64,
    /// Run-queue latency of its tasks.
    pub runq: RunqStats,
    /// Outbound connects made by its tasks in the interval.
    pub conn_out: u64,
    /// `conn_out` per second.
    pub conn_out_per_s: f64,
    /// The cgroup's own PSI, if readable (watched cgroups only; read once a
    /// second: it is a 10 s average).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub psi: Option<Psi>,
    /// CPU throttling over the last second (watched cgroups only, read once
    /// a second), if the cgroup has a quota controller.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub throttling: Option<Throttling>,
}

/// Figures of one local TCP port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortStats {
    /// Local port.
    pub port: u16,
    /// Connections accepted (SYN_RECV → ESTABLISHED) in the interval.
    pub accepted: u64,
    /// `accepted` per second.
    pub accepted_per_s: f64,
    /// Connections waiting in the accept queue of its listener(s) now.
    pub accept_queue: u32,
    /// Accept-queue limit (the listen backlog).
    pub accept_queue_max: u32,
    /// Accept-queue overflows attributed to the port in the interval.
    pub overflows: u64,
}

/// Everything seen in one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Milliseconds since the agent started (monotonic).
    pub ts_ms: u64,
    /// Length of the interval, milliseconds.
    pub interval_ms: u64,
    /// Host-wide figures.
    pub host: HostStats,
    /// Per-cgroup figures, sorted by path.
    pub cgroups: Vec<CgroupStats>,
    /// Per-port figures, sorted by port.
    pub ports: Vec<PortStats>,
    /// Signals that could not be measured this interval, with the reason
    /// (for example a tracepoint the kernel lacks).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub missing: Vec<String>,
}

impl Snapshot {
    /// The interval as a [`Duration`].
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// Figures of the cgroup at `path`, if it was seen.
    ///
    /// The sensor lists cgroups in path order, so this bisects; a snapshot
    /// built in another order is still searched correctly (linearly).
    pub fn cgroup(&self, path: &CgroupPath) -> Option<&CgroupStats> {
        self.cgroup_at(path).map(|i| &self.cgroups[i])
    }

    /// Where the cgroup at `path` is in `cgroups` (see [`Snapshot::cgroup`]).
    fn cgroup_at(&self, path: &CgroupPath) -> Option<usize> {
        match self.cgroups.binary_search_by(|c| c.path.cmp(path)) {
            Ok(i) => Some(i),
            Err(_) => self.cgroups.iter().position(|c| &c.path == path),
        }
    }

    /// [`Snapshot::cgroup`], trying index `hint` first; on return `hint`
    /// holds the index where the cgroup was found.
    pub fn cgroup_hinted(
        &self,
        path: &CgroupPath,
        hint: &std::cell::Cell<usize>,
    ) -> Option<&CgroupStats> {
        if let Some(c) = self.cgroups.get(hint.get())
            && c.path == *path
        {
            return Some(c);
        }
        let i = self.cgroup_at(path)?;
        hint.set(i);
        Some(&self.cgroups[i])
    }

    /// Figures of local port `port`, if it was seen (ports are in order,
    /// as for [`Snapshot::cgroup`]).
    pub fn port(&self, port: u16) -> Option<&PortStats> {
        match self.ports.binary_search_by_key(&port, |p| p.port) {
            Ok(i) => Some(&self.ports[i]),
            Err(_) => self.ports.iter().find(|p| p.port == port),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_compare_by_text_whether_or_not_they_share_a_handle() {
        let a = CgroupPath::new("/x/a").expect("path");
        let a2 = CgroupPath::new("/x//a/").expect("path");
        let b = CgroupPath::new("/x/b").expect("path");
        assert!(!std::sync::Arc::ptr_eq(&a.0, &a2.0));
        assert_eq!(a, a.clone());
        assert_eq!(a, a2, "same text, two handles");
        assert_ne!(a, b);
        assert_eq!(a.cmp(&a2), std::cmp::Ordering::Equal);
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Less);
        assert_eq!(b.partial_cmp(&a), Some(std::cmp::Ordering::Greater));
    }

    #[test]
    fn a_hinted_lookup_finds_what_a_search_finds_and_remembers_where() {
        let path = |p: &str| CgroupPath::new(p).expect("path");
        let snap = Snapshot {
            ts_ms: 0,
            interval_ms: 100,
            host: HostStats::default(),
            cgroups: ["/a", "/b", "/c"]
                .iter()
                .enumerate()
                .map(|(i, p)| CgroupStats {
                    path: path(p),
                    id: i as u64,
                    runq: RunqStats::default(),
                    conn_out: 0,
                    conn_out_per_s: 0.0,
                    psi: None,
                    throttling: None,
                })
                .collect(),
            ports: Vec::new(),
            missing: Vec::new(),
        };
        let hint = std::cell::Cell::new(0);
        assert_eq!(
            snap.cgroup_hinted(&path("/c"), &hint).map(|c| c.id),
            Some(2)
        );
        assert_eq!(hint.get(), 2, "found by a search: the hint moves there");
        assert_eq!(
            snap.cgroup_hinted(&path("/c"), &hint).map(|c| c.id),
            Some(2)
        );
        assert_eq!(
            snap.cgroup_hinted(&path("/b"), &hint).map(|c| c.id),
            Some(1)
        );
        assert_eq!(hint.get(), 1);
        assert!(snap.cgroup_hinted(&path("/d"), &hint).is_none());
        assert_eq!(hint.get(), 1, "a miss leaves the hint");
        let stale = std::cell::Cell::new(99);
        assert_eq!(
            snap.cgroup_hinted(&path("/a"), &stale).map(|c| c.id),
            Some(0)
        );
    }

    #[test]
    fn cgroup_paths_are_normalised() {
        assert_eq!(CgroupPath::new("//a/b/").unwrap().as_str(), "/a/b");
        assert_eq!(CgroupPath::new("/").unwrap().as_str(), "/");
        assert_eq!(CgroupPath::new("/a").unwrap().relative(), "a");
        assert!(matches!(
            CgroupPath::new("a/b"),
            Err(CgroupPathError::NotAbsolute(_))
        ));
        assert!(matches!(
            CgroupPath::new("/a/../b"),
            Err(CgroupPathError::DotComponent(_))
        ));
    }

    #[test]
    fn within_respects_component_boundaries() {
        let p = |s| CgroupPath::new(s).unwrap();
        assert!(p("/a/b").is_within(&p("/a")));
        assert!(p("/a").is_within(&p("/a")));
        assert!(p("/a").is_within(&p("/")));
        assert!(!p("/ab").is_within(&p("/a")));
        assert!(!p("/a").is_within(&p("/a/b")));
    }
}
