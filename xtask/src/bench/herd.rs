//! Thundering herd: 200 clients, each retrying a connect every 50 ms
//! (200 ms timeout) until one succeeds, against a server in a namespace
//! that does not accept for its first 2.5 s. Its accept queue fills, the
//! policy trips and rejects the clients; when the server accepts again the
//! queue empties and the policy recovers. Peak connect rate at release:
//! a single reject rung lifted at once, against a ladder of throttles
//! lifted one rung at a time, each step delayed by a random fraction (up
//! to 50%) of `recover_every`.

use std::time::Instant;

use super::{
    BenchArgs,
    env::{Agent, NetNs, Place, PolicySample, Sampler, Workloads, field, field_str, median},
    plot,
    report::{self, Section},
};

const PORT: u16 = 8080;
const PAUSE_MS: u64 = 2500;
const CLIENTS: &str = "200";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    AtOnce,
    Jittered,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::AtOnce => "reject lifted at once (jitter 0)",
            Self::Jittered => "jittered recovery: reject → 50/s → 200/s → open (jitter 0.5)",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Self::AtOnce => "at_once",
            Self::Jittered => "jittered",
        }
    }
    fn policy(self) -> String {
        let (ladder, jitter) = match self {
            Self::AtOnce => (
                format!("{{ action = \"reject_connections\", port = {PORT}, mode = \"reset\" }}"),
                0.0,
            ),
            Self::Jittered => (
                format!(
                    "{{ action = \"throttle_connections\", port = {PORT}, rate = \"200/s\", burst = 10, mode = \"reset\" }},\n  {{ action = \"throttle_connections\", port = {PORT}, rate = \"50/s\", burst = 3, mode = \"reset\" }},\n  {{ action = \"reject_connections\", port = {PORT}, mode = \"reset\" }}"
                ),
                0.5,
            ),
        };
        format!(
            r#"
[[policy]]
name = "herd"
signal = {{ kind = "accept_queue_fill", port = {PORT} }}
high = 0.5
low = 0.1
for = "300ms"
settle = "300ms"
recover_every = "1s"
jitter = {jitter}
backoff = 1.0
ladder = [
  {ladder}
]
"#
        )
    }
}

struct Run {
    done: f64,
    /// Successes per 10 ms bin, by bin start (ms since the herd started).
    hist: Vec<(u64, u32)>,
    samples: Vec<PolicySample>,
    offset_s: f64,
}

impl Run {
    /// The largest count in a 10 ms bin after the server began accepting,
    /// and that bin (ms since the herd started).
    fn peak_at(&self) -> (u64, f64) {
        self.hist
            .iter()
            .filter(|(t, _)| *t >= PAUSE_MS)
            .map(|(t, c)| (*t, f64::from(*c)))
            .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a })
    }
}

fn one(v: Variant) -> anyhow::Result<Run> {
    let ns = NetNs::new("herd")?;
    let agent = Agent::start(&format!("netns = \"{}\"", ns.path().display()), &v.policy())?;
    let place = Place {
        netns: Some(&ns),
        cgroup: None,
    };
    let mut w = Workloads::default();
    let s = w.spawn(
        place,
        &[
            "pauseserver",
            "--port",
            "8080",
            "--backlog",
            "16",
            "--pause-ms",
            &PAUSE_MS.to_string(),
            "--seconds",
            "20",
        ],
    )?;
    w.wait_ready(s)?;
    let t0 = Instant::now();
    let sampler = Sampler::start(&agent, "herd", t0);
    let offset_s = t0.elapsed().as_secs_f64();
    let c = w.spawn(
        place,
        &[
            "herd",
            "--addr",
            "127.0.0.1:8080",
            "--clients",
            CLIENTS,
            "--retry-ms",
            "50",
            "--timeout-ms",
            "200",
            "--seconds",
            "15",
        ],
    )?;
    let out = w.output(c)?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let samples = sampler.finish();
    agent.print_decisions("herd");
    let hist = field_str(&out, "hist")
        .unwrap_or("")
        .split(',')
        .filter_map(|b| {
            let (t, c) = b.split_once(':')?;
            Some((t.parse().ok()?, c.parse().ok()?))
        })
        .collect();
    Ok(Run {
        done: field(&out, "done").unwrap_or(f64::NAN),
        hist,
        samples,
        offset_s,
    })
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut sec = Section::new(
        "herd",
        "4. Thundering herd: 200 clients held off by a reject, then released",
        &format!("cargo xtask bench herd --rounds {}", args.rounds),
    );
    crate::util::say(format!(
        "bench herd: {CLIENTS} clients retrying every 50 ms, server paused {PAUSE_MS} ms; {} rounds, alternating",
        args.rounds
    ));
    let variants = [Variant::AtOnce, Variant::Jittered];
    let mut res: Vec<(Variant, Vec<f64>, Vec<f64>)> = variants
        .iter()
        .map(|v| (*v, Vec::new(), Vec::new()))
        .collect();
    let mut last: Vec<(Variant, Run)> = Vec::new();
    for round in 0..args.rounds {
        for k in 0..variants.len() {
            let v = variants[(round + k) % variants.len()];
            let r = one(v)?;
            let (peak_t, peak) = r.peak_at();
            eprintln!(
                "  round {}  {:<62} peak {:>3.0} connects/10 ms ({:>5.0}/s) at {peak_t} ms, {} of {CLIENTS} through",
                round + 1,
                v.name(),
                peak,
                peak * 100.0,
                r.done
            );
            if let Some((_, p, d)) = res.iter_mut().find(|(x, _, _)| *x == v) {
                p.push(peak);
                d.push(r.done);
            }
            if round + 1 == args.rounds {
                last.push((v, r));
            }
        }
    }
    sec.md(&format!(
        "{CLIENTS} clients in a test namespace, each retrying its connect every 50 ms (200 ms timeout) until one succeeds; the server does not accept for its first {PAUSE_MS} ms (backlog 16), so the accept queue fills and governor (`accept_queue_fill` high 0.5, low 0.1, `for` 300 ms, `recover_every` 1 s) rejects them; then it accepts everything. The jittered ladder's throttles have bursts of 10 (200/s) and 3 (50/s), a retry period's worth: the clients retry in step, and a smaller bucket admits one burst per retry wave, far below the rate. Peak = the most successful connects in one 10 ms bin after the server resumed. Medians of {} rounds.\n",
        args.rounds
    ));
    sec.md("| recovery | peak connects / 10 ms | peak rate /s | clients through |");
    sec.md("|---|---|---|---|");
    let mut meds = Vec::new();
    for (v, p, d) in &res {
        let (p, d) = (median(p), median(d));
        sec.md(&format!(
            "| {} | {p:.0} | {:.0} | {d:.0} |",
            v.name(),
            p * 100.0
        ));
        sec.metric(&format!("{}_peak_per_10ms", v.key()), p);
        sec.metric(&format!("{}_peak_per_s", v.key()), p * 100.0);
        sec.metric(&format!("{}_clients_through", v.key()), d);
        meds.push(p);
    }
    let ratio = meds[0] / meds[1];
    sec.metric("peak_ratio", ratio);
    sec.md("");
    sec.target(
        "≥ 5× lower peak with jittered recovery",
        ratio >= 5.0,
        &format!("{ratio:.1}× ({:.0} vs {:.0} per 10 ms)", meds[0], meds[1]),
    );
    if let Some((_, j)) = last.iter().find(|(v, _)| *v == Variant::Jittered) {
        let clients = |r: &Run, color: &'static str, label: &str| plot::Series {
            label: label.into(),
            points: {
                let mut pts = Vec::new();
                let end = r.hist.last().map_or(0, |(t, _)| *t);
                let mut it = r.hist.iter().peekable();
                let mut t = 0;
                while t <= end {
                    let c = match it.peek() {
                        Some((bt, c)) if *bt == t => {
                            it.next();
                            *c
                        }
                        _ => 0,
                    };
                    pts.push((r.offset_s + t as f64 / 1000.0, f64::from(c)));
                    t += 10;
                }
                pts
            },
            color,
            steps: false,
        };
        let mut cs = vec![clients(j, "#2ca02c", "jittered: connects / 10 ms")];
        if let Some((_, a)) = last.iter().find(|(v, _)| *v == Variant::AtOnce) {
            cs.push(clients(a, "#d62728", "at once: connects / 10 ms"));
        }
        plot::write(
            &report::dir()?.join("herd.svg"),
            "Thundering herd: jittered recovery (signal, rung) and both variants' clients (last round)",
            &[
                plot::Panel {
                    title: "signal: accept-queue fill (jittered run)".into(),
                    series: vec![plot::Series {
                        label: "fill".into(),
                        points: j.samples.iter().map(|s| (s.t, s.signal)).collect(),
                        color: "#1f77b4",
                        steps: false,
                    }],
                    marks: vec![
                        plot::Mark {
                            label: "high 0.5".into(),
                            value: 0.5,
                            color: "#d62728",
                        },
                        plot::Mark {
                            label: "low 0.1".into(),
                            value: 0.1,
                            color: "#2ca02c",
                        },
                    ],
                },
                plot::Panel {
                    title: "rung (1 throttle 200/s, 2 throttle 50/s, 3 reject)".into(),
                    series: vec![plot::Series {
                        label: "rung".into(),
                        points: j.samples.iter().map(|s| (s.t, s.rung)).collect(),
                        color: "#9467bd",
                        steps: true,
                    }],
                    marks: vec![],
                },
                plot::Panel {
                    title: "clients: successful connects per 10 ms".into(),
                    series: cs,
                    marks: vec![],
                },
            ],
        )?;
    }
    sec.write()
}
