//! Overload: a request/response server of fixed capacity in a namespace
//! (one request at a time, paced to `capacity` answers per second, backlog
//! 32), offered 3× its capacity by an open-loop client (a connection per
//! request, 1 s timeout), under nothing, an nftables SYN rate limit tuned by
//! hand to the capacity, and governor's ladder of throttles and a reject
//! driven by the accept queue's fill. Then the same at half the capacity,
//! neither config touched.

use std::time::Instant;

use super::{
    BenchArgs,
    env::{Agent, NetNs, Place, Sampler, Workloads, field, field_str, median},
    plot,
    report::{self, Section},
};

const PORT: u16 = 8080;
const BACKLOG: &str = "32";
const SECONDS: f64 = 7.0;
/// What the nftables rule and the "tuned" figures assume: the full capacity.
const TUNED: f64 = 200.0;
/// Requests started this long into a run count as the steady state too.
const STEADY_AFTER: f64 = 3.0;
const HIGH: f64 = 0.25;
const SHARE1: &str = "95%";
const SHARE2: &str = "80%";
const LOW: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Nothing,
    Nftables,
    Governor,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Nothing => "(a) nothing",
            Self::Nftables => "(b) nftables limit 200/s, reset",
            Self::Governor => "(c) governor",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::Nftables => "nftables",
            Self::Governor => "governor",
        }
    }
}

fn policy() -> String {
    // Knows nothing of the server's capacity: the throttle admits a share
    // of what the port accepted while its queue was over `high` (the
    // server's demonstrated capacity), a smaller share if the queue stays
    // over, then rejects.
    format!(
        r#"
[[policy]]
name = "shed"
signal = {{ kind = "accept_queue_fill", port = {PORT} }}
high = {HIGH}
low = {LOW}
for = "300ms"
settle = "1s"
recover_every = "10s"
jitter = 0.3
ladder = [
  {{ action = "throttle_connections", port = {PORT}, rate = "{SHARE1}", burst = 5, mode = "reset" }},
  {{ action = "throttle_connections", port = {PORT}, rate = "{SHARE2}", burst = 5, mode = "reset" }},
  {{ action = "reject_connections", port = {PORT}, mode = "reset" }},
]
"#
    )
}

/// Removes the nftables table when dropped.
struct NftGuard<'a>(&'a NetNs);

impl Drop for NftGuard<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0.name,
                "nft",
                "delete",
                "table",
                "inet",
                "govbench",
            ])
            .status();
    }
}

struct Outcome {
    goodput: f64,
    p99_ms: f64,
    steady_goodput: f64,
    steady_p99_ms: f64,
    refused: f64,
    timeout: f64,
    series: Vec<(u32, u32, u32)>,
}

fn client(ns: &NetNs, w: &mut Workloads, rate: f64, secs: f64) -> anyhow::Result<Outcome> {
    let c = w.spawn(
        Place {
            netns: Some(ns),
            cgroup: None,
        },
        &[
            "rrclient",
            "--addr",
            "127.0.0.1:8080",
            "--rate",
            &format!("{rate}"),
            "--seconds",
            &format!("{secs}"),
            "--timeout-ms",
            "1000",
            "--steady-after-ms",
            &format!("{}", STEADY_AFTER * 1000.0),
        ],
    )?;
    let out = w.output(c)?;
    let series = field_str(&out, "series")
        .unwrap_or("")
        .split(',')
        .filter_map(|b| {
            let mut it = b.split(':').map(|v| v.parse::<u32>().ok());
            Some((it.next()??, it.next()??, it.next()??))
        })
        .collect();
    Ok(Outcome {
        goodput: field(&out, "goodput").unwrap_or(f64::NAN),
        p99_ms: field(&out, "p99_us").unwrap_or(f64::NAN) / 1000.0,
        steady_goodput: field(&out, "steady_goodput").unwrap_or(f64::NAN),
        steady_p99_ms: field(&out, "steady_p99_us").unwrap_or(f64::NAN) / 1000.0,
        refused: field(&out, "refused").unwrap_or(f64::NAN),
        timeout: field(&out, "timeout").unwrap_or(f64::NAN),
        series,
    })
}

fn server(ns: &NetNs, w: &mut Workloads, capacity: f64, secs: f64) -> anyhow::Result<()> {
    let s = w.spawn(
        Place {
            netns: Some(ns),
            cgroup: None,
        },
        &[
            "rrserver",
            "--port",
            "8080",
            "--rate",
            &format!("{capacity}"),
            "--backlog",
            BACKLOG,
            "--seconds",
            &format!("{secs}"),
        ],
    )?;
    w.wait_ready(s)
}

type Plotted = (Vec<super::env::PolicySample>, Vec<(u32, u32, u32)>, f64);

fn one(v: Variant, capacity: f64, plot_it: bool) -> anyhow::Result<(Outcome, Option<Plotted>)> {
    let ns = NetNs::new("ovl")?;
    let mut w = Workloads::default();
    server(&ns, &mut w, capacity, SECONDS + 4.0)?;
    let _nft = if v == Variant::Nftables {
        ns.nft(&format!(
            "table inet govbench {{\n chain input {{\n  type filter hook input priority 0;\n  tcp dport {PORT} tcp flags syn limit rate over {TUNED}/second burst 5 packets reject with tcp reset\n }}\n}}\n"
        ))?;
        Some(NftGuard(&ns))
    } else {
        None
    };
    let agent = if v == Variant::Governor {
        Some(Agent::start(
            &format!("netns = \"{}\"", ns.path().display()),
            &policy(),
        )?)
    } else {
        None
    };
    let t0 = Instant::now();
    let sampler = match (&agent, plot_it) {
        (Some(a), true) => Some(Sampler::start(a, "shed", t0)),
        _ => None,
    };
    let offset = t0.elapsed().as_secs_f64();
    let o = client(&ns, &mut w, 3.0 * capacity, SECONDS)?;
    let plotted = sampler.map(|s| (s.finish(), o.series.clone(), offset));
    if let Some(a) = &agent {
        // The decisions, each with its reason (and the rate a share resolved to).
        a.print_decisions("shed");
    }
    drop(agent);
    Ok((o, plotted))
}

fn unloaded(capacity: f64) -> anyhow::Result<f64> {
    let ns = NetNs::new("unl")?;
    let mut w = Workloads::default();
    server(&ns, &mut w, capacity, 6.0)?;
    Ok(client(&ns, &mut w, 0.3 * capacity, 3.0)?.p99_ms)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut sec = Section::new(
        "overload",
        "3. Overload: fixed-capacity server offered 3× its capacity",
        &format!("cargo xtask bench overload --rounds {}", args.rounds),
    );
    crate::util::say(format!(
        "bench overload: capacity {TUNED}/s then {}/s, offered 3×, {SECONDS} s per run; {} rounds, rotating order",
        TUNED / 2.0,
        args.rounds
    ));
    let variants = [Variant::Nothing, Variant::Nftables, Variant::Governor];
    sec.md(&format!(
        "Server: one request at a time, paced to its capacity, backlog {BACKLOG}, in a test namespace. Client: open loop at 3× capacity for {SECONDS} s, a connection per request, 1 s timeout; goodput = answered requests per second offered (also shown for requests started {STEADY_AFTER} s or later, after the loop's transient); latency = connect to answer, answered requests only. Unloaded: 0.3× capacity. nftables: `tcp flags syn limit rate over {TUNED}/second burst 5 packets reject with tcp reset`, tuned by hand to the full capacity. Governor: `accept_queue_fill` high {HIGH} low {LOW}, `for` 300 ms, settle 1 s, `recover_every` 10 s, ladder throttle `rate = \"{SHARE1}\"` → `\"{SHARE2}\"` of the port's accepted rate while over high (burst 5, reset) → reject; the same config at both capacities. Targets are judged on the whole run and on requests started {STEADY_AFTER} s or later. Medians of {} rounds.\n",
        args.rounds
    ));
    sec.md(&format!("| capacity | variant | goodput /s | % of capacity | p99 ms | p99 / unloaded p99 | after {STEADY_AFTER} s: goodput % | after {STEADY_AFTER} s: p99 ms | refused | timed out |"));
    sec.md("|---|---|---|---|---|---|---|---|---|---|");
    let mut plotted: Option<Plotted> = None;
    let mut verdicts = Vec::new();
    for (ci, capacity) in [TUNED, TUNED / 2.0].into_iter().enumerate() {
        let mut unl = Vec::new();
        let mut res: Vec<(Variant, Vec<Outcome>)> =
            variants.iter().map(|v| (*v, Vec::new())).collect();
        for round in 0..args.rounds {
            let u = unloaded(capacity)?;
            eprintln!(
                "  cap {capacity}/s round {}  unloaded p99 {u:.1} ms",
                round + 1
            );
            unl.push(u);
            for k in 0..variants.len() {
                let v = variants[(round + k) % variants.len()];
                let plot_it = ci == 1 && round + 1 == args.rounds;
                let (o, p) = one(v, capacity, plot_it)?;
                eprintln!(
                    "  cap {capacity}/s round {}  {:<34} goodput {:>6.1}/s  p99 {:>7.1} ms  (after {STEADY_AFTER} s: {:>6.1}/s, {:>7.1} ms)  refused {:>5.0}  timeout {:>5.0}",
                    round + 1,
                    v.name(),
                    o.goodput,
                    o.p99_ms,
                    o.steady_goodput,
                    o.steady_p99_ms,
                    o.refused,
                    o.timeout
                );
                if p.is_some() {
                    plotted = p;
                }
                if let Some((_, r)) = res.iter_mut().find(|(x, _)| *x == v) {
                    r.push(o);
                }
            }
        }
        let unl = median(&unl);
        let tag = if ci == 0 { "full" } else { "half" };
        sec.metric(&format!("{tag}_capacity_per_s"), capacity);
        sec.metric(&format!("{tag}_unloaded_p99_ms"), unl);
        let mut med = Vec::new();
        for (v, os) in &res {
            let g = median(&os.iter().map(|o| o.goodput).collect::<Vec<_>>());
            let p = median(&os.iter().map(|o| o.p99_ms).collect::<Vec<_>>());
            let sg = median(&os.iter().map(|o| o.steady_goodput).collect::<Vec<_>>());
            let sp = median(&os.iter().map(|o| o.steady_p99_ms).collect::<Vec<_>>());
            let r = median(&os.iter().map(|o| o.refused).collect::<Vec<_>>());
            let t = median(&os.iter().map(|o| o.timeout).collect::<Vec<_>>());
            sec.md(&format!(
                "| {capacity:.0}/s | {} | {g:.1} | {:.0}% | {p:.1} | {:.1} | {:.0}% | {sp:.1} | {r:.0} | {t:.0} |",
                v.name(),
                100.0 * g / capacity,
                p / unl,
                100.0 * sg / capacity,
            ));
            sec.metric(&format!("{tag}_{}_steady_goodput_per_s", v.key()), sg);
            sec.metric(&format!("{tag}_{}_steady_p99_ms", v.key()), sp);
            sec.metric(&format!("{tag}_{}_goodput_per_s", v.key()), g);
            sec.metric(&format!("{tag}_{}_p99_ms", v.key()), p);
            sec.metric(&format!("{tag}_{}_p99_ratio_to_unloaded", v.key()), p / unl);
            med.push((*v, g, p));
        }
        let get = |v: Variant| {
            med.iter()
                .find(|(x, _, _)| *x == v)
                .map(|(_, g, p)| (*g, *p))
                .unwrap_or((f64::NAN, f64::NAN))
        };
        let steady = |v: Variant| {
            res.iter()
                .find(|(x, _)| *x == v)
                .map(|(_, os)| {
                    (
                        median(&os.iter().map(|o| o.steady_goodput).collect::<Vec<_>>()),
                        median(&os.iter().map(|o| o.steady_p99_ms).collect::<Vec<_>>()),
                    )
                })
                .unwrap_or((f64::NAN, f64::NAN))
        };
        let (sg, sp) = steady(Variant::Governor);
        let (sfg, sfp) = steady(Variant::Nftables);
        verdicts.push((
            format!("at {capacity:.0}/s, after {STEADY_AFTER} s: governor goodput ≥ 90% of capacity, p99 ≤ 3× unloaded and ≤ (b)'s"),
            sg >= 0.9 * capacity && sp <= 3.0 * unl && sp <= sfp,
            format!(
                "{:.0}%, {:.1}× ({sp:.1} ms vs unloaded {unl:.1} ms; (b) {:.0}%, {sfp:.1} ms)",
                100.0 * sg / capacity,
                sp / unl,
                100.0 * sfg / capacity,
            ),
        ));
        let (gg, gp) = get(Variant::Governor);
        let (ng, np) = get(Variant::Nothing);
        let (fg, fp) = get(Variant::Nftables);
        verdicts.push((
            format!("at {capacity:.0}/s: governor goodput ≥ 90% of capacity and p99 ≤ 3× unloaded"),
            gg >= 0.9 * capacity && gp <= 3.0 * unl,
            format!(
                "{:.0}%, {:.1}× ({gp:.1} ms vs unloaded {unl:.1} ms)",
                100.0 * gg / capacity,
                gp / unl
            ),
        ));
        verdicts.push((
            format!("at {capacity:.0}/s: governor better than (a), no worse than (b)"),
            (gg >= ng && gp < np) && (gg >= 0.98 * fg && gp <= fp),
            format!("goodput {gg:.1} vs (a) {ng:.1}, (b) {fg:.1}; p99 {gp:.1} vs (a) {np:.1}, (b) {fp:.1} ms"),
        ));
    }
    sec.md("");
    for (name, met, detail) in verdicts {
        sec.target(&name, met, &detail);
    }
    if let Some((samples, series, offset)) = plotted {
        let t = |i: usize| offset + i as f64 * 0.1 + 0.05;
        plot::write(
            &report::dir()?.join("overload.svg"),
            &format!(
                "Overload at half capacity ({}/s offered {}/s), governor (last round)",
                TUNED / 2.0,
                1.5 * TUNED
            ),
            &[
                plot::Panel {
                    title: "signal: accept-queue fill".into(),
                    series: vec![plot::Series {
                        label: "fill".into(),
                        points: samples.iter().map(|s| (s.t, s.signal)).collect(),
                        color: "#1f77b4",
                        steps: false,
                    }],
                    marks: vec![
                        plot::Mark {
                            label: format!("high {HIGH}"),
                            value: HIGH,
                            color: "#d62728",
                        },
                        plot::Mark {
                            label: format!("low {LOW}"),
                            value: LOW,
                            color: "#2ca02c",
                        },
                    ],
                },
                plot::Panel {
                    title: format!(
                        "rung (1 throttle {SHARE1}, 2 throttle {SHARE2} of accepted, 3 reject)"
                    ),
                    series: vec![plot::Series {
                        label: "rung".into(),
                        points: samples.iter().map(|s| (s.t, s.rung)).collect(),
                        color: "#9467bd",
                        steps: true,
                    }],
                    marks: vec![],
                },
                plot::Panel {
                    title: "clients: outcomes per second (100 ms bins)".into(),
                    series: vec![
                        plot::Series {
                            label: "answered/s".into(),
                            points: series
                                .iter()
                                .enumerate()
                                .map(|(i, b)| (t(i), f64::from(b.0) * 10.0))
                                .collect(),
                            color: "#2ca02c",
                            steps: false,
                        },
                        plot::Series {
                            label: "refused/s".into(),
                            points: series
                                .iter()
                                .enumerate()
                                .map(|(i, b)| (t(i), f64::from(b.1) * 10.0))
                                .collect(),
                            color: "#d62728",
                            steps: false,
                        },
                        plot::Series {
                            label: "timed out/s".into(),
                            points: series
                                .iter()
                                .enumerate()
                                .map(|(i, b)| (t(i), f64::from(b.2) * 10.0))
                                .collect(),
                            color: "#7f7f7f",
                            steps: false,
                        },
                    ],
                    marks: vec![],
                },
            ],
        )?;
    }
    sec.write()
}
