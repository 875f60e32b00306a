//! `cargo xtask vm-test`: the root integration tests inside QEMU, on Debian's
//! cloud kernels (5.10, 6.1, 6.12) or a kernel image given by path.
//!
//! 1. fetch and cache each kernel package ([`kernel`]);
//! 2. build `vm-init` and the integration tests for `x86_64-unknown-linux-musl`;
//! 3. pack them into a newc initramfs ([`initramfs`]): `/init`, `/tests/*`,
//!    the workload binary at the absolute path the tests were compiled with,
//!    and the few kernel modules the tests need (`/modules`);
//! 4. boot each kernel ([`qemu`]), read the console, and judge it: any failed
//!    test, crashed test binary, kernel panic, missing result line or time-out
//!    fails the run. A test that printed `SKIPPED: <test>: <reason>` is
//!    counted as skipped, never as passed.
//!
//! The console of every guest is kept in `target/vm/<kernel>.log`.

pub mod initramfs;
pub mod kernel;
pub mod qemu;
pub mod systemd;

use std::{
    collections::BTreeMap,
    fs,
    io::BufWriter,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;

use self::kernel::{Kernel, KernelSpec};
use crate::{
    ebpf_toolchain::cache_dir,
    util::{output, run, say, show, workspace_root},
};

/// The target the guest's binaries are built for: static, no libc needed in the guest.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Kernel modules the tests need where a kernel builds them as modules
/// (the guest has no modprobe to load them on demand): sock_diag's TCP
/// listener dump, veth pairs, tc's clsact qdisc and bpf classifier. Their
/// dependencies come along.
const MODULES: &[&str] = &["inet_diag", "tcp_diag", "veth", "sch_ingress", "cls_bpf"];

/// Options of `cargo xtask vm-test`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Kernel to boot: 5.10, 6.1, 6.12 (Debian's cloud kernels) or a path to
    /// a kernel image. Repeat for several. Default: 6.1.
    #[arg(long = "kernel", value_name = "5.10|6.1|6.12|PATH")]
    pub kernels: Vec<String>,
    /// Use KVM instead of TCG emulation (nested KVM hangs on some hosts).
    #[arg(long)]
    pub kvm: bool,
    /// Time-out per kernel, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Extra kernel command-line arguments (`--append loglevel=7` shows the
    /// stack dumps that `quiet` hides).
    #[arg(long, default_value = "")]
    pub append: String,
    /// Instead of the integration tests: boot a Debian 12 root filesystem
    /// with systemd as PID 1, install the governor .deb with dpkg and run
    /// `tests/systemd/check.sh` as a systemd unit (xtask/src/vm/systemd.rs).
    #[arg(long)]
    pub systemd: bool,
    /// The .deb to install with `--systemd` (default: build it, as `cargo xtask deb`).
    #[arg(long, value_name = "PATH", requires = "systemd")]
    pub deb: Option<PathBuf>,
}

/// The verdict on one kernel.
#[derive(Debug)]
pub struct KernelRun {
    /// Short name (`6.1`).
    pub label: String,
    /// The judged console.
    pub outcome: Outcome,
    /// Why the run failed; empty if it passed.
    pub problems: Vec<String>,
    /// Seconds from QEMU's start to init's first line.
    pub boot_secs: Option<f64>,
    /// Seconds from QEMU's start to its end.
    pub total_secs: f64,
    /// The console log.
    pub log: PathBuf,
    /// What kernel it was.
    pub description: String,
}

impl KernelRun {
    /// True if every test passed or was skipped, and the guest ended cleanly.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The one summary line of this kernel.
    pub fn summary(&self) -> String {
        let o = &self.outcome;
        let boot = self
            .boot_secs
            .map_or_else(|| "init never started".into(), |b| format!("boot {b:.1}s"));
        let mut s = format!(
            "vm {}: {}, {} passed, {} failed, {} skipped; {boot}, total {:.1}s ({})",
            self.label,
            if self.ok() { "ok" } else { "FAILED" },
            o.passed.len(),
            o.failed.len(),
            o.skipped.len(),
            self.total_secs,
            self.description,
        );
        if !self.ok() {
            s.push_str(&format!("; log {}", self.log.display()));
        }
        s
    }
}

/// `cargo xtask vm-test`.
pub fn vm_test(args: &VmArgs) -> anyhow::Result<ExitCode> {
    if args.systemd {
        return systemd::vm_test(args);
    }
    let specs = if args.kernels.is_empty() {
        vec![KernelSpec::parse("6.1")?]
    } else {
        args.kernels
            .iter()
            .map(|k| KernelSpec::parse(k))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let machine = qemu::Machine {
        kvm: args.kvm,
        timeout: Duration::from_secs(args.timeout),
        append: args.append.clone(),
        ..qemu::Machine::default()
    };
    let runs = run_kernels(&specs, &machine)?;
    print_summary(&runs);
    Ok(if runs.iter().all(KernelRun::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints the summary: one line per kernel, then failures and skips.
pub fn print_summary(runs: &[KernelRun]) {
    eprintln!();
    for r in runs {
        println!("{}", r.summary());
        for p in &r.problems {
            eprintln!("  vm {}: {p}", r.label);
        }
        for (test, reason) in &r.outcome.skipped {
            eprintln!("  vm {}: skipped {test}: {reason}", r.label);
        }
    }
}

/// Fetches, builds, packs once, and boots every kernel in turn.
pub fn run_kernels(
    specs: &[KernelSpec],
    machine: &qemu::Machine,
) -> anyhow::Result<Vec<KernelRun>> {
    let cache = cache_dir();
    let kernels = specs
        .iter()
        .map(|s| kernel::fetch(s, &cache))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let root = workspace_root();
    let artifacts = build(&root)?;
    let out_dir = root.join("target").join("vm");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stage = stage_binaries(&artifacts, &out_dir)?;
    let mut runs = Vec::new();
    for k in &kernels {
        let initrd = out_dir.join(format!("initramfs-{}.cpio", k.label));
        pack(&stage, k, &initrd)?;
        runs.push(boot_and_judge(k, &initrd, machine, &out_dir)?);
    }
    Ok(runs)
}

/// What goes into the guest, built for musl.
struct Artifacts {
    init: PathBuf,
    /// (name in `/tests`, executable).
    tests: Vec<(String, PathBuf)>,
    /// The workload binaries (`govtest-*`), at the paths the tests were
    /// compiled to run them from.
    load: Vec<PathBuf>,
    /// The agent binary, at `/bin/governor` in the guest (`GOVERNOR_BIN`).
    governor: PathBuf,
}

fn build(root: &Path) -> anyhow::Result<Artifacts> {
    say(format!("vm: building vm-init for {MUSL}"));
    run(Command::new("cargo")
        .args([
            "build",
            "--package",
            "vm-init",
            "--release",
            "--target",
            MUSL,
        ])
        .current_dir(root))?;
    let init = crate::util::target_dir()
        .join(MUSL)
        .join("release")
        .join("vm-init");

    say(format!("vm: building the integration tests for {MUSL}"));
    let mut cmd = Command::new("cargo");
    cmd.args([
        "test",
        "--package",
        "governor-integration",
        "--target",
        MUSL,
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(root)
    .stdout(Stdio::piped());
    let out = cmd
        .output()
        .with_context(|| format!("starting `{}`", show(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", show(&cmd), out.status);
    }
    let mut tests = Vec::new();
    let mut load = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let is_test = msg["profile"]["test"].as_bool().unwrap_or(false);
        let kinds: Vec<&str> = msg["target"]["kind"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
            .unwrap_or_default();
        if is_test && (kinds.contains(&"test") || kinds.contains(&"lib")) {
            tests.push((name.to_owned(), PathBuf::from(exe)));
        } else if !is_test && name.starts_with("govtest-") {
            load.push(PathBuf::from(exe));
        }
    }
    tests.sort();
    if tests.is_empty() {
        bail!("`{}` listed no test executables", show(&cmd));
    }
    if load.is_empty() {
        bail!("the build did not list the govtest-* workload binaries");
    }
    say(format!("vm: building governor for {MUSL}"));
    run(Command::new("cargo")
        .args(["build", "--package", "governor", "--target", MUSL])
        .current_dir(root))?;
    let governor = crate::util::target_dir()
        .join(MUSL)
        .join("debug")
        .join("governor");
    Ok(Artifacts {
        init,
        tests,
        load,
        governor,
    })
}

/// Binaries as packed: stripped of debug info when `strip` is there, which
/// makes the initramfs several times smaller and the boot faster.
struct Stage {
    init: PathBuf,
    tests: Vec<(String, PathBuf)>,
    /// (path in the guest, staged file).
    load: Vec<(String, PathBuf)>,
}

fn stage_binaries(a: &Artifacts, out_dir: &Path) -> anyhow::Result<Stage> {
    let dir = out_dir.join("stage");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let strip_ok = output(Command::new("strip").arg("--version")).is_some();
    if !strip_ok {
        eprintln!("vm: `strip` not found (binutils): packing binaries with their debug info");
    }
    let place = |src: &Path, name: &str| -> anyhow::Result<PathBuf> {
        let dst = dir.join(name);
        if strip_ok {
            run(Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&dst)
                .arg(src))?;
        } else {
            fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
        Ok(dst)
    };
    let tests = a
        .tests
        .iter()
        .map(|(n, p)| Ok((n.clone(), place(p, n)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Stage {
        init: place(&a.init, "vm-init")?,
        tests,
        load: a
            .load
            .iter()
            .map(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok((p.to_string_lossy().into_owned(), place(p, &name)?))
            })
            .chain(std::iter::once(Ok((
                "/bin/governor".to_owned(),
                place(&a.governor, "governor")?,
            ))))
            .collect::<anyhow::Result<Vec<_>>>()?,
    })
}

/// Writes the initramfs for kernel `k`.
fn pack(stage: &Stage, k: &Kernel, initrd: &Path) -> anyhow::Result<()> {
    let modules = match &k.modules {
        Some(dir) => modules_with_deps(dir, MODULES)?,
        None => Vec::new(),
    };
    let absent: Vec<&str> = MODULES
        .iter()
        .filter(|m| !modules.iter().any(|(n, _)| n == *m))
        .copied()
        .collect();
    if !absent.is_empty() {
        eprintln!(
            "vm {}: modules not found (built in, or not built): {}",
            k.label,
            absent.join(", ")
        );
    }
    say(format!(
        "vm {}: packing {} (init, {} test binaries, governor and workloads, {} modules)",
        k.label,
        initrd.display(),
        stage.tests.len(),
        modules.len()
    ));
    let file =
        fs::File::create(initrd).with_context(|| format!("creating {}", initrd.display()))?;
    let mut a = initramfs::Newc::new(BufWriter::new(file));
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    a.file("/init", 0o755, &read(&stage.init)?)?;
    a.symlink("/sbin/ip", "/init")?;
    a.char_dev("/dev/console", 0o600, 5, 1)?;
    for d in ["/proc", "/sys", "/tmp", "/run", "/bin"] {
        a.dir(d)?;
    }
    for (name, path) in &stage.tests {
        a.file(&format!("/tests/{name}"), 0o755, &read(path)?)?;
    }
    for (guest_path, staged) in &stage.load {
        a.file(guest_path, 0o755, &read(staged)?)?;
    }
    for (i, (name, bytes)) in modules.iter().enumerate() {
        a.file(&format!("/modules/{i:02}-{name}.ko"), 0o644, bytes)?;
    }
    a.finish()
        .with_context(|| format!("writing {}", initrd.display()))?;
    Ok(())
}

/// The `wanted` modules that the kernel builds as modules, each after its
/// dependencies (from the module's own `depends=` modinfo: Debian's packages
/// ship no `modules.dep`, depmod makes it at install). A module the kernel
/// builds in is simply not found, and not needed.
fn modules_with_deps(dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
                && let Some((base, _)) = name.split_once(".ko")
            {
                files.insert(base.replace('-', "_"), p.clone());
            }
        }
    }
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    fn add(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        order: &mut Vec<(String, Vec<u8>)>,
        depth: u32,
    ) -> anyhow::Result<()> {
        if order.iter().any(|(n, _)| n == name) || depth > 16 {
            return Ok(());
        }
        let Some(path) = files.get(name) else {
            return Ok(());
        };
        let bytes = module_bytes(path)?;
        for dep in modinfo_depends(&bytes) {
            add(&dep, files, order, depth + 1)?;
        }
        order.push((name.to_owned(), bytes));
        Ok(())
    }
    for w in wanted {
        add(w, &files, &mut order, 0)?;
    }
    Ok(order)
}

/// The `depends=a,b` entry of a module's `.modinfo` strings.
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    ko.windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| {
            let rest = &ko[at + KEY.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// A module file's contents, decompressed on the host so that the guest
/// kernel needs no in-kernel decompression.
fn module_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(tool) => {
            let mut cmd = Command::new(tool);
            cmd.args(["-d", "-c"]).arg(path);
            let out = cmd
                .output()
                .with_context(|| format!("starting `{}`", show(&cmd)))?;
            if !out.status.success() {
                bail!("`{}` failed ({})", show(&cmd), out.status);
            }
            Ok(out.stdout)
        }
    }
}

fn boot_and_judge(
    k: &Kernel,
    initrd: &Path,
    machine: &qemu::Machine,
    out_dir: &Path,
) -> anyhow::Result<KernelRun> {
    let log = out_dir.join(format!("{}.log", k.label));
    say(format!(
        "vm {}: booting {} under {} (time-out {}s)",
        k.label,
        k.description,
        if machine.kvm { "KVM" } else { "TCG" },
        machine.timeout.as_secs()
    ));
    let label = k.label.clone();
    let mut console = qemu::boot(machine, &k.image, initrd, &log, |t, line| {
        eprintln!("  [{label} {t:6.1}s] {line}");
    })?;
    let mut retried = None;
    if console.hung {
        // Seen rarely under TCG: both vCPUs spin and the console goes
        // silent mid-test, or the kernel reports a soft lockup. Boot once
        // more; a second hang fails the run, and the summary says a retry
        // happened either way.
        let last = console
            .lines
            .last()
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        let note = format!(
            "guest hung (silent for {}s, or a kernel lockup) after {last:?}; booted once more (first console kept in {})",
            machine.silence.as_secs(),
            out_dir.join(format!("{}.hung.log", k.label)).display()
        );
        eprintln!("vm {}: {note}", k.label);
        let _ = fs::copy(&log, out_dir.join(format!("{}.hung.log", k.label)));
        console = qemu::boot(machine, &k.image, initrd, &log, |t, line| {
            eprintln!("  [{label} {t:6.1}s] {line}");
        })?;
        retried = Some(note);
    }
    let lines: Vec<&str> = console.lines.iter().map(|(_, l)| l.as_str()).collect();
    let outcome = judge(&lines);
    let boot_secs = console
        .lines
        .iter()
        // The firmware's escape codes may precede it on the same line.
        .find(|(_, l)| l.contains("GOVTEST-INIT start"))
        .map(|(t, _)| *t);
    let mut problems = outcome.problems();
    if console.hung {
        problems.push(format!(
            "the guest hung (nothing printed for {}s, or a kernel lockup; QEMU killed)",
            machine.silence.as_secs()
        ));
    }
    if let Some(note) = &retried {
        eprintln!("vm {}: retried: {note}", k.label);
    }
    if console.timed_out {
        problems.push(format!(
            "timed out after {}s (QEMU killed)",
            machine.timeout.as_secs()
        ));
    }
    if !console.timed_out && !console.hung && outcome.result.is_none() {
        problems.push(format!(
            "QEMU ended ({}) before the result line",
            console.exit
        ));
    }
    Ok(KernelRun {
        label: k.label.clone(),
        outcome,
        problems,
        boot_secs,
        total_secs: console.secs,
        log,
        description: k.description.clone(),
    })
}

/// What the console says about the tests.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `binary::test` that passed (and did not skip).
    pub passed: Vec<String>,
    /// `binary::test` that failed.
    pub failed: Vec<String>,
    /// `binary::test` skipped or ignored, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Test binaries that exited non-zero without a failed test (crash, panic outside a test).
    pub crashed: Vec<String>,
    /// `Kernel panic` or init's own panic.
    pub panic: Option<String>,
    /// The init's result line: (binaries, failed binaries).
    pub result: Option<(u32, u32)>,
    /// The test that was running when the console ended, if one was.
    pub unfinished: Option<String>,
}

impl Outcome {
    /// Reasons to fail the run, from the console alone.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(panic) = &self.panic {
            p.push(format!("panic: {panic}"));
        }
        if let Some(t) = &self.unfinished {
            p.push(format!(
                "unfinished test (the console ended while it ran): {t}"
            ));
        }
        for t in &self.failed {
            p.push(format!("failed test: {t}"));
        }
        for c in &self.crashed {
            p.push(format!("test binary failed without a failed test: {c}"));
        }
        if let Some((_, failed)) = self.result
            && failed > 0
            && self.failed.is_empty()
            && self.crashed.is_empty()
        {
            p.push(format!("init reports {failed} failed test binaries"));
        }
        if self.result.is_some() && self.passed.is_empty() && self.skipped.is_empty() {
            p.push("no test ran".into());
        }
        p
    }
}

/// Reads libtest's lines, the skip lines and init's markers from the console.
pub fn judge(lines: &[&str]) -> Outcome {
    let mut o = Outcome::default();
    let mut binary = String::new();
    // A `test NAME ... ` line whose verdict comes on a later line (a skip
    // line written straight to stdout splits it).
    let mut pending: Option<String> = None;
    let mut skipped: BTreeMap<String, String> = BTreeMap::new();
    let mut verdicts: Vec<(String, String)> = Vec::new();
    let mut failed_in_binary = 0;
    for raw in lines {
        let line = raw.trim_end();
        if line.contains("Kernel panic") && o.panic.is_none() {
            o.panic = Some(line.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("GOVTEST-INIT panic ") {
            o.panic = Some(format!("init: {rest}"));
        }
        if let Some(name) = line.strip_prefix("GOVTEST-BEGIN ") {
            binary = name.trim().to_owned();
            failed_in_binary = 0;
            pending = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix("GOVTEST-END ") {
            let (name, how) = rest.split_once(' ').unwrap_or((rest, ""));
            if how.trim() != "0" && failed_in_binary == 0 {
                let during = pending
                    .as_deref()
                    .map(|t| format!(", during {t}"))
                    .unwrap_or_default();
                o.crashed
                    .push(format!("{name} (exit {}{during})", how.trim()));
            }
            pending = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix("GOVTEST-RESULT ") {
            let num = |key: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
            };
            if let (Some(b), Some(f)) = (num("binaries="), num("failed=")) {
                o.result = Some((b, f));
            }
            continue;
        }
        if let Some(at) = line.find("SKIPPED: ") {
            let rest = &line[at + "SKIPPED: ".len()..];
            let (test, reason) = rest.split_once(": ").unwrap_or((rest, "no reason given"));
            skipped.insert(
                format!("{binary}::{}", test.trim()),
                reason.trim().to_owned(),
            );
        }
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, verdict)) = rest.split_once(" ... ")
        {
            let verdict = verdict.trim();
            let name = format!("{binary}::{}", name.trim());
            match first_verdict(verdict) {
                Some(v) => {
                    if v == "FAILED" {
                        failed_in_binary += 1;
                    }
                    verdicts.push((name, verdict.to_owned()));
                }
                None => pending = Some(name),
            }
            continue;
        }
        if let Some(name) = &pending
            && let Some(v) = first_verdict(line.trim())
        {
            if v == "FAILED" {
                failed_in_binary += 1;
            }
            verdicts.push((name.clone(), line.trim().to_owned()));
            pending = None;
        }
    }
    for (name, verdict) in verdicts {
        match first_verdict(&verdict) {
            Some("FAILED") => o.failed.push(name),
            Some("ignored") => {
                let reason = verdict
                    .split_once(", ")
                    .map_or("ignored", |(_, r)| r)
                    .to_owned();
                o.skipped.push((name, reason));
            }
            _ => match skipped.remove(&name) {
                Some(reason) => o.skipped.push((name, reason)),
                None => o.passed.push(name),
            },
        }
    }
    // A skip line of a test that never reported a verdict still is a skip.
    o.skipped.extend(skipped);
    o.unfinished = pending;
    o
}

/// `ok`, `FAILED` or `ignored` at the start of a verdict (`ignored, reason`).
fn first_verdict(s: &str) -> Option<&'static str> {
    let word = s.split([',', ' ']).next()?;
    ["ok", "FAILED", "ignored"].into_iter().find(|v| *v == word)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &[&str] = &[
        "GOVTEST-INIT start",
        "GOVTEST-BEGIN sensors",
        "running 3 tests",
        "test a_full_queue ... ok",
        "test runq ... ",
        "SKIPPED: runq: this kernel has no sched_wakeup tracepoint",
        "ok",
        "test slow ... ignored, needs a disk",
        "test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out",
        "GOVTEST-END sensors 0",
        "GOVTEST-RESULT binaries=1 failed=0",
    ];

    #[test]
    fn skips_are_not_passes() {
        let o = judge(CLEAN);
        assert_eq!(o.passed, ["sensors::a_full_queue"]);
        assert_eq!(
            o.skipped,
            [
                ("sensors::slow".to_owned(), "needs a disk".to_owned()),
                (
                    "sensors::runq".to_owned(),
                    "this kernel has no sched_wakeup tracepoint".to_owned()
                ),
            ]
        );
        assert!(o.problems().is_empty(), "{:?}", o.problems());
    }

    #[test]
    fn modinfo_dependencies() {
        let ko = b"\x7fELF...\0license=GPL\0depends=inet_diag,foo-bar\0intree=Y\0";
        assert_eq!(modinfo_depends(ko), ["inet_diag", "foo_bar"]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn failures_crashes_and_panics_fail() {
        let o = judge(&[
            "GOVTEST-BEGIN a",
            "test x ... FAILED",
            "GOVTEST-END a 101",
            "GOVTEST-BEGIN b",
            "test y ... ok",
            "GOVTEST-END b signal 11",
            "GOVTEST-RESULT binaries=2 failed=2",
        ]);
        assert_eq!(o.failed, ["a::x"]);
        assert_eq!(o.crashed, ["b (exit signal 11)"]);
        assert_eq!(o.problems().len(), 2);

        let o = judge(&["[ 1.0] Kernel panic - not syncing: Attempted to kill init!"]);
        assert!(o.panic.is_some() && o.result.is_none());
        assert!(!o.problems().is_empty());

        let o = judge(&["GOVTEST-BEGIN s", "test hangs ... [ 30.9] rcu: INFO: stall"]);
        assert_eq!(o.unfinished.as_deref(), Some("s::hangs"));
        assert!(!o.problems().is_empty());

        let o = judge(&["GOVTEST-RESULT binaries=0 failed=0"]);
        assert_eq!(o.problems(), ["no test ran"]);
    }
}
