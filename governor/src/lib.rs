//! governor: an eBPF host-level load governor.
//!
//! The loop is sense → decide → act → show (see `design.md`):
//! - [`ebpf`] loads the embedded kernel programs and reads their maps;
//! - [`snapshot`] is what one interval looked like, the input of `decide`.

pub mod config;
pub mod decide;
pub mod ebpf;
pub mod snapshot;
pub mod tracefs;
