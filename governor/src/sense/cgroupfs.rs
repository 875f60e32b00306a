//! cgroupfs readers: where cgroup2 is mounted, which cgroup a BPF cgroup id
//! names, and a cgroup's pressure and CPU throttling.
//!
//! Two layouts exist (see `platform-facts.md`):
//! - unified: cgroup2 at `/sys/fs/cgroup`, every controller there;
//! - hybrid: cgroup v1 controllers at `/sys/fs/cgroup/<controller>`, cgroup2
//!   (no controllers, but the ids BPF sees and the PSI files) at
//!   `/sys/fs/cgroup/unified`. CPU throttling is then read from the v1 cpu
//!   controller's directory of the same path, as systemd mirrors its units
//!   into both hierarchies.
//!
//! A cgroup that is removed while it is read is not an error: the readers
//! return `None`, as for a cgroup that does not exist.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
};

use super::procfs::{self, ProcfsError, PsiSome, is_gone, read_optional};
use governor_engine::snapshot::{CgroupPath, Throttling};

/// Where cgroup hierarchies are mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// A cgroupfs problem, with the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupfsError {
    /// Neither the root nor `<root>/unified` is a cgroup2 hierarchy.
    #[error(
        "no cgroup2 hierarchy at {root} or {root}/unified (no cgroup.controllers in either); mount one with `mount -t cgroup2 none <dir>`"
    )]
    NoCgroup2 {
        /// The root that was searched.
        root: PathBuf,
    },
    /// Reading a file or listing a directory failed (other than its being absent).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
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

impl From<ProcfsError> for CgroupfsError {
    fn from(e: ProcfsError) -> Self {
        match e {
            ProcfsError::Read { path, source } => Self::Read { path, source },
            ProcfsError::Parse { path, reason } => Self::Parse { path, reason },
        }
    }
}

/// How the cgroup hierarchies are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cgroup2 only, at the root.
    Unified,
    /// v1 controllers beside a controller-less cgroup2 at `<root>/unified`.
    Hybrid,
}

/// The cgroup hierarchies of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFs {
    cgroup2: PathBuf,
    cpu_v1: Option<PathBuf>,
    layout: Layout,
}

/// True if `dir` is the top or any directory of a cgroup2 hierarchy: every
/// cgroup2 directory has `cgroup.controllers`, v1 and tmpfs ones do not.
pub fn is_cgroup2(dir: &Path) -> bool {
    dir.join("cgroup.controllers").is_file()
}

impl CgroupFs {
    /// Finds cgroup2 under `root` (usually [`DEFAULT_ROOT`]): `root` itself if
    /// it is cgroup2, else `root/unified`. On a hybrid host the v1 cpu
    /// controller is taken from `root/cpu` if it has `cpu.stat`.
    pub fn discover(root: &Path) -> Result<Self, CgroupfsError> {
        if is_cgroup2(root) {
            return Ok(Self::new(root.to_path_buf(), None, Layout::Unified));
        }
        let unified = root.join("unified");
        if !is_cgroup2(&unified) {
            return Err(CgroupfsError::NoCgroup2 {
                root: root.to_path_buf(),
            });
        }
        let cpu = root.join("cpu");
        let cpu_v1 = cpu.join("cpu.stat").is_file().then_some(cpu);
        Ok(Self::new(unified, cpu_v1, Layout::Hybrid))
    }

    /// Uses the given mounts: cgroup2 at `cgroup2`, and optionally the v1 cpu
    /// controller at `cpu_v1`.
    pub fn new(cgroup2: PathBuf, cpu_v1: Option<PathBuf>, layout: Layout) -> Self {
        Self {
            cgroup2,
            cpu_v1,
            layout,
        }
    }

    /// The cgroup2 mount that [`CgroupPath`]s are relative to.
    pub fn cgroup2_root(&self) -> &Path {
        &self.cgroup2
    }

    /// The v1 cpu controller's mount, on hybrid hosts.
    pub fn cpu_v1_root(&self) -> Option<&Path> {
        self.cpu_v1.as_deref()
    }

    /// The layout found.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The cgroup2 directory of `path`.
    pub fn dir(&self, path: &CgroupPath) -> PathBuf {
        self.cgroup2.join(path.relative())
    }

    /// The cgroup2 id of `path` (its directory's inode number, which is what
    /// `bpf_get_current_cgroup_id` returns), or `None` if it does not exist.
    pub fn id_of(&self, path: &CgroupPath) -> Result<Option<u64>, CgroupfsError> {
        let dir = self.dir(path);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Some(m.ino())),
            Ok(_) => Ok(None),
            Err(e) if is_gone(&e) => Ok(None),
            Err(source) => Err(CgroupfsError::Read { path: dir, source }),
        }
    }

    /// `some avg10` and the totals of the cgroup's `cpu.pressure`,
    /// `memory.pressure` and `io.pressure`; each `None` where the file is absent. `Ok(None)` if none
    /// is there (the cgroup does not exist, or the kernel has no PSI).
    pub fn psi(&self, path: &CgroupPath) -> Result<Option<PsiSome>, CgroupfsError> {
        let dir = self.dir(path);
        let psi = PsiSome::of([
            procfs::read_psi(&dir.join("cpu.pressure"))?,
            procfs::read_psi(&dir.join("memory.pressure"))?,
            procfs::read_psi(&dir.join("io.pressure"))?,
        ]);
        Ok((!psi.is_empty()).then_some(psi))
    }

    /// The cgroup's cumulative CPU throttling counters: from cgroup2
    /// `cpu.stat` if it has them (the cpu controller is enabled for the
    /// cgroup), else from the v1 cpu controller's `cpu.stat` of the same path.
    /// `Ok(None)` if neither has them, or the cgroup does not exist.
    pub fn cpu_throttle(&self, path: &CgroupPath) -> Result<Option<CpuThrottle>, CgroupfsError> {
        let file = self.dir(path).join("cpu.stat");
        if let Some(text) = read_optional(&file)? {
            let stat = parse_flat_keyed(&text, &file)?;
            if let (Some(&nr), Some(&us)) = (stat.get("nr_throttled"), stat.get("throttled_usec")) {
                return Ok(Some(CpuThrottle {
                    nr_periods: stat.get("nr_periods").copied(),
                    nr_throttled: nr,
                    throttled_us: us,
                    source: ThrottleSource::Cgroup2,
                }));
            }
        }
        let Some(v1) = &self.cpu_v1 else {
            return Ok(None);
        };
        let file = v1.join(path.relative()).join("cpu.stat");
        let Some(text) = read_optional(&file)? else {
            return Ok(None);
        };
        let stat = parse_flat_keyed(&text, &file)?;
        Ok(
            match (stat.get("nr_throttled"), stat.get("throttled_time")) {
                (Some(&nr), Some(&ns)) => Some(CpuThrottle {
                    nr_periods: stat.get("nr_periods").copied(),
                    nr_throttled: nr,
                    throttled_us: ns / 1000,
                    source: ThrottleSource::V1Cpu,
                }),
                _ => None,
            },
        )
    }

    /// Every cgroup of the cgroup2 hierarchy, the root included, as
    /// (id, path). Directories removed during the walk are skipped.
    pub fn walk(&self) -> Result<Vec<(u64, CgroupPath)>, CgroupfsError> {
        let root_id = fs::metadata(&self.cgroup2)
            .map_err(|source| CgroupfsError::Read {
                path: self.cgroup2.clone(),
                source,
            })?
            .ino();
        let mut out = vec![(root_id, CgroupPath::root())];
        let mut stack = vec![(self.cgroup2.clone(), CgroupPath::root())];
        while let Some((dir, cg)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if is_gone(&e) && cg != CgroupPath::root() => continue,
                Err(source) => return Err(CgroupfsError::Read { path: dir, source }),
            };
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) if is_gone(&e) => break,
                    Err(source) => return Err(CgroupfsError::Read { path: dir, source }),
                };
                // cgroupfs has no symlinks; a type that cannot be read means
                // the entry is going away.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    tracing::debug!(
                        "skipping cgroup with a non-UTF-8 name under {}",
                        dir.display()
                    );
                    continue;
                };
                let Ok(child) = CgroupPath::new(&format!("{}/{name}", cg.as_str())) else {
                    continue;
                };
                out.push((entry.ino(), child.clone()));
                stack.push((entry.path(), child));
            }
        }
        Ok(out)
    }
}

/// Which file CPU throttling was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleSource {
    /// cgroup2 `cpu.stat`: `nr_throttled`, `throttled_usec`.
    Cgroup2,
    /// The v1 cpu controller's `cpu.stat` (hybrid hosts): `nr_throttled`,
    /// `throttled_time` in nanoseconds.
    V1Cpu,
}

/// Cumulative CPU throttling counters of a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuThrottle {
    /// Enforcement periods elapsed (`nr_periods`), if given.
    pub nr_periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Time throttled, microseconds (converted from ns for [`ThrottleSource::V1Cpu`]).
    pub throttled_us: u64,
    /// Where the counters came from.
    pub source: ThrottleSource,
}

impl CpuThrottle {
    /// Throttling between `earlier` and `self`, the snapshot's per-interval
    /// figure. Counters that went backwards (the cgroup was recreated, or
    /// the source changed) count as no throttling.
    pub fn since(&self, earlier: &CpuThrottle) -> Throttling {
        if self.source != earlier.source {
            return Throttling::default();
        }
        Throttling {
            nr_throttled: self.nr_throttled.saturating_sub(earlier.nr_throttled),
            throttled_us: self.throttled_us.saturating_sub(earlier.throttled_us),
        }
    }
}

/// Parses a flat keyed file (`key value` per line), such as `cpu.stat`.
/// Public for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn parse_flat_keyed<'a>(
    text: &'a str,
    path: &Path,
) -> Result<HashMap<&'a str, u64>, CgroupfsError> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        let (Some(key), Some(value), None) = (it.next(), it.next(), it.next()) else {
            return Err(CgroupfsError::Parse {
                path: path.to_path_buf(),
                reason: format!("expected `key value`, found {line:?}"),
            });
        };
        let value = value.parse().map_err(|e| CgroupfsError::Parse {
            path: path.to_path_buf(),
            reason: format!("{key} = {value:?}: {e}"),
        })?;
        out.insert(key, value);
    }
    Ok(out)
}

/// True if `path` lies within one of `subtrees`; an empty filter admits all.
pub fn within_any(path: &CgroupPath, subtrees: &[CgroupPath]) -> bool {
    subtrees.is_empty() || subtrees.iter().any(|s| path.is_within(s))
}

/// cgroup2 id → path, built by walking the hierarchy and rebuilt when an id
/// is not found, so new cgroups appear and removed ones are dropped, and at
/// least every [`REWALK_EVERY`]: a renamed cgroup keeps its id, so only a
/// walk finds its new path.
///
/// Ids that are still unknown after a rebuild are remembered and do not
/// cause another walk: a cgroup that lived for less than a tick leaves its id
/// in the BPF maps for a while, and cgroup2 ids are never reused.
#[derive(Debug)]
pub struct CgroupIndex {
    fs: CgroupFs,
    by_id: HashMap<u64, CgroupPath>,
    unknown: HashSet<u64>,
    walks: u64,
    walked_at: Option<std::time::Instant>,
    rewalk_every: std::time::Duration,
}

/// Forget remembered unknown ids past this many, so the set stays small.
const MAX_UNKNOWN: usize = 4096;

/// How old the index's paths may get before a lookup walks again (a walk
/// of a thousand cgroups takes a few milliseconds).
pub const REWALK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl CgroupIndex {
    /// An empty index of `fs`'s cgroup2 hierarchy; the first lookup walks it.
    pub fn new(fs: CgroupFs) -> Self {
        Self {
            fs,
            by_id: HashMap::new(),
            unknown: HashSet::new(),
            walks: 0,
            walked_at: None,
            rewalk_every: REWALK_EVERY,
        }
    }

    /// Sets how old the paths may get before a lookup walks again
    /// (default [`REWALK_EVERY`]).
    pub fn with_rewalk_every(mut self, every: std::time::Duration) -> Self {
        self.rewalk_every = every;
        self
    }

    /// The hierarchies this index reads.
    pub fn cgroupfs(&self) -> &CgroupFs {
        &self.fs
    }

    /// Walks the hierarchy and replaces the map.
    pub fn rebuild(&mut self) -> Result<(), CgroupfsError> {
        self.by_id = self.fs.walk()?.into_iter().collect();
        self.walks += 1;
        self.walked_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// How many times the hierarchy was walked.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// The path of cgroup `id`, walking the hierarchy again if it is not
    /// known yet. `None` if it does not exist (any more).
    pub fn resolve(&mut self, id: u64) -> Result<Option<&CgroupPath>, CgroupfsError> {
        self.resolve_all([id])?;
        Ok(self.by_id.get(&id))
    }

    /// Paths of all `ids` that exist, with at most one walk for all of them.
    pub fn resolve_all(
        &mut self,
        ids: impl IntoIterator<Item = u64>,
    ) -> Result<HashMap<u64, CgroupPath>, CgroupfsError> {
        let ids: Vec<u64> = ids.into_iter().collect();
        let stale = self
            .walked_at
            .is_some_and(|at| at.elapsed() >= self.rewalk_every);
        if stale
            || ids
                .iter()
                .any(|id| !self.by_id.contains_key(id) && !self.unknown.contains(id))
        {
            self.rebuild()?;
            if self.unknown.len() > MAX_UNKNOWN {
                self.unknown.clear();
            }
            self.unknown
                .extend(ids.iter().filter(|id| !self.by_id.contains_key(id)));
        }
        Ok(ids
            .iter()
            .filter_map(|id| self.by_id.get(id).map(|p| (*id, p.clone())))
            .collect())
    }

    /// Known cgroups within `subtrees` (all if it is empty), as of the last walk.
    pub fn within<'a>(
        &'a self,
        subtrees: &'a [CgroupPath],
    ) -> impl Iterator<Item = (u64, &'a CgroupPath)> + 'a {
        self.by_id
            .iter()
            .filter(move |(_, p)| within_any(p, subtrees))
            .map(|(id, p)| (*id, p))
    }

    /// Number of cgroups known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True if no cgroup is known (before the first walk).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn p(s: &str) -> CgroupPath {
        CgroupPath::new(s).unwrap()
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    const PSI: &str = "some avg10=3.50 avg60=0.00 avg300=0.00 total=1\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=1\n";

    /// A pure cgroup2 tree: /, /a, /a/b, /c.
    fn unified() -> (tempfile::TempDir, CgroupFs) {
        let d = tempfile::tempdir().unwrap();
        for cg in ["", "a", "a/b", "c"] {
            write(
                &d.path().join(cg).join("cgroup.controllers"),
                "cpu io memory\n",
            );
        }
        let fs = CgroupFs::discover(d.path()).unwrap();
        (d, fs)
    }

    fn ino(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn discovers_unified_layout() {
        let (d, fs) = unified();
        assert_eq!(fs.layout(), Layout::Unified);
        assert_eq!(fs.cgroup2_root(), d.path());
        assert_eq!(fs.cpu_v1_root(), None);
    }

    #[test]
    fn discovers_hybrid_layout() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("unified/cgroup.controllers"), "");
        write(&d.path().join("cpu/cpu.stat"), "nr_periods 0\n");
        let fs = CgroupFs::discover(d.path()).unwrap();
        assert_eq!(fs.layout(), Layout::Hybrid);
        assert_eq!(fs.cgroup2_root(), d.path().join("unified"));
        assert_eq!(fs.cpu_v1_root(), Some(d.path().join("cpu").as_path()));
    }

    #[test]
    fn no_cgroup2_is_an_error_naming_the_root() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("cpu")).unwrap();
        let err = CgroupFs::discover(d.path()).unwrap_err();
        assert!(matches!(err, CgroupfsError::NoCgroup2 { .. }));
        assert!(err.to_string().contains(&d.path().display().to_string()));
    }

    #[test]
    fn walk_maps_inode_numbers_to_paths() {
        let (d, fs) = unified();
        let mut got = fs.walk().unwrap();
        got.sort_by(|a, b| a.1.cmp(&b.1));
        let want = vec![
            (ino(d.path()), p("/")),
            (ino(&d.path().join("a")), p("/a")),
            (ino(&d.path().join("a/b")), p("/a/b")),
            (ino(&d.path().join("c")), p("/c")),
        ];
        assert_eq!(got, want);
        assert_eq!(
            fs.id_of(&p("/a/b")).unwrap(),
            Some(ino(&d.path().join("a/b")))
        );
        assert_eq!(fs.id_of(&p("/nope")).unwrap(), None);
    }

    #[test]
    fn index_rebuilds_on_miss_and_drops_removed_cgroups() {
        let (d, fs) = unified();
        let mut idx = CgroupIndex::new(fs);
        let a = ino(&d.path().join("a"));
        assert_eq!(idx.resolve(a).unwrap(), Some(&p("/a")));
        assert_eq!(idx.walks(), 1);
        // A known id needs no walk.
        assert_eq!(idx.resolve(a).unwrap(), Some(&p("/a")));
        assert_eq!(idx.walks(), 1);

        // A new cgroup is found by walking again.
        fs::create_dir(d.path().join("c/new")).unwrap();
        let new = ino(&d.path().join("c/new"));
        assert_eq!(idx.resolve(new).unwrap(), Some(&p("/c/new")));
        assert_eq!(idx.walks(), 2);

        // A removed one is gone after the next walk.
        // (Create /d first: the fake tree's filesystem may reuse /a/b's inode
        // number, which cgroupfs never does.)
        fs::create_dir(d.path().join("d")).unwrap();
        let dd = ino(&d.path().join("d"));
        let b = ino(&d.path().join("a/b"));
        fs::remove_dir_all(d.path().join("a/b")).unwrap();
        let got = idx.resolve_all([dd, a]).unwrap();
        assert_eq!(got.get(&dd), Some(&p("/d")));
        assert_eq!(idx.walks(), 3);
        assert!(
            !idx.within(&[]).any(|(id, _)| id == b),
            "removed cgroup still indexed"
        );
        assert_eq!(idx.len(), 5, "/, /a, /c, /c/new, /d");
    }

    /// A renamed cgroup keeps its id: only a walk finds its new path. The
    /// index walked only on a miss, so it named the old path for ever.
    #[test]
    fn a_renamed_cgroup_is_found_at_its_new_path_by_the_next_rewalk() {
        let (d, fs) = unified();
        let mut idx = CgroupIndex::new(fs).with_rewalk_every(std::time::Duration::from_millis(50));
        let a = ino(&d.path().join("a"));
        assert_eq!(idx.resolve(a).unwrap(), Some(&p("/a")));
        fs::rename(d.path().join("a"), d.path().join("renamed")).unwrap();
        // Within the period the index answers from memory.
        assert_eq!(idx.resolve(a).unwrap(), Some(&p("/a")));
        assert_eq!(idx.walks(), 1);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(idx.resolve(a).unwrap(), Some(&p("/renamed")));
        assert_eq!(idx.walks(), 2);
        assert!(
            idx.within(&[p("/a")]).next().is_none(),
            "nothing is indexed under the old path"
        );
    }

    #[test]
    fn unknown_ids_do_not_walk_every_time() {
        let (_d, fs) = unified();
        let mut idx = CgroupIndex::new(fs);
        assert_eq!(idx.resolve(u64::MAX).unwrap(), None);
        assert_eq!(idx.resolve(u64::MAX).unwrap(), None);
        assert_eq!(idx.walks(), 1);
    }

    #[test]
    fn subtree_filter() {
        let (_d, fs) = unified();
        let mut idx = CgroupIndex::new(fs);
        idx.rebuild().unwrap();
        let mut got: Vec<_> = idx.within(&[p("/a")]).map(|(_, p)| p.clone()).collect();
        got.sort();
        assert_eq!(got, [p("/a"), p("/a/b")]);
        assert_eq!(idx.within(&[]).count(), 4);
        assert!(within_any(&p("/c"), &[p("/a"), p("/c")]));
        assert!(!within_any(&p("/ab"), &[p("/a")]));
    }

    #[test]
    fn cgroup_psi() {
        let (d, fs) = unified();
        write(&d.path().join("a/cpu.pressure"), PSI);
        write(&d.path().join("a/io.pressure"), PSI);
        let psi = fs.psi(&p("/a")).unwrap().unwrap();
        assert_eq!(psi.cpu, Some(3.5));
        assert_eq!(psi.memory, None, "absent file is None, not zero");
        assert_eq!(psi.io, Some(3.5));
        assert!(psi.cpu_total.is_some_and(|t| t.some_us > 0), "{psi:?}");
        assert_eq!(psi.memory_total, None);
        assert_eq!(fs.psi(&p("/c")).unwrap(), None);
        assert_eq!(fs.psi(&p("/vanished")).unwrap(), None);
        write(&d.path().join("c/cpu.pressure"), "some avg10=oops\n");
        let err = fs.psi(&p("/c")).unwrap_err();
        assert!(err.to_string().contains("c/cpu.pressure"), "{err}");
    }

    #[test]
    fn throttling_from_cgroup2() {
        let (d, fs) = unified();
        write(
            &d.path().join("a/cpu.stat"),
            "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 10\nnr_throttled 4\nthrottled_usec 2500\nnr_bursts 0\nburst_usec 0\n",
        );
        let t = fs.cpu_throttle(&p("/a")).unwrap().unwrap();
        assert_eq!(
            t,
            CpuThrottle {
                nr_periods: Some(10),
                nr_throttled: 4,
                throttled_us: 2500,
                source: ThrottleSource::Cgroup2
            }
        );
        let earlier = CpuThrottle {
            nr_throttled: 1,
            throttled_us: 500,
            ..t
        };
        assert_eq!(
            t.since(&earlier),
            Throttling {
                nr_throttled: 3,
                throttled_us: 2000
            }
        );
        // cpu controller not enabled: cpu.stat has no throttling keys.
        write(
            &d.path().join("c/cpu.stat"),
            "usage_usec 1\nuser_usec 1\nsystem_usec 0\n",
        );
        assert_eq!(fs.cpu_throttle(&p("/c")).unwrap(), None);
        assert_eq!(fs.cpu_throttle(&p("/vanished")).unwrap(), None);
    }

    #[test]
    fn throttling_from_v1_cpu_on_hybrid_hosts() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(&root.join("unified/cgroup.controllers"), "");
        write(&root.join("unified/w/cgroup.controllers"), "");
        // cgroup2 without controllers: cpu.stat without throttling.
        write(
            &root.join("unified/w/cpu.stat"),
            "usage_usec 5\nuser_usec 5\nsystem_usec 0\n",
        );
        write(
            &root.join("cpu/cpu.stat"),
            "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
        );
        write(
            &root.join("cpu/w/cpu.stat"),
            "nr_periods 20\nnr_throttled 7\nthrottled_time 3000000\nnr_bursts 0\nburst_time 0\n",
        );
        let fs = CgroupFs::discover(root).unwrap();
        let t = fs.cpu_throttle(&p("/w")).unwrap().unwrap();
        assert_eq!(t.source, ThrottleSource::V1Cpu);
        assert_eq!((t.nr_throttled, t.throttled_us), (7, 3000));
        // The v1 hierarchy need not mirror every cgroup2 cgroup.
        write(&root.join("unified/x/cgroup.controllers"), "");
        assert_eq!(fs.cpu_throttle(&p("/x")).unwrap(), None);
        // A switch of source is not a delta.
        let other = CpuThrottle {
            source: ThrottleSource::Cgroup2,
            ..t
        };
        assert_eq!(t.since(&other), Throttling::default());
    }

    #[test]
    fn bad_cpu_stat_names_the_file() {
        let (d, fs) = unified();
        write(&d.path().join("a/cpu.stat"), "nr_throttled lots\n");
        let err = fs.cpu_throttle(&p("/a")).unwrap_err();
        assert!(matches!(err, CgroupfsError::Parse { .. }));
        assert!(err.to_string().contains("a/cpu.stat"), "{err}");
    }

    #[test]
    fn this_hosts_hierarchy() {
        // Read-only; works unprivileged on both layouts.
        let fs = CgroupFs::discover(Path::new(DEFAULT_ROOT)).unwrap();
        let mut idx = CgroupIndex::new(fs.clone());
        let root_id = fs.id_of(&CgroupPath::root()).unwrap().unwrap();
        assert_eq!(idx.resolve(root_id).unwrap(), Some(&CgroupPath::root()));
        // Our own cgroup (from /proc/self/cgroup's `0::` line) is in the index.
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let own = CgroupPath::new(own).unwrap();
        let id = fs.id_of(&own).unwrap().unwrap();
        assert_eq!(idx.resolve(id).unwrap(), Some(&own));
        // The root has PSI wherever the kernel does, and on a hybrid host its
        // throttling comes from the v1 cpu controller.
        if Path::new("/proc/pressure/cpu").exists() {
            assert!(fs.psi(&CgroupPath::root()).unwrap().unwrap().cpu.is_some());
        }
        if fs.layout() == Layout::Hybrid && fs.cpu_v1_root().is_some() {
            let t = fs.cpu_throttle(&CgroupPath::root()).unwrap().unwrap();
            assert_eq!(t.source, ThrottleSource::V1Cpu);
        }
    }
}
