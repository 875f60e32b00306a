// The scheduler probes on BTF tracepoints (`tp_btf`) with each task's
// `TaskWait` in its own storage (`BPF_MAP_TYPE_TASK_STORAGE`), included by
// the objects for kernels that have both (`main.rs`, `prealloc.rs`; not
// `legacy.rs`, whose kernels cannot create the map). The agent attaches
// them where the kernel allocates task storage safely from a scheduler
// tracepoint (see `governor::probes`), else the raw-tracepoint variants.
//
// Cheaper than the raw path: the arguments are typed task pointers, so
// `pid` and `__state` are plain loads (the verifier checks them against
// BTF) instead of `bpf_probe_read_kernel` calls, and a task's entry hangs
// off the task itself (a pointer chase and a small per-task cache)
// instead of an LRU hash lookup by pid. An entry is created at the task's
// first wait and freed with the task: nothing to evict, no table to fill.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, task_struct},
    helpers::generated::bpf_task_storage_get,
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use governor_common::slots;

/// A BTF map definition of a task storage map of `V` (what libbpf's
/// `__uint(type, BPF_MAP_TYPE_TASK_STORAGE)` … `SEC(".maps")` encodes:
/// each field's array length is the value). aya-ebpf 0.2 defines such maps
/// for cgroups, sockets and inodes, not for tasks.
#[repr(C)]
pub struct TaskStorage<V> {
    r#type: *const [i32; aya_ebpf::bindings::bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholders the loader reads from BTF; never dereferenced.
unsafe impl<V> Sync for TaskStorage<V> {}

impl<V> TaskStorage<V> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// `task`'s value (zeroed when `create` makes it), or `None`.
    #[inline(always)]
    fn get(&self, task: *mut task_struct, create: bool) -> Option<*mut V> {
        let flags = if create {
            u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        let map = core::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: `task` is a BTF task pointer the kernel gave the program.
        let v = unsafe { bpf_task_storage_get(map, task, core::ptr::null_mut(), flags) };
        (!v.is_null()).then_some(v.cast())
    }
}

/// Each task's wait, in its own storage (the tp_btf programs' `TASKS`).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "TASK_WAITS")]
static TASK_WAITS: TaskStorage<TaskWait> = TaskStorage::new();

/// The histogram slot of each cgroup the agent gave one
/// (`governor_common::slots`): cgroup id → slot, with `slots::WATCHED`.
#[map(name = "SLOT_OF")]
static SLOT_OF: HashMap<u64, u32> = HashMap::with_max_entries(slots::MAX, 0);

/// Each slot's run-queue histogram, cumulative (the agent takes deltas);
/// one entry unless the agent sizes it.
#[map(name = "SLOT_RUNQ")]
static SLOT_RUNQ: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// The histogram slot of each process `governor observe --processes` gave
/// one: tgid → slot.
#[map(name = "PROC_SLOT_OF")]
static PROC_SLOT_OF: HashMap<u64, u32> = HashMap::with_max_entries(slots::MAX, 0);

/// Each process slot's run-queue histogram, cumulative; one entry unless
/// the loader sizes it.
#[map(name = "PROC_SLOT_RUNQ")]
static PROC_SLOT_RUNQ: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// The agent's slot generation `CULPRIT_CONF[index]`.
#[inline(always)]
fn slot_gen(index: u32) -> u32 {
    CULPRIT_CONF.get(index).copied().unwrap_or(0)
}

/// The `slot_of` value of `key` (`slots::NONE` if none), cached in a
/// task's storage (`cache`): looked up again only when the key or the
/// slot generation changed.
///
/// # Safety
/// `cache` is in the task's storage value, which only its CPU touches now.
#[inline(always)]
unsafe fn cached_slot(
    cache: *mut slots::Cached,
    key: u64,
    slot_of: &HashMap<u64, u32>,
    conf: u32,
) -> u32 {
    let generation = slot_gen(conf);
    // SAFETY: as the caller promises; the map lookup has no preconditions.
    unsafe {
        if (*cache).key == key && (*cache).generation == generation {
            return (*cache).slot;
        }
        let s = slot_of.get(key).copied().unwrap_or(slots::NONE);
        (*cache).key = key;
        (*cache).generation = generation;
        (*cache).slot = s;
        s
    }
}

/// Adds process `tgid`'s wait to its histogram while `PROCS_ON` is 1: its
/// slot's if it has one (cached in the task's storage value `t`), else its
/// `PROC_RUNQ` entry.
///
/// # Safety
/// As for [`cached_slot`].
#[inline(always)]
unsafe fn add_process_wait_cached(t: *mut TaskWait, tgid: u32, waited: u64) {
    if global(&PROCS_ON) != 1 || tgid == 0 {
        return;
    }
    // SAFETY: as the caller promises.
    let slot = unsafe {
        cached_slot(
            core::ptr::addr_of_mut!((*t).process_slot),
            u64::from(tgid),
            &PROC_SLOT_OF,
            culprits::CONF_PROC_GEN,
        )
    };
    if slot != slots::NONE
        && let Some(h) = PROC_SLOT_RUNQ.get_ptr_mut(slot)
    {
        hist_add(h, waited);
        return;
    }
    add_process_wait(tgid, waited);
}

/// Adds cgroup `id`'s wait to its histogram, its slot's if
/// it has one (`slot`, a `SLOT_OF` value) else its hash entry, and while
/// culprits are `on` charges it to `split` if the cgroup is watched: a slot
/// says so itself (no `WATCHED` lookup); a cgroup without one is looked up
/// (the agent gives watched cgroups slots first, so only when they ran
/// out). False if the wait is in no cgroup's histogram (the hash was
/// full): the host histogram must then count it itself.
#[inline(always)]
fn add_slotted_wait(
    c: Option<*mut CpuCounters>,
    id: u64,
    slot: u32,
    waited: u64,
    on: bool,
    split: &Split,
) -> bool {
    if slot != slots::NONE
        && let Some(h) = SLOT_RUNQ.get_ptr_mut(slot & !slots::WATCHED)
    {
        hist_add(h, waited);
        if on && slot & slots::WATCHED != 0 {
            charge_culprits(c, id, split);
        }
        return true;
    }
    let counted = add_cgroup_wait(c, id, waited);
    if on {
        add_culprit_waits(c, id, split);
    }
    counted
}

/// A wait measured by the sched_info switch: counted, and added to the
/// host histogram unless a cgroup's histogram has it (`in_cgroup`): the
/// agent adds the cgroups' histograms to the host's
/// (`Probes::read_maps`), which saves a lookup and an increment a switch.
#[inline(always)]
fn host_wait(c: Option<*mut CpuCounters>, waited: u64, in_cgroup: bool) {
    if in_cgroup {
        bump_in(c, counter::RUNQ_SAMPLES);
    } else {
        wait_measured(c, waited);
    }
}

/// A task by its BTF pointer, with its pid (read once).
#[derive(Clone, Copy)]
struct Task {
    ptr: *mut task_struct,
    pid: u32,
}

impl Task {
    #[inline(always)]
    fn new(ptr: *mut task_struct) -> Self {
        Self {
            ptr,
            pid: task_field(ptr, &OFF_TASK_PID),
        }
    }
}

/// A `u32` field of a BTF task pointer at an offset from BTF: a plain load,
/// which the verifier checks against the kernel's BTF (the offset is a
/// known constant to it: a read-only global).
#[inline(always)]
fn task_field(task: *mut task_struct, off: &u32) -> u32 {
    // SAFETY: `task` is a BTF pointer to a live task (a tracepoint
    // argument), and `off` the offset of a 4-byte field in it.
    unsafe { core::ptr::read(task.cast::<u8>().add(global(off) as usize).cast::<u32>()) }
}

/// A pointer field of a BTF pointer at an offset from BTF (0 if `p` is
/// NULL); the verifier types the result from BTF, so that the next load
/// through it is checked too.
#[inline(always)]
fn btf_ptr(p: *const u8, off: &u32) -> *const u8 {
    if p.is_null() {
        return core::ptr::null();
    }
    // SAFETY: `p` is a non-NULL BTF pointer and `off` the offset of a
    // pointer field in its struct; a fault reads 0 (a BTF load).
    unsafe { core::ptr::read(p.add(global(off) as usize).cast::<*const u8>()) }
}

/// A task's cgroup2 id, `task->cgroups->dfl_cgrp->kn->id` (what
/// `bpf_get_current_cgroup_id` returns for `current`, for any task), by
/// plain loads; 0 if a link is NULL.
#[inline(always)]
fn task_cgroup_id(task: *mut task_struct) -> u64 {
    let css_set = btf_ptr(task.cast_const().cast(), &OFF_TASK_CGROUPS);
    let cgroup = btf_ptr(css_set, &OFF_CSS_SET_DFL_CGRP);
    let kn = btf_ptr(cgroup, &OFF_CGROUP_KN);
    btf_u64(kn, &OFF_KERNFS_NODE_ID)
}

/// A `u64` field of a BTF pointer at an offset from BTF (0 if `p` is NULL).
#[inline(always)]
fn btf_u64(p: *const u8, off: &u32) -> u64 {
    if p.is_null() {
        return 0;
    }
    // SAFETY: as in `btf_ptr`, for a `u64` field.
    unsafe { core::ptr::read(p.add(global(off) as usize).cast::<u64>()) }
}

/// The clock of the run queue of the CPU `task` is on,
/// `task->se.cfs_rq->rq->clock`: what the kernel stamps a task's
/// `sched_info.last_queued` with and, at the switch, what it measures the
/// wait against (`__schedule` updated it before the tracepoint). 0 if a
/// link is NULL.
#[inline(always)]
fn rq_clock(task: *mut task_struct) -> u64 {
    let cfs_rq = btf_ptr(task.cast_const().cast(), &OFF_TASK_SE_CFS_RQ);
    let rq = btf_ptr(cfs_rq, &OFF_CFS_RQ_RQ);
    btf_u64(rq, &OFF_RQ_CLOCK)
}

/// A context switch, with each wait taken from the kernel's own run-queue
/// accounting (`task->sched_info`, kept wherever the kernel has
/// CONFIG_SCHED_INFO, which `/proc/PID/schedstat`'s run delay reads): the
/// kernel stamps `last_queued` when it enqueues a task (woken, new, or
/// preempted while runnable) and, just after this tracepoint, adds
/// `rq->clock - last_queued` to `run_delay`. So no wake-up probe and no
/// clock read are needed: `next`'s wait ends now, by the run queue's
/// clock, and `prev` needs nothing.
///
/// A waiter moved to another CPU while it waited (load balancing) was
/// dequeued there, which added the wait so far to its `run_delay` and
/// cleared `last_queued`; the part on this CPU starts at the new stamp.
/// The task's storage keeps `run_delay` as of its last switch-in (in
/// `pending_ns`, which this variant does not otherwise use), so that those
/// earlier parts count too: the wait is `run_delay - seen + (now -
/// last_queued)`. At a task's first switch-in since the probes loaded only
/// the part on this CPU counts. Culprits are split over the part on this
/// CPU (the ring logs this CPU's runs only).
#[inline(always)]
fn on_switch_sched_info(c: Option<*mut CpuCounters>, prev: Task, next: Task) {
    let now = rq_clock(prev.ptr);
    if now == 0 {
        return;
    }
    let on = culprits_on();
    // As in `on_switch`: the address whether or not the log is on.
    let runs = c.map(|c| {
        // SAFETY: this CPU's value of a per-CPU array; no access yet.
        unsafe { core::ptr::addr_of_mut!((*c).runs) }
    });
    if on && let Some(runs) = runs {
        let held = if prev.idle() {
            culprits::IDLE
        } else {
            prev.cgroup()
        };
        // SAFETY: this CPU's value; programs do not nest on a CPU.
        unsafe { (*runs).close(held, now) };
    }
    if next.idle() {
        return;
    }
    let task = next.ptr.cast_const().cast::<u8>();
    let queued = btf_u64(task, &OFF_TASK_LAST_QUEUED);
    if queued == 0 {
        return;
    }
    let delay = btf_u64(task, &OFF_TASK_RUN_DELAY);
    let here = now.saturating_sub(queued);
    let id = next.cgroup();
    let tgid = next.tgid();
    match TASK_WAITS.get(next.ptr, true) {
        Some(t) => {
            // SAFETY: this task's value; a task runs on one CPU at a time.
            unsafe {
                let seen = (*t).pending_ns;
                let waited = if seen != 0 && delay >= seen {
                    delay - seen + here
                } else {
                    here
                };
                // What the kernel is about to make `run_delay`.
                (*t).pending_ns = delay + here;
                if on && let Some(runs) = runs {
                    (*runs).split(queued, now, &mut (*t).culprits);
                }
                let mut in_cgroup = false;
                if id != 0 {
                    let slot = cached_slot(
                        core::ptr::addr_of_mut!((*t).cgroup_slot),
                        id,
                        &SLOT_OF,
                        culprits::CONF_GEN,
                    );
                    in_cgroup = add_slotted_wait(c, id, slot, waited, on, &(*t).culprits);
                }
                add_process_wait_cached(t, tgid, waited);
                host_wait(c, waited, in_cgroup);
            }
        }
        None => {
            // No memory for the entry: the part on this CPU, no culprits.
            bump_in(c, counter::START_MAP_FULL);
            let in_cgroup = id != 0 && add_cgroup_wait(c, id, here);
            add_process_wait(tgid, here);
            host_wait(c, here, in_cgroup);
        }
    }
}

impl TaskSlot for Task {
    const CGROUP_AT_SWITCH_IN: bool = true;

    #[inline(always)]
    fn cgroup(self) -> u64 {
        task_cgroup_id(self.ptr)
    }

    #[inline(always)]
    fn idle(self) -> bool {
        self.pid == 0
    }

    #[inline(always)]
    fn tgid(self) -> u32 {
        task_field(self.ptr, &OFF_TASK_TGID)
    }

    #[inline(always)]
    fn get(self) -> Option<*mut TaskWait> {
        TASK_WAITS.get(self.ptr, false)
    }

    #[inline(always)]
    fn start_new(self, now: u64) {
        match TASK_WAITS.get(self.ptr, true) {
            // SAFETY: this task's value; a task runs on one CPU at a time.
            Some(t) => unsafe { (*t).start_ns = now },
            // No memory, or the storage was busy on this CPU.
            None => bump(counter::START_MAP_FULL),
        }
    }
}

/// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct
/// *next, ...)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let c = switch_seen(&ctx);
    if global(&CONFIGURED) == 0 {
        return 0;
    }
    let prev_ptr: *mut task_struct = ctx.arg(1);
    let next_ptr: *mut task_struct = ctx.arg(2);
    let prev = Task::new(prev_ptr);
    if global(&SCHED_INFO_KNOWN) == 1 {
        on_switch_sched_info(c, prev, Task::new(next_ptr));
        return 0;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let preempt: u64 = ctx.arg(0);
    // TASK_RUNNING is 0; a preempted task is runnable whatever its state says.
    let runnable = preempt & 1 == 1 || task_field(prev_ptr, &OFF_TASK_STATE) == 0;
    on_switch(c, prev, runnable, Task::new(next_ptr), now);
    0
}

/// `sched_wakeup` / `sched_wakeup_new`: `TP_PROTO(struct task_struct *p)`.
#[inline(always)]
fn on_wakeup_btf(ctx: &BtfTracePointContext) {
    bump(counter::SCHED_WAKEUP);
    if global(&CONFIGURED) == 0 {
        return;
    }
    let task: *mut task_struct = ctx.arg(0);
    // SAFETY: no preconditions.
    wait_starts(Task::new(task), unsafe { bpf_ktime_get_ns() });
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup_btf(&ctx);
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup_btf(&ctx);
    0
}
