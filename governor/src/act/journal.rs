//! The journal: every cgroup file the agent changes, with the text it held
//! before, and every unit property it sets through systemd, with what
//! systemd had before ([`Prior`]), written to disk before the change is made.
//!
//! It is what makes every change revertible (safety invariant 2): on exit the
//! agent writes each original back; after a crash (`kill -9`, OOM, power loss
//! of the process) the next start finds the entries the dead process left
//! and reverts them.
//!
//! Format: one JSON file, `journal.json`, rewritten whole on every change
//! (write `journal.json.tmp` in the same directory, fsync it, rename it over
//! the old one, fsync the directory), so a reader sees the old or the new
//! journal and never half of one. A few entries per policy make this cheap.
//!
//! An entry of a unit acted on through systemd carries its [`Prior`] in
//! `systemd` (and each holder its value in `unit_value`); its `file` is the
//! unit's runtime drop-in, and `original` / `value` are texts for people.
//! Journals holding such entries are written as format version 2, which
//! older governors refuse rather than misread (they would write the text
//! into the drop-in); journals of cgroup files only are still version 1, and
//! both are read.
//!
//! Reboots: the journal records the kernel's boot id. Entries written
//! under another boot (a journal kept on a disk, not the default tmpfs)
//! describe cgroups that were made anew since, by whoever set them up: they
//! are not reverted but moved aside to `journal.json.before-reboot`, and a
//! warning says so.
//!
//! Ownership: the process that has the journal open holds an exclusive
//! `flock` on `journal.lock`. The kernel drops it when the process dies,
//! however it dies, so "the lock is free" means "nobody is applying these
//! entries any more" without trusting pids, which are reused.
//!
//! Trust: the agent runs as root and, at start, writes back what the journal
//! says, so only root may be able to change it (like sshd's `StrictModes`).
//! [`Journal::open`] refuses a directory, any directory above it, or a
//! journal file that is not owned by root (or by the process's own user,
//! for tests without root) or that its group or others may write (a sticky
//! parent such as `/tmp` excepted), and a journal file that is a symbolic
//! link; the error says what to run to fix it. A directory it creates is
//! made 0700. What the entries name is checked too, by the actuator, which
//! knows the cgroup hierarchies ([`Journal::reject`]): an entry naming
//! anything but a control file the agent writes, under those hierarchies,
//! is never reverted; the journal as it was is kept aside in
//! `journal.json.rejected`.
//!
//! Cgroup ids: an entry of a cgroup file records the id of its cgroup (the
//! inode number of the directory holding the file: cgroup2's, or the v1
//! cpu controller's on hybrid hosts) in `cgroup_id`. A cgroup removed and
//! made anew at the same path has another id, and is not reverted into.
//! Entries of older governors have no id and are trusted as before; older
//! governors ignore the field, so the format version is unchanged.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Read as _, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use governor_engine::snapshot::CgroupPath;

use super::systemd::{Prior, Property, UnitName, Value};

/// A named failpoint (tikv's `fail` crate) at a critical instant of the
/// actuators, for the crash and fault tests: compiled only with the
/// `failpoints` feature, which no build of the agent has; otherwise nothing.
/// With a second argument, a closure whose value the enclosing function
/// returns when the test configures `return(ARG)`.
///
/// The points: `journal-written` (a change is durable in the journal, the
/// cgroup file or unit not yet written), `cgroup-written` (a lift or revert
/// has written the file, or failed to; the journal is not yet updated),
/// `cgroup-write-error`
/// (an error in place of the write of a control file: `return(ERRNO)`).
macro_rules! failpoint {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    }};
    ($name:literal, $e:expr) => {{
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $e);
    }};
}
pub(crate) use failpoint;

/// Where the agent keeps its journal (a tmpfs: entries do not outlive a
/// reboot, and neither do the cgroup values they restore).
pub const DEFAULT_DIR: &str = "/run/governor";

/// True if `dir` is on a memory file system (tmpfs, ramfs), `None` if that
/// cannot be told. On a disk, every change the agent makes first waits for
/// the journal's fsyncs (the README gives the figures), and
/// the journal outlives a reboot, after which its entries no longer
/// describe the cgroups (reverting them would write stale values).
pub fn on_memory_fs(dir: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills a zeroed struct we own from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let f_type = st.f_type as i64;
    Some(f_type == TMPFS_MAGIC || f_type == RAMFS_MAGIC)
}

/// The journal file in its directory.
pub const FILE: &str = "journal.json";
/// The lock file whose `flock` says a live process owns the journal.
pub const LOCK: &str = "journal.lock";
const TMP: &str = "journal.json.tmp";
/// Where a journal written before a reboot is moved, unreverted.
pub const BEFORE_REBOOT: &str = "journal.json.before-reboot";
/// Where a journal with entries the actuator refused is kept, as it was.
pub const REJECTED: &str = "journal.json.rejected";
/// The kernel's id of this boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// Version of the file format of journals with cgroup files only.
const VERSION_FILES: u32 = 1;
/// Version of the file format of journals with an entry acted on through
/// systemd; the newest this governor reads, a newer one is refused rather
/// than misread.
const VERSION_UNITS: u32 = 2;

/// A journal problem, with the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another live process has this journal open.
    #[error(
        "journal {dir} is in use by another process (it holds {dir}/{LOCK}); is another governor running?"
    )]
    Busy {
        /// The journal directory.
        dir: PathBuf,
    },
    /// A file or directory of the journal could not be created, read or written.
    #[error("journal file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The journal's directory, a directory above it, or its file may be
    /// changed by someone other than root: nothing is read from it, and the
    /// agent does not start.
    #[error(
        "journal {path}: {problem}; the agent runs as root and writes back what its journal names, so only root may be able to change it: {fix}"
    )]
    Unsafe {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// The journal file exists but cannot be read as a journal. Nothing is
    /// reverted from it: the values it held are unknown.
    #[error(
        "journal {path} is not a governor journal ({reason}); restore the cgroup values it names by hand, then remove it"
    )]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One policy's claim on a journaled file: the value it wants there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The policy's name.
    pub policy: String,
    /// The action, as one phrase (`cpu_limit 0.2 CPUs on cgroup /batch`):
    /// lifting names the action, and one policy may hold a file through
    /// several rungs.
    pub action: String,
    /// The text this holder wrote (for a unit: its value, as text).
    pub value: String,
    /// For an entry acted on through systemd: the value this holder set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_value: Option<Value>,
}

/// One changed cgroup file, or one property of a unit set through systemd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The cgroup the file belongs to (relative to the cgroup2 mount, also
    /// on hybrid hosts where the file lives in the v1 cpu hierarchy).
    pub target: CgroupPath,
    /// The file, absolute; for a unit, its runtime drop-in for the property
    /// (`/run/systemd/system.control/hog.service.d/50-CPUQuota.conf`).
    pub file: PathBuf,
    /// Its text before the agent first changed it (trailing newline removed):
    /// what a revert writes back, exactly. For a unit, systemd's value
    /// before, as text (`systemd` has it exactly).
    pub original: String,
    /// The text the file should hold now: the value of the claim in force
    /// (see `holders`), or `original` while a failed revert is pending.
    pub value: String,
    /// Who holds the change, oldest first. The strictest claim is in force
    /// (the lowest weight, `idle` before any weight, the lowest quota, the
    /// fewest bytes; of equal claims the newest). Empty while a revert is
    /// pending.
    pub holders: Vec<Holder>,
    /// When the file was first changed, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// The pid of the agent that changed it.
    pub pid: u32,
    /// For a cgroup file: the id of its cgroup when the original was read
    /// (the inode number of the file's directory). A revert skips a cgroup
    /// that has another id now (made anew at the same path). Absent in
    /// entries of units and of older governors (trusted as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Why the last write of `value` failed, if it did (a revert to retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Set if the target is a systemd unit acted on through systemd: the
    /// unit, its value and runtime drop-in before the agent, and the value
    /// held now (what a revert and a drift check need). Absent in entries
    /// of cgroup files, and in every journal of older governors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<Prior>,
}

impl Entry {
    /// True if `policy` holds this file.
    pub fn held_by(&self, policy: &str) -> bool {
        self.holders.iter().any(|h| h.policy == policy)
    }

    /// The unit, if this entry is acted on through systemd.
    pub fn unit(&self) -> Option<&UnitName> {
        self.systemd.as_ref().map(|p| &p.unit)
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    /// Pid of the process that wrote the file last (for people reading it).
    pid: u32,
    written_unix_ms: u64,
    /// The boot the entries belong to (absent in journals of older
    /// governors, and where the kernel does not say: then trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    entries: Vec<Entry>,
}

/// The open journal: its entries in memory, mirrored to disk on each change.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    entries: Vec<Entry>,
    boot_id: Option<String>,
    /// Held for the journal's lifetime; closing it releases the `flock`.
    _lock: File,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Opens (creating, mode 0700) the journal in `dir` and takes ownership
    /// of it. Entries already there were left by a process that is gone
    /// (the lock proves it): revert them before applying anything new
    /// ([`crate::act::cgroup::CgroupActuator::revert_all`]).
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let boot_id = fs::read_to_string(BOOT_ID)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        Self::open_in_boot(dir, boot_id)
    }

    /// [`Journal::open`] in the boot `boot_id` (`None`: unknown, every
    /// entry is trusted).
    fn open_in_boot(dir: &Path, boot_id: Option<String>) -> Result<Self, JournalError> {
        match fs::symlink_metadata(dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err(dir))?;
                // Whatever the umask: the agent's own directory is private.
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
            }
            Err(source) => {
                return Err(JournalError::Io {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
        check_dir(dir)?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(JournalError::Busy {
                    dir: dir.to_path_buf(),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(JournalError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        // A temporary file is a write that did not finish: the rename never
        // happened, so journal.json is the last complete journal.
        let tmp = dir.join(TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => tracing::warn!(
                "removed {}: an unfinished journal write of a process that died",
                tmp.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(JournalError::Io {
                    path: tmp,
                    source: e,
                });
            }
        }
        let path = dir.join(FILE);
        let (mut entries, written_in) = match read_trusted(&path)? {
            Some(text) => parse(&text, &path)?,
            None => (Vec::new(), None),
        };
        if let (Some(then), Some(now)) = (&written_in, &boot_id)
            && then != now
            && !entries.is_empty()
        {
            let aside = dir.join(BEFORE_REBOOT);
            fs::rename(&path, &aside).map_err(io_err(&aside))?;
            let files: Vec<String> = (entries.iter())
                .map(|e| e.file.display().to_string())
                .collect();
            tracing::warn!(
                "the journal holds {} change(s) made before a reboot (boot {then}, now {now}): not reverted, the cgroups were set up anew since; moved to {} ({})",
                entries.len(),
                aside.display(),
                files.join(", ")
            );
            entries.clear();
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            entries,
            boot_id,
            _lock: lock,
        })
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The journal file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Every entry, in the order they were first made.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// True if no change is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `file`, if it was changed.
    pub fn find(&self, file: &Path) -> Option<&Entry> {
        self.entries.iter().find(|e| e.file == file)
    }

    /// The entry of `property` of `unit`, if it was set through systemd.
    pub fn find_unit(&self, unit: &UnitName, property: Property) -> Option<&Entry> {
        self.entries.iter().find(|e| {
            e.systemd
                .as_ref()
                .is_some_and(|p| p.unit == *unit && p.property() == property)
        })
    }

    /// Records `entry` (replacing the one of the same file) and writes the
    /// journal to disk. On failure nothing changes, in memory or on disk.
    pub fn put(&mut self, entry: Entry) -> Result<(), JournalError> {
        let mut next = self.entries.clone();
        match next.iter_mut().find(|e| e.file == entry.file) {
            Some(e) => *e = entry,
            None => next.push(entry),
        }
        self.commit(next)
    }

    /// Forgets the entry of `file` and writes the journal to disk; returns it.
    pub fn remove(&mut self, file: &Path) -> Result<Option<Entry>, JournalError> {
        let Some(i) = self.entries.iter().position(|e| e.file == file) else {
            return Ok(None);
        };
        let mut next = self.entries.clone();
        let gone = next.remove(i);
        self.commit(next)?;
        Ok(Some(gone))
    }

    /// Takes every entry `vet` refuses (it says why) out of the journal, so
    /// that nothing is ever written from it: the journal file as it was is
    /// kept in [`REJECTED`] (replacing an older one), a warning names each
    /// entry and why, and the journal is written without them. Returns the
    /// refused entries' files, with why.
    ///
    /// The entries are gone from memory even if the disk cannot be written
    /// (then the error says why, and the journal on disk still has them for
    /// the next start to refuse again).
    pub fn reject(
        &mut self,
        vet: impl Fn(&Entry) -> Result<(), String>,
    ) -> Result<Vec<(PathBuf, String)>, JournalError> {
        let mut refused = Vec::new();
        let mut kept = Vec::new();
        for e in &self.entries {
            match vet(e) {
                Ok(()) => kept.push(e.clone()),
                Err(why) => refused.push((e.file.clone(), why)),
            }
        }
        if refused.is_empty() {
            return Ok(refused);
        }
        let aside = self.dir.join(REJECTED);
        for (file, why) in &refused {
            tracing::warn!(
                "journal entry refused, not reverted: {} ({why}); the journal as it was is kept in {}",
                file.display(),
                aside.display()
            );
        }
        self.entries = kept.clone();
        let path = self.path();
        let text = read_trusted(&path)?.unwrap_or_default();
        self.write_file(REJECTED, &text)?;
        self.commit(kept)?;
        Ok(refused)
    }

    fn commit(&mut self, next: Vec<Entry>) -> Result<(), JournalError> {
        self.write_atomically(&next)?;
        self.entries = next;
        Ok(())
    }

    /// Writes the whole journal to a temporary file in the same directory,
    /// fsyncs it, renames it over the journal and fsyncs the directory, so
    /// that after a crash at any point the journal is the old or the new one.
    fn write_atomically(&self, entries: &[Entry]) -> Result<(), JournalError> {
        let doc = OnDisk {
            version: if entries.iter().any(|e| e.systemd.is_some()) {
                VERSION_UNITS
            } else {
                VERSION_FILES
            },
            pid: std::process::id(),
            written_unix_ms: now_unix_ms(),
            boot_id: self.boot_id.clone(),
            entries: entries.to_vec(),
        };
        let mut text = serde_json::to_string_pretty(&doc).map_err(|e| JournalError::Io {
            path: self.path(),
            source: io::Error::other(e),
        })?;
        text.push('\n');
        self.write_file(FILE, &text)
    }

    /// Writes `text` as the file `name` of the journal's directory, whole
    /// (a temporary file, fsynced, renamed over it, the directory fsynced).
    /// A write that fails (a full or read-only file system) removes its
    /// temporary file: one left behind is what a process that died leaves,
    /// and the next start says so.
    fn write_file(&self, name: &str, text: &str) -> Result<(), JournalError> {
        let tmp = self.dir.join(TMP);
        let path = self.dir.join(name);
        let written = (OpenOptions::new().create(true).truncate(true).write(true))
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(io_err(&tmp))
            .and_then(|()| fs::rename(&tmp, &path).map_err(io_err(&path)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }
}

/// True if `uid` may own the journal: root, or the process's own user (the
/// same for the agent, which runs as root; tests may run without it).
fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// Checks that only root can change `dir` or what is in it: `dir` and
/// every directory above it (links resolved) owned by root, and not
/// writable by group or others (above `dir`, a sticky directory such as
/// `/tmp` may be: nobody else can rename or remove what is in it).
fn check_dir(dir: &Path) -> Result<(), JournalError> {
    let real = fs::canonicalize(dir).map_err(io_err(dir))?;
    for (i, p) in real.ancestors().enumerate() {
        let what = if i == 0 {
            "journal_dir"
        } else {
            "a directory above journal_dir"
        };
        let m = fs::metadata(p).map_err(io_err(p))?;
        let unsafe_ = |problem: String, fix: String| JournalError::Unsafe {
            path: p.to_path_buf(),
            problem,
            fix,
        };
        if !m.is_dir() {
            return Err(unsafe_(
                format!("{what} is not a directory"),
                "set journal_dir to a directory".into(),
            ));
        }
        if !trusted_owner(m.uid()) {
            return Err(unsafe_(
                format!("{what} is owned by uid {}, not root", m.uid()),
                format!("chown root {}", p.display()),
            ));
        }
        let sticky = m.mode() & 0o1000 != 0;
        if m.mode() & 0o022 != 0 && !(i > 0 && sticky) {
            return Err(unsafe_(
                format!(
                    "{what} is writable by its group or others (mode {:04o})",
                    m.mode() & 0o7777
                ),
                format!("chmod go-w {}", p.display()),
            ));
        }
    }
    Ok(())
}

/// The text of the journal file `path` (`None` if there is none), read
/// without following a link, if only root can change it.
fn read_trusted(path: &Path) -> Result<Option<String>, JournalError> {
    let unsafe_ = |problem: String, fix: String| JournalError::Unsafe {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(unsafe_(
                "the journal file is a symbolic link (never followed)".into(),
                format!(
                    "replace it with the file it names if that is a journal of this host, else remove it (rm {})",
                    path.display()
                ),
            ));
        }
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let m = f.metadata().map_err(io_err(path))?;
    if !m.is_file() {
        return Err(unsafe_(
            "the journal file is not a regular file".into(),
            format!("remove it (rm {})", path.display()),
        ));
    }
    if !trusted_owner(m.uid()) {
        return Err(unsafe_(
            format!("the journal file is owned by uid {}, not root", m.uid()),
            format!(
                "check what it names, then chown root {}, or remove it",
                path.display()
            ),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_(
            format!(
                "the journal file is writable by its group or others (mode {:04o})",
                m.mode() & 0o7777
            ),
            format!(
                "check what it names, then chmod go-w {}, or remove it",
                path.display()
            ),
        ));
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io_err(path))?;
    Ok(Some(text))
}

/// The entries of a journal file and the boot they were written in.
fn parse(text: &str, path: &Path) -> Result<(Vec<Entry>, Option<String>), JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let doc: OnDisk = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    if !(VERSION_FILES..=VERSION_UNITS).contains(&doc.version) {
        return Err(corrupt(format!(
            "format version {} (this governor reads {VERSION_FILES} and {VERSION_UNITS})",
            doc.version
        )));
    }
    Ok((doc.entries, doc.boot_id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn memory_file_systems_are_told_from_disks() {
        // /dev/shm is a tmpfs on Debian and in its containers.
        if Path::new("/dev/shm").is_dir() {
            assert_eq!(on_memory_fs(Path::new("/dev/shm")), Some(true));
        }
        // /proc is neither: a journal there is not on a memory fs.
        assert_eq!(on_memory_fs(Path::new("/proc")), Some(false));
        assert_eq!(on_memory_fs(Path::new("/no/such/dir")), None);
    }

    fn entry(file: &str, original: &str, value: &str, policy: &str) -> Entry {
        Entry {
            target: CgroupPath::new("/batch").unwrap(),
            file: PathBuf::from(file),
            original: original.into(),
            value: value.into(),
            holders: vec![Holder {
                policy: policy.into(),
                action: format!("set {value}"),
                value: value.into(),
                unit_value: None,
            }],
            since_unix_ms: 1,
            pid: 42,
            cgroup_id: None,
            pending: None,
            systemd: None,
        }
    }

    #[test]
    fn entries_round_trip_through_the_file() {
        let d = tempfile::tempdir().unwrap();
        let mut a = entry("/cg/batch/cpu.max", "max 100000", "20000 100000", "p");
        a.cgroup_id = Some(4026531835);
        let mut b = entry("/cg/batch/cpu.idle", "0", "1", "q");
        b.pending = Some("EBUSY".into());
        {
            let mut j = Journal::open(d.path()).unwrap();
            assert!(j.is_empty());
            j.put(a.clone()).unwrap();
            j.put(b.clone()).unwrap();
        }
        let mut j = Journal::open(d.path()).unwrap();
        assert_eq!(j.entries(), [a.clone(), b.clone()]);
        // Replacing keeps the order; removing persists too.
        let mut a2 = a.clone();
        a2.value = "10000 100000".into();
        j.put(a2.clone()).unwrap();
        assert_eq!(j.remove(&b.file).unwrap(), Some(b));
        assert_eq!(j.remove(Path::new("/nope")).unwrap(), None);
        drop(j);
        let j = Journal::open(d.path()).unwrap();
        assert_eq!(j.entries(), [a2]);
        // The file is readable JSON naming what a human needs to revert by hand.
        let text = fs::read_to_string(j.path()).unwrap();
        for needle in [
            "\"original\": \"max 100000\"",
            "\"file\": \"/cg/batch/cpu.max\"",
            "\"policy\": \"p\"",
            "\"cgroup_id\": 4026531835",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }

    #[test]
    fn changes_made_before_a_reboot_are_moved_aside_not_reverted() {
        let d = tempfile::tempdir().unwrap();
        let boot = |id: &str| Some(id.to_owned());
        let a = entry("/cg/x/cpu.weight", "100", "1", "p");
        (Journal::open_in_boot(d.path(), boot("one")).unwrap())
            .put(a.clone())
            .unwrap();
        let text = fs::read_to_string(d.path().join(FILE)).unwrap();
        assert!(text.contains("\"boot_id\": \"one\""), "{text}");
        // Same boot (a crash, a restart): the entry is there to revert.
        assert_eq!(
            Journal::open_in_boot(d.path(), boot("one"))
                .unwrap()
                .entries(),
            std::slice::from_ref(&a)
        );
        // Unknown boot now: trusted as before.
        assert_eq!(
            Journal::open_in_boot(d.path(), None).unwrap().entries(),
            std::slice::from_ref(&a)
        );
        // Another boot: nothing to revert; the file is kept aside for people.
        let mut j = Journal::open_in_boot(d.path(), boot("two")).unwrap();
        assert!(j.is_empty());
        assert!(!d.path().join(FILE).exists());
        let aside = fs::read_to_string(d.path().join(BEFORE_REBOOT)).unwrap();
        assert!(aside.contains("/cg/x/cpu.weight"), "{aside}");
        // New changes are journaled under the new boot.
        let b = entry("/cg/y/cpu.weight", "100", "5", "q");
        j.put(b.clone()).unwrap();
        drop(j);
        assert_eq!(
            Journal::open_in_boot(d.path(), boot("two"))
                .unwrap()
                .entries(),
            [b]
        );
    }

    #[test]
    fn a_journal_without_a_boot_id_is_trusted() {
        // As written by governors before the boot id was recorded.
        let d = tempfile::tempdir().unwrap();
        let a = entry("/cg/x/cpu.weight", "100", "1", "p");
        let old = serde_json::json!({
            "version": 1, "pid": 7, "written_unix_ms": 0, "entries": [a.clone()]
        });
        fs::write(d.path().join(FILE), old.to_string()).unwrap();
        let j = Journal::open_in_boot(d.path(), Some("now".into())).unwrap();
        assert_eq!(j.entries(), [a]);
    }

    #[test]
    fn a_second_owner_is_refused_while_the_first_lives() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        // flock locks belong to the open file, so this conflicts even within one process.
        let err = Journal::open(d.path()).unwrap_err();
        assert!(matches!(err, JournalError::Busy { .. }), "{err}");
        assert!(err.to_string().contains(LOCK));
        drop(j);
        Journal::open(d.path()).unwrap();
    }

    #[test]
    fn an_unfinished_write_leaves_the_previous_journal() {
        let d = tempfile::tempdir().unwrap();
        let a = entry("/cg/x/cpu.weight", "100", "1", "p");
        Journal::open(d.path()).unwrap().put(a.clone()).unwrap();
        // A process died between writing the temporary file and the rename.
        fs::write(d.path().join(TMP), "{\"version\": 1, \"entr").unwrap();
        let j = Journal::open(d.path()).unwrap();
        assert_eq!(j.entries(), [a]);
        assert!(!d.path().join(TMP).exists());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::open(d.path()).unwrap();
        let a = entry("/cg/x/cpu.weight", "100", "1", "p");
        j.put(a.clone()).unwrap();
        // The rename target cannot be replaced: a directory in the journal's place.
        fs::remove_file(j.path()).unwrap();
        fs::create_dir(j.path()).unwrap();
        fs::write(j.path().join("keep"), "").unwrap();
        let err = j
            .put(entry("/cg/y/cpu.weight", "100", "1", "p"))
            .unwrap_err();
        assert!(err.to_string().contains(FILE), "{err}");
        assert_eq!(j.entries(), [a]);
        // Nothing a later start would take for the write of a dead process.
        assert!(
            !d.path().join(TMP).exists(),
            "the temporary file is removed"
        );
    }

    #[test]
    fn a_corrupt_or_newer_journal_is_refused_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(FILE), "not json").unwrap();
        let err = Journal::open(d.path()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }));
        assert!(err.to_string().contains(FILE), "{err}");
        fs::write(
            d.path().join(FILE),
            "{\"version\": 9, \"pid\": 1, \"written_unix_ms\": 0, \"entries\": []}",
        )
        .unwrap();
        let err = Journal::open(d.path()).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(err.to_string().contains("reads 1 and 2"), "{err}");
    }

    #[test]
    fn a_journal_of_an_older_governor_still_loads() {
        // Exactly as the governor before systemd units wrote it: version 1,
        // no `systemd` in entries, no `unit_value` in holders.
        let d = tempfile::tempdir().unwrap();
        let old = r#"{
  "version": 1,
  "pid": 4242,
  "written_unix_ms": 1700000000000,
  "boot_id": "b",
  "entries": [
    {
      "target": "/batch",
      "file": "/sys/fs/cgroup/batch/cpu.max",
      "original": "max 100000",
      "value": "20000 100000",
      "holders": [
        {
          "policy": "p",
          "action": "cpu_limit 0.2 CPUs on cgroup /batch",
          "value": "20000 100000"
        }
      ],
      "since_unix_ms": 1700000000000,
      "pid": 4242
    }
  ]
}
"#;
        fs::write(d.path().join(FILE), old).unwrap();
        let j = Journal::open_in_boot(d.path(), Some("b".into())).unwrap();
        let [e] = j.entries() else {
            panic!("{:?}", j.entries())
        };
        assert_eq!(e.file, Path::new("/sys/fs/cgroup/batch/cpu.max"));
        assert_eq!(
            (e.original.as_str(), e.systemd.as_ref()),
            ("max 100000", None)
        );
        assert_eq!(e.holders[0].unit_value, None);
        assert_eq!(e.pending, None);
        assert_eq!(e.cgroup_id, None, "no id: trusted as before");
    }

    #[test]
    fn a_unit_entry_round_trips_and_makes_the_journal_version_2() {
        use crate::act::systemd::{CpuQuota, Value};
        let d = tempfile::tempdir().unwrap();
        let hog = UnitName::parse("hog.service").unwrap();
        let dropin = PathBuf::from("/run/systemd/system.control/hog.service.d/50-CPUQuota.conf");
        let held = Value::CpuQuota(CpuQuota::PerSecUsec(200_000));
        let prior = Prior {
            unit: hog.clone(),
            original: Value::CpuQuota(CpuQuota::Unset),
            held,
            transient: false,
            dropin: dropin.clone(),
            dropin_before: None,
        };
        let mut unit = entry(dropin.to_str().unwrap(), "", "", "p");
        unit.target = CgroupPath::new("/system.slice/hog.service").unwrap();
        unit.original = prior.original.to_string();
        unit.value = held.to_string();
        unit.holders[0].value = held.to_string();
        unit.holders[0].unit_value = Some(held);
        unit.systemd = Some(prior);
        let file = entry("/cg/batch/cpu.weight", "100", "5", "q");
        let mut j = Journal::open(d.path()).unwrap();
        j.put(file.clone()).unwrap();
        let version = |d: &Path| -> u64 {
            let text = fs::read_to_string(d.join(FILE)).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["version"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(version(d.path()), 1, "files only: older governors read it");
        j.put(unit.clone()).unwrap();
        assert_eq!(version(d.path()), 2, "older governors refuse it");
        let text = fs::read_to_string(j.path()).unwrap();
        for needle in [
            "\"systemd\": {",
            "\"unit\": \"hog.service\"",
            "\"unit_value\": {",
            "50-CPUQuota.conf",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        drop(j);
        let mut j = Journal::open(d.path()).unwrap();
        assert_eq!(j.entries(), [file.clone(), unit.clone()]);
        assert_eq!(
            j.find_unit(&hog, crate::act::systemd::Property::CpuQuota),
            Some(&unit)
        );
        assert_eq!(
            j.find_unit(&hog, crate::act::systemd::Property::CpuWeight),
            None
        );
        assert_eq!(unit.unit(), Some(&hog));
        j.remove(&dropin).unwrap();
        assert_eq!(version(d.path()), 1, "back to files only");
    }

    #[test]
    fn the_directory_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run/governor");
        let mut j = Journal::open(&dir).unwrap();
        j.put(entry("/cg/x/cpu.weight", "100", "1", "p")).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mode = fs::metadata(j.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_journal_dir_writable_by_others_is_refused_saying_what_to_fix() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("governor");
        Journal::open(&dir).unwrap();
        for mode in [0o770, 0o702, 0o777] {
            chmod(&dir, mode);
            let err = Journal::open(&dir).unwrap_err().to_string();
            assert!(
                err.contains(&dir.display().to_string()) && err.contains("chmod go-w"),
                "{mode:o}: {err}"
            );
        }
        chmod(&dir, 0o755);
        Journal::open(&dir).unwrap();
        // A parent others may write into could swap the directory.
        chmod(&dir, 0o700);
        chmod(d.path(), 0o775);
        let err = Journal::open(&dir).unwrap_err().to_string();
        assert!(err.contains(&d.path().display().to_string()), "{err}");
        chmod(d.path(), 0o700);
        Journal::open(&dir).unwrap();
    }

    #[test]
    fn a_journal_file_others_may_write_or_that_is_a_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = entry("/cg/x/cpu.weight", "100", "1", "p");
        Journal::open(d.path()).unwrap().put(a).unwrap();
        let file = d.path().join(FILE);
        chmod(&file, 0o666);
        let err = Journal::open(d.path()).unwrap_err().to_string();
        assert!(err.contains(FILE) && err.contains("chmod go-w"), "{err}");
        chmod(&file, 0o600);
        // A link to a journal elsewhere is not followed.
        let elsewhere = d.path().join("elsewhere.json");
        fs::rename(&file, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        let err = Journal::open(d.path()).unwrap_err().to_string();
        assert!(err.contains(FILE) && err.contains("link"), "{err}");
    }

    #[test]
    fn a_journal_dir_owned_by_another_user_is_refused() {
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIPPED: needs root to give a directory away");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("governor");
        Journal::open(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
        let err = Journal::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("uid 4242") && err.contains("chown root"),
            "{err}"
        );
        std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        let mut j = Journal::open(&dir).unwrap();
        j.put(entry("/cg/x/cpu.weight", "100", "1", "p")).unwrap();
        drop(j);
        std::os::unix::fs::chown(dir.join(FILE), Some(4242), None).unwrap();
        let err = Journal::open(&dir).unwrap_err().to_string();
        assert!(err.contains(FILE) && err.contains("uid 4242"), "{err}");
    }

    #[test]
    fn refused_entries_leave_the_journal_and_are_kept_aside() {
        let d = tempfile::tempdir().unwrap();
        let good = entry("/cg/x/cpu.weight", "100", "1", "p");
        let bad = entry("/etc/shadow", "pwned", "1", "p");
        let mut j = Journal::open(d.path()).unwrap();
        j.put(good.clone()).unwrap();
        j.put(bad.clone()).unwrap();
        drop(j);
        let mut j = Journal::open(d.path()).unwrap();
        let vet = |e: &Entry| {
            if e.file.starts_with("/cg") {
                Ok(())
            } else {
                Err("not a cgroup".to_owned())
            }
        };
        let refused = j.reject(vet).unwrap();
        assert_eq!(refused, [(bad.file.clone(), "not a cgroup".to_owned())]);
        assert_eq!(j.entries(), std::slice::from_ref(&good));
        let aside = fs::read_to_string(d.path().join(REJECTED)).unwrap();
        assert!(
            aside.contains("/etc/shadow") && aside.contains("/cg/x/cpu.weight"),
            "{aside}"
        );
        drop(j);
        // Durable: the next start finds only the good entry, nothing to refuse.
        let mut j = Journal::open(d.path()).unwrap();
        assert_eq!(j.entries(), [good]);
        assert_eq!(j.reject(vet).unwrap(), []);
    }
}
