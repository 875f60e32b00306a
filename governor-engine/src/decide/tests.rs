#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::{
    config::{self, Protected},
    snapshot::{CgroupPath, CgroupStats, RunqStats},
};

const TICK: Duration = Duration::from_millis(100);

fn config(extra: &str) -> Config {
    let base = "for = \"1s\"\nsettle = \"2s\"\nrecover_every = \"3s\"\njitter = 0.3";
    // Keys given in `extra` replace the base ones.
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
    let overridden: Vec<String> = extra.lines().map(key).collect();
    let kept: Vec<&str> = base
        .lines()
        .filter(|l| !overridden.contains(&key(l)))
        .collect();
    let src = format!(
        r#"
[[policy]]
name = "api"
signal = {{ kind = "runq_p99", cgroup = "/api" }}
high = "2ms"
low = "500us"
{}
{extra}
ladder = [
  {{ action = "cpu_weight", cgroup = "/batch", weight = "idle" }},
  {{ action = "cpu_limit", cgroup = "/batch", cpus = 0.25 }},
]
"#,
        kept.join("\n")
    );
    config::from_str(&src, "test").unwrap()
}

/// A snapshot where `/api` has run-queue p99 `p99_us`, or no data at all
/// (as a producer that gives the interval's percentiles, not histograms).
fn snap(p99_us: Option<u64>) -> Snapshot {
    let mut s = Snapshot {
        interval_ms: 100,
        ..Default::default()
    };
    if let Some(p99) = p99_us {
        s.host.runq = Some(RunqStats::default());
        s.cgroups.push(CgroupStats {
            path: CgroupPath::new("/api").unwrap(),
            id: 1,
            runq: RunqStats {
                count: 100,
                p50_us: p99 / 4,
                p99_us: p99,
                max_us: p99 * 2,
            },
            runq_hist: None,
            conn_out: 0,
            conn_out_per_s: 0.0,
            psi: None,
            throttling: None,
            culprits: Vec::new(),
        });
    }
    s
}

/// Runs `ticks` ticks of the same reading from `*t`; returns the decisions.
fn run(state: &mut State, t: &mut Duration, ticks: u32, p99_us: Option<u64>) -> Vec<Decision> {
    let mut out = Vec::new();
    for _ in 0..ticks {
        out.extend(state.step(&snap(p99_us), *t));
        *t += TICK;
    }
    out
}

/// Steps `state` once per `(queue depth, handshakes queued)` reading of
/// port 8080, a tick apart.
fn run_port(state: &mut State, t: &mut Duration, ticks: &[(u32, u64)]) -> Vec<Decision> {
    let mut out = Vec::new();
    for &(depth, queued) in ticks {
        out.extend(state.step(&port_snap(depth, queued), *t));
        *t += TICK;
    }
    out
}

fn rung(state: &State) -> Rung {
    state.status()[0].rung
}

#[test]
fn trips_after_for_then_settles_between_rungs() {
    let c = config("");
    let mut s = State::new(&c, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    // `for` is 1 s: readings at 0.0 … 0.9 s are not enough.
    assert!(run(&mut s, &mut t, 10, Some(3000)).is_empty());
    let d = run(&mut s, &mut t, 1, Some(3000));
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].kind, d[0].from_rung, d[0].to_rung),
        (DecisionKind::Applied, 0, 1)
    );
    assert_eq!(d[0].reason.held_for, Duration::from_secs(1));
    let line = d[0].to_string();
    assert!(
        line.contains("policy api: applied cpu_weight idle on cgroup /batch (rung 0 → 1): runq_p99 of cgroup /api is 3ms, at or over high 2ms for 1s"),
        "{line}"
    );
    // `settle` is 2 s: the next rung waits for it.
    assert!(run(&mut s, &mut t, 19, Some(3000)).is_empty());
    let d = run(&mut s, &mut t, 1, Some(3000));
    assert_eq!((d[0].from_rung, d[0].to_rung), (1, 2));
    // Top of the ladder: nothing more.
    assert!(run(&mut s, &mut t, 50, Some(3000)).is_empty());
    assert_eq!(rung(&s), 2);
}

#[test]
fn a_run_queue_reason_names_the_top_culprit_or_the_own_quota() {
    use crate::snapshot::{Culprit, Throttling};
    let trip = |culprits: Vec<Culprit>, throttled_us: Option<u64>| {
        let mut s = State::new(&config(""), Protected::builtin(None), 1);
        let mut t = Duration::ZERO;
        let mut out = Vec::new();
        for _ in 0..11 {
            let mut sn = snap(Some(3100));
            sn.cgroups[0].culprits = culprits.clone();
            sn.cgroups[0].throttling = throttled_us.map(|t| Throttling {
                nr_throttled: 3,
                throttled_us: t,
            });
            out.extend(s.step(&sn, t));
            t += TICK;
        }
        assert_eq!(out.len(), 1);
        out[0].to_string()
    };
    let k = |c: &str, share: f64| Culprit {
        cgroup: c.into(),
        wait_us: (share * 1000.0) as u64,
        share,
    };
    let line = trip(vec![k("/batch", 0.82), k("/api", 0.18)], None);
    assert!(
        line.ends_with("runq_p99 of cgroup /api is 3.1ms, at or over high 2ms for 1s; 82% of its wait behind /batch"),
        "{line}"
    );
    let line = trip(vec![k(Culprit::IDLE, 0.7), k("/batch", 0.3)], Some(300_000));
    assert!(
        line.ends_with("; 70% of its wait with the CPU idle: throttled by its own quota (300ms in the last second), not starved by a neighbour"),
        "{line}"
    );
    let line = trip(vec![k("/api", 0.9)], Some(0));
    assert!(
        line.ends_with("; 90% of its wait behind its own tasks"),
        "{line}"
    );
    // Nothing known: the reason is as before.
    let line = trip(Vec::new(), None);
    assert!(line.ends_with("at or over high 2ms for 1s"), "{line}");
}

#[test]
fn between_the_watermarks_nothing_changes() {
    let mut s = State::new(&config(""), Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    run(&mut s, &mut t, 11, Some(3000));
    assert_eq!(rung(&s), 1);
    assert!(
        run(&mut s, &mut t, 600, Some(1000)).is_empty(),
        "1ms is between 500us and 2ms"
    );
    assert_eq!(rung(&s), 1);
}

#[test]
fn recovers_one_rung_at_a_time_with_jittered_delays() {
    let mut s = State::new(&config(""), Protected::builtin(None), 7);
    let mut t = Duration::ZERO;
    run(&mut s, &mut t, 40, Some(3000));
    assert_eq!(rung(&s), 2);
    let cleared = t;
    let d = run(&mut s, &mut t, 200, Some(100));
    assert_eq!(d.len(), 2);
    assert!(
        d.iter()
            .all(|d| d.kind == DecisionKind::Reverted && d.change == Change::Lift)
    );
    assert_eq!((d[0].from_rung, d[1].to_rung), (2, 0));
    // First step: for (1 s) + 3 s × (1 + up to 0.3).
    let first = d[0].at - cleared;
    assert!(
        first >= Duration::from_secs(4) && first <= Duration::from_millis(4_900),
        "{first:?}"
    );
    let second = d[1].at - d[0].at;
    assert!(
        second >= Duration::from_secs(3) && second <= Duration::from_millis(3_900),
        "{second:?}"
    );
}

#[test]
fn no_data_holds_and_restarts_the_timers() {
    let mut s = State::new(&config(""), Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    run(&mut s, &mut t, 11, Some(3000));
    assert_eq!(rung(&s), 1);
    assert!(
        run(&mut s, &mut t, 600, None).is_empty(),
        "no data: no recovery"
    );
    assert_eq!(rung(&s), 1);
    assert!(s.status()[0].no_data);
    // Data again, over high: `for` counts from the first reading after the gap.
    assert!(run(&mut s, &mut t, 10, Some(3000)).is_empty());
    assert_eq!(run(&mut s, &mut t, 1, Some(3000)).len(), 1);
}

#[test]
fn dry_run_reports_would_and_applies_nothing() {
    let mut s = State::new(&config("dry_run = true"), Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    let mut d = run(&mut s, &mut t, 40, Some(3000));
    d.extend(run(&mut s, &mut t, 200, Some(100)));
    assert_eq!(d.len(), 4);
    assert!(d.iter().all(|d| d.kind == DecisionKind::Would), "{d:?}");
    assert!(d[3].to_string().contains("would lift"), "{}", d[3]);
}

#[test]
fn a_protected_target_is_refused_once_and_held() {
    let c = config("");
    // The agent runs in /batch here: the engine refuses even if the config passed.
    let protected = Protected::builtin(Some(&CgroupPath::new("/batch").unwrap()));
    let mut s = State::new(&c, protected, 1);
    let mut t = Duration::ZERO;
    let d = run(&mut s, &mut t, 200, Some(3000));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, DecisionKind::Refused);
    assert!(matches!(d[0].reason.cause, Cause::Protected(_)));
    assert_eq!(rung(&s), 0);
}

#[test]
fn the_flap_budget_holds_the_rung() {
    // 2 changes per minute; recovery is fast so the loop would cycle.
    let mut s = State::new(
        &config(
            "flap_budget = 2\nflap_window = \"60s\"\nsettle = \"100ms\"\nrecover_every = \"100ms\"\nbackoff = 1.0",
        ),
        Protected::builtin(None),
        1,
    );
    let mut t = Duration::ZERO;
    let mut d = run(&mut s, &mut t, 15, Some(3000));
    d.extend(run(&mut s, &mut t, 30, Some(100)));
    let changes = d.iter().filter(|d| d.kind != DecisionKind::Refused).count();
    assert_eq!(changes, 2, "{d:#?}");
    assert!(
        d.iter()
            .any(|d| matches!(d.reason.cause, Cause::FlapBudget { .. }))
    );
    assert!(s.status()[0].flap_held);
    // A minute after the first change, the budget frees and recovery resumes.
    let d = run(&mut s, &mut t, 600, Some(100));
    assert_eq!(rung(&s), 0, "{d:#?}");
}

#[test]
fn backoff_grows_step_down_delays_on_re_trips_and_is_forgotten() {
    let c = config(
        "jitter = 0.0\nbackoff = 2.0\nbackoff_max = \"20s\"\nretrip_within = \"10s\"\nbackoff_reset = \"2m\"\nflap_budget = 100",
    );
    // A load that returns whenever rung 1 is lifted: over at rung 0, clear at rung 1.
    // Time from clearing to the step down: for + delay, the delay doubling up to 20 s.
    let mut waits: Vec<f64> = Vec::new();
    let mut last_up = Duration::ZERO;
    let mut t2 = Duration::ZERO;
    let mut s2 = State::new(&c, Protected::builtin(None), 1);
    for _ in 0..1200 {
        let reading = if rung(&s2) == 0 { 3000 } else { 100 };
        for d in s2.step(&snap(Some(reading)), t2) {
            match d.change {
                Change::Impose => last_up = d.at,
                Change::Lift => waits.push((d.at - last_up).as_secs_f64()),
                Change::Adjust => {}
            }
        }
        t2 += TICK;
    }
    assert!(waits.len() >= 4, "{waits:?}");
    // One tick to see the drop, `for` (1 s), then the delay: 3 s, 6 s, 12 s, capped at 20 s.
    assert!((waits[0] - 4.1).abs() < 0.05, "{waits:?}");
    assert!((waits[1] - 7.1).abs() < 0.05, "{waits:?}");
    assert!((waits[2] - 13.1).abs() < 0.05, "{waits:?}");
    assert!(
        waits[3..].iter().all(|w| (w - 21.1).abs() < 0.05),
        "{waits:?}"
    );
    assert!(s2.status()[0].retrips >= 3);

    // Quiet for longer than backoff_reset: forgotten.
    run(&mut s2, &mut t2, 1300, Some(100));
    run(&mut s2, &mut t2, 11, Some(3000));
    assert_eq!(s2.status()[0].retrips, 0);
}

#[test]
fn same_seed_same_run() {
    let c = config("");
    let go = |seed| {
        let mut s = State::new(&c, Protected::builtin(None), seed);
        let mut t = Duration::ZERO;
        let mut d = run(&mut s, &mut t, 40, Some(3000));
        d.extend(run(&mut s, &mut t, 200, Some(100)));
        d.iter().map(|d| d.at).collect::<Vec<_>>()
    };
    assert_eq!(go(5), go(5));
    assert_ne!(go(5), go(6), "jitter depends on the seed");
}

#[test]
fn reconcile_keeps_unchanged_policies_and_lifts_removed_ones() {
    let c = config("");
    let mut s = State::new(&c, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    run(&mut s, &mut t, 40, Some(3000));
    assert_eq!(rung(&s), 2);

    // Same signal and ladder, new watermarks: the rung is kept.
    let mut c2 = c.clone();
    c2.policies[0].watermarks.high.value = 2500.0;
    let (s, d) = s.reconcile(&c2, Protected::builtin(None), t);
    assert!(d.is_empty());
    assert_eq!(rung(&s), 2);

    // Removed: both rungs lifted, top first.
    let c3 = Config {
        agent: c.agent.clone(),
        policies: vec![],
    };
    let (s, d) = s.reconcile(&c3, Protected::builtin(None), t);
    assert_eq!(
        d.iter()
            .map(|d| (d.from_rung, d.to_rung))
            .collect::<Vec<_>>(),
        vec![(2, 1), (1, 0)]
    );
    assert!(
        d.iter()
            .all(|d| d.kind == DecisionKind::Reverted && d.reason.cause == Cause::PolicyRemoved)
    );
    assert!(s.status().is_empty());
}

#[test]
fn changed_ladder_restarts_and_release_all_lifts_everything() {
    let c = config("");
    let (mut s, mut t) = (State::new(&c, Protected::builtin(None), 1), Duration::ZERO);
    run(&mut s, &mut t, 11, Some(3000));
    let mut c2 = c.clone();
    c2.policies[0].ladder.rungs.pop();
    let (mut s, d) = s.reconcile(&c2, Protected::builtin(None), t);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].reason.cause, Cause::PolicyChanged);
    assert_eq!(rung(&s), 0);
    run(&mut s, &mut t, 11, Some(3000));
    let d = s.release_all(t);
    assert_eq!(d.len(), 1);
    assert!(
        d[0].to_string().ends_with("the agent is stopping"),
        "{}",
        d[0]
    );
}

/// A 100 ms snapshot of port 8080 whose accept queue (limit 100) holds
/// `depth` after `queued` handshakes completed in the interval.
fn port_snap(depth: u32, queued: u64) -> Snapshot {
    Snapshot {
        interval_ms: 100,
        ports: vec![crate::snapshot::PortStats {
            port: 8080,
            accepted: queued,
            accepted_per_s: queued as f64 * 10.0,
            accept_queue: depth,
            accept_queue_max: 100,
            overflows: 0,
        }],
        ..Default::default()
    }
}

/// A policy "shed" on port 8080's accept-queue fill (high 0.5, low 0.1)
/// with `keys` (timings) and the rungs of `ladder`.
fn shed_config(keys: &str, ladder: &[&str]) -> Config {
    let src = format!(
        "[[policy]]\nname = \"shed\"\nsignal = {{ kind = \"accept_queue_fill\", port = 8080 }}\nhigh = 0.5\nlow = 0.1\n{keys}\nladder = [{}]\n",
        ladder.join(", ")
    );
    config::from_str(&src, "test").unwrap()
}

/// Throttles port 8080 to 90% of its measured capacity, burst 5.
const THROTTLE_90: &str =
    r#"{ action = "throttle_connections", port = 8080, rate = "90%", burst = 5 }"#;
/// Rejects every new connection to port 8080.
const REJECT: &str = r#"{ action = "reject_connections", port = 8080 }"#;

#[test]
fn a_share_of_the_accepted_rate_is_resolved_from_the_episode_over_high() {
    let cfg = shed_config("for = \"300ms\"", &[THROTTLE_90, REJECT]);
    let mut state = State::new(&cfg, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    // A server taking 20 connections a tick (200/s): calm, then offered 3×
    // its capacity. Handshakes complete at the offered rate while the queue
    // fills (the probe counts 750/s, 600/s), then as fast as it frees slots;
    // what the server takes is queued less the queue's growth: 200/s.
    let decisions = run_port(
        &mut state,
        &mut t,
        &[(5, 20), (5, 20), (60, 75), (100, 60), (100, 20), (100, 20)],
    );
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let d = &decisions[0];
    match &d.action {
        Action::ThrottleConnections { rate, burst, .. } => {
            // 90% of 200/s, less the 100 queued drained over settle (2 s).
            assert_eq!(rate.as_per_second(), 130.0);
            assert_eq!(*burst, 5);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        d.to_string().contains(
            "throttle_connections 130/s (90% of the accepted 200/s, less 50/s to drain the queue) burst 5"
        ),
        "{d}"
    );
    // The backlog drains; `settle` after the rung was applied its rate is
    // re-set to the share alone (before any step down, which waits
    // `recover_every`). The rung does not change.
    let later = run_port(&mut state, &mut t, &[(0, 13); 25]);
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].change, Change::Adjust);
    assert_eq!(
        later[0].direction(),
        Direction::Reset,
        "a re-set is not a step"
    );
    assert_eq!((later[0].from_rung, later[0].to_rung), (1, 1));
    assert!(
        later[0].to_string().starts_with(
            "policy shed: re-set throttle_connections 180/s (90% of the accepted 200/s) burst 5 (reset) on port 8080 (rung 1 → 1): the server takes 200/s and 0 wait in its accept queue"
        ),
        "{}",
        later[0]
    );
    assert_eq!(rung(&state), 1);

    // The same config against a server of half the capacity: no re-tuning.
    let mut state = State::new(&cfg, Protected::builtin(None), 1);
    let decisions = run_port(
        &mut state,
        &mut t,
        &[(5, 10), (60, 65), (100, 50), (100, 10), (100, 10)],
    );
    match &decisions[0].action {
        // 90% of 100/s, less 50/s to drain the queue.
        Action::ThrottleConnections { rate, .. } => assert_eq!(rate.as_per_second(), 40.0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_share_of_nothing_accepted_admits_one_per_second_not_zero() {
    let a = shed_config(
        "",
        &[r#"{ action = "throttle_connections", port = 8080, rate = "95%" }"#],
    )
    .policies[0]
        .ladder
        .rungs[0]
        .resolved(0.0, 0.0);
    match a {
        Action::ThrottleConnections { rate, burst, .. } => {
            assert_eq!(rate.as_per_second(), 1.0);
            assert_eq!(burst, 1, "one second's worth by default");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_step_up_waits_while_the_signal_still_falls() {
    // for 1s, settle 2s: rung 1 at 1 s over high.
    let cfg = config("");
    let mut state = State::new(&cfg, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    run(&mut state, &mut t, 11, Some(10_000));
    assert_eq!(rung(&state), 1);
    // Over high but falling every tick, well past `settle`: it holds.
    let mut p99 = 9_900;
    for _ in 0..40 {
        state.step(&snap(Some(p99)), t);
        t += TICK;
        p99 -= 100;
    }
    assert!(p99 > 2_000, "still over high");
    assert_eq!(rung(&state), 1, "a falling signal holds the rung");
    // It stops falling: the next rung once no new low came for `settle`.
    let d = run(&mut state, &mut t, 19, Some(p99 + 100));
    assert_eq!(rung(&state), 1, "{d:?}");
    let d = run(&mut state, &mut t, 2, Some(p99 + 100));
    assert_eq!(rung(&state), 2, "{d:?}");
}

#[test]
fn a_tick_that_drains_stale_connections_fast_does_not_inflate_the_share() {
    let cfg = shed_config("for = \"400ms\"", &[THROTTLE_90]);
    let mut state = State::new(&cfg, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    // Saturated at 20 a tick, but one tick takes 36 (clients that gave up):
    // the mean would be 232/s, the median is the capacity.
    let decisions = run_port(
        &mut state,
        &mut t,
        &[
            (5, 20),
            (100, 115),
            (100, 20),
            (100, 36),
            (100, 20),
            (100, 20),
        ],
    );
    assert!(
        decisions[0]
            .to_string()
            .contains("(90% of the accepted 200/s,"),
        "{}",
        decisions[0]
    );
}

#[test]
fn a_server_that_slows_down_gets_its_share_re_measured_before_the_next_rung() {
    let cfg = shed_config("for = \"300ms\"\nsettle = \"1s\"", &[THROTTLE_90, REJECT]);
    let mut state = State::new(&cfg, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    let d = run_port(
        &mut state,
        &mut t,
        &[(5, 20), (60, 75), (100, 60), (100, 20), (100, 20)],
    );
    assert_eq!(rung(&state), 1, "{d:?}");
    // Drained; then the server halves its speed (10 a tick) and the queue
    // fills past high again, and stays full.
    run_port(&mut state, &mut t, &[(0, 14); 20]);
    let later = run_port(
        &mut state,
        &mut t,
        &[
            (30, 40),
            (60, 40),
            (90, 40),
            (100, 20),
            (100, 10),
            (100, 10),
            (100, 10),
        ],
    );
    assert_eq!(rung(&state), 1, "re-measured, not escalated: {later:?}");
    // (It may first be re-set for the backlog at the old capacity.)
    assert!(
        later
            .iter()
            .any(|d| d.change == Change::Adjust
                && d.to_string().contains("(90% of the accepted 100/s")),
        "re-set to 90% of the new 100/s: {later:#?}"
    );
}

/// Runs `ticks` ticks like [`run`], telling the engine that every applied or
/// reverted change on rung `failing` fails.
fn run_failing(
    state: &mut State,
    t: &mut Duration,
    ticks: u32,
    p99_us: u64,
    failing: Rung,
) -> Vec<Decision> {
    let mut out = Vec::new();
    for _ in 0..ticks {
        let decisions = state.step(&snap(Some(p99_us)), *t);
        for d in &decisions {
            let rung = if d.change == Change::Lift {
                d.from_rung
            } else {
                d.to_rung
            };
            let result = if rung == failing {
                Err("cpu.max does not exist")
            } else {
                Ok(())
            };
            state.outcome(d, result, *t);
        }
        out.extend(decisions);
        *t += TICK;
    }
    out
}

#[test]
fn a_step_up_that_failed_is_not_a_rung_in_force_and_is_retried_with_backoff() {
    let c = config("");
    let mut s = State::new(&c, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    // Rung 1 applies; rung 2 (cpu_limit) fails every time.
    let d = run_failing(&mut s, &mut t, 200, 3000, 2);
    assert_eq!(rung(&s), 1, "the failed rung 2 is not in force");
    let status = &s.status()[0];
    let failed = status.failed.as_ref().expect("status says what failed");
    assert_eq!((failed.rung, failed.change), (2, Change::Impose));
    assert_eq!(failed.error, "cpu.max does not exist");
    // Tries of rung 2: first after settle (t = 3 s), then settle × 1, 2, 4,
    // 8 … capped at backoff_max (60 s default) after each failure.
    let tries: Vec<f64> = d
        .iter()
        .filter(|d| d.to_rung == 2 && d.change == Change::Impose)
        .map(|d| d.at.as_secs_f64())
        .collect();
    assert!(tries.len() >= 3, "{tries:?}");
    let gaps: Vec<f64> = tries.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().enumerate() {
        let want = 2.0 * f64::from(1u32 << i);
        assert!(
            (g - want).abs() < 0.15,
            "gap {i} is {g}s, want {want}s: {tries:?}"
        );
    }
    assert_eq!(failed.attempts as usize, tries.len());
    // Once it succeeds, the failure is forgotten and rung 2 is in force.
    let mut t2 = failed.retry_at;
    let d = run_failing(&mut s, &mut t2, 2, 3000, 99);
    assert!(d.iter().any(|d| d.to_rung == 2), "{d:?}");
    assert_eq!(rung(&s), 2);
    assert!(s.status()[0].failed.is_none());
}

#[test]
fn a_lift_that_failed_keeps_its_rung_and_nothing_below_it_is_lifted_first() {
    let c = config("");
    let mut s = State::new(&c, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    run(&mut s, &mut t, 60, Some(3000));
    assert_eq!(rung(&s), 2);
    // Clear: lifting rung 2 fails; rung 1 must not be lifted under it.
    let d = run_failing(&mut s, &mut t, 300, 100, 2);
    assert_eq!(
        rung(&s),
        2,
        "the rule that could not be lifted is still in force"
    );
    assert!(
        d.iter().all(|d| d.from_rung == 2),
        "only rung 2 is tried: {d:?}"
    );
    assert!(d.len() >= 2, "the lift is retried: {d:?}");
    let f = s.status()[0]
        .failed
        .clone()
        .expect("status says what failed");
    assert_eq!((f.rung, f.change), (2, Change::Lift));
    // When it works again, recovery goes on down the ladder.
    let d = run_failing(&mut s, &mut t, 300, 100, 99);
    assert_eq!(rung(&s), 0, "{d:?}");
}

#[test]
fn a_failed_release_does_not_move_the_policy_that_replaces_it() {
    let c = config("");
    let mut s = State::new(&c, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    run(&mut s, &mut t, 60, Some(3000));
    assert_eq!(rung(&s), 2);
    let mut changed = c.clone();
    changed.policies[0].ladder.rungs.pop();
    let (mut s, lifts) = s.reconcile(&changed, Protected::builtin(None), t);
    assert_eq!(lifts.len(), 2);
    for d in &lifts {
        s.outcome(d, Err("gone"), t);
    }
    assert_eq!(rung(&s), 0, "the new policy starts at 0");
    assert!(s.status()[0].failed.is_none());
}

#[test]
fn dry_run_decisions_are_not_failures() {
    let c = config("dry_run = true");
    let mut s = State::new(&c, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    run_failing(&mut s, &mut t, 60, 3000, 1);
    assert_eq!(rung(&s), 2, "dry-run would-decisions are not carried out");
    assert!(s.status()[0].failed.is_none());
}

#[test]
fn a_reload_that_protects_a_target_in_force_lifts_it() {
    let c = config("");
    let mut s = State::new(&c, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    run(&mut s, &mut t, 60, Some(3000));
    assert_eq!(rung(&s), 2);
    // The same policy, but /batch is now protected.
    let mut c2 = c.clone();
    c2.agent
        .protect
        .push(config::Target::Cgroup(CgroupPath::new("/batch").unwrap()));
    let protected = Protected::for_config(&c2, None);
    let (s, d) = s.reconcile(&c2, protected, t);
    assert_eq!(
        d.iter()
            .map(|d| (d.from_rung, d.to_rung, d.change))
            .collect::<Vec<_>>(),
        vec![(2, 1, Change::Lift), (1, 0, Change::Lift)],
        "both rungs on the now protected /batch are lifted"
    );
    assert!(
        d.iter()
            .all(|d| matches!(d.reason.cause, Cause::Protected(_))),
        "{d:?}"
    );
    assert_eq!(rung(&s), 0);
}

/// `snap(p99_us)` whose interval was `interval_ms` long.
fn snap_of(p99_us: Option<u64>, interval_ms: u64) -> Snapshot {
    Snapshot {
        interval_ms,
        ..snap(p99_us)
    }
}

/// After a stalled tick the sensor catches up: snapshots 1 ms apart, each
/// of 1 ms of waits (a percentile of two or three wake-ups). They are too
/// short to judge: the step down comes when it would have without them,
/// and with `for = "0s"` they trip nothing.
#[test]
fn a_catch_up_burst_of_1ms_intervals_is_not_judged() {
    let ms = Duration::from_millis;
    // Trip (rung 1 at 1.0 s), then clear; the step down in each run.
    let step_down = |burst: bool| -> Duration {
        let c = config("");
        let mut s = State::new(&c, Protected::builtin(None), 7);
        let mut t = Duration::ZERO;
        run(&mut s, &mut t, 11, Some(3000));
        assert_eq!(rung(&s), 1);
        for tick in 0..100 {
            if burst && tick == 20 {
                // Three 1 ms intervals, between the watermarks and over high.
                for (i, p99) in [1000, 3000, 1000].into_iter().enumerate() {
                    let d = s.step(&snap_of(Some(p99), 1), t + ms(1 + i as u64));
                    assert!(d.is_empty(), "{d:?}");
                }
            }
            let d = s.step(&snap(Some(100)), t);
            t += TICK;
            if d.iter().any(|d| d.change == Change::Lift) {
                return d[0].at;
            }
        }
        panic!("no step down within 10 s");
    };
    let (quiet, bursty) = (step_down(false), step_down(true));
    assert_eq!(
        bursty, quiet,
        "the burst changed the step down: {bursty:?} instead of {quiet:?}"
    );

    // `for = "0s"`: one reading over high is enough, but not a 1 ms one.
    let c = config("for = \"0s\"");
    let mut s = State::new(&c, Protected::builtin(None), 7);
    let mut t = Duration::ZERO;
    run(&mut s, &mut t, 5, Some(100));
    for i in 1..=3 {
        let d = s.step(&snap_of(Some(5000), 1), t + ms(i));
        assert!(d.is_empty(), "a 1 ms interval tripped the policy: {d:?}");
    }
    assert_eq!(rung(&s), 0);
    // A whole tick over high does (so the hold is not a blind spot).
    let d = s.step(&snap(Some(5000)), t + TICK);
    assert_eq!(d.len(), 1, "{d:?}");
}

fn why_of(s: &State) -> String {
    s.status()[0].why.clone()
}

/// `status` always says why a policy is not moving, through the whole
/// loop: the state machine's position and what it waits for.
#[test]
fn the_status_says_why_a_policy_is_not_moving() {
    let c = config("");
    let mut s = State::new(&c, Protected::builtin(None), 1);
    let mut t = Duration::ZERO;
    assert_eq!(why_of(&s), "starting: no snapshot yet");
    run(&mut s, &mut t, 3, Some(3000));
    assert_eq!(why_of(&s), "over high 2ms for 0.2s of 1s");
    run(&mut s, &mut t, 8, Some(3000));
    assert_eq!(rung(&s), 1);
    assert_eq!(why_of(&s), "settling 2s");
    run(&mut s, &mut t, 5, Some(3000));
    assert_eq!(why_of(&s), "settling 1.5s");
    run(&mut s, &mut t, 20, Some(3000));
    assert_eq!(rung(&s), 2);
    assert_eq!(why_of(&s), "at top rung (over high 2ms)");
    run(&mut s, &mut t, 1, Some(1000));
    assert_eq!(
        why_of(&s),
        "between low 500us and high 2ms: holding (hysteresis)"
    );
    run(&mut s, &mut t, 1, None);
    assert_eq!(why_of(&s), "no data: holding rung 2");
    run(&mut s, &mut t, 3, Some(100));
    assert_eq!(why_of(&s), "under low 500us for 0.2s of 1s");
    run(&mut s, &mut t, 8, Some(100));
    let w = why_of(&s);
    let due = s.status()[0].next_step_down.expect("a step down is due");
    let wait = (due - (t - TICK)).as_secs_f64();
    assert_eq!(w, format!("waiting {wait:.1}s for the next step down"));
    // A catch-up interval is held, and said so.
    s.step(&snap_of(Some(100), 1), t - TICK + Duration::from_millis(1));
    assert_eq!(why_of(&s), "interval 1ms too short to judge: holding");
    run(&mut s, &mut t, 200, Some(100));
    assert_eq!(rung(&s), 0);
    assert_eq!(why_of(&s), "under low 500us: nothing in force");
    run(&mut s, &mut t, 1, None);
    assert_eq!(why_of(&s), "no data");
}

/// The holds that are not the watermarks': flap budget, a failed change,
/// a protected target, a rung still working.
#[test]
fn why_names_what_holds_a_policy() {
    let c = config("").policies[0].clone();
    let at = |ms| Some(Duration::from_millis(ms));
    let m = Memory {
        rung: 1,
        at: at(10_000),
        over_since: at(5_000),
        last_value: Some(3000.0),
        ..Memory::default()
    };
    assert_eq!(why(&c, &m), "over high 2ms: stepping up");
    let held = Memory {
        held: true,
        ..m.clone()
    };
    assert_eq!(why(&c, &held), "held: flap budget (6 changes in 60s)");
    let failed = Memory {
        failed: Some(Failure {
            rung: 2,
            change: Change::Impose,
            error: "EBUSY".into(),
            attempts: 1,
            retry_at: Duration::from_millis(11_200),
        }),
        ..m.clone()
    };
    assert_eq!(why(&c, &failed), "failed step up (rung 2) retried in 1.2s");
    let refused = Memory {
        refused: Some(2),
        ..m.clone()
    };
    assert_eq!(why(&c, &refused), "refused: rung 2's target is protected");
    let working = Memory {
        lowest_since_up: Some((2500.0, Duration::from_millis(9_600))),
        last_up: at(7_000),
        ..m.clone()
    };
    assert_eq!(
        why(&c, &working),
        "rung 1 still working: a new low 0.4s ago"
    );
}

#[test]
fn a_decision_says_which_way_it_moves_the_ladder() {
    let dirs = |d: &[Decision]| d.iter().map(Decision::direction).collect::<Vec<_>>();
    let c = config("");
    let mut s = State::new(&c, Protected::builtin(None), 7);
    let mut t = Duration::ZERO;
    let up = run(&mut s, &mut t, 40, Some(3000));
    assert_eq!(dirs(&up), [Direction::Up, Direction::Up]);
    let down = run(&mut s, &mut t, 200, Some(100));
    assert_eq!(dirs(&down), [Direction::Down, Direction::Down]);
    // Up again, then released by a reload that removes the policy.
    run(&mut s, &mut t, 40, Some(3000));
    let empty = Config {
        agent: c.agent.clone(),
        policies: vec![],
    };
    let (_, released) = s.reconcile(&empty, Protected::builtin(None), t);
    assert_eq!(dirs(&released), [Direction::Reset, Direction::Reset]);
    // And at shutdown.
    let mut s = State::new(&c, Protected::builtin(None), 7);
    run(&mut s, &mut t, 40, Some(3000));
    assert_eq!(dirs(&s.release_all(t)), [Direction::Reset; 2]);
    assert_eq!(
        [Direction::Up, Direction::Down, Direction::Reset].map(Direction::as_str),
        ["up", "down", "reset"]
    );
}
