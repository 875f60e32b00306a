//! Overload: a request/response server of fixed capacity in a namespace
//! (one request at a time, paced to `capacity` answers per second, backlog
//! 32), offered 3× and 10× its capacity by an open-loop client (a
//! connection per request, 1 s timeout), from a cold start, under nothing,
//! an nftables SYN rate limit tuned by hand to the capacity, governor's
//! ladder of throttles and a reject driven by the accept queue's fill, and
//! the same policy with a SYN-time guard. Then 3× at half the capacity,
//! no config touched, and 0.8× capacity with Poisson arrivals (what the
//! guard refuses when nothing is wrong).

use std::time::Instant;

use super::{
    BenchArgs,
    env::{Agent, NetNs, Place, Sampler, Workloads, field, field_str, median},
    plot,
    report::{self, Section},
};

pub(super) const PORT: u16 = 8080;
const BACKLOG: &str = "32";
const SECONDS: f64 = 7.0;
/// What the nftables rule and the "tuned" figures assume: the full capacity.
pub(super) const TUNED: f64 = 200.0;
/// Requests started this long into a run count as the steady state too.
const STEADY_AFTER: f64 = 3.0;
const HIGH: f64 = 0.25;
const SHARE1: &str = "95%";
const SHARE2: &str = "80%";
const LOW: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    Nothing,
    Nftables,
    Governor,
    Guard,
}

impl Variant {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Nothing => "(a) nothing",
            Self::Nftables => "(b) nftables limit 200/s, reset",
            Self::Governor => "(c) governor, loop only",
            Self::Guard => "(d) governor, loop + SYN-time guard",
        }
    }
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::Nftables => "nftables",
            Self::Governor => "governor",
            Self::Guard => "guard",
        }
    }
}

/// The guard's delay target: a connection should not wait in the accept
/// queue longer than this; the bound follows from what the server drains.
pub(super) const GUARD_DELAY: &str = "5ms";
/// The guard's smallest bound: one connection waiting.
pub(super) const GUARD_MIN: u32 = 1;

pub(super) fn policy(v: Variant) -> String {
    let guard = if v == Variant::Guard {
        format!(
            "guard = {{ port = {PORT}, max_delay = \"{GUARD_DELAY}\", min = {GUARD_MIN}, mode = \"reset\" }}\n"
        )
    } else {
        String::new()
    };
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
{guard}ladder = [
  {{ action = "throttle_connections", port = {PORT}, rate = "{SHARE1}", burst = 5, mode = "reset" }},
  {{ action = "throttle_connections", port = {PORT}, rate = "{SHARE2}", burst = 5, mode = "reset" }},
  {{ action = "reject_connections", port = {PORT}, mode = "reset" }},
]
"#
    )
}

/// nftables' SYN rate limit, tuned by hand to the full capacity, in `ns`;
/// removed when the guard returned is dropped.
pub(super) fn nft_limit(ns: &NetNs) -> anyhow::Result<NftGuard<'_>> {
    ns.nft(&format!(
        "table inet govbench {{\n chain input {{\n  type filter hook input priority 0;\n  tcp dport {PORT} tcp flags syn limit rate over {TUNED}/second burst 5 packets reject with tcp reset\n }}\n}}\n"
    ))?;
    Ok(NftGuard(ns))
}

/// Removes the nftables table when dropped.
pub(super) struct NftGuard<'a>(&'a NetNs);

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
    sent: f64,
    goodput: f64,
    p99_ms: f64,
    steady_goodput: f64,
    steady_p99_ms: f64,
    refused: f64,
    timeout: f64,
    series: Vec<(u32, u32, u32)>,
}

/// `poisson`: arrivals as a Poisson process from this seed, else evenly spaced.
fn client(
    ns: &NetNs,
    w: &mut Workloads,
    rate: f64,
    secs: f64,
    poisson: Option<u64>,
) -> anyhow::Result<Outcome> {
    let (rate, secs, steady) = (
        format!("{rate}"),
        format!("{secs}"),
        format!("{}", STEADY_AFTER * 1000.0),
    );
    let seed = poisson.map(|p| p.to_string());
    let mut args = vec![
        "rrclient",
        "--addr",
        "127.0.0.1:8080",
        "--rate",
        &rate,
        "--seconds",
        &secs,
        "--timeout-ms",
        "1000",
        "--steady-after-ms",
        &steady,
    ];
    if let Some(seed) = &seed {
        args.extend(["--poisson", seed]);
    }
    let c = w.spawn(
        Place {
            netns: Some(ns),
            cgroup: None,
        },
        &args,
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
        sent: field(&out, "sent").unwrap_or(f64::NAN),
        goodput: field(&out, "goodput").unwrap_or(f64::NAN),
        p99_ms: field(&out, "p99_us").unwrap_or(f64::NAN) / 1000.0,
        steady_goodput: field(&out, "steady_goodput").unwrap_or(f64::NAN),
        steady_p99_ms: field(&out, "steady_p99_us").unwrap_or(f64::NAN) / 1000.0,
        refused: field(&out, "refused").unwrap_or(f64::NAN),
        timeout: field(&out, "timeout").unwrap_or(f64::NAN),
        series,
    })
}

pub(super) fn server(
    ns: &NetNs,
    w: &mut Workloads,
    capacity: f64,
    secs: f64,
) -> anyhow::Result<()> {
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

/// One run of variant `v`: a server of `capacity`, offered `load` (× capacity).
fn one(
    v: Variant,
    capacity: f64,
    load: Load,
    plot_it: bool,
) -> anyhow::Result<(Outcome, Option<Plotted>)> {
    let ns = NetNs::new("ovl")?;
    let mut w = Workloads::default();
    server(&ns, &mut w, capacity, SECONDS + 4.0)?;
    let _nft = if v == Variant::Nftables {
        Some(nft_limit(&ns)?)
    } else {
        None
    };
    let agent = if matches!(v, Variant::Governor | Variant::Guard) {
        Some(Agent::start(
            &format!("netns = \"{}\"", ns.path().display()),
            &policy(v),
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
    let o = client(&ns, &mut w, load.times * capacity, SECONDS, load.poisson)?;
    let plotted = sampler.map(|s| (s.finish(), o.series.clone(), offset));
    if let Some(a) = &agent {
        // The decisions, each with its reason (and the rate a share resolved to).
        a.print_decisions("shed");
    }
    drop(agent);
    Ok((o, plotted))
}

pub(super) fn unloaded(capacity: f64) -> anyhow::Result<f64> {
    let ns = NetNs::new("unl")?;
    let mut w = Workloads::default();
    server(&ns, &mut w, capacity, 6.0)?;
    Ok(client(&ns, &mut w, 0.3 * capacity, 3.0, None)?.p99_ms)
}

/// Offered load: a multiple of the server's capacity, evenly spaced or as a
/// Poisson process (seeded).
#[derive(Debug, Clone, Copy)]
struct Load {
    times: f64,
    poisson: Option<u64>,
}

struct Scenario {
    tag: &'static str,
    capacity: f64,
    times: f64,
    poisson: bool,
    variants: &'static [Variant],
}

const ALL: &[Variant] = &[
    Variant::Nothing,
    Variant::Nftables,
    Variant::Governor,
    Variant::Guard,
];

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        tag: "full_3x",
        capacity: TUNED,
        times: 3.0,
        poisson: false,
        variants: ALL,
    },
    Scenario {
        tag: "full_10x",
        capacity: TUNED,
        times: 10.0,
        poisson: false,
        variants: ALL,
    },
    Scenario {
        tag: "half_3x",
        capacity: TUNED / 2.0,
        times: 3.0,
        poisson: false,
        variants: ALL,
    },
    Scenario {
        tag: "full_0.8x_poisson",
        capacity: TUNED,
        times: 0.8,
        poisson: true,
        variants: &[Variant::Nothing, Variant::Guard],
    },
];

/// Medians of one variant's rounds.
struct Med {
    goodput: f64,
    p99: f64,
    refused_share: f64,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut sec = Section::new(
        "overload",
        "3. Overload: a fixed-capacity server offered 3× and 10× its capacity, then half the capacity, then 0.8× with Poisson arrivals",
        &format!("cargo xtask bench overload --rounds {}", args.rounds),
    );
    crate::util::say(format!(
        "bench overload: capacity {TUNED}/s (3×, 10×, 0.8× Poisson) and {}/s (3×), {SECONDS} s per run, from a cold start; {} rounds, rotating order",
        TUNED / 2.0,
        args.rounds
    ));
    sec.md(&format!(
        "Server: one request at a time, paced to its capacity, backlog {BACKLOG}, in a test namespace. Client: open loop for {SECONDS} s from a cold start (the agent starts with the run), a connection per request, 1 s timeout; goodput = answered requests per second offered (also shown for requests started {STEADY_AFTER} s or later, after the loop's transient); latency = connect to answer, answered requests only. Unloaded: 0.3× capacity. nftables: `tcp flags syn limit rate over {TUNED}/second burst 5 packets reject with tcp reset`, tuned by hand to the full capacity. Governor: `accept_queue_fill` high {HIGH} low {LOW}, `for` 300 ms, settle 1 s, `recover_every` 10 s, ladder throttle `rate = \"{SHARE1}\"` → `\"{SHARE2}\"` of the port's accepted rate while over high (burst 5, reset) → reject; (d) adds `guard = {{ port = {PORT}, max_delay = \"{GUARD_DELAY}\", min = {GUARD_MIN}, mode = \"reset\" }}` to the same policy: armed from the start, it resets a SYN while the listener's accept queue is deeper than the bound the agent sets from the drain rate it sees. The same configs at every capacity and load. Medians of {} rounds.\n",
        args.rounds
    ));
    sec.md(&format!("| capacity | offered | variant | goodput /s | % of capacity | p99 ms | p99 / unloaded p99 | after {STEADY_AFTER} s: goodput % | after {STEADY_AFTER} s: p99 ms | refused | refused % of sent | timed out |"));
    sec.md("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut plotted: Option<Plotted> = None;
    let mut verdicts = Vec::new();
    for sc in &SCENARIOS {
        let capacity = sc.capacity;
        let offered = if sc.poisson {
            format!("{}× Poisson", sc.times)
        } else {
            format!("{}×", sc.times)
        };
        let mut unl = Vec::new();
        let mut res: Vec<(Variant, Vec<Outcome>)> =
            sc.variants.iter().map(|v| (*v, Vec::new())).collect();
        for round in 0..args.rounds {
            let u = unloaded(capacity)?;
            eprintln!("  {} round {}  unloaded p99 {u:.1} ms", sc.tag, round + 1);
            unl.push(u);
            let load = Load {
                times: sc.times,
                poisson: sc.poisson.then_some(round as u64 + 1),
            };
            for k in 0..sc.variants.len() {
                let v = sc.variants[(round + k) % sc.variants.len()];
                let plot_it =
                    sc.tag == "half_3x" && v == Variant::Guard && round + 1 == args.rounds;
                let (o, p) = one(v, capacity, load, plot_it)?;
                eprintln!(
                    "  {} round {}  {:<38} goodput {:>6.1}/s  p99 {:>7.1} ms  (after {STEADY_AFTER} s: {:>6.1}/s, {:>7.1} ms)  refused {:>5.0} of {:>5.0}  timeout {:>5.0}",
                    sc.tag,
                    round + 1,
                    v.name(),
                    o.goodput,
                    o.p99_ms,
                    o.steady_goodput,
                    o.steady_p99_ms,
                    o.refused,
                    o.sent,
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
        let tag = sc.tag;
        sec.metric(&format!("{tag}_capacity_per_s"), capacity);
        sec.metric(&format!("{tag}_unloaded_p99_ms"), unl);
        let mut med: Vec<(Variant, Med)> = Vec::new();
        for (v, os) in &res {
            let m = |f: fn(&Outcome) -> f64| median(&os.iter().map(f).collect::<Vec<_>>());
            let (g, p) = (m(|o| o.goodput), m(|o| o.p99_ms));
            let (sg, sp) = (m(|o| o.steady_goodput), m(|o| o.steady_p99_ms));
            let (r, t) = (m(|o| o.refused), m(|o| o.timeout));
            let share = m(|o| o.refused / o.sent.max(1.0));
            sec.md(&format!(
                "| {capacity:.0}/s | {offered} | {} | {g:.1} | {:.0}% | {p:.1} | {:.1} | {:.0}% | {sp:.1} | {r:.0} | {:.2}% | {t:.0} |",
                v.name(),
                100.0 * g / capacity,
                p / unl,
                100.0 * sg / capacity,
                100.0 * share,
            ));
            sec.metric(&format!("{tag}_{}_goodput_per_s", v.key()), g);
            sec.metric(&format!("{tag}_{}_p99_ms", v.key()), p);
            sec.metric(&format!("{tag}_{}_p99_ratio_to_unloaded", v.key()), p / unl);
            sec.metric(&format!("{tag}_{}_steady_goodput_per_s", v.key()), sg);
            sec.metric(&format!("{tag}_{}_steady_p99_ms", v.key()), sp);
            sec.metric(&format!("{tag}_{}_refused_share", v.key()), share);
            med.push((
                *v,
                Med {
                    goodput: g,
                    p99: p,
                    refused_share: share,
                },
            ));
        }
        let get = |v: Variant| med.iter().find(|(x, _)| *x == v).map(|(_, m)| m);
        let Some(d) = get(Variant::Guard) else {
            continue;
        };
        if sc.poisson {
            verdicts.push((
                format!(
                    "at {capacity:.0}/s offered {offered}: the guard refuses ≤ 0.1% of connections"
                ),
                d.refused_share <= 0.001,
                format!("{:.3}% refused", 100.0 * d.refused_share),
            ));
            continue;
        }
        let floor = if sc.times >= 10.0 { 0.90 } else { 0.95 };
        verdicts.push((
            format!(
                "at {capacity:.0}/s offered {offered}: (d) whole-run p99 ≤ 3× unloaded, goodput ≥ {:.0}% of capacity",
                100.0 * floor
            ),
            d.p99 <= 3.0 * unl && d.goodput >= floor * capacity,
            format!(
                "{:.1}× ({:.1} ms vs unloaded {unl:.1} ms), {:.0}%",
                d.p99 / unl,
                d.p99,
                100.0 * d.goodput / capacity
            ),
        ));
        if let Some(f) = get(Variant::Nftables) {
            verdicts.push((
                format!("at {capacity:.0}/s offered {offered}: (d) better than nftables on p99, no worse on goodput (≥ 98% of its)"),
                d.p99 < f.p99 && d.goodput >= 0.98 * f.goodput,
                format!(
                    "p99 {:.1} vs {:.1} ms; goodput {:.1} vs {:.1}/s",
                    d.p99, f.p99, d.goodput, f.goodput
                ),
            ));
        }
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
                "Overload at half capacity ({}/s offered {}/s), governor with the guard (last round)",
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
