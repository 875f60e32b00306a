//! Run-queue waits per process, from the kernel's own per-task accounting:
//! `/proc/PID/task/TID/schedstat` (`sum_exec_runtime run_delay pcount`),
//! summed over each process's threads, differenced between two samples.
//!
//! What this gives is each process's total wait and the number of times its
//! threads got a CPU in the interval (so the mean wait per run), not a
//! distribution: schedstat keeps sums, not waits. It costs nothing between
//! samples (the scheduler keeps these counters whatever we do) and one read
//! per thread per sample, measured by `governor observe --processes` itself.
//!
//! The cgroup of each process is the `0::` line of `/proc/PID/cgroup`.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use procfs_core::{FromRead as _, process::Schedstat};
use serde::Serialize;

use governor_engine::snapshot::CgroupPath;

/// One process's counters at a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCounters {
    /// Its pid.
    pub pid: u32,
    /// `comm` of its main thread.
    pub comm: String,
    /// Its cgroup (cgroup2 path), if it could be read.
    pub cgroup: Option<String>,
    /// Nanoseconds its threads waited on a run queue, since each started.
    pub run_delay_ns: u64,
    /// Times its threads were given a CPU.
    pub runs: u64,
    /// Threads read.
    pub threads: u32,
}

/// One process's waits over an interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessWaits {
    /// Its pid.
    pub pid: u32,
    /// Its main thread's `comm`.
    pub comm: String,
    /// Its cgroup.
    pub cgroup: Option<String>,
    /// Microseconds its threads waited on a run queue in the interval.
    pub wait_us: u64,
    /// Times its threads got a CPU in the interval.
    pub runs: u64,
    /// `wait_us / runs`, microseconds.
    pub mean_wait_us: f64,
    /// Share of one CPU's time spent waiting (`wait / interval`): above 1
    /// when several of its threads wait at once.
    pub waiting_share: f64,
    /// Waits the scheduler probes measured for it in the interval, and
    /// their p99 in microseconds (`None` without per-process probes:
    /// `observe --processes` as non-root, or probes that did not load).
    pub probe_waits: Option<u64>,
    /// See `probe_waits`.
    pub p99_us: Option<u64>,
}

/// Adds the probes' per-process histograms (tgid → counts per bucket,
/// taken over the same interval) to `rows`: each row's wait count and p99.
/// A row the probes have no waits for shows 0 waits and no p99.
pub fn add_percentiles(rows: &mut [ProcessWaits], hists: &HashMap<u32, Vec<u64>>) {
    for r in rows {
        let stats = hists
            .get(&r.pid)
            .map(|h| governor_engine::snapshot::runq_stats(h))
            .unwrap_or_default();
        r.probe_waits = Some(stats.count);
        r.p99_us = (stats.count > 0).then_some(stats.p99_us);
    }
}

/// Reads processes' counters under a `/proc` root.
#[derive(Debug, Clone)]
pub struct ProcessReader {
    proc_root: PathBuf,
}

impl Default for ProcessReader {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcessReader {
    /// A reader of `proc_root` (`/proc`, or a fake tree in tests).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
        }
    }

    /// Every process's counters, or only those whose cgroup is within one
    /// of `within` (all if empty). Processes that exit while being read are
    /// left out.
    pub fn read(&self, within: &[CgroupPath]) -> Vec<ProcessCounters> {
        let Ok(dir) = fs::read_dir(&self.proc_root) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let base = entry.path();
            let cgroup = cgroup_of(&base);
            if !within.is_empty() {
                let inside = cgroup
                    .as_deref()
                    .and_then(|c| CgroupPath::new(c).ok())
                    .is_some_and(|c| crate::sense::cgroupfs::within_any(&c, within));
                if !inside {
                    continue;
                }
            }
            if let Some(c) = read_process(&base, pid, cgroup) {
                out.push(c);
            }
        }
        out
    }
}

fn cgroup_of(base: &Path) -> Option<String> {
    let text = fs::read_to_string(base.join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

fn read_process(base: &Path, pid: u32, cgroup: Option<String>) -> Option<ProcessCounters> {
    let comm = fs::read_to_string(base.join("comm")).ok()?;
    let mut c = ProcessCounters {
        pid,
        comm: comm.trim_end().to_owned(),
        cgroup,
        run_delay_ns: 0,
        runs: 0,
        threads: 0,
    };
    for t in fs::read_dir(base.join("task")).ok()?.flatten() {
        let Ok(bytes) = fs::read(t.path().join("schedstat")) else {
            continue;
        };
        let Ok(s) = Schedstat::from_read(bytes.as_slice()) else {
            continue;
        };
        c.run_delay_ns = c.run_delay_ns.saturating_add(s.run_delay);
        c.runs = c.runs.saturating_add(s.pcount);
        c.threads += 1;
    }
    (c.threads > 0).then_some(c)
}

/// Differences successive samples into each process's waits.
#[derive(Debug, Default)]
pub struct ProcessTable {
    last: HashMap<u32, ProcessCounters>,
    at: Option<Instant>,
}

impl ProcessTable {
    /// Takes the sample `now` read at `at`; returns the `top` processes by
    /// wait since the previous sample (nothing at the first). A process
    /// first seen is measured from its next sample; one whose sum fell (a
    /// thread exited, or the pid was reused) starts again.
    pub fn update(
        &mut self,
        now: Vec<ProcessCounters>,
        at: Instant,
        top: usize,
    ) -> Vec<ProcessWaits> {
        let interval = self.at.map(|t| at.saturating_duration_since(t));
        let mut rows = Vec::new();
        let mut next = HashMap::with_capacity(now.len());
        for c in now {
            if let (Some(prev), Some(interval)) = (self.last.get(&c.pid), interval)
                && prev.comm == c.comm
                && c.run_delay_ns >= prev.run_delay_ns
                && c.runs >= prev.runs
            {
                let wait_ns = c.run_delay_ns - prev.run_delay_ns;
                let runs = c.runs - prev.runs;
                if wait_ns > 0 {
                    rows.push(waits(&c, wait_ns, runs, interval));
                }
            }
            next.insert(c.pid, c);
        }
        self.last = next;
        self.at = Some(at);
        rows.sort_by(|a, b| b.wait_us.cmp(&a.wait_us).then(a.pid.cmp(&b.pid)));
        rows.truncate(top);
        rows
    }
}

fn waits(c: &ProcessCounters, wait_ns: u64, runs: u64, interval: Duration) -> ProcessWaits {
    let secs = interval.as_secs_f64();
    ProcessWaits {
        pid: c.pid,
        comm: c.comm.clone(),
        cgroup: c.cgroup.clone(),
        wait_us: wait_ns / 1000,
        runs,
        mean_wait_us: if runs == 0 {
            0.0
        } else {
            wait_ns as f64 / runs as f64 / 1000.0
        },
        waiting_share: if secs > 0.0 {
            wait_ns as f64 / 1e9 / secs
        } else {
            0.0
        },
        probe_waits: None,
        p99_us: None,
    }
}

/// The table `governor observe --processes` prints.
pub fn table(
    rows: &[ProcessWaits],
    interval: Duration,
    read_cost: Duration,
    read: usize,
    probes: bool,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "top {} processes by run-queue wait over {:.2}s  (from /proc/PID/task/*/schedstat: {read} processes read in {:.1} ms)",
        rows.len(),
        interval.as_secs_f64(),
        read_cost.as_secs_f64() * 1000.0
    );
    if probes {
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:>10} {:>8} {:>9} {:>7} {:>8} {:>9}  cgroup",
            "pid", "comm", "wait_us", "runs", "mean_us", "share", "waits", "p99_us"
        );
    } else {
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:>10} {:>8} {:>9} {:>7}  cgroup",
            "pid", "comm", "wait_us", "runs", "mean_us", "share"
        );
    }
    for r in rows {
        let probe_cols = if probes {
            format!(
                " {:>8} {:>9}",
                r.probe_waits.map_or("-".to_owned(), |n| n.to_string()),
                r.p99_us.map_or("-".to_owned(), |n| n.to_string())
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>8} {:<16.16} {:>10} {:>8} {:>9.1} {:>6.1}%{probe_cols}  {}",
            r.pid,
            r.comm,
            r.wait_us,
            r.runs,
            r.mean_wait_us,
            r.waiting_share * 100.0,
            r.cgroup.as_deref().unwrap_or("?")
        );
    }
    out
}

/// One JSON line: `{"interval_ms":…, "read_ms":…, "processes":[…]}`.
pub fn json_line(
    rows: &[ProcessWaits],
    interval: Duration,
    read_cost: Duration,
    read: usize,
    probes: bool,
) -> String {
    serde_json::json!({
        "interval_ms": interval.as_millis() as u64,
        "read_ms": read_cost.as_secs_f64() * 1000.0,
        "read": read,
        "source": if probes {
            "schedstat+probes"
        } else {
            "schedstat"
        },
        "processes": rows,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn fake(root: &Path, pid: u32, comm: &str, cgroup: &str, threads: &[(u64, u64)]) {
        write(root, &format!("{pid}/comm"), &format!("{comm}\n"));
        write(root, &format!("{pid}/cgroup"), &format!("0::{cgroup}\n"));
        for (i, (delay, runs)) in threads.iter().enumerate() {
            write(
                root,
                &format!("{pid}/task/{}/schedstat", pid + i as u32),
                &format!("123456 {delay} {runs}\n"),
            );
        }
    }

    #[test]
    fn waits_are_summed_over_threads_and_differenced_between_samples() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake(
            root,
            10,
            "api",
            "/workload/api",
            &[(1_000_000, 10), (2_000_000, 20)],
        );
        fake(root, 20, "batch", "/workload/batch", &[(5_000_000, 5)]);
        write(root, "self/comm", "x\n");
        let reader = ProcessReader::new(root);
        let mut table = ProcessTable::default();
        let t0 = Instant::now();
        let first = reader.read(&[]);
        assert_eq!(first.len(), 2, "{first:?}");
        let api = first.iter().find(|c| c.pid == 10).unwrap();
        assert_eq!(
            (api.run_delay_ns, api.runs, api.threads),
            (3_000_000, 30, 2)
        );
        assert!(
            table.update(first, t0, 10).is_empty(),
            "nothing at the first sample"
        );

        // api's threads wait 4 ms more over 40 runs; batch 1 ms over 2.
        fake(
            root,
            10,
            "api",
            "/workload/api",
            &[(3_000_000, 30), (4_000_000, 50)],
        );
        fake(root, 20, "batch", "/workload/batch", &[(6_000_000, 7)]);
        let rows = table.update(reader.read(&[]), t0 + Duration::from_secs(2), 10);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].pid, rows[0].wait_us, rows[0].runs), (10, 4000, 50));
        assert!((rows[0].mean_wait_us - 80.0).abs() < 1e-9);
        assert!((rows[0].waiting_share - 0.002).abs() < 1e-9);
        assert_eq!((rows[1].pid, rows[1].wait_us, rows[1].runs), (20, 1000, 2));
        assert_eq!(rows[1].cgroup.as_deref(), Some("/workload/batch"));

        // Only a subtree; and a pid reused by another program starts again.
        fake(root, 20, "other", "/workload/batch", &[(7_000_000, 9)]);
        let within = [CgroupPath::new("/workload/batch").unwrap()];
        let only = reader.read(&within);
        assert_eq!(only.iter().map(|c| c.pid).collect::<Vec<_>>(), [20]);
        assert!(
            table
                .update(only, t0 + Duration::from_secs(3), 10)
                .is_empty()
        );
        let text = table_of_one();
        assert!(
            text.contains("api") && text.contains("/workload/api"),
            "{text}"
        );
    }

    fn row_of_one() -> ProcessWaits {
        ProcessWaits {
            pid: 10,
            comm: "api".into(),
            cgroup: Some("/workload/api".into()),
            wait_us: 4000,
            runs: 50,
            mean_wait_us: 80.0,
            waiting_share: 0.002,
            probe_waits: None,
            p99_us: None,
        }
    }

    fn table_of_one() -> String {
        table(
            &[row_of_one()],
            Duration::from_secs(1),
            Duration::from_millis(3),
            2,
            false,
        )
    }

    /// The probes' histogram of a process gives its row a count and a p99
    /// (the engine's percentile of the buckets); a process they have no
    /// waits for gets 0 and no p99; the table and JSON then show both.
    #[test]
    fn the_probes_histograms_give_each_row_its_waits_and_p99() {
        use governor_engine::snapshot::buckets;
        let mut counts = vec![0u64; buckets::BUCKETS];
        counts[buckets::bucket(2_000)] = 98;
        counts[buckets::bucket(5_000_000)] = 2;
        let hists = HashMap::from([(10u32, counts)]);
        let mut rows = vec![
            row_of_one(),
            ProcessWaits {
                pid: 11,
                ..row_of_one()
            },
        ];
        add_percentiles(&mut rows, &hists);
        assert_eq!(rows[0].probe_waits, Some(100));
        let p99 = rows[0].p99_us.expect("a p99");
        assert!((4_700..=5_300).contains(&p99), "p99 {p99} µs of 5 ms waits");
        assert_eq!((rows[1].probe_waits, rows[1].p99_us), (Some(0), None));
        let text = table(
            &rows,
            Duration::from_secs(1),
            Duration::from_millis(3),
            2,
            true,
        );
        assert!(
            text.contains("p99_us") && text.contains(&p99.to_string()),
            "{text}"
        );
        let json = json_line(
            &rows,
            Duration::from_secs(1),
            Duration::from_millis(3),
            2,
            true,
        );
        assert!(json.contains("\"source\":\"schedstat+probes\""), "{json}");
        assert!(json.contains(&format!("\"p99_us\":{p99}")), "{json}");
    }

    #[test]
    fn this_host_is_read() {
        let rows = ProcessReader::default().read(&[]);
        let me = rows.iter().find(|c| c.pid == std::process::id());
        assert!(
            me.is_some_and(|c| c.threads >= 1),
            "our own process is read"
        );
    }
}
