//! governor's kernel probes with the per-cgroup histogram map
//! preallocated: the same programs as `main.rs`. Used on kernels from 6.1
//! on hosts whose CPUs are few enough for the map to fit its memory budget
//! (the agent empties the map every tick; inserting and deleting through a
//! free list is cheaper than allocating per-CPU memory each time); kernels
//! before 6.1 get `legacy.rs`.
#![no_std]
#![no_main]

/// Histograms are preallocated.
const CGROUP_RUNQ_FLAGS: u32 = 0;

include!("probes.rs");
include!("task_storage.rs");
