//! governor's kernel programs.
//!
//! Probes aggregate in the kernel (per-CPU counters and histograms); nothing
//! is sent to user space per event. Log lines (aya-log) are kept for rare
//! events: a probe coming alive on a CPU, and errors.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use aya_log_ebpf::info;
use governor_common::counter;

/// Per-CPU event counters, indexed by `governor_common::counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Per-CPU flag: has this CPU announced that its probes are live?
#[map(name = "ANNOUNCED")]
static ANNOUNCED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array; no other
        // program touches it concurrently on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Logs once per CPU that the probes are running there, so that the agent's
/// log shows the kernel side is alive (and aya-log is wired).
#[inline(always)]
fn announce(ctx: &TracePointContext) {
    if let Some(flag) = ANNOUNCED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe {
            if *flag == 0 {
                *flag = 1;
                info!(ctx, "governor probes live on this cpu (sched_switch)");
            }
        }
    }
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    bump(counter::SCHED_SWITCH);
    announce(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
