//! The embedded kernel programs: loading, attaching, reading their maps, and
//! forwarding their log lines to the agent's log.
//!
//! Everything attached here is owned by [`Probes`]: links are not pinned, so
//! dropping `Probes` (or the process exiting, however it exits) detaches and
//! unloads every program and map.

use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{ProgramError, TracePoint},
};
use governor_common::{counter, names};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

/// The object built from `governor-ebpf` for `bpfel-unknown-none`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/governor"));

/// Name prefix shared by every program in [`OBJECT`]; used to find leftovers.
pub const PROGRAM_NAMES: &[&str] = &[names::PROG_SCHED_SWITCH];

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
    Tracefs(#[from] crate::tracefs::TracefsError),
}

/// The loaded kernel programs and their maps.
pub struct Probes {
    ebpf: Ebpf,
}

impl Probes {
    /// Loads the embedded object (maps and programs; nothing is attached yet).
    ///
    /// aya raises `RLIMIT_MEMLOCK` itself on kernels that charge BPF memory to it.
    pub fn load() -> Result<Self, ProbeError> {
        let ebpf = EbpfLoader::new().load(OBJECT)?;
        Ok(Self { ebpf })
    }

    /// Starts forwarding the kernel programs' log lines (aya-log) to the
    /// agent's log (`log` → `tracing`) from a tokio task. Must be called
    /// before [`Probes::attach_all`] so that no early line is lost.
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

    /// Loads and attaches every probe; mounts tracefs first if needed.
    pub fn attach_all(&mut self) -> Result<(), ProbeError> {
        crate::tracefs::ensure_mounted(Path::new(crate::tracefs::DEFAULT_ROOT))?;
        self.attach_tracepoint(names::PROG_SCHED_SWITCH, "sched", "sched_switch")
    }

    fn attach_tracepoint(
        &mut self,
        name: &'static str,
        category: &str,
        event: &str,
    ) -> Result<(), ProbeError> {
        let program: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or(ProbeError::MissingProgram(name))?
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })?;
        program
            .load()
            .map_err(|source| ProbeError::Program { name, source })?;
        program
            .attach(category, event)
            .map_err(|source| ProbeError::Program { name, source })?;
        tracing::debug!(program = name, "attached to {category}:{event}");
        Ok(())
    }

    /// The event counters summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, ProbeError> {
        let name = names::MAP_COUNTERS;
        let map = self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
        let array = PerCpuArray::<_, u64>::try_from(map)
            .map_err(|source| ProbeError::Map { name, source })?;
        let read = |index| -> Result<u64, ProbeError> {
            let values = array
                .get(&index, 0)
                .map_err(|source| ProbeError::Map { name, source })?;
            Ok(values.iter().sum())
        };
        let mut out = BTreeMap::new();
        out.insert("sched_switch", read(counter::SCHED_SWITCH)?);
        Ok(out)
    }
}

/// Ids and names of loaded kernel programs that are ours (by name), for the
/// tests and for `xtask run` to prove nothing stays attached after exit.
pub fn loaded_program_names() -> Vec<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let name = info.name_as_str()?.to_owned();
            PROGRAM_NAMES
                .iter()
                .any(|ours| name == *ours)
                .then(|| (info.id(), name))
        })
        .collect()
}
