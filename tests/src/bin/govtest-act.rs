//! The cgroup actuators in a process of their own, for the crash-safety
//! test: it applies limits and waits to be killed (`kill -9`), and a second
//! run does what the agent does when it starts.
//!
//! ```text
//! govtest-act apply  --journal DIR [--policy NAME] [--seconds S]
//!                    [--cpu-limit CGROUP=CPUS]... [--cpu-weight CGROUP=WEIGHT|idle]...
//!                    [--memory-high CGROUP=BYTES]...
//! govtest-act revert --journal DIR
//! ```
//! `apply` first reverts what a dead process left (as the agent does at
//! start), applies each action, prints one `file=… original=… value=…` line
//! per change and then `applied`, and sleeps (at most `--seconds`, 60 by
//! default). `revert` prints `restored=N vanished=N failed=N` and exits 1 if
//! any revert failed.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use governor::{
    act::{
        cgroup::{Applied, CgroupActuator},
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

fn run(args: &[String]) -> anyhow::Result<bool> {
    let mode = args.first().map(String::as_str).unwrap_or_default();
    let mut act = open(args)?;
    // What the agent does at start: a dead process's entries are reverted first.
    let report = act.revert_all();
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
        other => bail!("unknown mode {other:?}; use `apply` or `revert`"),
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
