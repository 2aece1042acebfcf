//! A log-linear latency histogram.
//!
//! Values below [`SUB_BUCKETS`] get a bucket each. Above that, every power
//! of two `[2^e, 2^(e+1))` is split into [`SUB_BUCKETS`] equal buckets, so a
//! recorded value and the value reported for its bucket differ by less than
//! one part in [`SUB_BUCKETS`] (under 0.8 %), over the whole `u64` range. It
//! is the layout of an HDR histogram with a fixed precision, small enough to
//! own: one client's histogram is at most [`BUCKETS`] counters (58 KiB),
//! allocated on the first record, and histograms merge by adding counters.

/// log2 of [`SUB_BUCKETS`].
const SUB_BUCKET_BITS: u32 = 7;
/// Buckets per power of two; also the largest value counted exactly, plus one.
pub const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Number of counters: the exact range, then one group of [`SUB_BUCKETS`]
/// for each shift from 0 to `64 - 1 - SUB_BUCKET_BITS`.
pub const BUCKETS: usize = (SUB_BUCKETS as usize) * (65 - SUB_BUCKET_BITS as usize);

const _: () = assert!(bucket_index(u64::MAX) == BUCKETS - 1);
const _: () = assert!(bucket_index(SUB_BUCKETS - 1) == SUB_BUCKETS as usize - 1);
const _: () = assert!(bucket_index(SUB_BUCKETS) == SUB_BUCKETS as usize);

/// Counts of `u64` values (nanoseconds, in the load generator).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Empty until the first record, then exactly [`BUCKETS`] long.
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    /// Sum of all recorded values; u128 cannot overflow for any `u64` count.
    sum: u128,
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, value: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
            self.min = value;
            self.max = value;
        }
        self.counts[bucket_index(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    /// Adds every value recorded in `other` to `self`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if self.total == 0 {
            *self = other.clone();
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest recorded value, exactly; 0 when empty.
    pub fn min(&self) -> u64 {
        self.min
    }

    /// The largest recorded value, exactly; 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean of the recorded values, exactly; 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0.5 for the median, 0.999 for p99.9): the
    /// smallest value such that at least a fraction `q` of the records are at
    /// or below it, within the bucket precision. Reported as the top of its
    /// bucket, clamped to the exact min and max, so it never understates a
    /// latency and `quantile(1.0) == max()`. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The rank (1-based) of the record asked for. The float product is
        // at most `total`, so the cast back cannot overflow.
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_high(index).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

/// The bucket that counts `value`.
const fn bucket_index(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BUCKET_BITS;
    // The value shifted right keeps its top SUB_BUCKET_BITS + 1 bits, so
    // `sub` is below SUB_BUCKETS.
    let sub = (value >> shift) - SUB_BUCKETS;
    SUB_BUCKETS as usize + (shift as usize) * SUB_BUCKETS as usize + sub as usize
}

/// The largest value counted by bucket `index`.
fn bucket_high(index: usize) -> u64 {
    let sub_buckets = SUB_BUCKETS as usize;
    if index < sub_buckets {
        return index as u64;
    }
    let shift = (index - sub_buckets) / sub_buckets;
    let sub = ((index - sub_buckets) % sub_buckets) as u64;
    let low = (SUB_BUCKETS + sub) << shift;
    // For the last bucket `low + (1 << shift) - 1` is exactly u64::MAX.
    low + ((1u64 << shift) - 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The lowest value counted by bucket `index`.
    fn bucket_low(index: usize) -> u64 {
        if index == 0 {
            0
        } else {
            bucket_high(index - 1) + 1
        }
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        for index in 0..BUCKETS {
            let low = bucket_low(index);
            assert!(low <= bucket_high(index), "bucket {index} is empty");
            assert_eq!(bucket_index(low), index, "low end of bucket {index}");
            assert_eq!(
                bucket_index(bucket_high(index)),
                index,
                "high end of bucket {index}"
            );
        }
        assert_eq!(bucket_high(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn bucket_width_is_within_the_stated_precision() {
        for index in SUB_BUCKETS as usize..BUCKETS {
            let low = bucket_low(index);
            let width = bucket_high(index) - low + 1;
            // width / low <= 1 / SUB_BUCKETS
            assert!(
                u128::from(width) * u128::from(SUB_BUCKETS) <= u128::from(low),
                "bucket {index}: width {width} at {low}"
            );
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100);
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.quantile(0.0), 1);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn quantiles_of_large_values_are_within_precision() {
        let mut h = Histogram::new();
        // 1 µs .. 10 s in nanoseconds, a step that touches many buckets.
        let values: Vec<u64> = (0..10_000u64).map(|i| 1_000 + i * i * 100).collect();
        for &v in &values {
            h.record(v);
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
            let exact = sorted[rank - 1];
            let got = h.quantile(q);
            assert!(got >= exact, "q {q}: {got} below the exact {exact}");
            assert!(
                (got - exact) as f64 <= exact as f64 / SUB_BUCKETS as f64,
                "q {q}: {got} too far above the exact {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), *sorted.last().unwrap());
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        let mut both = Histogram::new();
        for v in 0..5_000u64 {
            let value = v * 7_919 + 3;
            if v % 3 == 0 {
                a.record(value);
            } else {
                b.record(value);
            }
            both.record(value);
        }
        let mut merged = Histogram::new();
        merged.merge(&a);
        merged.merge(&b);
        merged.merge(&Histogram::new());
        assert_eq!(merged, both);
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let h = Histogram::new();
        assert_eq!(h.count(), 0);
        assert_eq!(h.quantile(0.99), 0);
        assert_eq!(h.max(), 0);
        assert_eq!(h.mean(), 0.0);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut h = Histogram::new();
        h.record(u64::MAX);
        h.record(0);
        assert_eq!(h.quantile(1.0), u64::MAX);
        assert_eq!(h.quantile(0.5), 0);
    }
}
