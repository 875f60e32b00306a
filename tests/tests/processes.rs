//! `governor observe --processes`: the processes that waited on a run queue,
//! from the kernel's per-task schedstat, within a test-owned cgroup.

use std::process::Command;

use governor_integration::{Children, TestCgroup, governor_bin, require_root};

#[test]
fn the_hogs_sharing_one_cpu_are_the_processes_that_waited() {
    require_root();
    let busy = TestCgroup::new("procs-busy");
    let idle = TestCgroup::new("procs-idle");
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let (bp, ip) = (busy.procs(), idle.procs());
    let (bp, ip) = (bp.to_str().expect("utf-8"), ip.to_str().expect("utf-8"));
    // Three hogs on CPU 0 wait for each other about two thirds of the time.
    let hogs: Vec<u32> = (0..3)
        .map(|_| {
            let k = kids.spawn(&["hog", "--cpu", "0", "--seconds", "4", "--join", bp]);
            kids.procs[k].id()
        })
        .collect();
    // A sleeper elsewhere: it barely runs, so it barely waits.
    let s = kids.spawn(&[
        "worker",
        "--cpu",
        "1",
        "--period-us",
        "100000",
        "--work-us",
        "100",
        "--seconds",
        "4",
        "--join",
        ip,
    ]);
    let sleeper = kids.procs[s].id();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new(governor_bin())
        .args(["observe", "--processes", "--format", "json", "--count", "1"])
        .args(["--interval", "1s", "--cgroup"])
        .arg(busy.path.to_string())
        .output()
        .expect("governor observe --processes");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
    let rows = v["processes"].as_array().expect("processes");
    let pids: Vec<u64> = rows.iter().filter_map(|r| r["pid"].as_u64()).collect();
    for h in &hogs {
        assert!(pids.contains(&u64::from(*h)), "hog {h} listed: {pids:?}");
    }
    assert!(
        !pids.contains(&u64::from(sleeper)),
        "only the cgroup asked for"
    );
    for r in rows {
        assert_eq!(r["cgroup"].as_str(), Some(busy.path.to_string().as_str()));
        let share = r["waiting_share"].as_f64().expect("share");
        // Each of three hogs on one CPU waits about 2/3 of the time.
        assert!(
            (0.4..=0.9).contains(&share),
            "a hog waits about two thirds of the second: {r}"
        );
    }
    for k in 0..kids.procs.len() {
        kids.wait_output(k);
    }
}
