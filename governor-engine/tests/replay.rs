//! Record and replay at the engine's boundary: a run driven through
//! [`Engine`] with the plant of the simulations, recorded frame by frame,
//! replayed from its encoding. With the recorded config the replay returns
//! every recorded decision, in order, to the nanosecond; with another it
//! returns what that config decides.

mod sim;

use std::time::Duration;

use governor_engine::{
    decide::DecisionKind,
    record::{self, DecisionRecord, Engine, Frame, Input, Watch},
};

const TICK: Duration = sim::TICK;

fn config(high: &str, with_port_policy: bool) -> String {
    let mut c = format!(
        r#"
[agent]
tick = "100ms"

[[policy]]
name = "api-over-batch"
signal = {{ kind = "runq_p99", cgroup = "{api}" }}
high = "{high}"
low = "500us"
for = "500ms"
settle = "1s"
recover_every = "2s"
jitter = 0.5
backoff = 2.0
backoff_max = "20s"
retrip_within = "10s"
backoff_reset = "5m"
flap_budget = 6
flap_window = "60s"
window = "1s"
ladder = [
  {{ action = "cpu_weight", cgroup = "/workload/batch", weight = "idle" }},
  {{ action = "cpu_limit", cgroup = "/workload/batch", cpus = 0.25 }},
]
"#,
        api = sim::API
    );
    if with_port_policy {
        c.push_str(&format!(
            r#"
[[policy]]
name = "shed"
signal = {{ kind = "accept_queue_fill", port = {port} }}
high = 0.5
low = 0.1
for = "200ms"
recover_every = "1s"
ladder = [{{ action = "reject_connections", port = {port} }}]
"#,
            port = sim::PORT
        ));
    }
    c
}

/// The waits of one tick whose p99 is about `p99_us`.
fn waits(p99_us: f64) -> Vec<u64> {
    let ns = (p99_us * 1000.0) as u64;
    let mut w = vec![ns / 5; 98];
    w.extend([ns, ns]);
    w
}

/// A live run: the plant under bursts of overload, a failed action (the
/// engine backs off), a reload (the port policy is removed, its rung
/// released) and the stop. Returns its frames as the agent records them.
fn live_run(seed: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut engine = Engine::new();
    let feed = |engine: &mut Engine, input: Input, frames: &mut Vec<Frame>| {
        let decisions: Vec<_> = engine
            .feed(&input)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_vec();
        frames.push(Frame {
            input,
            decisions: decisions.iter().map(DecisionRecord::from).collect(),
        });
        decisions
    };
    let start = Input::Start {
        config: config("2ms", true),
        source_name: "live.toml".into(),
        seed,
        agent_cgroup: None,
        started_unix_ms: 1_700_000_000_000,
        dry_run: false,
    };
    feed(&mut engine, start, &mut frames);
    let mut watch = Watch::of(engine.config().expect("started"));
    let mut plant = sim::Plant::new(true, 0.1, seed ^ 0x5eed);
    let mut accept = sim::AcceptPlant::new(0.05, seed ^ 0xacce);
    let (mut in_force, mut shed) = (0usize, 0usize);
    let mut failed_once = false;
    let dt = TICK.as_secs_f64();
    for tick in 0..1200u64 {
        let now = TICK * tick as u32;
        let t = tick as f64 * dt;
        if tick == 700 {
            let decisions = feed(
                &mut engine,
                Input::Reload {
                    now,
                    config: config("3ms", false),
                    source_name: "live.toml".into(),
                    dry_run: false,
                },
                &mut frames,
            );
            assert!(
                decisions.iter().all(|d| d.policy == "shed"),
                "only the removed policy is released: {decisions:?}"
            );
            watch = Watch::of(engine.config().expect("reloaded"));
        }
        // Overload in bursts: 0-20 s, 35-45 s, 80-95 s.
        let offered =
            if (0.0..20.0).contains(&t) || (35.0..45.0).contains(&t) || (80.0..95.0).contains(&t) {
                1000.0
            } else {
                300.0
            };
        let p99 = plant.tick(offered, in_force, dt);
        let depth = accept.tick(if t < 75.0 { 400.0 } else { 100.0 }, shed, dt);
        let mut snap = sim::runq_snapshot(tick, &waits(p99));
        snap.ports = sim::port_snapshot(tick, Some(depth), accept.backlog).ports;
        let snapshot = watch.filter(&snap);
        let decisions = feed(&mut engine, Input::Step { now, snapshot }, &mut frames);
        for (i, d) in decisions.iter().enumerate() {
            if !matches!(d.kind, DecisionKind::Applied | DecisionKind::Reverted) {
                continue;
            }
            // The first step to rung 2 fails (the actuators said no).
            let fail = d.to_rung == 2 && !failed_once;
            failed_once |= fail;
            if !fail {
                if d.policy == "shed" {
                    shed = d.to_rung;
                } else {
                    in_force = d.to_rung;
                }
            }
            feed(
                &mut engine,
                Input::Outcome {
                    now,
                    index: i as u32,
                    error: fail.then(|| "cpu.max: Device or resource busy".to_owned()),
                },
                &mut frames,
            );
        }
    }
    let now = TICK * 1200;
    feed(&mut engine, Input::ReleaseAll { now }, &mut frames);
    frames
}

/// What replaying `frames` through `engine` returns, frame by frame.
fn replay(engine: &mut Engine, frames: &[Frame]) -> Vec<Vec<DecisionRecord>> {
    frames
        .iter()
        .map(|f| {
            engine
                .feed(&f.input)
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(DecisionRecord::from)
                .collect()
        })
        .collect()
}

fn all(frames: &[Frame]) -> Vec<&DecisionRecord> {
    frames.iter().flat_map(|f| &f.decisions).collect()
}

fn encoded(frames: &[Frame]) -> Vec<u8> {
    let mut bytes = record::header();
    for f in frames {
        record::encode(f, &mut bytes);
    }
    bytes
}

#[test]
fn a_replay_with_the_recorded_config_returns_every_recorded_decision() {
    let live = live_run(42);
    let text = encoded(&live);
    let (frames, torn) = record::decode(&text).expect("decodes");
    assert!(!torn);
    assert_eq!(frames, live, "the encoding round-trips");

    // The run has what the identity must cover.
    let texts: Vec<&str> = all(&live).iter().map(|d| d.text.as_str()).collect();
    let count = |needle: &str| texts.iter().filter(|t| t.contains(needle)).count();
    let (applied, lifted) = (count(": applied "), count(": lifted "));
    println!(
        "{} frames, {} decisions ({applied} applied, {lifted} lifted), {} bytes ({} per tick)",
        live.len(),
        texts.len(),
        text.len(),
        text.len() / 1200
    );
    assert!(
        applied >= 4 && lifted >= 3,
        "trips and recoveries: {texts:#?}"
    );
    assert!(
        live.iter()
            .any(|f| matches!(&f.input, Input::Outcome { error: Some(_), .. })),
        "a failed action"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("policy shed:") && t.contains("removed")),
        "the reload released the removed policy: {texts:#?}"
    );

    let replayed = replay(&mut Engine::new(), &frames);
    for (i, (f, r)) in frames.iter().zip(&replayed).enumerate() {
        assert_eq!(
            &f.decisions,
            r,
            "frame {i} ({:?} at {:?})",
            kind(&f.input),
            f.input.now()
        );
    }

    // The jitter is in play: another seed steps down at other times.
    let other = live_run(43);
    assert_ne!(
        all(&live).iter().map(|d| &d.text).collect::<Vec<_>>(),
        all(&other).iter().map(|d| &d.text).collect::<Vec<_>>(),
        "the seed changes the run (jitter), so the identity is not trivial"
    );
}

fn kind(i: &Input) -> &'static str {
    match i {
        Input::Start { .. } => "start",
        Input::Segment { .. } => "segment",
        Input::Step { .. } => "step",
        Input::Outcome { .. } => "outcome",
        Input::Reload { .. } => "reload",
        Input::ReleaseAll { .. } => "release",
    }
}

#[test]
fn a_candidate_config_decides_on_what_the_host_saw_and_changes_nothing_recorded() {
    let live = live_run(42);
    // A candidate whose high watermark is above everything the plant did:
    // it never trips.
    let mut never = Engine::with_candidate(config("10s", false), "candidate.toml".into());
    let quiet: Vec<_> = replay(&mut never, &live).into_iter().flatten().collect();
    assert!(quiet.is_empty(), "{quiet:#?}");
    // A stricter one trips earlier than the live config did.
    let mut strict = Engine::with_candidate(config("1ms", false), "candidate.toml".into());
    let decided: Vec<_> = replay(&mut strict, &live).into_iter().flatten().collect();
    let first_up = |ds: &[&DecisionRecord]| {
        ds.iter()
            .find(|d| d.text.contains("policy api-over-batch: applied "))
            .map(|d| d.json.clone())
    };
    let live_all = all(&live);
    let cand: Vec<&DecisionRecord> = decided.iter().collect();
    assert!(first_up(&cand).is_some(), "the strict candidate trips");
    let at = |json: Option<String>| -> f64 {
        let v: serde_json::Value = serde_json::from_str(&json.expect("a trip")).expect("json");
        v["at"]["secs"].as_f64().unwrap_or(0.0) + v["at"]["nanos"].as_f64().unwrap_or(0.0) / 1e9
    };
    let (cand_at, live_at) = (at(first_up(&cand)), at(first_up(&live_all)));
    println!("first trip: live {live_at:.1}s, candidate (high 1ms) {cand_at:.1}s");
    assert!(cand_at <= live_at, "stricter trips no later");
}
