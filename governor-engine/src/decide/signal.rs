//! Reading a policy's signal out of a [`Snapshot`].

use std::{cell::Cell, time::Duration};

use crate::{
    config::{Scope, SignalKind, SignalSpec},
    snapshot::{CgroupStats, Psi, RunqHist, RunqStats, RunqWindow, Snapshot},
};

/// The value of `spec` in `snapshot` alone (one interval), in its unit's
/// base (microseconds, fraction, events per second), or `None` if there is
/// no data. A policy reads its run-queue signal over a window instead
/// ([`read_windowed`]).
///
/// No data is not zero: a cgroup or port that was not seen, a probe that is
/// missing (for the run-queue signals: the host's `runq` is `None`), a port
/// with no listener (no backlog) all give `None`, and the policy holds. A
/// cgroup that is there but whose tasks did not wait at all in the interval
/// (they slept, or it is empty) reads 0: the probes worked and nothing
/// queued, so a limit imposed for its sake may be lifted (an idle protected
/// workload must not keep its neighbours limited forever).
pub fn read(spec: &SignalSpec, snapshot: &Snapshot) -> Option<f64> {
    read_hinted(spec, snapshot, &Cell::new(0))
}

/// The run-queue figures of `scope` in `snapshot`: the interval's stats and
/// histogram, or `None` if there is no data (the cgroup was not seen, or
/// the scheduler probes are missing).
fn runq_of<'s>(
    scope: &Scope,
    snapshot: &'s Snapshot,
    hint: &Cell<usize>,
) -> Option<(RunqStats, Option<&'s RunqHist>)> {
    let (stats, hist) = match scope {
        Scope::Host => (snapshot.host.runq?, snapshot.host.runq_hist.as_ref()),
        Scope::Cgroup(c) => {
            let c = snapshot.cgroup_hinted(c, hint)?;
            (c.runq, c.runq_hist.as_ref())
        }
        Scope::Port(_) => return None,
    };
    // A histogram says the probes ran. Without one the figures are only
    // data if the probes ran at all: they measure the host too.
    (hist.is_some() || snapshot.host.runq.is_some()).then_some((stats, hist))
}

/// The value of `spec` for a policy that keeps `window`: for `runq_p99`
/// and `runq_p50`, the percentile of every wait of the intervals of the
/// last `span` (this one's histogram is added to the window at `now`);
/// other signals as [`read_hinted`].
///
/// A snapshot without histograms (a producer that gives only the
/// interval's percentiles, such as a simulation) is read per interval, and
/// the window is left as it is. A snapshot without the signal's cgroup, or
/// without the probes, is no data (`None`); the window keeps what it had,
/// and what it had ages out.
pub fn read_windowed(
    spec: &SignalSpec,
    snapshot: &Snapshot,
    hint: &Cell<usize>,
    window: &mut RunqWindow,
    span: Duration,
    now: Duration,
) -> Option<f64> {
    let p = match spec.kind {
        SignalKind::RunqP99 => 0.99,
        SignalKind::RunqP50 => 0.50,
        _ => return read_hinted(spec, snapshot, hint),
    };
    let (_, hist) = runq_of(&spec.scope, snapshot, hint)?;
    let Some(hist) = hist else {
        return read_hinted(spec, snapshot, hint);
    };
    window.push(now, hist, span);
    Some(window.percentile_us(p) as f64)
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
            let (runq, _) = runq_of(&spec.scope, snapshot, hint)?;
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
        SignalKind::AcceptQueueDelay => {
            accept_queue_delay_us(port(&spec.scope)?, snapshot.interval_ms)?
        }
        SignalKind::ConnectRate => cgroup(&spec.scope)??.conn_out_per_s,
        SignalKind::PsiCpuSome => psi(|p| p.cpu_some_avg10)?,
        SignalKind::PsiMemorySome => psi(|p| p.memory_some_avg10)?,
        SignalKind::PsiIoSome => psi(|p| p.io_some_avg10)?,
    };
    value.is_finite().then_some(value)
}

/// Who held the CPU while the cgroup of a run-queue signal waited, in
/// `snapshot` (its top culprit and its own throttling); `None` for other
/// signals and when no culprit is known.
pub fn blame(
    spec: &SignalSpec,
    snapshot: &Snapshot,
    hint: &Cell<usize>,
) -> Option<super::decision::Blame> {
    let (SignalKind::RunqP99 | SignalKind::RunqP50, Scope::Cgroup(path)) = (spec.kind, &spec.scope)
    else {
        return None;
    };
    let c = snapshot.cgroup_hinted(path, hint)?;
    let top = c.culprits.first()?;
    Some(super::decision::Blame {
        culprit: top.cgroup.clone(),
        share: top.share,
        own: top.cgroup == c.path.as_str(),
        throttled_us: c.throttling.map(|t| t.throttled_us),
    })
}

/// Little's law on a listener's accept queue: the mean wait of a connection
/// in it is its depth over the rate connections entered it (the handshakes
/// completed, `accepted`: one that overflows is not queued, so in a full
/// queue this is the rate `accept()` drains it), in microseconds. `None`
/// without a listener (no backlog) or an interval. A queue that holds
/// connections while none entered in the interval has not moved: each has
/// waited at least the interval, which is what is given (a lower bound).
pub fn accept_queue_delay_us(p: &crate::snapshot::PortStats, interval_ms: u64) -> Option<f64> {
    if p.accept_queue_max == 0 || interval_ms == 0 {
        return None;
    }
    if p.accept_queue == 0 {
        return Some(0.0);
    }
    let interval_us = interval_ms as f64 * 1000.0;
    if p.accepted == 0 {
        return Some(interval_us);
    }
    let rate_per_us = p.accepted as f64 / interval_us;
    Some(f64::from(p.accept_queue) / rate_per_us)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::snapshot::{CgroupPath, PortStats};

    fn spec(kind: SignalKind, scope: Scope) -> SignalSpec {
        SignalSpec { kind, scope }
    }

    #[test]
    fn no_data_is_not_zero() {
        let api = CgroupPath::new("/api").unwrap();
        let mut s = Snapshot::default();
        // The scheduler probes ran.
        s.host.runq = Some(RunqStats::default());
        let runq = spec(SignalKind::RunqP99, Scope::Cgroup(api.clone()));
        assert_eq!(read(&runq, &s), None, "cgroup not seen");
        s.cgroups.push(CgroupStats {
            path: api,
            id: 1,
            runq: RunqStats::default(),
            runq_hist: None,
            conn_out: 0,
            conn_out_per_s: 0.0,
            psi: None,
            throttling: None,
            culprits: Vec::new(),
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

    #[test]
    fn accept_queue_delay_is_depth_over_the_rate_the_queue_fills() {
        let delay = spec(SignalKind::AcceptQueueDelay, Scope::Port(80));
        let mut s = Snapshot {
            interval_ms: 100,
            ..Default::default()
        };
        assert_eq!(read(&delay, &s), None, "port not seen");
        s.ports.push(PortStats {
            port: 80,
            ..Default::default()
        });
        assert_eq!(read(&delay, &s), None, "no listener");
        s.ports[0].accept_queue_max = 128;
        s.ports[0].accepted = 100;
        assert_eq!(read(&delay, &s), Some(0.0), "an empty queue");
        // 100 in 100 ms is 1,000/s: 50 queued wait 50 ms on average.
        s.ports[0].accept_queue = 50;
        assert_eq!(read(&delay, &s), Some(50_000.0));
        // Nothing entered, 10 still there: at least the interval.
        s.ports[0].accepted = 0;
        s.ports[0].accept_queue = 10;
        assert_eq!(read(&delay, &s), Some(100_000.0));
        s.interval_ms = 0;
        assert_eq!(read(&delay, &s), None, "no interval");
    }
    #[test]
    fn a_runq_signal_is_read_over_its_window_of_histograms() {
        let api = CgroupPath::new("/api").unwrap();
        let ms = Duration::from_millis;
        let p99 = spec(SignalKind::RunqP99, Scope::Cgroup(api.clone()));
        let p50 = spec(SignalKind::RunqP50, Scope::Host);
        let snap = |waits: &[u64]| {
            let h = RunqHist::from_waits_ns(waits.iter().copied());
            let mut s = Snapshot::default();
            s.host.runq = Some(h.stats());
            s.host.runq_hist = Some(h.clone());
            s.cgroups.push(CgroupStats {
                path: api.clone(),
                id: 1,
                runq: h.stats(),
                runq_hist: Some(h),
                conn_out: 0,
                conn_out_per_s: 0.0,
                psi: None,
                throttling: None,
                culprits: Vec::new(),
            });
            s
        };
        let mut one_slow = vec![35_000u64; 49];
        one_slow.push(2_000_000);
        let hint = Cell::new(0);
        let (mut w, mut host) = (RunqWindow::default(), RunqWindow::default());
        let mut read = |s: &Snapshot, at| {
            (
                read_windowed(&p99, s, &hint, &mut w, ms(1000), ms(at)),
                read_windowed(&p50, s, &hint, &mut host, ms(1000), ms(at)),
                (w.intervals(), w.count()),
            )
        };
        // Alone, one slow wake-up of 50 is the p99 of its interval.
        let (v, m, _) = read(&snap(&one_slow), 0);
        assert!(v.unwrap() > 1900.0, "{v:?}");
        assert!((33.0..=37.0).contains(&m.unwrap()), "{m:?}");
        // Among nine quiet intervals it is under 1% of the waits.
        let (mut v, mut held) = (None, (0, 0));
        for i in 1..10 {
            (v, _, held) = read(&snap(&[35_000; 50]), 100 * i);
        }
        assert!((33.0..=37.0).contains(&v.unwrap()), "{v:?}");
        assert_eq!(held, (10, 500));

        // No probes: no host figures and no histograms. No data, and the
        // window keeps what it had.
        let mut none = snap(&[]);
        none.host.runq = None;
        none.host.runq_hist = None;
        none.cgroups[0].runq_hist = None;
        assert_eq!(read(&none, 1000), (None, None, (10, 500)));
        // The cgroup not seen: no data.
        let mut gone = snap(&[]);
        gone.cgroups.clear();
        assert_eq!(read(&gone, 1000).0, None);
        // Percentiles without histograms (a simulation): read per interval.
        let mut legacy = snap(&[]);
        legacy.cgroups[0].runq_hist = None;
        legacy.cgroups[0].runq = RunqStats {
            count: 10,
            p50_us: 20,
            p99_us: 900,
            max_us: 1000,
        };
        let (v, _, held) = read(&legacy, 1000);
        assert_eq!(v, Some(900.0));
        assert_eq!(held, (10, 500), "the window is left as it is");
    }
}
