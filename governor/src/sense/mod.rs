//! sense: the user-space readers behind each
//! [`Snapshot`](governor_engine::snapshot::Snapshot), and the sensor that
//! puts them and the probes' maps together.
//!
//! One module per kernel interface, each with its own error type that names
//! the path that failed, and an injectable root so tests run on fake trees:
//! - [`procfs`]: host PSI and the `ListenOverflows`/`ListenDrops` counters;
//! - [`cgroupfs`]: the cgroup2 mount, cgroup id → path, cgroup PSI and CPU throttling;
//! - [`sockdiag`]: accept-queue depth and limit of TCP listeners, per port;
//! - [`netns`]: reading in the network namespace the policies name;
//! - [`processes`]: run-queue waits per process from `/proc/PID/task/*/schedstat`.
//!
//! [`sensor`] is the imperative shell around all of them and the maps of
//! [`crate::probes`]: it keeps what it needs of the previous tick and turns
//! the rest into one `Snapshot` per tick.

pub mod cgroupfs;
pub mod netns;
pub mod processes;
pub mod procfs;
pub mod sensor;
pub mod sockdiag;
