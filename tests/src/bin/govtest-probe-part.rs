//! One piece of the BTF-tracepoint `sched_switch` probe, alone, for
//! `cargo xtask bench probes` (the profile of where a switch's nanoseconds
//! go): loads governor's embedded object, attaches the program `part_NAME`
//! (`governor-ebpf/src/parts.rs`) to `sched_switch`, prints `attached`, and
//! holds it until the process is ended (SIGINT, as the bench does), at
//! most `SECONDS` (600 by default).
//!
//! ```text
//! govtest-probe-part NAME [SECONDS]   # empty, counter, ktime, task_fields, storage, sched_info, …
//! govtest-probe-part --list
//! ```
//! Needs Linux 6.4 or later (task storage from a scheduler tracepoint) and
//! the kernel's BTF; the program runs on every context switch of the host
//! (it measures, it enforces nothing).

use std::{io::Write as _, path::Path, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use aya::{EbpfLoader, programs::BtfTracePoint};
use governor::probes::{OBJECT, btf::KernelBtf};
use governor_common::globals;

/// The pieces, as `parts.rs` names them (without `part_`).
const PARTS: &[&str] = &[
    "empty",
    "counter",
    "ktime",
    "task_fields",
    "storage",
    "storage_two",
    "cgroup_helper",
    "cgroup_btf",
    "hash_hist",
    "array_hist",
    "culprit_flag",
    "sched_info",
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("govtest-probe-part: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let arg = args
        .next()
        .context("usage: govtest-probe-part NAME [SECONDS] | --list")?;
    let seconds: u64 = match args.next() {
        Some(s) => s.parse().with_context(|| format!("SECONDS {s:?}"))?,
        None => 600,
    };
    if arg == "--list" {
        for p in PARTS {
            println!("{p}");
        }
        return Ok(());
    }
    if !PARTS.contains(&arg.as_str()) {
        bail!("no part {arg:?} (one of {})", PARTS.join(", "));
    }
    let kernel = KernelBtf::open(Path::new(governor::probes::btf::VMLINUX))
        .context("reading the kernel's BTF")?;
    let offsets = [
        (
            globals::TASK_PID,
            kernel.sized_member_offset("task_struct", &["pid"], &[4])?,
        ),
        (
            globals::TASK_STATE,
            kernel.sized_member_offset("task_struct", &["__state", "state"], &[4, 8])?,
        ),
    ];
    let [cgroups, dfl, kn, id] = kernel.cgroup_id_offsets()?;
    let chain = [
        (globals::TASK_CGROUPS, cgroups),
        (globals::CSS_SET_DFL_CGRP, dfl),
        (globals::CGROUP_KN, kn),
        (globals::KERNFS_NODE_ID, id),
    ];
    let [delay, queued, cfs_rq, rq, clock] = kernel.sched_info_offsets()?;
    let sched_info = [
        (globals::TASK_RUN_DELAY, delay),
        (globals::TASK_LAST_QUEUED, queued),
        (globals::TASK_SE_CFS_RQ, cfs_rq),
        (globals::CFS_RQ_RQ, rq),
        (globals::RQ_CLOCK, clock),
    ];
    let mut loader = EbpfLoader::new();
    loader.allow_unsupported_maps();
    for (name, off) in offsets.iter().chain(&chain).chain(&sched_info) {
        loader.override_global(name, off, true);
    }
    let mut ebpf = loader.load(OBJECT).context("loading governor's object")?;
    let name = format!("part_{arg}");
    let program: &mut BtfTracePoint = ebpf
        .program_mut(&name)
        .with_context(|| format!("no program {name} in the object"))?
        .try_into()?;
    let btf = aya::Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
    program
        .load("sched_switch", &btf)
        .with_context(|| format!("loading {name}"))?;
    program
        .attach()
        .with_context(|| format!("attaching {name} to sched_switch"))?;
    println!("attached {name}");
    std::io::stdout().flush()?;
    // The kernel detaches the program when the process ends, however.
    std::thread::sleep(Duration::from_secs(seconds));
    Ok(())
}
