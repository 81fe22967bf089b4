//! The endpoint's admission queue: at most `max_streams` requests go to the
//! provider at once (the host limits concurrent streams per account, 8 by
//! default), the next `queue` wait their turn in arrival order, and only a
//! request that finds the queue full (or waits longer than `max_wait`) is
//! answered `429` with `Retry-After`. So one application's burst of
//! parallel requests is served, not refused.
//!
//! Owns the semaphore and the count of waiters; it knows nothing of HTTP
//! beyond the error it answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiErr;

/// The right to have one request at the provider; dropping it lets the
/// next waiter in.
#[derive(Debug)]
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
}

/// Bounded, first-come first-served admission.
#[derive(Debug)]
pub(crate) struct StreamQueue {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
}

/// Counts a waiter for as long as it waits (also when its request is
/// dropped while it waits).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StreamQueue {
    /// `max_streams` at the provider at once (at least 1), `max_waiting`
    /// more waiting, each for at most `max_wait`.
    pub(crate) fn new(max_streams: usize, max_waiting: usize, max_wait: Duration) -> StreamQueue {
        StreamQueue {
            permits: Arc::new(Semaphore::new(max_streams.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
            max_wait,
        }
    }

    /// Wait for a turn, or `429` when the queue is full or the wait too
    /// long.
    pub(crate) async fn admit(&self) -> Result<Admission, ApiErr> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(Admission { _permit: p });
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy(format!(
                "{} requests already wait for one of this endpoint's streams to the provider (cocoon-client serve --queue)",
                self.max_waiting
            )));
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Admission { _permit: p }),
            Ok(Err(_)) => Err(busy("the endpoint is shutting down".into())),
            Err(_) => Err(busy(format!(
                "waited {} s for a stream to the provider",
                self.max_wait.as_secs()
            ))),
        }
    }
}

fn busy(message: String) -> ApiErr {
    let mut e = ApiErr::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "queue_full",
        message,
    );
    e.retry_after = Some(1);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_are_bounded_and_served_in_turn() {
        let q = Arc::new(StreamQueue::new(1, 1, Duration::from_secs(5)));
        let first = q.admit().await.unwrap();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.admit().await.map(|_| ()) });
        while q.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let full = q.admit().await.unwrap_err();
        assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(full.retry_after, Some(1));
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(q.waiting.load(Ordering::SeqCst), 0);
        let short = StreamQueue::new(1, 4, Duration::from_millis(20));
        let _held = short.admit().await.unwrap();
        assert_eq!(short.admit().await.unwrap_err().code, "queue_full");
    }
}
