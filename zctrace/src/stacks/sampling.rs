//! Byte sampling for stacks: the kernel takes a stack where a stream of bytes crosses a sampling
//! point, and the points fall at random with exponential gaps of mean the period, so that each
//! recorded stack stands for a period's bytes and the sums estimate the totals without bias.
//! The kernel cannot take logarithms; it draws its gaps from these quantiles.
use zctrace_common::SAMPLE_GAPS;

/// Quantiles of the exponential distribution with mean `period`, at the midpoints of
/// [`SAMPLE_GAPS`] equal slices of probability, scaled so that their mean is `period` (the
/// tail past the last slice is cut off). None is 0: a gap of 0 bytes would sample nothing.
pub fn gaps(period: u64) -> Vec<u64> {
    let slices = f64::from(SAMPLE_GAPS);
    let quantiles: Vec<f64> = (0..SAMPLE_GAPS)
        .map(|i| -((f64::from(i) + 0.5) / slices).ln())
        .collect();
    let scale = period as f64 * slices / quantiles.iter().sum::<f64>();
    quantiles
        .iter()
        .map(|q| ((q * scale).round() as u64).max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_average_the_period_and_spread_as_an_exponential() {
        let period = 512 * 1024;
        let gaps = gaps(period);
        assert_eq!(gaps.len(), SAMPLE_GAPS as usize);
        let mean = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64;
        assert!((mean / period as f64 - 1.0).abs() < 1e-4, "mean {mean}");
        let mut sorted = gaps.clone();
        sorted.sort_unstable();
        // An exponential's median is ln 2 of its mean; its largest quantile here about 6.
        let median = sorted[sorted.len() / 2] as f64 / period as f64;
        assert!((median - std::f64::consts::LN_2).abs() < 0.02, "median {median}");
        let largest = *sorted.last().unwrap() as f64 / period as f64;
        assert!((5.5..7.0).contains(&largest), "largest {largest}");
    }

    #[test]
    fn a_period_of_one_byte_still_draws_gaps_of_at_least_one() {
        assert!(gaps(1).iter().all(|&gap| gap >= 1));
    }
}
