//! The cgroup actuators in a process of their own, for the crash-safety
//! test: it applies limits and waits to be killed (`kill -9`), and a second
//! run does what the agent does when it starts.
//!
//! ```text
//! govtest-act apply  --journal DIR [--policy NAME] [--seconds S]
//!                    [--cpu-limit CGROUP=CPUS]... [--cpu-weight CGROUP=WEIGHT|idle]...
//!                    [--memory-high CGROUP=BYTES]...
//! govtest-act revert --journal DIR
//! govtest-act cycle  --journal DIR [--policy NAME] [--seconds S] [--pause-us US]
//!                    [--sequences N] ACTIONS…
//! ```
//! `apply` first reverts what a dead process left (as the agent does at
//! start), applies each action, prints one `file=… original=… value=…` line
//! per change and then `applied`, and sleeps (at most `--seconds`, 60 by
//! default). `revert` prints `restored=N vanished=N failed=N` and exits 1 if
//! any revert failed.
//!
//! `cycle`, for the fault tests (`kill -9` at random instants), reverts what
//! a dead process left and prints `reverted restored=N vanished=N failed=N`,
//! `failpoints=on|off` and `ready`, then waits for a line on stdin. Then it
//! applies every action and lifts every one, over and over (`--sequences`
//! times, else until `--seconds`, 10 by default), printing a phase marker
//! before and after each step, one line per `write(2)` so that a `kill -9`
//! loses none: `apply i`, `applied i`, `lift i`, `lifted i`, and `sequence
//! took_us=N` after each. Built with `governor`'s `failpoints` (the tests'
//! build) it also marks, and pauses `--pause-us` (100 µs by default) at, the
//! actuators' failpoints: `journaled` … `writing` between the journal write
//! and the cgroup write of an apply, `restored` … `journaling` between the
//! cgroup write and the journal update of a lift.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use governor::{
    act::{
        cgroup::{Applied, CgroupActuator, Lifted},
        journal::Journal,
    },
    sense::cgroupfs::{CgroupFs, DEFAULT_ROOT},
};
use governor_engine::{config::Action, snapshot::CgroupPath};

fn values<'a>(args: &'a [String], name: &str) -> impl Iterator<Item = &'a str> {
    args.windows(2)
        .filter(move |w| w[0] == name)
        .map(|w| w[1].as_str())
}

fn one(args: &[String], name: &str) -> Option<String> {
    values(args, name).last().map(str::to_owned)
}

/// `CGROUP=VALUE` → (path, value).
fn split(spec: &str) -> anyhow::Result<(CgroupPath, &str)> {
    let (cg, v) = spec
        .split_once('=')
        .with_context(|| format!("{spec:?} is not CGROUP=VALUE"))?;
    Ok((CgroupPath::new(cg)?, v))
}

fn actions(args: &[String]) -> anyhow::Result<Vec<Action>> {
    let mut out = Vec::new();
    for spec in values(args, "--cpu-limit") {
        let (cgroup, v) = split(spec)?;
        let cpus = v.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(Action::CpuLimit { cgroup, cpus });
    }
    for spec in values(args, "--cpu-weight") {
        let (cgroup, v) = split(spec)?;
        let weight = v.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(Action::CpuWeight { cgroup, weight });
    }
    for spec in values(args, "--memory-high") {
        let (cgroup, v) = split(spec)?;
        let bytes = v.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(Action::MemoryHigh { cgroup, bytes });
    }
    Ok(out)
}

fn open(args: &[String]) -> anyhow::Result<CgroupActuator> {
    let dir = PathBuf::from(one(args, "--journal").context("--journal DIR is required")?);
    let fs = CgroupFs::discover(std::path::Path::new(DEFAULT_ROOT))?;
    let journal = Journal::open(&dir)?;
    Ok(CgroupActuator::new(fs, journal))
}

/// One marker line, written whole with one `write(2)` (stdout is not
/// buffered past a line, and a line this short is one write).
fn mark(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

/// Marks, and pauses at, the actuators' failpoints (if compiled in).
fn mark_failpoints(pause: Duration) -> anyhow::Result<()> {
    let points = [
        ("journal-written", "journaled", "writing"),
        ("cgroup-written", "restored", "journaling"),
    ];
    for (point, at, after) in points {
        fail::cfg_callback(point, move || {
            mark(at);
            std::thread::sleep(pause);
            mark(after);
        })
        .map_err(|e| anyhow::anyhow!("failpoint {point}: {e}"))?;
    }
    Ok(())
}

fn cycle(act: &mut CgroupActuator, args: &[String]) -> anyhow::Result<bool> {
    let policy = one(args, "--policy").unwrap_or_else(|| "govtest".to_owned());
    let actions = actions(args)?;
    let pause_us: u64 = one(args, "--pause-us")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let secs: f64 = one(args, "--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let sequences: Option<u64> = one(args, "--sequences").and_then(|s| s.parse().ok());
    if fail::has_failpoints() {
        mark_failpoints(Duration::from_micros(pause_us))?;
    }
    mark(&format!(
        "failpoints={}",
        if fail::has_failpoints() { "on" } else { "off" }
    ));
    mark("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let until = std::time::Instant::now() + Duration::from_secs_f64(secs.clamp(0.0, 60.0));
    let mut done = 0u64;
    while sequences.map_or(std::time::Instant::now() < until, |n| done < n) {
        let t = std::time::Instant::now();
        for (i, action) in actions.iter().enumerate() {
            mark(&format!("apply {i}"));
            match act
                .apply(&policy, action)
                .with_context(|| action.to_string())?
            {
                Applied::Written { .. } => {}
                Applied::TargetAbsent { dir } => bail!("{action}: {} is absent", dir.display()),
            }
            mark(&format!("applied {i}"));
        }
        for (i, action) in actions.iter().enumerate() {
            mark(&format!("lift {i}"));
            let lifted = act
                .lift(&policy, action)
                .with_context(|| action.to_string())?;
            if !matches!(lifted, Lifted::Restored { .. }) {
                bail!("{action}: lifted as {lifted:?}, not restored");
            }
            mark(&format!("lifted {i}"));
        }
        done += 1;
        mark(&format!("sequence took_us={}", t.elapsed().as_micros()));
    }
    Ok(act.journal().is_empty())
}

fn run(args: &[String]) -> anyhow::Result<bool> {
    let mode = args.first().map(String::as_str).unwrap_or_default();
    let mut act = open(args)?;
    // What the agent does at start: a dead process's entries are reverted first.
    let report = act.revert_all();
    if mode == "cycle" {
        mark(&format!(
            "reverted restored={} vanished={} failed={}",
            report.restored.len(),
            report.vanished.len(),
            report.failed.len()
        ));
        if !report.is_clean() {
            bail!("reverting a previous process's changes: {report}");
        }
        return cycle(&mut act, args);
    }
    let mut out = std::io::stdout().lock();
    match mode {
        "revert" => {
            writeln!(
                out,
                "restored={} vanished={} failed={}",
                report.restored.len(),
                report.vanished.len(),
                report.failed.len()
            )?;
            for (file, why) in &report.failed {
                writeln!(out, "failed file={} reason={why:?}", file.display())?;
            }
            Ok(report.is_clean())
        }
        "apply" => {
            if !report.is_clean() {
                bail!("reverting a previous process's changes: {report}");
            }
            let policy = one(args, "--policy").unwrap_or_else(|| "govtest".to_owned());
            for action in actions(args)? {
                match act
                    .apply(&policy, &action)
                    .with_context(|| action.to_string())?
                {
                    Applied::Written {
                        file,
                        original,
                        value,
                        ..
                    } => writeln!(
                        out,
                        "file={} original={original:?} value={value:?}",
                        file.display()
                    )?,
                    Applied::TargetAbsent { dir } => {
                        writeln!(out, "absent dir={}", dir.display())?;
                    }
                }
            }
            writeln!(out, "applied")?;
            out.flush()?;
            drop(out);
            let secs: f64 = one(args, "--seconds")
                .and_then(|s| s.parse().ok())
                .unwrap_or(60.0);
            std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.0, 60.0)));
            // Reached only if nobody killed us: leave nothing behind.
            let report = act.revert_all();
            Ok(report.is_clean())
        }
        other => bail!("unknown mode {other:?}; use `apply`, `cycle` or `revert`"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("govtest-act: {e:#}");
            ExitCode::from(2)
        }
    }
}
