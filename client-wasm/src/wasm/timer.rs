//! Sleeping in the browser (setTimeout), bounded to what a timer accepts.

use std::time::Duration;

use gloo_timers::future::TimeoutFuture;

/// Longest single sleep; longer waits simply wake up and sleep again.
const MAX_SLEEP: Duration = Duration::from_secs(86_400);

/// A future that completes after `duration`.
pub(crate) fn sleep(duration: Duration) -> TimeoutFuture {
    let ms = duration.min(MAX_SLEEP).as_millis();
    TimeoutFuture::new(u32::try_from(ms).unwrap_or(u32::MAX))
}
