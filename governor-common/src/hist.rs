//! Log-linear latency histograms, filled in the kernel, read by the agent.
//!
//! Values are nanoseconds. Below 1 µs (2^10 ns) everything falls into bucket
//! 0. From 2^10 ns up, each power of two is split into [`SUB`] equal buckets,
//! so a bucket is at most 12.5% wide and its midpoint is within ±6.25% of any
//! value in it: percentiles are within ±10% from 1 µs to past 1 s. Values at
//! or above 2^[`MAX_EXP`] ns (about 4.3 s) fall into the last bucket.

/// log2 of the number of sub-buckets per power of two.
pub const SUB_BITS: u32 = 3;
/// Sub-buckets per power of two.
pub const SUB: u32 = 1 << SUB_BITS;
/// Smallest power of two that gets its own buckets (2^10 ns ≈ 1 µs).
pub const MIN_EXP: u32 = 10;
/// Values at or above 2^MAX_EXP ns go to the overflow bucket.
pub const MAX_EXP: u32 = 32;
/// Number of buckets: underflow, (MAX_EXP - MIN_EXP) × SUB, overflow.
pub const BUCKETS: usize = (1 + (MAX_EXP - MIN_EXP) * SUB + 1) as usize;

/// One histogram: counts per bucket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hist {
    /// Counts per bucket, see [`bucket`].
    pub counts: [u32; BUCKETS],
}

impl Hist {
    /// An empty histogram.
    pub const ZERO: Hist = Hist {
        counts: [0; BUCKETS],
    };
}

#[cfg(feature = "user")]
// SAFETY: `Hist` is `repr(C)`, an array of `u32`, with no padding.
unsafe impl aya::Pod for Hist {}

/// floor(log2(v)) for v > 0, by binary search: no loop and no `ctlz`, so the
/// verifier and the BPF backend accept it on every kernel.
#[inline(always)]
pub fn log2_floor(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The bucket of a value in nanoseconds.
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    if ns < (1 << MIN_EXP) {
        return 0;
    }
    let e = log2_floor(ns);
    if e >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = ((ns >> (e - SUB_BITS)) & u64::from(SUB - 1)) as u32;
    (1 + (e - MIN_EXP) * SUB + sub) as usize
}

/// The range `[low, high)` of nanoseconds a bucket holds; the overflow
/// bucket's high is `u64::MAX`.
pub fn bucket_range(index: usize) -> (u64, u64) {
    if index == 0 {
        return (0, 1 << MIN_EXP);
    }
    if index >= BUCKETS - 1 {
        return (1 << MAX_EXP, u64::MAX);
    }
    let i = (index - 1) as u32;
    let e = MIN_EXP + i / SUB;
    let sub = u64::from(i % SUB);
    let width = 1u64 << (e - SUB_BITS);
    let low = (1u64 << e) + sub * width;
    (low, low + width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_matches_leading_zeros() {
        for v in [
            1u64,
            2,
            3,
            4,
            1023,
            1024,
            1025,
            1 << 40,
            u64::MAX,
            123_456_789,
        ] {
            assert_eq!(log2_floor(v), 63 - v.leading_zeros(), "v={v}");
        }
    }

    #[test]
    fn every_value_lies_in_its_bucket_and_buckets_are_narrow() {
        let mut v = 1u64;
        while v < (1u64 << 34) {
            let b = bucket(v);
            let (lo, hi) = bucket_range(b);
            assert!(lo <= v && v < hi, "v={v} bucket={b} range=[{lo},{hi})");
            if (1 << MIN_EXP..1 << MAX_EXP).contains(&v) {
                let mid = (lo + hi) / 2;
                let err = (mid as f64 - v as f64).abs() / v as f64;
                assert!(err <= 0.0625 + 1e-9, "v={v} midpoint {mid} off by {err}");
            }
            v = v + v / 7 + 1;
        }
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn buckets_are_contiguous() {
        for i in 1..BUCKETS - 1 {
            assert_eq!(
                bucket_range(i).1,
                bucket_range(i + 1).0,
                "gap after bucket {i}"
            );
        }
    }
}
