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
//!
//! # Claims of several policies
//!
//! Each journal entry keeps every claim on its file (its holders). The
//! strictest claim is in force, whoever made it and in whatever order:
//! the lowest `cpu.weight` / `cpu.shares`, `cpu.idle` 1, the lowest quota
//! (`cpu.max`, `cpu.cfs_quota_us`, where `max` and -1 are the loosest), the
//! fewest bytes of `memory.high`; through systemd, per property the same
//! (`CPUWeight=idle` before any weight). A release puts the strictest claim
//! left in force, and the original only when none is left.
//!
//! # What a journal may make it write
//!
//! The agent runs as root, and at start it writes back what a journal says.
//! An entry is used only if its file is one of the control files it writes
//! ([`CONTROL_FILES`]) in a cgroup below a hierarchy of its [`CgroupFs`]
//! (a plain path, no `.` or `..`; its directory, links resolved, still below
//! it; the file itself not a link), or, for a unit, the unit's own runtime
//! drop-in for the property; other entries are refused when the actuator is
//! made ([`super::journal::Journal::reject`]). Every write opens the
//! cgroup's directory, checks where it really is, and opens the file in it
//! without following a link. An entry records its cgroup's id, and a
//! cgroup made anew at the same path since is not written into.
//!
//! # systemd units
//!
//! On a host where systemd is the cgroup manager, a target that is one of
//! its units (`*.service`, `*.scope`, `*.slice` whose cgroup systemd says is
//! the unit's, [`route`]) is acted on through systemd instead
//! ([`super::systemd`]: `SetUnitProperties`, runtime): a value written into
//! a unit's files would be undone by the next `daemon-reload` or
//! `set-property`, and the cpu controller is enabled under a slice only when
//! a unit asks for it. The journal entry carries the unit's
//! [`Prior`](super::systemd::Prior) and is written before the call; a second
//! rung on the same unit and property keeps the journaled prior
//! ([`Prior::with_held`](super::systemd::Prior::with_held)), so the unit's
//! own value stays the one restored. `idle` is `CPUWeight=idle` (systemd 252
//! and later). Without systemd ([`CgroupActuator::for_host`] could not
//! connect), every target goes through its files.
//!
//! # Drift
//!
//! [`CgroupActuator::check_drift`], each tick, compares every value held
//! with what is there: a file's text with the text written (cheap, every
//! call); a unit's cgroup files with what systemd writes for the value held
//! (every call from the one after the change on), and systemd's own value,
//! asked over a second connection whose calls give up after
//! [`DRIFT_READ_TIMEOUT`], at most every [`SYSTEMD_DRIFT_EVERY`] and when
//! the files first disagree. An episode is logged once when it starts and
//! once when it ends; nothing is repaired.

use std::{
    cmp::Reverse,
    collections::BTreeMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::{
            ffi::OsStrExt as _,
            fs::{MetadataExt as _, OpenOptionsExt as _},
        },
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use governor_engine::{
    config::{
        Action,
        units::{Bytes, CpuWeight, Cpus},
    },
    snapshot::CgroupPath,
};

use super::{
    journal::{Entry, Holder, Journal, JournalError, failpoint, now_unix_ms},
    systemd::{self, Restored, Setting, SystemdError, SystemdUnits, UnitName},
};
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
    /// systemd refused or failed a call (it names the call, the unit and
    /// the assignment); for a revert, the entry stays in the journal and
    /// [`CgroupActuator::retry_pending`] tries again.
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    /// A unit was changed through systemd, and there is no connection to
    /// systemd now to put it back.
    #[error(
        "{unit} was changed through systemd, and there is no connection to systemd to change it back: {why}"
    )]
    NoSystemd {
        /// The unit.
        unit: UnitName,
        /// Why there is no connection.
        why: String,
    },
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
    /// (`cpu.weight` 1, or `cpu.shares` 2, or `CPUWeight=1` through
    /// systemd) was set instead.
    NoCpuIdle,
    /// systemd is older than 252 and refuses `CPUWeight=idle`:
    /// `CPUWeight=1` was set through systemd instead.
    OldSystemd,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCpuIdle => f.write_str(
                "cpu.idle is not available (kernel before 5.15); set the lowest CPU weight instead",
            ),
            Self::OldSystemd => systemd::Fallback::OldSystemd.fmt(f),
        }
    }
}

impl From<systemd::Fallback> for Fallback {
    fn from(f: systemd::Fallback) -> Self {
        match f {
            systemd::Fallback::NoCpuIdle => Self::NoCpuIdle,
            systemd::Fallback::OldSystemd => Self::OldSystemd,
        }
    }
}

/// What [`CgroupActuator::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Applied {
    /// The file now holds `value` (or systemd has it, for a unit).
    Written {
        /// The file; for a unit, its runtime drop-in for the property.
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
        /// The unit the value was set on through systemd; `None`: written
        /// into the cgroup file.
        unit: Option<UnitName>,
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
    /// Other actions still hold the file; the strictest of them is in force.
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
    /// The cgroup was removed and made anew at the same path since the
    /// change (it has another id): the new one never had the agent's
    /// value, so nothing was written; the entry was dropped.
    Recreated {
        /// The file.
        file: PathBuf,
    },
    /// A unit's value was changed through systemd since the agent set it:
    /// that value is left in force (and logged), the entry dropped.
    Superseded {
        /// The unit's runtime drop-in (the entry's file).
        file: PathBuf,
        /// The unit.
        unit: UnitName,
        /// What systemd has, left in force.
        live: String,
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
    /// Files whose cgroup is gone (nothing to restore; the entry is dropped),
    /// those of `recreated` included.
    pub vanished: Vec<PathBuf>,
    /// Files whose cgroup was made anew at the same path since (another id):
    /// not written into; the entry is dropped.
    pub recreated: Vec<PathBuf>,
    /// Units whose value was changed through systemd since, with that value,
    /// left in force (the entry is dropped).
    pub superseded: Vec<(PathBuf, String)>,
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
            Ok(Lifted::Recreated { .. }) => {
                self.vanished.push(file.clone());
                self.recreated.push(file);
            }
            Ok(Lifted::Superseded { live, .. }) => self.superseded.push((file, live)),
            Ok(Lifted::NotHeld) => {}
            Err(e) => self.failed.push((file, e.to_string())),
        }
    }
}

impl fmt::Display for RevertReport {
    /// `restored 2, vanished 1, failed 1 (/sys/…/cpu.max: …)`; cgroups made
    /// anew and superseded units are counted only if there are any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restored {}, vanished {}",
            self.restored.len(),
            self.vanished.len()
        )?;
        if !self.recreated.is_empty() {
            let files: Vec<String> = (self.recreated.iter())
                .map(|p| p.display().to_string())
                .collect();
            write!(
                f,
                " (recreated {}, not written into: {})",
                self.recreated.len(),
                files.join(", ")
            )?;
        }
        if !self.superseded.is_empty() {
            write!(
                f,
                ", superseded through systemd (left in force) {}",
                self.superseded.len()
            )?;
        }
        write!(f, ", failed {}", self.failed.len())?;
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

/// How an action on a cgroup is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through systemd: the cgroup is this unit of the system manager.
    Unit(UnitName),
    /// By writing the cgroup's files.
    Files,
}

/// The route for acting on `cgroup`, decided without I/O of its own.
///
/// - `systemd`: systemd is the cgroup manager and the agent is connected;
/// - `held`: the unit this target is already held on through systemd (in
///   the journal), which decides;
/// - `owner`: asks systemd for the unit whose cgroup `cgroup` is
///   ([`SystemdUnits::resolve`]); called only if systemd is there, nothing
///   holds the target, and its last component is a unit's name
///   ([`systemd::unit_for`]).
///
/// A unit-named cgroup that systemd's manager does not own (a service of a
/// user's manager, a unit not loaded) goes through its files. A failure to
/// ask is the caller's error, not a reason to write the files of what may be
/// a unit.
pub fn route<E>(
    cgroup: &CgroupPath,
    systemd: bool,
    held: Option<&UnitName>,
    owner: impl FnOnce(&CgroupPath) -> Result<Option<UnitName>, E>,
) -> Result<Route, E> {
    if let Some(unit) = held {
        return Ok(Route::Unit(unit.clone()));
    }
    if !systemd || systemd::unit_for(cgroup.as_str()).is_none() {
        return Ok(Route::Files);
    }
    Ok(owner(cgroup)?.map_or(Route::Files, Route::Unit))
}

/// How often, at most, [`CgroupActuator::check_drift`] asks systemd for the
/// values it holds on units (the cgroup files are compared every call).
pub const SYSTEMD_DRIFT_EVERY: Duration = Duration::from_secs(1);
/// How long a drift check's call to systemd may take: it runs inside a tick.
pub const DRIFT_READ_TIMEOUT: Duration = Duration::from_millis(250);
/// After a drift check's call to systemd failed (PID 1 busy reloading, or
/// gone), how long the checks compare only the cgroup files.
const DRIFT_QUIET: Duration = Duration::from_secs(10);

/// A value the agent holds that someone else changed: one line of
/// `governor status`, a label pair of `governor_drift`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drifted {
    /// The policy whose claim is in force there (the strictest holder).
    pub policy: String,
    /// The target cgroup.
    pub target: CgroupPath,
    /// The unit, if the target is acted on through systemd.
    pub unit: Option<UnitName>,
    /// What the agent holds (`CPUQuota=20%`, `cpu.max "20000 100000"`).
    pub held: String,
    /// What is there instead, and where.
    pub found: String,
    /// True if the episode started at this check (logged, counted).
    pub started: bool,
}

impl fmt::Display for Drifted {
    /// `policy p: /system.slice/hog.service (hog.service): held
    /// CPUQuota=20%, found systemd has CPUQuota=50%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy {}: {}", self.policy, self.target)?;
        if let Some(unit) = &self.unit {
            write!(f, " ({unit})")?;
        }
        write!(f, ": held {}, found {}", self.held, self.found)
    }
}

/// What the drift checks saw of one journal entry.
#[derive(Debug, Default)]
struct Seen {
    /// Skip the unit's cgroup files once: systemd writes them after it
    /// answers, so they are compared from the check after a change on.
    settling: bool,
    /// systemd's value at the last read (units only).
    systemd: Option<systemd::Value>,
    /// The episode in progress: what was found.
    drift: Option<String>,
}

/// The drift checks' memory, per journal entry (by its file).
#[derive(Debug)]
struct DriftWatch {
    seen: BTreeMap<PathBuf, Seen>,
    every: Duration,
    last_round: Option<Instant>,
    quiet_until: Option<Instant>,
}

/// systemd, as the actuator uses it.
#[derive(Debug)]
struct UnitRoute {
    units: SystemdUnits,
    /// A second connection whose calls give up after [`DRIFT_READ_TIMEOUT`].
    reader: Option<SystemdUnits>,
    /// systemd's major version.
    version: u32,
    /// The kernel's release (`6.1.0-18-amd64`), for whether `cpu.idle` exists.
    release: Option<String>,
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

/// A hierarchy the actuator writes into: as given, and with links resolved.
#[derive(Debug, Clone)]
struct Root {
    given: PathBuf,
    real: PathBuf,
}

/// Applies and reverts cgroup actions, through the cgroup files or, for
/// systemd units, through systemd, journaling each change first.
#[derive(Debug)]
pub struct CgroupActuator {
    fs: CgroupFs,
    /// The hierarchies of `fs`: no file outside them is ever written.
    roots: Vec<Root>,
    journal: Journal,
    systemd: Option<UnitRoute>,
    /// Why there is no systemd route.
    files_only: String,
    watch: DriftWatch,
}

impl CgroupActuator {
    /// An actuator over the hierarchies of `fs` that records into `journal`,
    /// through cgroup files only. Entries the journal already holds are a
    /// dead process's: call [`Self::revert_all`] before applying anything.
    /// Entries that name anything but a control file the agent writes under
    /// those hierarchies (or a unit's own runtime drop-in) are refused first:
    /// never reverted, named in a warning, the journal kept aside
    /// ([`Journal::reject`]).
    pub fn new(fs: CgroupFs, mut journal: Journal) -> Self {
        let roots: Vec<Root> = [Some(fs.cgroup2_root()), fs.cpu_v1_root()]
            .into_iter()
            .flatten()
            .map(|r| Root {
                given: r.to_path_buf(),
                real: fs::canonicalize(r).unwrap_or_else(|_| r.to_path_buf()),
            })
            .collect();
        if let Err(e) = journal.reject(|e| vet(&roots, e)) {
            tracing::error!(
                "journal entries were refused (not reverted), but the journal could not be rewritten without them: {e}"
            );
        }
        Self {
            fs,
            roots,
            journal,
            systemd: None,
            files_only: "not connected to systemd".into(),
            watch: DriftWatch {
                seen: BTreeMap::new(),
                every: SYSTEMD_DRIFT_EVERY,
                last_round: None,
                quiet_until: None,
            },
        }
    }

    /// The agent's actuator: through systemd for its units if systemd is the
    /// cgroup manager here and its bus answers (connected now, before the
    /// journal's entries are reverted), through files otherwise. Logs once
    /// which ([`Self::route_description`]).
    pub fn for_host(fs: CgroupFs, journal: Journal) -> Self {
        let mut act = Self::new(fs, journal);
        let connected =
            systemd::systemd_manages_cgroups(Path::new("/"), Path::new(systemd::SYSTEM_BUS_SOCKET))
                .and_then(|()| SystemdUnits::connect())
                .and_then(|units| act.use_systemd(units));
        if let Err(e) = connected {
            act.files_only = e.to_string();
        }
        tracing::info!("actuators: {}", act.route_description());
        act
    }

    /// Acts on systemd's units through `units` from now on (reads systemd's
    /// version, and opens a second connection for drift checks). On error
    /// nothing changes: files only.
    pub fn use_systemd(&mut self, units: SystemdUnits) -> Result<(), SystemdError> {
        let version = units.version()?;
        let reader = match units.reader(DRIFT_READ_TIMEOUT) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("drift checks compare cgroup files only, not systemd's values: {e}");
                None
            }
        };
        let release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|r| r.trim().to_owned());
        self.systemd = Some(UnitRoute {
            units,
            reader,
            version,
            release,
        });
        Ok(())
    }

    /// How often, at most, drift checks ask systemd ([`SYSTEMD_DRIFT_EVERY`]
    /// unless set; tests use zero).
    pub fn with_drift_interval(mut self, every: Duration) -> Self {
        self.watch.every = every;
        self
    }

    /// Which route targets take: `systemd units through D-Bus (…), other
    /// cgroups through their files`, or `cgroup files only: <why>`.
    pub fn route_description(&self) -> String {
        match &self.systemd {
            Some(s) => format!(
                "systemd units through D-Bus (systemd {} at {}), other cgroups through their files",
                s.version,
                s.units.address()
            ),
            None => format!("cgroup files only: {}", self.files_only),
        }
    }

    /// The route for `action` ([`route`]): `None` for cgroup files.
    fn unit_of(&self, action: &Action) -> Result<Option<UnitName>, ActError> {
        let Some(cgroup) = cgroup_of(action) else {
            return Ok(None);
        };
        let held = (self.journal.entries().iter())
            .filter(|e| e.target == *cgroup)
            .find_map(Entry::unit);
        let sd = self.systemd.as_ref();
        let r = route(cgroup, sd.is_some(), held, |c| match sd {
            Some(s) => s.units.resolve(c.as_str()),
            None => Ok(None),
        })?;
        Ok(match r {
            Route::Unit(u) => Some(u),
            Route::Files => None,
        })
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
    /// A missing target is [`Applied::TargetAbsent`], not an error. A target
    /// that is a systemd unit is set through systemd ([`route`]).
    pub fn apply(&mut self, policy: &str, action: &Action) -> Result<Applied, ActError> {
        if let Some(unit) = self.unit_of(action)? {
            return self.apply_unit(policy, action, unit);
        }
        let plan = match self.plan(action)? {
            Resolved::Plan(p) => p,
            Resolved::Absent(dir) => return Ok(Applied::TargetAbsent { dir }),
        };
        let dir = parent(&plan.file);
        let id = cgroup_id(&dir);
        let mut before = self.journal.find(&plan.file).cloned();
        // Journaled for a cgroup since removed and made anew at this path:
        // its original and claims were the old cgroup's.
        let stale = before
            .as_ref()
            .is_some_and(|e| e.cgroup_id.is_some() && id.is_some() && e.cgroup_id != id);
        if stale {
            tracing::info!(
                target = %plan.target,
                "{}: the cgroup was made anew since the agent changed it; the claims on the old one are dropped and the new one's original is journaled",
                plan.file.display()
            );
            before = None;
        }
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
                    cgroup_id: id,
                    pending: None,
                    systemd: None,
                };
                (entry, true)
            }
        };
        let phrase = action.to_string();
        // (Re)placed last: of equal claims the newest is in force.
        entry
            .holders
            .retain(|h| !(h.policy == policy && h.action == phrase));
        entry.holders.push(Holder {
            policy: policy.to_owned(),
            action: phrase,
            value: plan.value.clone(),
            unit_value: None,
        });
        // The strictest claim is in force, this one or another's.
        entry.value = in_force(&entry).map_or_else(|| plan.value.clone(), |h| h.value.clone());
        entry.pending = None;
        if before.as_ref() != Some(&entry) {
            self.journal.put(entry.clone())?;
        }
        self.watch.seen.remove(&plan.file);
        // Journaled, not yet written: a crash here leaves an entry whose
        // file still holds its original, which a revert writes again.
        failpoint!("journal-written");
        let written = self.write_control(&plan.file, &entry.value, entry.cgroup_id);
        match written {
            Ok(Wrote::Done) => Ok(Applied::Written {
                file: plan.file,
                original: entry.original,
                value: entry.value,
                journaled,
                fallback: plan.fallback,
                unit: None,
            }),
            // Made anew between journaling and writing: nothing written.
            Ok(Wrote::Recreated) => {
                self.journal.remove(&plan.file)?;
                Ok(Applied::TargetAbsent { dir })
            }
            Err(e) if is_gone(&e) && !dir.is_dir() => {
                self.journal.remove(&plan.file)?;
                Ok(Applied::TargetAbsent { dir })
            }
            Err(source) => {
                // Not made, so not journaled: put back what was there.
                match before {
                    Some(b) => self.journal.put(b)?,
                    None => drop(self.journal.remove(&plan.file)?),
                }
                Err(ActError::Write {
                    path: plan.file,
                    value: entry.value,
                    source,
                })
            }
        }
    }

    /// [`Self::apply`] on a unit: the prior journaled (the one already
    /// journaled for this unit and property, holding the new value, or a new
    /// one from systemd), then `SetUnitProperties`.
    fn apply_unit(
        &mut self,
        policy: &str,
        action: &Action,
        unit: UnitName,
    ) -> Result<Applied, ActError> {
        let Some(sd) = self.systemd.as_ref() else {
            return Err(ActError::NoSystemd {
                unit,
                why: self.files_only.clone(),
            });
        };
        let (Some(target), Some(setting)) = (cgroup_of(action), setting_of(action)) else {
            return Err(ActError::NotMine {
                action: action.to_string(),
            });
        };
        let hybrid = self.fs.layout() == Layout::Hybrid;
        if hybrid && matches!(action, Action::MemoryHigh { .. }) {
            return Err(ActError::Unsupported {
                action: action.to_string(),
                reason: MEMORY_HIGH_ON_V1.into(),
            });
        }
        let dir = self.fs.dir(target);
        let idle = systemd::idle_support(
            sd.version,
            cpu_idle_available(&dir, sd.release.as_deref()),
            hybrid,
        );
        let mapped = systemd::to_systemd(setting, idle)?;
        let value = mapped.value;
        let before = self.journal.find_unit(&unit, value.property()).cloned();
        // The next rung on a unit already held keeps the journaled prior:
        // the unit's own value stays the one restored.
        let held = (before.as_ref()).and_then(|e| e.systemd.clone().map(|p| (e.clone(), p)));
        let (mut entry, prior, journaled) = match held {
            Some((e, prior)) => (e, prior, false),
            None => match sd.units.prepare(&unit, value) {
                Ok(prior) => (
                    Entry {
                        target: target.clone(),
                        file: prior.dropin.clone(),
                        original: prior.original.to_string(),
                        value: String::new(),
                        holders: Vec::new(),
                        since_unix_ms: now_unix_ms(),
                        pid: std::process::id(),
                        cgroup_id: None,
                        pending: None,
                        systemd: None,
                    },
                    prior,
                    true,
                ),
                Err(SystemdError::NoSuchUnit { .. }) => return Ok(Applied::TargetAbsent { dir }),
                Err(e) => return Err(e.into()),
            },
        };
        let phrase = action.to_string();
        // (Re)placed last: of equal claims the newest is in force.
        entry
            .holders
            .retain(|h| !(h.policy == policy && h.action == phrase));
        entry.holders.push(Holder {
            policy: policy.to_owned(),
            action: phrase.clone(),
            value: value.to_string(),
            unit_value: Some(value),
        });
        // The strictest claim is in force, this one or another's.
        let strictest = in_force(&entry).and_then(|h| h.unit_value).unwrap_or(value);
        let prior = prior.with_held(strictest)?;
        entry.systemd = Some(prior.clone());
        entry.value = strictest.to_string();
        entry.pending = None;
        // Journaled before the call: a crash after it finds the change.
        if before.as_ref() != Some(&entry) {
            self.journal.put(entry.clone())?;
        }
        self.watch.seen.remove(&entry.file);
        failpoint!("journal-written");
        match sd.units.apply(&prior) {
            Ok(()) => Ok(Applied::Written {
                file: entry.file,
                original: entry.original,
                value: entry.value,
                journaled,
                fallback: mapped.fallback.map(Fallback::from),
                unit: Some(unit),
            }),
            Err(err) => {
                // Not in force (or, after a timeout, perhaps in force):
                // take this claim out and put back what the others hold, or
                // the unit's own value. What cannot be put back now stays
                // journaled, pending.
                let gone = matches!(err, SystemdError::NoSuchUnit { .. });
                match self.release(entry, |h| h.policy == policy && h.action == phrase) {
                    Ok(_) if gone => Ok(Applied::TargetAbsent { dir }),
                    Ok(_) => Err(err.into()),
                    Err(undo) => {
                        tracing::warn!(policy, "{action}: {err}; undoing it: {undo}");
                        Err(err.into())
                    }
                }
            }
        }
    }

    /// Takes `policy`'s `action` out of force. If another action (of this or
    /// another policy) still holds the file, the strictest of those is put
    /// in force; otherwise the original text is restored and the entry
    /// dropped. A revert that fails stays journaled for
    /// [`Self::retry_pending`].
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
        // A unit's entry waits for a connection to systemd, which this
        // process does not have: it stays pending, saying why.
        let connected = self.systemd.is_some();
        let pending: Vec<Entry> = self
            .journal
            .entries()
            .iter()
            .filter(|e| e.pending.is_some() && (connected || e.systemd.is_none()))
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

    /// Every value held that someone else changed, as found now (one per
    /// journal entry that drifted). Call it each tick: files are compared
    /// every call, systemd is asked at most every [`SYSTEMD_DRIFT_EVERY`]
    /// (and when a unit's files first disagree), each call giving up after
    /// [`DRIFT_READ_TIMEOUT`]. Each episode is logged when it starts (a
    /// warning naming the policy, the target, the value held and the value
    /// found) and when it ends; nothing is repaired.
    pub fn check_drift(&mut self) -> Vec<Drifted> {
        let entries = self.journal.entries();
        let DriftWatch {
            seen,
            every,
            last_round,
            quiet_until,
        } = &mut self.watch;
        if entries.is_empty() {
            seen.clear();
            return Vec::new();
        }
        seen.retain(|file, _| entries.iter().any(|e| e.file == *file));
        let now = Instant::now();
        let reader = (self.systemd.as_ref()).and_then(|s| s.reader.as_ref());
        let mut may_ask = reader.is_some() && quiet_until.is_none_or(|t| now >= t);
        let round = may_ask && last_round.is_none_or(|t| now.duration_since(t) >= *every);
        if round {
            *last_round = Some(now);
        }
        let mut out = Vec::new();
        for e in entries {
            // Nothing is held while a revert is pending.
            let Some(holder) = in_force(e) else {
                continue;
            };
            if e.pending.is_some() {
                continue;
            }
            if !seen.contains_key(&e.file) {
                let fresh = Seen {
                    settling: e.systemd.is_some(),
                    ..Seen::default()
                };
                seen.insert(e.file.clone(), fresh);
            }
            let Some(s) = seen.get_mut(&e.file) else {
                continue;
            };
            let found = match (&e.systemd, reader) {
                (None, _) => file_drift(&e.file, &e.value),
                (Some(prior), reader) => {
                    let dir = self.fs.dir(&e.target);
                    let kernel = if std::mem::take(&mut s.settling) {
                        None
                    } else {
                        systemd::read_kernel(&dir, prior.property()).ok().flatten()
                    };
                    let off =
                        (kernel.as_ref()).is_some_and(|k| !systemd::kernel_agrees(&prior.held, k));
                    let mut gone = false;
                    if let Some(r) = reader
                        && may_ask
                        && (round || (off && s.drift.is_none()))
                    {
                        match r.read(&prior.unit, prior.property()) {
                            Ok(v) => s.systemd = Some(v),
                            Err(SystemdError::NoSuchUnit { .. }) => gone = true,
                            Err(err) => {
                                may_ask = false;
                                *quiet_until = Some(now + DRIFT_QUIET);
                                tracing::warn!(
                                    "drift checks compare only cgroup files for {DRIFT_QUIET:?}: asking systemd failed: {err}"
                                );
                            }
                        }
                    }
                    let live = systemd::Live {
                        systemd: s.systemd.unwrap_or(prior.held),
                        kernel: kernel.map(|k| (dir, k)),
                    };
                    if gone {
                        None
                    } else {
                        live.drift(&prior.unit, &prior.held).map(|d| match d {
                            systemd::Drift::Systemd { held, systemd, .. } => {
                                (held.to_string(), format!("systemd has {systemd}"))
                            }
                            systemd::Drift::Kernel {
                                held, dir, kernel, ..
                            } => (
                                held.to_string(),
                                format!(
                                    "{kernel} in {} (written behind systemd's back)",
                                    dir.display()
                                ),
                            ),
                        })
                    }
                }
            };
            let unit = e.unit().cloned();
            match (found, s.drift.is_some()) {
                (Some((held, found)), was) => {
                    let d = Drifted {
                        policy: holder.policy.clone(),
                        target: e.target.clone(),
                        unit,
                        held,
                        found: found.clone(),
                        started: !was,
                    };
                    if !was {
                        tracing::warn!(
                            policy = %d.policy,
                            target = %d.target,
                            "drift: {d}: someone else changed a value the agent holds; it is left as found"
                        );
                    }
                    s.drift = Some(found);
                    out.push(d);
                }
                (None, true) => {
                    tracing::info!(
                        policy = %holder.policy,
                        target = %e.target,
                        "drift over: {} holds {} again",
                        e.unit().map_or_else(|| e.file.display().to_string(), ToString::to_string),
                        e.value
                    );
                    s.drift = None;
                }
                (None, false) => {}
            }
        }
        out
    }

    /// Drops the holders `lifted` selects from `entry`, then writes what is
    /// left in force (the strictest remaining claim) or the original.
    fn release(
        &mut self,
        mut entry: Entry,
        lifted: impl Fn(&Holder) -> bool,
    ) -> Result<Lifted, ActError> {
        if entry.systemd.is_some() {
            return self.release_unit(entry, lifted);
        }
        entry.holders.retain(|h| !lifted(h));
        let value = in_force(&entry).map_or_else(|| entry.original.clone(), |h| h.value.clone());
        let file = entry.file.clone();
        self.watch.seen.remove(&file);
        let wrote = self.write_control(&file, &value, entry.cgroup_id);
        // Written, the journal not yet updated: a crash here leaves an
        // entry that a revert writes again, harmlessly.
        failpoint!("cgroup-written");
        match wrote {
            Ok(Wrote::Recreated) => {
                tracing::info!(
                    target = %entry.target,
                    "{}: not reverted: the cgroup was removed and made anew at the same path since the agent changed it, so the new one never had the agent's value",
                    file.display()
                );
                self.journal.remove(&file)?;
                Ok(Lifted::Recreated { file })
            }
            Ok(Wrote::Done) if entry.holders.is_empty() => {
                self.journal.remove(&file)?;
                Ok(Lifted::Restored {
                    file,
                    original: value,
                })
            }
            Ok(Wrote::Done) => {
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

    /// [`Self::release`] of a unit's entry, through systemd: the strictest
    /// remaining claim is set (journaled first), or, with none left, the
    /// prior restored ([`SystemdUnits::restore`]).
    fn release_unit(
        &mut self,
        mut entry: Entry,
        lifted: impl Fn(&Holder) -> bool,
    ) -> Result<Lifted, ActError> {
        let Some(prior) = entry.systemd.clone() else {
            return Err(ActError::Parse {
                path: self.journal.path(),
                reason: format!("{} is not a unit's entry", entry.file.display()),
            });
        };
        let unit = prior.unit.clone();
        // Every value the agent set on this property: after a crash between
        // journaling a rung and setting it, the one in force may be another
        // of them than `held`, and it is still the agent's to undo.
        let ours: Vec<systemd::Value> = (entry.holders.iter())
            .filter_map(|h| h.unit_value)
            .chain([prior.held])
            .collect();
        let mut policies: Vec<String> = (entry.holders.iter())
            .filter(|h| lifted(h))
            .map(|h| h.policy.clone())
            .collect();
        policies.dedup();
        entry.holders.retain(|h| !lifted(h));
        let file = entry.file.clone();
        self.watch.seen.remove(&file);
        let Some(sd) = self.systemd.as_ref() else {
            let err = ActError::NoSystemd {
                unit: unit.clone(),
                why: self.files_only.clone(),
            };
            if entry.holders.is_empty() {
                entry.value.clone_from(&entry.original);
            }
            entry.pending = Some(err.to_string());
            self.journal.put(entry)?;
            return Err(err);
        };
        let outcome = match in_force(&entry) {
            Some(top) => {
                let Some(value) = top.unit_value else {
                    return Err(ActError::Parse {
                        path: self.journal.path(),
                        reason: format!(
                            "holder {} of {} has no unit value",
                            top.policy,
                            file.display()
                        ),
                    });
                };
                let next = prior.with_held(value)?;
                entry.systemd = Some(next.clone());
                entry.value = value.to_string();
                entry.pending = None;
                self.journal.put(entry.clone())?;
                match sd.units.apply(&next) {
                    Ok(()) => {
                        let by = entry.holders.iter().map(|h| h.policy.clone()).collect();
                        return Ok(Lifted::StillHeld {
                            file,
                            value: entry.value,
                            by,
                        });
                    }
                    // Gone: its drop-in is put back as it was.
                    Err(SystemdError::NoSuchUnit { .. }) => sd.units.restore(&next),
                    Err(e) => Err(e),
                }
            }
            None => {
                let mut prior = prior;
                if ours.iter().any(|v| *v != prior.held)
                    && let Ok(live) = sd.units.read(&prior.unit, prior.property())
                    && live != prior.held
                    && ours.contains(&live)
                {
                    prior = prior.with_held(live)?;
                }
                sd.units.restore(&prior)
            }
        };
        match outcome {
            Ok(Restored::Restored) => {
                self.journal.remove(&file)?;
                Ok(Lifted::Restored {
                    file,
                    original: entry.original,
                })
            }
            Ok(Restored::Vanished) => {
                self.journal.remove(&file)?;
                Ok(Lifted::Vanished { file })
            }
            Ok(Restored::Superseded { live }) => {
                let held = entry.systemd.as_ref().map(|p| p.held.to_string());
                tracing::warn!(
                    unit = %unit,
                    target = %entry.target,
                    "{unit}: not restored to {}: it was changed to {live} through systemd since the agent set {} (for {}); that value is left in force",
                    entry.original,
                    held.unwrap_or_default(),
                    if policies.is_empty() { "a pending revert".to_owned() } else { policies.join(", ") },
                );
                self.journal.remove(&file)?;
                Ok(Lifted::Superseded {
                    file,
                    unit,
                    live: live.to_string(),
                })
            }
            Err(err) => {
                if entry.holders.is_empty() {
                    entry.value.clone_from(&entry.original);
                }
                tracing::warn!(
                    unit = %unit,
                    target = %entry.target,
                    "setting {unit} back to {} failed, will retry: {err}",
                    entry.value
                );
                entry.pending = Some(err.to_string());
                self.journal.put(entry)?;
                Err(err.into())
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
                    reason: MEMORY_HIGH_ON_V1.into(),
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

const MEMORY_HIGH_ON_V1: &str = "memory.high exists only in cgroup2, and this host's cgroup2 has no memory controller (hybrid layout); v1's memory.soft_limit_in_bytes is a different mechanism and is not substituted";

/// The cgroup an action of this module acts on.
fn cgroup_of(action: &Action) -> Option<&CgroupPath> {
    match action {
        Action::CpuWeight { cgroup, .. }
        | Action::CpuLimit { cgroup, .. }
        | Action::MemoryHigh { cgroup, .. } => Some(cgroup),
        Action::ThrottleConnections { .. } | Action::RejectConnections { .. } => None,
    }
}

/// The action as [`systemd::to_systemd`] takes it.
fn setting_of(action: &Action) -> Option<Setting> {
    Some(match action {
        Action::CpuWeight {
            weight: CpuWeight::Weight(w),
            ..
        } => Setting::CpuWeight(*w),
        Action::CpuWeight {
            weight: CpuWeight::Idle,
            ..
        } => Setting::CpuIdle,
        Action::CpuLimit { cpus, .. } => Setting::CpuLimit { cpus: cpus.get() },
        Action::MemoryHigh { bytes, .. } => Setting::MemoryHigh { bytes: bytes.get() },
        Action::ThrottleConnections { .. } | Action::RejectConnections { .. } => return None,
    })
}

/// Whether the unit's cgroup2 directory `dir` has `cpu.idle`, or will once
/// systemd enables the cpu controller there: its file if the controller is
/// on (`cpu.weight` is there), else the kernel's release (5.15 and later).
fn cpu_idle_available(dir: &Path, release: Option<&str>) -> bool {
    if dir.join("cpu.idle").exists() {
        return true;
    }
    if dir.join("cpu.weight").exists() {
        return false;
    }
    release.is_some_and(|r| {
        let mut n = (r.split(|c: char| !c.is_ascii_digit()))
            .take(2)
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (n.next().unwrap_or(0), n.next().unwrap_or(0)) >= (5, 15)
    })
}

/// True if a cgroup file that was written `written` and now reads `found`
/// still holds it: `memory.high` as the kernel keeps it (whole pages, `max`
/// from `i64::MAX` bytes up), other files field by field.
fn file_agrees(file: &Path, written: &str, found: &str) -> bool {
    use systemd::{KernelValue, MemoryHigh, Value};
    if file.file_name().is_some_and(|n| n == "memory.high")
        && let Ok(bytes) = written.trim().parse::<u64>()
    {
        let shown = match found.trim() {
            "max" => None,
            n => match n.parse() {
                Ok(n) => Some(n),
                Err(_) => return false,
            },
        };
        return systemd::kernel_agrees(
            &Value::MemoryHigh(MemoryHigh::Bytes(bytes)),
            &KernelValue::MemoryHigh(shown),
        );
    }
    written.split_whitespace().eq(found.split_whitespace())
}

/// Whether `found` in a weight file is the kernel's view of a cgroup made
/// idle: with `cpu.idle` 1 (held by another policy, or set by anyone: that
/// file has its own drift check), cgroup2's `cpu.weight` reads the idle
/// weight (3/1024 of the default) rounded, 0 (6.1) or, clamped to the
/// lowest weight, 1 (6.12), and v1's `cpu.shares` reads 3, whatever was
/// written; the written weight comes back when `cpu.idle` goes to 0.
fn idle_explains(file: &Path, found: &str) -> bool {
    let idle_views: &[&str] = match file.file_name().and_then(|n| n.to_str()) {
        Some("cpu.weight") => &["0", "1"],
        Some("cpu.shares") => &["3"],
        _ => return false,
    };
    idle_views.contains(&found.trim())
        && file
            .parent()
            .and_then(|d| fs::read_to_string(d.join("cpu.idle")).ok())
            .is_some_and(|idle| idle.trim() == "1")
}

/// How a cgroup file the agent wrote `written` into differs from it now, as
/// (held, found); `None` if it agrees or cannot be read (the cgroup is gone,
/// and a lift will say so).
fn file_drift(file: &Path, written: &str) -> Option<(String, String)> {
    let found = fs::read_to_string(file).ok()?;
    let found = found.trim_end_matches('\n');
    if file_agrees(file, written, found) || idle_explains(file, found) {
        return None;
    }
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Some((
        format!("{name} {written:?}"),
        format!("{found:?} in {}", file.display()),
    ))
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

/// The cgroup control files the agent writes: a journal entry naming any
/// other file is refused, and no other file is written.
pub const CONTROL_FILES: [&str; 6] = [
    "cpu.weight",
    "cpu.idle",
    "cpu.max",
    "memory.high",
    "cpu.shares",
    "cpu.cfs_quota_us",
];

/// What [`CgroupActuator::write_control`] did.
enum Wrote {
    /// The value was written.
    Done,
    /// The cgroup has another id than the one expected: nothing written.
    Recreated,
}

impl CgroupActuator {
    /// One `write(2)` of `value` to the existing control file `file`
    /// (cgroupfs takes a value per write; never create a file, which on a
    /// fake tree would hide a typo). The cgroup's directory is opened and
    /// where it really is checked (below a hierarchy of this actuator),
    /// then the file opened in it without following a link; with `id`,
    /// nothing is written if the directory has another id now.
    fn write_control(&self, file: &Path, value: &str, id: Option<u64>) -> io::Result<Wrote> {
        let refused = |why: String| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refused to write {}: {why}", file.display()),
            )
        };
        let name = file.file_name().unwrap_or_default();
        if !CONTROL_FILES.iter().any(|c| name == *c) {
            return Err(refused("not a control file the agent writes".into()));
        }
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent(file))?;
        let real = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        if !self.roots.iter().any(|r| below(&real, &r.real)) {
            return Err(refused(format!(
                "its directory is {}, not a cgroup below {}",
                real.display(),
                roots_text(&self.roots)
            )));
        }
        if let Some(id) = id
            && dir.metadata()?.ino() != id
        {
            return Ok(Wrote::Recreated);
        }
        let name = std::ffi::CString::new(name.as_bytes()).map_err(io::Error::other)?;
        // SAFETY: openat on a directory fd we own and a NUL-terminated name;
        // the fd returned, if any, is owned by the File made of it below.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a file descriptor just opened and owned by nobody else.
        let mut f = unsafe { File::from_raw_fd(fd) };
        failpoint!("cgroup-write-error", |errno: Option<String>| {
            let errno = errno.and_then(|e| e.parse().ok()).unwrap_or(libc::EBUSY);
            Err(io::Error::from_raw_os_error(errno))
        });
        f.write_all(value.as_bytes())?;
        Ok(Wrote::Done)
    }
}

/// The id of the cgroup whose directory is `dir` (its inode number; on
/// cgroup2, what `bpf_get_current_cgroup_id` returns), `None` if it is not
/// there.
fn cgroup_id(dir: &Path) -> Option<u64> {
    fs::symlink_metadata(dir)
        .ok()
        .filter(fs::Metadata::is_dir)
        .map(|m| m.ino())
}

/// True if `path` lies strictly below `root` (a cgroup, not the root one).
fn below(path: &Path, root: &Path) -> bool {
    path.starts_with(root) && path != root
}

fn roots_text(roots: &[Root]) -> String {
    let all: Vec<String> = roots
        .iter()
        .map(|r| r.given.display().to_string())
        .collect();
    all.join(" or ")
}

/// Why the journal entry `e` may not be used, if it may not: its file is
/// not a control file the agent writes in a cgroup below `roots`, or, for a
/// unit, not the unit's own runtime drop-in for the property.
fn vet(roots: &[Root], e: &Entry) -> Result<(), String> {
    plain_absolute(&e.file)?;
    if let Some(prior) = &e.systemd {
        let own = prior
            .property()
            .dropin_path(Path::new(""), &prior.unit, prior.transient);
        if e.file != prior.dropin {
            return Err(format!(
                "its file is not the drop-in its systemd record names ({})",
                prior.dropin.display()
            ));
        }
        if !e.file.ends_with(&own) || prior.original.property() != prior.property() {
            return Err(format!(
                "not {}'s own runtime drop-in for {} (…/{})",
                prior.unit,
                prior.property(),
                own.display()
            ));
        }
        return Ok(());
    }
    let name = e.file.file_name().unwrap_or_default();
    if !CONTROL_FILES.iter().any(|c| name == *c) {
        return Err(format!(
            "{} is not a control file the agent writes ({})",
            name.to_string_lossy(),
            CONTROL_FILES.join(", ")
        ));
    }
    let dir = parent(&e.file);
    let Some(root) = roots.iter().find(|r| below(&dir, &r.given)) else {
        return Err(format!("not in a cgroup below {}", roots_text(roots)));
    };
    match fs::canonicalize(&dir) {
        Ok(real) if below(&real, &root.real) => {}
        Ok(real) => {
            return Err(format!(
                "its directory is really {}, not below {}",
                real.display(),
                root.given.display()
            ));
        }
        // The cgroup is gone: nothing will be written (the revert says so).
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(format!("cannot resolve its directory: {err}")),
    }
    match fs::symlink_metadata(&e.file) {
        Ok(m) if m.file_type().is_symlink() => Err("it is a symbolic link".into()),
        _ => Ok(()),
    }
}

/// An absolute path with no `.` or `..` component.
fn plain_absolute(path: &Path) -> Result<(), String> {
    let bytes = path.as_os_str().as_bytes();
    if !bytes.starts_with(b"/") {
        return Err("not an absolute path".into());
    }
    if bytes.split(|&b| b == b'/').any(|c| c == b"." || c == b"..") {
        return Err("its path has a `.` or `..` component".into());
    }
    Ok(())
}

/// How loose a claim is (lower: stricter): the value as a number where the
/// lowest limits most, unlimited (`max`, -1, unset) the loosest.
fn looseness(e: &Entry, h: &Holder) -> u128 {
    use systemd::{CpuQuota, CpuWeight as Weight, MemoryHigh, Value};
    const LOOSEST: u128 = u128::MAX;
    if e.systemd.is_some() {
        return match h.unit_value {
            Some(Value::CpuWeight(Weight::Idle)) => 0,
            Some(Value::CpuWeight(Weight::Weight(w))) => u128::from(w),
            Some(Value::CpuQuota(CpuQuota::PerSecUsec(u))) => u128::from(u),
            Some(Value::MemoryHigh(MemoryHigh::Bytes(b))) => u128::from(b),
            Some(
                Value::CpuWeight(Weight::Unset)
                | Value::CpuQuota(CpuQuota::Unset)
                | Value::MemoryHigh(MemoryHigh::Unset),
            )
            | None => LOOSEST,
        };
    }
    let number = |t: &str| t.trim().parse::<u128>().ok();
    let name = e.file.file_name().unwrap_or_default();
    let v = h.value.trim();
    let key = if name == "cpu.idle" {
        // 1 is idle, the strictest.
        number(v).map(|n| u128::from(n == 0))
    } else if name == "cpu.max" {
        // `QUOTA PERIOD`, compared as a share of the period.
        let mut parts = v.split_whitespace();
        match (parts.next().and_then(number), parts.next().and_then(number)) {
            (Some(q), Some(p)) if p > 0 => Some(q * 1_000_000 / p),
            _ => None,
        }
    } else {
        // cpu.weight, cpu.shares, cpu.cfs_quota_us (-1: none), memory.high.
        number(v)
    };
    key.unwrap_or(LOOSEST)
}

/// The claim in force on `e`: the strictest holder, of equals the newest.
fn in_force(e: &Entry) -> Option<&Holder> {
    (e.holders.iter().enumerate())
        .min_by_key(|(i, h)| (looseness(e, h), Reverse(*i)))
        .map(|(_, h)| h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tempfile::TempDir;

    use super::*;
    use crate::act::systemd::test_support::{Bus, dbus_daemon, fake, start_bus};
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
    fn an_idle_groups_weight_is_the_kernels_view_not_a_drift() {
        let dir = TempDir::new().unwrap();
        let w = dir.path().join("cpu.weight");
        fs::write(dir.path().join("cpu.idle"), "1\n").unwrap();
        // 6.1 reads 0, 6.12 reads 1 (the idle weight rounded, then clamped).
        assert!(idle_explains(&w, "0"));
        assert!(idle_explains(&w, "1"));
        assert!(!idle_explains(&w, "50"));
        assert!(idle_explains(&dir.path().join("cpu.shares"), "3"));
        fs::write(dir.path().join("cpu.idle"), "0\n").unwrap();
        assert!(!idle_explains(&w, "1"));
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

    #[test]
    fn targets_route_through_systemd_only_for_its_own_units() {
        let hog = UnitName::parse("hog.service").unwrap();
        let never = |_: &CgroupPath| -> Result<Option<UnitName>, String> {
            panic!("systemd asked when it need not be")
        };
        let says = |u: Option<&UnitName>| {
            let u = u.cloned();
            move |_: &CgroupPath| -> Result<Option<UnitName>, String> { Ok(u) }
        };
        let unit = cg("/system.slice/hog.service");
        // No systemd: files, whatever the name.
        assert_eq!(route(&unit, false, None, never), Ok(Route::Files));
        // Not a unit's name: files, without asking.
        for c in [
            "/batch",
            "/system.slice/hog.service/worker",
            "/x/backup.timer",
        ] {
            assert_eq!(route(&cg(c), true, None, never), Ok(Route::Files), "{c}");
        }
        // A unit's name that systemd's manager owns: through systemd.
        assert_eq!(
            route(&unit, true, None, says(Some(&hog))),
            Ok(Route::Unit(hog.clone()))
        );
        // One it does not (a user manager's service, a unit not loaded): files.
        let users = cg("/user.slice/user-1000.slice/user@1000.service/app.slice/hog.service");
        assert_eq!(route(&users, true, None, says(None)), Ok(Route::Files));
        // Asking failed: the caller's error, not a file write on a unit.
        let failed = |_: &CgroupPath| -> Result<Option<UnitName>, String> { Err("timeout".into()) };
        assert_eq!(route(&unit, true, None, failed), Err("timeout".to_owned()));
        // Held through systemd already: that unit, without asking.
        assert_eq!(
            route(&unit, true, Some(&hog), never),
            Ok(Route::Unit(hog.clone()))
        );
        // Whether cpu.idle will be there once systemd enables the controller.
        let d = tempfile::tempdir().unwrap();
        assert!(cpu_idle_available(d.path(), Some("6.1.0-18-amd64")));
        assert!(cpu_idle_available(d.path(), Some("5.15.0")));
        assert!(!cpu_idle_available(d.path(), Some("5.10.0-28-amd64")));
        assert!(!cpu_idle_available(d.path(), None));
        write(&d.path().join("cpu.weight"), "100\n");
        assert!(
            !cpu_idle_available(d.path(), Some("6.1.0")),
            "enabled, no cpu.idle"
        );
        write(&d.path().join("cpu.idle"), "0\n");
        assert!(cpu_idle_available(d.path(), None));
    }

    /// A fake systemd 252 on a private dbus-daemon whose units' cgroups are
    /// in the host's fake cgroup2 tree and whose drop-ins are beside it.
    struct FakeSystemd {
        bus: Bus,
        state: fake::Shared,
        root: PathBuf,
    }

    impl FakeSystemd {
        /// `None` (the test is skipped) without dbus-daemon.
        fn start(host: &Host, units: &[(&str, &'static str, &str)]) -> Option<Self> {
            let Some(exe) = dbus_daemon() else {
                println!("SKIPPED: dbus-daemon is not installed (apt-get install dbus)");
                return None;
            };
            let bus = start_bus(&exe);
            let state = fake::Shared::default();
            {
                let mut st = state.lock().unwrap();
                st.cgroup_root = Some(host.path(""));
                for (name, section, cgroup) in units {
                    st.units
                        .insert((*name).into(), fake::Unit::new(section, cgroup));
                }
            }
            let root = host.d.path().to_path_buf();
            fake::serve(&bus.address, root.clone(), state.clone()).unwrap();
            Some(Self { bus, state, root })
        }

        fn actuator(&self, host: &Host) -> CgroupActuator {
            let mut act = host.actuator().with_drift_interval(Duration::ZERO);
            let units = SystemdUnits::connect_to(&self.bus.address, &self.root).unwrap();
            act.use_systemd(units).unwrap();
            act
        }

        fn prop(&self, unit: &str, name: &str) -> u64 {
            self.state.lock().unwrap().units[unit].props[name]
        }

        /// What someone else's `systemctl set-property` does.
        fn set_property(&self, unit: &str, name: &str, v: u64) {
            fake::set(&mut self.state.lock().unwrap(), &self.root, unit, name, v);
        }

        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut self.state.lock().unwrap().calls)
        }

        fn dropin(&self, unit: &str, name: &str) -> PathBuf {
            (self.root)
                .join("run/systemd/system.control")
                .join(format!("{unit}.d/50-{name}.conf"))
        }
    }

    fn unit_host() -> Host {
        Host::unified(&[
            ("system.slice/hog.service/cpu.weight", "100\n"),
            ("system.slice/hog.service/cpu.idle", "0\n"),
            ("system.slice/hog.service/cpu.max", "max 100000\n"),
            ("system.slice/hog.service/memory.high", "max\n"),
            ("system.slice/gone.service/cpu.max", "max 100000\n"),
            ("batch/cpu.max", "max 100000\n"),
        ])
    }

    const HOG: &str = "/system.slice/hog.service";

    /// Runs `f` with the log captured (plain text, one line per event).
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
        (out, text)
    }

    #[test]
    fn through_systemd_a_crash_is_reverted_by_the_next_start() {
        let host = unit_host();
        let Some(sd) = FakeSystemd::start(&host, &[("hog.service", "Service", HOG)]) else {
            return;
        };
        let mut act = sd.actuator(&host);
        assert!(
            act.route_description()
                .starts_with("systemd units through D-Bus (systemd 252 at unix:"),
            "{}",
            act.route_description()
        );
        let hog = UnitName::parse("hog.service").unwrap();

        // Idle is CPUWeight=idle, 0 on the wire, journaled with systemd's value before.
        let applied = act.apply("p", &weight(HOG, CpuWeight::Idle)).unwrap();
        let weight_dropin = sd.dropin("hog.service", "CPUWeight");
        assert_eq!(
            applied,
            Applied::Written {
                file: weight_dropin.clone(),
                original: "CPUWeight unset (100)".into(),
                value: "CPUWeight=idle".into(),
                journaled: true,
                fallback: None,
                unit: Some(hog.clone()),
            }
        );
        let calls = sd.calls();
        assert!(
            calls.contains(
                &"SetUnitProperties(sba(sv)) hog.service runtime=true [CPUWeight t 0]".to_owned()
            ),
            "{calls:?}"
        );
        assert!(weight_dropin.exists());
        assert_eq!(
            host.read("system.slice/hog.service/cpu.idle"),
            "1\n",
            "systemd's realize"
        );
        let text = fs::read_to_string(act.journal().path()).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
        assert!(text.contains("\"systemd\": {"), "{text}");

        // Two rungs of quota: the second keeps the unit's own value as the original.
        let _ = act.apply("p", &limit(HOG, 0.5)).unwrap();
        let second = act.apply("p", &limit(HOG, 0.2)).unwrap();
        assert!(
            matches!(&second, Applied::Written { journaled: false, original, value, .. }
                if original == "CPUQuota unset (max)" && value == "CPUQuota=20%"),
            "{second:?}"
        );
        assert_eq!(sd.prop("hog.service", "CPUQuotaPerSecUSec"), 200_000);
        let quota = act
            .journal()
            .find_unit(&hog, systemd::Property::CpuQuota)
            .unwrap();
        assert_eq!(quota.holders.len(), 2);
        let prior = quota.systemd.as_ref().unwrap();
        assert_eq!(
            prior.original,
            systemd::Value::CpuQuota(systemd::CpuQuota::Unset)
        );
        assert_eq!(
            prior.held,
            systemd::Value::CpuQuota(systemd::CpuQuota::PerSecUsec(200_000))
        );

        // Not units: a plain cgroup, and a unit-named one systemd does not have.
        sd.calls();
        for c in ["/batch", "/system.slice/gone.service"] {
            let applied = act.apply("q", &limit(c, 0.2)).unwrap();
            assert!(
                matches!(&applied, Applied::Written { unit: None, value, .. } if value == "20000 100000"),
                "{applied:?}"
            );
        }
        assert_eq!(host.read("batch/cpu.max"), "20000 100000");
        assert_eq!(sd.calls(), ["GetUnit gone.service"], "no call for /batch");
        assert_eq!(act.journal().entries().len(), 4);

        // The process dies without reverting.
        drop(act);
        // A start that cannot reach systemd puts the files back, and keeps
        // the units' entries for a start that can.
        let mut files_only = host.actuator();
        let report = files_only.revert_all();
        assert_eq!(report.restored.len(), 2, "{report}");
        assert_eq!(report.failed.len(), 2, "{report}");
        assert!(
            report.to_string().contains("no connection to systemd"),
            "{report}"
        );
        assert_eq!(host.read("batch/cpu.max"), "max 100000");
        assert_eq!(files_only.pending(), 2);
        assert!(
            files_only.retry_pending().is_clean(),
            "waits for a connection"
        );
        drop(files_only);
        assert_eq!(sd.prop("hog.service", "CPUWeight"), 0, "still the agent's");

        let mut act = sd.actuator(&host);
        assert_eq!(act.journal().entries().len(), 2);
        let report = act.revert_all();
        assert_eq!(report.restored.len(), 2, "{report}");
        assert!(report.is_clean(), "{report}");
        assert_eq!(sd.prop("hog.service", "CPUWeight"), u64::MAX);
        assert_eq!(sd.prop("hog.service", "CPUQuotaPerSecUSec"), u64::MAX);
        assert!(!weight_dropin.exists(), "no drop-in of the agent is left");
        assert!(!sd.dropin("hog.service", "CPUQuota").exists());
        assert!(act.journal().is_empty());
        assert_eq!(
            host.read("system.slice/hog.service/cpu.max"),
            "max 100000\n"
        );
    }

    #[test]
    fn through_systemd_stepping_down_puts_the_rung_below_back() {
        let host = unit_host();
        let Some(sd) = FakeSystemd::start(&host, &[("hog.service", "Service", HOG)]) else {
            return;
        };
        let mut act = sd.actuator(&host);
        let _ = act.apply("p", &limit(HOG, 0.5)).unwrap();
        let _ = act.apply("q", &memory(HOG, 1 << 30)).unwrap();
        let _ = act.apply("p", &limit(HOG, 0.2)).unwrap();
        let lifted = act.lift("p", &limit(HOG, 0.2)).unwrap();
        assert_eq!(
            lifted,
            Lifted::StillHeld {
                file: sd.dropin("hog.service", "CPUQuota"),
                value: "CPUQuota=50%".into(),
                by: vec!["p".into()],
            }
        );
        assert_eq!(sd.prop("hog.service", "CPUQuotaPerSecUSec"), 500_000);
        // A policy's release leaves the other's hold in force.
        let report = act.lift_policy("p");
        assert_eq!(report.restored.len(), 1, "{report}");
        assert_eq!(sd.prop("hog.service", "CPUQuotaPerSecUSec"), u64::MAX);
        assert!(!sd.dropin("hog.service", "CPUQuota").exists());
        assert_eq!(sd.prop("hog.service", "MemoryHigh"), 1 << 30);
        assert!(matches!(
            act.lift("q", &memory(HOG, 1 << 30)).unwrap(),
            Lifted::Restored { .. }
        ));
        assert!(act.journal().is_empty());
        assert!(!sd.dropin("hog.service", "MemoryHigh").exists());
    }

    #[test]
    fn through_systemd_a_crash_before_a_rung_was_set_still_reverts_the_rung_below() {
        let host = unit_host();
        let Some(sd) = FakeSystemd::start(&host, &[("hog.service", "Service", HOG)]) else {
            return;
        };
        let mut act = sd.actuator(&host);
        let _ = act.apply("p", &limit(HOG, 0.5)).unwrap();
        let _ = act.apply("p", &limit(HOG, 0.2)).unwrap();
        drop(act);
        // As if the process died after journaling 0.2 and before systemd set
        // it: systemd still has the agent's 0.5, which is not someone else's.
        sd.set_property("hog.service", "CPUQuotaPerSecUSec", 500_000);
        let mut act = sd.actuator(&host);
        let report = act.revert_all();
        assert_eq!(report.restored.len(), 1, "{report}");
        assert!(report.superseded.is_empty(), "{report}");
        assert_eq!(sd.prop("hog.service", "CPUQuotaPerSecUSec"), u64::MAX);
        assert!(!sd.dropin("hog.service", "CPUQuota").exists());
    }

    #[test]
    fn through_systemd_a_refused_change_leaves_nothing_journaled() {
        let host = unit_host();
        let Some(sd) = FakeSystemd::start(&host, &[("hog.service", "Service", HOG)]) else {
            return;
        };
        sd.state.lock().unwrap().denied.push("hog.service".into());
        let mut act = sd.actuator(&host);
        let err = act.apply("p", &limit(HOG, 0.2)).unwrap_err();
        assert!(
            matches!(err, ActError::Systemd(SystemdError::AccessDenied { .. })),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("SetUnitProperties hog.service CPUQuota=20%: access denied"),
            "{err}"
        );
        assert!(act.journal().is_empty(), "{:?}", act.journal().entries());
        assert_eq!(act.pending(), 0);
        let calls = sd.calls();
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.starts_with("SetUnitProperties"))
                .count(),
            1,
            "nothing to put back, so nothing else is set: {calls:?}"
        );
    }

    #[test]
    fn drift_through_systemd_is_seen_at_once_and_reported_once_per_episode() {
        let host = unit_host();
        let Some(sd) = FakeSystemd::start(&host, &[("hog.service", "Service", HOG)]) else {
            return;
        };
        let mut act = sd.actuator(&host);
        let _ = act.apply("p", &limit(HOG, 0.2)).unwrap();
        assert_eq!(
            host.read("system.slice/hog.service/cpu.max"),
            "20000 100000\n"
        );
        assert_eq!(act.check_drift(), [], "the files settle");
        assert_eq!(act.check_drift(), [], "systemd and the files agree");

        // A cgroup file written behind systemd's back.
        write(
            &host.path("system.slice/hog.service/cpu.max"),
            "max 100000\n",
        );
        let (d, log) = logged(|| act.check_drift());
        let [first] = d.as_slice() else {
            panic!("{d:?}")
        };
        assert!(
            log.contains("WARN") && log.contains(&format!("drift: {first}")),
            "{log}"
        );
        assert!(first.started);
        assert_eq!((first.policy.as_str(), first.target.as_str()), ("p", HOG));
        assert_eq!(
            first.unit.as_ref().map(UnitName::as_str),
            Some("hog.service")
        );
        assert_eq!(first.held, "CPUQuota=20%");
        assert!(
            first.to_string().starts_with(
                "policy p: /system.slice/hog.service (hog.service): held CPUQuota=20%, found cpu.max \"max 100000\" in "
            ) && first.found.ends_with("(written behind systemd's back)"),
            "{first}"
        );
        let (d, log) = logged(|| act.check_drift());
        assert!(d.len() == 1 && !d[0].started, "the same episode: {d:?}");
        assert_eq!(log, "", "warned once per episode");
        write(
            &host.path("system.slice/hog.service/cpu.max"),
            "20000 100000\n",
        );
        let (d, log) = logged(|| act.check_drift());
        assert_eq!(d, [], "over");
        assert!(
            log.contains("INFO")
                && log.contains("drift over: hog.service holds CPUQuota=20% again"),
            "{log}"
        );

        // systemctl set-property: systemd's value and its files.
        sd.set_property("hog.service", "CPUQuotaPerSecUSec", 500_000);
        let d = act.check_drift();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].started);
        assert_eq!(d[0].found, "systemd has CPUQuota=50%");
        sd.set_property("hog.service", "CPUQuotaPerSecUSec", 200_000);
        assert_eq!(act.check_drift(), []);

        // systemd's value alone (its files unchanged): seen by asking it.
        sd.state
            .lock()
            .unwrap()
            .units
            .get_mut("hog.service")
            .unwrap()
            .props
            .insert("CPUQuotaPerSecUSec", 300_000);
        let d = act.check_drift();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].found, "systemd has CPUQuota=30%");
        // Lifting leaves their value in force and says so.
        let (lifted, log) = logged(|| act.lift("p", &limit(HOG, 0.2)).unwrap());
        assert!(
            log.contains("WARN")
                && log.contains("hog.service: not restored to CPUQuota unset (max): it was changed to CPUQuota=30% through systemd since the agent set CPUQuota=20% (for p); that value is left in force"),
            "{log}"
        );
        assert_eq!(
            lifted,
            Lifted::Superseded {
                file: sd.dropin("hog.service", "CPUQuota"),
                unit: UnitName::parse("hog.service").unwrap(),
                live: "CPUQuota=30%".into(),
            }
        );
        assert_eq!(sd.prop("hog.service", "CPUQuotaPerSecUSec"), 300_000);
        assert!(act.journal().is_empty());
        assert_eq!(act.check_drift(), []);
    }

    #[test]
    fn drift_of_a_file_is_its_text_no_longer_what_was_written() {
        let host = Host::unified(&[("b/cpu.max", "max 100000\n"), ("b/memory.high", "max\n")]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.2)).unwrap();
        let _ = act.apply("p", &memory("/b", 1_000_000)).unwrap();
        // The kernel keeps memory.high in whole pages: not drift.
        // SAFETY: sysconf takes no pointers.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        write(
            &host.path("b/memory.high"),
            &format!("{}\n", 1_000_000 / page * page),
        );
        assert_eq!(act.check_drift(), []);
        write(&host.path("b/cpu.max"), "max 100000\n");
        let d = act.check_drift();
        let [first] = d.as_slice() else {
            panic!("{d:?}")
        };
        assert_eq!(
            first.to_string(),
            format!(
                "policy p: /b: held cpu.max \"20000 100000\", found \"max 100000\" in {}",
                host.path("b/cpu.max").display()
            )
        );
        assert!(first.started && first.unit.is_none());
        assert!(!act.check_drift()[0].started);
        // The policy's next change writes its value again: no drift.
        let _ = act.apply("p", &limit("/b", 0.1)).unwrap();
        assert_eq!(act.check_drift(), []);
        let report = act.revert_all();
        assert!(report.is_clean(), "{report}");
        assert_eq!(act.check_drift(), []);
    }

    #[test]
    fn a_weight_read_as_the_kernels_idle_view_is_not_drift() {
        let host = Host::unified(&[("b/cpu.weight", "100\n"), ("b/cpu.idle", "0\n")]);
        let mut act = host.actuator();
        let _ = act
            .apply("p", &weight("/b", CpuWeight::Weight(50)))
            .unwrap();
        let _ = act.apply("q", &weight("/b", CpuWeight::Idle)).unwrap();
        assert_eq!(host.read("b/cpu.idle").trim(), "1");
        // What cgroup2 shows of an idle cgroup's weight.
        write(&host.path("b/cpu.weight"), "0\n");
        assert_eq!(act.check_drift(), [], "idle makes cpu.weight read 0");
        // Another value is someone else's change.
        write(&host.path("b/cpu.weight"), "70\n");
        let d = act.check_drift();
        assert!(
            d.iter().any(|d| d.to_string().contains("cpu.weight")),
            "{d:?}"
        );
        // A weight of 0 without idle is not the kernel's view either.
        write(&host.path("b/cpu.weight"), "0\n");
        write(&host.path("b/cpu.idle"), "0\n");
        let d = act.check_drift();
        assert!(
            d.iter()
                .any(|d| d.to_string().contains("cpu.weight \"50\"")),
            "{d:?}"
        );
    }

    #[test]
    fn a_journaled_unit_is_put_back_only_through_its_own_drop_in() {
        let host = unit_host();
        let Some(sd) = FakeSystemd::start(&host, &[("hog.service", "Service", HOG)]) else {
            return;
        };
        let own = sd.dropin("hog.service", "CPUWeight");
        let journal = host.journal_dir().join("journal.json");
        // The journal names `victim` as the unit's drop-in.
        let tamper = |victim: &Path| {
            let mut act = sd.actuator(&host);
            let _ = act.apply("p", &weight(HOG, CpuWeight::Weight(5))).unwrap();
            drop(act);
            write(victim, "keep\n");
            let text = fs::read_to_string(&journal).unwrap();
            let text = text.replace(own.to_str().unwrap(), victim.to_str().unwrap());
            fs::write(&journal, text).unwrap();
        };
        // Not a drop-in's path at all: refused when the actuator is made,
        // named in a warning, kept aside.
        let victim = host.d.path().join("etc/important.conf");
        tamper(&victim);
        let (mut act, log) = logged(|| sd.actuator(&host));
        assert!(
            log.contains("journal entry refused")
                && log.contains(victim.to_str().unwrap())
                && log.contains("not hog.service's own runtime drop-in for CPUWeight"),
            "{log}"
        );
        assert!(act.journal().is_empty());
        let report = act.revert_all();
        assert_eq!(report, RevertReport::default(), "{report}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep\n");
        assert!(host.journal_dir().join("journal.json.rejected").exists());
        // Shaped like one, under another root: systemd's route refuses it.
        let _ = act.apply("p", &weight(HOG, CpuWeight::Weight(5))).unwrap();
        let _ = act.lift("p", &weight(HOG, CpuWeight::Weight(5))).unwrap();
        drop(act);
        let victim = (host.d.path())
            .join("elsewhere/run/systemd/system.control/hog.service.d/50-CPUWeight.conf");
        tamper(&victim);
        let mut act = sd.actuator(&host);
        let report = act.revert_all();
        assert_eq!(report.failed.len(), 1, "{report}");
        assert!(
            report
                .to_string()
                .contains("not the unit's own runtime drop-in"),
            "{report}"
        );
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep\n");
        assert_eq!(act.pending(), 1);
    }

    /// Plants a journal as a dead process would have left it, with
    /// `entries` as they are on disk.
    fn plant_journal(host: &Host, entries: serde_json::Value) {
        drop(Journal::open(&host.journal_dir()).unwrap());
        let doc = serde_json::json!({
            "version": 1, "pid": 1, "written_unix_ms": 0, "entries": entries
        });
        fs::write(host.journal_dir().join("journal.json"), doc.to_string()).unwrap();
    }

    /// A file entry on disk: `policy` p holds `value` 1 in `file`.
    fn planted(target: &str, file: &Path, original: &str) -> serde_json::Value {
        serde_json::json!({
            "target": target, "file": file, "original": original, "value": "1",
            "holders": [{"policy": "p", "action": "set 1", "value": "1"}],
            "since_unix_ms": 1, "pid": 1
        })
    }

    #[test]
    fn a_journal_naming_a_file_outside_the_cgroup_root_is_refused_not_written() {
        let host = Host::unified(&[("b/cpu.weight", "5\n")]);
        let outside = host.d.path().join("outside");
        write(&outside.join("target"), "keep\n");
        write(&outside.join("b/cpu.weight"), "keep\n");
        plant_journal(
            &host,
            serde_json::json!([
                planted("/b", &outside.join("target"), "pwned"),
                planted("/b", &outside.join("b/cpu.weight"), "pwned"),
                planted("/b", &host.path("b/cgroup.procs"), "1"),
                planted("/b", &host.path("b/cpu.weight"), "100"),
            ]),
        );
        let (mut act, log) = logged(|| host.actuator());
        let report = act.revert_all();
        assert_eq!(
            fs::read_to_string(outside.join("target")).unwrap(),
            "keep\n"
        );
        assert_eq!(
            fs::read_to_string(outside.join("b/cpu.weight")).unwrap(),
            "keep\n"
        );
        // The genuine entry is still reverted.
        assert_eq!(host.read("b/cpu.weight"), "100");
        assert_eq!(report.restored, [host.path("b/cpu.weight")], "{report}");
        assert!(report.is_clean(), "{report}");
        assert!(act.journal().is_empty());
        // Each refused entry is named in a warning, and kept aside for people.
        for bad in [
            outside.join("target"),
            outside.join("b/cpu.weight"),
            host.path("b/cgroup.procs"),
        ] {
            assert!(
                log.contains("WARN") && log.contains(&bad.display().to_string()),
                "{} in {log}",
                bad.display()
            );
        }
        let aside = fs::read_to_string(host.journal_dir().join("journal.json.rejected")).unwrap();
        assert!(aside.contains("outside/target"), "{aside}");
    }

    #[test]
    fn a_journal_naming_a_symlinked_control_file_is_refused_not_followed() {
        use std::os::unix::fs::symlink;
        let host = Host::unified(&[("c/cpu.weight", "5\n")]);
        let outside = host.d.path().join("outside");
        write(&outside.join("cpu.weight"), "keep\n");
        write(&outside.join("d/cpu.max"), "keep\n");
        // The control file is a link out of the hierarchy ...
        fs::remove_file(host.path("c/cpu.weight")).unwrap();
        symlink(outside.join("cpu.weight"), host.path("c/cpu.weight")).unwrap();
        // ... and so is a cgroup's directory.
        symlink(outside.join("d"), host.path("d")).unwrap();
        plant_journal(
            &host,
            serde_json::json!([
                planted("/c", &host.path("c/cpu.weight"), "pwned"),
                planted("/d", &host.path("d/cpu.max"), "pwned"),
            ]),
        );
        let (mut act, log) = logged(|| host.actuator());
        let report = act.revert_all();
        assert_eq!(
            fs::read_to_string(outside.join("cpu.weight")).unwrap(),
            "keep\n"
        );
        assert_eq!(
            fs::read_to_string(outside.join("d/cpu.max")).unwrap(),
            "keep\n"
        );
        assert!(report.restored.is_empty(), "{report}");
        assert!(
            log.contains("c/cpu.weight") && log.contains("d/cpu.max"),
            "{log}"
        );
        assert!(act.journal().is_empty());
    }

    #[test]
    fn a_journal_path_with_dot_dot_is_refused() {
        let host = Host::hybrid(&[("cpu/b/cpu.shares", "10\n")]);
        let outside = host.d.path().join("outside");
        write(&outside.join("cpu.shares"), "keep\n");
        // Lexically under the v1 root, really beside it.
        let sneaky = host.path("cpu/b/../../../outside/cpu.shares");
        assert!(sneaky.starts_with(host.path("cpu")));
        plant_journal(&host, serde_json::json!([planted("/b", &sneaky, "pwned")]));
        let (mut act, log) = logged(|| host.actuator());
        let report = act.revert_all();
        assert_eq!(
            fs::read_to_string(outside.join("cpu.shares")).unwrap(),
            "keep\n"
        );
        assert!(report.restored.is_empty(), "{report}");
        assert!(log.contains("outside/cpu.shares"), "{log}");
        assert_eq!(host.read("cpu/b/cpu.shares"), "10\n");
    }

    /// Removes the directory `rel` and makes it anew with `files` (its
    /// inode, the cgroup's id, changes: the new one exists before the old
    /// one is removed, so the number cannot be reused).
    fn recreate(host: &Host, rel: &str, files: &[(&str, &str)]) {
        let old = host.path(&format!("{rel}.old"));
        fs::rename(host.path(rel), &old).unwrap();
        for (f, t) in files {
            write(&host.path(rel).join(f), t);
        }
        fs::remove_dir_all(old).unwrap();
    }

    #[test]
    fn a_cgroup_made_anew_at_the_same_path_is_not_reverted_into() {
        let host = Host::unified(&[("b/cpu.weight", "100\n"), ("c/cpu.weight", "100\n")]);
        let mut act = host.actuator();
        let _ = act.apply("p", &weight("/b", CpuWeight::Weight(5))).unwrap();
        let _ = act.apply("p", &weight("/c", CpuWeight::Weight(5))).unwrap();
        // The agent dies; someone sets /b up anew with its own weight.
        drop(act);
        recreate(&host, "b", &[("cpu.weight", "300\n")]);
        let mut act = host.actuator();
        let report = act.revert_all();
        assert_eq!(
            host.read("b/cpu.weight"),
            "300\n",
            "the new cgroup keeps its own value"
        );
        assert_eq!(
            host.read("c/cpu.weight"),
            "100",
            "the same cgroup is reverted"
        );
        assert_eq!(report.restored, [host.path("c/cpu.weight")], "{report}");
        assert_eq!(report.vanished, [host.path("b/cpu.weight")], "{report}");
        assert!(report.to_string().contains("recreated"), "{report}");
        assert!(act.journal().is_empty());
    }

    #[test]
    fn a_journal_entry_without_a_cgroup_id_is_trusted_as_before() {
        // As older governors wrote it: no id, reverted whatever is there.
        let host = Host::unified(&[("b/cpu.weight", "5\n")]);
        plant_journal(
            &host,
            serde_json::json!([planted("/b", &host.path("b/cpu.weight"), "100")]),
        );
        recreate(&host, "b", &[("cpu.weight", "5\n")]);
        let mut act = host.actuator();
        let report = act.revert_all();
        assert_eq!(report.restored, [host.path("b/cpu.weight")], "{report}");
        assert_eq!(host.read("b/cpu.weight"), "100");
    }

    #[test]
    fn a_cgroup_made_anew_while_held_gets_its_own_original_journaled() {
        let host = Host::unified(&[("b/cpu.weight", "100\n")]);
        let mut act = host.actuator();
        let _ = act.apply("p", &weight("/b", CpuWeight::Weight(5))).unwrap();
        recreate(&host, "b", &[("cpu.weight", "300\n")]);
        let applied = act
            .apply("q", &weight("/b", CpuWeight::Weight(50)))
            .unwrap();
        assert!(
            matches!(&applied, Applied::Written { original, journaled: true, .. } if original == "300"),
            "{applied:?}"
        );
        assert_eq!(host.read("b/cpu.weight"), "50");
        let _ = act.lift("q", &weight("/b", CpuWeight::Weight(50))).unwrap();
        assert_eq!(host.read("b/cpu.weight"), "300");
        assert!(act.journal().is_empty());
    }

    #[test]
    fn two_policies_on_one_file_the_strictest_claim_is_in_force() {
        let host = Host::unified(&[
            ("b/cpu.max", "max 100000\n"),
            ("b/cpu.weight", "100\n"),
            ("b/memory.high", "max\n"),
        ]);
        let mut act = host.actuator();
        let cases = [
            (
                limit("/b", 0.2),
                limit("/b", 0.5),
                "b/cpu.max",
                "20000 100000",
                "50000 100000",
                "max 100000",
            ),
            (
                weight("/b", CpuWeight::Weight(10)),
                weight("/b", CpuWeight::Weight(50)),
                "b/cpu.weight",
                "10",
                "50",
                "100",
            ),
            (
                memory("/b", 1 << 20),
                memory("/b", 1 << 30),
                "b/memory.high",
                "1048576",
                "1073741824",
                "max",
            ),
        ];
        for (strict, loose, rel, strict_v, loose_v, original) in cases {
            let _ = act.apply("p", &strict).unwrap();
            // A looser claim after a stricter one leaves the stricter in force.
            let _ = act.apply("q", &loose).unwrap();
            assert_eq!(host.read(rel), strict_v, "{loose} after {strict}");
            assert!(act.check_drift().is_empty());
            // Releasing the stricter puts the looser in force.
            let lifted = act.lift("p", &strict).unwrap();
            assert_eq!(
                lifted,
                Lifted::StillHeld {
                    file: host.path(rel),
                    value: loose_v.into(),
                    by: vec!["q".into()]
                }
            );
            assert_eq!(host.read(rel), loose_v);
            // Releasing both restores the original.
            let _ = act.lift("q", &loose).unwrap();
            assert_eq!(host.read(rel), original);
            // The other order of release: the looser goes first.
            let _ = act.apply("p", &strict).unwrap();
            let _ = act.apply("q", &loose).unwrap();
            let lifted = act.lift("q", &loose).unwrap();
            assert!(
                matches!(lifted, Lifted::StillHeld { ref value, .. } if value == strict_v),
                "{lifted:?}"
            );
            assert_eq!(host.read(rel), strict_v);
            let _ = act.lift("p", &strict).unwrap();
            assert_eq!(host.read(rel), original);
        }
        assert!(act.journal().is_empty());

        // Hybrid: the v1 quota, where -1 (no limit) is the loosest.
        let host = Host::hybrid(&[
            ("cpu/b/cpu.cfs_quota_us", "-1\n"),
            ("cpu/b/cpu.cfs_period_us", "100000\n"),
            ("cpu/b/cpu.shares", "1024\n"),
        ]);
        let mut act = host.actuator();
        let _ = act.apply("p", &limit("/b", 0.2)).unwrap();
        let _ = act.apply("q", &limit("/b", 0.5)).unwrap();
        assert_eq!(host.read("cpu/b/cpu.cfs_quota_us"), "20000");
        let _ = act
            .apply("p", &weight("/b", CpuWeight::Weight(10)))
            .unwrap();
        let _ = act
            .apply("q", &weight("/b", CpuWeight::Weight(50)))
            .unwrap();
        assert_eq!(host.read("cpu/b/cpu.shares"), "102");
        let report = act.lift_policy("p");
        assert!(report.is_clean(), "{report}");
        assert_eq!(host.read("cpu/b/cpu.cfs_quota_us"), "50000");
        assert_eq!(host.read("cpu/b/cpu.shares"), "512");
        let _ = act.lift_policy("q");
        assert_eq!(host.read("cpu/b/cpu.cfs_quota_us"), "-1");
        assert_eq!(host.read("cpu/b/cpu.shares"), "1024");
    }

    #[test]
    fn through_systemd_two_policies_the_strictest_claim_is_in_force() {
        let host = unit_host();
        let Some(sd) = FakeSystemd::start(&host, &[("hog.service", "Service", HOG)]) else {
            return;
        };
        let mut act = sd.actuator(&host);
        let quota = || sd.prop("hog.service", "CPUQuotaPerSecUSec");
        let _ = act.apply("p", &limit(HOG, 0.2)).unwrap();
        let _ = act.apply("q", &limit(HOG, 0.5)).unwrap();
        assert_eq!(quota(), 200_000, "the looser claim after the stricter");
        let lifted = act.lift("p", &limit(HOG, 0.2)).unwrap();
        assert_eq!(
            lifted,
            Lifted::StillHeld {
                file: sd.dropin("hog.service", "CPUQuota"),
                value: "CPUQuota=50%".into(),
                by: vec!["q".into()],
            }
        );
        assert_eq!(quota(), 500_000);
        let _ = act.lift("q", &limit(HOG, 0.5)).unwrap();
        assert_eq!(quota(), u64::MAX);
        assert!(!sd.dropin("hog.service", "CPUQuota").exists());

        // Weights: idle is the strictest, then the lowest weight.
        let w = || sd.prop("hog.service", "CPUWeight");
        let _ = act.apply("p", &weight(HOG, CpuWeight::Idle)).unwrap();
        let _ = act.apply("q", &weight(HOG, CpuWeight::Weight(5))).unwrap();
        assert_eq!(w(), 0, "idle stays in force");
        let _ = act.lift("p", &weight(HOG, CpuWeight::Idle)).unwrap();
        assert_eq!(w(), 5);
        let _ = act.lift("q", &weight(HOG, CpuWeight::Weight(5))).unwrap();
        assert_eq!(w(), u64::MAX);
        assert!(act.journal().is_empty());
    }
}
