//! Test fixture of the record modules: a policy config and runs of it as
//! the engine decided them, frame by frame.

use std::time::Duration;

use governor_engine::{
    record::{DecisionRecord, Engine, Frame, Input, Watch},
    snapshot::{CgroupPath, CgroupStats, RunqHist, Snapshot},
};

/// One run-queue policy on `/workload/api` with a two-rung ladder.
pub const LIVE: &str = r#"
[[policy]]
name = "api"
signal = { kind = "runq_p99", cgroup = "/workload/api" }
high = "2ms"
low = "500us"
for = "300ms"
recover_every = "1s"
jitter = 0.3
window = "500ms"
ladder = [
  { action = "cpu_weight", cgroup = "/workload/batch", weight = "idle" },
  { action = "cpu_limit", cgroup = "/workload/batch", cpus = 0.25 },
]
"#;

/// The Unix time (ms) the runs start at.
pub const T0: u64 = 1_700_000_000_000;

/// Tick `tick` (100 ms each) in which `/workload/api`'s tasks waited
/// `wait_us` each, 50 times.
pub fn snap(tick: u64, wait_us: u64) -> Snapshot {
    let hist = RunqHist::from_waits_ns(std::iter::repeat_n(wait_us * 1000, 50));
    let mut s = Snapshot {
        ts_ms: tick * 100,
        interval_ms: 100,
        ..Default::default()
    };
    s.host.runq = Some(Default::default());
    s.host.runq_hist = Some(RunqHist::default());
    s.cgroups.push(CgroupStats {
        path: CgroupPath::new("/workload/api").expect("a cgroup path"),
        id: 1,
        runq: hist.stats(),
        runq_hist: Some(hist),
        conn_out: 0,
        conn_out_per_s: 0.0,
        psi: None,
        throttling: None,
        culprits: Vec::new(),
    });
    s
}

/// A run of `ticks` ticks of [`LIVE`] (seed 3, started at [`T0`]) as the
/// engine decided it: `wait_us(tick)` each tick, `reloads` (tick, config)
/// fed before their tick, and a release at the end.
pub fn run(ticks: u64, wait_us: impl Fn(u64) -> u64, reloads: &[(u64, &str)]) -> Vec<Frame> {
    let mut e = Engine::new();
    let mut frames = Vec::new();
    let mut feed = |e: &mut Engine, input: Input| {
        let decisions = e
            .feed(&input)
            .expect("the engine takes the input")
            .iter()
            .map(DecisionRecord::from)
            .collect();
        frames.push(Frame { input, decisions });
    };
    feed(
        &mut e,
        Input::Start {
            config: LIVE.into(),
            source_name: "live.toml".into(),
            seed: 3,
            agent_cgroup: None,
            started_unix_ms: T0,
            dry_run: false,
        },
    );
    let watch = Watch::of(e.config().expect("started"));
    for tick in 0..ticks {
        let now = Duration::from_millis(tick * 100);
        for (_, config) in reloads.iter().filter(|(t, _)| *t == tick) {
            feed(
                &mut e,
                Input::Reload {
                    now,
                    config: (*config).to_owned(),
                    source_name: "live.toml".into(),
                    dry_run: false,
                },
            );
        }
        feed(
            &mut e,
            Input::Step {
                now,
                snapshot: watch.filter(&snap(tick, wait_us(tick))),
            },
        );
    }
    feed(
        &mut e,
        Input::ReleaseAll {
            now: Duration::from_millis(ticks * 100),
        },
    );
    frames
}
