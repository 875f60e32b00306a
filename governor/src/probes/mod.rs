//! probes: the embedded kernel programs: loading, attaching, reading their
//! maps, and forwarding their log lines to the agent's log.
//!
//! - [`btf`]: offsets of kernel structs from `/sys/kernel/btf/vmlinux`;
//! - [`tracefs`]: tracepoint field offsets from tracefs `format` files;
//! - [`mapbatch`]: batch lookup-and-delete of the per-interval maps;
//! - [`runq`]: run-queue histograms read into counts and percentiles;
//! - [`slots`]: which cgroups get a histogram slot (an array index in the
//!   probes instead of a hash lookup).
//!
//! Everything attached here is owned by [`Probes`]: links are not pinned, so
//! dropping `Probes` (or the process exiting, however it exits) detaches and
//! unloads every program and map.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

pub mod btf;
pub mod mapbatch;
pub mod runq;
pub mod slots;
pub mod tracefs;

use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePoint, ProgramError, RawTracePoint, TracePoint},
};
use governor_common::{
    counter, globals,
    hist::{self, Hist},
    names,
};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

/// The object built from `governor-ebpf` for `bpfel-unknown-none`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governor"));

/// The same probes with the per-cgroup histogram map preallocated, for
/// hosts with few CPUs (see `governor-ebpf/src/prealloc.rs`).
pub static OBJECT_PREALLOC: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governor-prealloc"));

/// The probes for kernels before 6.1: the histogram map preallocated, and
/// no task-storage map or programs (see `governor-ebpf/src/legacy.rs`).
pub static OBJECT_LEGACY: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governor-legacy"));

/// The first kernel whose task storage allocates from its own caches
/// (`bpf_mem_alloc`), which is safe from a scheduler tracepoint; before it
/// an entry's first use there could allocate through the page allocator
/// with the run-queue lock held. The BTF-tracepoint probes are attached
/// from this version on, the raw ones before.
const TASK_STORAGE_SAFE: (u8, u8) = (6, 4);

/// Memory the preallocated histogram map may take, all CPUs together.
const PREALLOC_BUDGET: usize = 32 << 20;

/// Cgroups a preallocated map must hold for it to be used on kernels that
/// can grow the map instead: the cgroups that ran something within one
/// tick (the agent empties the map every tick). Beyond, their events are
/// counted as lost (`cgroup_map_full`).
const PREALLOC_ENOUGH: usize = 1024;

/// The object for the running kernel on `cpus` CPUs, and the histogram
/// map's size.
fn object_for_kernel(cpus: usize) -> (&'static [u8], Option<u32>) {
    let old = !kernel_at_least(6, 1);
    match prealloc_entries(cpus, old) {
        Some(entries) if old => (OBJECT_LEGACY, Some(entries)),
        Some(entries) => (OBJECT_PREALLOC, Some(entries)),
        None => (OBJECT, None),
    }
}

/// Is the running kernel at least `major.minor` (false if it cannot say)?
fn kernel_at_least(major: u8, minor: u8) -> bool {
    aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(major, minor, 0))
}

/// How many cgroups a preallocated histogram map holds on a host of `cpus`
/// CPUs, or `None` where the map should grow instead.
///
/// The agent takes the entries out of the map every tick and the probes
/// insert them again: in a growing map every insert allocates per-CPU
/// memory and every delete frees it, which costs the agent more CPU than
/// the reads (the README's footprint figures compare the four), so the
/// preallocated map, whose deletes and inserts go through a free list, is
/// used wherever the budget holds [`PREALLOC_ENOUGH`] cgroups (up to 46
/// CPUs). Kernels before 6.1 (`old`) always use it: they deadlock
/// allocating map memory from a scheduler tracepoint.
fn prealloc_entries(cpus: usize, old: bool) -> Option<u32> {
    let entries = hists_in_budget(cpus).clamp(64, governor_common::limits::MAX_CGROUPS as usize);
    (old || entries >= PREALLOC_ENOUGH).then_some(entries as u32)
}

/// Histogram slots on a host of `cpus` CPUs: an eighth of
/// [`PREALLOC_BUDGET`] (16 to `slots::MAX`; 1,024 up to 5 CPUs, 92 on 64).
fn slot_capacity(cpus: usize) -> u32 {
    (hists_in_budget(cpus) / 8).clamp(16, governor_common::slots::MAX as usize) as u32
}

/// How many per-CPU histograms [`PREALLOC_BUDGET`] holds on `cpus` CPUs.
fn hists_in_budget(cpus: usize) -> usize {
    PREALLOC_BUDGET / (std::mem::size_of::<Hist>() * cpus.max(1))
}

/// Adds per-CPU histograms (each an iterator of counts) to `key`'s sum in
/// `sums` (a key can come twice: a batch read finished entry by entry).
fn add_hists<K: std::hash::Hash + Eq, C: Iterator<Item = u64>>(
    sums: &mut HashMap<K, Vec<u64>>,
    key: K,
    mut per_cpu: impl Iterator<Item = C>,
) {
    let sum = match sums.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        // The first CPU's counts, not zeros to add to.
        std::collections::hash_map::Entry::Vacant(e) => match per_cpu.next() {
            Some(first) => e.insert(first.collect()),
            None => return,
        },
    };
    for h in per_cpu {
        for (o, c) in sum.iter_mut().zip(h) {
            *o += c;
        }
    }
}

/// Names of every program in [`OBJECT`]; used to find leftovers.
pub const PROGRAM_NAMES: &[&str] = &[
    names::PROG_SCHED_SWITCH,
    names::PROG_SCHED_SWITCH_RAW,
    names::PROG_SCHED_WAKEUP_RAW,
    names::PROG_SCHED_WAKEUP_NEW_RAW,
    names::PROG_SCHED_SWITCH_BTF,
    names::PROG_SCHED_WAKEUP_BTF,
    names::PROG_SCHED_WAKEUP_NEW_BTF,
    names::PROG_SCHED_WAKEUP,
    names::PROG_SCHED_WAKEUP_NEW,
    names::PROG_SOCK_STATE,
];

/// Why the probes could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The object did not load (verifier, permissions, kernel features).
    #[error("loading governor's kernel programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program the agent expects is not in the object.
    #[error("program {0:?} is missing from the embedded object (build mismatch)")]
    MissingProgram(&'static str),
    /// A map the agent expects is not in the object.
    #[error("map {0:?} is missing from the embedded object (build mismatch)")]
    MissingMap(&'static str),
    /// Loading or attaching one program failed.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: ProgramError,
    },
    /// Reading a map failed.
    #[error("reading map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: aya::maps::MapError,
    },
    /// tracefs is not mounted and could not be mounted.
    #[error("tracefs: {0}")]
    Tracefs(#[from] crate::probes::tracefs::TracefsError),
    /// The kernel's BTF (for BTF tracepoints) could not be read.
    #[error("kernel BTF: {0}")]
    Btf(String),
}

/// One tracepoint probe: its program, its event, and the record fields it
/// reads (global name, field name).
struct TracepointProbe {
    program: &'static str,
    category: &'static str,
    event: &'static str,
    /// (global set to the offset, field name, size the program reads).
    fields: &'static [(&'static str, &'static str, u32)],
    /// The signals lost when this probe cannot run.
    signals: &'static str,
}

const TRACEPOINTS: &[TracepointProbe] = &[
    TracepointProbe {
        program: names::PROG_SCHED_SWITCH,
        category: "sched",
        event: "sched_switch",
        fields: &[
            (globals::SWITCH_PREV_PID, "prev_pid", 4),
            (globals::SWITCH_PREV_STATE, "prev_state", 8),
            (globals::SWITCH_NEXT_PID, "next_pid", 4),
        ],
        signals: "run-queue latency (runq_p50, runq_p99)",
    },
    TracepointProbe {
        program: names::PROG_SCHED_WAKEUP,
        category: "sched",
        event: "sched_wakeup",
        fields: &[(globals::WAKEUP_PID, "pid", 4)],
        signals: "run-queue latency after wakeups",
    },
    TracepointProbe {
        program: names::PROG_SCHED_WAKEUP_NEW,
        category: "sched",
        event: "sched_wakeup_new",
        fields: &[(globals::WAKEUP_NEW_PID, "pid", 4)],
        signals: "run-queue latency of new tasks",
    },
    TracepointProbe {
        program: names::PROG_SOCK_STATE,
        category: "sock",
        event: "inet_sock_set_state",
        fields: &[
            (globals::SOCK_OLDSTATE, "oldstate", 4),
            (globals::SOCK_NEWSTATE, "newstate", 4),
            (globals::SOCK_SPORT, "sport", 2),
            (globals::SOCK_PROTOCOL, "protocol", 2),
        ],
        signals: "accepted connections per port, outbound connects per cgroup",
    },
];

/// The loaded kernel programs and their maps.
pub struct Probes {
    ebpf: Ebpf,
    /// Probes that could not be set up on this kernel, with the reason.
    missing: Vec<String>,
    /// Probes whose offsets were found (and may be attached).
    usable: Vec<&'static str>,
    /// The scheduler probes can use raw tracepoints (BTF offsets resolved).
    sched_raw: bool,
    /// They can use BTF tracepoints and task storage: as `sched_raw`, on a
    /// kernel from [`TASK_STORAGE_SAFE`] whose object has them.
    sched_btf: bool,
    /// The BTF `sched_switch` takes waits from the kernel's `sched_info`
    /// (offsets resolved and set): only it is attached, no wake-up probe.
    from_sched_info: bool,
    /// The socket-state probe can use its raw tracepoint (BTF offsets
    /// resolved); why not otherwise.
    sock_raw: Result<(), String>,
    /// Buffers for batch map reads; `None` once the kernel refused one
    /// (then maps are iterated entry by entry).
    batch: Option<crate::probes::mapbatch::Batch>,
    /// Possible CPUs (per-CPU values come in this many copies).
    cpus: usize,
    /// Programs attached.
    attached: Vec<&'static str>,
    /// The network namespace (inode number) whose ports are counted.
    netns: Option<u32>,
    /// The histogram slots, where the probes use them (the `sched_info`
    /// variant).
    slots: Option<slots::SlotTable>,
    /// The process histogram slots, where the probes use them (the
    /// `sched_info` variant, loaded with per-process histograms).
    proc_slots: Option<slots::SlotTable>,
    /// The waits of every cgroup's histogram taken out so far, per bucket
    /// modulo 2^32: the sched_info switch leaves them out of the host
    /// histogram, which [`Probes::read_maps`] adds them back to.
    host_from_cgroups: Vec<u32>,
}

/// Which histogram slots: the cgroups' or the processes'.
#[derive(Debug, Clone, Copy)]
enum SlotKind {
    Cgroups,
    Processes,
}

impl SlotKind {
    /// Its `SLOT_OF` map, its histogram array, and its generation's index
    /// in `CULPRIT_CONF`.
    fn maps(self) -> (&'static str, &'static str, u32) {
        use governor_common::culprits::{CONF_GEN, CONF_PROC_GEN};
        match self {
            Self::Cgroups => (names::MAP_SLOT_OF, names::MAP_SLOT_RUNQ, CONF_GEN),
            Self::Processes => (
                names::MAP_PROC_SLOT_OF,
                names::MAP_PROC_SLOT_RUNQ,
                CONF_PROC_GEN,
            ),
        }
    }
}

/// The port of a `PORT_ACCEPTS` key if its namespace is `netns` (a key
/// whose namespace the kernel could not say is counted too).
fn counted_in(netns: Option<u32>, key: u64) -> Option<u16> {
    let (ns, port) = governor_common::port_key_parts(key);
    (ns == 0 || netns.is_none_or(|ours| ours == ns)).then_some(port)
}

/// The inode number of a network namespace file (`/proc/PID/ns/net`, a
/// bind mount under `/run/netns`): what the kernel calls `ns.inum`.
pub fn netns_inum(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// Raw-tracepoint scheduler probes: (program, tracepoint).
const SCHED_RAW: &[(&str, &str)] = &[
    (names::PROG_SCHED_SWITCH_RAW, "sched_switch"),
    (names::PROG_SCHED_WAKEUP_RAW, "sched_wakeup"),
    (names::PROG_SCHED_WAKEUP_NEW_RAW, "sched_wakeup_new"),
];

/// Forces the scheduler probes' variant: `raw` (raw tracepoints and the
/// task hash) or `classic` (classic tracepoints); `auto` (the default)
/// takes the cheapest the kernel has. For benchmarks and troubleshooting.
pub const SCHED_PROBES_ENV: &str = "GOVERNOR_SCHED_PROBES";

/// BTF-tracepoint scheduler probes (task storage): (program, tracepoint).
/// The wake-ups first: a wait is never ended by a switch probe whose
/// wake-up probe is not attached yet. Where the switch reads the kernel's
/// `sched_info`, only the last (the switch) is attached.
const SCHED_BTF: &[(&str, &str)] = &[
    (names::PROG_SCHED_WAKEUP_NEW_BTF, "sched_wakeup_new"),
    (names::PROG_SCHED_WAKEUP_BTF, "sched_wakeup"),
    (names::PROG_SCHED_SWITCH_BTF, "sched_switch"),
];

/// The BTF scheduler probes to attach: all of [`SCHED_BTF`], or only the
/// switch where it takes waits from the kernel's `sched_info`.
fn sched_btf_programs(from_sched_info: bool) -> &'static [(&'static str, &'static str)] {
    if from_sched_info {
        &SCHED_BTF[2..]
    } else {
        SCHED_BTF
    }
}

/// Is `program` one of the classic scheduler tracepoint programs?
fn is_classic_sched(program: &str) -> bool {
    [
        names::PROG_SCHED_SWITCH,
        names::PROG_SCHED_WAKEUP,
        names::PROG_SCHED_WAKEUP_NEW,
    ]
    .contains(&program)
}

/// Figures taken from the maps: the host histogram is cumulative (since
/// load); the per-cgroup and per-port entries are those the probes wrote
/// since the previous read, which took them out of the maps (see
/// [`Probes::read_maps`]).
#[derive(Debug, Default, Clone)]
pub struct MapReadings {
    /// Host-wide run-queue histogram, cumulative since load: per bucket,
    /// the per-CPU `u32` counts summed modulo 2^32 (they wrap; take deltas
    /// with `runq::wrapping_delta`).
    pub host_runq: Vec<u32>,
    /// Run-queue histogram per cgroup id, of the cgroups that had waits.
    pub cgroup_runq: HashMap<u64, Vec<u64>>,
    /// Outbound connects per cgroup id.
    pub cgroup_connects: HashMap<u64, u64>,
    /// Completed handshakes per local port.
    pub port_accepts: HashMap<u16, u64>,
    /// Run-queue wait (ns) of each watched cgroup id (`victim`) by the
    /// cgroup id that held the CPU during it, each the part it ran
    /// (`culprit`; `governor_common::culprits::IDLE`: nothing ran).
    pub culprits: HashMap<governor_common::culprits::Key, u64>,
}

/// How [`Probes::read_maps_with`] reads the per-cgroup and per-port maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadMode {
    /// A few batch system calls (when the kernel has them and is trusted
    /// with them) rather than entry by entry.
    pub batch: bool,
    /// Delete the entries read (the agent's way); `false` leaves the maps
    /// as they are (to compare the read paths).
    pub drain: bool,
}

impl MapReadings {
    /// Adds per-CPU histograms (each an iterator of counts) to cgroup
    /// `id`'s sum (an id can come twice when a batch read is finished
    /// entry by entry).
    fn add_hists<C: Iterator<Item = u64>>(&mut self, id: u64, per_cpu: impl Iterator<Item = C>) {
        add_hists(&mut self.cgroup_runq, id, per_cpu);
    }
}

impl Probes {
    /// Loads the embedded object with field offsets parsed from the running
    /// kernel's tracefs (mounting it if needed). Nothing is attached yet.
    ///
    /// A tracepoint or field this kernel lacks is not an error: its probe is
    /// left out and [`Probes::missing`] says which signals are lost.
    /// aya raises `RLIMIT_MEMLOCK` itself on kernels that charge BPF memory to it.
    pub fn load() -> Result<Self, ProbeError> {
        Self::load_with(None)
    }

    /// As [`Probes::load`], and with `processes` (a map size) the
    /// scheduler probes also keep a run-queue histogram per process
    /// ([`Probes::take_processes`]), for `governor observe --processes`: a
    /// hash lookup more per measured wait, which the agent never pays.
    pub fn load_with(processes: Option<u32>) -> Result<Self, ProbeError> {
        let root = Path::new(crate::probes::tracefs::DEFAULT_ROOT);
        crate::probes::tracefs::ensure_mounted(root)?;
        let mut offsets: Vec<(&'static str, u32)> = Vec::new();
        let mut missing = Vec::new();
        let mut usable = Vec::new();
        let kernel_btf =
            crate::probes::btf::KernelBtf::open(Path::new(crate::probes::btf::VMLINUX));
        // The raw socket-state probe needs `struct sock` offsets from BTF;
        // with them, the classic tracepoint (and its perf_event_open) is only
        // a fallback.
        let sock_raw = match kernel_btf.as_ref().map(|b| b.sock_offsets()) {
            Ok(Ok((port, protocol))) => {
                offsets.push((globals::SK_NUM, port));
                offsets.push((globals::SK_PROTOCOL, protocol));
                // Without them every namespace's port N is one port N.
                match kernel_btf.as_ref().map(|b| b.netns_offsets()) {
                    Ok(Ok((net, inum))) => {
                        offsets.push((globals::SK_NET, net));
                        offsets.push((globals::NET_INUM, inum));
                        offsets.push((globals::NETNS_KNOWN, 1));
                    }
                    Ok(Err(e)) => tracing::warn!(
                        "{e}: accepted connections are counted per port across every network namespace"
                    ),
                    Err(_) => {}
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        for tp in TRACEPOINTS {
            let found: Result<Vec<_>, _> = tp
                .fields
                .iter()
                .map(|(global, field, size)| {
                    crate::probes::tracefs::sized_field_offset(
                        root,
                        tp.category,
                        tp.event,
                        field,
                        *size,
                    )
                    .map(|f| (*global, f.offset))
                })
                .collect();
            match found {
                Ok(f) => {
                    offsets.extend(f);
                    usable.push(tp.program);
                }
                // The raw probe does without the record's fields.
                Err(e) if tp.program == names::PROG_SOCK_STATE && sock_raw.is_ok() => {
                    tracing::debug!("{e}: the raw socket-state probe is used");
                }
                Err(e) => {
                    tracing::warn!("{e}: {} will be missing", tp.signals);
                    missing.push(format!("{}: {e}", tp.signals));
                }
            }
        }
        // The cheaper raw tracepoints need task_struct offsets from BTF.
        // pid_t is 4 bytes; `__state` is an unsigned int, `state` (before
        // 5.14) a long whose low half the program reads (little endian).
        let chain = kernel_btf.as_ref().ok().map(|b| b.cgroup_id_offsets());
        let sched_info = kernel_btf.as_ref().ok().map(|b| b.sched_info_offsets());
        let forced = std::env::var(SCHED_PROBES_ENV).ok();
        let btf = kernel_btf.and_then(|b| {
            Ok((
                b.sized_member_offset("task_struct", &["pid"], &[4])?,
                b.sized_member_offset("task_struct", &["__state", "state"], &[4, 8])?,
                b.sized_member_offset("task_struct", &["tgid"], &[4])?,
            ))
        });
        // The BTF tracepoints also read the switched-in task's cgroup id.
        let mut cgroup_chain = false;
        let sched_raw = match btf {
            Ok((pid, state, tgid)) => {
                offsets.push((globals::TASK_PID, pid));
                offsets.push((globals::TASK_STATE, state));
                offsets.push((globals::TASK_TGID, tgid));
                match chain {
                    Some(Ok([cgroups, dfl, kn, id])) => {
                        offsets.push((globals::TASK_CGROUPS, cgroups));
                        offsets.push((globals::CSS_SET_DFL_CGRP, dfl));
                        offsets.push((globals::CGROUP_KN, kn));
                        offsets.push((globals::KERNFS_NODE_ID, id));
                        cgroup_chain = true;
                    }
                    Some(Err(e)) => tracing::info!(
                        "{e}: no BTF-tracepoint scheduler probes (they read a task's cgroup id)"
                    ),
                    None => {}
                }
                true
            }
            Err(e) => {
                tracing::info!("{e}: the scheduler probes use classic tracepoints (costlier)");
                false
            }
        };
        // The BTF switch can take each wait from the kernel's own
        // accounting (no wake-up probes), unless `btf` is forced.
        let mut from_sched_info = false;
        match sched_info {
            Some(Ok([delay, queued, cfs_rq, rq, clock]))
                if cgroup_chain && !matches!(forced.as_deref(), Some("btf")) =>
            {
                offsets.push((globals::TASK_RUN_DELAY, delay));
                offsets.push((globals::TASK_LAST_QUEUED, queued));
                offsets.push((globals::TASK_SE_CFS_RQ, cfs_rq));
                offsets.push((globals::CFS_RQ_RQ, rq));
                offsets.push((globals::RQ_CLOCK, clock));
                offsets.push((globals::SCHED_INFO_KNOWN, 1));
                from_sched_info = true;
            }
            Some(Err(e)) if cgroup_chain => tracing::info!(
                "{e}: the BTF scheduler probes time waits themselves (wake-up probes and the clock)"
            ),
            _ => {}
        }
        let mut loader = EbpfLoader::new();
        // The task storage map (`TASK_WAITS`): aya has no type for it, and
        // the agent never reads it.
        loader.allow_unsupported_maps();
        for (name, off) in &offsets {
            loader.override_global(name, off, true);
        }
        loader.override_global(globals::CONFIGURED, &1u32, true);
        if let Some(entries) = processes {
            loader.override_global(globals::PROCS_ON, &1u32, true);
            loader.map_max_entries(names::MAP_PROC_RUNQ, entries.max(1));
        }
        let cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
        let (object, prealloc) = object_for_kernel(cpus);
        if from_sched_info {
            loader.map_max_entries(names::MAP_SLOT_RUNQ, slot_capacity(cpus));
            if processes.is_some() {
                loader.map_max_entries(names::MAP_PROC_SLOT_RUNQ, slot_capacity(cpus));
            }
        }
        match prealloc {
            Some(entries) => {
                tracing::info!("per-cgroup histograms preallocated for {entries} cgroups");
                loader.map_max_entries(names::MAP_CGROUP_RUNQ, entries);
            }
            None => tracing::info!(
                "per-cgroup histograms in a growing map (too many CPUs for the preallocation budget): \
                 each tick's inserts and deletes allocate and free per-CPU memory"
            ),
        }
        let batched = batch_reads_trusted(prealloc.is_some());
        tracing::info!(
            "probe maps read {}",
            if batched {
                "in batches (a few system calls a tick)"
            } else {
                "entry by entry (Linux 6.1-6.5 with a growing map: batch reads not trusted)"
            }
        );
        let ebpf = loader.load(object)?;
        let (major, minor) = TASK_STORAGE_SAFE;
        let (sched_raw, allow_btf) = match forced.as_deref() {
            None | Some("auto") => (sched_raw, true),
            Some("btf") => {
                tracing::info!(
                    "{SCHED_PROBES_ENV}=btf: the BTF scheduler probes time waits themselves"
                );
                (sched_raw, true)
            }
            Some(f @ ("classic" | "raw")) => {
                tracing::info!("{SCHED_PROBES_ENV}={f}: the scheduler probes' variant is forced");
                (sched_raw && f == "raw", false)
            }
            Some(other) => {
                tracing::warn!("{SCHED_PROBES_ENV}={other:?} ignored (auto, btf, raw or classic)");
                (sched_raw, true)
            }
        };
        let sched_btf = allow_btf
            && sched_raw
            && cgroup_chain
            && kernel_at_least(major, minor)
            && ebpf.program(names::PROG_SCHED_SWITCH_BTF).is_some();
        if allow_btf && sched_raw && !sched_btf {
            tracing::info!(
                "the scheduler probes use raw tracepoints and a task hash: BTF tracepoints \
                 with task storage (cheaper) need Linux {major}.{minor}"
            );
        }
        Ok(Self {
            ebpf,
            missing,
            usable,
            sched_raw,
            sched_btf,
            from_sched_info,
            sock_raw,
            batch: batched.then(crate::probes::mapbatch::Batch::default),
            cpus,
            attached: Vec::new(),
            // The loading thread's namespace (a thread may have joined one).
            netns: netns_inum(Path::new("/proc/thread-self/ns/net")),
            slots: (sched_btf && from_sched_info)
                .then(|| slots::SlotTable::new(slot_capacity(cpus))),
            proc_slots: (sched_btf && from_sched_info && processes.is_some())
                .then(|| slots::SlotTable::new(slot_capacity(cpus))),
            host_from_cgroups: vec![0; hist::BUCKETS],
        })
    }

    /// Counts accepted connections of the listeners in the network
    /// namespace whose inode number is `inum` (by default the agent's own):
    /// the namespace whose ports the policies name and sock_diag reads.
    pub fn count_ports_in(&mut self, inum: u32) {
        self.netns = Some(inum);
    }

    /// Watches `ids`: the probes attribute these cgroups' run-queue waits
    /// to the cgroup that held the CPU ([`MapReadings::culprits`]); others
    /// cost nothing. At most `limits::MAX_WATCHED` (the rest are not
    /// watched, said once in the log).
    pub fn set_watched(&mut self, ids: &[u64]) -> Result<(), ProbeError> {
        let max = governor_common::limits::MAX_WATCHED as usize;
        if ids.len() > max {
            tracing::warn!(
                "{} cgroups watched: run-queue culprits are counted for the first {max}",
                ids.len()
            );
        }
        let want: std::collections::BTreeSet<u64> = ids.iter().copied().take(max).collect();
        let name = names::MAP_WATCHED;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        let mut watched = aya::maps::HashMap::<_, u64, u8>::try_from(map)
            .map_err(|source| ProbeError::Map { name, source })?;
        let had: Vec<u64> = watched.keys().filter_map(Result::ok).collect();
        for id in had.iter().filter(|id| !want.contains(id)) {
            let _ = watched.remove(id);
        }
        for id in &want {
            watched
                .insert(id, 1, 0)
                .map_err(|source| ProbeError::Map { name, source })?;
        }
        let name = names::MAP_CULPRIT_CONF;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        let mut conf = aya::maps::Array::<_, u32>::try_from(map)
            .map_err(|source| ProbeError::Map { name, source })?;
        let n = u32::try_from(want.len()).unwrap_or(u32::MAX);
        conf.set(governor_common::culprits::CONF_WATCHED, n, 0)
            .map_err(|source| ProbeError::Map { name, source })?;
        // Watched cgroups get histogram slots first: the probes then count
        // their culprits without a `WATCHED` lookup.
        self.change_slots(SlotKind::Cgroups, |table, read| {
            table.set_watched(&want, read)
        })
    }

    /// A slot table (`which`) and its histogram array, if the probes use
    /// such slots.
    #[allow(clippy::type_complexity)]
    fn slot_table(
        &mut self,
        which: SlotKind,
    ) -> Result<
        Option<(
            &mut slots::SlotTable,
            PerCpuArray<&aya::maps::MapData, Hist>,
        )>,
        ProbeError,
    > {
        let table = match which {
            SlotKind::Cgroups => self.slots.as_mut(),
            SlotKind::Processes => self.proc_slots.as_mut(),
        };
        let Some(table) = table else {
            return Ok(None);
        };
        let (_, name, _) = which.maps();
        let runq = PerCpuArray::<_, Hist>::try_from(
            self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))?,
        )
        .map_err(|source| ProbeError::Map { name, source })?;
        Ok(Some((table, runq)))
    }

    /// Applies what `decide` makes of a slot table (`which`) to its
    /// `SLOT_OF` map and its generation in `CULPRIT_CONF` (nothing where
    /// the probes use no such slots).
    fn change_slots(
        &mut self,
        which: SlotKind,
        decide: impl FnOnce(
            &mut slots::SlotTable,
            &mut dyn FnMut(u32) -> Vec<u32>,
        ) -> Vec<slots::Change>,
    ) -> Result<(), ProbeError> {
        let (slot_of, _, conf_index) = which.maps();
        let Some((table, runq_map)) = self.slot_table(which)? else {
            return Ok(());
        };
        // A slot that cannot be read starts from zero: its first delta
        // then holds what it counted before (a failed read is not expected).
        let mut read = |slot: u32| match runq_map.get(&slot, 0) {
            Ok(per_cpu) => sum_hists(per_cpu.iter()),
            Err(_) => vec![0; hist::BUCKETS],
        };
        let changes = decide(table, &mut read);
        if changes.is_empty() {
            return Ok(());
        }
        let generation = table.generation();
        tracing::debug!(
            "{slot_of}: {} changes, {} of {} slots in use",
            changes.len(),
            table.owned().len(),
            table.capacity()
        );
        let name = slot_of;
        let mut map = aya::maps::HashMap::<_, u64, u32>::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or(ProbeError::MissingMap(name))?,
        )
        .map_err(|source| ProbeError::Map { name, source })?;
        for change in &changes {
            match *change {
                slots::Change::Set { id, value } => map
                    .insert(id, value, 0)
                    .map_err(|source| ProbeError::Map { name, source })?,
                slots::Change::Remove { id } => {
                    let _ = map.remove(&id);
                }
            }
        }
        let name = names::MAP_CULPRIT_CONF;
        let mut conf = aya::maps::Array::<_, u32>::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or(ProbeError::MissingMap(name))?,
        )
        .map_err(|source| ProbeError::Map { name, source })?;
        conf.set(conf_index, generation, 0)
            .map_err(|source| ProbeError::Map { name, source })
    }

    /// The waits each slot of a table (`which`) counted since the last
    /// read, by key (advancing the slots' bases if `advance`).
    fn read_slots(
        &mut self,
        which: SlotKind,
        advance: bool,
    ) -> Result<Vec<(u64, Vec<u64>)>, ProbeError> {
        let (_, name, _) = which.maps();
        let Some((table, runq)) = self.slot_table(which)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (slot, id) in table.owned() {
            let per_cpu = runq
                .get(&slot, 0)
                .map_err(|source| ProbeError::Map { name, source })?;
            let d = table.delta(slot, &sum_hists(per_cpu.iter()), advance);
            if d.iter().any(|&c| c != 0) {
                out.push((id, d));
            }
        }
        Ok(out)
    }

    /// True while the maps are read in batches (the kernel has batch
    /// lookups, is trusted with them, and has not refused one).
    pub fn reads_in_batches(&self) -> bool {
        self.batch.is_some()
    }

    /// Ids of our loaded programs (to check they are gone after exit).
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }

    /// Loads the probes, forwards their log lines (from a tokio task) and
    /// attaches them; warns of each signal this kernel cannot give. What the
    /// agent and `observe` both do at start.
    pub fn start() -> anyhow::Result<(Self, JoinHandle<()>)> {
        use anyhow::Context as _;
        let mut probes = Self::load().context("loading the embedded kernel programs")?;
        let forwarder = probes.spawn_log_forwarder().context("wiring kernel logs")?;
        probes.attach_all().context("attaching the probes")?;
        for m in probes.missing() {
            tracing::warn!("signal missing on this kernel: {m}");
        }
        Ok((probes, forwarder))
    }

    /// Signals this kernel cannot give, with the reason.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// True if the scheduler probes that measure run-queue waits are
    /// attached (raw or classic tracepoints): without them the run-queue
    /// histograms stay empty, which is no data, not "nothing waited".
    pub fn counts_runq(&self) -> bool {
        [
            names::PROG_SCHED_SWITCH_BTF,
            names::PROG_SCHED_SWITCH_RAW,
            names::PROG_SCHED_SWITCH,
        ]
        .iter()
        .any(|p| self.attached.contains(p))
    }

    /// True if the probe counting completed handshakes per port is attached.
    pub fn counts_handshakes(&self) -> bool {
        self.attached.contains(&names::PROG_SOCK_STATE)
            || self.attached.contains(&names::PROG_SOCK_STATE_RAW)
    }

    /// True if the socket-state probe runs on its raw tracepoint.
    pub fn sock_raw(&self) -> bool {
        self.attached.contains(&names::PROG_SOCK_STATE_RAW)
    }

    /// Starts forwarding the kernel programs' log lines (aya-log) to the
    /// agent's log (`log` → `tracing`) from a tokio task. Call it before
    /// [`Probes::attach_all`] so that no early line is lost.
    pub fn spawn_log_forwarder(&mut self) -> anyhow::Result<JoinHandle<()>> {
        let logger = aya_log::EbpfLogger::init(&mut self.ebpf)?;
        // SAFETY: the logger owns its ring buffer's fd and keeps it open, and
        // nothing replaces or closes it while the AsyncFd owns the logger.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)? };
        Ok(tokio::spawn(async move {
            loop {
                match fd.readable_mut().await {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(e) => {
                        tracing::error!("kernel log forwarder stopped: {e}");
                        return;
                    }
                }
            }
        }))
    }

    /// Loads and attaches every probe whose tracepoint exists. A probe that
    /// fails to attach is recorded in [`Probes::missing`]; the rest go on.
    /// Fails only if no probe at all could be attached.
    pub fn attach_all(&mut self) -> Result<(), ProbeError> {
        let mut attached = 0;
        let mut last_err = None;
        if self.sched_btf {
            match self.attach_sched_btf() {
                Ok(()) => {
                    if self.from_sched_info {
                        tracing::info!(
                            "scheduler probes: sched_switch on a BTF tracepoint, each wait from \
                             the kernel's own run-queue accounting (sched_info), no wake-up probes"
                        );
                    } else {
                        tracing::info!(
                            "scheduler probes on BTF tracepoints, each task's wait in its task storage"
                        );
                    }
                    attached += sched_btf_programs(self.from_sched_info).len();
                }
                Err(e) => {
                    tracing::warn!("{e}: falling back to raw scheduler tracepoints");
                    self.sched_btf = false;
                }
            }
        }
        if self.sched_raw && !self.sched_btf {
            for (program, event) in SCHED_RAW {
                if let Err(e) = self.attach_raw(program, event) {
                    // Fall back to the classic scheduler tracepoints.
                    tracing::warn!("{e}: falling back to classic scheduler tracepoints");
                    self.sched_raw = false;
                    break;
                }
                self.attached.push(*program);
                attached += 1;
            }
        }
        let mut sock_raw_attached = false;
        if self.sock_raw.is_ok() {
            match self.attach_raw(names::PROG_SOCK_STATE_RAW, "inet_sock_set_state") {
                Ok(()) => {
                    attached += 1;
                    sock_raw_attached = true;
                    self.attached.push(names::PROG_SOCK_STATE_RAW);
                }
                Err(e) => {
                    tracing::warn!(
                        "{e}: falling back to the classic inet_sock_set_state tracepoint"
                    );
                    self.sock_raw = Err(e.to_string());
                }
            }
        }
        for tp in TRACEPOINTS {
            if ((self.sched_raw || self.sched_btf) && is_classic_sched(tp.program))
                || (sock_raw_attached && tp.program == names::PROG_SOCK_STATE)
            {
                continue;
            }
            if !self.usable.contains(&tp.program) {
                let said = self.missing.iter().any(|m| m.starts_with(tp.signals));
                if tp.program == names::PROG_SOCK_STATE && !said {
                    // Neither variant: say why the raw one was not used too.
                    let why = self.sock_raw.clone().err().unwrap_or_default();
                    self.missing.push(format!(
                        "{}: tracepoint fields not found, and no raw tracepoint ({why})",
                        tp.signals
                    ));
                }
                continue;
            }
            match self.attach_tracepoint(tp.program, tp.category, tp.event) {
                Ok(()) => attached += 1,
                Err(e) => {
                    tracing::warn!("{e}: {} will be missing", tp.signals);
                    self.missing.push(format!("{}: {e}", tp.signals));
                    last_err = Some(e);
                }
            }
        }
        match (attached, last_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Program `name` of the object, as its type `T`.
    fn program_as<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, ProbeError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or(ProbeError::MissingProgram(name))?
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })
    }

    fn attach_tracepoint(
        &mut self,
        name: &'static str,
        category: &str,
        event: &str,
    ) -> Result<(), ProbeError> {
        let program: &mut TracePoint = self.program_as(name)?;
        program
            .load()
            .map_err(|source| ProbeError::Program { name, source })?;
        program
            .attach(category, event)
            .map_err(|source| ProbeError::Program { name, source })?;
        tracing::debug!(program = name, "attached to {category}:{event}");
        self.attached.push(name);
        Ok(())
    }

    /// Attaches the BTF-tracepoint scheduler probes, all or none (what was
    /// attached is unloaded again if one fails).
    fn attach_sched_btf(&mut self) -> Result<(), ProbeError> {
        let btf = aya::Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
        let programs = sched_btf_programs(self.from_sched_info);
        for (i, (name, event)) in programs.iter().enumerate() {
            if let Err(e) = self.attach_btf(name, event, &btf) {
                for (done, _) in &programs[..i] {
                    if let Ok(p) = self.program_as::<BtfTracePoint>(done) {
                        let _ = p.unload();
                    }
                    self.attached.retain(|a| a != done);
                }
                return Err(e);
            }
            self.attached.push(name);
        }
        Ok(())
    }

    fn attach_btf(
        &mut self,
        name: &'static str,
        event: &str,
        btf: &aya::Btf,
    ) -> Result<(), ProbeError> {
        let program: &mut BtfTracePoint = self.program_as(name)?;
        program
            .load(event, btf)
            .map_err(|source| ProbeError::Program { name, source })?;
        program
            .attach()
            .map_err(|source| ProbeError::Program { name, source })?;
        tracing::debug!(program = name, "attached to BTF tracepoint {event}");
        Ok(())
    }

    fn attach_raw(&mut self, name: &'static str, event: &str) -> Result<(), ProbeError> {
        let program: &mut RawTracePoint = self.program_as(name)?;
        program
            .load()
            .map_err(|source| ProbeError::Program { name, source })?;
        program
            .attach(event)
            .map_err(|source| ProbeError::Program { name, source })?;
        tracing::debug!(program = name, "attached to raw tracepoint {event}");
        Ok(())
    }

    /// True if the scheduler probes run on raw tracepoints (BTF offsets).
    pub fn sched_raw(&self) -> bool {
        self.sched_raw && !self.sched_btf
    }

    /// True if the scheduler probes run on BTF tracepoints with task storage.
    pub fn sched_btf(&self) -> bool {
        self.sched_btf
    }

    /// True if they take each wait from the kernel's `sched_info` (the BTF
    /// `sched_switch` alone; no wake-up probe, so no wake-up count).
    pub fn sched_info(&self) -> bool {
        self.sched_btf && self.from_sched_info
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, ProbeError> {
        self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))
    }

    /// The event counters summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, ProbeError> {
        let name = names::MAP_COUNTERS;
        let array = PerCpuArray::<_, governor_common::CpuCounters>::try_from(self.map(name)?)
            .map_err(|source| ProbeError::Map { name, source })?;
        let values = array
            .get(&0, 0)
            .map_err(|source| ProbeError::Map { name, source })?;
        let read = |index: u32| -> u64 {
            values
                .iter()
                .map(|c| c.counts.get(index as usize).copied().unwrap_or(0))
                .sum()
        };
        let mut out = BTreeMap::new();
        for (label, index) in [
            ("sched_switch", counter::SCHED_SWITCH),
            ("sched_wakeup", counter::SCHED_WAKEUP),
            ("runq_samples", counter::RUNQ_SAMPLES),
            ("sock_state", counter::SOCK_STATE),
            ("cgroup_map_full", counter::CGROUP_MAP_FULL),
            ("port_map_full", counter::PORT_MAP_FULL),
            ("start_map_full", counter::START_MAP_FULL),
            ("culprit_map_full", counter::CULPRIT_MAP_FULL),
        ] {
            // Without wake-up probes there is no wake-up count to show.
            if index == counter::SCHED_WAKEUP && self.sched_info() {
                continue;
            }
            out.insert(label, read(index));
        }
        Ok(out)
    }

    /// Reads the host histogram and takes the per-cgroup and per-port
    /// entries out of their maps (a batch lookup-and-delete, or entry by
    /// entry on kernels without a trusted one).
    ///
    /// Taking them out means a map holds only what happened since the last
    /// tick: the agent copies the entries of the cgroups that ran something,
    /// not of every cgroup ever seen (with a thousand cgroups that copy was
    /// most of the agent's CPU), and the entries of removed cgroups go away
    /// by themselves. The probes re-insert an entry at its next event. A
    /// count the probes add to an entry while it is being copied and
    /// deleted is lost (a window of nanoseconds in the batch, about a
    /// microsecond entry by entry).
    pub fn read_maps(&mut self) -> Result<MapReadings, ProbeError> {
        self.read_maps_with(ReadMode {
            batch: true,
            drain: true,
        })
    }

    /// [`Probes::read_maps`], choosing the read path and whether to delete.
    pub fn read_maps_with(&mut self, mode: ReadMode) -> Result<MapReadings, ProbeError> {
        let mut out = MapReadings::default();
        let name = names::MAP_HOST_RUNQ;
        let host = PerCpuArray::<_, Hist>::try_from(self.map(name)?)
            .map_err(|source| ProbeError::Map { name, source })?;
        let per_cpu = host
            .get(&0, 0)
            .map_err(|source| ProbeError::Map { name, source })?;
        out.host_runq = sum_hists(per_cpu.iter());

        if !(mode.batch && self.read_batched(&mut out, mode.drain)) {
            self.read_iterating(&mut out, mode.drain)?;
        }
        // The cgroups that waited in the hash, before the slots' are added.
        let hot: Vec<u64> = match self.slots {
            Some(_) if mode.drain => out.cgroup_runq.keys().copied().collect(),
            _ => Vec::new(),
        };
        for (id, d) in self.read_slots(SlotKind::Cgroups, mode.drain)? {
            out.add_hists(id, std::iter::once(d.into_iter()));
        }
        if mode.drain {
            self.change_slots(SlotKind::Cgroups, |table, read| table.promote(hot, read))?;
        }
        if self.sched_info() {
            // The sched_info switch leaves the waits a cgroup's histogram
            // holds out of the host's: the host's is theirs (all cgroups',
            // as read and taken out so far) plus its own.
            let mut now = self.host_from_cgroups.clone();
            for h in out.cgroup_runq.values() {
                add_wrapping(&mut now, h);
            }
            add_wrapping(&mut out.host_runq, &now);
            if mode.drain {
                self.host_from_cgroups = now;
            }
        }
        Ok(out)
    }

    /// The per-cgroup and per-port maps in a few batch lookups; false if
    /// the kernel has none (before 5.6), and from then on. On a refusal
    /// midway what was read is kept and the caller reads the rest.
    fn read_batched(&mut self, out: &mut MapReadings, drain: bool) -> bool {
        use std::os::fd::AsFd as _;
        let Some(batch) = self.batch.as_mut() else {
            return false;
        };
        let fd_of = |name| match self.ebpf.map(name) {
            Some(aya::maps::Map::PerCpuHashMap(m)) => Some(m.fd().as_fd()),
            _ => None,
        };
        let (Some(runq), Some(conns), Some(ports), Some(culprits)) = (
            fd_of(names::MAP_CGROUP_RUNQ),
            fd_of(names::MAP_CGROUP_CONNECTS),
            fd_of(names::MAP_PORT_ACCEPTS),
            fd_of(names::MAP_CULPRITS),
        ) else {
            return false;
        };
        let cpus = self.cpus;
        let netns = self.netns;
        let hist_stride = crate::probes::mapbatch::per_cpu_stride(std::mem::size_of::<Hist>());
        let u64_at =
            |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or_default());
        let counter_sum = |v: &[u8]| (0..cpus).map(|c| u64_at(v, c * 8)).sum::<u64>();
        let result = batch
            .for_each(runq, 8, hist_stride * cpus, drain, |k, v| {
                let per_cpu = v.chunks_exact(hist_stride).map(|h| {
                    (h.chunks_exact(4).take(hist::BUCKETS))
                        .map(|c| u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                });
                out.add_hists(u64_at(k, 0), per_cpu);
            })
            .and_then(|()| {
                batch.for_each(conns, 8, 8 * cpus, drain, |k, v| {
                    *out.cgroup_connects.entry(u64_at(k, 0)).or_default() += counter_sum(v);
                })
            })
            .and_then(|()| {
                batch.for_each(ports, 8, 8 * cpus, drain, |k, v| {
                    if let Some(port) = counted_in(netns, u64_at(k, 0)) {
                        *out.port_accepts.entry(port).or_default() += counter_sum(v);
                    }
                })
            })
            .and_then(|()| {
                batch.for_each(culprits, 16, 8 * cpus, drain, |k, v| {
                    let key = governor_common::culprits::Key {
                        victim: u64_at(k, 0),
                        culprit: u64_at(k, 8),
                    };
                    *out.culprits.entry(key).or_default() += counter_sum(v);
                })
            });
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("batch map lookups unavailable ({e}); reading maps entry by entry");
                self.batch = None;
                false
            }
        }
    }

    /// The per-cgroup and per-port maps, entry by entry, added to `out`.
    fn read_iterating(&mut self, out: &mut MapReadings, drain: bool) -> Result<(), ProbeError> {
        take_entries::<u64, Hist>(&mut self.ebpf, names::MAP_CGROUP_RUNQ, drain, |id, v| {
            out.add_hists(id, v.iter().map(|h| h.counts.iter().map(|&c| u64::from(c))));
        })?;
        take_entries::<u64, u64>(
            &mut self.ebpf,
            names::MAP_CGROUP_CONNECTS,
            drain,
            |id, v| {
                *out.cgroup_connects.entry(id).or_default() += v.iter().sum::<u64>();
            },
        )?;
        let netns = self.netns;
        take_entries::<u64, u64>(&mut self.ebpf, names::MAP_PORT_ACCEPTS, drain, |key, v| {
            if let Some(port) = counted_in(netns, key) {
                *out.port_accepts.entry(port).or_default() += v.iter().sum::<u64>();
            }
        })?;
        take_entries::<governor_common::culprits::Key, u64>(
            &mut self.ebpf,
            names::MAP_CULPRITS,
            drain,
            |key, v| {
                *out.culprits.entry(key).or_default() += v.iter().sum::<u64>();
            },
        )
    }

    /// How many processes' histograms fit the preallocation budget on a
    /// host of `cpus` CPUs (256 to 8,192): the map size `observe
    /// --processes` asks for.
    pub fn process_entries(cpus: usize) -> u32 {
        hists_in_budget(cpus).clamp(256, 8192) as u32
    }

    /// Takes the per-process run-queue histograms out of the map (tgid →
    /// counts per bucket, summed over CPUs): the waits since the last
    /// take. Empty unless loaded with [`Probes::load_with`]`(Some(_))`.
    pub fn take_processes(&mut self) -> Result<HashMap<u32, Vec<u64>>, ProbeError> {
        let mut out: HashMap<u32, Vec<u64>> = HashMap::new();
        take_entries::<u32, Hist>(&mut self.ebpf, names::MAP_PROC_RUNQ, true, |tgid, v| {
            add_hists(
                &mut out,
                tgid,
                v.iter().map(|h| h.counts.iter().map(|&c| u64::from(c))),
            );
        })?;
        // The processes that waited in the hash get slots after this take
        // (as cgroups do after a tick, see `slots`).
        let hot: Vec<u64> = out.keys().map(|&t| u64::from(t)).collect();
        for (tgid, d) in self.read_slots(SlotKind::Processes, true)? {
            let Ok(tgid) = u32::try_from(tgid) else {
                continue;
            };
            add_hists(&mut out, tgid, std::iter::once(d.into_iter()));
        }
        self.change_slots(SlotKind::Processes, |table, read| table.promote(hot, read))?;
        Ok(out)
    }

    /// Cgroup `id`'s histogram slot, if the probes use slots and it has one
    /// (see [`slots`]).
    pub fn slot_of(&self, id: u64) -> Option<u32> {
        self.slots.as_ref().and_then(|t| t.slot_of(id))
    }

    /// Process `tgid`'s histogram slot, if the probes use slots for
    /// processes and it has one.
    pub fn process_slot_of(&self, tgid: u32) -> Option<u32> {
        self.proc_slots
            .as_ref()
            .and_then(|t| t.slot_of(u64::from(tgid)))
    }

    /// Cgroup ids that have an entry in the per-cgroup run-queue hash or
    /// connect counters now (not those with histogram slots, see
    /// [`Probes::slot_of`]).
    pub fn cgroup_ids(&self) -> Result<Vec<u64>, ProbeError> {
        let mut ids = Vec::new();
        let name = names::MAP_CGROUP_RUNQ;
        let m = PerCpuHashMap::<_, u64, Hist>::try_from(self.map(name)?)
            .map_err(|source| ProbeError::Map { name, source })?;
        ids.extend(m.keys().filter_map(Result::ok));
        let name = names::MAP_CGROUP_CONNECTS;
        let m = PerCpuHashMap::<_, u64, u64>::try_from(self.map(name)?)
            .map_err(|source| ProbeError::Map { name, source })?;
        ids.extend(m.keys().filter_map(Result::ok));
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// Batch map reads are used from Linux 6.6 on, and on older kernels when
/// every map read is preallocated (`prealloc`: the histogram map; the
/// counter maps always are). In a 6.1 guest the thread reading a growing
/// histogram map once locked up in the kernel (soft lockup, during the
/// sensor tests, 1 of 6 guest runs; under QEMU's multi-threaded TCG, since
/// found to run stale kernel code, which may have been the cause): 6.1–6.3
/// reuse freed elements of growing hash maps without waiting for readers.
/// Preallocated elements are reused through a free list, and a batch read
/// copies a bucket under its lock.
fn batch_reads_trusted(prealloc: bool) -> bool {
    prealloc
        || aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// Calls `f` with each entry of the per-CPU hash map `name`, one at a time:
/// the keys first, then each value, deleted after it is read if `drain`.
/// An entry deleted between the two reads is skipped.
fn take_entries<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    drain: bool,
    mut f: impl FnMut(K, aya::maps::PerCpuValues<V>),
) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut m = PerCpuHashMap::<_, K, V>::try_from(map)
        .map_err(|source| ProbeError::Map { name, source })?;
    let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
    for key in keys {
        let Ok(values) = m.get(&key, 0) else { continue };
        if drain {
            let _ = m.remove(&key);
        }
        f(key, values);
    }
    Ok(())
}

/// Per bucket, the sum of the CPUs' counts modulo 2^32: each CPU's `u32`
/// count wraps on its own, and a sum in their width keeps
/// `now.wrapping_sub(before)` exact across any CPU's wrap.
fn sum_hists<'a>(hists: impl Iterator<Item = &'a Hist>) -> Vec<u32> {
    let mut out = vec![0u32; hist::BUCKETS];
    for h in hists {
        for (o, c) in out.iter_mut().zip(h.counts.iter()) {
            *o = o.wrapping_add(*c);
        }
    }
    out
}

/// Adds `counts` to `sum` per bucket, modulo 2^32 (the host histogram's
/// width, see [`sum_hists`]).
fn add_wrapping<C: Copy + Into<u64>>(sum: &mut Vec<u32>, counts: &[C]) {
    if sum.len() < counts.len() {
        sum.resize(counts.len(), 0);
    }
    for (o, &c) in sum.iter_mut().zip(counts) {
        // Modulo 2^32 on purpose.
        *o = o.wrapping_add(c.into() as u32);
    }
}

/// Waits (up to 2 s: programs are freed after an RCU grace period) until
/// none of the programs `ids` is loaded any more, and says so in the log.
/// Only these ids are looked at: another governor on the host is not ours.
/// Returns `None` if the kernel does not let us list programs (that needs
/// CAP_SYS_ADMIN, which the unit does not give): then nothing is claimed.
pub fn wait_unloaded(ids: &[u32]) -> Option<bool> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let listed: Vec<_> = aya::programs::loaded_programs().collect();
        if let Some(Err(e)) = listed.iter().find(|r| r.is_err()) {
            tracing::info!(
                "cannot list loaded programs to check ours are gone ({e}); \
                 they are unloaded with the process's last descriptor"
            );
            return None;
        }
        let left: Vec<u32> = listed
            .into_iter()
            .filter_map(Result::ok)
            .map(|i| i.id())
            .filter(|id| ids.contains(id))
            .collect();
        if left.is_empty() {
            tracing::info!(
                "detached: none of our {} programs remains loaded",
                ids.len()
            );
            return Some(true);
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!(?left, "programs of ours still loaded 2 s after exit");
            return Some(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Ids and names of loaded kernel programs that are ours (by name), for the
/// tests and for `xtask run` to prove nothing stays attached after exit.
pub fn loaded_program_names() -> Vec<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let name = info.name_as_str()?.to_owned();
            // The kernel keeps 15 bytes of a program's name.
            PROGRAM_NAMES
                .iter()
                .any(|ours| ours.get(..15).unwrap_or(ours) == name)
                .then(|| (info.id(), name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_map_is_preallocated_up_to_46_cpus_and_always_on_old_kernels() {
        // 712-byte histograms: 32 MiB hold the 4,096-cgroup cap on 2 CPUs,
        // 1,024 cgroups on 46, fewer on 47 (there the map grows).
        assert_eq!(std::mem::size_of::<Hist>(), 712);
        assert_eq!(prealloc_entries(2, false), Some(4096));
        assert_eq!(prealloc_entries(46, false), Some(1024));
        assert_eq!(prealloc_entries(47, false), None);
        assert_eq!(prealloc_entries(64, true), Some(736));
        // Never fewer than 64 entries, however many CPUs.
        assert_eq!(prealloc_entries(100_000, true), Some(64));
        assert_eq!(prealloc_entries(0, false), Some(4096));
    }

    #[test]
    fn port_keys_of_other_namespaces_are_not_counted_unknown_ones_are() {
        let key = governor_common::port_key(4026531840, 8080);
        assert_eq!(governor_common::port_key_parts(key), (4026531840, 8080));
        assert_eq!(counted_in(Some(4026531840), key), Some(8080));
        assert_eq!(counted_in(Some(4026532000), key), None);
        // The kernel could not say (no BTF): counted, as before.
        assert_eq!(
            counted_in(Some(4026532000), governor_common::port_key(0, 80)),
            Some(80)
        );
        assert_eq!(counted_in(None, key), Some(8080));
        assert_eq!(
            netns_inum(Path::new("/proc/thread-self/ns/net")).map(|n| n > 0),
            Some(true)
        );
    }
}
