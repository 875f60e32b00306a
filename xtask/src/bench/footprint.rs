//! Footprint: the agent's resident memory and CPU with a 100 ms tick,
//! 1,000 cgroups and 100 listening ports, each watched by a (dry-run)
//! policy, while one process visits the cgroups in turn (so each has
//! scheduler events every half second) and the ports listen in a namespace.
//! Each round runs the agent twice, recording (`[agent] record = true`, the
//! default) and not, in alternating order: the difference is the
//! recording's CPU cost, and the segments' size per tick its footprint on
//! disk.

use std::{fs, path::PathBuf, thread, time::Duration};

use anyhow::Context as _;

use super::{
    BenchArgs,
    env::{Agent, CpuCgroup, NetNs, Place, Workloads, median, metric, scrape},
    report::Section,
};

const CGROUPS: usize = 1000;
const PORTS: u16 = 100;
const BASE_PORT: u16 = 9000;
const MEASURE_S: u64 = 20;

/// `count` empty cgroup2 children `c<i>` of `parent`, removed when dropped.
struct Leaves(Vec<PathBuf>);

impl Drop for Leaves {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// CPU time (ns) of `pid`'s live threads, from their schedstat: finer
/// than the clock ticks of `stat` (10 ms each, 0.05% of a core over 20 s),
/// for the recording's difference.
fn thread_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// What one run of the agent measured.
struct Measured {
    /// % of one core, from utime + stime.
    cpu: f64,
    /// % of one core, from the threads' schedstat.
    cpu_fine: f64,
    rss: f64,
    hwm: f64,
    /// Bytes of the segments at the end (0 without recording).
    bytes: u64,
    /// Ticks of the agent's run.
    ticks: f64,
}

/// utime + stime (clock ticks) and VmRSS, VmHWM (KiB) of `pid`.
fn usage(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((ticks, kib("VmRSS:"), kib("VmHWM:")))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut sec = Section::new(
        "footprint",
        "5. Footprint: 100 ms tick, 1,000 cgroups, 100 listening ports",
        &format!(
            "cargo xtask bench footprint --rounds {}",
            args.rounds.min(3)
        ),
    );
    let rounds = args.rounds.min(3);
    crate::util::say(format!(
        "bench footprint: {CGROUPS} cgroups and {PORTS} ports, each with a dry-run policy; {MEASURE_S} s per run after 5 s warm-up; {rounds} rounds of two runs (recording on and off, alternating)"
    ));
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so that a drift of the host's load
        // does not side with one.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for record in order {
            let m = one_run(record)?;
            eprintln!(
                "  round {} record={record:<5}  agent CPU {:.3}% of one core (threads {:.3}%), RSS {:.1} MiB (peak {:.1} MiB), {} bytes recorded in {:.0} ticks",
                round + 1,
                m.cpu,
                m.cpu_fine,
                m.rss,
                m.hwm,
                m.bytes,
                m.ticks
            );
            if record { &mut on } else { &mut off }.push(m);
        }
    }
    let med =
        |v: &[Measured], f: fn(&Measured) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    // The figure the target is judged by: as the agent runs by default
    // (recording).
    let (cpu, rss, hwm) = (
        med(&on, |m| m.cpu),
        med(&on, |m| m.rss),
        med(&on, |m| m.hwm),
    );
    let (fine_on, fine_off) = (med(&on, |m| m.cpu_fine), med(&off, |m| m.cpu_fine));
    let cpu_off = med(&off, |m| m.cpu);
    let diff = fine_on - fine_off;
    // Paired by round: each round's on minus its off.
    let paired = median(
        &on.iter()
            .zip(&off)
            .map(|(a, b)| a.cpu_fine - b.cpu_fine)
            .collect::<Vec<_>>(),
    );
    let targets = CGROUPS + usize::from(PORTS);
    let per_tick = med(&on, |m| m.bytes as f64 / m.ticks.max(1.0));
    let per_target = per_tick / targets as f64;
    let per_day_mib = per_tick * 864_000.0 / f64::from(1u32 << 20);
    sec.md(&format!(
        "The real agent, tick 100 ms, dry-run, with {CGROUPS} test cgroups each watched by a `runq_p99` policy (acting on its neighbour) and {PORTS} listening ports in a test namespace each watched by an `accept_queue_fill` policy; one process visits the cgroups in turn (two short sleeps in each) so every cgroup has scheduler events. CPU = utime + stime over {MEASURE_S} s after 5 s of warm-up; RSS = VmRSS at the end, peak = VmHWM. Median of {rounds} runs, recording (the default).\n"
    ));
    sec.md("| agent CPU, % of one core | RSS MiB | peak RSS MiB |");
    sec.md("|---|---|---|");
    sec.md(&format!("| {cpu:.2} | {rss:.1} | {hwm:.1} |"));
    sec.md("");
    sec.md(&format!(
        "Recording: each round runs the agent with `[agent] record = true` and `record = false` in alternating order, same workload. CPU here is the sum of the agent's threads' run time (schedstat, ns) over the {MEASURE_S} s; bytes per tick = the segments' size after the agent stopped / its ticks ({targets} watched targets).\n"
    ));
    sec.md("| | record = true | record = false | difference |");
    sec.md("|---|---|---|---|");
    sec.md(&format!(
        "| agent CPU, % of one core (threads) | {fine_on:.3} | {fine_off:.3} | {diff:+.3} (paired median {paired:+.3}) |"
    ));
    sec.md(&format!(
        "| agent CPU, % of one core (utime + stime) | {cpu:.2} | {cpu_off:.2} | {:+.2} |",
        cpu - cpu_off
    ));
    sec.md(&format!(
        "| recorded bytes per tick | {per_tick:.0} ({per_target:.2} per watched target; {per_day_mib:.0} MiB a day) | – | |"
    ));
    sec.md("");
    sec.metric("cpu_percent_of_one_core", cpu);
    sec.metric("rss_mib", rss);
    sec.metric("peak_rss_mib", hwm);
    sec.metric("cpu_percent_of_one_core_record_off", cpu_off);
    sec.metric("record_cpu_percent_of_one_core", diff);
    sec.metric("record_cpu_percent_of_one_core_paired", paired);
    sec.metric("record_bytes_per_tick", per_tick);
    sec.metric("record_bytes_per_tick_per_target", per_target);
    sec.target(
        "under 1% of one core and under 50 MiB",
        cpu < 1.0 && hwm < 50.0,
        &format!("{cpu:.2}%, peak {hwm:.1} MiB"),
    );
    sec.target(
        "recording moves the CPU figure by at most 0.05% of a core",
        diff.abs() <= 0.05,
        &format!("{diff:+.3}% (paired {paired:+.3}%)"),
    );
    sec.write()
}

/// One run of the agent over the workload, recording or not.
fn one_run(record: bool) -> anyhow::Result<Measured> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let parent = CpuCgroup::new("fp")?;
    let mut leaves = Leaves(Vec::new());
    let mut policies = String::new();
    for i in 0..CGROUPS {
        let d = parent.v2.join(format!("c{i}"));
        fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
        leaves.0.push(d);
        policies.push_str(&format!(
            "[[policy]]\nname = \"cg{i}\"\nsignal = {{ kind = \"runq_p99\", cgroup = \"{}/c{i}\" }}\nhigh = \"50ms\"\nlow = \"10ms\"\nladder = [{{ action = \"cpu_weight\", cgroup = \"{}/c{}\", weight = 50 }}]\n",
            parent.path,
            parent.path,
            (i + 1) % CGROUPS
        ));
    }
    for p in BASE_PORT..BASE_PORT + PORTS {
        policies.push_str(&format!(
            "[[policy]]\nname = \"port{p}\"\nsignal = {{ kind = \"accept_queue_fill\", port = {p} }}\nhigh = 0.9\nlow = 0.5\nladder = [{{ action = \"reject_connections\", port = {p} }}]\n"
        ));
    }
    let ns = NetNs::new("fp")?;
    let mut w = Workloads::default();
    let l = w.spawn(
        Place {
            netns: Some(&ns),
            cgroup: None,
        },
        &[
            "listeners",
            "--base-port",
            &BASE_PORT.to_string(),
            "--count",
            &PORTS.to_string(),
            "--seconds",
            "40",
        ],
    )?;
    w.wait_ready(l)?;
    let mut agent = Agent::start(
        &format!(
            "dry_run = true\nnetns = \"{}\"\nrecord = {record}",
            ns.path().display()
        ),
        &policies,
    )?;
    let base = parent.v2.display().to_string();
    let _v = w.spawn(
        Place::default(),
        &[
            "visit",
            "--base",
            &base,
            "--count",
            &CGROUPS.to_string(),
            "--seconds",
            "35",
        ],
    )?;
    thread::sleep(Duration::from_secs(5));
    let pid = agent.pid();
    let ((t0, _, _), f0) = (usage(pid)?, thread_cpu_ns(pid));
    thread::sleep(Duration::from_secs(MEASURE_S));
    let ((t1, r, h), f1) = (usage(pid)?, thread_cpu_ns(pid));
    let policies_seen = agent.status()?["policies"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(
        policies_seen == CGROUPS + usize::from(PORTS),
        "the agent runs {policies_seen} policies"
    );
    let ticks = metric(
        &scrape(&agent.metrics),
        "governor_tick_duration_seconds_count",
    )
    .unwrap_or(0.0);
    agent.stop();
    let bytes: u64 = match fs::read_dir(agent.record_dir()) {
        Ok(d) => d
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".gvr.gz"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum(),
        Err(_) => 0,
    };
    anyhow::ensure!(
        record == (bytes > 0),
        "record = {record} but {bytes} bytes of segments"
    );
    let m = Measured {
        cpu: (t1 - t0) as f64 / hz / MEASURE_S as f64 * 100.0,
        cpu_fine: f1.saturating_sub(f0) as f64 / 1e9 / MEASURE_S as f64 * 100.0,
        rss: r as f64 / 1024.0,
        hwm: h as f64 / 1024.0,
        bytes,
        ticks,
    };
    drop(agent);
    drop(w);
    drop(leaves);
    drop(parent);
    Ok(m)
}
