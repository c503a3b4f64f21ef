//! Retry delays: doubling from 250 ms to a cap, each drawn with jitter (between half and
//! all of the step), so thousands of agents that lost the API server or the index together
//! do not come back in lockstep, and one that comes back is caught within the cap.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(250);
/// The API watches' cap: recovery is noticed at most this long after the API returns.
pub const CAP: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::up_to(CAP)
    }
}

impl Backoff {
    /// Delays that grow to at most `cap`.
    pub fn up_to(cap: Duration) -> Self {
        Self { step: FIRST, cap }
    }

    /// The next delay, and the step after it doubles.
    pub fn delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.cap);
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
            let d = b.delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} within [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(CAP);
        }
        assert!(b.delay() <= CAP);
        b.reset();
        assert!(b.delay() <= FIRST);
        let mut small = Backoff::up_to(Duration::from_secs(1));
        for _ in 0..8 {
            assert!(small.delay() <= Duration::from_secs(1));
        }
    }
}
