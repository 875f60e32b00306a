//! `cargo xtask fuzz [TARGET] [--seconds N]`: cargo-fuzz (libFuzzer, the
//! nightly toolchain) on governor's parsers of files and datagrams, one
//! target after another; a line per target with its executions, execs/s and
//! corpus size, and a non-zero exit if any target crashed (a panic, a
//! violated property, a hang past [`TIMEOUT_SECS`], a sanitizer report).
//!
//! Layout (cargo-fuzz's): `fuzz/` at the workspace root is a workspace of
//! its own (the main one never builds it), targets in `fuzz/fuzz_targets/`,
//! seed corpora of small real files in `fuzz/corpus/<target>/` (committed).
//! What the fuzzer adds goes to `<cache>/fuzz-corpus/<target>/` and builds to
//! `<cache>/fuzz-target/`, outside the clone; crashing inputs to
//! `fuzz/artifacts/<target>/` (ignored by git), where
//! `cargo fuzz run --fuzz-dir fuzz <target> <file>` replays one.

use std::{
    env, fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    ebpf_toolchain as tc, setup,
    util::{output, run, say, show, workspace_root},
};

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`) and what each one feeds.
pub const TARGETS: &[(&str, &str)] = &[
    (
        "config",
        "config::from_str; each error formats as fuzz.toml:LINE:COL: error: …",
    ),
    (
        "journal",
        "Journal::open of journal.json; errors name the path, entries survive a rewrite",
    ),
    ("sockdiag", "sock_diag dump datagrams (parse_datagram)"),
    (
        "procfs",
        "PSI `some avg10`, /proc/net/netstat TcpExt listen counters",
    ),
    (
        "cgroupfs",
        "cpu.stat (flat keyed), *.pressure, /proc/self/cgroup paths",
    ),
    ("tracefs", "tracepoint format files (EventFormat::parse)"),
];

/// The cargo-fuzz release installed into the cache. It declares no
/// `rust-version`; it builds with the stable toolchain (1.95) and drives
/// the nightly one.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds per target in `cargo xtask test` (6 targets: about 3.5 minutes
/// with the build cached; the first build without a sanitizer takes about
/// 5 minutes on 2 cores, with ASan about 20).
pub const SMOKE_SECS: u64 = 30;

/// An input that runs longer than this is a hang (libFuzzer's `-timeout`).
pub const TIMEOUT_SECS: u64 = 10;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// One target: config, journal, sockdiag, procfs, cgroupfs or tracefs
    /// (all of them, one after another, if omitted).
    target: Option<String>,
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = SMOKE_SECS)]
    seconds: u64,
    /// AddressSanitizer (`address`) or none (`none`: a much shorter first
    /// build; panics, overflows, hangs and property failures are still
    /// crashes, only memory errors of unsafe code go unseen).
    #[arg(long, value_enum, default_value_t = Sanitizer::Address)]
    sanitizer: Sanitizer,
}

/// cargo-fuzz's `--sanitizer`, each with its own build directory (one
/// mode's flags would rebuild the other's every time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sanitizer {
    /// AddressSanitizer.
    Address,
    /// No sanitizer: libFuzzer's coverage and Rust's own checks.
    None,
}

impl Sanitizer {
    fn flag(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::None => "none",
        }
    }

    fn target_dir(self) -> PathBuf {
        tc::cache_dir().join(match self {
            Self::Address => "fuzz-target",
            Self::None => "fuzz-target-nosan",
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Address => "ASan, debug assertions",
            Self::None => "no sanitizer, debug assertions",
        }
    }
}

/// Figures from libFuzzer's output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// `stat::number_of_executed_units`.
    pub executed: Option<u64>,
    /// `stat::average_exec_per_sec`.
    pub execs_per_sec: Option<u64>,
    /// `stat::new_units_added`.
    pub new_units: Option<u64>,
    /// Units in the corpus, from the last status line's `corp: N/SIZE`.
    pub corpus_units: Option<u64>,
    /// The corpus's size as libFuzzer writes it (`12Kb`).
    pub corpus_size: Option<String>,
    /// What went wrong, if something did: the panic or libFuzzer's `ERROR:`.
    pub error: Option<String>,
    /// Where libFuzzer wrote the input that crashed.
    pub artifact: Option<String>,
}

/// One target's run.
#[derive(Debug)]
pub struct Outcome {
    /// The target.
    pub target: String,
    /// True if the run ended without a crash and printed its final stats.
    pub ok: bool,
    /// Its figures.
    pub stats: Stats,
    /// Seconds it took, build check included.
    pub secs: f64,
}

impl Outcome {
    /// `config 41523 exec/s, corpus 311 (+97)` or `journal CRASHED: …`.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let figures = format!(
            "{} exec/s, corpus {}{}",
            s.execs_per_sec.map_or("?".into(), |n| n.to_string()),
            s.corpus_units.map_or("?".into(), |n| n.to_string()),
            s.new_units.map_or(String::new(), |n| format!(" (+{n})"))
        );
        if self.ok {
            return format!("{} {figures}", self.target);
        }
        let mut out = format!(
            "{} CRASHED: {}",
            self.target,
            s.error.as_deref().unwrap_or("exited with failure")
        );
        if let Some(a) = &s.artifact {
            out.push_str(&format!(" (input {a})"));
        }
        out
    }
}

/// `cargo xtask fuzz`.
pub fn fuzz(args: &FuzzArgs) -> anyhow::Result<ExitCode> {
    let targets = select(args.target.as_deref())?;
    let outcomes = run_targets(&targets, args.seconds, args.sanitizer)?;
    eprintln!();
    say(format!(
        "fuzz: {} target(s), {}s each",
        outcomes.len(),
        args.seconds
    ));
    for o in &outcomes {
        let s = &o.stats;
        eprintln!(
            "  {:<7} {:<9} {:>11} runs {:>8} exec/s  corpus {:>5} ({}, +{} new)  {:.0}s",
            if o.ok { "ok" } else { "CRASHED" },
            o.target,
            s.executed.map_or("?".into(), |n| n.to_string()),
            s.execs_per_sec.map_or("?".into(), |n| n.to_string()),
            s.corpus_units.map_or("?".into(), |n| n.to_string()),
            s.corpus_size.as_deref().unwrap_or("?"),
            s.new_units.unwrap_or(0),
            o.secs
        );
        if !o.ok {
            eprintln!("          {}", o.summary());
        }
    }
    let crashed = outcomes.iter().filter(|o| !o.ok).count();
    println!(
        "fuzz: {} passed, {crashed} failed",
        outcomes.len() - crashed
    );
    Ok(if crashed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every target for `seconds` each (the step of `cargo xtask test`).
pub fn smoke(seconds: u64, sanitizer: Sanitizer) -> anyhow::Result<Vec<Outcome>> {
    run_targets(&select(None)?, seconds, sanitizer)
}

fn select(target: Option<&str>) -> anyhow::Result<Vec<&'static str>> {
    let all = TARGETS.iter().map(|(t, _)| *t);
    match target {
        None => Ok(all.collect()),
        Some(t) => match all.clone().find(|n| *n == t) {
            Some(n) => Ok(vec![n]),
            None => bail!(
                "no fuzz target {t:?}; the targets are: {}",
                all.collect::<Vec<_>>().join(", ")
            ),
        },
    }
}

/// Installs cargo-fuzz if needed, builds the targets once, runs each.
fn run_targets(
    targets: &[&str],
    seconds: u64,
    sanitizer: Sanitizer,
) -> anyhow::Result<Vec<Outcome>> {
    anyhow::ensure!(seconds > 0, "--seconds must be at least 1");
    // The agent's crate embeds the kernel programs: its build needs the
    // eBPF toolchain, as every build of it does.
    if tc::preflight().is_err() {
        setup::setup()?;
    }
    let bin_dir = cargo_fuzz()?;
    let root = workspace_root();
    let one = match targets {
        [t] => Some(*t),
        _ => None,
    };
    let mut build = cargo_fuzz_cmd(&root, &bin_dir, "build", sanitizer);
    build.args(one);
    say(format!(
        "fuzz: building {} ({}): {}",
        one.unwrap_or("every target"),
        sanitizer.describe(),
        show(&build)
    ));
    let (built, _) = stream(&mut build)?;
    anyhow::ensure!(
        built,
        "building the fuzz targets failed: `{}`",
        show(&build)
    );
    let mut outcomes = Vec::new();
    for t in targets {
        outcomes.push(run_one(&root, &bin_dir, t, seconds, sanitizer)?);
    }
    Ok(outcomes)
}

/// The cargo-fuzz binary's directory, installed into the cache (outside the
/// clone) unless the pinned release is already there.
fn cargo_fuzz() -> anyhow::Result<PathBuf> {
    let root = tc::cache_dir().join("cargo-fuzz");
    let bin_dir = root.join("bin");
    let bin = bin_dir.join("cargo-fuzz");
    let version = output(Command::new(&bin).arg("--version")).unwrap_or_default();
    if version.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION) {
        return Ok(bin_dir);
    }
    say(format!(
        "fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (about two minutes, once)",
        root.display()
    ));
    run(Command::new("cargo")
        .args(["install", "--locked", "cargo-fuzz", "--version"])
        .arg(format!("={CARGO_FUZZ_VERSION}"))
        .arg("--root")
        .arg(&root)
        // Built in a temporary directory, not in the shared target.
        .env_remove("CARGO_TARGET_DIR"))
    .context("installing cargo-fuzz")?;
    Ok(bin_dir)
}

/// `rustup run nightly cargo fuzz <sub>` with this project's directories.
fn cargo_fuzz_cmd(root: &Path, bin_dir: &Path, sub: &str, sanitizer: Sanitizer) -> Command {
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir.to_path_buf()];
    dirs.extend(env::split_paths(&path));
    // A directory that cannot be joined (a `:` in its name) is our own
    // cache's: then cargo-fuzz must be on PATH already.
    let path = env::join_paths(dirs).unwrap_or(path);
    let mut c = Command::new("rustup");
    c.args(["run", tc::NIGHTLY, "cargo", "fuzz", sub])
        .arg("--fuzz-dir")
        .arg(root.join("fuzz"))
        .arg("--target-dir")
        .arg(sanitizer.target_dir())
        .arg("--sanitizer")
        .arg(sanitizer.flag())
        // Overflow checks and debug assertions: an overflow is a crash.
        .arg("--debug-assertions")
        .env("PATH", path)
        // The sanitizer flags are cargo-fuzz's RUSTFLAGS; these would
        // override them or pick another compiler.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(root);
    c
}

/// Fuzzes one target for `seconds`, streaming libFuzzer's output (without
/// its line per new input) and reading its figures.
fn run_one(
    root: &Path,
    bin_dir: &Path,
    target: &str,
    seconds: u64,
    sanitizer: Sanitizer,
) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let grown = tc::cache_dir().join("fuzz-corpus").join(target);
    fs::create_dir_all(&grown).with_context(|| format!("creating {}", grown.display()))?;
    minimize(root, bin_dir, target, &grown, sanitizer)?;
    let seeds = root.join("fuzz/corpus").join(target);
    let mut cmd = cargo_fuzz_cmd(root, bin_dir, "run", sanitizer);
    // New inputs go to the first corpus directory: the cache, not the clone.
    cmd.arg(target).arg(&grown).arg(&seeds).arg("--").args([
        format!("-max_total_time={seconds}"),
        "-print_final_stats=1".into(),
        format!("-timeout={TIMEOUT_SECS}"),
        "-rss_limit_mb=2048".into(),
    ]);
    let what = (TARGETS.iter().find(|(t, _)| *t == target)).map_or("", |(_, w)| *w);
    say(format!("fuzz {target} ({what}): {}", show(&cmd)));
    let (success, mut stats) = stream(&mut cmd)?;
    let ok =
        success && stats.error.is_none() && stats.artifact.is_none() && stats.executed.is_some();
    if !ok && stats.error.is_none() {
        stats.error = Some(if success {
            "no final stats from libFuzzer".into()
        } else {
            "cargo fuzz run failed".into()
        });
    }
    Ok(Outcome {
        target: target.to_owned(),
        ok,
        stats,
        secs: t.elapsed().as_secs_f64(),
    })
}

/// The grown corpus is merged (libFuzzer's `-merge=1`: only inputs that add
/// coverage are kept) once it holds more files than this: libFuzzer never
/// removes the inputs it has replaced by smaller ones.
const MAX_GROWN_FILES: usize = 2000;

/// Merges `grown` into a fresh directory that replaces it, if it is large.
fn minimize(
    root: &Path,
    bin_dir: &Path,
    target: &str,
    grown: &Path,
    sanitizer: Sanitizer,
) -> anyhow::Result<()> {
    let files = fs::read_dir(grown).map_or(0, |d| d.count());
    if files <= MAX_GROWN_FILES {
        return Ok(());
    }
    let merged = grown.with_extension("merge");
    let _ = fs::remove_dir_all(&merged);
    fs::create_dir_all(&merged).with_context(|| format!("creating {}", merged.display()))?;
    let mut cmd = cargo_fuzz_cmd(root, bin_dir, "run", sanitizer);
    cmd.arg(target)
        .arg(&merged)
        .arg(grown)
        .args(["--", "-merge=1"])
        .arg(format!("-timeout={TIMEOUT_SECS}"));
    say(format!(
        "fuzz {target}: merging the grown corpus ({files} files): {}",
        show(&cmd)
    ));
    let (success, stats) = stream(&mut cmd)?;
    if !success || stats.error.is_some() {
        // A crash here is found again by the run that follows; keep the corpus.
        let _ = fs::remove_dir_all(&merged);
        return Ok(());
    }
    fs::remove_dir_all(grown).with_context(|| format!("removing {}", grown.display()))?;
    fs::rename(&merged, grown).with_context(|| format!("renaming {}", merged.display()))
}

/// Runs `cmd`, echoing its stderr (less libFuzzer's line per new input, its
/// recommended dictionary and cargo's replay of the eBPF build's output) and
/// reading libFuzzer's figures from it; true if it exited successfully.
fn stream(cmd: &mut Command) -> anyhow::Result<(bool, Stats)> {
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", show(cmd)))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut stats = Stats::default();
    let mut in_dictionary = false;
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    while let Some(line) = lines.next() {
        if line.starts_with("###### Recommended dictionary") {
            in_dictionary = true;
        }
        let quiet =
            in_dictionary || is_new_input_line(&line) || line.starts_with("warning: governor@");
        if line.starts_with("###### End of recommended dictionary") {
            in_dictionary = false;
        }
        if !quiet {
            eprintln!("{line}");
        }
        // Rust's panic message follows its `panicked at FILE:LINE:COL:` line.
        if line.contains(" panicked at ") && stats.error.is_none() {
            let next = lines.next().unwrap_or_default();
            eprintln!("{next}");
            stats.error = Some(format!("{} {}", panic_place(&line), next.trim()));
            continue;
        }
        parse_line(&mut stats, &line);
    }
    let status = child.wait()?;
    Ok((status.success(), stats))
}

/// libFuzzer's line for each input it keeps (`#123 NEW …`, `REDUCE`): many
/// per second at first, left out of the echoed output.
fn is_new_input_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let (Some(n), Some(what)) = (words.next(), words.next()) else {
        return false;
    };
    n.starts_with('#') && ["NEW", "REDUCE", "RELOAD"].contains(&what)
}

/// `panicked at fuzz_targets/config.rs:30:17:` out of Rust's panic line.
fn panic_place(line: &str) -> &str {
    line.find("panicked at ")
        .map_or(line, |i| line[i..].trim_end_matches(':'))
}

/// Reads one line of libFuzzer's output into `stats`.
fn parse_line(stats: &mut Stats, line: &str) {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("stat::") {
        let Some((key, value)) = rest.split_once(':') else {
            return;
        };
        let value = value.trim().parse().ok();
        match key {
            "number_of_executed_units" => stats.executed = value,
            "average_exec_per_sec" => stats.execs_per_sec = value,
            "new_units_added" => stats.new_units = value,
            _ => {}
        }
    } else if line.starts_with('#')
        && let Some(corp) = line.split("corp: ").nth(1)
    {
        // `#4096 pulse  cov: 310 ft: 920 corp: 120/4871b lim: 48 exec/s: …`
        let corp = corp.split_whitespace().next().unwrap_or_default();
        if let Some((units, size)) = corp.split_once('/') {
            stats.corpus_units = units.parse().ok();
            stats.corpus_size = Some(size.to_owned());
        }
    } else if let Some(path) = line
        .split_once("Test unit written to ")
        .map(|(_, p)| p.trim())
    {
        stats.artifact = Some(path.to_owned());
    } else if let Some((_, what)) = line.split_once("ERROR: libFuzzer: ")
        && stats.error.is_none()
    {
        stats.error = Some(format!("libFuzzer: {}", what.trim()));
    } else if let Some((_, what)) = line.split_once("ERROR: AddressSanitizer: ")
        && stats.error.is_none()
    {
        stats.error = Some(format!("AddressSanitizer: {}", what.trim()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats_and_corpus() {
        let mut s = Stats::default();
        for l in [
            "#2\tINITED cov: 120 ft: 130 corp: 4/6221b exec/s: 0 rss: 44Mb",
            "#1024\tNEW    cov: 300 ft: 700 corp: 40/9Kb lim: 4096 exec/s: 512 rss: 50Mb L: 12/2561 MS: 1 ChangeBit-",
            "#310000\tDONE   cov: 812 ft: 2710 corp: 311/41Kb lim: 4096 exec/s: 10333 rss: 61Mb",
            "Done 310000 runs in 31 second(s)",
            "stat::number_of_executed_units: 310000",
            "stat::average_exec_per_sec:     10000",
            "stat::new_units_added:          97",
            "stat::slowest_unit_time_sec:    0",
            "stat::peak_rss_mb:              61",
        ] {
            parse_line(&mut s, l);
        }
        assert_eq!(s.executed, Some(310_000));
        assert_eq!(s.execs_per_sec, Some(10_000));
        assert_eq!(s.new_units, Some(97));
        assert_eq!(s.corpus_units, Some(311));
        assert_eq!(s.corpus_size.as_deref(), Some("41Kb"));
        assert_eq!(s.error, None);
        assert!(is_new_input_line(
            "#1024\tNEW    cov: 300 ft: 700 corp: 40/9Kb lim: 4096"
        ));
        assert!(!is_new_input_line(
            "#310000\tDONE   cov: 812 ft: 2710 corp: 311/41Kb"
        ));
    }

    #[test]
    fn reads_a_crash() {
        let mut s = Stats::default();
        for l in [
            "==1234== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='/w/fuzz/artifacts/config/'; Test unit written to /w/fuzz/artifacts/config/crash-da39a3ee",
            "==1234== ERROR: libFuzzer: timeout after 10 seconds",
        ] {
            parse_line(&mut s, l);
        }
        assert_eq!(s.error.as_deref(), Some("libFuzzer: deadly signal"));
        assert_eq!(
            s.artifact.as_deref(),
            Some("/w/fuzz/artifacts/config/crash-da39a3ee")
        );
        assert_eq!(
            panic_place("thread '<unnamed>' panicked at fuzz_targets/config.rs:30:17:"),
            "panicked at fuzz_targets/config.rs:30:17"
        );
    }

    #[test]
    fn every_target_has_its_source_and_seeds() {
        let fuzz = workspace_root().join("fuzz");
        let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
        for (t, _) in TARGETS {
            assert!(
                fuzz.join(format!("fuzz_targets/{t}.rs")).is_file(),
                "fuzz/fuzz_targets/{t}.rs"
            );
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "[[bin]] {t} in fuzz/Cargo.toml"
            );
            let seeds = fs::read_dir(fuzz.join("corpus").join(t))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(seeds > 0, "seed files in fuzz/corpus/{t}/");
        }
        // And no target is left out of the list.
        for e in fs::read_dir(fuzz.join("fuzz_targets")).expect("fuzz/fuzz_targets") {
            let name = e.expect("entry").file_name();
            let name = name.to_string_lossy();
            let stem = name.trim_end_matches(".rs");
            assert!(
                TARGETS.iter().any(|(t, _)| *t == stem),
                "{name} is not in TARGETS"
            );
        }
        assert!(select(Some("nope")).is_err());
        assert_eq!(select(Some("journal")).expect("journal"), ["journal"]);
    }
}
