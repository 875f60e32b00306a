//! Fault injection against the real kernel, on test-owned cgroups and
//! network namespaces only, with journals on tmpfs mounts of the test's own
//! (in its temporary directory, unmounted on every exit path):
//! - `kill -9` at random instants (seeded, the seed printed) across 200
//!   apply → lift sequences of `govtest-act cycle`, kills landing in the
//!   actuators' failpoints too (journal durable, cgroup not yet written; a
//!   lift's cgroup written, the journal not yet updated): the next start
//!   leaves every file at its original text and no journal entry behind,
//!   and no change is ever in a file that the journal does not name;
//! - a full and a read-only `journal_dir` under `governor run`: nothing
//!   changed, the policy holds saying why (`governor status`, the log), and
//!   retries with backoff until the journal can be written again;
//! - a cgroup removed before the action, and between the journal write and
//!   the cgroup write; a lift after the cgroup vanished;
//! - `EINVAL` from cgroupfs (real: a quota beyond the kernel's maximum, or
//!   above the parent's on a v1 hierarchy) and `EBUSY` (injected: no file
//!   the actuators write answers it) rolled back out of the journal;
//! - a full BPF map of connection rules: an error, the rules already there
//!   still enforced.
//!
//! The tests run one at a time (they share CPU 0 and the process's
//! failpoint registry).

use std::{
    collections::BTreeMap,
    ffi::CString,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use governor::{
    act::{
        cgroup::{ActError, Applied, CgroupActuator, Lifted},
        journal::{Entry, Journal},
        net::{NetEnforcer, Rule},
    },
    sense::cgroupfs::{CgroupFs, DEFAULT_ROOT},
};
use governor_engine::{
    config::{
        Action, RejectMode,
        units::{CpuWeight, Cpus},
    },
    snapshot::CgroupPath,
};
use governor_integration::{
    AgentConfig, AgentProcess, Children, CpuTestCgroup, enter_own_netns, eventually, require_root,
    serial,
};
use rand::{RngExt as _, SeedableRng as _};

// The tests take `serial()`, one at a time: they load CPU 0, and
// failpoints are per process.

fn host() -> CgroupFs {
    CgroupFs::discover(Path::new(DEFAULT_ROOT)).expect("cgroup2")
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

/// A tmpfs of its own, mounted in a temporary directory (mode 0700, so a
/// journal may live in it); can be filled, or covered by a read-only bind
/// mount of itself. Unmounted when dropped, on every exit path.
struct Tmpfs {
    mnt: PathBuf,
    read_only: bool,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("fs");
        std::fs::create_dir(&mnt).expect("mount point");
        let (src, dst) = (CString::new("tmpfs").expect("c"), c_path(&mnt));
        let data = CString::new(format!("size={size},mode=0700")).expect("c");
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                src.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount tmpfs on {}: {}",
            mnt.display(),
            std::io::Error::last_os_error()
        );
        Self {
            mnt,
            read_only: false,
            _dir: dir,
        }
    }

    /// Fills it: a file of zeros until ENOSPC. Returns the bytes written.
    fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.filler()).expect("filler");
        let chunk = vec![0u8; 4096];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.mnt.display()),
            }
        }
        n
    }

    fn filler(&self) -> PathBuf {
        self.mnt.join("filler")
    }

    /// Covers the mount with a read-only bind mount of itself: files open
    /// already stay writable, every path opened from now on is read-only.
    fn make_read_only(&mut self) {
        let p = c_path(&self.mnt);
        // SAFETY: a valid NUL-terminated path; bind mounts take no data.
        let rc = unsafe {
            libc::mount(
                p.as_ptr(),
                p.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "bind mount: {}", std::io::Error::last_os_error());
        self.read_only = true;
        // SAFETY: as above; remounting the bind read-only.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                p.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "remount read-only: {}",
            std::io::Error::last_os_error()
        );
    }

    fn make_writable(&mut self) {
        if self.read_only {
            let p = c_path(&self.mnt);
            // SAFETY: a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(p.as_ptr(), 0) };
            assert_eq!(rc, 0, "umount: {}", std::io::Error::last_os_error());
            self.read_only = false;
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = c_path(&self.mnt);
        for _ in 0..u8::from(self.read_only) + 1 {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The journal's entries as the file has them (none if there is no file).
fn journal_entries(dir: &Path) -> Vec<Entry> {
    let Ok(text) = std::fs::read_to_string(dir.join("journal.json")) else {
        return Vec::new();
    };
    let doc: serde_json::Value = serde_json::from_str(&text).expect("journal JSON");
    serde_json::from_value(doc["entries"].clone()).expect("journal entries")
}

/// Every control file of `cgs` the actuators may write, with its text.
fn files_of(cgs: &[&CpuTestCgroup]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for cg in cgs {
        for (name, text) in cg.cpu_files() {
            out.insert(cg.cpu_dir().join(name), text);
        }
        let mem = cg.v2.dir.join("memory.high");
        if let Ok(text) = std::fs::read_to_string(&mem) {
            out.insert(mem, text);
        }
    }
    out
}

fn now_files(originals: &BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, String> {
    originals
        .keys()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap_or_default()))
        .collect()
}

/// A `govtest-act cycle` child, stopped at `ready`.
struct Cycler {
    child: Child,
    out: BufReader<ChildStdout>,
    /// Lines up to and including `ready`.
    head: Vec<String>,
}

impl Cycler {
    fn start(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_govtest-act"))
            .arg("cycle")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("govtest-act cycle");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).expect("read") == 0 {
                let status = child.wait().expect("wait");
                panic!("govtest-act cycle ended before `ready` ({status}): {head:?}");
            }
            let line = line.trim_end().to_owned();
            let ready = line == "ready";
            head.push(line);
            if ready {
                break;
            }
        }
        Self { child, out, head }
    }

    fn field(&self, key: &str) -> u64 {
        let line = self.head.join(" ");
        governor_integration::field(&line, key)
    }

    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("go");
        stdin.flush().expect("flush");
    }

    /// The lines after `ready`, to the end (after a kill or the last sequence).
    fn rest(mut self) -> (Vec<String>, std::process::ExitStatus) {
        let lines: Vec<String> = (&mut self.out).lines().map(|l| l.expect("read")).collect();
        let status = self.child.wait().expect("wait");
        (lines, status)
    }
}

impl Drop for Cycler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a kill landed, from the last marker the child wrote.
fn phase(last: Option<&str>) -> &'static str {
    let word = last.and_then(|l| l.split_whitespace().next()).unwrap_or("");
    match word {
        "ready" | "" => "before the first apply",
        "apply" => "apply: before the journal is durable",
        "journaled" => "apply: journal durable, cgroup not written (failpoint)",
        "writing" => "apply: writing the cgroup file",
        "lift" => "lift: before the cgroup write",
        "restored" => "lift: cgroup written, journal not updated (failpoint)",
        "journaling" => "lift: updating the journal",
        _ => "between steps",
    }
}

/// True if `text` in `file` is the kernel's view of an idle group rather
/// than a value written: while `cpu.idle` is 1, v1's `cpu.shares` reads 3
/// and cgroup2's `cpu.weight` reads the idle weight (3/1024) rounded: 0 in
/// the 6.1 guest, 1 in the 6.12 guest (clamped to the lowest weight); each
/// reads its own value again once `cpu.idle` is 0.
fn idle_view(file: &Path, text: &str) -> bool {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    ((name == "cpu.shares" && text.trim() == "3")
        || (name == "cpu.weight" && ["0", "1"].contains(&text.trim())))
        && file
            .parent()
            .and_then(|d| std::fs::read_to_string(d.join("cpu.idle")).ok())
            .is_some_and(|t| t.trim() == "1")
}

#[test]
fn kill_9_at_random_instants_across_200_apply_lift_sequences_leaks_nothing() {
    const SEQUENCES: usize = 200;
    let _serial = serial();
    require_root();
    let started = Instant::now();
    let a = CpuTestCgroup::new("fault-k9a");
    let b = CpuTestCgroup::new("fault-k9b");
    let originals = files_of(&[&a, &b]);
    let fs = Tmpfs::new("4m");
    let jdir = fs.mnt.join("journal");
    let mut args: Vec<String> = vec!["--journal".into(), jdir.display().to_string()];
    let mut push = |flag: &str, cg: &CpuTestCgroup, v: &str| {
        args.push(flag.into());
        args.push(format!("{}={v}", cg.v2.path));
    };
    push("--cpu-limit", &a, "0.2");
    push("--cpu-weight", &a, "7");
    push("--cpu-weight", &b, "idle");
    push("--cpu-limit", &b, "0.5");
    if a.cpu_v1.is_none() && a.v2.dir.join("memory.high").exists() {
        push("--memory-high", &a, "268435456");
    }
    let seed: u64 = std::env::var("GOVERNOR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ governor::act::journal::now_unix_ms());
    println!("seed {seed} (GOVERNOR_FAULT_SEED={seed} repeats this run)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    // How long the first apply → lift sequence of a fresh process takes,
    // undisturbed: kills are drawn uniformly over it.
    let mut cal_args = args.clone();
    cal_args.extend(["--sequences".into(), "1".into()]);
    let mut took = Vec::new();
    let mut actions = 0;
    for _ in 0..10 {
        let mut cal = Cycler::start(&cal_args);
        assert!(
            cal.head.iter().any(|l| l == "failpoints=on"),
            "govtest-act was built without governor's failpoints (the tests' build enables them): {:?}",
            cal.head
        );
        cal.go();
        let (lines, status) = cal.rest();
        assert!(status.success(), "calibration run: {status}: {lines:?}");
        actions = lines.iter().filter(|l| l.starts_with("applied ")).count();
        took.extend(
            (lines.iter())
                .filter_map(|l| l.strip_prefix("sequence took_us="))
                .filter_map(|v| v.parse::<u64>().ok()),
        );
    }
    took.sort_unstable();
    let sequence_us = took[took.len() / 2].max(1);
    println!(
        "one sequence: {sequence_us} µs (median of {} fresh processes; {actions} actions)",
        took.len(),
    );

    let mut phases: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut leaks, mut left_entries, mut unjournaled, mut wrong_original) = (0, 0, 0, 0);
    let (mut journal_ahead, mut restored_at_start) = (0, 0);
    for round in 0..=SEQUENCES {
        let mut c = Cycler::start(&args);
        // The start-up revert has run: everything is back, nothing left.
        let files = now_files(&originals);
        if files != originals {
            leaks += 1;
            println!("round {round}: after the start-up revert: {files:?}");
        }
        let left = journal_entries(&jdir);
        if !left.is_empty() {
            left_entries += left.len();
            println!("round {round}: journal entries after the start-up revert: {left:?}");
        }
        if round > 0 {
            restored_at_start += c.field("restored");
            assert_eq!(c.field("failed"), 0, "round {round}: {:?}", c.head);
        }
        if round == SEQUENCES {
            break;
        }
        let delay = Duration::from_micros(rng.random_range(0..sequence_us));
        c.go();
        thread::sleep(delay);
        c.child.kill().expect("SIGKILL");
        let (lines, _) = c.rest();
        *phases
            .entry(phase(lines.last().map(String::as_str)))
            .or_default() += 1;
        // At the instant of the kill: every changed file is journaled with
        // the value it shows, and every entry keeps the true original.
        let entries = journal_entries(&jdir);
        for (file, original) in &originals {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let entry = entries.iter().find(|e| e.file == *file);
            if let Some(e) = entry {
                if e.original != original.trim_end_matches('\n') {
                    wrong_original += 1;
                    println!("round {round}: {e:?} but the original is {original:?}");
                }
                if text == *original {
                    journal_ahead += 1;
                }
            }
            let shown = text.trim_end_matches('\n');
            let named = entry
                .is_some_and(|e| e.value == shown || e.holders.iter().any(|h| h.value == shown));
            if text != *original && !named && !idle_view(file, &text) {
                unjournaled += 1;
                println!(
                    "round {round}: {} holds {text:?}, not journaled: {entries:?} (last marker {:?})",
                    file.display(),
                    lines.last()
                );
            }
        }
    }
    // The last start left a clean journal; leave nothing behind.
    let out = Command::new(env!("CARGO_BIN_EXE_govtest-act"))
        .args(["revert", "--journal", &jdir.display().to_string()])
        .output()
        .expect("govtest-act revert");
    assert!(out.status.success(), "{out:?}");
    let total = started.elapsed();
    let summary: Vec<String> = phases.iter().map(|(p, n)| format!("{p} {n}")).collect();
    println!(
        "kills: {SEQUENCES} in {total:.1?}, phases: {}; journal ahead of the files at the kill: {journal_ahead} files; restored by the next start: {restored_at_start} files; leaked {leaks}, entries left {left_entries}, unjournaled changes {unjournaled}, wrong originals {wrong_original}",
        summary.join(", "),
    );
    assert_eq!(
        (leaks, left_entries, unjournaled, wrong_original),
        (0, 0, 0, 0),
        "leaked rounds, journal entries left, changes not journaled, entries with a wrong original"
    );
    for window in [
        "apply: journal durable, cgroup not written (failpoint)",
        "lift: cgroup written, journal not updated (failpoint)",
    ] {
        assert!(
            phases.get(window).copied().unwrap_or(0) > 0,
            "no kill landed in {window:?}: {phases:?}"
        );
    }
    assert!(
        restored_at_start > 0,
        "some kills left changes for the next start"
    );
    assert_eq!(
        now_files(&originals),
        originals,
        "every file holds its original"
    );
    assert!(total < Duration::from_secs(60), "took {total:?}");
}

/// What makes the journal unwritable.
#[derive(Debug, Clone, Copy)]
enum JournalFault {
    Full,
    ReadOnly,
}

#[test]
fn a_full_or_read_only_journal_dir_changes_nothing_and_the_agent_holds_and_retries() {
    let _serial = serial();
    require_root();
    for (k, fault) in [JournalFault::Full, JournalFault::ReadOnly]
        .into_iter()
        .enumerate()
    {
        journal_fault_under_the_agent(fault, k as u16);
    }
}

fn journal_fault_under_the_agent(fault: JournalFault, k: u16) {
    let parent = CpuTestCgroup::new(&format!("fault-j{k}"));
    parent.outweigh_the_host();
    let a = parent.child("api");
    let b = parent.child("batch");
    let original = b.cpu_files();
    let mut fs = Tmpfs::new("256k");
    let jdir = fs.mnt.join("journal");
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = format!(
        "127.0.0.1:{}",
        23_000 + (std::process::id() % 20_000) as u16 + k
    );
    let files = AgentConfig::new(dir.path(), metrics, 3)
        .journal(&jdir)
        .write(&format!(
            r#"[[policy]]
name = "faulty-journal"
signal = {{ kind = "runq_p99", cgroup = "{a}" }}
high = "2ms"
low = "500us"
for = "300ms"
settle = "200ms"
recover_every = "5s"
ladder = [{{ action = "cpu_weight", cgroup = "{b}", weight = "idle" }}]
"#,
            a = a.v2.path,
            b = b.v2.path,
        ));
    let mut agent = AgentProcess::start(&files.config, &files.socket, &files.log);
    // The agent holds the journal open; from now on it cannot write it.
    let (errno_text, what) = match fault {
        JournalFault::Full => {
            let n = fs.fill();
            (
                "No space left on device",
                format!("full ({n} bytes of filler)"),
            )
        }
        JournalFault::ReadOnly => {
            fs.make_read_only();
            ("Read-only file system", "read-only".to_owned())
        }
    };
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let (pa, pb) = (a.v2.procs(), b.v2.procs());
    let (pa, pb) = (pa.to_str().expect("utf-8"), pb.to_str().expect("utf-8"));
    let w = kids.spawn(&["worker", "--cpu", "0", "--seconds", "12", "--join", pa]);
    a.join(kids.procs[w].id());
    for _ in 0..2 {
        let h = kids.spawn(&["hog", "--cpu", "0", "--seconds", "12", "--join", pb]);
        b.join(kids.procs[h].id());
    }

    // The policy trips, the change fails, and is retried with backoff.
    let mut changed = false;
    let mut seen = None;
    let failing = eventually(Duration::from_secs(10), || {
        changed |= b.cpu_files() != original;
        let Some(s) = agent.status() else {
            return false;
        };
        let p = &s.policies[0];
        seen = Some((p.rung, p.failed.clone(), p.why.clone()));
        p.failed.as_ref().is_some_and(|f| f.attempts >= 3)
    });
    let (rung, failed, why) = seen.clone().unwrap_or_default();
    println!("journal {what}: rung {rung}, failed {failed:?}, why {why:?}");
    assert!(
        failing,
        "the change failed and was retried; last status {seen:?}; log:\n{}",
        agent.log_text()
    );
    let failed = failed.expect("failed");
    assert!(
        !changed,
        "a change nobody journaled was made: {:?}",
        b.cpu_files()
    );
    assert_eq!(rung, 0, "a failed change is not a rung in force");
    assert_eq!(failed.change, "impose");
    let journal_file = jdir.join("journal.json.tmp").display().to_string();
    assert!(
        failed.error.contains(&journal_file) && failed.error.contains(errno_text),
        "the error names the file and what failed: {}",
        failed.error
    );
    let logged = agent.log_text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("FAILED") && l.contains(errno_text)),
        "the log says so:\n{logged}"
    );
    if matches!(fault, JournalFault::Full) {
        assert!(
            !jdir.join("journal.json.tmp").exists(),
            "a failed journal write leaves no temporary file behind (the next start would report it as the write of a process that died)"
        );
    }

    // Once the journal can be written again, the retry succeeds.
    match fault {
        JournalFault::Full => std::fs::remove_file(fs.filler()).expect("remove filler"),
        JournalFault::ReadOnly => fs.make_writable(),
    }
    let applied = eventually(Duration::from_secs(8), || b.cpu_files() != original);
    let status = agent.status().expect("status");
    println!("{}", status.table());
    assert!(
        applied,
        "the retry succeeded once the journal was writable; log:\n{}",
        agent.log_text()
    );
    assert!(
        journal_entries(&jdir)
            .iter()
            .any(|e| e.file.starts_with(b.cpu_dir())),
        "and it was journaled"
    );
    drop(kids);
    let (st, _) = agent.stop();
    assert!(st.success(), "{st}");
    assert_eq!(b.cpu_files(), original, "the stop restored the originals");
    assert!(journal_entries(&jdir).is_empty());
}

fn limit(cgroup: &CgroupPath, cpus: f64) -> Action {
    Action::CpuLimit {
        cgroup: cgroup.clone(),
        cpus: Cpus::new(cpus).expect("cpus"),
    }
}

fn weight(cgroup: &CgroupPath, w: u16) -> Action {
    Action::CpuWeight {
        cgroup: cgroup.clone(),
        weight: CpuWeight::Weight(w),
    }
}

/// Removes a test cgroup's directories (it holds no process).
fn remove_cgroup(cg: &CpuTestCgroup) {
    if let Some(v1) = &cg.cpu_v1 {
        std::fs::remove_dir(v1).expect("rmdir v1");
    }
    std::fs::remove_dir(&cg.v2.dir).expect("rmdir v2");
}

#[test]
fn a_cgroup_removed_between_decide_and_act_is_named_and_leaves_no_entry() {
    let _serial = serial();
    require_root();
    let journal = tempfile::tempdir().expect("tempdir");
    let mut act = CgroupActuator::new(host(), Journal::open(journal.path()).expect("journal"));

    // Removed before the action.
    let gone = CpuTestCgroup::new("fault-gone");
    let action = limit(&gone.v2.path, 0.2);
    remove_cgroup(&gone);
    let applied = act.apply("p", &action).expect("no error from the actuator");
    println!("removed before: {applied:?}");
    assert!(
        matches!(&applied, Applied::TargetAbsent { dir } if dir.ends_with(gone.v2.path.relative())),
        "{applied:?}"
    );
    // What the agent sees (the routing layer): an error naming the cgroup.
    let err = governor::act::rules::CgroupActuation::apply(&mut act, "p", &action)
        .expect_err("the agent is told");
    println!("as the agent sees it: {err:#}");
    assert!(
        err.to_string().contains(gone.v2.path.relative()),
        "names the cgroup: {err}"
    );
    assert!(act.journal().is_empty(), "{:?}", act.journal().entries());

    // Removed between the journal write and the cgroup write.
    let racy = CpuTestCgroup::new("fault-race");
    let dirs: Vec<PathBuf> = racy
        .cpu_v1
        .iter()
        .cloned()
        .chain([racy.v2.dir.clone()])
        .collect();
    fail::cfg_callback("journal-written", move || {
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
        }
    })
    .expect("failpoint");
    let raced = act.apply("p", &limit(&racy.v2.path, 0.2));
    fail::remove("journal-written");
    println!("removed after the journal write: {raced:?}");
    assert!(
        matches!(&raced, Ok(Applied::TargetAbsent { .. })),
        "{raced:?}"
    );
    assert!(
        act.journal().is_empty() && journal_entries(journal.path()).is_empty(),
        "the entry journaled for it is gone: {:?}",
        act.journal().entries()
    );

    // A lift after the cgroup vanished: not a failure.
    let lifted_cg = CpuTestCgroup::new("fault-lift");
    let action = weight(&lifted_cg.v2.path, 7);
    assert!(matches!(
        act.apply("p", &action).expect("apply"),
        Applied::Written { .. }
    ));
    remove_cgroup(&lifted_cg);
    let lifted = act
        .lift("p", &action)
        .expect("a vanished cgroup is no error");
    println!("lift after removal: {lifted:?}");
    assert!(matches!(lifted, Lifted::Vanished { .. }), "{lifted:?}");
    assert!(act.journal().is_empty());
    drop(act);
    // Nothing for a later start to trip on.
    let mut next = CgroupActuator::new(host(), Journal::open(journal.path()).expect("journal"));
    let report = next.revert_all();
    assert!(
        report.is_clean() && report.restored.is_empty() && report.vanished.is_empty(),
        "{report}"
    );
}

#[test]
fn einval_and_ebusy_from_cgroupfs_name_the_file_and_are_rolled_back_out_of_the_journal() {
    let _serial = serial();
    require_root();
    let journal = tempfile::tempdir().expect("tempdir");
    let mut act = CgroupActuator::new(host(), Journal::open(journal.path()).expect("journal"));
    let cg = CpuTestCgroup::new("fault-inval");
    let original = cg.cpu_files();
    let quota_file = cg.cpu_dir().join(if cg.cpu_v1.is_some() {
        "cpu.cfs_quota_us"
    } else {
        "cpu.max"
    });
    let einval = |r: Result<Applied, ActError>, what: &str| {
        let err = r.expect_err(what);
        println!("{what}: {err}");
        let ActError::Write { path, source, .. } = &err else {
            panic!("{what}: not a write error: {err:?}");
        };
        assert_eq!(path, &quota_file, "{what}: names the file");
        assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{what}: {err}");
        assert!(err.to_string().contains(&quota_file.display().to_string()));
    };

    // A quota beyond the kernel's maximum (2^44 µs per period).
    let huge = limit(&cg.v2.path, 1e9);
    einval(act.apply("p", &huge), "a billion CPUs");
    assert!(act.journal().is_empty(), "{:?}", act.journal().entries());
    assert_eq!(cg.cpu_files(), original);

    // With another claim journaled before: that one stays, exactly.
    let w = weight(&cg.v2.path, 7);
    assert!(matches!(
        act.apply("p", &w).expect("weight"),
        Applied::Written { .. }
    ));
    let before = act.journal().entries().to_vec();
    einval(act.apply("q", &huge), "a billion CPUs beside a weight");
    assert_eq!(act.journal().entries(), before);
    assert_eq!(journal_entries(journal.path()), before, "on disk too");

    // v1: a child's quota above its parent's.
    if cg.cpu_v1.is_some() {
        let parent = CpuTestCgroup::new("fault-inval-parent");
        std::fs::write(parent.cpu_dir().join("cpu.cfs_quota_us"), "20000").expect("parent quota");
        let child = parent.child("c");
        let child_original = child.cpu_files();
        let err = act
            .apply("p", &limit(&child.v2.path, 0.5))
            .expect_err("above the parent's quota");
        println!("above the parent's quota: {err}");
        assert!(
            err.to_string().contains(
                &child
                    .cpu_dir()
                    .join("cpu.cfs_quota_us")
                    .display()
                    .to_string()
            ) && err.to_string().contains("Invalid argument"),
            "{err}"
        );
        assert_eq!(act.journal().entries(), before);
        assert_eq!(child.cpu_files(), child_original);
        drop(child);
    }

    // EBUSY (injected: no file the actuators write answers it) on a file
    // another claim holds: the entry is put back as it was.
    fail::cfg("cgroup-write-error", "1*return(16)").expect("failpoint");
    let stricter = weight(&cg.v2.path, 2);
    let err = act.apply("q", &stricter).expect_err("EBUSY");
    fail::remove("cgroup-write-error");
    println!("injected EBUSY: {err}");
    // glibc says "Device or resource busy", musl (the VM guests) "Resource busy".
    assert!(err.to_string().contains("os error 16"), "{err}");
    assert_eq!(act.journal().entries(), before);
    // A lift that meets EBUSY stays journaled, pending, and is retried.
    fail::cfg("cgroup-write-error", "1*return(16)").expect("failpoint");
    let lift = act.lift("p", &w);
    fail::remove("cgroup-write-error");
    assert!(lift.is_err(), "{lift:?}");
    assert_eq!(act.pending(), 1);
    let retried = act.retry_pending();
    assert!(
        retried.is_clean() && retried.restored.len() == 1,
        "{retried}"
    );

    // Nothing was changed that a revert would put an "original" over.
    assert!(act.journal().is_empty(), "{:?}", act.journal().entries());
    assert_eq!(cg.cpu_files(), original);
    let report = act.revert_all();
    assert!(report.is_clean() && report.restored.is_empty(), "{report}");
}

#[test]
fn a_full_bpf_map_of_connection_rules_is_an_error_and_the_rules_in_it_still_hold() {
    let _serial = serial();
    require_root();
    thread::spawn(|| {
        enter_own_netns();
        let limited = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = limited.local_addr().expect("addr").port();
        let mut e = NetEnforcer::load().expect("enforcement object loads");
        e.attach_netns(Path::new("/proc/thread-self/ns/net"))
            .expect("sk_lookup attaches to our namespace");
        let reject = Rule {
            rate: None,
            burst: 0,
            mode: RejectMode::Reset,
            exempt: vec![],
        };
        let pass = Rule {
            rate: Some(1e6),
            burst: 1000,
            mode: RejectMode::Reset,
            exempt: vec![],
        };
        e.set_port(port, &reject).expect("rule set");
        let connect = || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(500),
            )
        };
        assert!(connect().is_err(), "the rule refuses");
        // Other ports' rules until the map is full.
        let mut added = 1u32;
        let mut err = None;
        for p in (1..=u16::MAX).filter(|&p| p != port) {
            match e.set_port(p, &pass) {
                Ok(()) => added += 1,
                Err(x) => {
                    err = Some((p, x));
                    break;
                }
            }
        }
        let (p, err) = err.expect("the map fills");
        let text = format!("{err:#}");
        let mut chain = String::new();
        let mut s: Option<&dyn std::error::Error> = Some(&err);
        while let Some(x) = s {
            chain.push_str(&format!("{x}; "));
            s = x.source();
        }
        println!("port rules: {added} in force, the next ({p}) refused: {chain}");
        assert_eq!(added, 4096, "PORT_BUCKETS holds 4,096 rules");
        assert!(
            text.contains(&format!(
                "port {p} in PORT_BUCKETS: the map is full (at most 4096 rules)"
            )),
            "names the rule, the map and its size: {text}"
        );
        assert!(
            chain.contains("os error 7") || chain.contains("Argument list too long"),
            "says the map is full (E2BIG): {chain}"
        );
        assert!(connect().is_err(), "the rule set before still refuses");
        // Replacing a rule in force needs no new slot; removing one frees one.
        e.set_port(port, &pass).expect("re-set in a full map");
        assert!(connect().is_ok(), "the re-set rule admits");
        e.clear_port(1).expect("clear");
        e.set_port(p, &pass).expect("a slot freed is usable");

        // The cgroup rules' map: ids of no cgroup (no program is attached
        // to any cgroup here, so these rules act nowhere).
        let mut ids = 0u32;
        let mut cerr = None;
        for id in 1u64 << 40.. {
            match e.set_cgroup(id, &pass) {
                Ok(()) => ids += 1,
                Err(x) => {
                    cerr = Some(x);
                    break;
                }
            }
            if ids > 10_000 {
                break;
            }
        }
        let cerr = cerr.expect("the cgroup map fills");
        println!("cgroup rules: {ids} in force, the next refused: {cerr:#}");
        assert_eq!(ids, 4096, "CGROUP_BUCKETS holds 4,096 rules");
        drop(limited);
    })
    .join()
    .expect("test thread");
}

/// A full exemption trie: re-setting a rule with one exemption more fails,
/// and the rule in force keeps the exemptions it had. The old keys were
/// removed before the new ones were added, so a failure midway left the
/// rule refusing the peers it had exempted.
#[test]
fn a_full_exemption_trie_leaves_the_rule_in_force_with_its_exemptions() {
    let _serial = serial();
    require_root();
    let seen = thread::spawn(|| {
        enter_own_netns();
        let limited = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = limited.local_addr().expect("addr").port();
        let mut e = NetEnforcer::load().expect("enforcement object loads");
        e.attach_netns(Path::new("/proc/thread-self/ns/net"))
            .expect("sk_lookup attaches to our namespace");
        let net = |s: &str| s.parse::<ipnet::IpNet>().expect("net");
        let reject = |exempt: Vec<ipnet::IpNet>| Rule {
            rate: None,
            burst: 0,
            mode: RejectMode::Reset,
            exempt,
        };
        let connect = || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(500),
            )
            .is_ok()
        };
        e.set_port(port, &reject(vec![net("127.0.0.1/32")]))
            .expect("reject all but loopback");
        let before = connect();
        // Another port's rule takes every other slot of the trie.
        let filler: Vec<_> = (0..4095u32)
            .map(|i| net(&format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255)))
            .collect();
        e.set_port(port.wrapping_add(1).max(1), &reject(filler))
            .expect("the trie holds 4,096 keys");
        let err = e
            .set_port(
                port,
                &reject(vec![net("192.0.2.1/32"), net("127.0.0.1/32")]),
            )
            .expect_err("no slot for the new exemption");
        (before, connect(), format!("{err:#}"))
    })
    .join()
    .expect("test thread");
    println!(
        "loopback exempt before: {}, after the failed re-set: {}; {}",
        seen.0, seen.1, seen.2
    );
    assert!(seen.0, "loopback is exempt");
    assert!(seen.2.contains("adding exemption 1 of 2"), "{}", seen.2);
    assert!(seen.1, "loopback is still exempt after the failed re-set");
}
