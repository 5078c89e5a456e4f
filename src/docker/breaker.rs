//! The circuit breaker of the Docker gate.
//!
//! Closed: calls pass and consecutive failures are counted. After `threshold` of them it opens
//! for `cooldown`, failing fast. The first call after the cooldown is the single half-open
//! probe: its success closes the breaker, its failure opens it again. A probe that is dropped
//! before it reports (its caller was cancelled) counts as a failure, so the breaker can never be
//! stuck half-open.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What `/api/pool`, `/readyz` and the metrics show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { consecutive_failures: usize },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    threshold: usize,
    cooldown: Duration,
}

/// Permission to make one call. Report its outcome with [`Ticket::success`] or
/// [`Ticket::failure`]; dropping it unreported counts as a failure when it was the probe.
#[must_use]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(threshold: usize, cooldown: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::Closed {
                consecutive_failures: 0,
            }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave `Inner` half-updated (every update is a
        // single assignment), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state as an operator should see it: an open breaker whose cooldown has passed
    /// reads as half-open, since the next call will be let through as the probe.
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// While the breaker is open: when its cooldown ends (the next call is the probe).
    pub fn open_until(&self) -> Option<Instant> {
        match &*self.lock() {
            Inner::Open { until } if Instant::now() < *until => Some(*until),
            _ => None,
        }
    }

    /// Asks to make a call. `None`: fail fast, the breaker is open (or its probe is out).
    pub fn try_pass(&self) -> Option<Ticket<'_>> {
        let mut inner = self.lock();
        let probe = match &mut *inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } => {
                if Instant::now() < *until {
                    return None;
                }
                *inner = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                true
            }
            Inner::HalfOpen { probe_in_flight } => {
                if *probe_in_flight {
                    return None;
                }
                *probe_in_flight = true;
                true
            }
        };
        Some(Ticket {
            breaker: self,
            probe,
            reported: false,
        })
    }

    fn record(&self, ok: bool) {
        let mut inner = self.lock();
        if ok {
            *inner = Inner::Closed {
                consecutive_failures: 0,
            };
            return;
        }
        match &mut *inner {
            Inner::Closed {
                consecutive_failures,
            } => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.threshold {
                    tracing::warn!(
                        failures = *consecutive_failures,
                        cooldown_ms = self.cooldown.as_millis() as u64,
                        "docker circuit breaker opened"
                    );
                    *inner = Inner::Open {
                        until: Instant::now() + self.cooldown,
                    };
                }
            }
            Inner::HalfOpen { .. } => {
                tracing::warn!("docker circuit breaker probe failed, open again");
                *inner = Inner::Open {
                    until: Instant::now() + self.cooldown,
                };
            }
            // Calls that were let through before the breaker opened may still report; the
            // breaker is already open, so they change nothing.
            Inner::Open { .. } => {}
        }
    }
}

impl Ticket<'_> {
    pub fn success(mut self) {
        self.reported = true;
        if self.probe {
            tracing::info!("docker circuit breaker closed after a successful probe");
        }
        self.breaker.record(true);
    }

    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.record(false);
    }

    /// The call ended in a way that says nothing of Docker's health (a 404, a 409): a closed
    /// breaker is left as it is, a probe closes it (Docker answered).
    pub fn neutral(mut self) {
        self.reported = true;
        let mut inner = self.breaker.lock();
        if let Inner::HalfOpen { .. } = *inner {
            *inner = Inner::Closed {
                consecutive_failures: 0,
            };
        } else if let Inner::Closed {
            consecutive_failures,
        } = &mut *inner
        {
            *consecutive_failures = 0;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.record(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            b.try_pass().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_pass().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_pass().is_none());

        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_pass().expect("probe allowed");
        assert!(b.try_pass().is_none(), "only one probe at a time");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_or_dropped_probe_reopens() {
        let b = Breaker::new(1, Duration::from_secs(5));
        b.try_pass().unwrap().failure();
        tokio::time::advance(Duration::from_secs(6)).await;
        b.try_pass().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(6)).await;
        drop(b.try_pass().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(5));
        b.try_pass().unwrap().failure();
        b.try_pass().unwrap().success();
        b.try_pass().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
