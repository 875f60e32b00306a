//! governor: an eBPF host-level load governor; the agent and its command line.
//!
//! The loop is sense → decide → act → show; `ARCHITECTURE.md` at the root of
//! the repository is the map. The pure part (config, `Snapshot`, `decide`)
//! is the `governor-engine` crate; this crate is the imperative shell:
//! - [`probes`] loads the embedded kernel programs and reads their maps;
//! - [`sense`] reads `/proc`, cgroupfs and sock_diag, and its
//!   [`sense::sensor::Sensor`] turns all of it into one `Snapshot` a tick;
//! - [`act`] puts decisions in force (cgroup files, BPF maps), journaled;
//! - [`show`] explains: `/metrics`, `observe`, the status socket;
//! - [`record`] writes and reads recordings, and replays them;
//! - [`agent`] is the loop and its wiring.

pub mod act;
pub mod agent;
pub mod probes;
pub mod record;
pub mod sense;
pub mod show;
