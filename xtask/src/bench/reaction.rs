//! Reaction: from the moment the signal has been past `high` for `for`
//! until the action takes effect, over many trips of the real agent.
//!
//! One namespace, an accept-and-close server on port 8080 and an open-loop
//! client at 500 connects/s. Two policies watch the same signal (accepted
//! connections per second, high 100/s, low 20/s, `for` 200 ms): one rejects
//! the port, one writes a CPU quota on a bench cgroup. The reject itself
//! makes the signal fall, so the policies trip, recover and trip again, each
//! trip a measurement. The moment the signal crossed is the decision's
//! `at_s − (held_for − for)`; the effect is the first refused connect the
//! client saw (it connects every 2 ms, so this is late by up to 2 ms) and
//! the first change of the quota file (polled every 1 ms here).

use std::{
    collections::BTreeMap,
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    BenchArgs,
    env::{Agent, CpuCgroup, NetNs, Place, Workloads, field, field_str, mono_ns, quantile},
    report::Section,
};

const PORT: u16 = 8080;
const FOR_MS: f64 = 200.0;
const TRIPS: usize = 50;
/// Seconds each client piece sends for (workloads are bounded to 60 s).
const PIECE_S: u64 = 30;

/// (policy, at µs) → (at_s, held_for_ms, kind).
type Decisions = BTreeMap<(String, u64), (f64, u64, String)>;

/// `--rounds` does not apply: the trips are the repetitions.
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    let mut sec = Section::new(
        "reaction",
        "1. Reaction: signal past high for `for` → action in effect",
        "cargo xtask bench reaction",
    );
    let ns = NetNs::new("react")?;
    let cg = CpuCgroup::new("react")?;
    let quota_file = cg.quota_file();
    let policies = format!(
        r#"
[[policy]]
name = "react-reject"
signal = {{ kind = "accepted_rate", port = {PORT} }}
high = "100/s"
low = "20/s"
for = "{FOR_MS}ms"
settle = "100ms"
recover_every = "200ms"
jitter = 0.0
backoff = 1.0
flap_budget = 1000
flap_window = "1s"
ladder = [{{ action = "reject_connections", port = {PORT}, mode = "reset" }}]

[[policy]]
name = "react-quota"
signal = {{ kind = "accepted_rate", port = {PORT} }}
high = "100/s"
low = "20/s"
for = "{FOR_MS}ms"
settle = "100ms"
recover_every = "200ms"
jitter = 0.0
backoff = 1.0
flap_budget = 1000
flap_window = "1s"
ladder = [{{ action = "cpu_limit", cgroup = "{}", cpus = 0.5 }}]
"#,
        cg.path
    );
    let agent = Agent::start(&format!("netns = \"{}\"", ns.path().display()), &policies)?;
    let tick_ms = agent.status()?["tick_ms"].as_f64().unwrap_or(100.0);
    let mut w = Workloads::default();
    let place = Place {
        netns: Some(&ns),
        cgroup: None,
    };
    let server = w.spawn(
        place,
        &[
            "pauseserver",
            "--port",
            "8080",
            "--backlog",
            "1024",
            "--seconds",
            "200",
        ],
    )?;
    w.wait_ready(server)?;

    // Quota file watcher: onsets of a change away from the original value.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let original = fs::read_to_string(&quota_file).context("quota file")?;
    let qf = quota_file.clone();
    let watcher = thread::spawn(move || {
        let mut onsets = Vec::new();
        let mut limited = false;
        while !flag.load(Ordering::Relaxed) {
            let now_limited = fs::read_to_string(&qf).is_ok_and(|t| t != original);
            if now_limited && !limited {
                onsets.push(mono_ns());
            }
            limited = now_limited;
            thread::sleep(Duration::from_millis(1));
        }
        onsets
    });

    // Decisions, collected from the status socket (it keeps the last 50).
    let mut decisions: Decisions = BTreeMap::new();
    fn collect(agent: &Agent, decisions: &mut Decisions) {
        if let Ok(s) = agent.status()
            && let Some(recent) = s["recent"].as_array()
        {
            for d in recent {
                let at = d["at_s"].as_f64().unwrap_or(0.0);
                let key = (
                    d["policy"].as_str().unwrap_or("").to_owned(),
                    (at * 1e6) as u64,
                );
                decisions.insert(
                    key,
                    (
                        at,
                        d["held_for_ms"].as_u64().unwrap_or(0),
                        d["kind"].as_str().unwrap_or("").to_owned(),
                    ),
                );
            }
        }
    }
    let applied = |d: &Decisions, p: &str| {
        d.iter()
            .filter(|((pol, _), (_, _, k))| pol == p && k == "applied")
            .count()
    };
    crate::util::say(format!(
        "bench reaction: {TRIPS} trips of two policies (reject, quota), `for` {FOR_MS} ms, tick {tick_ms} ms"
    ));
    let started = Instant::now();
    let mut onsets: Vec<u64> = Vec::new();
    // When each client piece sends (CLOCK_MONOTONIC ns): a reject decided
    // while no client connects (between pieces) has no refusal to show.
    let mut sending: Vec<(u64, u64)> = Vec::new();
    let mut excluded = 0;
    // The client runs in pieces of `PIECE_S` seconds until enough trips
    // were seen, at most 4 pieces.
    for piece in 0..4 {
        let from = super::env::mono_ns();
        let c = w.spawn(
            place,
            &[
                "pulse",
                "--addr",
                "127.0.0.1:8080",
                "--rate",
                "500",
                "--seconds",
                &PIECE_S.to_string(),
            ],
        )?;
        let end = Instant::now() + Duration::from_secs(PIECE_S + 1);
        while Instant::now() < end {
            thread::sleep(Duration::from_millis(700));
            collect(&agent, &mut decisions);
        }
        sending.push((from, from + PIECE_S * 1_000_000_000));
        let out = w.output(c)?;
        if let Some(list) = field_str(&out, "refusal_onsets") {
            onsets.extend(list.split(',').filter_map(|v| v.parse::<u64>().ok()));
        }
        eprintln!(
            "  piece {}: {} trips so far (reject {}, quota {}); client ok={} refused={}",
            piece + 1,
            applied(&decisions, "react-reject").min(applied(&decisions, "react-quota")),
            applied(&decisions, "react-reject"),
            applied(&decisions, "react-quota"),
            field(&out, "ok").unwrap_or(0.0),
            field(&out, "refused").unwrap_or(0.0),
        );
        // A few more than needed: trips at the pieces' ends are left out.
        if applied(&decisions, "react-reject") >= TRIPS + 5
            && applied(&decisions, "react-quota") >= TRIPS + 5
        {
            break;
        }
    }
    collect(&agent, &mut decisions);
    stop.store(true, Ordering::Relaxed);
    let quota_onsets = watcher.join().unwrap_or_default();

    sec.md(&format!(
        "Two policies on one signal (accepted connections/s of a port in a test namespace, high 100/s, low 20/s, `for` {FOR_MS:.0} ms, tick {tick_ms:.0} ms), tripped repeatedly by an open-loop client at 500 connects/s; the reject lowers the signal, so the policies trip and recover in a cycle. Reaction = effect − (decision `at_s` − (`held_for` − `for`)). Effects: the client's first refused connect (it connects every 2 ms), the quota file's first change (polled every 1 ms). Took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    sec.md(
        "| effect | trips | p50 ms | p99 ms | p50 ticks | p99 ticks | decision lag p99 (ticks) |",
    );
    sec.md("|---|---|---|---|---|---|---|");
    let mut all_ok = true;
    let mut detail = Vec::new();
    for (policy, label, effects) in [
        ("react-reject", "first connection refused", &onsets),
        ("react-quota", "quota written (cpu_limit)", &quota_onsets),
    ] {
        let mut reactions = Vec::new();
        let mut lags = Vec::new();
        for ((p, _), (at, held, kind)) in &decisions {
            if p != policy || kind != "applied" {
                continue;
            }
            let decided = agent.zero_ns as f64 + at * 1e9;
            let crossed = decided - (*held as f64 - FOR_MS) * 1e6;
            // The client must still be sending for 2 ticks after the crossing.
            let observed = policy != "react-reject"
                || sending.iter().any(|&(from, to)| {
                    crossed >= from as f64 && crossed + 2.0 * tick_ms * 1e6 <= to as f64
                });
            if !observed {
                excluded += 1;
                continue;
            }
            // The first effect after the crossing, within 2 s.
            if let Some(e) = effects
                .iter()
                .map(|&e| e as f64)
                .filter(|&e| e >= crossed - 1e6 && e < crossed + 2e9)
                .reduce(f64::min)
            {
                let ms = (e - crossed) / 1e6;
                if ms > 2.0 * tick_ms {
                    let piece = sending
                        .iter()
                        .position(|&(from, to)| crossed >= from as f64 && crossed <= to as f64);
                    eprintln!(
                        "  slow trip ({policy}): effect {ms:.0} ms after the crossing, {}",
                        match piece {
                            Some(i) => format!(
                                "{:.2} s into client piece {} (it sends for {PIECE_S} s)",
                                (crossed - sending[i].0 as f64) / 1e9,
                                i + 1
                            ),
                            None => "between client pieces".into(),
                        }
                    );
                }
                reactions.push(ms);
                lags.push((decided - crossed) / 1e6 / tick_ms);
            }
        }
        let reactions: Vec<f64> = reactions.into_iter().take(TRIPS).collect();
        let (p50, p99) = (quantile(&reactions, 0.5), quantile(&reactions, 0.99));
        let lag99 = quantile(&lags, 0.99);
        sec.md(&format!(
            "| {label} | {} | {p50:.1} | {p99:.1} | {:.2} | {:.2} | {lag99:.2} |",
            reactions.len(),
            p50 / tick_ms,
            p99 / tick_ms
        ));
        let key = if policy == "react-reject" {
            "reject"
        } else {
            "quota"
        };
        sec.metric(&format!("{key}_trips"), reactions.len() as f64);
        sec.metric(&format!("{key}_p50_ms"), p50);
        sec.metric(&format!("{key}_p99_ms"), p99);
        sec.metric(&format!("{key}_p50_ticks"), p50 / tick_ms);
        sec.metric(&format!("{key}_p99_ticks"), p99 / tick_ms);
        all_ok &= reactions.len() >= TRIPS && p99 / tick_ms <= 2.0;
        detail.push(format!(
            "{key}: p99 {:.2} ticks over {} trips",
            p99 / tick_ms,
            reactions.len()
        ));
    }
    sec.md("");
    sec.md(&format!(
        "Reject trips left out: {excluded} (the threshold was crossed less than 2 ticks before the client's {PIECE_S} s piece ended, or between pieces: no connect to refuse).\n"
    ));
    sec.metric("reject_trips_left_out", f64::from(excluded));
    sec.target(
        &format!("p99 ≤ 2 ticks over {TRIPS} trips"),
        all_ok,
        &detail.join("; "),
    );
    drop(w);
    drop(agent);
    sec.write()
}
