//! governor's kernel probes for kernels before 6.1: the per-cgroup
//! histogram map preallocated (they deadlock when a scheduler tracepoint
//! allocates map memory), and no task-storage programs (a kernel before
//! 5.11 cannot create the map, which would fail the whole object; from
//! 5.11 to 6.0 the agent would not attach them anyway). Otherwise the
//! programs of `main.rs`.
#![no_std]
#![no_main]

/// Histograms are preallocated.
const CGROUP_RUNQ_FLAGS: u32 = 0;

include!("probes.rs");
