//! governor's kernel probes.
//!
//! Probes aggregate in the kernel (per-CPU counters and histograms); nothing
//! is sent to user space per event. Log lines (aya-log) are kept for rare
//! events: a probe coming alive on a CPU.
//!
//! Portability: fields are read at offsets the agent parses from tracefs
//! `format` files or resolves from BTF on the running kernel and sets as
//! read-only globals before loading (no kernel struct offsets are compiled
//! in).
//!
//! Run-queue latency: a task's wait starts when it is woken
//! (`sched_wakeup`, `sched_wakeup_new`) or preempted while still runnable
//! (`sched_switch` with a runnable `prev_state`), and ends when it is
//! switched in. The histogram is keyed by the task's cgroup. The BTF
//! variant reads the cgroup of the task coming in from its typed pointer
//! (`task->cgroups->dfl_cgrp->kn->id`) and adds the wait there; the raw
//! and classic variants cannot, since a `sched_switch` runs in the context
//! of the task going *out*: they park the wait in its `TASKS` entry and
//! attribute it when the task next goes out, where
//! `bpf_get_current_cgroup_id` names its cgroup exactly.
//!
//! The scheduler probes come in three variants: BTF tracepoints with each
//! task's wait in its task storage (`task_storage.rs`; cheapest: typed task
//! pointers, plain loads, no hash), attached from Linux 6.4, where
//! `sched_switch` alone takes each wait from the kernel's own `sched_info`
//! (no wake-up probe, no clock read) wherever BTF describes it; raw
//! tracepoints (no trace record is built), which read
//! `task_struct.pid`/`__state` at offsets the agent resolves from the
//! kernel's BTF at load time and keep waits in the `TASKS` LRU hash; and
//! classic tracepoints reading record fields, for kernels without BTF.
#![no_std]
#![no_main]

/// Histograms are allocated on demand (kernels ≥ 6.1).
const CGROUP_RUNQ_FLAGS: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

include!("probes.rs");
include!("task_storage.rs");
include!("parts.rs");
