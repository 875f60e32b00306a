//! Reading a policy's signal out of a [`Snapshot`].

use std::cell::Cell;

use crate::{
    config::{Scope, SignalKind, SignalSpec},
    snapshot::{CgroupStats, Psi, Snapshot},
};

/// The value of `spec` in `snapshot`, in its unit's base (microseconds,
/// fraction, events per second), or `None` if there is no data.
///
/// No data is not zero: a cgroup or port that was not seen, a probe that is
/// missing, a port with no listener (no backlog) all give `None`, and the
/// policy holds. A cgroup that is there but whose tasks did not wait at all
/// in the interval (they slept, or it is empty) reads 0: the probes worked
/// and nothing queued, so a limit imposed for its sake may be lifted (an
/// idle protected workload must not keep its neighbours limited forever).
pub fn read(spec: &SignalSpec, snapshot: &Snapshot) -> Option<f64> {
    read_hinted(spec, snapshot, &Cell::new(0))
}

/// [`read`], looking the cgroup up at index `hint` of the snapshot first
/// and leaving there where it was found (a policy reads the same cgroup
/// every tick; with a thousand policies the searches were a fifth of the
/// agent's CPU).
pub fn read_hinted(spec: &SignalSpec, snapshot: &Snapshot, hint: &Cell<usize>) -> Option<f64> {
    let cgroup = |s: &Scope| -> Option<Option<&CgroupStats>> {
        match s {
            Scope::Host => Some(None),
            Scope::Cgroup(c) => snapshot.cgroup_hinted(c, hint).map(Some),
            Scope::Port(_) => None,
        }
    };
    let port = |s: &Scope| match s {
        Scope::Port(p) => snapshot.port(*p),
        _ => None,
    };
    let psi = |pick: fn(&Psi) -> f64| -> Option<f64> {
        let psi = match cgroup(&spec.scope)? {
            None => snapshot.host.psi?,
            Some(c) => c.psi?,
        };
        // PSI is in percent; watermarks are fractions.
        Some(pick(&psi) / 100.0)
    };
    let value = match spec.kind {
        SignalKind::RunqP99 | SignalKind::RunqP50 => {
            let runq = match cgroup(&spec.scope)? {
                None => snapshot.host.runq?,
                Some(c) => c.runq,
            };
            if runq.count == 0 {
                return Some(0.0);
            }
            (if spec.kind == SignalKind::RunqP99 {
                runq.p99_us
            } else {
                runq.p50_us
            }) as f64
        }
        SignalKind::AcceptQueueFill => {
            let p = port(&spec.scope)?;
            if p.accept_queue_max == 0 {
                return None;
            }
            f64::from(p.accept_queue) / f64::from(p.accept_queue_max)
        }
        SignalKind::AcceptedRate => port(&spec.scope)?.accepted_per_s,
        SignalKind::ConnectRate => cgroup(&spec.scope)??.conn_out_per_s,
        SignalKind::PsiCpuSome => psi(|p| p.cpu_some_avg10)?,
        SignalKind::PsiMemorySome => psi(|p| p.memory_some_avg10)?,
        SignalKind::PsiIoSome => psi(|p| p.io_some_avg10)?,
    };
    value.is_finite().then_some(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::snapshot::{CgroupPath, PortStats, RunqStats};

    fn spec(kind: SignalKind, scope: Scope) -> SignalSpec {
        SignalSpec { kind, scope }
    }

    #[test]
    fn no_data_is_not_zero() {
        let api = CgroupPath::new("/api").unwrap();
        let mut s = Snapshot::default();
        let runq = spec(SignalKind::RunqP99, Scope::Cgroup(api.clone()));
        assert_eq!(read(&runq, &s), None, "cgroup not seen");
        s.cgroups.push(CgroupStats {
            path: api,
            id: 1,
            runq: RunqStats::default(),
            conn_out: 0,
            conn_out_per_s: 0.0,
            psi: None,
            throttling: None,
        });
        assert_eq!(read(&runq, &s), Some(0.0), "seen, nothing waited");
        s.cgroups[0].runq = RunqStats {
            count: 10,
            p50_us: 20,
            p99_us: 900,
            max_us: 1000,
        };
        assert_eq!(read(&runq, &s), Some(900.0));
        assert_eq!(
            read(&spec(SignalKind::PsiCpuSome, Scope::Host), &s),
            None,
            "no host PSI"
        );

        let fill = spec(SignalKind::AcceptQueueFill, Scope::Port(80));
        s.ports.push(PortStats {
            port: 80,
            ..Default::default()
        });
        assert_eq!(read(&fill, &s), None, "no listener");
        s.ports[0].accept_queue = 32;
        s.ports[0].accept_queue_max = 128;
        assert_eq!(read(&fill, &s), Some(0.25));
    }
}
