//! `governor record`: a baseline recorded without acting, through the same
//! engine driver as `run`, replays to the very decisions it recorded.

use std::process::Command;

use governor_integration::{Children, TestCgroup, governor_bin, replay, require_root};

#[test]
fn a_baseline_recorded_with_a_dry_run_policy_replays_identically() {
    require_root();
    let cg = TestCgroup::new("record-cli");
    let busy = TestCgroup::new("record-cli-busy");
    // Two hogs on one CPU wait for each other: the policy trips. They
    // outlive the recording however long the probes take to load under
    // emulation (and are ended when the test is).
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let procs = busy.procs();
    for _ in 0..2 {
        kids.spawn(&[
            "hog",
            "--cpu",
            "0",
            "--seconds",
            "10",
            "--join",
            procs.to_str().expect("utf-8"),
        ]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("rec");
    let config = dir.path().join("governor.toml");
    // A watermark the hogs cross: the recording has decisions.
    std::fs::write(
        &config,
        format!(
            r#"[agent]
tick = "100ms"
seed = 11

[[policy]]
name = "always"
signal = {{ kind = "runq_p99", cgroup = "{}" }}
high = "100us"
low = "50us"
for = "200ms"
recover_every = "300ms"
ladder = [{{ action = "cpu_limit", cgroup = "{}", cpus = 0.5 }}]
"#,
            busy.path, cg.path
        ),
    )
    .expect("config");
    let before = std::fs::read_to_string(cg.dir.join("cpu.max")).ok();
    let out = Command::new(governor_bin())
        .args(["record", "--duration", "3s", "--config"])
        .arg(&config)
        .arg("--dir")
        .arg(&rec)
        .output()
        .expect("governor record");
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(out.status.success(), "governor record: {err}");
    assert!(err.contains("recorded "), "it says what it recorded: {err}");
    // `--duration 3s` is 3 s of recording at a 100 ms tick, however long
    // the probes took to load (seconds under emulation: once 3 frames).
    let frames: u64 = err
        .split("recorded ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frame count: {err}"));
    assert!(
        frames >= 24,
        "3 s at a 100 ms tick is about 30 frames, recorded {frames}"
    );
    assert_eq!(
        std::fs::read_to_string(cg.dir.join("cpu.max")).ok(),
        before,
        "record never acts"
    );
    let (code, text) = replay(&[&rec]);
    println!("{text}");
    assert_eq!(code, Some(0), "{text}");
    let n: usize = text
        .split("identical: all ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no identity line: {text}"));
    assert!(n >= 1, "the policy tripped while recording: {text}");
}
