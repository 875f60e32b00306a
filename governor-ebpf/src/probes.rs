// The probes' body, included by `main.rs` and `prealloc.rs`, which differ
// only in CGROUP_RUNQ_FLAGS.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::info;
use governor_common::{
    CpuCounters, TaskWait, counter,
    culprits::{self, Key as CulpritKey, Split},
    hist::{self, Hist},
    limits,
};

// Field offsets, set by the agent from tracefs `format` files at load time.
#[unsafe(no_mangle)]
static OFF_SWITCH_PREV_PID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SWITCH_PREV_STATE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SWITCH_NEXT_PID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_WAKEUP_PID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_WAKEUP_NEW_PID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SOCK_OLDSTATE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SOCK_NEWSTATE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SOCK_SPORT: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SOCK_PROTOCOL: u32 = 0;
/// `task_struct.pid` offset, from BTF (raw tracepoints only).
#[unsafe(no_mangle)]
static OFF_TASK_PID: u32 = 0;
/// `task_struct.tgid` offset, from BTF (BTF tracepoints, per-process waits).
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u32 = 0;
/// 1: keep a run-queue histogram per process in `PROC_RUNQ` (set at load
/// by `governor observe --processes`; the agent leaves it 0).
#[unsafe(no_mangle)]
static PROCS_ON: u32 = 0;
/// `task_struct.__state` (or `.state` before 5.14) offset, from BTF.
#[unsafe(no_mangle)]
static OFF_TASK_STATE: u32 = 0;
/// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn` and
/// `kernfs_node.id` offsets, from BTF: the chain to a task's cgroup2 id
/// (BTF tracepoints only, `task_storage.rs`).
#[unsafe(no_mangle)]
static OFF_TASK_CGROUPS: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CSS_SET_DFL_CGRP: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: u32 = 0;
#[unsafe(no_mangle)]
static OFF_KERNFS_NODE_ID: u32 = 0;
/// `task_struct.sched_info.run_delay` and `.last_queued`,
/// `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock` offsets, from BTF:
/// the kernel's own run-queue accounting, which the BTF `sched_switch`
/// reads instead of timing waits itself where `SCHED_INFO_KNOWN` is 1
/// (`task_storage.rs`).
#[unsafe(no_mangle)]
static OFF_TASK_RUN_DELAY: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_LAST_QUEUED: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_SE_CFS_RQ: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CFS_RQ_RQ: u32 = 0;
#[unsafe(no_mangle)]
static OFF_RQ_CLOCK: u32 = 0;
/// 1 once the five above are set (and the wake-up probes are not attached).
#[unsafe(no_mangle)]
static SCHED_INFO_KNOWN: u32 = 0;
/// `struct sock`'s `__sk_common.skc_num` (local port, host order), from BTF.
#[unsafe(no_mangle)]
static OFF_SK_NUM: u32 = 0;
/// `struct sock.sk_protocol` (`u16`), from BTF.
#[unsafe(no_mangle)]
static OFF_SK_PROTOCOL: u32 = 0;
/// `struct sock` → `struct net *` (`__sk_common.skc_net.net`), from BTF.
#[unsafe(no_mangle)]
static OFF_SK_NET: u32 = 0;
/// `struct net` → `ns.inum`, from BTF.
#[unsafe(no_mangle)]
static OFF_NET_INUM: u32 = 0;
/// 1 once the two above are set.
#[unsafe(no_mangle)]
static NETNS_KNOWN: u32 = 0;
/// 1 once the agent has set the offsets above.
#[unsafe(no_mangle)]
static CONFIGURED: u32 = 0;

#[inline(always)]
fn global(v: &u32) -> u32 {
    // SAFETY: a read of a read-only global the loader patched in.
    unsafe { core::ptr::read_volatile(v) }
}

/// Per-CPU event counters (indexed by `governor_common::counter`) and the
/// flag saying this CPU announced that its probes are live: one lookup.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<CpuCounters> = PerCpuArray::with_max_entries(1, 0);

/// Watched cgroups (id → 1), set by the agent: whose waits are attributed
/// to the cgroup that held the CPU (`CULPRITS`).
#[map(name = "WATCHED")]
static WATCHED: HashMap<u64, u8> = HashMap::with_max_entries(limits::MAX_WATCHED, 0);

/// `[culprits::CONF_WATCHED]`: how many cgroups `WATCHED` holds; while 0 the
/// probes skip culprit bookkeeping (an array lookup the verifier inlines).
/// `[culprits::CONF_GEN]`: the slot generation (`task_storage.rs`).
#[map(name = "CULPRIT_CONF")]
static CULPRIT_CONF: Array<u32> = Array::with_max_entries(culprits::CONF_LEN, 0);

/// Run-queue wait (ns) of a watched cgroup by each cgroup that held the CPU
/// during it (the part it ran), emptied by the agent every tick. Preallocated in
/// both objects (inserted from `sched_switch`).
#[map(name = "CULPRITS")]
static CULPRITS: PerCpuHashMap<CulpritKey, u64> =
    PerCpuHashMap::with_max_entries(limits::MAX_CULPRITS, 0);

/// Per task (pid): when its current wait started, and the last wait not yet
/// attributed to a cgroup. One entry per task, updated in place, so a
/// context switch costs two lookups; LRU evicts the entries of dead tasks.
#[map(name = "TASKS")]
static TASKS: LruHashMap<u32, TaskWait> = LruHashMap::with_max_entries(limits::MAX_WAITING, 0);

/// Host-wide run-queue histogram.
#[map(name = "HOST_RUNQ")]
static HOST_RUNQ: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// Per-cgroup run-queue histograms (cgroup id → hist) since the agent last
/// took them out (it empties this map every tick; an entry is inserted
/// again at its cgroup's next wait). In the `governor` object it is not
/// preallocated: memory grows with the cgroups that ran something in a
/// tick, up to MAX_CGROUPS (per tick). The `governor-prealloc` object preallocates it,
/// sized by the agent from the number of CPUs at load time: on kernels
/// before 6.1, which cannot allocate map memory safely from scheduler
/// tracepoints (they deadlock in kfree), and wherever it fits the budget
/// (cheaper inserts and deletes).
#[map(name = "CGROUP_RUNQ")]
static CGROUP_RUNQ: PerCpuHashMap<u64, Hist> =
    PerCpuHashMap::with_max_entries(limits::MAX_CGROUPS, CGROUP_RUNQ_FLAGS);

/// Run-queue histograms per process (tgid → hist) since the reader last
/// took them out, while `PROCS_ON` is 1; one entry unless the loader sizes
/// it (`governor observe --processes` does).
#[map(name = "PROC_RUNQ")]
static PROC_RUNQ: PerCpuHashMap<u32, Hist> = PerCpuHashMap::with_max_entries(1, CGROUP_RUNQ_FLAGS);

/// An empty histogram to insert from (the BPF stack is too small for one).
#[map(name = "HIST_ZERO")]
static HIST_ZERO: Array<Hist> = Array::with_max_entries(1, 0);

/// Outbound connects per cgroup (cgroup id → count), emptied by the agent every tick.
#[map(name = "CGROUP_CONNECTS")]
static CGROUP_CONNECTS: PerCpuHashMap<u64, u64> =
    PerCpuHashMap::with_max_entries(limits::MAX_CGROUPS, 0);

/// Completed handshakes per (network namespace, local port) →  count
/// (`governor_common::port_key`), emptied by the agent every tick.
#[map(name = "PORT_ACCEPTS")]
static PORT_ACCEPTS: PerCpuHashMap<u64, u64> =
    PerCpuHashMap::with_max_entries(limits::MAX_PORTS, 0);

/// This CPU's counters.
#[inline(always)]
fn cpu() -> Option<*mut CpuCounters> {
    COUNTERS.get_ptr_mut(0)
}

#[inline(always)]
fn bump_in(c: Option<*mut CpuCounters>, index: u32) {
    if let Some(c) = c {
        // SAFETY: this CPU's value of a per-CPU array; programs do not nest on a CPU.
        unsafe {
            if let Some(slot) = (*c).counts.get_mut(index as usize) {
                *slot += 1;
            }
        }
    }
}

#[inline(always)]
fn bump(index: u32) {
    bump_in(cpu(), index);
}

/// Adds one to a per-CPU hash counter, inserting it if absent; counts a full map.
#[inline(always)]
fn bump_keyed<K>(map: &PerCpuHashMap<K, u64>, key: &K, full: u32) {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe { *v += 1 };
    } else if map.insert(key, 1u64, 0).is_err() {
        bump(full);
    }
}

/// Adds a wait of `ns` to its bucket. The bucket is computed here, per
/// histogram, not once per wait: with one bucket for several histograms
/// LLVM merged their bounds checks, and the 5.10 verifier, which walks
/// the branch it cannot take (an impossible range), then refused the
/// access ("R0 invalid mem access 'inv'").
#[inline(always)]
fn hist_add(h: *mut Hist, ns: u64) {
    let b = hist::bucket(ns);
    if b < hist::BUCKETS {
        // SAFETY: `h` points at this CPU's value of a per-CPU map; `b` is in bounds.
        unsafe { (*h).counts[b] += 1 };
    }
}

/// Counts a `sched_switch` and logs once per CPU that the probes run
/// there: shows the kernel side is alive and that aya-log reaches the
/// agent. Returns this CPU's counters.
#[inline(always)]
fn switch_seen<C: aya_ebpf::EbpfContext>(ctx: &C) -> Option<*mut CpuCounters> {
    let c = cpu()?;
    // SAFETY: this CPU's value of a per-CPU array.
    unsafe {
        (*c).counts[counter::SCHED_SWITCH as usize] += 1;
        if (*c).announced == 0 {
            (*c).announced = 1;
            info!(ctx, "governor probes live on this cpu (sched_switch)");
        }
    }
    Some(c)
}

#[inline(always)]
fn read_u32(ctx: &TracePointContext, off: &u32) -> Option<u32> {
    // SAFETY: bpf_probe_read of the tracepoint record at an offset from its format file.
    unsafe { ctx.read_at::<u32>(global(off) as usize).ok() }
}

/// Where a task's [`TaskWait`] lives: `TASKS` by pid ([`Pid`]), or the
/// task's own storage (`task_storage.rs`, kernels that have it).
trait TaskSlot: Copy {
    /// Can [`TaskSlot::cgroup`] name the task's cgroup at its switch-in?
    /// Then a wait is attributed there and a task going to sleep needs no
    /// lookup; else it is parked in the entry until the task's switch-out,
    /// where `bpf_get_current_cgroup_id` names its cgroup.
    const CGROUP_AT_SWITCH_IN: bool;
    /// The task's cgroup2 id (0: unknown; only if `CGROUP_AT_SWITCH_IN`).
    fn cgroup(self) -> u64;
    /// The idle task (pid 0): it never waits.
    fn idle(self) -> bool;
    /// The task's process id (0: unknown; only if `CGROUP_AT_SWITCH_IN`).
    fn tgid(self) -> u32;
    /// The task's entry, if it has one.
    fn get(self) -> Option<*mut TaskWait>;
    /// Gives the task an entry whose wait starts at `now` (it had none).
    fn start_new(self, now: u64);
}

/// A task by pid: its entry is in the `TASKS` LRU hash.
#[derive(Clone, Copy)]
struct Pid(u32);

impl TaskSlot for Pid {
    const CGROUP_AT_SWITCH_IN: bool = false;

    #[inline(always)]
    fn cgroup(self) -> u64 {
        0
    }

    #[inline(always)]
    fn idle(self) -> bool {
        self.0 == 0
    }

    #[inline(always)]
    fn tgid(self) -> u32 {
        0
    }

    #[inline(always)]
    fn get(self) -> Option<*mut TaskWait> {
        TASKS.get_ptr_mut(self.0)
    }

    #[inline(always)]
    fn start_new(self, now: u64) {
        let t = TaskWait {
            start_ns: now,
            pending_ns: 0,
            culprits: Split::default(),
            cgroup_slot: governor_common::slots::Cached::default(),
            process_slot: governor_common::slots::Cached::default(),
        };
        if TASKS.insert(self.0, t, 0).is_err() {
            bump(counter::START_MAP_FULL);
        }
    }
}

/// A wait starts now for `task` (woken, or preempted while runnable).
#[inline(always)]
fn wait_starts<T: TaskSlot>(task: T, now: u64) {
    if task.idle() {
        return;
    }
    if let Some(t) = task.get() {
        // SAFETY: a value pointer from a lookup; a task runs on one CPU at a time.
        unsafe { (*t).start_ns = now };
    } else {
        task.start_new(now);
    }
}

/// Is culprit bookkeeping on (some cgroup watched)?
#[inline(always)]
fn culprits_on() -> bool {
    CULPRIT_CONF
        .get(culprits::CONF_WATCHED)
        .is_some_and(|n| *n != 0)
}

/// Charges cgroup `victim`'s wait, if it is watched, to the cgroups that
/// held the CPU during it, each its part.
#[inline(always)]
fn add_culprit_waits(c: Option<*mut CpuCounters>, victim: u64, split: &Split) {
    // SAFETY: a lookup; no preconditions.
    if unsafe { WATCHED.get(victim) }.is_none() {
        return;
    }
    charge_culprits(c, victim, split);
}

/// Charges watched cgroup `victim`'s wait to the cgroups that held the
/// CPU during it, each its part.
#[inline(always)]
fn charge_culprits(c: Option<*mut CpuCounters>, victim: u64, split: &Split) {
    // The slots in use: up to the first with 0 ns.
    let mut j = 0;
    while j < culprits::SLOTS {
        let waited = split.ns[j];
        if waited == 0 {
            break;
        }
        let key = CulpritKey {
            victim,
            culprit: split.cg[j],
        };
        if let Some(v) = CULPRITS.get_ptr_mut(key) {
            // SAFETY: this CPU's value of a per-CPU hash entry.
            unsafe { *v += waited };
        } else if CULPRITS.insert(key, waited, 0).is_err() {
            bump_in(c, counter::CULPRIT_MAP_FULL);
        }
        j += 1;
    }
}

/// A context switch: `prev` goes out (it is `current`), `next` comes in.
///
/// `next`'s wait ends now. Where its cgroup can be read from the task
/// ([`TaskSlot::CGROUP_AT_SWITCH_IN`], the BTF variant) the wait is added
/// to that cgroup's histogram here, and `prev` is looked up only if it
/// stays runnable (its wait starts now). Otherwise the wait is parked in
/// `next`'s entry and attributed when `next` goes out in turn, where
/// `bpf_get_current_cgroup_id` names its cgroup exactly; so `prev` is
/// always looked up.
///
/// Culprits (while some cgroup is watched): the run of `prev` that ends
/// now is logged in this CPU's ring of runs (`CpuCounters::runs`; the idle
/// task's as [`culprits::IDLE`]), and `next`'s wait is split among the
/// logged runs it overlaps, each cgroup charged its overlap
/// (`RunLog::split`); the split is charged with the wait, if `next`'s
/// cgroup is watched. A run of `next`'s own cgroup is charged to itself.
///
/// Approximations: a waiter that migrated is charged for the runs of the CPU
/// it got, though it waited on that CPU only if it was enqueued there; and
/// right after the first cgroup is watched, a split may be missing or
/// stale (the log and the split are kept only while some cgroup is).
#[inline(always)]
fn on_switch<T: TaskSlot>(
    c: Option<*mut CpuCounters>,
    prev: T,
    prev_runnable: bool,
    next: T,
    now: u64,
) {
    let on = culprits_on();
    // `current`'s cgroup: looked up at most once (0: not yet; no cgroup
    // has id 0). Not an `Option`: LLVM may load its payload before testing
    // it, and older verifiers (6.1 here) reject that read of an unwritten
    // stack slot.
    let mut cg: u64 = 0;
    if T::CGROUP_AT_SWITCH_IN {
        if prev_runnable {
            // (A no-op for the idle task.)
            wait_starts(prev, now);
        }
    } else if !prev.idle() {
        if let Some(t) = prev.get() {
            // SAFETY: as in `wait_starts`.
            unsafe {
                if (*t).pending_ns != 0 {
                    let waited = (*t).pending_ns - 1;
                    (*t).pending_ns = 0;
                    let id = bpf_get_current_cgroup_id();
                    cg = id;
                    add_cgroup_wait(c, id, waited);
                    // Tested here too: the helper call must not run while off.
                    if global(&PROCS_ON) == 1 {
                        add_process_wait((bpf_get_current_pid_tgid() >> 32) as u32, waited);
                    }
                    if on {
                        add_culprit_waits(c, id, &(*t).culprits);
                    }
                }
                if prev_runnable {
                    (*t).start_ns = now;
                }
            }
        } else if prev_runnable {
            prev.start_new(now);
        }
    }
    // This CPU's ring of runs. Its address is taken whether or not the log
    // is on (and tested with `on` where used): an `Option` that is `None`
    // while off let LLVM keep the pointer in a register left unset on that
    // path and spill it, and the verifier refuses a spill of an unset
    // register ("R4 !read_ok").
    let runs = c.map(|c| {
        // SAFETY: this CPU's value of a per-CPU array; no access yet.
        unsafe { core::ptr::addr_of_mut!((*c).runs) }
    });
    if on && let Some(runs) = runs {
        let held = if prev.idle() {
            culprits::IDLE
        } else if T::CGROUP_AT_SWITCH_IN {
            prev.cgroup()
        } else {
            if cg == 0 {
                // SAFETY: no preconditions.
                cg = unsafe { bpf_get_current_cgroup_id() };
            }
            cg
        };
        // SAFETY: this CPU's value; programs do not nest on a CPU.
        unsafe { (*runs).close(held, now) };
    }
    if !next.idle()
        && let Some(t) = next.get()
    {
        // SAFETY: as in `wait_starts`.
        unsafe {
            if (*t).start_ns != 0 {
                let waited = now.saturating_sub((*t).start_ns);
                if on && let Some(runs) = runs {
                    (*runs).split((*t).start_ns, now, &mut (*t).culprits);
                }
                (*t).start_ns = 0;
                if T::CGROUP_AT_SWITCH_IN {
                    // 0 only if a link of the chain was NULL, which a
                    // live task's never is; the wait then counts on the
                    // host only.
                    let id = next.cgroup();
                    add_process_wait(next.tgid(), waited);
                    if id != 0 {
                        add_cgroup_wait(c, id, waited);
                        if on {
                            add_culprit_waits(c, id, &(*t).culprits);
                        }
                    }
                } else {
                    // +1 so that a zero wait is still "pending".
                    (*t).pending_ns = waited + 1;
                }
                wait_measured(c, waited);
            }
        }
    }
}

/// A wait measured: counted, and added to the host histogram.
#[inline(always)]
fn wait_measured(c: Option<*mut CpuCounters>, waited: u64) {
    bump_in(c, counter::RUNQ_SAMPLES);
    if let Some(h) = HOST_RUNQ.get_ptr_mut(0) {
        hist_add(h, waited);
    }
}

fn on_wakeup(ctx: &TracePointContext, off: &u32) {
    bump(counter::SCHED_WAKEUP);
    if global(&CONFIGURED) == 0 {
        return;
    }
    if let Some(pid) = read_u32(ctx, off) {
        // SAFETY: no preconditions.
        wait_starts(Pid(pid), unsafe { bpf_ktime_get_ns() });
    }
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    on_wakeup(&ctx, &OFF_WAKEUP_PID);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    on_wakeup(&ctx, &OFF_WAKEUP_NEW_PID);
    0
}

/// `prev_state` bits that mean "not runnable" (S D T t X Z P I). The bit
/// above them marks a preemption, which leaves the task runnable.
const SLEEP_STATE_MASK: u64 = 0xff;

/// Classic-tracepoint variant (kernels without BTF): fields from the record.
#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let c = switch_seen(&ctx);
    if global(&CONFIGURED) == 0 {
        return 0;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let prev = read_u32(&ctx, &OFF_SWITCH_PREV_PID).unwrap_or(0);
    let next = read_u32(&ctx, &OFF_SWITCH_NEXT_PID).unwrap_or(0);
    // SAFETY: tracepoint record read at a parsed offset.
    let state = unsafe { ctx.read_at::<u64>(global(&OFF_SWITCH_PREV_STATE) as usize) };
    let runnable = matches!(state, Ok(s) if s & SLEEP_STATE_MASK == 0);
    on_switch(c, Pid(prev), runnable, Pid(next), now);
    0
}

/// `task_struct` field of a task pointer, at an offset from BTF.
#[inline(always)]
fn task_u32(task: u64, off: &u32) -> Option<u32> {
    if task == 0 {
        return None;
    }
    let p = (task + u64::from(global(off))) as *const u32;
    // SAFETY: bpf_probe_read_kernel checks the address; a fault gives Err.
    unsafe { bpf_probe_read_kernel(p).ok() }
}

/// Raw-tracepoint variant (BTF kernels): `TP_PROTO(bool preempt, struct
/// task_struct *prev, struct task_struct *next, ...)`, the same first three
/// arguments on every kernel since 4.x. No trace record is built, which is
/// what makes it cheaper than the classic tracepoint.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    let c = switch_seen(&ctx);
    if global(&CONFIGURED) == 0 {
        return 0;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let preempt: u64 = ctx.arg(0);
    let prev_task: u64 = ctx.arg(1);
    let next_task: u64 = ctx.arg(2);
    let prev = task_u32(prev_task, &OFF_TASK_PID).unwrap_or(0);
    let next = task_u32(next_task, &OFF_TASK_PID).unwrap_or(0);
    // TASK_RUNNING is 0; a preempted task is runnable whatever its state says.
    let runnable = preempt & 1 == 1 || task_u32(prev_task, &OFF_TASK_STATE) == Some(0);
    on_switch(c, Pid(prev), runnable, Pid(next), now);
    0
}

/// Raw `sched_wakeup` / `sched_wakeup_new`: `TP_PROTO(struct task_struct *p)`.
#[inline(always)]
fn on_wakeup_raw(ctx: &RawTracePointContext) {
    bump(counter::SCHED_WAKEUP);
    if global(&CONFIGURED) == 0 {
        return;
    }
    let task: u64 = ctx.arg(0);
    if let Some(pid) = task_u32(task, &OFF_TASK_PID) {
        // SAFETY: no preconditions.
        wait_starts(Pid(pid), unsafe { bpf_ktime_get_ns() });
    }
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup_raw(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup_raw(&ctx);
    0
}

/// Adds a wait to cgroup `cg`'s entry in `CGROUP_RUNQ`; false (and
/// counted) if the map is full.
#[inline(always)]
fn add_cgroup_wait(c: Option<*mut CpuCounters>, cg: u64, waited: u64) -> bool {
    let added = add_hist_wait(&CGROUP_RUNQ, cg, waited);
    if !added {
        bump_in(c, counter::CGROUP_MAP_FULL);
    }
    added
}

/// Adds a wait to process `tgid`'s histogram while `PROCS_ON` is 1 (a
/// full map loses it: `observe --processes` sizes the map for the host).
#[inline(always)]
fn add_process_wait(tgid: u32, waited: u64) {
    if global(&PROCS_ON) == 1 && tgid != 0 {
        add_hist_wait(&PROC_RUNQ, tgid, waited);
    }
}

/// Adds a wait to `key`'s histogram in `map`, inserting it if absent;
/// false if the map is full.
#[inline(always)]
fn add_hist_wait<K>(map: &PerCpuHashMap<K, Hist>, key: K, waited: u64) -> bool {
    if let Some(h) = map.get_ptr_mut(&key) {
        hist_add(h, waited);
        return true;
    }
    let Some(zero) = HIST_ZERO.get(0) else {
        return true;
    };
    if map.insert(&key, zero, 0).is_err() {
        return false;
    }
    if let Some(h) = map.get_ptr_mut(&key) {
        hist_add(h, waited);
    }
    true
}

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// A TCP socket changed state: count completed handshakes per (network
/// namespace, local port) and connects per cgroup. `listener` gives the
/// port key when asked.
#[inline(always)]
fn on_sock_state(old: i32, new: i32, listener: impl FnOnce() -> Option<u64>) {
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        // A connection completed its handshake on a listener.
        if let Some(key) = listener() {
            bump_keyed(&PORT_ACCEPTS, &key, counter::PORT_MAP_FULL);
        }
    } else if old == TCP_CLOSE && new == TCP_SYN_SENT {
        // connect(): runs in the connecting task's context.
        // SAFETY: no preconditions.
        let cg = unsafe { bpf_get_current_cgroup_id() };
        bump_keyed(&CGROUP_CONNECTS, &cg, counter::CGROUP_MAP_FULL);
    }
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    bump(counter::SOCK_STATE);
    if global(&CONFIGURED) == 0 {
        return 0;
    }
    // SAFETY (all reads): tracepoint record at offsets parsed from its format file.
    let (Ok(old), Ok(new), Ok(proto)) = (
        unsafe { ctx.read_at::<i32>(global(&OFF_SOCK_OLDSTATE) as usize) },
        unsafe { ctx.read_at::<i32>(global(&OFF_SOCK_NEWSTATE) as usize) },
        unsafe { ctx.read_at::<u16>(global(&OFF_SOCK_PROTOCOL) as usize) },
    ) else {
        return 0;
    };
    if proto != IPPROTO_TCP {
        return 0;
    }
    // `sport` of the record is the local port.
    // SAFETY: as above.
    // The record does not say the namespace (namespace 0: unknown).
    on_sock_state(old, new, || unsafe {
        ctx.read_at::<u16>(global(&OFF_SOCK_SPORT) as usize)
            .ok()
            .map(|port| governor_common::port_key(0, port))
    });
    0
}

/// `struct sock` field of a socket pointer, at an offset from BTF.
#[inline(always)]
fn sock_u16(sk: u64, off: &u32) -> Option<u16> {
    if sk == 0 {
        return None;
    }
    let p = (sk + u64::from(global(off))) as *const u16;
    // SAFETY: bpf_probe_read_kernel checks the address; a fault gives Err.
    unsafe { bpf_probe_read_kernel(p).ok() }
}

/// Raw-tracepoint variant (BTF kernels): `TP_PROTO(const struct sock *sk,
/// const int oldstate, const int newstate)` on every kernel since 4.16.
/// Attached with `BPF_RAW_TRACEPOINT_OPEN`: no `perf_event_open`, and no
/// trace record built.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    bump(counter::SOCK_STATE);
    if global(&CONFIGURED) == 0 {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    if sock_u16(sk, &OFF_SK_PROTOCOL) != Some(IPPROTO_TCP) {
        return 0;
    }
    on_sock_state(old as i32, new as i32, || {
        let port = sock_u16(sk, &OFF_SK_NUM)?;
        Some(governor_common::port_key(netns_of(sk), port))
    });
    0
}

/// The inode number of a socket's network namespace, 0 if unknown.
#[inline(always)]
fn netns_of(sk: u64) -> u32 {
    if global(&NETNS_KNOWN) == 0 {
        return 0;
    }
    let at = (sk + u64::from(global(&OFF_SK_NET))) as *const u64;
    // SAFETY (both reads): bpf_probe_read_kernel checks the address.
    let Ok(net) = (unsafe { bpf_probe_read_kernel(at) }) else {
        return 0;
    };
    if net == 0 {
        return 0;
    }
    let at = (net + u64::from(global(&OFF_NET_INUM))) as *const u32;
    unsafe { bpf_probe_read_kernel(at) }.unwrap_or(0)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
