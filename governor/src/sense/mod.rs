//! sense: the user-space readers behind each [`Snapshot`](crate::snapshot::Snapshot)
//! (everything except the BPF maps).
//!
//! One module per kernel interface, each with its own error type that names
//! the path that failed, and an injectable root so tests run on fake trees:
//! - [`procfs`]: host PSI and the `ListenOverflows`/`ListenDrops` counters;
//! - [`cgroupfs`]: the cgroup2 mount, cgroup id → path, cgroup PSI and CPU throttling;
//! - [`sockdiag`]: accept-queue depth and limit of TCP listeners, per port.

pub mod cgroupfs;
pub mod procfs;
pub mod sockdiag;
