//! Retry delays for the API: doubling from 250 ms to a cap of 15 s, each drawn with jitter
//! (between half and all of the step), so thousands of agents that lost the API server
//! together do not come back in lockstep, and one that comes back is caught within
//! seconds, not minutes.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(250);
/// The longest wait: recovery is noticed at most this long after the API returns.
pub const CAP: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: FIRST }
    }
}

impl Backoff {
    /// The next delay, and the step after it doubles.
    pub fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(CAP);
        let half = step / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
    }

    /// Something succeeded: the next failure starts small again.
    pub fn reset(&mut self) {
        self.step = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap_and_reset() {
        let mut b = Backoff::default();
        let mut step = FIRST;
        for _ in 0..12 {
            let d = b.next();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} within [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(CAP);
        }
        assert!(b.next() <= CAP);
        b.reset();
        assert!(b.next() <= FIRST);
    }
}
