//! Polling.

use std::time::{Duration, Instant};

/// Calls `cond` every 25 ms until it returns true or `timeout` passed; the condition is
/// evaluated once more at the deadline. Returns whether it became true.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(timeout, Duration::from_millis(25), cond)
}

/// [`wait_until`] with a chosen polling interval.
pub fn wait_until_every(
    timeout: Duration,
    interval: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_true_once_the_condition_holds() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n >= 3
        }));
        assert_eq!(n, 3);
    }

    #[test]
    fn times_out() {
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(60), || false));
        assert!(start.elapsed() >= Duration::from_millis(60));
    }
}
