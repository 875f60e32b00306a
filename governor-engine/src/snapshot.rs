//! What the agent saw in one interval: the immutable input of `decide`.
//!
//! `sense` builds one [`Snapshot`] per tick from the BPF maps, `/proc`,
//! cgroupfs and sock_diag. Counts are for that interval only. A figure that
//! could not be read is `None` (or the entry is absent): no data is not zero.
//!
//! Run-queue waits come twice: as the interval's count and percentiles
//! (`runq`, what `governor observe` shows) and as the interval's histogram
//! (`runq_hist`, which the metrics add up into histograms since start).
//! Policies do not judge one interval's
//! percentiles (a p99 of the few dozen wake-ups of a 100 ms tick is their
//! maximum): `decide` adds the histograms of the last `window` of intervals
//! ([`RunqWindow`]) and reads the percentiles of the sum.

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

/// The kernel's run-queue histogram buckets (the layout of
/// `governor_common::hist`, which fills them; this crate depends on no
/// kernel-side crate, so the layout is restated here, and the agent's tests
/// check that the two agree bucket by bucket).
///
/// Values are nanoseconds. Below 1 µs (2^10 ns) everything falls into bucket
/// 0; from there each power of two is split into 8 equal buckets (at most
/// 12.5% wide: a midpoint is within ±6.25% of any value in its bucket);
/// from 2^32 ns (about 4.3 s) up, the last bucket.
pub mod buckets {
    /// log2 of the number of sub-buckets per power of two.
    pub const SUB_BITS: u32 = 3;
    /// Sub-buckets per power of two.
    pub const SUB: u32 = 1 << SUB_BITS;
    /// Smallest power of two with its own buckets (2^10 ns ≈ 1 µs).
    pub const MIN_EXP: u32 = 10;
    /// Values at or above 2^MAX_EXP ns go to the last bucket.
    pub const MAX_EXP: u32 = 32;
    /// Number of buckets: underflow, (MAX_EXP - MIN_EXP) × SUB, overflow.
    pub const BUCKETS: usize = (1 + (MAX_EXP - MIN_EXP) * SUB + 1) as usize;

    /// The bucket of a value in nanoseconds.
    pub fn bucket(ns: u64) -> usize {
        if ns < (1 << MIN_EXP) {
            return 0;
        }
        let e = 63 - ns.leading_zeros();
        if e >= MAX_EXP {
            return BUCKETS - 1;
        }
        let sub = ((ns >> (e - SUB_BITS)) & u64::from(SUB - 1)) as u32;
        (1 + (e - MIN_EXP) * SUB + sub) as usize
    }

    /// The range `[low, high)` of nanoseconds bucket `index` holds; the
    /// last bucket's high is `u64::MAX`.
    pub fn range(index: usize) -> (u64, u64) {
        if index == 0 {
            return (0, 1 << MIN_EXP);
        }
        if index >= BUCKETS - 1 {
            return (1 << MAX_EXP, u64::MAX);
        }
        let i = (index - 1) as u32;
        let e = MIN_EXP + i / SUB;
        let sub = u64::from(i % SUB);
        let width = 1u64 << (e - SUB_BITS);
        let low = (1u64 << e) + sub * width;
        (low, low + width)
    }
}

/// The `p`-th percentile (0 < p ≤ 1) of `counts` (per bucket of
/// [`buckets`], `total` their sum > 0), in whole microseconds: the midpoint
/// of the bucket the percentile falls in (its low bound for the last one).
fn percentile_us(counts: &[u64], total: u64, p: f64) -> u64 {
    // The rank of the p-th percentile, 1-based: ceil(p * total).
    let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            let (lo, hi) = buckets::range(i);
            let mid = if hi == u64::MAX {
                lo
            } else {
                lo + (hi - lo) / 2
            };
            return (mid + 500) / 1000;
        }
    }
    0
}

/// Count, p50, p99 and max of a histogram given as counts per bucket of
/// [`buckets`], in microseconds.
///
/// A percentile is the midpoint of the bucket it falls in (within ±6.25% of
/// the true value from 1 µs up); `max` is the upper bound of the highest
/// non-empty bucket. `governor observe` and the policies' windows both use
/// this one function.
pub fn runq_stats(counts: &[u64]) -> RunqStats {
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return RunqStats::default();
    }
    let max_bucket = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    let (lo, hi) = buckets::range(max_bucket);
    let max_ns = if hi == u64::MAX { lo } else { hi };
    RunqStats {
        count,
        p50_us: percentile_us(counts, count, 0.50),
        p99_us: percentile_us(counts, count, 0.99),
        max_us: max_ns / 1000,
    }
}

/// The run-queue waits of one interval in the kernel's log-linear
/// [`buckets`]: the non-empty buckets as `(bucket, count)`, in bucket order
/// (in JSON, `[[bucket, count], ...]`).
///
/// This is what a policy's window is made of: histograms of successive
/// intervals add up bucket by bucket, and percentiles of the sum are
/// percentiles of every wait in the window (percentiles of intervals do not
/// add up).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunqHist(Vec<(u16, u64)>);

impl RunqHist {
    /// From counts per bucket (the dense form the probes' maps give).
    /// Buckets past the last of [`buckets`] are left out.
    pub fn from_counts(counts: &[u64]) -> Self {
        Self(
            (counts.iter().enumerate())
                .take(buckets::BUCKETS)
                .filter(|(_, c)| **c > 0)
                .map(|(i, &c)| (i as u16, c))
                .collect(),
        )
    }

    /// From waits in nanoseconds (tests, simulations).
    pub fn from_waits_ns(waits: impl IntoIterator<Item = u64>) -> Self {
        let mut counts = vec![0u64; buckets::BUCKETS];
        for w in waits {
            counts[buckets::bucket(w)] += 1;
        }
        Self::from_counts(&counts)
    }

    /// The non-empty buckets: `(bucket, count)`, in bucket order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.0.iter().map(|&(b, c)| (usize::from(b), c))
    }

    /// Number of waits.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(_, c)| c).sum()
    }

    /// True if no wait was measured.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Count and percentiles, as [`runq_stats`].
    pub fn stats(&self) -> RunqStats {
        let mut counts = vec![0u64; buckets::BUCKETS];
        for (b, c) in self.iter() {
            if let Some(slot) = counts.get_mut(b) {
                *slot += c;
            }
        }
        runq_stats(&counts)
    }
}

/// The run-queue waits of the last intervals, up to a span of time: what a
/// `runq_p99` or `runq_p50` policy reads (its `window`).
///
/// It keeps the histogram of each interval (a ring) and their sum per
/// bucket; an interval leaves the window once it is `span` old. The newest
/// interval is always in it, so a span shorter than the tick is one tick.
#[derive(Debug, Clone, Default)]
pub struct RunqWindow {
    /// When each interval was added, and its histogram, oldest first.
    ring: std::collections::VecDeque<(Duration, RunqHist)>,
    /// The ring's sum per bucket (empty until the first wait).
    sum: Vec<u64>,
    total: u64,
}

/// Intervals a window keeps at most, whatever its span (a burst of short
/// intervals must not grow it without bound).
const WINDOW_MAX_INTERVALS: usize = 1024;

impl RunqWindow {
    /// Adds the interval that ended at `now` and lets go of those `span`
    /// or more older.
    pub fn push(&mut self, now: Duration, hist: &RunqHist, span: Duration) {
        if !hist.is_empty() {
            if self.sum.is_empty() {
                self.sum = vec![0; buckets::BUCKETS];
            }
            for (b, c) in hist.iter() {
                if let Some(slot) = self.sum.get_mut(b) {
                    *slot += c;
                    self.total += c;
                }
            }
        }
        self.ring.push_back((now, hist.clone()));
        while self.ring.len() > 1
            && (self.ring.len() > WINDOW_MAX_INTERVALS
                || self
                    .ring
                    .front()
                    .is_some_and(|(at, _)| now.saturating_sub(*at) >= span))
        {
            if let Some((_, old)) = self.ring.pop_front() {
                for (b, c) in old.iter() {
                    if let Some(slot) = self.sum.get_mut(b) {
                        *slot -= c;
                        self.total -= c;
                    }
                }
            }
        }
    }

    /// Forgets every interval.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Intervals in the window.
    pub fn intervals(&self) -> usize {
        self.ring.len()
    }

    /// Waits in the window.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `p`-th percentile (0 < p ≤ 1) of the window's waits, in
    /// microseconds; 0 if nothing waited.
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        percentile_us(&self.sum, self.total, p)
    }

    /// Count and percentiles of the window, as [`runq_stats`].
    pub fn stats(&self) -> RunqStats {
        if self.total == 0 {
            return RunqStats::default();
        }
        runq_stats(&self.sum)
    }
}

/// Pressure stall information: the `some` lines' 10 s averages, in percent
/// (what policies read), and each file's cumulative stall times (what the
/// metrics export as counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    /// `cpu some avg10`.
    pub cpu_some_avg10: f64,
    /// `memory some avg10`.
    pub memory_some_avg10: f64,
    /// `io some avg10`.
    pub io_some_avg10: f64,
    /// `total=` of the cpu file; `None` from a producer that gives only
    /// the averages.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_total: Option<PsiTotal>,
    /// `total=` of the memory file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_total: Option<PsiTotal>,
    /// `total=` of the io file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub io_total: Option<PsiTotal>,
}

/// The cumulative stall time of one pressure file (`total=`, microseconds
/// since boot, or since the cgroup was made): a counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsiTotal {
    /// Time some task was stalled, microseconds.
    pub some_us: u64,
    /// Time every non-idle task was stalled at once, microseconds; `None`
    /// where the file has no `full` line (the cpu file before 5.13).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub full_us: Option<u64>,
}

/// Host-wide figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// Run-queue latency of every task on the host in the interval; `None`
    /// if the scheduler probes are missing (then no cgroup's run-queue
    /// figures are data either: the same probes measure both).
    pub runq: Option<RunqStats>,
    /// The same waits as a histogram (what policies' windows are made of);
    /// `None` if the probes are missing, or from a producer that gives
    /// only `runq`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub runq_hist: Option<RunqHist>,
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
    /// Run-queue latency of its tasks in the interval (all 0 if nothing
    /// waited, or if the probes are missing: see `runq_hist`).
    pub runq: RunqStats,
    /// The same waits as a histogram (what policies' windows are made of):
    /// `Some`, empty if nothing waited, whenever the scheduler probes run;
    /// `None` if they are missing, or from a producer that gives only `runq`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub runq_hist: Option<RunqHist>,
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
    /// Who held the CPU while its tasks waited for it (watched cgroups
    /// only; empty if none waited): the top [`Culprit::TOP`] by wait in
    /// the interval, longest first.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub culprits: Vec<Culprit>,
}

/// One cgroup that held the CPU while a watched cgroup waited for it: each
/// wait is split among the cgroups that ran on the waiter's CPU during it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Culprit {
    /// The culprit's path; the victim's own path: its own other tasks (or
    /// a quota: see `Culprit::IDLE`); `Culprit::IDLE`: nothing ran (the CPU
    /// was idle: a cgroup throttled by its quota waits this way); an id
    /// that no longer resolves: `/#<id>`.
    pub cgroup: String,
    /// Wait behind it in the interval, microseconds.
    pub wait_us: u64,
    /// Its part of all the victim's attributed wait in the interval (0–1).
    pub share: f64,
}

impl Culprit {
    /// Culprits kept per cgroup and interval.
    pub const TOP: usize = 5;
    /// The name of "the CPU was idle" (no task held it).
    pub const IDLE: &'static str = "(idle)";

    /// The top [`Culprit::TOP`] of `waits` (culprit name, ns), longest
    /// first (ties by name), each with its share of the sum of all of
    /// `waits` (not only the top's).
    pub fn top(waits: impl IntoIterator<Item = (String, u64)>) -> Vec<Culprit> {
        let mut all: Vec<(String, u64)> = waits.into_iter().filter(|(_, ns)| *ns > 0).collect();
        let total: u64 = all.iter().map(|(_, ns)| *ns).sum();
        if total == 0 {
            return Vec::new();
        }
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(Self::TOP);
        all.into_iter()
            .map(|(cgroup, ns)| Culprit {
                cgroup,
                wait_us: ns / 1000,
                share: ns as f64 / total as f64,
            })
            .collect()
    }
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
                    runq_hist: None,
                    conn_out: 0,
                    conn_out_per_s: 0.0,
                    psi: None,
                    throttling: None,
                    culprits: Vec::new(),
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
    fn a_window_sums_the_histograms_of_its_span_and_lets_older_ones_go() {
        let ms = Duration::from_millis;
        let span = ms(1000);
        let quiet = RunqHist::from_waits_ns([35_000; 50]);
        let one_slow = RunqHist::from_waits_ns(
            std::iter::once(2_000_000).chain(std::iter::repeat_n(35_000, 49)),
        );
        // One interval with one 2 ms wake-up among 50: its p99 is 2 ms.
        assert!(one_slow.stats().p99_us >= 1900, "{:?}", one_slow.stats());
        let mut w = RunqWindow::default();
        w.push(ms(0), &one_slow, span);
        for i in 1..10 {
            w.push(ms(100 * i), &quiet, span);
        }
        // Ten intervals, 500 waits, one of them slow: under 1%.
        assert_eq!((w.intervals(), w.count()), (10, 500));
        let p99 = w.percentile_us(0.99);
        assert!((33..=37).contains(&p99), "p99 {p99}");
        assert_eq!(w.stats().p99_us, p99);
        assert!(w.stats().max_us >= 2000, "the slow one is still the max");
        // At 1 s the first interval is 1 s old: it leaves.
        w.push(ms(1000), &quiet, span);
        assert_eq!((w.intervals(), w.count()), (10, 500));
        assert!(w.stats().max_us < 100, "{:?}", w.stats());
        // Empty intervals count as intervals; a window of nothing reads 0.
        let mut e = RunqWindow::default();
        e.push(ms(0), &RunqHist::default(), span);
        assert_eq!((e.count(), e.percentile_us(0.99)), (0, 0));
        assert_eq!(e.stats(), RunqStats::default());
        // A span shorter than the interval keeps the newest one.
        let mut short = RunqWindow::default();
        short.push(ms(0), &quiet, ms(10));
        short.push(ms(100), &one_slow, ms(10));
        assert_eq!(short.intervals(), 1);
        assert_eq!(short.stats(), one_slow.stats());
    }

    #[test]
    fn a_histogram_is_sparse_in_bucket_order_and_its_json_is_pairs() {
        let h = RunqHist::from_waits_ns([500, 40_000, 40_100, 5_000_000_000]);
        let pairs: Vec<(usize, u64)> = h.iter().collect();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0], (0, 1));
        assert_eq!(pairs[1].1, 2);
        assert_eq!(pairs[2], (buckets::BUCKETS - 1, 1));
        assert_eq!(h.count(), 4);
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.starts_with("[[0,1],["), "{json}");
        assert_eq!(serde_json::from_str::<RunqHist>(&json).unwrap(), h);
        // Every value lies in its bucket.
        for v in [
            0u64,
            1023,
            1024,
            1500,
            40_000,
            1 << 31,
            (1 << 32) - 1,
            1 << 32,
        ] {
            let (lo, hi) = buckets::range(buckets::bucket(v));
            assert!(lo <= v && v < hi, "{v} in [{lo}, {hi})");
        }
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
