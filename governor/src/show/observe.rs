//! `governor observe` output: an aligned table for people, NDJSON for tools.

use std::fmt::Write as _;

use governor_engine::snapshot::{CgroupStats, PortStats, RunqStats, Snapshot};

/// Rows of the cgroup table shown at most (busiest first).
pub const TABLE_CGROUPS: usize = 25;

/// One NDJSON line (no trailing newline): the `observe --format json` contract.
pub fn json_line(s: &Snapshot) -> String {
    serde_json::to_string(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn runq_cells(r: &RunqStats) -> String {
    format!(
        "{:>8} {:>8} {:>8} {:>9}",
        r.count, r.p50_us, r.p99_us, r.max_us
    )
}

/// Cgroups waiting longest first: by run-queue p99, then by waits counted
/// (`observe`'s table and the status report's top cgroups).
pub fn by_runq_p99(cgroups: &[CgroupStats]) -> Vec<&CgroupStats> {
    let mut rows: Vec<_> = cgroups.iter().collect();
    rows.sort_by(|a, b| {
        b.runq
            .p99_us
            .cmp(&a.runq.p99_us)
            .then(b.runq.count.cmp(&a.runq.count))
    });
    rows
}

/// Ports with the longest accept queue first, then the busiest, then by
/// number (the status report's ports).
pub fn by_accept_queue(ports: &[PortStats]) -> Vec<&PortStats> {
    let mut rows: Vec<_> = ports.iter().collect();
    rows.sort_by(|a, b| {
        b.accept_queue
            .cmp(&a.accept_queue)
            .then(b.accepted_per_s.total_cmp(&a.accepted_per_s))
            .then(a.port.cmp(&b.port))
    });
    rows
}

/// A cgroup's culprits in a line: `/batch 82% (3100µs), itself 10% (…)`.
pub fn culprit_list(c: &CgroupStats) -> String {
    c.culprits
        .iter()
        .map(|k| {
            let who = if k.cgroup == c.path.as_str() {
                "itself"
            } else {
                k.cgroup.as_str()
            };
            format!("{who} {:.0}% ({}µs)", k.share * 100.0, k.wait_us)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table of one snapshot, for a terminal or a log.
pub fn table(s: &Snapshot) -> String {
    let mut out = String::new();
    let secs = s.interval_ms as f64 / 1000.0;
    let _ = writeln!(
        out,
        "t={:.1}s  interval={:.2}s   (run-queue waits in µs)",
        s.ts_ms as f64 / 1000.0,
        secs
    );
    let _ = writeln!(
        out,
        "{:<40} {:>8} {:>8} {:>8} {:>9} {:>10}",
        "HOST / CGROUP", "RUNQ_N", "P50", "P99", "MAX", "CONN_OUT/S"
    );
    match &s.host.runq {
        Some(r) => {
            let _ = writeln!(out, "{:<40} {} {:>10}", "host", runq_cells(r), "-");
        }
        None => {
            let _ = writeln!(out, "{:<40} {:>8}", "host", "missing");
        }
    }
    let rows = by_runq_p99(&s.cgroups);
    for c in rows.iter().take(TABLE_CGROUPS) {
        let mut path = c.path.to_string();
        if path.chars().count() > 40 {
            let tail: String = path
                .chars()
                .rev()
                .take(39)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            path = format!("…{tail}");
        }
        let _ = writeln!(
            out,
            "{:<40} {} {:>10.1}",
            path,
            runq_cells(&c.runq),
            c.conn_out_per_s
        );
        if !c.culprits.is_empty() {
            let _ = writeln!(out, "  waited behind: {}", culprit_list(c));
        }
    }
    if rows.len() > TABLE_CGROUPS {
        let _ = writeln!(
            out,
            "… {} more cgroups (use --cgroup to narrow, or --format json)",
            rows.len() - TABLE_CGROUPS
        );
    }
    if let Some(p) = &s.host.psi {
        let _ = writeln!(
            out,
            "psi (some avg10 %): cpu {:.2}  memory {:.2}  io {:.2}",
            p.cpu_some_avg10, p.memory_some_avg10, p.io_some_avg10
        );
    }
    if !s.ports.is_empty() {
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>12} {:>8} {:>8} {:>10}",
            "PORT", "ACCEPTED", "ACCEPTED/S", "QUEUE", "MAX", "OVERFLOWS"
        );
        for p in &s.ports {
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>12.1} {:>8} {:>8} {:>10}",
                p.port,
                p.accepted,
                p.accepted_per_s,
                p.accept_queue,
                p.accept_queue_max,
                p.overflows
            );
        }
    }
    for m in &s.missing {
        let _ = writeln!(out, "missing: {m}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor_engine::snapshot::{CgroupPath, HostStats};

    fn sample() -> Snapshot {
        Snapshot {
            ts_ms: 2000,
            interval_ms: 1000,
            host: HostStats {
                runq: Some(RunqStats {
                    count: 10,
                    p50_us: 3,
                    p99_us: 40,
                    max_us: 64,
                }),
                runq_hist: None,
                psi: None,
            },
            cgroups: vec![CgroupStats {
                path: CgroupPath::new("/a/b").unwrap(),
                id: 7,
                runq: RunqStats {
                    count: 5,
                    p50_us: 2,
                    p99_us: 900,
                    max_us: 1024,
                },
                runq_hist: None,
                conn_out: 3,
                conn_out_per_s: 3.0,
                psi: None,
                throttling: None,
                culprits: vec![
                    governor_engine::snapshot::Culprit {
                        cgroup: "/batch".into(),
                        wait_us: 820,
                        share: 0.82,
                    },
                    governor_engine::snapshot::Culprit {
                        cgroup: "/a/b".into(),
                        wait_us: 180,
                        share: 0.18,
                    },
                ],
            }],
            ports: vec![PortStats {
                port: 8080,
                accepted: 4,
                accepted_per_s: 4.0,
                accept_queue: 9,
                accept_queue_max: 8,
                overflows: 2,
            }],
            missing: vec!["host PSI: /proc/pressure is absent".into()],
        }
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&sample())).unwrap();
        assert_eq!(v["ts_ms"], 2000);
        assert_eq!(v["interval_ms"], 1000);
        assert_eq!(v["host"]["runq"]["p99_us"], 40);
        assert_eq!(v["cgroups"][0]["path"], "/a/b");
        assert_eq!(v["cgroups"][0]["id"], 7);
        assert_eq!(v["cgroups"][0]["runq"]["count"], 5);
        assert_eq!(v["cgroups"][0]["conn_out"], 3);
        assert_eq!(v["cgroups"][0]["conn_out_per_s"], 3.0);
        let c = &v["cgroups"][0]["culprits"][0];
        assert_eq!(
            (&c["cgroup"], &c["wait_us"], &c["share"]),
            (&"/batch".into(), &820.into(), &0.82.into())
        );
        for key in [
            "port",
            "accepted",
            "accepted_per_s",
            "accept_queue",
            "accept_queue_max",
            "overflows",
        ] {
            assert!(v["ports"][0].get(key).is_some(), "ports[0].{key} missing");
        }
    }

    #[test]
    fn table_shows_host_cgroups_ports_and_missing() {
        let t = table(&sample());
        assert!(t.contains("/a/b"));
        assert!(t.contains("8080"));
        assert!(t.contains("missing: host PSI"));
        assert!(
            t.contains("waited behind: /batch 82% (820µs), itself 18% (180µs)"),
            "{t}"
        );
        assert!(t.lines().any(|l| l.starts_with("host") && l.contains("40")));
    }
}
