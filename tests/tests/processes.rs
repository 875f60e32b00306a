//! `governor observe --processes`: the processes that waited on a run queue,
//! from the kernel's per-task schedstat, within a test-owned cgroup.

use std::process::Command;

use governor_integration::{Children, TestCgroup, governor_bin, require_root, serial};

// The tests take `serial()`, one at a time: both crowd CPU 0, and the
// other's heavier cgroup (`outweigh_the_host`) starves this one's hogs,
// which then neither run nor, by their schedstat, wait (run delay is added
// when a task gets the CPU): in parallel the hogs test saw no rows.

/// One interval of `governor observe --processes --format json` over
/// `cgroups`: its JSON line (it must succeed).
fn observe_processes(interval: &str, cgroups: &[String]) -> serde_json::Value {
    let mut cmd = Command::new(governor_bin());
    cmd.args(["observe", "--processes", "--format", "json", "--count", "1"])
        .args(["--interval", interval]);
    for c in cgroups {
        cmd.arg("--cgroup").arg(c);
    }
    let out = cmd.output().expect("governor observe --processes");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    serde_json::from_str(text.trim()).expect("one JSON line")
}

#[test]
fn the_hogs_sharing_one_cpu_are_the_processes_that_waited() {
    require_root();
    let _serial = serial();
    let busy = TestCgroup::new("procs-busy");
    let idle = TestCgroup::new("procs-idle");
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let (bp, ip) = (busy.procs(), idle.procs());
    let (bp, ip) = (bp.to_str().expect("utf-8"), ip.to_str().expect("utf-8"));
    // Three hogs on CPU 0 wait for each other about two thirds of the time.
    let hogs: Vec<u32> = (0..3)
        .map(|_| {
            let k = kids.spawn(&["hog", "--cpu", "0", "--seconds", "60", "--join", bp]);
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
        "60",
        "--join",
        ip,
    ]);
    let sleeper = kids.procs[s].id();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let v = observe_processes("1s", &[busy.path.to_string()]);
    drop(kids);
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
}

/// Where the scheduler probes load (root), `--processes` adds each process's
/// waits and their p99 from a per-process histogram the probes keep for
/// this command: a worker beside two hogs on CPU 0 has a p99 at least ten
/// times (three under emulation) that of a worker alone on CPU 1, and for
/// each the probes count as many waits as the kernel counts runs (within
/// 5%; 15% under emulation).
#[test]
fn with_the_probes_each_process_has_a_p99_and_the_crowded_one_is_ten_times_the_quiet_one() {
    require_root();
    let _serial = serial();
    let parent = governor_integration::CpuTestCgroup::new("procs-p99");
    parent.outweigh_the_host();
    let (busy, quiet) = (parent.child("busy"), parent.child("quiet"));
    let (bp, qp) = (busy.v2.procs(), quiet.v2.procs());
    let (bp, qp) = (bp.to_str().expect("utf-8"), qp.to_str().expect("utf-8"));
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    for _ in 0..2 {
        let h = kids.spawn(&["hog", "--cpu", "0", "--seconds", "60", "--join", bp]);
        busy.join(kids.procs[h].id());
    }
    let a = kids.spawn(&["worker", "--cpu", "0", "--seconds", "60", "--join", bp]);
    busy.join(kids.procs[a].id());
    let b = kids.spawn(&["worker", "--cpu", "1", "--seconds", "60", "--join", qp]);
    quiet.join(kids.procs[b].id());
    let (crowded, alone) = (kids.procs[a].id(), kids.procs[b].id());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let v = observe_processes("2s", &[busy.v2.path.to_string(), quiet.v2.path.to_string()]);
    // The workloads run until killed (by pid, with `kids`): loading the
    // probes takes seconds under emulation, and they must outlast it.
    drop(kids);
    assert_eq!(v["source"], "schedstat+probes", "the probes loaded: {v}");
    let rows = v["processes"].as_array().expect("processes");
    let row = |pid: u32| {
        rows.iter()
            .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
            .unwrap_or_else(|| panic!("process {pid} listed: {v}"))
    };
    let (ra, rb) = (row(crowded), row(alone));
    let p99 = |r: &serde_json::Value| r["p99_us"].as_u64().unwrap_or_else(|| panic!("a p99: {r}"));
    let emulated = std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm");
    let (ratio, tolerance) = if emulated { (3, 0.15) } else { (10, 0.05) };
    assert!(
        p99(ra) >= ratio * p99(rb).max(1),
        "the crowded worker's p99 {} µs is at least {ratio}× the quiet one's {} µs",
        p99(ra),
        p99(rb)
    );
    for r in [ra, rb] {
        let (waits, runs) = (
            r["probe_waits"].as_u64().unwrap_or(0),
            r["runs"].as_u64().unwrap_or(0),
        );
        let off = (waits as f64 - runs as f64).abs() / runs.max(1) as f64;
        assert!(
            off <= tolerance,
            "{waits} waits by the probes for {runs} runs by the kernel ({:.1}% off): {r}",
            off * 100.0
        );
    }
}
