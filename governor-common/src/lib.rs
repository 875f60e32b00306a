//! Types shared by the kernel programs (`governor-ebpf`) and the agent
//! (`governor`).
//!
//! Everything here is `#[repr(C)]`, has no padding and no `bool`, so that both
//! sides agree on the layout byte for byte.
#![no_std]

/// Indices into the per-CPU `COUNTERS` array map.
///
/// Each slot counts events seen by one probe on one CPU; the agent sums over
/// CPUs. They let the agent (and the tests) see that a probe is alive.
pub mod counter {
    /// `sched_switch` tracepoint hits.
    pub const SCHED_SWITCH: u32 = 0;
    /// Number of slots in the `COUNTERS` map.
    pub const LEN: u32 = 8;
}

/// Names of the programs and maps in the object, shared so that a rename on
/// one side is a compile error on the other rather than a load failure.
pub mod names {
    /// Tracepoint program counting context switches.
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    /// Per-CPU array of `u64` event counters, indexed by [`super::counter`].
    pub const MAP_COUNTERS: &str = "COUNTERS";
}
