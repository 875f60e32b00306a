//! Cgroup actuators: `cpu_weight`, `cpu_limit` and `memory_high` as writes
//! of one cgroup file each, every one journaled before it is made.
//!
//! | action | cgroup2 | hybrid host (v1 cpu controller, same path) |
//! |---|---|---|
//! | `cpu_weight` N | `cpu.weight` = N | `cpu.shares` = N·1024/100 in [2, 262144] (the kernel's own mapping) |
//! | `cpu_weight` idle | `cpu.idle` = 1 | `cpu.idle` = 1 |
//! | `cpu_limit` C | `cpu.max` = `C·period period` | `cpu.cfs_quota_us` = C·`cpu.cfs_period_us` |
//! | `memory_high` B | `memory.high` = B | unsupported (v1 has no `memory.high`) |
//!
//! The period is the one the cgroup has (100 ms unless someone changed it),
//! and is left alone: only one file changes per action, so a revert is one
//! write of the text the journal kept. Where `cpu.idle` is missing (kernels
//! before 5.15) `idle` falls back to the lowest weight, and says so.
//!
//! On a hybrid host the v1 directory of a cgroup is never created: if it is
//! not there, the target is absent, which is reported, not an error (the
//! same as a cgroup2 cgroup that does not exist). A cgroup that vanishes is
//! never an error either: there is nothing left to limit or to restore.
//!
//! Roots come from [`CgroupFs`], so every mapping is tested on fake trees.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use governor_engine::{
    config::{
        Action,
        units::{Bytes, CpuWeight, Cpus},
    },
    snapshot::CgroupPath,
};

use super::journal::{Entry, Holder, Journal, JournalError, now_unix_ms};
use crate::sense::{
    cgroupfs::{CgroupFs, Layout},
    procfs::is_gone,
};

/// An actuator problem, with the file that failed.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The action is not a cgroup-file action (connections go through BPF maps).
    #[error("{action} is not a cgroup-file action")]
    NotMine {
        /// The action, as one phrase.
        action: String,
    },
    /// This host cannot carry out the action at all.
    #[error("cannot apply {action}: {reason}")]
    Unsupported {
        /// The action, as one phrase.
        action: String,
        /// Why, and what would make it possible.
        reason: String,
    },
    /// The cgroup exists, but the controller's file is not there.
    #[error(
        "{file} does not exist: the {controller} controller is not enabled for this cgroup; enable it in the parent, e.g. `echo +{controller} > {}`",
        subtree_control(file)
    )]
    ControllerMissing {
        /// The file that was expected.
        file: PathBuf,
        /// The controller (`cpu`, `memory`).
        controller: &'static str,
    },
    /// Reading a cgroup file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A cgroup file does not hold what its kernel interface documents.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing a value failed; for a revert, the entry stays in the journal
    /// and [`CgroupActuator::retry_pending`] tries again.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The text written.
        value: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The journal could not record the change, so it was not made.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

fn subtree_control(file: &Path) -> String {
    file.parent()
        .and_then(Path::parent)
        .map_or_else(String::new, |p| {
            p.join("cgroup.subtree_control").display().to_string()
        })
}

/// Something that was done differently from what the action says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `cpu.idle` does not exist (kernel before 5.15): the lowest weight
    /// (`cpu.weight` 1, or `cpu.shares` 2) was set instead.
    NoCpuIdle,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCpuIdle => f.write_str(
                "cpu.idle is not available (kernel before 5.15); set the lowest CPU weight instead",
            ),
        }
    }
}

/// What [`CgroupActuator::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Applied {
    /// The file now holds `value`.
    Written {
        /// The file.
        file: PathBuf,
        /// Its text before the agent first changed it (what a revert restores).
        original: String,
        /// The text written.
        value: String,
        /// True if this call journaled the original; false if the file was
        /// already held (the same action again, or another policy's).
        journaled: bool,
        /// A documented substitute, if the action could not be done as written.
        fallback: Option<Fallback>,
    },
    /// The target's directory does not exist (or vanished while applying):
    /// nothing was changed and nothing is journaled.
    TargetAbsent {
        /// The directory looked for.
        dir: PathBuf,
    },
}

/// What [`CgroupActuator::lift`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Lifted {
    /// No other holder was left: the original text is back.
    Restored {
        /// The file.
        file: PathBuf,
        /// The text written back.
        original: String,
    },
    /// Other actions still hold the file; the newest of them is back in force.
    StillHeld {
        /// The file.
        file: PathBuf,
        /// The value in force now.
        value: String,
        /// The policies that hold it.
        by: Vec<String>,
    },
    /// The cgroup is gone; its entry was dropped.
    Vanished {
        /// The file.
        file: PathBuf,
    },
    /// The action was not in force (never applied, target absent, or
    /// already lifted): nothing to do.
    NotHeld,
}

/// The outcome of reverting several entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevertReport {
    /// Files whose original text is back.
    pub restored: Vec<PathBuf>,
    /// Files whose cgroup is gone (nothing to restore; the entry is dropped).
    pub vanished: Vec<PathBuf>,
    /// Files that could not be restored, with why; they stay in the journal
    /// and are retried by [`CgroupActuator::retry_pending`].
    pub failed: Vec<(PathBuf, String)>,
}

impl RevertReport {
    /// True if nothing failed.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
    }

    fn absorb(&mut self, file: PathBuf, outcome: Result<Lifted, ActError>) {
        match outcome {
            Ok(Lifted::Restored { .. } | Lifted::StillHeld { .. }) => self.restored.push(file),
            Ok(Lifted::Vanished { .. }) => self.vanished.push(file),
            Ok(Lifted::NotHeld) => {}
            Err(e) => self.failed.push((file, e.to_string())),
        }
    }
}

impl fmt::Display for RevertReport {
    /// `restored 2, vanished 1, failed 1 (/sys/…/cpu.max: …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restored {}, vanished {}, failed {}",
            self.restored.len(),
            self.vanished.len(),
            self.failed.len()
        )?;
        for (i, (file, why)) in self.failed.iter().enumerate() {
            let sep = if i == 0 { " (" } else { "; " };
            write!(f, "{sep}{}: {why}", file.display())?;
        }
        if !self.failed.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// cgroup2's `cpu.weight` (1–10000, default 100) as v1 `cpu.shares`
/// (default 1024), the mapping the kernel applies internally.
pub fn weight_to_shares(weight: u16) -> u64 {
    (u64::from(weight) * 1024 / 100).clamp(2, 262_144)
}

/// A quota of `cpus` in a period of `period_us`, at least the kernel's
/// minimum of 1 ms.
fn quota_us(cpus: Cpus, period_us: u64) -> u64 {
    ((cpus.get() * period_us as f64).round() as u64).max(1000)
}

/// Which file an action writes, and what.
struct Plan {
    target: CgroupPath,
    file: PathBuf,
    value: String,
    fallback: Option<Fallback>,
}

enum Resolved {
    Plan(Plan),
    Absent(PathBuf),
}

/// Applies and reverts cgroup-file actions, journaling each change first.
#[derive(Debug)]
pub struct CgroupActuator {
    fs: CgroupFs,
    journal: Journal,
}

impl CgroupActuator {
    /// An actuator over the hierarchies of `fs` that records into `journal`.
    /// Entries the journal already holds are a dead process's: call
    /// [`Self::revert_all`] before applying anything.
    pub fn new(fs: CgroupFs, journal: Journal) -> Self {
        Self { fs, journal }
    }

    /// The journal (for status and tests).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The hierarchies written to.
    pub fn cgroupfs(&self) -> &CgroupFs {
        &self.fs
    }

    /// Puts `action` in force for `policy`: journals the file's original text
    /// (once, however often the file is changed) and then writes the new one.
    /// A missing target is [`Applied::TargetAbsent`], not an error.
    pub fn apply(&mut self, policy: &str, action: &Action) -> Result<Applied, ActError> {
        let plan = match self.plan(action)? {
            Resolved::Plan(p) => p,
            Resolved::Absent(dir) => return Ok(Applied::TargetAbsent { dir }),
        };
        let before = self.journal.find(&plan.file).cloned();
        let (mut entry, journaled) = match &before {
            Some(e) => (e.clone(), false),
            None => {
                let Some(original) = read_value(&plan.file, controller_of(action))? else {
                    return Ok(Applied::TargetAbsent {
                        dir: parent(&plan.file),
                    });
                };
                let entry = Entry {
                    target: plan.target.clone(),
                    file: plan.file.clone(),
                    original,
                    value: String::new(),
                    holders: Vec::new(),
                    since_unix_ms: now_unix_ms(),
                    pid: std::process::id(),
                    pending: None,
                };
                (entry, true)
            }
        };
        let phrase = action.to_string();
        // The newest claim is the one in force: (re)place it last.
        entry
            .holders
            .retain(|h| !(h.policy == policy && h.action == phrase));
        entry.holders.push(Holder {
            policy: policy.to_owned(),
            action: phrase,
            value: plan.value.clone(),
        });
        entry.value.clone_from(&plan.value);
        entry.pending = None;
        if before.as_ref() != Some(&entry) {
            self.journal.put(entry.clone())?;
        }
        match write_value(&plan.file, &plan.value) {
            Ok(()) => Ok(Applied::Written {
                file: plan.file,
                original: entry.original,
                value: plan.value,
                journaled,
                fallback: plan.fallback,
            }),
            Err(e) if is_gone(&e) && !parent(&plan.file).is_dir() => {
                self.journal.remove(&plan.file)?;
                Ok(Applied::TargetAbsent {
                    dir: parent(&plan.file),
                })
            }
            Err(source) => {
                // Not made, so not journaled: put back what was there.
                match before {
                    Some(b) => self.journal.put(b)?,
                    None => drop(self.journal.remove(&plan.file)?),
                }
                Err(ActError::Write {
                    path: plan.file,
                    value: plan.value,
                    source,
                })
            }
        }
    }

    /// Takes `policy`'s `action` out of force. If another action (of this or
    /// another policy) still holds the file, the newest of those is put back;
    /// otherwise the original text is restored and the entry dropped. A
    /// revert that fails stays journaled for [`Self::retry_pending`].
    pub fn lift(&mut self, policy: &str, action: &Action) -> Result<Lifted, ActError> {
        if !is_cgroup_action(action) {
            return Err(ActError::NotMine {
                action: action.to_string(),
            });
        }
        let phrase = action.to_string();
        let Some(entry) = self
            .journal
            .entries()
            .iter()
            .find(|e| {
                e.holders
                    .iter()
                    .any(|h| h.policy == policy && h.action == phrase)
            })
            .cloned()
        else {
            return Ok(Lifted::NotHeld);
        };
        self.release(entry, |h| h.policy == policy && h.action == phrase)
    }

    /// Lifts everything `policy` holds (the policy was removed, or changed
    /// in a reload). Other policies' holds stay in force.
    pub fn lift_policy(&mut self, policy: &str) -> RevertReport {
        let mut report = RevertReport::default();
        let held: Vec<Entry> = self
            .journal
            .entries()
            .iter()
            .filter(|e| e.held_by(policy))
            .cloned()
            .collect();
        for entry in held {
            let file = entry.file.clone();
            report.absorb(file, self.release(entry, |h| h.policy == policy));
        }
        report
    }

    /// Restores every journaled file to its original text, whoever holds it:
    /// at exit, and at start for what a dead process left.
    pub fn revert_all(&mut self) -> RevertReport {
        let mut report = RevertReport::default();
        for entry in self.journal.entries().to_vec() {
            let file = entry.file.clone();
            report.absorb(file, self.release(entry, |_| true));
        }
        report
    }

    /// Writes again every entry whose last write failed; returns what is
    /// still failing. Call it each tick while [`Self::pending`] is non-zero.
    pub fn retry_pending(&mut self) -> RevertReport {
        let mut report = RevertReport::default();
        let pending: Vec<Entry> = self
            .journal
            .entries()
            .iter()
            .filter(|e| e.pending.is_some())
            .cloned()
            .collect();
        for entry in pending {
            let file = entry.file.clone();
            report.absorb(file, self.release(entry, |_| false));
        }
        report
    }

    /// Number of entries whose last write failed.
    pub fn pending(&self) -> usize {
        self.journal
            .entries()
            .iter()
            .filter(|e| e.pending.is_some())
            .count()
    }

    /// Drops the holders `lifted` selects from `entry`, then writes what is
    /// left in force (the newest remaining holder's value) or the original.
    fn release(
        &mut self,
        mut entry: Entry,
        lifted: impl Fn(&Holder) -> bool,
    ) -> Result<Lifted, ActError> {
        entry.holders.retain(|h| !lifted(h));
        let value = entry
            .holders
            .last()
            .map_or_else(|| entry.original.clone(), |h| h.value.clone());
        let file = entry.file.clone();
        match write_value(&file, &value) {
            Ok(()) if entry.holders.is_empty() => {
                self.journal.remove(&file)?;
                Ok(Lifted::Restored {
                    file,
                    original: value,
                })
            }
            Ok(()) => {
                let by = entry.holders.iter().map(|h| h.policy.clone()).collect();
                entry.value = value.clone();
                entry.pending = None;
                self.journal.put(entry)?;
                Ok(Lifted::StillHeld { file, value, by })
            }
            // The cgroup (or its controller) is gone, and the setting with it.
            Err(e) if is_gone(&e) => {
                self.journal.remove(&file)?;
                Ok(Lifted::Vanished { file })
            }
            Err(source) => {
                tracing::warn!(
                    "restoring {:?} to {} failed, will retry: {source}",
                    value,
                    file.display()
                );
                entry.value = value.clone();
                entry.pending = Some(source.to_string());
                self.journal.put(entry)?;
                Err(ActError::Write {
                    path: file,
                    value,
                    source,
                })
            }
        }
    }

    /// The directory holding the cpu controller's files of `cgroup`: the
    /// cgroup2 directory, or the v1 cpu controller's on hybrid hosts.
    fn cpu_dir(&self, cgroup: &CgroupPath, action: &Action) -> Result<PathBuf, ActError> {
        match self.fs.layout() {
            Layout::Unified => Ok(self.fs.dir(cgroup)),
            Layout::Hybrid => match self.fs.cpu_v1_root() {
                Some(v1) => Ok(v1.join(cgroup.relative())),
                None => Err(ActError::Unsupported {
                    action: action.to_string(),
                    reason: "this host's cgroup2 has no cpu controller and no v1 cpu controller is mounted at <root>/cpu".into(),
                }),
            },
        }
    }

    fn plan(&self, action: &Action) -> Result<Resolved, ActError> {
        let v1 = self.fs.layout() == Layout::Hybrid;
        let (target, dir) = match action {
            Action::CpuWeight { cgroup, .. } | Action::CpuLimit { cgroup, .. } => {
                (cgroup, self.cpu_dir(cgroup, action)?)
            }
            Action::MemoryHigh { cgroup, .. } if v1 => {
                return Err(ActError::Unsupported {
                    action: action.to_string(),
                    reason: "memory.high exists only in cgroup2, and this host's cgroup2 has no memory controller (hybrid layout); v1's memory.soft_limit_in_bytes is a different mechanism and is not substituted".into(),
                });
            }
            Action::MemoryHigh { cgroup, .. } => (cgroup, self.fs.dir(cgroup)),
            Action::ThrottleConnections { .. } | Action::RejectConnections { .. } => {
                return Err(ActError::NotMine {
                    action: action.to_string(),
                });
            }
        };
        if !dir.is_dir() {
            return Ok(Resolved::Absent(dir));
        }
        let (name, value, fallback) = match action {
            Action::CpuWeight {
                weight: CpuWeight::Weight(w),
                ..
            } => {
                if v1 {
                    ("cpu.shares", weight_to_shares(*w).to_string(), None)
                } else {
                    ("cpu.weight", w.to_string(), None)
                }
            }
            Action::CpuWeight {
                weight: CpuWeight::Idle,
                ..
            } => {
                if dir.join("cpu.idle").exists() {
                    ("cpu.idle", "1".to_owned(), None)
                } else if v1 {
                    ("cpu.shares", "2".to_owned(), Some(Fallback::NoCpuIdle))
                } else {
                    ("cpu.weight", "1".to_owned(), Some(Fallback::NoCpuIdle))
                }
            }
            Action::CpuLimit { cpus, .. } => {
                if v1 {
                    let file = dir.join("cpu.cfs_period_us");
                    let Some(text) = read_value(&file, "cpu")? else {
                        return Ok(Resolved::Absent(dir));
                    };
                    let period = parse_u64(&text, &file)?;
                    (
                        "cpu.cfs_quota_us",
                        quota_us(*cpus, period).to_string(),
                        None,
                    )
                } else {
                    let file = dir.join("cpu.max");
                    let Some(text) = read_value(&file, "cpu")? else {
                        return Ok(Resolved::Absent(dir));
                    };
                    let period = text
                        .split_whitespace()
                        .nth(1)
                        .ok_or_else(|| ActError::Parse {
                            path: file.clone(),
                            reason: format!("expected `QUOTA PERIOD`, found {text:?}"),
                        })?;
                    let period = parse_u64(period, &file)?;
                    let quota = quota_us(*cpus, period);
                    ("cpu.max", format!("{quota} {period}"), None)
                }
            }
            Action::MemoryHigh { bytes, .. } => ("memory.high", memory_value(*bytes), None),
            Action::ThrottleConnections { .. } | Action::RejectConnections { .. } => {
                unreachable!("refused above")
            }
        };
        Ok(Resolved::Plan(Plan {
            target: target.clone(),
            file: dir.join(name),
            value,
            fallback,
        }))
    }
}

fn memory_value(bytes: Bytes) -> String {
    bytes.get().to_string()
}

fn is_cgroup_action(action: &Action) -> bool {
    matches!(
        action,
        Action::CpuWeight { .. } | Action::CpuLimit { .. } | Action::MemoryHigh { .. }
    )
}

fn controller_of(action: &Action) -> &'static str {
    match action {
        Action::MemoryHigh { .. } => "memory",
        _ => "cpu",
    }
}

fn parent(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn parse_u64(text: &str, path: &Path) -> Result<u64, ActError> {
    text.trim().parse().map_err(|e| ActError::Parse {
        path: path.to_path_buf(),
        reason: format!("{text:?}: {e}"),
    })
}

/// A cgroup file's text without its trailing newline; `None` if the cgroup
/// is gone. A missing file in a cgroup that exists means its controller is
/// not enabled there.
fn read_value(file: &Path, controller: &'static str) -> Result<Option<String>, ActError> {
    match fs::read_to_string(file) {
        Ok(t) => Ok(Some(t.trim_end_matches('\n').to_owned())),
        Err(e) if is_gone(&e) => {
            if parent(file).is_dir() {
                Err(ActError::ControllerMissing {
                    file: file.to_path_buf(),
                    controller,
                })
            } else {
                Ok(None)
            }
        }
        Err(source) => Err(ActError::Read {
            path: file.to_path_buf(),
            source,
        }),
    }
}

/// One `write(2)` of `value` to an existing file (cgroupfs takes a value per
/// write; never create a file, which on a fake tree would hide a typo).
fn write_value(file: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(file)?;
    f.write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tempfile::TempDir;

    use super::*;
    use governor_engine::config::{RejectMode, Target};

    /// A fake host: cgroupfs files under a temp dir, and a journal beside them.
    struct Host {
        d: TempDir,
        fs: CgroupFs,
    }

    impl Host {
        /// Pure cgroup2 at `<tmp>/cg`, with `files` (path relative to it, text).
        fn unified(files: &[(&str, &str)]) -> Self {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().join("cg");
            write(&root.join("cgroup.controllers"), "cpu memory\n");
            for (f, t) in files {
                write(&root.join(f), t);
            }
            let fs = CgroupFs::discover(&root).unwrap();
            assert_eq!(fs.layout(), Layout::Unified);
            Self { d, fs }
        }

        /// Hybrid: controller-less cgroup2 at `<tmp>/cg/unified`, the v1 cpu
        /// controller at `<tmp>/cg/cpu`; `files` relative to `<tmp>/cg`.
        fn hybrid(files: &[(&str, &str)]) -> Self {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().join("cg");
            write(&root.join("unified/cgroup.controllers"), "");
            write(&root.join("cpu/cpu.stat"), "nr_periods 0\n");
            for (f, t) in files {
                write(&root.join(f), t);
            }
            let fs = CgroupFs::discover(&root).unwrap();
            assert_eq!(fs.layout(), Layout::Hybrid);
            Self { d, fs }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.d.path().join("cg").join(rel)
        }

        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.path(rel)).unwrap()
        }

        fn journal_dir(&self) -> PathBuf {
            self.d.path().join("run/governor")
        }

        fn actuator(&self) -> CgroupActuator {
            CgroupActuator::new(self.fs.clone(), Journal::open(&self.journal_dir()).unwrap())
        }
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn cg(s: &str) -> CgroupPath {
        CgroupPath::new(s).unwrap()
    }

    fn weight(c: &str, w: CpuWeight) -> Action {
        Action::CpuWeight {
            cgroup: cg(c),
            weight: w,
        }
    }

    fn limit(c: &str, cpus: f64) -> Action {
        Action::CpuLimit {
            cgroup: cg(c),
            cpus: Cpus::new(cpus).unwrap(),
        }
    }

    fn memory(c: &str, bytes: u64) -> Action {
        Action::MemoryHigh {
            cgroup: cg(c),
            bytes: Bytes::new(bytes),
        }
    }

    /// Applies, checks the file and the journal, lifts, checks the exact
    /// original is back and the journal is empty.
    fn round_trip(host: &Host, action: &Action, rel: &str, original: &str, want: &str) {
        let mut act = host.actuator();
        let applied = act.apply("p", action).unwrap();
        let Applied::Written {
            file,
            original: got_original,
            value,
            journaled,
            ..
        } = applied
        else {
            panic!("{action}: {applied:?}");
        };
        assert_eq!(file, host.path(rel));
        assert_eq!(host.read(rel), want, "{action}");
        assert_eq!(value, want);
        assert_eq!(got_original, original.trim_end());
        assert!(journaled);
        assert_eq!(act.journal().entries().len(), 1);
        assert_eq!(act.journal().entries()[0].original, original.trim_end());
        let lifted = act.lift("p", action).unwrap();
        assert!(matches!(lifted, Lifted::Restored { .. }), "{lifted:?}");
        assert_eq!(host.read(rel), original.trim_end(), "exact original text");
        assert!(act.journal().is_empty());
        // Durable too: a new owner finds nothing.
        drop(act);
        assert!(host.actuator().journal().is_empty());
    }

    #[test]
    fn cgroup2_files() {
        let host = Host::unified(&[
            ("b/cpu.weight", "100\n"),
            ("b/cpu.idle", "0\n"),
            ("b/cpu.max", "max 100000\n"),
            ("b/memory.high", "max\n"),
            ("c/cpu.max", "max 50000\n"),
            ("c/cpu.weight", "100\n"),
        ]);
        round_trip(
            &host,
            &weight("/b", CpuWeight::Weight(50)),
            "b/cpu.weight",
            "100\n",
            "50",
        );
        round_trip(
            &host,
            &weight("/b", CpuWeight::Idle),
            "b/cpu.idle",
            "0\n",
            "1",
        );
        round_trip(
            &host,
            &limit("/b", 0.2),
            "b/cpu.max",
            "max 100000\n",
            "20000 100000",
        );
        round_trip(
            &host,
            &limit("/b", 1.5),
            "b/cpu.max",
            "max 100000\n",
            "150000 100000",
        );
        // The cgroup's own period is kept.
        round_trip(
            &host,
            &limit("/c", 0.2),
            "c/cpu.max",
            "max 50000\n",
            "10000 50000",
        );
        // Below the kernel's minimum quota of 1 ms.
        round_trip(
            &host,
            &limit("/c", 0.01),
            "c/cpu.max",
            "max 50000\n",
            "1000 50000",
        );
        round_trip(
            &host,
            &memory("/b", 512 << 20),
            "b/memory.high",
            "max\n",
            "536870912",
        );
    }

    #[test]
    fn idle_falls_back_to_the_lowest_weight_without_cpu_idle() {
        let host = Host::unified(&[("b/cpu.weight", "100\n")]);
        let mut act = host.actuator();
        let applied = act.apply("p", &weight("/b", CpuWeight::Idle)).unwrap();
        assert!(
            matches!(&applied, Applied::Written { fallback: Some(Fallback::NoCpuIdle), value, .. } if value == "1"),
            "{applied:?}"
        );
        assert_eq!(host.read("b/cpu.weight"), "1");
        assert!(Fallback::NoCpuIdle.to_string().contains("5.15"));
        let _ = act.lift("p", &weight("/b", CpuWeight::Idle)).unwrap();
        assert_eq!(host.read("b/cpu.weight"), "100");

        let host = Host::hybrid(&[("cpu/b/cpu.shares", "1024\n")]);
        let mut act = host.actuator();
        let applied = act.apply("p", &weight("/b", CpuWeight::Idle)).unwrap();
        assert!(
            matches!(&applied, Applied::Written { fallback: Some(Fallback::NoCpuIdle), value, .. } if value == "2"),
            "{applied:?}"
        );
    }

    #[test]
    fn weights_map_to_shares_as_the_kernel_does() {
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(weight_to_shares(50), 512);
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(10000), 102_400);
    }

    #[test]
    fn hybrid_hosts_write_the_v1_cpu_controller_of_the_same_path() {
        let host = Host::hybrid(&[
            ("unified/w/b/cgroup.controllers", ""),
            ("cpu/w/b/cpu.shares", "1024\n"),
            ("cpu/w/b/cpu.idle", "0\n"),
            ("cpu/w/b/cpu.cfs_quota_us", "-1\n"),
            ("cpu/w/b/cpu.cfs_period_us", "100000\n"),
        ]);
        round_trip(
            &host,
            &weight("/w/b", CpuWeight::Weight(50)),
            "cpu/w/b/cpu.shares",
            "1024\n",
            "512",
        );
        round_trip(
            &host,
            &weight("/w/b", CpuWeight::Idle),
            "cpu/w/b/cpu.idle",
            "0\n",
            "1",
        );
        round_trip(
            &host,
            &limit("/w/b", 0.2),
            "cpu/w/b/cpu.cfs_quota_us",
            "-1\n",
            "20000",
        );
        assert_eq!(
            host.read("cpu/w/b/cpu.cfs_period_us"),
            "100000\n",
            "period untouched"
        );
    }

    #[test]
    fn memory_high_is_unsupported_on_hybrid_hosts() {
        let host = Host::hybrid(&[("unified/b/cgroup.controllers", "")]);
        let mut act = host.actuator();
        let err = act.apply("p", &memory("/b", 1 << 30)).unwrap_err();
        assert!(matches!(err, ActError::Unsupported { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("memory.high exists only in cgroup2"),
            "{err}"
        );
        assert!(act.journal().is_empty());
    }

    #[test]
    fn a_missing_target_is_reported_and_never_created() {
        // Hybrid: the cgroup2 cgroup exists, its v1 cpu directory does not.
        let host = Host::hybrid(&[("unified/b/cgroup.controllers", "")]);
        let mut act = host.actuator();
        let applied = act.apply("p", &limit("/b", 0.2)).unwrap();
        assert_eq!(
            applied,
            Applied::TargetAbsent {
                dir: host.path("cpu/b")
            }
        );
        assert!(
            !host.path("cpu/b").exists(),
            "the v1 directory is not created"
        );
        assert!(act.journal().is_empty());
        assert_eq!(act.lift("p", &limit("/b", 0.2)).unwrap(), Lifted::NotHeld);

        let host = Host::unified(&[]);
        let mut act = host.actuator();
        let applied = act.apply("p", &weight("/nope", CpuWeight::Idle)).unwrap();
        assert!(
            matches!(applied, Applied::TargetAbsent { .. }),
            "{applied:?}"
        );
        assert!(act.journal().is_empty());
    }

    #[test]
    fn a_missing_controller_file_is_an_error_saying_how_to_enable_it() {
        let host = Host::unified(&[("a/b/cgroup.controllers", "")]);
        let mut act = host.actuator();
        let err = act.apply("p", &limit("/a/b", 0.2)).unwrap_err();
        assert!(
            matches!(
                err,
                ActError::ControllerMissing {
                    controller: "cpu",
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("a/b/cpu.max"), "{text}");
        assert!(
            text.contains("echo +cpu > ") && text.contains("a/cgroup.subtree_control"),
            "{text}"
        );
        let err = act.apply("p", &memory("/a/b", 1 << 20)).unwrap_err();
        assert!(err.to_string().contains("+memory"), "{err}");
        assert!(act.journal().is_empty());
    }

    #[test]
    fn connection_actions_are_not_mine() {
        let host = Host::unified(&[]);
        let mut act = host.actuator();
        let reject = Action::RejectConnections {
            target: Target::Port(8080),
            mode: RejectMode::Reset,
            exempt: Vec::new(),
        };
        assert!(matches!(
            act.apply("p", &reject),
            Err(ActError::NotMine { .. })
        ));
        assert!(matches!(
            act.lift("p", &reject),
            Err(ActError::NotMine { .. })
        ));
    }

    #[test]
    fn applying_twice_journals_the_original_once() {
        let host = Host::unified(&[("b/cpu.max", "max 100000\n")]);
        let mut act = host.actuator();
        let a = limit("/b", 0.2);
        let first = act.apply("p", &a).unwrap();
        let second = act.apply("p", &a).unwrap();
        assert!(matches!(
            first,
            Applied::Written {
                journaled: true,
                ..
            }
        ));
        assert!(
            matches!(&second, Applied::Written { journaled: false, original, .. } if original == "max 100000"),
            "the original is the text before the first change, not our own value: {second:?}"
        );
        let entries = act.journal().entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].original, "max 100000");
        assert_eq!(entries[0].holders.len(), 1);
        let _ = act.lift("p", &a).unwrap();
        assert_eq!(host.read("b/cpu.max"), "max 100000");
    }

    #[test]
    fn a_file_held_by_two_policies_is_restored_when_the_last_lets_go() {
        let host = Host::unified(&[("b/cpu.max", "max 100000\n")]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.5)).unwrap();
        let _ = act.apply("q", &limit("/b", 0.2)).unwrap();
        assert_eq!(host.read("b/cpu.max"), "20000 100000");
        // q lets go: p's limit is back in force, not the original.
        let lifted = act.lift("q", &limit("/b", 0.2)).unwrap();
        assert_eq!(
            lifted,
            Lifted::StillHeld {
                file: host.path("b/cpu.max"),
                value: "50000 100000".into(),
                by: vec!["p".into()]
            }
        );
        assert_eq!(host.read("b/cpu.max"), "50000 100000");
        // Lifting what is no longer held changes nothing.
        assert_eq!(act.lift("q", &limit("/b", 0.2)).unwrap(), Lifted::NotHeld);
        let _ = act.lift("p", &limit("/b", 0.5)).unwrap();
        assert_eq!(host.read("b/cpu.max"), "max 100000");
        assert!(act.journal().is_empty());

        // The other order: the first holder lets go, the second stays in force.
        let _ = act.apply("p", &limit("/b", 0.5)).unwrap();
        let _ = act.apply("q", &limit("/b", 0.2)).unwrap();
        let _ = act.lift("p", &limit("/b", 0.5)).unwrap();
        assert_eq!(host.read("b/cpu.max"), "20000 100000");
        assert_eq!(act.journal().entries()[0].original, "max 100000");
        let _ = act.lift("q", &limit("/b", 0.2)).unwrap();
        assert_eq!(host.read("b/cpu.max"), "max 100000");
    }

    #[test]
    fn stepping_down_one_rung_puts_the_rung_below_back() {
        let host = Host::unified(&[("b/cpu.max", "max 100000\n")]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.5)).unwrap();
        let _ = act.apply("p", &limit("/b", 0.25)).unwrap();
        assert_eq!(host.read("b/cpu.max"), "25000 100000");
        let _ = act.lift("p", &limit("/b", 0.25)).unwrap();
        assert_eq!(host.read("b/cpu.max"), "50000 100000");
        let _ = act.lift("p", &limit("/b", 0.5)).unwrap();
        assert_eq!(host.read("b/cpu.max"), "max 100000");
    }

    #[test]
    fn lifting_a_policy_leaves_other_policies_in_force() {
        let host = Host::unified(&[
            ("b/cpu.max", "max 100000\n"),
            ("b/cpu.idle", "0\n"),
            ("c/cpu.weight", "100\n"),
        ]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.5)).unwrap();
        let _ = act.apply("p", &weight("/b", CpuWeight::Idle)).unwrap();
        let _ = act
            .apply("q", &weight("/c", CpuWeight::Weight(10)))
            .unwrap();
        let report = act.lift_policy("p");
        assert_eq!(report.restored.len(), 2, "{report}");
        assert!(report.is_clean());
        assert_eq!(host.read("b/cpu.max"), "max 100000");
        assert_eq!(host.read("b/cpu.idle"), "0");
        assert_eq!(host.read("c/cpu.weight"), "10");
        assert_eq!(act.journal().entries().len(), 1);
    }

    #[test]
    fn a_vanished_cgroup_is_not_an_error() {
        let host = Host::unified(&[("b/cpu.max", "max 100000\n"), ("c/cpu.max", "max 100000\n")]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.2)).unwrap();
        let _ = act.apply("p", &limit("/c", 0.2)).unwrap();
        fs::remove_dir_all(host.path("b")).unwrap();
        assert_eq!(
            act.lift("p", &limit("/b", 0.2)).unwrap(),
            Lifted::Vanished {
                file: host.path("b/cpu.max")
            }
        );
        fs::remove_dir_all(host.path("c")).unwrap();
        let report = act.revert_all();
        assert_eq!(report.vanished, [host.path("c/cpu.max")]);
        assert!(report.is_clean() && report.restored.is_empty());
        assert!(act.journal().is_empty());
        assert!(!host.path("c").exists(), "nothing is recreated");
    }

    #[test]
    fn a_failed_revert_is_kept_retried_and_reported() {
        let host = Host::unified(&[("b/cpu.max", "max 100000\n"), ("c/cpu.weight", "100\n")]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.2)).unwrap();
        let _ = act.apply("p", &weight("/c", CpuWeight::Weight(5))).unwrap();
        // Make the write fail without the cgroup being gone: a directory in the file's place.
        let file = host.path("b/cpu.max");
        fs::remove_file(&file).unwrap();
        fs::create_dir(&file).unwrap();
        let report = act.revert_all();
        assert_eq!(report.restored, [host.path("c/cpu.weight")]);
        assert_eq!(report.failed.len(), 1, "{report}");
        assert_eq!(report.failed[0].0, file);
        assert!(report.to_string().contains("b/cpu.max"), "{report}");
        assert_eq!(act.pending(), 1);
        let e = &act.journal().entries()[0];
        assert_eq!(
            (e.original.as_str(), e.value.as_str()),
            ("max 100000", "max 100000")
        );
        assert!(e.holders.is_empty() && e.pending.is_some());
        // Still failing: still kept.
        assert_eq!(act.retry_pending().failed.len(), 1);
        // It survives a restart of the agent, too.
        drop(act);
        let mut act = host.actuator();
        assert_eq!(act.pending(), 1);
        fs::remove_dir(&file).unwrap();
        fs::write(&file, "20000 100000").unwrap();
        let report = act.retry_pending();
        assert_eq!(report.restored, std::slice::from_ref(&file), "{report}");
        assert_eq!(host.read("b/cpu.max"), "max 100000");
        assert!(act.journal().is_empty());
    }

    #[test]
    fn a_failed_lift_is_an_error_and_kept_for_retry() {
        let host = Host::unified(&[("b/cpu.weight", "100\n")]);
        let mut act = host.actuator();
        let a = weight("/b", CpuWeight::Weight(5));
        let _ = act.apply("p", &a).unwrap();
        let file = host.path("b/cpu.weight");
        fs::remove_file(&file).unwrap();
        fs::create_dir(&file).unwrap();
        let err = act.lift("p", &a).unwrap_err();
        assert!(matches!(err, ActError::Write { .. }), "{err}");
        assert!(err.to_string().contains("b/cpu.weight"), "{err}");
        assert_eq!(act.pending(), 1);
        fs::remove_dir(&file).unwrap();
        fs::write(&file, "5").unwrap();
        assert!(act.retry_pending().is_clean());
        assert_eq!(host.read("b/cpu.weight"), "100");
        assert_eq!(act.pending(), 0);
    }

    #[test]
    fn the_journal_is_written_before_the_change() {
        let host = Host::unified(&[("b/cpu.weight", "100\n")]);
        let mut act = host.actuator();
        // The journal cannot be written: a directory in its place.
        let jf = act.journal().path();
        fs::create_dir_all(jf.join("blocked")).unwrap();
        let err = act
            .apply("p", &weight("/b", CpuWeight::Weight(5)))
            .unwrap_err();
        assert!(matches!(err, ActError::Journal(_)), "{err}");
        assert_eq!(
            host.read("b/cpu.weight"),
            "100\n",
            "no change without a journal entry"
        );
    }

    #[test]
    fn a_failed_write_leaves_the_journal_as_it_was() {
        let host = Host::unified(&[("b/cpu.max", "max 100000\n")]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.5)).unwrap();
        let before = act.journal().entries().to_vec();
        let file = host.path("b/cpu.max");
        fs::remove_file(&file).unwrap();
        fs::create_dir(&file).unwrap();
        // The period is read from the file: a read error names it.
        let err = act.apply("q", &limit("/b", 0.2)).unwrap_err();
        assert!(err.to_string().contains("b/cpu.max"), "{err}");
        let err = act
            .apply("q", &weight("/b", CpuWeight::Weight(5)))
            .unwrap_err();
        assert!(matches!(err, ActError::ControllerMissing { .. }), "{err}");
        assert_eq!(act.journal().entries(), before);
    }

    #[test]
    fn after_a_crash_the_next_start_restores_every_original() {
        let host = Host::hybrid(&[
            ("cpu/b/cpu.cfs_quota_us", "-1\n"),
            ("cpu/b/cpu.cfs_period_us", "100000\n"),
            ("cpu/b/cpu.idle", "0\n"),
            ("cpu/c/cpu.shares", "1024\n"),
        ]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.2)).unwrap();
        let _ = act.apply("p", &weight("/b", CpuWeight::Idle)).unwrap();
        let _ = act.apply("q", &weight("/c", CpuWeight::Weight(1))).unwrap();
        // While it lives, nobody else may take its journal over.
        assert!(matches!(
            Journal::open(&host.journal_dir()),
            Err(JournalError::Busy { .. })
        ));
        // The process dies without reverting (the kernel drops its lock).
        drop(act);
        let mut act = host.actuator();
        assert_eq!(
            act.journal().entries().len(),
            3,
            "the dead process's entries"
        );
        assert!(
            act.journal()
                .entries()
                .iter()
                .all(|e| e.pid == std::process::id())
        );
        let report = act.revert_all();
        assert_eq!(report.restored.len(), 3, "{report}");
        assert_eq!(host.read("cpu/b/cpu.cfs_quota_us"), "-1");
        assert_eq!(host.read("cpu/b/cpu.idle"), "0");
        assert_eq!(host.read("cpu/c/cpu.shares"), "1024");
        assert!(act.journal().is_empty());
    }
}
