//! Waiting until a condition holds, with a deadline: the polling loops of
//! every test, blocking ([`poll`], [`wait_until`]) or async
//! ([`eventually`], [`until_some`]).
//!
//! Each calls its probe once more after the deadline has passed, so that a
//! condition met during the last pause still counts.

use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between two probes of the blocking helpers and of [`until_some`].
pub const EVERY: Duration = Duration::from_millis(50);
/// Pause between two checks of [`eventually`] (in-process state, cheap to
/// read).
pub const EVERY_FAST: Duration = Duration::from_millis(20);

/// Calls `probe` every [`EVERY`] until it returns `Ok`, for at most
/// `timeout`: its value, or its last `Err`.
pub fn poll_result<T, E>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Err(_) if Instant::now() < deadline => std::thread::sleep(EVERY),
            done => return done,
        }
    }
}

/// Calls `probe` every [`EVERY`] until it returns `Some`, for at most
/// `timeout`; `None` when it never did.
pub fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    poll_result(timeout, || probe().ok_or(())).ok()
}

/// Calls `probe` every [`EVERY`] until it returns `Ok`, for at most
/// `timeout`. Panics with `what` and the last observation (the `Err` text)
/// otherwise.
pub fn wait_until<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Result<T, String>) -> T {
    poll_result(timeout, probe).unwrap_or_else(|last| {
        panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
    })
}

/// Awaits `check` every `every` until it yields `Some`, for at most
/// `timeout` (tokio's clock); `None` when it never did.
pub async fn poll_async<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            None if tokio::time::Instant::now() < deadline => tokio::time::sleep(every).await,
            done => return done,
        }
    }
}

/// Whether `check` holds within `timeout`, checked every [`EVERY_FAST`].
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    poll_async(timeout, EVERY_FAST, || {
        std::future::ready(check().then_some(()))
    })
    .await
    .is_some()
}

/// Awaits `check` every [`EVERY`] until it yields `Some`: its value.
/// Panics when it has not within `timeout`.
pub async fn until_some<T, F, Fut>(timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_async(timeout, EVERY, check)
        .await
        .unwrap_or_else(|| panic!("condition not met within {timeout:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_polls_return_the_first_success_or_the_last_failure() {
        let mut n = 0;
        assert_eq!(
            poll_result(Duration::from_secs(1), || {
                n += 1;
                if n == 3 {
                    Ok(n)
                } else {
                    Err(n)
                }
            }),
            Ok(3)
        );
        assert_eq!(
            poll_result::<(), _>(Duration::ZERO, || Err("no")),
            Err("no")
        );
        assert_eq!(poll(Duration::ZERO, || None::<u8>), None);
    }

    #[tokio::test]
    async fn async_polls_check_once_more_after_the_deadline() {
        let mut n = 0;
        assert!(
            eventually(Duration::ZERO, || {
                n += 1;
                true
            })
            .await
        );
        assert_eq!(n, 1);
        assert!(!eventually(Duration::from_millis(30), || false).await);
        let value = until_some(Duration::from_secs(1), || async { Some(7) }).await;
        assert_eq!(value, 7);
    }
}
