//! Writes a synthetic recording, as `governor run` would have recorded it:
//! `POLICIES` policies, each on the run-queue p99 of its own cgroup, over
//! `HOURS` of 100 ms ticks, with an overload of each cgroup for a minute
//! every ten (phase-shifted per policy), so that every policy trips and
//! recovers all day. For `cargo xtask bench replay`.
//!
//! ```text
//! synth_recording DIR HOURS POLICIES
//! ```

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use flate2::{Compression, write::GzEncoder};
use governor_engine::{
    record::{self, DecisionRecord, Engine, Frame, Input, Watch},
    snapshot::{CgroupPath, CgroupStats, RunqHist, RunqStats, Snapshot},
};
use rand::{RngExt as _, SeedableRng as _};

const TICK: Duration = Duration::from_millis(100);
const STARTED: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn config(policies: usize) -> String {
    let mut c = String::from("[agent]\ntick = \"100ms\"\n");
    for i in 0..policies {
        c.push_str(&format!(
            r#"
[[policy]]
name = "p{i}"
signal = {{ kind = "runq_p99", cgroup = "/bench/c{i}" }}
high = "2ms"
low = "500us"
for = "500ms"
settle = "2s"
recover_every = "5s"
jitter = 0.3
ladder = [
  {{ action = "cpu_weight", cgroup = "/bench/batch{i}", weight = "idle" }},
  {{ action = "cpu_limit", cgroup = "/bench/batch{i}", cpus = 0.5 }},
]
"#
        ));
    }
    c
}

struct Writer {
    dir: PathBuf,
    gz: Option<GzEncoder<std::fs::File>>,
    line: Vec<u8>,
    bytes_in: u64,
}

impl Writer {
    fn segment(&mut self, start_ms: u64) -> std::io::Result<()> {
        if let Some(gz) = self.gz.take() {
            gz.finish()?;
        }
        let path = self.dir.join(format!("rec-{start_ms:013}.gvr.gz"));
        let mut gz = GzEncoder::new(std::fs::File::create(path)?, Compression::new(6));
        gz.write_all(&record::header())?;
        self.gz = Some(gz);
        Ok(())
    }

    fn frame(&mut self, f: &Frame) -> std::io::Result<()> {
        self.line.clear();
        record::encode(f, &mut self.line);
        self.bytes_in += self.line.len() as u64;
        match self.gz.as_mut() {
            Some(gz) => gz.write_all(&self.line),
            None => Ok(()),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, hours, policies) = match args.as_slice() {
        [_, d, h, p] => (
            Path::new(d).to_path_buf(),
            h.parse::<u64>()?,
            p.parse::<usize>()?,
        ),
        _ => return Err("usage: synth_recording DIR HOURS POLICIES".into()),
    };
    std::fs::create_dir_all(&dir)?;
    let text = config(policies);
    let mut engine = Engine::new();
    let mut w = Writer {
        dir,
        gz: None,
        line: Vec::with_capacity(1 << 16),
        bytes_in: 0,
    };
    w.segment(STARTED)?;
    let start = Input::Start {
        config: text.clone(),
        source_name: "/etc/governor/governor.toml".into(),
        seed: 7,
        agent_cgroup: None,
        started_unix_ms: STARTED,
        dry_run: false,
    };
    engine.feed(&start)?;
    w.frame(&Frame {
        input: start,
        decisions: vec![],
    })?;
    let watch = Watch::of(engine.config().ok_or("started")?);
    let paths: Vec<CgroupPath> = (0..policies)
        .map(|i| CgroupPath::new(&format!("/bench/c{i}")))
        .collect::<Result<_, _>>()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let ticks = hours * 36_000;
    let mut decisions = 0usize;
    let mut waits = Vec::with_capacity(64);
    for tick in 0..ticks {
        let now = TICK * tick as u32;
        if tick > 0 && tick % 36_000 == 0 {
            let at = STARTED + tick * 100;
            w.segment(at)?;
            w.frame(&Frame {
                input: Input::Segment {
                    config: text.clone(),
                    source_name: "/etc/governor/governor.toml".into(),
                    seed: 7,
                    agent_cgroup: None,
                    started_unix_ms: STARTED,
                    now,
                    dry_run: false,
                },
                decisions: vec![],
            })?;
        }
        let mut s = Snapshot {
            ts_ms: STARTED + tick * 100,
            interval_ms: 100,
            ..Default::default()
        };
        s.host.runq = Some(RunqStats::default());
        s.host.runq_hist = Some(RunqHist::default());
        for (i, path) in paths.iter().enumerate() {
            // Overloaded one minute in ten, shifted by policy.
            let phase = (tick / 10 + i as u64 * 37) % 600;
            let base_us = if phase < 60 { 4_000.0 } else { 150.0 };
            waits.clear();
            for _ in 0..40 {
                let x: f64 = rng.random::<f64>();
                waits.push((base_us * (0.2 + 1.6 * x) * 1000.0) as u64);
            }
            let hist = RunqHist::from_waits_ns(waits.iter().copied());
            s.cgroups.push(CgroupStats {
                path: path.clone(),
                id: 100 + i as u64,
                runq: hist.stats(),
                runq_hist: Some(hist),
                conn_out: 0,
                conn_out_per_s: 0.0,
                psi: None,
                throttling: None,
                culprits: Vec::new(),
            });
        }
        let input = Input::Step {
            now,
            snapshot: watch.filter(&s),
        };
        let ds: Vec<DecisionRecord> = engine
            .feed(&input)?
            .iter()
            .map(DecisionRecord::from)
            .collect();
        decisions += ds.len();
        w.frame(&Frame {
            input,
            decisions: ds,
        })?;
    }
    let stop = Input::ReleaseAll {
        now: TICK * ticks as u32,
    };
    let ds = engine
        .feed(&stop)?
        .iter()
        .map(DecisionRecord::from)
        .collect();
    w.frame(&Frame {
        input: stop,
        decisions: ds,
    })?;
    if let Some(gz) = w.gz.take() {
        gz.finish()?;
    }
    println!(
        "ticks={ticks} policies={policies} decisions={decisions} bytes_in={}",
        w.bytes_in
    );
    Ok(())
}
