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
    /// Its last wait + 1, not yet attributed to a cgroup; 0 if none.
    pub pending_ns: u64,
    /// The cgroup of the task that held the CPU when this task got it at
    /// the end of its pending wait (the culprit, 0: the CPU was idle);
    /// stored only while some cgroup is watched ([`culprits`]).
    pub culprit_cg: u64,
}

#[cfg(feature = "user")]
// SAFETY: three `u64`, `repr(C)`, no padding.
unsafe impl aya::Pod for TaskWait {}

/// Per-CPU state of the probes (the one value of the `COUNTERS` map): the
/// event counters and the "announced" flag in one lookup.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CpuCounters {
    /// Indexed by [`counter`].
    pub counts: [u64; counter::LEN as usize],
    /// Non-zero once the probes said they run on this CPU.
    pub announced: u64,
}

#[cfg(feature = "user")]
// SAFETY: `u64`s only, `repr(C)`, no padding.
unsafe impl aya::Pod for CpuCounters {}

/// Who held the CPU while a watched cgroup waited for it.
pub mod culprits {
    /// Key of the `CULPRITS` map: the cgroup that waited (`victim`, a
    /// watched one) and the cgroup of the task that was switched out when
    /// the waiter got the CPU (`culprit`; [`IDLE`] if the CPU was idle).
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
    /// Array of one `u32`: [`super::culprits::CONF_WATCHED`].
    pub const MAP_CULPRIT_CONF: &str = "CULPRIT_CONF";
    /// Per-CPU hash: [`super::culprits::Key`] → wait (ns, `u64`).
    pub const MAP_CULPRITS: &str = "CULPRITS";
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
    /// `task_struct.__state` (`.state` before 5.14) offset, from BTF.
    pub const TASK_STATE: &str = "OFF_TASK_STATE";
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
