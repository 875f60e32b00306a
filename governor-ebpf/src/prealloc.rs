//! governor's kernel probes for kernels before 6.1: the same programs as
//! `main.rs`, with the per-cgroup histogram map preallocated (those kernels
//! deadlock when a scheduler tracepoint allocates map memory).
#![no_std]
#![no_main]

/// Histograms are preallocated (kernels < 6.1).
const CGROUP_RUNQ_FLAGS: u32 = 0;

include!("probes.rs");
