//! Rate limiting of repeated warnings, so that a failing upstream does not flood the logs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one message per key through each interval and counts the ones held back.
pub struct RateLimiter {
    interval: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RateLimiter {
    pub fn new(interval: Duration) -> RateLimiter {
        RateLimiter {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Returns `Some(suppressed)` when a message for `key` may be logged now, with the
    /// number of messages held back since the last one. Returns `None` otherwise.
    pub fn check(&self, key: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().expect("rate limiter lock");
        match last.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let held_back = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(held_back)
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_held_back_and_counted() {
        let limiter = RateLimiter::new(Duration::from_millis(50));

        assert_eq!(limiter.check("upstream"), Some(0));
        assert_eq!(limiter.check("upstream"), None);
        assert_eq!(limiter.check("upstream"), None);
        assert_eq!(limiter.check("other"), Some(0));

        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.check("upstream"), Some(2));
    }
}
