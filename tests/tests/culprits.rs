//! Run-queue culprits against the real kernel, in test-owned cgroups only:
//! a watched victim beside two CPU hogs of different weights, all pinned
//! to one CPU, names the hogs as the cgroups it waited behind, in the
//! proportion their CPU time (`cpu.stat usage_usec`) implies: each wait is
//! split among the cgroups that ran on the CPU during it.

use std::{path::PathBuf, thread, time::Duration};

use governor::sense::{
    cgroupfs::{CgroupFs, CgroupIndex, DEFAULT_ROOT},
    sensor::{Sensor, SensorScope},
};
use governor_engine::snapshot::Culprit;
use governor_integration::{Children, CpuTestCgroup, field, probes, require_root};

/// Sets a cgroup's CPU weight (`cpu.weight`, or `cpu.shares` = weight × 1024 / 100 on v1).
fn set_weight(c: &CpuTestCgroup, weight: u64) {
    let (file, value) = if c.cpu_v1.is_some() {
        ("cpu.shares", (weight * 1024 / 100).to_string())
    } else {
        ("cpu.weight", weight.to_string())
    };
    let path = c.cpu_dir().join(file);
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// What one run measured: the victim's culprits and the hogs' CPU time.
struct Run {
    culprits: Vec<Culprit>,
    heavy_share: f64,
    light_share: f64,
    heavy_us: u64,
    light_us: u64,
}

/// A victim worker beside a heavy (weight 300) and a light (weight 100)
/// hog, all on CPU 0 for 3 s, the victim watched.
fn run() -> Run {
    let parent = CpuTestCgroup::new("culprits");
    parent.outweigh_the_host();
    let victim = parent.child("victim");
    let heavy = parent.child("heavy");
    let light = parent.child("light");
    set_weight(&heavy, 300);
    set_weight(&light, 100);
    let paths = [&victim, &heavy, &light].map(|c| c.v2.path.clone());
    let mut sensor = Sensor::new(
        probes(),
        CgroupIndex::new(CgroupFs::discover(std::path::Path::new(DEFAULT_ROOT)).expect("cgroup2")),
        PathBuf::from("/proc"),
        None,
        SensorScope {
            subtrees: paths.to_vec(),
            watched: vec![victim.v2.path.clone()],
            files: Vec::new(),
        },
    );
    sensor.prime().expect("first reading");
    // The first sample hands the watched id to the probes.
    sensor.sample().expect("a snapshot");

    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let secs = "3";
    let procs = |c: &CpuTestCgroup| c.v2.procs().to_str().expect("utf-8").to_owned();
    for hog in [&heavy, &light] {
        let h = kids.spawn(&[
            "hog",
            "--cpu",
            "0",
            "--seconds",
            secs,
            "--join",
            &procs(hog),
        ]);
        hog.join(kids.procs[h].id());
    }
    let w = kids.spawn(&[
        "worker",
        "--cpu",
        "0",
        "--seconds",
        secs,
        "--join",
        &procs(&victim),
    ]);
    victim.join(kids.procs[w].id());
    let (heavy0, light0) = (heavy.usage_usec(), light.usage_usec());
    let out = kids.wait_output(w);
    let (heavy_us, light_us) = (heavy.usage_usec() - heavy0, light.usage_usec() - light0);
    for i in 0..2 {
        kids.wait_output(i);
    }
    thread::sleep(Duration::from_millis(100));
    let snap = sensor.sample().expect("a snapshot");
    let v = snap
        .cgroup(&victim.v2.path)
        .expect("the victim is reported");
    println!(
        "victim {:?} ({out}, {} wakeups)\nculprits {:#?}\nusage: heavy {heavy_us} µs, light {light_us} µs",
        v.runq,
        field(&out, "wakeups"),
        v.culprits
    );
    assert!(!v.culprits.is_empty(), "the victim waited: {:?}", v.runq);
    assert!(v.culprits.len() <= Culprit::TOP);
    let share_of = |c: &CpuTestCgroup| {
        v.culprits
            .iter()
            .find(|k| k.cgroup == c.v2.path.as_str())
            .map_or(0.0, |k| k.share)
    };
    let (h, l) = (share_of(&heavy), share_of(&light));
    Run {
        culprits: v.culprits.clone(),
        heavy_share: h,
        light_share: l,
        heavy_us,
        light_us,
    }
    .check_basics(heavy.v2.path.as_str())
}

impl Run {
    fn check_basics(self, heavy: &str) -> Self {
        let v = &self;
        let (h, l) = (v.heavy_share, v.light_share);
        assert_eq!(
            v.culprits[0].cgroup, heavy,
            "the heavier hog is the top culprit: {:?}",
            v.culprits
        );
        // Shares sum to at most 1 and are sorted.
        let sum: f64 = v.culprits.iter().map(|k| k.share).sum();
        assert!(sum <= 1.0 + 1e-9, "{sum}");
        assert!(v.culprits.windows(2).all(|p| p[0].wait_us >= p[1].wait_us));
        // Under emulation (VM tests under TCG) a vCPU is a host thread that
        // other work preempts: waits are timed loosely and the idle CPU takes
        // a part; the split between the two hogs is still checked.
        let emulated = std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|e| e == "vm");
        let hogs_min = if emulated { 0.5 } else { 0.8 };
        if emulated {
            println!("emulated: the hogs' part of the wait is checked at ≥ 50%, not 80%");
        }
        assert!(
            h + l >= hogs_min,
            "the two hogs held the CPU for most of the victim's wait: {:.0}% + {:.0}%",
            h * 100.0,
            l * 100.0
        );
        self
    }
}

#[test]
fn a_victim_beside_two_weighted_hogs_names_the_heavier_first_and_the_hogs_as_most_of_its_wait() {
    require_root();
    let r = run();
    assert!(r.heavy_share > r.light_share, "{:?}", r.culprits);
}

/// The criterion: each wait is split among the runs of the CPU
/// during it (per-run-segment attribution), so the wait behind each hog
/// follows the CPU time it took. With the whole wait charged to the task
/// that held the CPU at its end, the heavier hog (which runs longer
/// stretches) was overcharged: 86.5% of the hogs' wait against 74.7% of
/// their CPU time on the 6.18 build machine; split, 71.8% against 74.9%.
#[test]
fn the_wait_behind_each_hog_is_within_10_points_of_its_cpu_time() {
    require_root();
    let Run {
        heavy_share: h,
        light_share: l,
        heavy_us,
        light_us,
        ..
    } = run();
    // Between the two hogs, the wait behind each follows its CPU time.
    let want = heavy_us as f64 / (heavy_us + light_us) as f64;
    let got = h / (h + l);
    println!(
        "heavy's part of the hogs' wait {:.1}%, of their CPU time {:.1}%",
        got * 100.0,
        want * 100.0
    );
    assert!(
        (got - want).abs() <= 0.10,
        "heavy's share of the wait behind the hogs {:.1}% should be within 10 points of its share of their CPU time {:.1}%",
        got * 100.0,
        want * 100.0
    );
}
