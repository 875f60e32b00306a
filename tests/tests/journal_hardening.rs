//! The journal against the real kernel, on test-owned cgroups only (created
//! and removed here, on hybrid hosts in both hierarchies), with journals in
//! temporary directories, never `/run/governor`:
//! - a journal naming files outside the cgroup hierarchies (a file in a
//!   temporary directory, a `..` path) writes nothing there, and is kept
//!   aside as `journal.json.rejected`;
//! - a cgroup removed and made anew at the same path after a crash is not
//!   written into by the next start's revert (its id, the directory's inode,
//!   changed);
//! - two policies' claims on one cgroup file: the strictest is in force, and
//!   releases step back to the next strictest, then the original.

use std::path::Path;

use governor::{
    act::{
        cgroup::{CgroupActuator, Lifted},
        journal::{Journal, REJECTED},
    },
    sense::cgroupfs::{CgroupFs, DEFAULT_ROOT},
};
use governor_engine::{
    config::{
        Action,
        units::{CpuWeight, Cpus},
    },
    snapshot::CgroupPath,
};
use governor_integration::{CpuTestCgroup, require_root};

fn host() -> CgroupFs {
    CgroupFs::discover(Path::new(DEFAULT_ROOT)).expect("cgroup2")
}

fn actuator(journal: &Path) -> CgroupActuator {
    CgroupActuator::new(host(), Journal::open(journal).expect("journal"))
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim_end()
        .to_owned()
}

/// The weight file of `cg` and the text weight `w` is in it.
fn weight_file(cg: &CpuTestCgroup, w: u16) -> (std::path::PathBuf, String) {
    if cg.cpu_v1.is_some() {
        (
            cg.cpu_dir().join("cpu.shares"),
            governor::act::cgroup::weight_to_shares(w).to_string(),
        )
    } else {
        (cg.cpu_dir().join("cpu.weight"), w.to_string())
    }
}

#[test]
fn a_journal_naming_files_outside_the_cgroup_hierarchies_writes_nothing_there() {
    require_root();
    let cg = CpuTestCgroup::new("jh-outside");
    let (file, _) = weight_file(&cg, 1);
    let original = read(&file);
    let scratch = tempfile::tempdir().expect("tempdir");
    let victim = scratch.path().join("target");
    std::fs::write(&victim, "keep\n").expect("victim");
    let dotted_victim = scratch.path().join("cpu.weight");
    std::fs::write(&dotted_victim, "keep\n").expect("victim");
    // `<cgroup dir>/../../…/<scratch>/cpu.weight`: lexically under the
    // hierarchy, really in the scratch directory.
    let ups = cg.cpu_dir().components().count() - 1;
    let mut dotted = cg.cpu_dir().to_path_buf();
    for _ in 0..ups {
        dotted.push("..");
    }
    let dotted = dotted.join(dotted_victim.strip_prefix("/").expect("absolute"));
    assert_eq!(
        std::fs::canonicalize(&dotted).expect("resolves"),
        dotted_victim
    );

    let journal = tempfile::tempdir().expect("tempdir");
    drop(Journal::open(journal.path()).expect("journal"));
    let entry = |file: &Path, original: &str| {
        serde_json::json!({
            "target": cg.v2.path.as_str(), "file": file, "original": original,
            "value": "1", "holders": [{"policy": "p", "action": "a", "value": "1"}],
            "since_unix_ms": 1, "pid": 1
        })
    };
    let doc = serde_json::json!({
        "version": 1, "pid": 1, "written_unix_ms": 0,
        "entries": [
            entry(&victim, "pwned"),
            entry(&dotted, "pwned"),
            // A genuine one, still reverted.
            entry(&file, &original),
        ]
    });
    std::fs::write(journal.path().join("journal.json"), doc.to_string()).expect("plant");
    std::fs::write(&file, "2").expect("the agent's value, as if it had died");

    let mut act = actuator(journal.path());
    assert_eq!(act.journal().entries().len(), 1, "two entries refused");
    let report = act.revert_all();
    println!("{report}");
    assert_eq!(read(&victim), "keep");
    assert_eq!(read(&dotted_victim), "keep");
    assert_eq!(report.restored, std::slice::from_ref(&file), "{report}");
    assert_eq!(read(&file), original);
    let aside = read(&journal.path().join(REJECTED));
    assert!(aside.contains(victim.to_str().expect("utf-8")), "{aside}");
}

#[test]
fn a_cgroup_made_anew_at_the_same_path_after_a_crash_is_not_reverted_into() {
    require_root();
    let parent = CpuTestCgroup::new("jh-anew");
    let journal = tempfile::tempdir().expect("tempdir");
    let child = parent.child("b");
    let path = child.v2.path.clone();
    let (file, _) = weight_file(&child, 5);
    let mut act = actuator(journal.path());
    let _ = act.apply("p", &weight(&path, 5)).expect("apply");
    let id = act.journal().entries()[0].cgroup_id;
    assert!(id.is_some(), "the cgroup's id is journaled");
    // The agent dies; someone removes the cgroup and sets it up anew with a
    // weight of its own.
    drop(act);
    drop(child);
    let child = parent.child("b");
    let (again, theirs) = weight_file(&child, 300);
    assert_eq!(again, file);
    std::fs::write(&file, &theirs).expect("their weight");

    let mut act = actuator(journal.path());
    let report = act.revert_all();
    println!("{report}");
    assert_eq!(read(&file), theirs, "the new cgroup keeps its own value");
    assert_eq!(report.recreated, std::slice::from_ref(&file), "{report}");
    assert!(report.restored.is_empty() && report.is_clean(), "{report}");
    assert!(act.journal().is_empty());
    drop(child);
}

#[test]
fn the_strictest_of_two_policies_claims_is_in_force_on_real_cgroup_files() {
    require_root();
    let cg = CpuTestCgroup::new("jh-claims");
    let original = cg.cpu_files();
    let journal = tempfile::tempdir().expect("tempdir");
    let mut act = actuator(journal.path());
    let quota = cg.cpu_dir().join(if cg.cpu_v1.is_some() {
        "cpu.cfs_quota_us"
    } else {
        "cpu.max"
    });
    let q = |text: &str| -> String {
        // The quota alone: `cpu.max` is `QUOTA PERIOD`.
        text.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let strict = limit(&cg.v2.path, 0.2);
    let loose = limit(&cg.v2.path, 0.5);
    let _ = act.apply("p", &strict).expect("apply");
    let _ = act.apply("q", &loose).expect("apply");
    assert_eq!(q(&read(&quota)), "20000", "the looser after the stricter");
    let lifted = act.lift("p", &strict).expect("lift");
    assert!(
        matches!(&lifted, Lifted::StillHeld { by, .. } if by == &["q".to_owned()]),
        "{lifted:?}"
    );
    assert_eq!(
        q(&read(&quota)),
        "50000",
        "the looser once the stricter goes"
    );
    let lifted = act.lift("q", &loose).expect("lift");
    assert!(matches!(lifted, Lifted::Restored { .. }), "{lifted:?}");
    assert_eq!(
        cg.cpu_files(),
        original,
        "every file holds its original text"
    );
    assert!(act.journal().is_empty());
}
