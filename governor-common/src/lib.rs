//! Types shared by the kernel programs (`governor-ebpf`) and the agent
//! (`governor`).
//!
//! Everything here is `#[repr(C)]`, has no padding and no `bool`, so that both
//! sides agree on the layout byte for byte.
#![no_std]

pub mod hist;

/// Run-queue bookkeeping of one task (value of the `TASKS` map).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct TaskWait {
    /// When its current wait began (ns, `bpf_ktime_get_ns`); 0 if not waiting.
    pub start_ns: u64,
    /// Its last wait + 1, not yet attributed to a cgroup; 0 if none (the
    /// raw and classic variants, which learn a task's cgroup only when it
    /// is `current`, at its switch-out; the BTF variant reads it at the
    /// switch-in and never parks a wait).
    pub pending_ns: u64,
    /// Who held the CPU during its last wait, by cgroup (the culprits),
    /// split at its switch-in and charged once its own cgroup is known
    /// (there, or at its switch-out); filled only while some cgroup is
    /// watched ([`culprits`]).
    pub culprits: culprits::Split,
    /// Its cgroup's histogram slot, as last looked up ([`slots`]; the BTF
    /// probes only).
    pub cgroup_slot: slots::Cached,
    /// Its process's histogram slot, as last looked up (while `PROCS_ON`).
    pub process_slot: slots::Cached,
}

#[cfg(feature = "user")]
// SAFETY: `u64`s and `u32`s in pairs, `repr(C)`, no padding.
unsafe impl aya::Pod for TaskWait {}

/// Histogram slots: the agent gives each cgroup that waited in a tick
/// (while slots are free, see `governor::probes::slots`) and each watched
/// one a slot in the per-CPU array `SLOT_RUNQ`, which the sched_info probe
/// adds its waits to instead of the per-cgroup hash (an array index
/// instead of a hash lookup; the slot is cached in the task's storage, see
/// [`super::TaskWait::cgroup_slot`]). The other cgroups' waits go to
/// `CGROUP_RUNQ` as before. Slot histograms are cumulative: the agent
/// takes deltas.
pub mod slots {
    /// A `SLOT_OF` value (and a cached slot) meaning "no slot".
    pub const NONE: u32 = u32::MAX;
    /// Set in a `SLOT_OF` value when the cgroup is watched: its culprits
    /// are counted without a `WATCHED` lookup.
    pub const WATCHED: u32 = 1 << 31;
    /// At most this many slots (the agent sizes `SLOT_RUNQ` from the
    /// number of CPUs, see `governor::probes`).
    pub const MAX: u32 = 1_024;

    /// A task's cached slot lookup: valid while the key (its cgroup id, or
    /// its process id) is still `key` and the agent's slot generation still
    /// `generation`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Cached {
        /// What was looked up (0: nothing yet; no cgroup or process has 0).
        pub key: u64,
        /// Its `SLOT_OF` value then ([`NONE`]: it had none).
        pub slot: u32,
        /// The generation then.
        pub generation: u32,
    }
}

/// Per-CPU state of the probes (the one value of the `COUNTERS` map): the
/// event counters and the "announced" flag in one lookup.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CpuCounters {
    /// Indexed by [`counter`].
    pub counts: [u64; counter::LEN as usize],
    /// Non-zero once the probes said they run on this CPU.
    pub announced: u64,
    /// The last runs on this CPU, kept while some cgroup is watched.
    pub runs: culprits::RunLog,
}

#[cfg(feature = "user")]
// SAFETY: `u64`s only, `repr(C)`, no padding.
unsafe impl aya::Pod for CpuCounters {}

/// Who held the CPU while a watched cgroup waited for it.
pub mod culprits {
    /// Key of the `CULPRITS` map: the cgroup that waited (`victim`, a
    /// watched one) and a cgroup that ran on the CPU during the wait
    /// (`culprit`; [`IDLE`]: the CPU was idle), charged the part of the
    /// wait it ran ([`RunLog::split`]).
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Key {
        /// Watched cgroup id.
        pub victim: u64,
        /// Cgroup id of the task that held the CPU.
        pub culprit: u64,
    }

    #[cfg(feature = "user")]
    // SAFETY: two `u64`, `repr(C)`, no padding.
    unsafe impl aya::Pod for Key {}

    /// `Key::culprit` when the waiter got the CPU from the idle task:
    /// nothing else ran (a wait of a throttled cgroup, or wake-up latency).
    pub const IDLE: u64 = 0;
    /// Index 0 of `CULPRIT_CONF`: how many cgroups `WATCHED` holds (0: the
    /// probes skip culprit bookkeeping).
    pub const CONF_WATCHED: u32 = 0;
    /// Index 1 of `CULPRIT_CONF`: the slot generation, which the agent
    /// bumps whenever it changes `SLOT_OF` ([`super::slots`]), so that
    /// every task's cached slot is looked up again.
    pub const CONF_GEN: u32 = 1;
    /// Index 2 of `CULPRIT_CONF`: the process slots' generation
    /// (`PROC_SLOT_OF`).
    pub const CONF_PROC_GEN: u32 = 2;
    /// Entries of `CULPRIT_CONF`.
    pub const CONF_LEN: u32 = 3;

    /// Runs a CPU remembers ([`RunLog`]); a power of two.
    pub const RUNS: usize = 8;
    /// Culprits one wait is split among ([`Split`]).
    pub const SLOTS: usize = 4;

    /// One run in a [`RunLog`].
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    pub struct Run {
        /// The cgroup that ran ([`IDLE`] for the idle task).
        pub cg: u64,
        /// When the run ended (ns); 0: never written.
        pub end_ns: u64,
    }

    /// The last [`RUNS`] runs on one CPU, as a ring; a run began where the
    /// one before it ended. Written at every context switch while some
    /// cgroup is watched (the task going out is `current`, so its cgroup is
    /// known there).
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    pub struct RunLog {
        /// The runs, oldest overwritten first.
        pub runs: [Run; RUNS],
        /// Index of the newest run.
        pub head: u64,
    }

    impl RunLog {
        /// A run of `cg` ended at `now`: it replaces the oldest.
        #[inline(always)]
        pub fn close(&mut self, cg: u64, now: u64) {
            let h = (self.head as usize).wrapping_add(1) & (RUNS - 1);
            self.runs[h] = Run { cg, end_ns: now };
            self.head = h as u64;
        }

        /// Splits the wait `[start, now]` among the runs that overlap it,
        /// newest first, each charged its overlap; `out` is overwritten.
        ///
        /// The oldest run is taken to have begun before any wait: a wait
        /// that began before the ring's oldest remembered run is charged,
        /// for that part, to the oldest run's cgroup. Runs that ended at or
        /// before `start` end the walk. Where the log was off while the CPU
        /// switched (no cgroup watched then), the newest run is taken to
        /// have begun where the last remembered one ended.
        #[inline(always)]
        pub fn split(&self, start: u64, now: u64, out: &mut Split) {
            let head = self.head as usize;
            let mut used = 0;
            let mut i = 0;
            while i < RUNS {
                let at = head.wrapping_sub(i) & (RUNS - 1);
                let run = self.runs[at];
                let end = run.end_ns.min(now);
                if end <= start {
                    break;
                }
                let began = if i == RUNS - 1 {
                    0
                } else {
                    self.runs[at.wrapping_sub(1) & (RUNS - 1)].end_ns
                };
                used = out.put(used, run.cg, end - began.max(start).min(end));
                i += 1;
            }
            if used < SLOTS {
                out.ns[used] = 0;
            }
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: `u64`s only, `repr(C)`, no padding.
    unsafe impl aya::Pod for RunLog {}

    /// One wait split among the cgroups that held the CPU during it: up to
    /// [`SLOTS`] cgroups, each with its part (ns). The slots in use are
    /// those before the first with 0 ns (or all). A run of a cgroup already
    /// in a slot adds to it; once all are taken, the rest is added to the
    /// last slot (charged to its cgroup: the oldest of the culprits, as
    /// [`RunLog::split`] goes newest first).
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    pub struct Split {
        /// Culprit cgroup of each slot.
        pub cg: [u64; SLOTS],
        /// Its part of the wait (ns).
        pub ns: [u64; SLOTS],
    }

    impl Split {
        /// Charges `ns` to `cg`, with the first `used` slots in use;
        /// returns how many are in use after.
        #[inline(always)]
        fn put(&mut self, used: usize, cg: u64, ns: u64) -> usize {
            if ns == 0 {
                return used;
            }
            let mut j = 0;
            while j < used && j < SLOTS {
                if self.cg[j] == cg {
                    self.ns[j] += ns;
                    return used;
                }
                j += 1;
            }
            if used < SLOTS {
                self.cg[used] = cg;
                self.ns[used] = ns;
                used + 1
            } else {
                self.ns[SLOTS - 1] += ns;
                used
            }
        }

        /// The parts in use, as (cgroup, ns).
        pub fn parts(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
            (0..SLOTS)
                .take_while(|&j| self.ns[j] != 0)
                .map(|j| (self.cg[j], self.ns[j]))
        }

        /// The whole wait (the sum of the parts).
        pub fn total(&self) -> u64 {
            self.parts().map(|p| p.1).sum()
        }
    }
}

/// Indices into the per-CPU `COUNTERS` array map.
///
/// Each slot counts events seen by one probe on one CPU; the agent sums over
/// CPUs. They show that a probe is alive, and count what did not fit.
pub mod counter {
    /// `sched_switch` tracepoint hits.
    pub const SCHED_SWITCH: u32 = 0;
    /// `sched_wakeup` and `sched_wakeup_new` hits.
    pub const SCHED_WAKEUP: u32 = 1;
    /// Run-queue waits measured.
    pub const RUNQ_SAMPLES: u32 = 2;
    /// `sock:inet_sock_set_state` hits.
    pub const SOCK_STATE: u32 = 3;
    /// A cgroup's histogram or connect counter did not fit its map.
    pub const CGROUP_MAP_FULL: u32 = 4;
    /// A port's accept counter did not fit its map.
    pub const PORT_MAP_FULL: u32 = 5;
    /// A wakeup timestamp did not fit its map (the wait was not measured).
    pub const START_MAP_FULL: u32 = 6;
    /// A (watched cgroup, culprit) pair did not fit its map.
    pub const CULPRIT_MAP_FULL: u32 = 7;
    /// Number of counters in [`super::CpuCounters`].
    pub const LEN: u32 = 8;
}

/// Names of the programs and maps in the object, shared so that a rename on
/// one side is a compile error on the other rather than a load failure.
pub mod names {
    /// `sched:sched_switch` classic-tracepoint program (kernels without BTF).
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    /// `sched_switch` raw-tracepoint program (BTF kernels).
    pub const PROG_SCHED_SWITCH_RAW: &str = "sched_switch_raw";
    /// `sched_wakeup` raw-tracepoint program.
    pub const PROG_SCHED_WAKEUP_RAW: &str = "sched_wakeup_raw";
    /// `sched_wakeup_new` raw-tracepoint program.
    pub const PROG_SCHED_WAKEUP_NEW_RAW: &str = "sched_wakeup_new_raw";
    /// `sched_switch` BTF-tracepoint program (task storage: kernels ≥ 6.4).
    pub const PROG_SCHED_SWITCH_BTF: &str = "sched_switch_btf";
    /// `sched_wakeup` BTF-tracepoint program.
    pub const PROG_SCHED_WAKEUP_BTF: &str = "sched_wakeup_btf";
    /// `sched_wakeup_new` BTF-tracepoint program.
    pub const PROG_SCHED_WAKEUP_NEW_BTF: &str = "sched_wakeup_new_btf";
    /// `sched:sched_wakeup` program.
    pub const PROG_SCHED_WAKEUP: &str = "sched_wakeup";
    /// `sched:sched_wakeup_new` program.
    pub const PROG_SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";
    /// `sock:inet_sock_set_state` classic-tracepoint program (kernels without BTF).
    pub const PROG_SOCK_STATE: &str = "inet_sock_set_state";
    /// `inet_sock_set_state` raw-tracepoint program (BTF kernels): needs no
    /// `perf_event_open`, which Debian's `perf_event_paranoid=3` and a
    /// hardened unit's sandbox can refuse.
    pub const PROG_SOCK_STATE_RAW: &str = "inet_sock_set_state_raw";
    /// Per-CPU array of one [`super::CpuCounters`].
    pub const MAP_COUNTERS: &str = "COUNTERS";
    /// Per-CPU array with one host-wide run-queue [`super::hist::Hist`].
    pub const MAP_HOST_RUNQ: &str = "HOST_RUNQ";
    /// Per-CPU hash: cgroup id → run-queue [`super::hist::Hist`].
    pub const MAP_CGROUP_RUNQ: &str = "CGROUP_RUNQ";
    /// Per-CPU hash: cgroup id → outbound connects (`u64`).
    pub const MAP_CGROUP_CONNECTS: &str = "CGROUP_CONNECTS";
    /// Per-CPU hash: local port (`u32`) → accepted connections (`u64`).
    pub const MAP_PORT_ACCEPTS: &str = "PORT_ACCEPTS";
    /// Hash: watched cgroup id (`u64`) → 1 (`u8`): whose culprits are counted.
    pub const MAP_WATCHED: &str = "WATCHED";
    /// Array of `u32`: [`super::culprits::CONF_WATCHED`],
    /// [`super::culprits::CONF_GEN`], [`super::culprits::CONF_PROC_GEN`].
    pub const MAP_CULPRIT_CONF: &str = "CULPRIT_CONF";
    /// Hash: cgroup id (`u64`) → its histogram slot (`u32`, with
    /// [`super::slots::WATCHED`]), set by the agent (BTF objects only).
    pub const MAP_SLOT_OF: &str = "SLOT_OF";
    /// Per-CPU array: slot → cumulative run-queue [`super::hist::Hist`]
    /// (BTF objects only).
    pub const MAP_SLOT_RUNQ: &str = "SLOT_RUNQ";
    /// Hash: process id (tgid, as `u64`) → its histogram slot (`u32`),
    /// set by `governor observe --processes` (BTF objects only).
    pub const MAP_PROC_SLOT_OF: &str = "PROC_SLOT_OF";
    /// Per-CPU array: process slot → cumulative run-queue
    /// [`super::hist::Hist`] (BTF objects only).
    pub const MAP_PROC_SLOT_RUNQ: &str = "PROC_SLOT_RUNQ";
    /// Per-CPU hash: [`super::culprits::Key`] → wait (ns, `u64`).
    pub const MAP_CULPRITS: &str = "CULPRITS";
    /// Per-CPU hash: process (tgid, `u32`) → run-queue [`super::hist::Hist`],
    /// kept only while `PROCS_ON` is 1 (`governor observe --processes`).
    pub const MAP_PROC_RUNQ: &str = "PROC_RUNQ";
}

/// Map sizes: bounded, with [`counter::CGROUP_MAP_FULL`] and friends counting
/// what did not fit.
///
/// The agent empties the per-cgroup and per-port maps every tick, so they
/// hold what had events within one tick, not everything ever seen. They
/// are kept small on purpose: reading a hash map walks all its buckets,
/// and with 16,384 empty buckets per map that walk was a fifth of the
/// agent's CPU (`footprint` bench).
pub mod limits {
    /// Cgroups with events within one tick (histograms, connect counters).
    pub const MAX_CGROUPS: u32 = 4_096;
    /// Local ports with completed handshakes within one tick.
    pub const MAX_PORTS: u32 = 1_024;
    /// Tasks waiting to run at once (wakeup timestamps).
    pub const MAX_WAITING: u32 = 65_536;
    /// Watched cgroups whose culprits are counted.
    pub const MAX_WATCHED: u32 = 1_024;
    /// (watched cgroup, culprit) pairs within one tick.
    pub const MAX_CULPRITS: u32 = 4_096;
}

/// The key of `PORT_ACCEPTS`: a listener's network namespace (the inode
/// number of `/proc/PID/ns/net`; 0 if the kernel's BTF does not say) and
/// its local port. Port 8080 of two containers is two keys.
pub fn port_key(netns: u32, port: u16) -> u64 {
    (u64::from(netns) << 16) | u64::from(port)
}

/// The namespace and port of a [`port_key`].
pub fn port_key_parts(key: u64) -> (u32, u16) {
    ((key >> 16) as u32, key as u16)
}

/// Names of the read-only globals the agent sets at load time: offsets of
/// tracepoint fields, parsed from tracefs `format` files on the running
/// kernel (no offsets are compiled in).
pub mod globals {
    /// `sched_switch.prev_pid` offset.
    pub const SWITCH_PREV_PID: &str = "OFF_SWITCH_PREV_PID";
    /// `sched_switch.prev_state` offset.
    pub const SWITCH_PREV_STATE: &str = "OFF_SWITCH_PREV_STATE";
    /// `sched_switch.next_pid` offset.
    pub const SWITCH_NEXT_PID: &str = "OFF_SWITCH_NEXT_PID";
    /// `sched_wakeup.pid` offset.
    pub const WAKEUP_PID: &str = "OFF_WAKEUP_PID";
    /// `sched_wakeup_new.pid` offset.
    pub const WAKEUP_NEW_PID: &str = "OFF_WAKEUP_NEW_PID";
    /// `inet_sock_set_state.oldstate` offset.
    pub const SOCK_OLDSTATE: &str = "OFF_SOCK_OLDSTATE";
    /// `inet_sock_set_state.newstate` offset.
    pub const SOCK_NEWSTATE: &str = "OFF_SOCK_NEWSTATE";
    /// `inet_sock_set_state.sport` offset.
    pub const SOCK_SPORT: &str = "OFF_SOCK_SPORT";
    /// `inet_sock_set_state.protocol` offset.
    pub const SOCK_PROTOCOL: &str = "OFF_SOCK_PROTOCOL";
    /// `struct sock`'s local port (`__sk_common.skc_num`, host order) offset, from BTF.
    pub const SK_NUM: &str = "OFF_SK_NUM";
    /// `struct sock.sk_protocol` (a `u16`) offset, from BTF.
    pub const SK_PROTOCOL: &str = "OFF_SK_PROTOCOL";
    /// `struct sock`'s network namespace pointer (`__sk_common.skc_net.net`,
    /// a `struct net *`) offset, from BTF.
    pub const SK_NET: &str = "OFF_SK_NET";
    /// `struct net`'s namespace inode number (`ns.inum`) offset, from BTF.
    pub const NET_INUM: &str = "OFF_NET_INUM";
    /// 1 once the two above are set: ports are counted per network
    /// namespace; 0 leaves the namespace of every key 0 (unknown).
    pub const NETNS_KNOWN: &str = "NETNS_KNOWN";
    /// `task_struct.pid` offset, from BTF.
    pub const TASK_PID: &str = "OFF_TASK_PID";
    /// `task_struct.tgid` offset, from BTF (per-process waits).
    pub const TASK_TGID: &str = "OFF_TASK_TGID";
    /// 1: the scheduler probes also keep a run-queue histogram per process
    /// (`PROC_RUNQ`); set at load by `governor observe --processes` only.
    pub const PROCS_ON: &str = "PROCS_ON";
    /// `task_struct.__state` (`.state` before 5.14) offset, from BTF.
    pub const TASK_STATE: &str = "OFF_TASK_STATE";
    /// `task_struct.cgroups` (a `struct css_set *`) offset, from BTF: the
    /// first link of `task->cgroups->dfl_cgrp->kn->id`, a task's cgroup2
    /// id, which the BTF-tracepoint `sched_switch` reads for the task it
    /// switches in.
    pub const TASK_CGROUPS: &str = "OFF_TASK_CGROUPS";
    /// `css_set.dfl_cgrp` (a `struct cgroup *`) offset, from BTF.
    pub const CSS_SET_DFL_CGRP: &str = "OFF_CSS_SET_DFL_CGRP";
    /// `cgroup.kn` (a `struct kernfs_node *`) offset, from BTF.
    pub const CGROUP_KN: &str = "OFF_CGROUP_KN";
    /// `kernfs_node.id` (a `u64`, the cgroup id) offset, from BTF.
    pub const KERNFS_NODE_ID: &str = "OFF_KERNFS_NODE_ID";
    /// `task_struct.sched_info.run_delay` (a `u64`: the task's time on a
    /// run queue so far, by the kernel's own accounting) offset, from BTF.
    pub const TASK_RUN_DELAY: &str = "OFF_TASK_RUN_DELAY";
    /// `task_struct.sched_info.last_queued` (a `u64`: when the task was
    /// last enqueued, by its run queue's clock; 0 while not waiting).
    pub const TASK_LAST_QUEUED: &str = "OFF_TASK_LAST_QUEUED";
    /// `task_struct.se.cfs_rq` (a `struct cfs_rq *`, this CPU's for a task
    /// on it) offset, from BTF.
    pub const TASK_SE_CFS_RQ: &str = "OFF_TASK_SE_CFS_RQ";
    /// `cfs_rq.rq` (a `struct rq *`) offset, from BTF.
    pub const CFS_RQ_RQ: &str = "OFF_CFS_RQ_RQ";
    /// `rq.clock` (a `u64`, what `last_queued` is stamped with) offset, from BTF.
    pub const RQ_CLOCK: &str = "OFF_RQ_CLOCK";
    /// 1 once the five above are set: the BTF `sched_switch` takes each
    /// wait from the kernel's `sched_info` and needs no wake-up probe.
    pub const SCHED_INFO_KNOWN: &str = "SCHED_INFO_KNOWN";
    /// Set to 1 by the agent once the offsets above are filled in; the
    /// programs do nothing while it is 0.
    pub const CONFIGURED: &str = "CONFIGURED";
}

/// Admission control shared by the enforcement programs (`enforce` object).
pub mod enforce {
    /// Refused connections get RST (inbound) or `EPERM` (outbound connect).
    pub const MODE_RESET: u32 = 0;
    /// Refused SYNs are dropped silently; the peer retries after its timeout.
    pub const MODE_DROP: u32 = 1;
    /// `Bucket::flags`: refuse everything (reject_connections).
    pub const FLAG_REJECT_ALL: u32 = 1;

    /// A token bucket as GCRA: a connection is admitted when
    /// `now >= tat - tolerance`, and then `tat = max(tat, now) + interval`.
    /// `interval` is 1/rate; `tolerance` is (burst - 1) intervals.
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    pub struct Bucket {
        /// Nanoseconds per admitted connection (1 / rate).
        pub interval_ns: u64,
        /// How far ahead of `now` the bucket may run: (burst - 1) × interval.
        pub tolerance_ns: u64,
        /// Theoretical arrival time of the next connection (kernel-updated).
        pub tat_ns: u64,
        /// [`MODE_RESET`] or [`MODE_DROP`].
        pub mode: u32,
        /// [`FLAG_REJECT_ALL`] or 0.
        pub flags: u32,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), 3 × u64 + 2 × u32, no padding.
    unsafe impl aya::Pod for Bucket {}

    /// Admitted and refused connections of one target.
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    pub struct Verdicts {
        /// Admitted (including exempt peers).
        pub admitted: u64,
        /// Refused at once (inbound: RST; outbound: `EPERM`).
        pub refused: u64,
        /// Refused in drop mode: the SYN was dropped (the client retries).
        pub dropped: u64,
        /// Refused by the port's guard (its listener's accept queue was at
        /// its bound), in either mode; not counted in `refused`/`dropped`.
        pub guarded: u64,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), four u64.
    unsafe impl aya::Pod for Verdicts {}

    /// A port's guard (value of `GUARDS`): new connections are refused
    /// while its listener's accept queue holds `bound` or more.
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    pub struct Guard {
        /// Accept-queue depth at which SYNs are refused.
        pub bound: u32,
        /// [`MODE_RESET`] or [`MODE_DROP`].
        pub mode: u32,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), two u32, no padding.
    unsafe impl aya::Pod for Guard {}

    /// Data of an exemption key in the `EXEMPT` LPM trie: an 8-byte scope
    /// (a port or a cgroup, see [`port_scope`] and [`cgroup_scope`]) then the
    /// peer's IPv6 address (IPv4 as `::ffff:a.b.c.d`). The prefix length is
    /// 64 + the address prefix (+96 for IPv4).
    pub type ExemptData = [u8; 24];

    /// Scope of a port's exemptions.
    pub const fn port_scope(port: u16) -> [u8; 8] {
        let p = port.to_be_bytes();
        [1, 0, 0, 0, 0, 0, p[0], p[1]]
    }

    /// Scope of a cgroup's exemptions (cgroup ids fit in 56 bits).
    pub const fn cgroup_scope(id: u64) -> [u8; 8] {
        let b = id.to_be_bytes();
        [2, b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// Names of the enforcement programs and maps.
    pub mod names {
        /// `sk_lookup` program: inbound SYN admission per local port.
        pub const PROG_ADMIT: &str = "admit_inbound";
        /// `cgroup/connect4` program.
        pub const PROG_CONNECT4: &str = "admit_connect4";
        /// `cgroup/connect6` program.
        pub const PROG_CONNECT6: &str = "admit_connect6";
        /// Hash: local port (`u32`) → [`super::Bucket`].
        pub const MAP_PORT_BUCKETS: &str = "PORT_BUCKETS";
        /// Hash: cgroup id (`u64`) → [`super::Bucket`].
        pub const MAP_CGROUP_BUCKETS: &str = "CGROUP_BUCKETS";
        /// Per-CPU hash: port → [`super::Verdicts`].
        pub const MAP_PORT_VERDICTS: &str = "PORT_VERDICTS";
        /// Per-CPU hash: cgroup id → [`super::Verdicts`].
        pub const MAP_CGROUP_VERDICTS: &str = "CGROUP_VERDICTS";
        /// LPM trie of exempt peers.
        pub const MAP_EXEMPT: &str = "EXEMPT";
        /// Sock map holding the drop sink (a full listener).
        pub const MAP_DROP_SINK: &str = "DROP_SINK";
        /// Hash: port (`u32`) → [`super::Guard`].
        pub const MAP_GUARDS: &str = "GUARDS";
        /// Sock hash: port (`u32`) → the guarded port's listener.
        pub const MAP_LISTENERS: &str = "LISTENERS";
        /// Read-only global: `struct sock.sk_ack_backlog` offset, from BTF.
        pub const GLOBAL_SK_ACK_BACKLOG: &str = "OFF_SK_ACK_BACKLOG";
        /// Read-only global: 1 enables the guard's code.
        pub const GLOBAL_GUARD_READY: &str = "GUARD_READY";
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::culprits::{IDLE, RUNS, RunLog, Split};

    fn log(runs: &[(u64, u64)]) -> RunLog {
        let mut l = RunLog::default();
        for &(cg, end) in runs {
            l.close(cg, end);
        }
        l
    }

    fn parts(s: &Split) -> Vec<(u64, u64)> {
        s.parts().collect()
    }

    #[test]
    fn a_wait_is_split_by_the_overlap_of_each_run() {
        // Runs: A until 100, B 100..250, A 250..300, idle 300..400 (now).
        let l = log(&[(1, 100), (2, 250), (1, 300), (IDLE, 400)]);
        let mut s = Split::default();
        l.split(150, 400, &mut s);
        // Newest first: idle 100, A 50, B 100; A's two runs merge.
        assert_eq!(parts(&s), vec![(IDLE, 100), (1, 50), (2, 100)]);
        assert_eq!(s.total(), 400 - 150);
    }

    #[test]
    fn the_parts_sum_to_the_wait_and_runs_before_it_are_not_charged() {
        let l = log(&[(7, 10), (8, 20), (9, 30), (10, 40)]);
        let mut s = Split::default();
        l.split(25, 40, &mut s);
        assert_eq!(parts(&s), vec![(10, 10), (9, 5)]);
        // A wait inside one run: that run only.
        let mut s = Split::default();
        l.split(32, 40, &mut s);
        assert_eq!(parts(&s), vec![(10, 8)]);
        // A wait that started exactly at a run's end is not charged to it.
        let mut s = Split::default();
        l.split(30, 40, &mut s);
        assert_eq!(parts(&s), vec![(10, 10)]);
    }

    #[test]
    fn a_wait_older_than_the_ring_goes_to_the_oldest_run() {
        // RUNS + 2 runs of 10 ns each, cgroups 100 + i.
        let runs: Vec<(u64, u64)> = (0..RUNS as u64 + 2)
            .map(|i| (100 + (i % 2), 1_000 + 10 * (i + 1)))
            .collect();
        let l = log(&runs);
        let now = runs.last().unwrap().1;
        let mut s = Split::default();
        l.split(5, now, &mut s);
        assert_eq!(s.total(), now - 5, "{s:?}");
        // The oldest remembered run (index 2, cgroup 100) takes everything
        // since the wait began up to its end.
        let oldest_end = runs[2].1;
        let of = |cg| parts(&s).iter().find(|p| p.0 == cg).map_or(0, |p| p.1);
        let runs_of_100_after = (3..runs.len()).filter(|&i| runs[i].0 == 100).count() as u64;
        assert_eq!(of(100), (oldest_end - 5) + 10 * runs_of_100_after);
    }

    #[test]
    fn past_the_slots_the_rest_goes_to_the_last() {
        let l = log(&[(1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (6, 60)]);
        let mut s = Split::default();
        l.split(15, 60, &mut s);
        // Newest first: 6, 5, 4 take a slot each; 3 the last; 2 (5 ns) folds into it.
        assert_eq!(parts(&s), vec![(6, 10), (5, 10), (4, 10), (3, 15)]);
        assert_eq!(s.total(), 45);
    }

    #[test]
    fn an_empty_log_charges_nothing_and_one_run_takes_all() {
        let mut s = Split::default();
        RunLog::default().split(5, 50, &mut s);
        assert_eq!(s.total(), 0);
        let l = log(&[(3, 50)]);
        l.split(5, 50, &mut s);
        assert_eq!(parts(&s), vec![(3, 45)]);
    }

    #[test]
    fn a_split_overwrites_the_last_one() {
        let mut s = Split::default();
        log(&[(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)]).split(0, 50, &mut s);
        assert_eq!(parts(&s).len(), 4);
        // A shorter split leaves no slot of the longer one in use.
        log(&[(9, 50)]).split(20, 50, &mut s);
        assert_eq!(parts(&s), vec![(9, 30)]);
        assert_eq!(s.total(), 30);
    }

    #[test]
    fn a_zero_wait_charges_nothing() {
        let l = log(&[(3, 50)]);
        let mut s = Split::default();
        l.split(50, 50, &mut s);
        assert_eq!(s.total(), 0);
    }
}
