//! governor: an eBPF host-level load governor.
//!
//! The loop is sense → decide → act → show (see `design.md`):
//! - [`ebpf`] loads the embedded kernel programs and reads their maps;
//! - [`sense`] reads `/proc`, cgroupfs and sock_diag; [`sensor`] turns all of
//!   it into one [`snapshot::Snapshot`] per interval;
//! - [`show`] explains: `observe` output and `/metrics`.

pub mod act;
pub mod agent;
pub mod btf;
pub mod config;
pub mod decide;
pub mod ebpf;
pub mod mapbatch;
pub mod netns;
pub mod runq;
pub mod sense;
pub mod sensor;
pub mod show;
pub mod snapshot;
pub mod tracefs;
