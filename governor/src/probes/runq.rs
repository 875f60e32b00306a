//! Run-queue histograms on the agent's side: interval deltas of the
//! cumulative kernel histograms, and percentiles from them.

#[cfg(test)]
use governor_common::hist;

use governor_engine::snapshot::RunqStats;

/// `current - previous` per bucket, for counts that only grow while their
/// entry lives: a bucket that went down means the entry was recreated, so
/// its current count is the delta. Not for the host histogram, whose
/// counts wrap ([`wrapping_delta`]).
pub fn delta(current: &[u64], previous: Option<&[u64]>) -> Vec<u64> {
    match previous {
        None => current.to_vec(),
        Some(prev) => current
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let p = prev.get(i).copied().unwrap_or(0);
                if c >= p { c - p } else { c }
            })
            .collect(),
    }
}

/// `current - previous` per bucket of the host histogram: per-CPU `u32`
/// counts, cumulative since the probes were loaded, summed over CPUs in
/// `u32` (wrapping, see `Probes::read_maps`). A count wraps at 2^32 (a
/// busy bucket of a busy CPU in hours), so the delta is taken in the
/// counter's own width: `current.wrapping_sub(previous)` is exact as long
/// as fewer than 2^32 waits fall in one bucket in one interval, whichever
/// CPUs' counters wrapped.
pub fn wrapping_delta(current: &[u32], previous: Option<&[u32]>) -> Vec<u64> {
    current
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let p = previous.and_then(|p| p.get(i)).copied().unwrap_or(0);
            u64::from(c.wrapping_sub(p))
        })
        .collect()
}

/// Count, p50, p99 and max of one interval's histogram, in microseconds.
///
/// A percentile is the midpoint of the bucket it falls in (within ±6.25% of
/// the true value from 1 µs up); `max` is the upper bound of the highest
/// non-empty bucket. The engine's function, so that `observe` and the
/// policies' windows compute percentiles alike.
pub fn stats(counts: &[u64]) -> RunqStats {
    governor_engine::snapshot::runq_stats(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist_of(values_ns: &[u64]) -> Vec<u64> {
        let mut h = vec![0u64; hist::BUCKETS];
        for &v in values_ns {
            h[hist::bucket(v)] += 1;
        }
        h
    }

    #[test]
    fn percentiles_are_within_ten_percent_from_1us_to_1s() {
        // 1000 values spread log-uniformly from 1 µs to 1 s.
        let values: Vec<u64> = (0..1000)
            .map(|i| (1_000.0 * 10f64.powf(6.0 * f64::from(i) / 999.0)) as u64)
            .collect();
        let s = stats(&hist_of(&values));
        assert_eq!(s.count, 1000);
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let true_p99 = sorted[989] as f64 / 1000.0;
        let true_p50 = sorted[499] as f64 / 1000.0;
        assert!(
            (s.p99_us as f64 - true_p99).abs() / true_p99 < 0.10,
            "p99 {} vs {true_p99}",
            s.p99_us
        );
        assert!(
            (s.p50_us as f64 - true_p50).abs() / true_p50 < 0.10,
            "p50 {} vs {true_p50}",
            s.p50_us
        );
        assert!(
            s.max_us >= 1_000_000 && s.max_us < 1_200_000,
            "max {}",
            s.max_us
        );
    }

    #[test]
    fn single_value_percentiles_hit_its_bucket() {
        // The JSON contract is whole microseconds: from 5 µs up the
        // rounding costs under 10%.
        for v in [5_500u64, 40_000, 2_000_000, 700_000_000] {
            let s = stats(&hist_of(&[v; 100]));
            let err = (s.p99_us as f64 * 1000.0 - v as f64).abs() / v as f64;
            assert!(err < 0.10, "v={v}ns p99={}us", s.p99_us);
        }
    }

    #[test]
    fn host_counts_are_subtracted_across_a_u32_wrap() {
        // Two CPUs' u32 counts of one bucket, summed in u32 as read_maps
        // does: CPU 0 went from u32::MAX - 1 to 1 (3 waits, wrapped), CPU 1
        // from 10 to 12 (2 waits).
        let before = (u32::MAX - 1).wrapping_add(10);
        let after = 1u32.wrapping_add(12);
        assert_eq!(wrapping_delta(&[after], Some(&[before])), vec![5]);
        // One CPU wrapping on its own, and buckets that did not move.
        assert_eq!(
            wrapping_delta(&[3, 7, 0], Some(&[u32::MAX, 7, 0])),
            vec![4, 0, 0]
        );
        // Without a previous reading, everything since load.
        assert_eq!(wrapping_delta(&[5, 1], None), vec![5, 1]);
    }

    #[test]
    fn the_engine_restates_the_kernel_bucket_layout_exactly() {
        use governor_engine::snapshot::buckets;
        assert_eq!(buckets::BUCKETS, hist::BUCKETS);
        for i in 0..hist::BUCKETS + 2 {
            assert_eq!(buckets::range(i), hist::bucket_range(i), "bucket {i}");
        }
        let mut v = 1u64;
        while v < (1u64 << 40) {
            assert_eq!(buckets::bucket(v), hist::bucket(v), "value {v}");
            v = v + v / 7 + 1;
        }
        assert_eq!(buckets::bucket(0), hist::bucket(0));
        assert_eq!(buckets::bucket(u64::MAX), hist::bucket(u64::MAX));
    }

    #[test]
    fn empty_interval_is_zero_and_delta_subtracts() {
        assert_eq!(stats(&[0; 4]), RunqStats::default());
        assert_eq!(delta(&[5, 7, 1], Some(&[2, 7, 3])), vec![3, 0, 1]);
        assert_eq!(delta(&[5], None), vec![5]);
    }
}
