//! Replay speed: a synthetic day of 100 ms ticks for 10 run-queue policies
//! (`governor-engine/examples/synth_recording.rs`, kept under
//! `target/bench/replay-day` once made), replayed by `governor replay`
//! beside the floor of reading it: `gzip -dc` of the same segments, in the
//! same rounds, alternating.

use std::{
    fs,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::{BenchArgs, env::median, report::Section};
use crate::util::{run as run_cmd, say, target_dir, workspace_root};

const HOURS: u32 = 24;
const POLICIES: u32 = 10;

fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?}: {st}");
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let rounds = args.rounds.min(3);
    let mut sec = Section::new(
        "replay",
        "6. Replay: a day of 100 ms ticks for 10 policies",
        &format!("cargo xtask bench replay --rounds {rounds}"),
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "governor-engine",
                "--example",
                "synth_recording",
            ])
            .current_dir(workspace_root()),
    )?;
    let day = super::report::dir()?.join("replay-day");
    let done = day.join("complete");
    if !done.exists() {
        let _ = fs::remove_dir_all(&day);
        say(format!(
            "bench replay: writing a synthetic day ({HOURS} h × {POLICIES} policies) into {}",
            day.display()
        ));
        run_cmd(
            Command::new(target_dir().join("release/examples/synth_recording"))
                .arg(&day)
                .args([HOURS.to_string(), POLICIES.to_string()]),
        )?;
        fs::write(&done, "")?;
    }
    let segments: Vec<_> = fs::read_dir(&day)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gz"))
        .collect();
    let bytes: u64 = segments
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let governor = target_dir().join("release/governor");
    let (mut replays, mut floors) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let replay = || timed(Command::new(&governor).arg("replay").arg(&day));
        let floor = || timed(Command::new("gzip").arg("-dc").args(&segments));
        let (r, f) = if round % 2 == 0 {
            let r = replay()?;
            (r, floor()?)
        } else {
            let f = floor()?;
            (replay()?, f)
        };
        eprintln!(
            "  run {}  governor replay {r:.2} s, gzip -dc {f:.2} s",
            round + 1
        );
        replays.push(r);
        floors.push(f);
    }
    // The replay must also have reproduced the day.
    let out = Command::new(&governor).arg("replay").arg(&day).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let identical = text
        .lines()
        .find(|l| l.starts_with("identical:"))
        .unwrap_or("NOT identical");
    let (r, f) = (median(&replays), median(&floors));
    sec.md(&format!(
        "A synthetic recording of {HOURS} h of 100 ms ticks ({} ticks) for {POLICIES} `runq_p99` policies, each on its own cgroup with a histogram of 40 waits a tick, overloaded a minute in ten; {} segments, {:.0} MiB compressed. Median of {rounds} runs, alternating with the floor (`gzip -dc` of the same segments to /dev/null).\n",
        u64::from(HOURS) * 36_000,
        segments.len(),
        bytes as f64 / (1 << 20) as f64
    ));
    sec.md("| governor replay, s | gzip -dc, s | ratio |");
    sec.md("|---|---|---|");
    sec.md(&format!("| {r:.2} | {f:.2} | {:.1}× |", r / f));
    sec.md("");
    sec.md(&format!("`governor replay`: {identical}\n"));
    sec.metric("replay_s", r);
    sec.metric("gzip_floor_s", f);
    sec.metric("ratio_to_floor", r / f);
    sec.target(
        "a day for 10 policies in under 10 s, reproduced",
        r < 10.0 && identical.starts_with("identical"),
        &format!("{r:.2} s; {identical}"),
    );
    sec.write()
}
