//! `/proc` readers: host pressure (`pressure/{cpu,memory,io}`) and the TCP
//! listen-queue counters of `net/netstat`.
//!
//! The root (`/proc`) is a parameter so tests run on fake trees.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use governor_engine::snapshot::PsiTotal;
use procfs_core::parse_pressure_record;

/// Where procfs is mounted.
pub const DEFAULT_ROOT: &str = "/proc";

/// A `/proc` problem, with the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcfsError {
    /// Reading a file failed (other than its being absent).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file does not have the expected content.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// `some avg10` of one pressure file each, in percent, and the file's
/// cumulative totals; `None` where the file does not exist (PSI disabled,
/// or an old kernel). No data is not zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiSome {
    /// `cpu some avg10`.
    pub cpu: Option<f64>,
    /// `memory some avg10`.
    pub memory: Option<f64>,
    /// `io some avg10`.
    pub io: Option<f64>,
    /// `total=` of the cpu file's lines.
    pub cpu_total: Option<PsiTotal>,
    /// `total=` of the memory file's lines.
    pub memory_total: Option<PsiTotal>,
    /// `total=` of the io file's lines.
    pub io_total: Option<PsiTotal>,
}

impl PsiSome {
    /// From the readings of the cpu, memory and io files, in that order.
    pub fn of(files: [Option<PsiFile>; 3]) -> Self {
        let [cpu, memory, io] = files;
        Self {
            cpu: cpu.map(|f| f.some_avg10),
            memory: memory.map(|f| f.some_avg10),
            io: io.map(|f| f.some_avg10),
            cpu_total: cpu.map(|f| f.total),
            memory_total: memory.map(|f| f.total),
            io_total: io.map(|f| f.total),
        }
    }

    /// The snapshot's [`Psi`](governor_engine::snapshot::Psi), if all three were read.
    pub fn complete(&self) -> Option<governor_engine::snapshot::Psi> {
        Some(governor_engine::snapshot::Psi {
            cpu_some_avg10: self.cpu?,
            memory_some_avg10: self.memory?,
            io_some_avg10: self.io?,
            cpu_total: self.cpu_total,
            memory_total: self.memory_total,
            io_total: self.io_total,
        })
    }

    /// True if no pressure file was found at all.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.io.is_none()
    }
}

/// One pressure file: its `some avg10` (percent) and the cumulative stall
/// times of its lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiFile {
    /// `some avg10`, percent.
    pub some_avg10: f64,
    /// `total=` of the `some` line and of the `full` line if there is one.
    pub total: PsiTotal,
}

/// Reads a PSI file (`/proc/pressure/cpu`, `<cgroup>/memory.pressure`, …).
/// `Ok(None)` if the file does not exist (or its cgroup was removed while it
/// was read).
pub fn read_psi(path: &Path) -> Result<Option<PsiFile>, ProcfsError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    parse_psi(&text)
        .map(Some)
        .map_err(|reason| ProcfsError::Parse {
            path: path.to_path_buf(),
            reason,
        })
}

/// A PSI file's text: the `some` line is required, the `full` line
/// optional (kernels before 5.13 have none in the cpu file, which
/// `procfs_core`'s whole-file parsers reject, so each line is picked here
/// and parsed with its record parser).
pub fn parse_psi(text: &str) -> Result<PsiFile, String> {
    let line = |kind: &str| text.lines().find(|l| l.starts_with(kind));
    let some = line("some ").ok_or_else(|| "no `some` line".to_owned())?;
    let record =
        parse_pressure_record(some).map_err(|e| format!("bad `some` line {some:?}: {e}"))?;
    let full = line("full ")
        .map(|l| {
            parse_pressure_record(l)
                .map(|r| r.total)
                .map_err(|e| format!("bad `full` line {l:?}: {e}"))
        })
        .transpose()?;
    Ok(PsiFile {
        // The kernel prints two decimals; procfs-core keeps an f32, so
        // round back to them rather than report 0.25999999046 for 0.26.
        some_avg10: (f64::from(record.avg10) * 100.0).round() / 100.0,
        total: PsiTotal {
            some_us: record.total,
            full_us: full,
        },
    })
}

/// `some avg10` of a PSI file's text, or why it has none. Public for the
/// fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn some_avg10(text: &str) -> Result<f64, String> {
    parse_psi(text).map(|f| f.some_avg10)
}

/// The host's pressure files, `<proc_root>/pressure/{cpu,memory,io}`, kept
/// open: a read is one `pread` from the start of each (procfs prints the
/// file anew), not an open, a read and a close of three files every tick.
/// A file that is absent (PSI disabled, or an old kernel) is looked for
/// again at the next read.
#[derive(Debug)]
pub struct HostPsi {
    dir: PathBuf,
    files: [Option<fs::File>; 3],
    buf: Vec<u8>,
}

impl HostPsi {
    const NAMES: [&str; 3] = ["cpu", "memory", "io"];

    /// The pressure files under `proc_root` (opened at the first read).
    pub fn new(proc_root: &Path) -> Self {
        Self {
            dir: proc_root.join("pressure"),
            files: Default::default(),
            buf: Vec::with_capacity(512),
        }
    }

    /// `some avg10` and the totals of each file now.
    pub fn read(&mut self) -> Result<PsiSome, ProcfsError> {
        let mut out = [None; 3];
        for (i, name) in Self::NAMES.iter().enumerate() {
            out[i] = self.read_one(i).map_err(|e| e.at(self.dir.join(name)))?;
        }
        Ok(PsiSome::of(out))
    }

    /// File `i`'s `some avg10` and totals.
    fn read_one(&mut self, i: usize) -> Result<Option<PsiFile>, Fail> {
        use std::os::unix::fs::FileExt as _;
        let file = match &self.files[i] {
            Some(f) => f,
            None => match fs::File::open(self.dir.join(Self::NAMES[i])) {
                Ok(f) => self.files[i].insert(f),
                Err(e) if is_gone(&e) => return Ok(None),
                Err(source) => return Err(Fail::Read(source)),
            },
        };
        self.buf.clear();
        let mut chunk = [0u8; 512];
        loop {
            match file.read_at(&mut chunk, self.buf.len() as u64) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_gone(&e) => {
                    self.files[i] = None;
                    return Ok(None);
                }
                Err(source) => {
                    // Opened again at the next read.
                    self.files[i] = None;
                    return Err(Fail::Read(source));
                }
            }
        }
        let text = std::str::from_utf8(&self.buf).map_err(|e| Fail::Parse(e.to_string()))?;
        parse_psi(text).map(Some).map_err(Fail::Parse)
    }
}

/// Why [`HostPsi::read_one`] failed, before the path is attached.
enum Fail {
    Read(io::Error),
    Parse(String),
}

impl Fail {
    fn at(self, path: PathBuf) -> ProcfsError {
        match self {
            Fail::Read(source) => ProcfsError::Read { path, source },
            Fail::Parse(reason) => ProcfsError::Parse { path, reason },
        }
    }
}

/// Host-wide TCP listen-queue counters from `TcpExt` of `/proc/net/netstat`
/// (cumulative since boot, per network namespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenCounters {
    /// `ListenOverflows`: SYNs or final ACKs dropped because an accept queue was full.
    pub listen_overflows: u64,
    /// `ListenDrops`: every drop on a listener, overflows included.
    pub listen_drops: u64,
}

impl ListenCounters {
    /// The growth since `earlier`. A counter that went backwards (another
    /// network namespace's file, a counter reset) counts as no growth.
    pub fn since(&self, earlier: &ListenCounters) -> ListenCounters {
        ListenCounters {
            listen_overflows: self
                .listen_overflows
                .saturating_sub(earlier.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
        }
    }
}

/// Reads `ListenOverflows` and `ListenDrops` from `<proc_root>/net/netstat`.
///
/// `/proc/net` links to `/proc/self/net`: the network namespace of the
/// process's main thread. A thread that has `setns`'d into another namespace
/// reads that one by passing `/proc/thread-self` as `proc_root`.
///
/// procfs-core has no parser for this file, so it is parsed here: pairs of
/// `TcpExt:` lines, names then values.
pub fn listen_counters(proc_root: &Path) -> Result<ListenCounters, ProcfsError> {
    let path = proc_root.join("net/netstat");
    let text = fs::read_to_string(&path).map_err(|source| ProcfsError::Read {
        path: path.clone(),
        source,
    })?;
    parse_listen_counters(&text).map_err(|reason| ProcfsError::Parse { path, reason })
}

/// `ListenOverflows` and `ListenDrops` of `net/netstat`'s text. Public for
/// the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn parse_listen_counters(text: &str) -> Result<ListenCounters, String> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = match (lines.next(), lines.next()) {
        (Some(n), Some(v)) => (n, v),
        _ => return Err("no pair of TcpExt: lines".to_owned()),
    };
    let names: Vec<_> = names.split_whitespace().skip(1).collect();
    let values: Vec<_> = values.split_whitespace().skip(1).collect();
    if names.len() != values.len() {
        return Err(format!(
            "TcpExt has {} names but {} values",
            names.len(),
            values.len()
        ));
    }
    let get = |key: &str| -> Result<u64, String> {
        let i = names
            .iter()
            .position(|n| *n == key)
            .ok_or_else(|| format!("TcpExt has no {key}"))?;
        values[i]
            .parse()
            .map_err(|e| format!("TcpExt {key} = {:?}: {e}", values[i]))
    };
    Ok(ListenCounters {
        listen_overflows: get("ListenOverflows")?,
        listen_drops: get("ListenDrops")?,
    })
}

/// Reads a file; `None` if it (or its directory) does not exist. `ENODEV` is
/// what reading a file of a just-removed cgroup gives, so it means absent too.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, ProcfsError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(source) => Err(ProcfsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// True for the errors that mean "this file or its cgroup is not there".
pub(crate) fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // From a 6.18 host; 5.10 lacks the `full` line in cpu.
    const CPU: &str = "some avg10=0.26 avg60=1.80 avg300=1.78 total=11626006\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
    const MEM_510: &str = "some avg10=0.50 avg60=0.00 avg300=0.00 total=12\nfull avg10=0.25 avg60=0.00 avg300=0.00 total=6\n";
    const IO_NO_FULL: &str = "some avg10=7.00 avg60=0.00 avg300=0.00 total=99\n";

    const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPHPHits\n\
TcpExt: 0 0 42 45 7\n\
IpExt: InNoRoutes InTruncatedPkts\n\
IpExt: 0 0\n";

    fn fake_proc(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn host_psi_reads_some_avg10() {
        let d = fake_proc(&[
            ("pressure/cpu", CPU),
            ("pressure/memory", MEM_510),
            ("pressure/io", IO_NO_FULL),
        ]);
        let psi = HostPsi::new(d.path()).read().unwrap();
        assert_eq!(psi.cpu, Some(0.26));
        assert_eq!(psi.memory, Some(0.5));
        assert_eq!(psi.io, Some(7.0));
        let full = psi.complete().unwrap();
        assert_eq!(full.cpu_some_avg10, 0.26);
        assert_eq!(full.io_some_avg10, 7.0);
    }

    #[test]
    fn missing_pressure_is_none_not_zero() {
        let d = fake_proc(&[("pressure/cpu", CPU)]);
        let psi = HostPsi::new(d.path()).read().unwrap();
        assert_eq!(psi.cpu, Some(0.26));
        assert_eq!(psi.memory, None);
        assert_eq!(psi.complete(), None);
        let empty = fake_proc(&[]);
        assert!(HostPsi::new(empty.path()).read().unwrap().is_empty());
    }

    #[test]
    fn pressure_totals_are_read_from_both_lines_and_full_may_be_absent() {
        let d = fake_proc(&[
            ("pressure/cpu", CPU),
            ("pressure/memory", MEM_510),
            ("pressure/io", IO_NO_FULL),
        ]);
        let psi = HostPsi::new(d.path()).read().unwrap();
        let total = |some_us, full_us| Some(PsiTotal { some_us, full_us });
        assert_eq!(psi.cpu_total, total(11_626_006, Some(0)));
        assert_eq!(psi.memory_total, total(12, Some(6)));
        assert_eq!(psi.io_total, total(99, None), "no `full` line: None, not 0");
        let full = psi.complete().unwrap();
        assert_eq!(full.memory_total, total(12, Some(6)));
        assert_eq!(full.io_total, total(99, None));
        // A `full` line that does not parse is an error, not a missing line.
        let bad = "some avg10=0 avg60=0 avg300=0 total=5\nfull avg10=0 total=x\n";
        assert!(parse_psi(bad).unwrap_err().contains("`full`"));
    }

    #[test]
    fn kept_open_pressure_files_are_read_anew_and_found_when_they_appear() {
        let d = fake_proc(&[("pressure/cpu", CPU)]);
        let mut psi = HostPsi::new(d.path());
        assert_eq!(psi.read().unwrap().cpu, Some(0.26));
        assert_eq!(psi.read().unwrap().memory, None);
        // Rewritten in place (same file): the open handle reads the new text.
        fs::write(
            d.path().join("pressure/cpu"),
            "some avg10=12.50 avg60=1.80 avg300=1.78 total=11626006\n",
        )
        .unwrap();
        fs::write(d.path().join("pressure/memory"), MEM_510).unwrap();
        let now = psi.read().unwrap();
        assert_eq!(now.cpu, Some(12.5));
        assert_eq!(now.memory, Some(0.5), "a file that appeared is read");
        // Longer than one read's chunk: read to its end.
        let long = format!(
            "{}some avg10=3.00 avg60=0 avg300=0 total=1\n",
            "x".repeat(700) + "\n"
        );
        fs::write(d.path().join("pressure/cpu"), long).unwrap();
        assert_eq!(psi.read().unwrap().cpu, Some(3.0));
    }

    #[test]
    fn garbage_pressure_is_an_error_naming_the_file() {
        let d = fake_proc(&[("pressure/cpu", "some avg10=x avg60=0 avg300=0 total=0\n")]);
        let err = HostPsi::new(d.path()).read().unwrap_err();
        assert!(err.to_string().contains("pressure/cpu"), "{err}");
        let d = fake_proc(&[(
            "pressure/cpu",
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )]);
        assert!(matches!(
            HostPsi::new(d.path()).read(),
            Err(ProcfsError::Parse { .. })
        ));
    }

    #[test]
    fn netstat_listen_counters() {
        let d = fake_proc(&[("net/netstat", NETSTAT)]);
        let c = listen_counters(d.path()).unwrap();
        assert_eq!(
            c,
            ListenCounters {
                listen_overflows: 42,
                listen_drops: 45
            }
        );
        let earlier = ListenCounters {
            listen_overflows: 40,
            listen_drops: 50,
        };
        assert_eq!(
            c.since(&earlier),
            ListenCounters {
                listen_overflows: 2,
                listen_drops: 0
            }
        );
    }

    #[test]
    fn netstat_errors_name_file_and_counter() {
        let d = fake_proc(&[("net/netstat", "TcpExt: ListenDrops\nTcpExt: 3\n")]);
        let err = listen_counters(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("net/netstat") && err.contains("ListenOverflows"),
            "{err}"
        );
        let d = fake_proc(&[(
            "net/netstat",
            "TcpExt: ListenOverflows ListenDrops\nTcpExt: 3\n",
        )]);
        assert!(listen_counters(d.path()).is_err());
        let d = fake_proc(&[]);
        assert!(matches!(
            listen_counters(d.path()),
            Err(ProcfsError::Read { .. })
        ));
    }

    #[test]
    fn reads_this_hosts_netstat() {
        // /proc/net/netstat has had both counters since 2.6; any Linux has them.
        listen_counters(Path::new(DEFAULT_ROOT)).unwrap();
    }
}
