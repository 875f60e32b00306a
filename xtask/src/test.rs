//! `cargo xtask test`: everything CI runs, with one closing summary line.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, ExitCode, Stdio},
    thread,
    time::Instant,
};

use anyhow::Context as _;
use clap::Args;

use crate::{
    ebpf_toolchain as tc, fuzz, setup,
    util::{is_root, say, show, workspace_root},
    vm,
};

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (when you know nothing is missing).
    #[arg(long)]
    no_setup: bool,
    /// Run the VM tests on every kernel (5.10, 6.1, 6.12), not only 6.1.
    #[arg(long)]
    all_kernels: bool,
    /// Run the 30-second libFuzzer smoke of each fuzz target with
    /// AddressSanitizer (`cargo xtask fuzz --sanitizer address`) instead of
    /// without a sanitizer; the first ASan build takes about 20 minutes on
    /// 2 cores.
    #[arg(long, conflicts_with = "no_fuzz")]
    fuzz: bool,
    /// Skip the fuzz smoke.
    #[arg(long)]
    no_fuzz: bool,
}

/// Counts parsed from libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

struct Step {
    name: String,
    ok: bool,
    secs: f64,
    note: String,
    /// Tests this step reported as failed.
    failed_tests: u64,
}

/// Runs every check; the exit code is non-zero if any step or test failed.
pub fn test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Build outputs are a cache like bpf-linker: kept outside the clone
    // (unless CARGO_TARGET_DIR says otherwise), so a fresh clone reuses the
    // compiled dependencies instead of building them all again.
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        let dir = tc::cache_dir().join("target");
        say(format!(
            "build outputs in {} (set CARGO_TARGET_DIR to change)",
            dir.display()
        ));
        // SAFETY: set before this process starts any thread.
        unsafe { std::env::set_var("CARGO_TARGET_DIR", &dir) };
    }
    let root = workspace_root();
    let mut steps: Vec<Step> = Vec::new();
    let mut totals = Counts::default();
    let mut failures: Vec<String> = Vec::new();
    let mut skipped_notes: Vec<String> = Vec::new();

    if !args.no_setup {
        let t = Instant::now();
        let r = setup::setup();
        let ok = r.is_ok();
        steps.push(Step {
            name: "setup".into(),
            ok,
            secs: t.elapsed().as_secs_f64(),
            note: r.err().map(|e| format!("{e:#}")).unwrap_or_default(),
            failed_tests: 0,
        });
        if !ok {
            return Ok(finish(&steps, totals, &failures, &skipped_notes, started));
        }
    }

    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.args(args).current_dir(&root);
        c
    };

    let mut plain = |name: &str, mut cmd: Command| {
        say(format!("{name}: {}", show(&cmd)));
        let t = Instant::now();
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        steps.push(Step {
            name: name.into(),
            ok,
            secs: t.elapsed().as_secs_f64(),
            note: String::new(),
            failed_tests: 0,
        });
    };
    plain("fmt", cargo(&["fmt", "--all", "--", "--check"]));
    plain(
        "clippy",
        cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]),
    );
    let mut ebpf_clippy = Command::new("rustup");
    ebpf_clippy
        .args([
            "run",
            tc::NIGHTLY,
            "cargo",
            "clippy",
            "--package",
            "governor-ebpf",
            "--release",
        ])
        .args([
            "--target",
            tc::BPF_TARGET,
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&root);
    plain("clippy (kernel programs)", ebpf_clippy);

    // The engine's purity is its dependency list: checked, not trusted.
    {
        say("engine purity: cargo tree -p governor-engine -e normal");
        let t = Instant::now();
        let r = engine_purity(&root);
        steps.push(Step {
            name: "engine has no I/O dependency".into(),
            ok: r.is_ok(),
            secs: t.elapsed().as_secs_f64(),
            note: match r {
                Ok(n) => format!("{n} crates, none of them I/O"),
                Err(e) => format!("{e:#}"),
            },
            failed_tests: 0,
        });
    }

    let unit = cargo(&[
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "governor-ebpf",
        "--exclude",
        "governor-integration",
    ]);
    libtest_step(
        "unit and simulation tests",
        unit,
        &mut steps,
        &mut totals,
        &mut failures,
    )?;

    // The parsers of files and datagrams under libFuzzer, one after another.
    if args.no_fuzz {
        skipped_notes.push("fuzz smoke: skipped (--no-fuzz)".into());
    } else {
        let sanitizer = if args.fuzz {
            fuzz::Sanitizer::Address
        } else {
            fuzz::Sanitizer::None
        };
        fuzz_step(sanitizer, &mut steps, &mut totals, &mut failures);
    }

    // The unit file: verify, and its exposure score.
    {
        say("systemd unit: systemd-analyze verify and security");
        let t = Instant::now();
        let built = Command::new("cargo")
            .args(["build", "--package", "governor"])
            .current_dir(&root)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let r = if built {
            crate::systemd::check(&root, &crate::util::target_dir().join("debug/governor"))
        } else {
            Err(anyhow::anyhow!("building governor failed"))
        };
        steps.push(Step {
            name: format!(
                "systemd unit (verify, filter, exposure ≤ {})",
                crate::systemd::MAX_EXPOSURE
            ),
            ok: r.is_ok(),
            secs: t.elapsed().as_secs_f64(),
            note: match r {
                Ok(score) => format!("exposure {score}"),
                Err(e) => format!("{e:#}"),
            },
            failed_tests: 0,
        });
    }

    prometheus_step(
        &root,
        &mut steps,
        &mut totals,
        &mut failures,
        &mut skipped_notes,
    );

    if is_root() {
        let integ = cargo(&[
            "test",
            "--no-fail-fast",
            "--package",
            "governor-integration",
            "--",
            "--test-threads=1",
        ]);
        libtest_step(
            "integration tests (root, host kernel)",
            integ,
            &mut steps,
            &mut totals,
            &mut failures,
        )?;
    } else {
        skipped_notes.push(
            "integration tests: not root (they load eBPF programs and create cgroups)".into(),
        );
    }

    vm_step(
        args.all_kernels,
        &mut steps,
        &mut totals,
        &mut failures,
        &mut skipped_notes,
    );
    systemd_vm_step(
        &root,
        &mut steps,
        &mut totals,
        &mut failures,
        &mut skipped_notes,
    );

    Ok(finish(&steps, totals, &failures, &skipped_notes, started))
}

/// Each fuzz target for [`fuzz::SMOKE_SECS`]: one step, its note giving
/// each target's execs/s and corpus size; a target that crashed is a failed
/// test.
fn fuzz_step(
    sanitizer: fuzz::Sanitizer,
    steps: &mut Vec<Step>,
    totals: &mut Counts,
    failures: &mut Vec<String>,
) {
    say(format!(
        "fuzz smoke: {} targets, {}s each, sanitizer {sanitizer:?}",
        fuzz::TARGETS.len(),
        fuzz::SMOKE_SECS
    ));
    let t = Instant::now();
    let name = format!(
        "fuzz smoke ({} targets x {}s, sanitizer {sanitizer:?})",
        fuzz::TARGETS.len(),
        fuzz::SMOKE_SECS
    );
    let outcomes = match fuzz::smoke(fuzz::SMOKE_SECS, sanitizer) {
        Ok(o) => o,
        Err(e) => {
            steps.push(Step {
                name,
                ok: false,
                secs: t.elapsed().as_secs_f64(),
                note: format!("{e:#}"),
                failed_tests: 0,
            });
            return;
        }
    };
    let crashed: Vec<&fuzz::Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
    totals.passed += (outcomes.len() - crashed.len()) as u64;
    totals.failed += crashed.len() as u64;
    failures.extend(crashed.iter().map(|o| format!("fuzz {}", o.summary())));
    steps.push(Step {
        name,
        ok: crashed.is_empty(),
        secs: t.elapsed().as_secs_f64(),
        note: (outcomes.iter().map(fuzz::Outcome::summary))
            .collect::<Vec<_>>()
            .join("; "),
        failed_tests: crashed.len() as u64,
    });
}

/// The alert rules, their unit tests and the Grafana dashboard in
/// `contrib/`: `promtool check rules` (one test), `promtool test rules`
/// (one test per case of the test file, a failed case named by promtool) and
/// the dashboard's JSON (one test: it parses, and every panel's, annotation's
/// and variable's query has an `expr`). Skipped with the reason when promtool
/// is absent (Debian's `prometheus`, which setup installs).
fn prometheus_step(
    root: &std::path::Path,
    steps: &mut Vec<Step>,
    totals: &mut Counts,
    failures: &mut Vec<String>,
    skipped: &mut Vec<String>,
) {
    const NAME: &str = "prometheus rules and dashboard";
    let rules = root.join("contrib/prometheus/governor-rules.yml");
    let rule_tests = root.join("contrib/prometheus/governor-rules.test.yml");
    let dashboard = root.join("contrib/grafana/governor.json");
    if Command::new("promtool").arg("--version").output().is_err() {
        skipped.push(format!(
            "{NAME}: promtool is not installed (Debian's `prometheus`; `cargo xtask setup` installs it)"
        ));
        return;
    }
    say(format!(
        "{NAME}: promtool check rules, promtool test rules, the dashboard's JSON"
    ));
    let t = Instant::now();
    let mut passed = 0u64;
    let mut failed: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let promtool = |args: &[&std::ffi::OsStr]| -> (bool, String) {
        match Command::new("promtool")
            .args(args)
            .current_dir(root)
            .output()
        {
            Ok(o) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                eprint!("{text}");
                (o.status.success(), text)
            }
            Err(e) => (false, format!("cannot run promtool: {e}")),
        }
    };

    let (ok, _) = promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()]);
    if ok {
        passed += 1;
    } else {
        failed.push(format!("promtool check rules {}", rules.display()));
    }

    let cases = std::fs::read_to_string(&rule_tests)
        .map(|t| rule_test_cases(&t))
        .unwrap_or(0);
    let (ok, out) = promtool(&["test".as_ref(), "rules".as_ref(), rule_tests.as_os_str()]);
    let bad = failed_rule_tests(&out);
    if ok && bad.is_empty() {
        passed += cases.max(1);
        notes.push(format!("{cases} rule test cases"));
    } else {
        // A failure promtool reports without naming a case (a file that does
        // not load) is one failed test.
        let n = bad.len().max(1) as u64;
        passed += cases.saturating_sub(n);
        notes.push(format!("{n} of {cases} rule test cases failed"));
        if bad.is_empty() {
            failed.push(format!("promtool test rules {}", rule_tests.display()));
        }
        failed.extend(bad.into_iter().map(|c| format!("rule test: {c}")));
    }

    let board = std::fs::read_to_string(&dashboard)
        .map_err(|e| format!("{}: {e}", dashboard.display()))
        .and_then(|text| {
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("{}: {e}", dashboard.display()))
        })
        .map(|v| dashboard_queries(&v));
    match board {
        Ok((exprs, problems)) if problems.is_empty() => {
            passed += 1;
            notes.push(format!("dashboard: {exprs} queries"));
        }
        Ok((_, problems)) => {
            notes.push(format!("dashboard: {}", problems.join("; ")));
            failed.push("dashboard has a query without an expr".into());
        }
        Err(e) => {
            notes.push(format!("dashboard: {e}"));
            failed.push("dashboard JSON does not parse".into());
        }
    }

    totals.passed += passed;
    totals.failed += failed.len() as u64;
    steps.push(Step {
        name: NAME.into(),
        ok: failed.is_empty(),
        secs: t.elapsed().as_secs_f64(),
        note: format!(
            "{passed} passed, {} failed ({})",
            failed.len(),
            notes.join(", ")
        ),
        failed_tests: failed.len() as u64,
    });
    failures.extend(failed);
}

/// How many test cases a `promtool test rules` file holds: its `- name:`
/// entries (only the cases under `tests:` have a name).
fn rule_test_cases(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.trim_start().starts_with("- name:"))
        .count() as u64
}

/// The cases `promtool test rules` reports as failed (`    name: <case>,`),
/// each once.
fn failed_rule_tests(output: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for l in output.lines() {
        if let Some(n) = l.trim_start().strip_prefix("name: ") {
            let n = n.trim_end().trim_end_matches(',').to_owned();
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Every PromQL query of a Grafana dashboard: each panel's targets (rows'
/// nested panels too), each Prometheus annotation and each query variable.
/// Returns how many there are and what is wrong (a panel without targets, a
/// target or annotation without an `expr`, a variable without a query).
fn dashboard_queries(board: &serde_json::Value) -> (usize, Vec<String>) {
    let mut exprs = 0;
    let mut problems = Vec::new();
    let title = |v: &serde_json::Value| {
        v.get("title")
            .or_else(|| v.get("name"))
            .and_then(|t| t.as_str())
            .unwrap_or("<untitled>")
            .to_owned()
    };
    let has_expr = |v: &serde_json::Value| {
        v.get("expr")
            .and_then(|e| e.as_str())
            .is_some_and(|e| !e.trim().is_empty())
    };
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for p in board["panels"].as_array().into_iter().flatten() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    if panels.is_empty() {
        problems.push("no panels".to_owned());
    }
    for p in panels.into_iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if targets.is_empty() {
            problems.push(format!("panel {:?} has no targets", title(p)));
        }
        for (i, t) in targets.iter().enumerate() {
            if has_expr(t) {
                exprs += 1;
            } else {
                problems.push(format!("panel {:?} target {i} has no expr", title(p)));
            }
        }
    }
    for a in board["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if a["datasource"]["type"] != "prometheus" {
            continue;
        }
        if has_expr(a) {
            exprs += 1;
        } else {
            problems.push(format!("annotation {:?} has no expr", title(a)));
        }
    }
    for v in board["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]
            .get("query")
            .or(Some(&v["query"]))
            .and_then(|q| q.as_str());
        if q.is_some_and(|q| !q.trim().is_empty()) {
            exprs += 1;
        } else {
            problems.push(format!("variable {:?} has no query", title(v)));
        }
    }
    (exprs, problems)
}

/// The .deb installed with dpkg on a Debian 12 guest with systemd as PID 1
/// (kernel 6.1), checked under the real unit (`tests/systemd/check.sh`).
fn systemd_vm_step(
    root: &std::path::Path,
    steps: &mut Vec<Step>,
    totals: &mut Counts,
    failures: &mut Vec<String>,
    skipped: &mut Vec<String>,
) {
    if !is_root() {
        skipped.push(
            "systemd VM: not root (building the Debian root filesystem needs it the first time)"
                .into(),
        );
        return;
    }
    let t = Instant::now();
    let run = crate::deb::build_after_setup(root).and_then(|deb| {
        let spec = vm::kernel::KernelSpec::parse("6.1")?;
        vm::systemd::run_systemd(&spec, &deb, &vm::qemu::Machine::default())
    });
    let r = match run {
        Ok(r) => r,
        Err(e) => {
            steps.push(Step {
                name: "systemd VM (Debian 12, kernel 6.1)".into(),
                ok: false,
                secs: t.elapsed().as_secs_f64(),
                note: format!("{e:#}"),
                failed_tests: 0,
            });
            return;
        }
    };
    vm::print_summary(std::slice::from_ref(&r));
    let name = "systemd VM (Debian 12, kernel 6.1)".to_owned();
    record_guest(
        &r,
        name,
        t.elapsed().as_secs_f64(),
        steps,
        totals,
        failures,
        skipped,
    );
}

/// Adds one guest's outcome to the totals, failures, skips and steps.
fn record_guest(
    r: &vm::KernelRun,
    name: String,
    secs: f64,
    steps: &mut Vec<Step>,
    totals: &mut Counts,
    failures: &mut Vec<String>,
    skipped: &mut Vec<String>,
) {
    let o = &r.outcome;
    totals.passed += o.passed.len() as u64;
    totals.failed += o.failed.len() as u64;
    failures.extend(o.failed.iter().map(|f| format!("{f} (vm {})", r.label)));
    skipped.extend(
        o.skipped
            .iter()
            .map(|(t, why)| format!("{t} (vm {}): {why}", r.label)),
    );
    steps.push(Step {
        name,
        ok: r.ok(),
        secs,
        note: r.summary(),
        failed_tests: o.failed.len() as u64,
    });
}

/// Crates that do I/O, which `governor-engine` must not depend on.
const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "aya",
    "aya-obj",
    "aya-log",
    "libc",
    "nix",
    "rustix",
    "socket2",
    "netlink-sys",
    "netlink-packet-core",
    "netlink-packet-sock-diag",
    "procfs",
    "procfs-core",
    "tiny_http",
    "zbus",
    "sd-notify",
];

/// The normal dependencies of `governor-engine` that are I/O crates.
fn io_dependencies(tree: &str) -> Vec<&str> {
    let mut found: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| IO_CRATES.contains(name))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// Checks that the engine depends on no I/O crate; returns how many crates
/// it depends on.
fn engine_purity(root: &std::path::Path) -> anyhow::Result<usize> {
    let out = Command::new("cargo")
        .args([
            "tree",
            "--package",
            "governor-engine",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(root)
        .output()
        .context("running cargo tree")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let io = io_dependencies(&tree);
    anyhow::ensure!(
        io.is_empty(),
        "governor-engine depends on I/O crates: {} (the engine must stay pure: move the code that needs them to governor)",
        io.join(", ")
    );
    let mut all: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    all.sort_unstable();
    all.dedup();
    Ok(all.len())
}

/// The integration tests in QEMU guests (no root needed): the 6.1 kernel, or
/// all of them; one step per kernel.
fn vm_step(
    all_kernels: bool,
    steps: &mut Vec<Step>,
    totals: &mut Counts,
    failures: &mut Vec<String>,
    skipped: &mut Vec<String>,
) {
    let labels: Vec<&str> = if all_kernels {
        vm::kernel::DEBIAN_KERNELS.iter().map(|(v, _)| *v).collect()
    } else {
        vec!["6.1"]
    };
    let t = Instant::now();
    let runs = labels
        .iter()
        .map(|l| vm::kernel::KernelSpec::parse(l))
        .collect::<anyhow::Result<Vec<_>>>()
        .and_then(|specs| vm::run_kernels(&specs, &vm::qemu::Machine::default()));
    let runs = match runs {
        Ok(runs) => runs,
        Err(e) => {
            steps.push(Step {
                name: format!("vm tests ({})", labels.join(", ")),
                ok: false,
                secs: t.elapsed().as_secs_f64(),
                note: format!("{e:#}"),
                failed_tests: 0,
            });
            return;
        }
    };
    vm::print_summary(&runs);
    for r in &runs {
        let name = format!("vm tests (kernel {})", r.label);
        record_guest(r, name, r.total_secs, steps, totals, failures, skipped);
    }
}

/// Runs a `cargo test` invocation, streaming its output and adding up its
/// `test result:` lines.
fn libtest_step(
    name: &str,
    mut cmd: Command,
    steps: &mut Vec<Step>,
    totals: &mut Counts,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    say(format!("{name}: {}", show(&cmd)));
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", show(&cmd)))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let reader = thread::spawn(move || {
        let mut counts = Counts::default();
        let mut failed = Vec::new();
        let mut skips = 0;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            // A skipped test (governor_integration::skip) ends "ok": not a pass.
            if line.starts_with("SKIPPED: ") {
                skips += 1;
            }
            if let Some(c) = parse_result_line(&line) {
                counts.passed += c.passed;
                counts.failed += c.failed;
                counts.ignored += c.ignored;
            }
            if let Some(test) = line
                .strip_prefix("test ")
                .and_then(|l| l.strip_suffix(" ... FAILED"))
            {
                failed.push(test.to_owned());
            }
        }
        counts.passed = counts.passed.saturating_sub(skips);
        counts.ignored += skips;
        (counts, failed)
    });
    let status = child.wait()?;
    let (counts, failed) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("output reader panicked"))?;
    totals.passed += counts.passed;
    totals.failed += counts.failed;
    totals.ignored += counts.ignored;
    failures.extend(failed);
    steps.push(Step {
        name: name.into(),
        ok: status.success(),
        secs: t.elapsed().as_secs_f64(),
        note: format!(
            "{} passed, {} failed, {} ignored",
            counts.passed, counts.failed, counts.ignored
        ),
        failed_tests: counts.failed,
    });
    Ok(())
}

/// Parses `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut c = Counts::default();
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        // "ok. 3 passed", "2 failed", "0 filtered out", ...
        let Some(i) = words.iter().position(|w| w.parse::<u64>().is_ok()) else {
            continue;
        };
        let (Ok(n), Some(what)) = (words[i].parse::<u64>(), words.get(i + 1)) else {
            continue;
        };
        let what = *what;
        match what {
            "passed" => c.passed = n,
            "failed" => c.failed = n,
            "ignored" => c.ignored = n,
            _ => {}
        }
    }
    Some(c)
}

fn finish(
    steps: &[Step],
    totals: Counts,
    failures: &[String],
    skipped: &[String],
    started: Instant,
) -> ExitCode {
    eprintln!();
    say(format!("summary ({:.0}s)", started.elapsed().as_secs_f64()));
    for s in steps {
        eprintln!(
            "  {:<6} {:<42} {:>6.1}s  {}",
            if s.ok { "ok" } else { "FAILED" },
            s.name,
            s.secs,
            s.note
        );
    }
    for f in failures {
        eprintln!("  failed test: {f}");
    }
    for s in skipped {
        eprintln!("  skipped: {s}");
    }
    // A failed step whose failure no test reported (fmt, clippy, a test
    // binary that did not build or crashed) counts as one failure.
    let unreported = steps
        .iter()
        .filter(|s| !s.ok && s.failed_tests == 0)
        .count() as u64;
    let failed = totals.failed + unreported;
    let skipped_n = totals.ignored + skipped.len() as u64;
    println!(
        "test: {} passed, {} failed, {} skipped",
        totals.passed, failed, skipped_n
    );
    if failed == 0 && steps.iter().all(|s| s.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_crates_in_a_dependency_tree_are_found() {
        let pure = "governor-engine v0.1.0 (/x)\nserde v1.0.0\nrand v0.10.0\n";
        assert!(io_dependencies(pure).is_empty());
        let impure =
            "governor-engine v0.1.0 (/x)\ntokio v1.0.0\nlibc v0.2.0\nlibc v0.2.0\nlibcrux v1\n";
        assert_eq!(io_dependencies(impure), ["libc", "tokio"]);
    }

    #[test]
    fn promtool_failures_are_counted_by_case() {
        let out = "Unit Testing:  t.yml\n  FAILED:\n    name: agent down fires,\n    alertname: A, time: 5m, \n    name: agent down fires,\n    alertname: A, time: 7m, \n    name: drift: no alert,\n";
        assert_eq!(
            failed_rule_tests(out),
            ["agent down fires", "drift: no alert"]
        );
        assert!(failed_rule_tests("Unit Testing:  t.yml\n  SUCCESS\n").is_empty());
        let file =
            "rule_files:\n- r.yml\ntests:\n- name: a\n  input_series:\n  - series: up\n- name: b\n";
        assert_eq!(rule_test_cases(file), 2);
    }

    #[test]
    fn a_dashboard_query_without_an_expr_is_found() {
        let good = serde_json::json!({
            "panels": [
                {"type": "row", "title": "r", "panels": [
                    {"type": "timeseries", "title": "nested", "targets": [{"expr": "up"}]}]},
                {"type": "timeseries", "title": "p", "targets": [{"expr": "up"}, {"expr": "up"}]}],
            "annotations": {"list": [
                {"name": "builtin", "datasource": {"type": "grafana"}},
                {"name": "d", "datasource": {"type": "prometheus"}, "expr": "up"}]},
            "templating": {"list": [
                {"name": "datasource", "type": "datasource"},
                {"name": "host", "type": "query", "query": {"query": "label_values(up, instance)"}}]}
        });
        assert_eq!(dashboard_queries(&good), (5, vec![]));
        let bad = serde_json::json!({
            "panels": [
                {"type": "timeseries", "title": "empty", "targets": []},
                {"type": "stat", "title": "blank", "targets": [{"expr": " "}]}],
            "annotations": {"list": [{"name": "d", "datasource": {"type": "prometheus"}}]},
            "templating": {"list": [{"name": "host", "type": "query", "query": ""}]}
        });
        let (n, problems) = dashboard_queries(&bad);
        assert_eq!(n, 0);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert_eq!(dashboard_queries(&serde_json::json!({})).1, ["no panels"]);
    }

    #[test]
    fn parses_libtest_summary() {
        let c = parse_result_line(
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        )
        .expect("a result line");
        assert_eq!((c.passed, c.failed, c.ignored), (3, 2, 1));
        assert!(parse_result_line("running 3 tests").is_none());
    }
}
