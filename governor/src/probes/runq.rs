//! Run-queue histograms on the agent's side: interval deltas of the
//! cumulative kernel histograms, and percentiles from them.

use governor_common::hist;

use governor_engine::snapshot::RunqStats;

/// `current - previous` per bucket. The kernel's counts only grow; a bucket
/// that went down means the entry was recreated, so its current count is the
/// delta.
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

/// Count, p50, p99 and max of one interval's histogram, in microseconds.
///
/// A percentile is the midpoint of the bucket it falls in (within ±6.25% of
/// the true value from 1 µs up); `max` is the upper bound of the highest
/// non-empty bucket.
pub fn stats(counts: &[u64]) -> RunqStats {
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return RunqStats::default();
    }
    let pct = |p: f64| -> u64 {
        // The rank of the p-th percentile, 1-based: ceil(p * count).
        let rank = ((p * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, &c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = hist::bucket_range(i);
                let mid = if hi == u64::MAX {
                    lo
                } else {
                    lo + (hi - lo) / 2
                };
                return (mid + 500) / 1000;
            }
        }
        0
    };
    let max_bucket = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    let (lo, hi) = hist::bucket_range(max_bucket);
    let max_ns = if hi == u64::MAX { lo } else { hi };
    RunqStats {
        count,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: max_ns / 1000,
    }
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
    fn empty_interval_is_zero_and_delta_subtracts() {
        assert_eq!(stats(&[0; 4]), RunqStats::default());
        assert_eq!(delta(&[5, 7, 1], Some(&[2, 7, 3])), vec![3, 0, 1]);
        assert_eq!(delta(&[5], None), vec![5]);
    }
}
