//! `cargo xtask bench`: performance figures, always beside their peers in
//! the same invocation, alternating, medians, reported as ratios.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitCode, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

mod env;
mod footprint;
mod herd;
mod noisy;
mod overload;
mod plot;
mod probes;
mod reaction;
mod replay;
mod report;
mod storm;

use crate::{
    setup,
    util::{is_root, run as run_cmd, say, workspace_root},
};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark [default: all].
    #[arg(value_enum)]
    which: Option<Which>,
    /// Rounds; each runs every variant once, in a rotating order.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Messages per `perf bench sched pipe` run (probes).
    #[arg(long, default_value_t = 300_000)]
    loops: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Overhead of governor's probes on a context-switch-heavy workload,
    /// against bpftrace's runqlat.bt, BCC's runqlat and nothing; with each
    /// tracer's ns per program run from the kernel's bpf_stats.
    Probes,
    /// Cost per packet of governor's SYN admission, against an nftables
    /// `limit rate` rule: SYNs refused per second on one core across a veth
    /// pair between two namespaces.
    Enforce,
    /// Reaction time of the real agent: signal past high for `for` → the
    /// first connection refused, the CPU quota written (50 trips).
    Reaction,
    /// Noisy neighbour: a phased latency-sensitive worker beside CPU hogs,
    /// under nothing, a static quota, static weights and governor.
    Noisy,
    /// Overload: a fixed-capacity request/response server offered 3× and
    /// 10× its capacity from a cold start, under nothing, an nftables rate
    /// limit, governor's loop and governor's loop with its SYN-time guard;
    /// then 3× at half the capacity with the configs unchanged, and 0.8×
    /// with Poisson arrivals.
    Overload,
    /// Thundering herd: 200 clients held off by a reject, then released at
    /// once or in jittered throttle steps; and a reconnect storm of 500
    /// clients at a server of fixed capacity, under nothing, nftables and
    /// the guard.
    Herd,
    /// The agent's RSS and CPU with a 100 ms tick, 1,000 cgroups, 100 ports.
    Footprint,
    /// `governor replay` of a synthetic day of 10 policies, beside `gzip -dc`
    /// of the same recording.
    Replay,
}

/// Runs the chosen benchmarks.
pub fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs: run them as root");
    }
    if args.rounds < 1 {
        bail!("--rounds must be at least 1");
    }
    setup::setup()?;
    let root = workspace_root();
    say("building governor and the test workloads (release)");
    run_cmd(
        Command::new("cargo")
            .args(["build", "--release", "--package", "governor"])
            .args(["--package", "governor-integration", "--bins"])
            .current_dir(&root),
    )?;
    match args.which {
        Some(Which::Probes) => probes::run(args)?,
        Some(Which::Enforce) => enforce(args)?,
        Some(Which::Reaction) => reaction::run(args)?,
        Some(Which::Noisy) => noisy::run(args)?,
        Some(Which::Overload) => overload::run(args)?,
        Some(Which::Herd) => {
            herd::run(args)?;
            storm::run(args)?;
        }
        Some(Which::Footprint) => footprint::run(args)?,
        Some(Which::Replay) => replay::run(args)?,
        None => {
            let started = Instant::now();
            probes::run(args)?;
            enforce(args)?;
            reaction::run(args)?;
            noisy::run(args)?;
            overload::run(args)?;
            herd::run(args)?;
            storm::run(args)?;
            footprint::run(args)?;
            replay::run(args)?;
            let md = std::fs::read_to_string(report::dir()?.join("results.md"))?;
            println!("\n{md}");
            say(format!(
                "all benchmarks done in {:.0} s; results in target/bench/results.json, results.md and *.svg",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A background tracer, ended by pid with SIGINT when dropped.
struct Tracer(Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signalling a child we started, by its pid.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits until one of its output lines contains `ready`.
fn start_tracer(
    mut cmd: Command,
    ready: &'static str,
    from_stderr: bool,
) -> anyhow::Result<Tracer> {
    cmd.stdin(Stdio::null());
    if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pipe: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let tracer = Tracer(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        // Keep draining so the tracer never blocks on a full pipe.
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if !sent && line.contains(ready) {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("{cmd:?} did not say {ready:?} within 30 s"))?;
    Ok(tracer)
}

/// One `perf bench sched pipe` on CPU 0: microseconds per message.
fn sched_pipe(loops: u64) -> anyhow::Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "0", "perf", "bench", "sched", "pipe", "-l"])
        .arg(loops.to_string())
        .output()
        .context("running perf bench sched pipe (linux-perf)")?;
    if !out.status.success() {
        bail!(
            "perf bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix("usecs/op")
                .map(|v| v.trim().parse::<f64>())
        })
        .context("no usecs/op in perf's output")?
        .context("usecs/op is not a number")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Two namespaces joined by a veth pair, removed when dropped.
struct VethPair {
    a: String,
    b: String,
}

const ADDR_A: &str = "10.77.0.1";
const ADDR_B: &str = "10.77.0.2";

impl VethPair {
    fn new() -> anyhow::Result<Self> {
        let tag = std::process::id();
        let pair = Self {
            a: format!("govbench-{tag}-a"),
            b: format!("govbench-{tag}-b"),
        };
        let ip = |args: &[&str]| run_cmd(Command::new("ip").args(args));
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        ip(&[
            "link", "add", "gbva", "netns", &pair.a, "type", "veth", "peer", "name", "gbvb",
            "netns", &pair.b,
        ])?;
        ip(&[
            "-n",
            &pair.a,
            "addr",
            "add",
            &format!("{ADDR_A}/24"),
            "dev",
            "gbva",
        ])?;
        ip(&[
            "-n",
            &pair.b,
            "addr",
            "add",
            &format!("{ADDR_B}/24"),
            "dev",
            "gbvb",
        ])?;
        for (ns, dev) in [(&pair.a, "gbva"), (&pair.b, "gbvb")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Stack,
    Nftables,
    GovernorDrop,
    GovernorReset,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::Stack => "no rule (the stack answers RST)",
            Filter::Nftables => "nftables limit rate over 200/s drop",
            Filter::GovernorDrop => "governor throttle 200/s, drop",
            Filter::GovernorReset => "governor throttle 200/s, reset",
        }
    }
}

fn enforce(args: &BenchArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let load = crate::util::target_dir().join("release/govtest-load");
    const PORT: &str = "8080";
    let pair = VethPair::new()?;
    say(format!(
        "bench enforce: SYN flood {ADDR_A} → {ADDR_B}:{PORT} over veth, sender on CPU 0, 2 s per run, {} rounds, rotating order",
        args.rounds
    ));
    let filters = [
        Filter::Stack,
        Filter::Nftables,
        Filter::GovernorDrop,
        Filter::GovernorReset,
    ];
    let mut results: Vec<(Filter, Vec<f64>)> = filters.iter().map(|f| (*f, Vec::new())).collect();
    for round in 0..args.rounds {
        for k in 0..filters.len() {
            let f = filters[(round + k) % filters.len()];
            let _guard: Option<Tracer> = match f {
                Filter::Stack => None,
                Filter::Nftables => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", &pair.b, "nft", "-f", "-"])
                        .stdin(Stdio::piped());
                    let mut child = c.spawn().context("nft (package nftables)")?;
                    if let Some(mut stdin) = child.stdin.take() {
                        use std::io::Write as _;
                        writeln!(
                            stdin,
                            "table inet govbench {{\n chain input {{\n  type filter hook input priority 0;\n  tcp dport {PORT} tcp flags syn limit rate over 200/second drop\n }}\n}}"
                        )?;
                    }
                    if !child.wait()?.success() {
                        bail!("nft -f failed");
                    }
                    None
                }
                Filter::GovernorDrop | Filter::GovernorReset => {
                    let mode = if f == Filter::GovernorDrop {
                        "drop"
                    } else {
                        "reset"
                    };
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", &pair.b]).arg(&load).args([
                        "enforce",
                        "--port",
                        PORT,
                        "--rate",
                        "200",
                        "--mode",
                        mode,
                        "--seconds",
                        "30",
                    ]);
                    Some(start_tracer(c, "ready", false)?)
                }
            };
            let out = Command::new("ip")
                .args(["netns", "exec", &pair.a, "taskset", "-c", "0"])
                .arg(&load)
                .args([
                    "synflood",
                    "--src",
                    ADDR_A,
                    "--dst",
                    ADDR_B,
                    "--port",
                    PORT,
                    "--seconds",
                    "2",
                ])
                .output()
                .context("running the SYN flood")?;
            if f == Filter::Nftables {
                let _ = Command::new("ip")
                    .args([
                        "netns", "exec", &pair.b, "nft", "delete", "table", "inet", "govbench",
                    ])
                    .status();
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |k: &str| {
                text.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            let (Some(sent), Some(ms)) = (field("sent="), field("ms=")) else {
                bail!(
                    "the SYN flood printed no count: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let pps = sent / (ms / 1000.0);
            eprintln!(
                "  round {}  {:<40} {:>10.0} SYN/s",
                round + 1,
                f.name(),
                pps
            );
            if let Some((_, r)) = results.iter_mut().find(|(x, _)| *x == f) {
                r.push(pps);
            }
        }
    }
    let medians: Vec<(Filter, f64)> = results.iter_mut().map(|(f, r)| (*f, median(r))).collect();
    let nft = medians
        .iter()
        .find(|(f, _)| *f == Filter::Nftables)
        .map(|(_, m)| *m)
        .context("no nftables runs")?;
    println!();
    let mut sec = report::Section::new(
        "enforce",
        "Admission cost: SYN flood over veth, one core",
        &format!("cargo xtask bench enforce --rounds {}", args.rounds),
    );
    sec.md("| SYN flood over veth, one core | median SYN/s handled | ratio to nftables |");
    sec.md("|---|---|---|");
    let mut json = serde_json::Map::new();
    for (f, m) in &medians {
        sec.md(&format!("| {} | {m:.0} | {:.3} |", f.name(), m / nft));
        sec.metric(&format!("{}: median_syn_per_s", f.name()), *m);
        sec.metric(&format!("{}: ratio_to_nftables", f.name()), m / nft);
        json.insert(
            f.name().to_owned(),
            serde_json::json!({ "median_syn_per_s": m, "ratio_to_nftables": m / nft }),
        );
    }
    let drop = medians
        .iter()
        .find(|(f, _)| *f == Filter::GovernorDrop)
        .map(|(_, m)| *m / nft)
        .unwrap_or(f64::NAN);
    println!();
    println!(
        "governor (drop) handles {drop:.2}× the SYNs per second of nftables on one core. Target ≥ 1.0: {}",
        if drop >= 1.0 { "met" } else { "NOT met" }
    );
    sec.md("");
    sec.target(
        "governor (drop) ≥ 1.0× nftables",
        drop >= 1.0,
        &format!("{drop:.2}×"),
    );
    sec.write()?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("enforce.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "benchmark": "enforce",
            "workload": "raw SYN flood across a veth pair, sender pinned to CPU 0, 2 s per run",
            "rounds": args.rounds,
            "variants": json,
        }))?,
    )?;
    Ok(())
}
