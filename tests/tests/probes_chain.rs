//! The eBPF chain end to end: the embedded object loads, a program attaches
//! to `sched_switch`, its counter grows while we cause context switches, a
//! line it logs reaches the agent's log, and nothing stays attached after.

use std::{collections::BTreeSet, sync::mpsc, thread, time::Duration};

use governor::probes::{Probes, loaded_program_names};
use governor_integration::{CapturedLog, eventually, require_root};

/// Two threads hand a token back and forth `rounds` times: each hand-off
/// blocks one thread and wakes the other, so at least `2 * rounds` context
/// switches happen.
fn ping_pong(rounds: u32) {
    let (to_b, from_a) = mpsc::sync_channel::<u32>(0);
    let (to_a, from_b) = mpsc::sync_channel::<u32>(0);
    let b = thread::spawn(move || {
        while let Ok(n) = from_a.recv() {
            if to_a.send(n).is_err() {
                break;
            }
        }
    });
    for i in 0..rounds {
        to_b.send(i).expect("peer alive");
        from_b.recv().expect("peer answers");
    }
    drop(to_b);
    b.join().expect("peer thread");
}

#[test]
fn sched_switch_counter_grows_logs_reach_agent_and_nothing_stays_attached() {
    require_root();
    let log = CapturedLog::install();
    let before: BTreeSet<u32> = loaded_program_names()
        .into_iter()
        .map(|(id, _)| id)
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _guard = runtime.enter();

    let mut probes = Probes::load().expect("the embedded object loads");
    let forwarder = probes.spawn_log_forwarder().expect("aya-log wired");
    probes.attach_all().expect("probes attach");

    let ours: BTreeSet<u32> = loaded_program_names()
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !before.contains(id))
        .collect();
    assert!(
        !ours.is_empty(),
        "our sched_switch program is listed as loaded"
    );

    let switches = |p: &Probes| p.counters().expect("counters readable")["sched_switch"];
    let start = switches(&probes);
    const ROUNDS: u32 = 5_000;
    ping_pong(ROUNDS);
    let grown = switches(&probes) - start;
    assert!(
        grown >= u64::from(2 * ROUNDS),
        "sched_switch counter grew by {grown}, expected at least {} from the ping-pong",
        2 * ROUNDS
    );

    let line = log.wait_for("governor probes live", Duration::from_secs(3));
    assert!(
        line.is_some(),
        "the kernel program's aya-log line reached the agent's log"
    );

    forwarder.abort();
    drop(probes);
    drop(_guard);
    drop(runtime);

    let gone = eventually(Duration::from_secs(3), || {
        let now: BTreeSet<u32> = loaded_program_names()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ours.is_disjoint(&now)
    });
    assert!(
        gone,
        "programs {ours:?} are still loaded after the probes were dropped"
    );
}
