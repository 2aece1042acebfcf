//! Latency histograms: HDR histograms from the `hdrhistogram` crate, with
//! two significant digits (a value and the value reported for it differ by
//! under 1%) over 1 ns to 10 minutes, which is a few thousand counters per
//! histogram. The adapter gives them a default, saturates out-of-range
//! values instead of failing, and reports quantiles as the load generator
//! has always reported them.

/// The largest latency counted as itself, in nanoseconds (10 minutes);
/// larger ones count as this.
const HIGHEST_NANOS: u64 = 600_000_000_000;
/// Significant decimal digits kept.
const SIGNIFICANT_DIGITS: u8 = 2;

/// Counts of latencies in nanoseconds.
#[derive(Clone, Debug)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        // The bounds are valid constants: 1 <= low, high >= 2 * low, 2
        // significant digits.
        match hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_NANOS, SIGNIFICANT_DIGITS) {
            Ok(h) => Histogram(h),
            Err(e) => unreachable!("fixed histogram bounds are valid: {e:?}"),
        }
    }

    /// Counts one value; values beyond the range count as its end.
    pub fn record(&mut self, nanos: u64) {
        self.0.saturating_record(nanos.clamp(1, HIGHEST_NANOS));
    }

    /// Adds every value recorded in `other` to `self`.
    pub fn merge(&mut self, other: &Histogram) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The largest recorded value, within the precision; 0 when empty.
    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// The mean of the recorded values; 0 when empty.
    pub fn mean(&self) -> f64 {
        self.0.mean()
    }

    /// The value at quantile `q` (0.5 for the median, 0.999 for p99.9),
    /// within the precision; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        self.0.value_at_quantile(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within_one_percent(got: u64, want: u64) -> bool {
        got.abs_diff(want) * 100 <= want
    }

    #[test]
    fn quantiles_are_within_the_precision_and_merging_adds() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 1..=1_000u64 {
            a.record(v * 1_000);
            b.record(v * 1_000_000);
        }
        assert_eq!(a.count(), 1_000);
        assert!(
            within_one_percent(a.quantile(0.5), 500_000),
            "{}",
            a.quantile(0.5)
        );
        assert!(within_one_percent(a.quantile(0.99), 990_000));
        assert!(within_one_percent(a.max(), 1_000_000));
        assert!(within_one_percent(a.mean() as u64, 500_500));
        a.merge(&b);
        assert_eq!(a.count(), 2_000);
        assert!(within_one_percent(a.quantile(0.75), 500_000_000));
        assert!(within_one_percent(a.max(), 1_000_000_000));
    }

    #[test]
    fn empty_and_out_of_range_values_do_not_fail() {
        let mut h = Histogram::default();
        assert_eq!((h.count(), h.quantile(0.99), h.max()), (0, 0, 0));
        assert_eq!(h.mean(), 0.0);
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.count(), 2);
        assert!(within_one_percent(h.max(), HIGHEST_NANOS));
        assert!(h.quantile(f64::NAN) >= h.quantile(0.0));
    }
}
