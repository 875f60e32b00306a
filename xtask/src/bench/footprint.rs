//! Footprint: the agent's resident memory and CPU with a 100 ms tick,
//! 1,000 cgroups and 100 listening ports, each watched by a (dry-run)
//! policy, while one process visits the cgroups in turn (so each has
//! scheduler events every half second) and the ports listen in a namespace.

use std::{fs, path::PathBuf, thread, time::Duration};

use anyhow::Context as _;

use super::{
    BenchArgs,
    env::{Agent, CpuCgroup, NetNs, Place, Workloads, median},
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
        "bench footprint: {CGROUPS} cgroups and {PORTS} ports, each with a dry-run policy; {MEASURE_S} s per run after 5 s warm-up; {rounds} runs"
    ));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (mut cpus, mut rss, mut hwm) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
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
        let agent = Agent::start(
            &format!("dry_run = true\nnetns = \"{}\"", ns.path().display()),
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
        let (t0, _, _) = usage(pid)?;
        thread::sleep(Duration::from_secs(MEASURE_S));
        let (t1, r, h) = usage(pid)?;
        let policies_seen = agent.status()?["policies"].as_array().map_or(0, Vec::len);
        let cpu = (t1 - t0) as f64 / hz / MEASURE_S as f64 * 100.0;
        eprintln!(
            "  run {}  agent CPU {cpu:.2}% of one core, RSS {:.1} MiB (peak {:.1} MiB), {policies_seen} policies",
            round + 1,
            r as f64 / 1024.0,
            h as f64 / 1024.0
        );
        cpus.push(cpu);
        rss.push(r as f64 / 1024.0);
        hwm.push(h as f64 / 1024.0);
        drop(agent);
        drop(w);
        drop(leaves);
        drop(parent);
    }
    let (cpu, rss, hwm) = (median(&cpus), median(&rss), median(&hwm));
    sec.md(&format!(
        "The real agent, tick 100 ms, dry-run, with {CGROUPS} test cgroups each watched by a `runq_p99` policy (acting on its neighbour) and {PORTS} listening ports in a test namespace each watched by an `accept_queue_fill` policy; one process visits the cgroups in turn (two short sleeps in each) so every cgroup has scheduler events. CPU = utime + stime over {MEASURE_S} s after 5 s of warm-up; RSS = VmRSS at the end, peak = VmHWM. Median of {rounds} runs.\n"
    ));
    sec.md("| agent CPU, % of one core | RSS MiB | peak RSS MiB |");
    sec.md("|---|---|---|");
    sec.md(&format!("| {cpu:.2} | {rss:.1} | {hwm:.1} |"));
    sec.md("");
    sec.metric("cpu_percent_of_one_core", cpu);
    sec.metric("rss_mib", rss);
    sec.metric("peak_rss_mib", hwm);
    sec.target(
        "under 1% of one core and under 50 MiB",
        cpu < 1.0 && hwm < 50.0,
        &format!("{cpu:.2}%, peak {hwm:.1} MiB"),
    );
    sec.write()
}
