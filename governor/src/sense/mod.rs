//! sense: the user-space readers behind each [`Snapshot`](crate::snapshot::Snapshot)
//! (everything except the BPF maps).
//!
//! One module per kernel interface, each with its own error type that names
//! the path that failed, and an injectable root so tests run on fake trees:
//! - [`procfs`]: host PSI and the `ListenOverflows`/`ListenDrops` counters;
//! - [`cgroupfs`]: the cgroup2 mount, cgroup id → path, cgroup PSI and CPU throttling;
//! - [`sockdiag`]: accept-queue depth and limit of TCP listeners, per port.
//!
//! Tracepoint field offsets (tracefs `format` files) are in [`crate::tracefs`].
//!
//! A sensor loop calls, per tick: [`procfs::HostPsi::read`],
//! [`procfs::listen_counters`] (keep the previous value for the delta),
//! [`sockdiag::SockDiag::listen_queues`], then [`port_stats`]; and per cgroup
//! of interest [`cgroupfs::CgroupIndex::resolve_all`] for the ids in the BPF
//! maps, [`cgroupfs::CgroupFs::psi`] and [`cgroupfs::CgroupFs::cpu_throttle`]
//! (keep the previous value for [`cgroupfs::CpuThrottle::since`]).

pub mod cgroupfs;
pub mod procfs;
pub mod sockdiag;

use crate::snapshot::PortStats;

/// The listen-queue part of the snapshot's [`PortStats`], one per listening
/// port, sorted by port (`accepted` and `accepted_per_s` come from the BPF
/// maps and are left 0 here).
///
/// **Overflows.** `ListenOverflows` in `/proc/net/netstat` is one counter for
/// the whole network namespace: the kernel does not say which listener
/// dropped. `overflows` is that counter's growth over the interval
/// (`host_overflows`, from [`procfs::ListenCounters::since`]) and is
/// attributed, whole, to every port that has a full listener
/// ([`sockdiag::ListenQueue::any_full`]) when the queues are read; other
/// ports get 0. So it is exact with one overloaded port, an over-count when
/// several are full at once (each is charged all of it), and an under-count
/// (0 everywhere) when a queue overflowed and drained again between two
/// reads. Policies should treat it as "this port is dropping handshakes",
/// and `accept_queue / accept_queue_max` as the measured signal.
pub fn port_stats(queues: &[sockdiag::ListenQueue], host_overflows: u64) -> Vec<PortStats> {
    let mut out: Vec<PortStats> = queues
        .iter()
        .map(|q| PortStats {
            port: q.port,
            accept_queue: q.accept_queue,
            accept_queue_max: q.accept_queue_max,
            overflows: if q.any_full { host_overflows } else { 0 },
            ..PortStats::default()
        })
        .collect();
    out.sort_by_key(|p| p.port);
    out
}

#[cfg(test)]
mod tests {
    use super::{sockdiag::ListenQueue, *};

    #[test]
    fn overflows_go_to_full_ports_only() {
        let q = |port, accept_queue, accept_queue_max, any_full| ListenQueue {
            port,
            accept_queue,
            accept_queue_max,
            listeners: 1,
            any_full,
        };
        let got = port_stats(&[q(9000, 9, 8, true), q(80, 3, 128, false)], 12);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].port, got[0].overflows), (80, 0));
        assert_eq!(
            got[1],
            PortStats {
                port: 9000,
                accept_queue: 9,
                accept_queue_max: 8,
                overflows: 12,
                ..PortStats::default()
            }
        );
    }
}
