// The pieces of the BTF-tracepoint `sched_switch`, each alone as a program
// of its own, for `cargo xtask bench probes`: attached one at a time to
// `sched_switch` (by `govtest-probe-part`, never by the agent), the
// kernel's bpf_stats then say what each piece costs a run on this host, in
// the same run as the full program. Included by `main.rs` only, after
// `probes.rs` and `task_storage.rs`, whose maps and helpers they use; they
// add no map, and a program the agent does not load costs nothing.
//
// Each piece keeps its result alive with a volatile store to the stack
// (one instruction), so that LLVM cannot drop the work.

/// Keeps `v` alive: a volatile store the compiler cannot remove.
#[inline(always)]
fn keep(v: u64) {
    let mut sink = 0u64;
    // SAFETY: a store to a local.
    unsafe { core::ptr::write_volatile(&mut sink, v) };
}

/// The floor: a program that does nothing (bpf_stats' own cost and the
/// trampoline's).
#[btf_tracepoint(function = "sched_switch")]
pub fn part_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// This CPU's counters: a per-CPU array lookup and an increment
/// (`switch_seen`).
#[btf_tracepoint(function = "sched_switch")]
pub fn part_counter(_ctx: BtfTracePointContext) -> i32 {
    bump(counter::SCHED_SWITCH);
    0
}

/// The clock (`bpf_ktime_get_ns`).
#[btf_tracepoint(function = "sched_switch")]
pub fn part_ktime(_ctx: BtfTracePointContext) -> i32 {
    // SAFETY: no preconditions.
    keep(unsafe { bpf_ktime_get_ns() });
    0
}

/// The arguments: `prev`'s and `next`'s pid and `prev`'s state, plain
/// loads from the typed task pointers.
#[btf_tracepoint(function = "sched_switch")]
pub fn part_task_fields(ctx: BtfTracePointContext) -> i32 {
    let prev: *mut task_struct = ctx.arg(1);
    let next: *mut task_struct = ctx.arg(2);
    let (p, n) = (Task::new(prev), Task::new(next));
    keep(u64::from(p.pid) + u64::from(n.pid) + u64::from(task_field(prev, &OFF_TASK_STATE)));
    0
}

/// One task-storage lookup (`next`'s entry, created at its first switch).
#[btf_tracepoint(function = "sched_switch")]
pub fn part_storage(ctx: BtfTracePointContext) -> i32 {
    let next: *mut task_struct = ctx.arg(2);
    keep(TASK_WAITS.get(next, true).map_or(0, |p| p as u64));
    0
}

/// Two task-storage lookups (`prev`'s and `next`'s), what a switch costs
/// when the task going out stays runnable.
#[btf_tracepoint(function = "sched_switch")]
pub fn part_storage_two(ctx: BtfTracePointContext) -> i32 {
    let prev: *mut task_struct = ctx.arg(1);
    let next: *mut task_struct = ctx.arg(2);
    let a = TASK_WAITS.get(prev, true).map_or(0, |p| p as u64);
    let b = TASK_WAITS.get(next, true).map_or(0, |p| p as u64);
    // Each alone: the verifier refuses arithmetic on two pointers.
    keep(a);
    keep(b);
    0
}

/// `current`'s cgroup id by the helper (what the raw variant calls).
#[btf_tracepoint(function = "sched_switch")]
pub fn part_cgroup_helper(_ctx: BtfTracePointContext) -> i32 {
    // SAFETY: no preconditions.
    keep(unsafe { bpf_get_current_cgroup_id() });
    0
}

/// `next`'s cgroup id through BTF loads (what the BTF variant reads).
#[btf_tracepoint(function = "sched_switch")]
pub fn part_cgroup_btf(ctx: BtfTracePointContext) -> i32 {
    let next: *mut task_struct = ctx.arg(2);
    keep(task_cgroup_id(next));
    0
}

/// A cgroup's histogram in the per-CPU hash (one cgroup's entry, present
/// after the first run) and a bucket increment: `add_cgroup_wait`.
#[btf_tracepoint(function = "sched_switch")]
pub fn part_hash_hist(_ctx: BtfTracePointContext) -> i32 {
    add_cgroup_wait(None, 1, 4096);
    0
}

/// The host histogram: a per-CPU array lookup and a bucket increment (what
/// a cgroup's histogram slot, `SLOT_RUNQ`, costs instead of the hash).
#[btf_tracepoint(function = "sched_switch")]
pub fn part_array_hist(_ctx: BtfTracePointContext) -> i32 {
    if let Some(h) = HOST_RUNQ.get_ptr_mut(0) {
        hist_add(h, 4096);
    }
    0
}

/// Is culprit bookkeeping on? (A plain array lookup.)
#[btf_tracepoint(function = "sched_switch")]
pub fn part_culprit_flag(_ctx: BtfTracePointContext) -> i32 {
    keep(u64::from(culprits_on()));
    0
}

/// The kernel's own accounting of `next`'s wait: its run queue's clock
/// (`se.cfs_rq->rq->clock`) and its `sched_info.last_queued` and
/// `run_delay`, plain loads (what the sched_info variant reads instead of
/// the clock and the wake-up probes).
#[btf_tracepoint(function = "sched_switch")]
pub fn part_sched_info(ctx: BtfTracePointContext) -> i32 {
    let next: *mut task_struct = ctx.arg(2);
    let t = next.cast_const().cast::<u8>();
    keep(rq_clock(next) ^ btf_u64(t, &OFF_TASK_LAST_QUEUED) ^ btf_u64(t, &OFF_TASK_RUN_DELAY));
    0
}
