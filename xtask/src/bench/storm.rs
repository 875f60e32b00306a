//! Reconnect storm: after an outage, `CLIENTS` clients reconnect to a
//! request/response server of fixed capacity at the same instant, each
//! making one request and retrying a refused or unanswered attempt after
//! about 100 ms (jittered). Under nothing the accept queue fills at once and
//! the admitted wait behind it (the rest lose SYNs and retry after the
//! kernel's 1 s); under nftables' SYN limit tuned to the capacity the first
//! burst still queues; governor's guard, armed from the start, resets a SYN
//! while the queue is deeper than what the server drains within the delay
//! target, so those admitted wait little and the rest retry.

use super::{
    BenchArgs,
    env::{Agent, NetNs, Place, Workloads, field, median},
    overload::{self, PORT, TUNED, Variant},
    report::Section,
};

const CLIENTS: usize = 500;
const RETRY_MS: u64 = 100;

struct Storm {
    served: f64,
    rate: f64,
    p99_ms: f64,
    refused: f64,
    timeout: f64,
}

fn one(v: Variant) -> anyhow::Result<Storm> {
    let ns = NetNs::new("storm")?;
    let mut w = Workloads::default();
    overload::server(&ns, &mut w, TUNED, 20.0)?;
    let _nft = if v == Variant::Nftables {
        Some(overload::nft_limit(&ns)?)
    } else {
        None
    };
    let _agent = if matches!(v, Variant::Governor | Variant::Guard) {
        Some(Agent::start(
            &format!("netns = \"{}\"", ns.path().display()),
            &overload::policy(v),
        )?)
    } else {
        None
    };
    let c = w.spawn(
        Place {
            netns: Some(&ns),
            cgroup: None,
        },
        &[
            "rrherd",
            "--addr",
            &format!("127.0.0.1:{PORT}"),
            "--clients",
            &CLIENTS.to_string(),
            "--retry-ms",
            &RETRY_MS.to_string(),
            "--timeout-ms",
            "1000",
            "--seconds",
            "15",
        ],
    )?;
    let out = w.output(c)?;
    Ok(Storm {
        served: field(&out, "served").unwrap_or(f64::NAN),
        rate: field(&out, "rate").unwrap_or(f64::NAN),
        p99_ms: field(&out, "p99_us").unwrap_or(f64::NAN) / 1000.0,
        refused: field(&out, "refused").unwrap_or(f64::NAN),
        timeout: field(&out, "timeout").unwrap_or(f64::NAN),
    })
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut sec = Section::new(
        "storm",
        &format!("4b. Reconnect storm: {CLIENTS} clients at once at a server of fixed capacity"),
        &format!("cargo xtask bench herd --rounds {}", args.rounds),
    );
    crate::util::say(format!(
        "bench herd (storm): {CLIENTS} clients at once, server {TUNED}/s; {} rounds, rotating order",
        args.rounds
    ));
    let variants = [Variant::Nothing, Variant::Nftables, Variant::Guard];
    let mut res: Vec<(Variant, Vec<Storm>)> = variants.iter().map(|v| (*v, Vec::new())).collect();
    let mut unl = Vec::new();
    for round in 0..args.rounds {
        unl.push(overload::unloaded(TUNED)?);
        for k in 0..variants.len() {
            let v = variants[(round + k) % variants.len()];
            let s = one(v)?;
            eprintln!(
                "  round {}  {:<38} served {:>4.0} of {CLIENTS} at {:>6.1}/s, p99 {:>7.1} ms, refused attempts {:>5.0}, timed out {:>4.0}",
                round + 1,
                v.name(),
                s.served,
                s.rate,
                s.p99_ms,
                s.refused,
                s.timeout
            );
            if let Some((_, r)) = res.iter_mut().find(|(x, _)| *x == v) {
                r.push(s);
            }
        }
    }
    let unl = median(&unl);
    sec.md(&format!(
        "A server of {TUNED}/s (one request at a time, backlog 32) in a test namespace; {CLIENTS} clients start at the same instant, each making one request (connect, send, answer) and retrying a refused attempt, or one unanswered after 1 s, after {RETRY_MS} ms × a random factor in [0.5, 1.5). Served rate = clients served / time until the last was served; p99 = connect to answer of the attempts that were answered. Unloaded p99 (0.3× capacity, evenly spaced): {unl:.1} ms. nftables and governor's configs are those of the overload bench. Medians of {} rounds.\n",
        args.rounds
    ));
    sec.md("| variant | served | served rate /s | % of capacity | p99 ms (admitted) | p99 / unloaded | refused attempts | timed-out attempts |");
    sec.md("|---|---|---|---|---|---|---|---|");
    sec.metric("unloaded_p99_ms", unl);
    let mut med = Vec::new();
    for (v, ss) in &res {
        let m = |f: fn(&Storm) -> f64| median(&ss.iter().map(f).collect::<Vec<_>>());
        let (served, rate, p99) = (m(|s| s.served), m(|s| s.rate), m(|s| s.p99_ms));
        sec.md(&format!(
            "| {} | {served:.0} | {rate:.1} | {:.0}% | {p99:.1} | {:.1} | {:.0} | {:.0} |",
            v.name(),
            100.0 * rate / TUNED,
            p99 / unl,
            m(|s| s.refused),
            m(|s| s.timeout),
        ));
        sec.metric(&format!("{}_served_per_s", v.key()), rate);
        sec.metric(&format!("{}_p99_ms", v.key()), p99);
        med.push((*v, rate, p99));
    }
    sec.md("");
    let get = |v: Variant| {
        med.iter()
            .find(|(x, _, _)| *x == v)
            .map_or((f64::NAN, f64::NAN), |(_, r, p)| (*r, *p))
    };
    let (gr, gp) = get(Variant::Guard);
    let (fr, fp) = get(Variant::Nftables);
    let (nr, np) = get(Variant::Nothing);
    sec.target(
        "the guard serves the storm at ≥ 90% of capacity with p99 ≤ 3× unloaded for those admitted",
        gr >= 0.9 * TUNED && gp <= 3.0 * unl,
        &format!(
            "{:.0}% of capacity, p99 {gp:.1} ms = {:.1}× unloaded (nothing: {:.0}%, {np:.1} ms; nftables: {:.0}%, {fp:.1} ms)",
            100.0 * gr / TUNED,
            gp / unl,
            100.0 * nr / TUNED,
            100.0 * fr / TUNED
        ),
    );
    sec.write()
}
