//! The callers waiting for a sandbox, first come first served, and the demand the pool sizes
//! its idle set by.
//!
//! A caller who finds no idle sandbox and no room to create one joins a bounded FIFO; each
//! sandbox that becomes free (created, recycled, adopted) goes to the head of the queue before
//! the idle set. Every waiter holds a `watch` of its place (position and an estimate of the
//! wait), refreshed as the queue moves. This module holds the data and the arithmetic; the
//! pool's state owns the queue and is the only code that changes it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::Lease;

/// How far back arrivals and hand-outs are counted.
const WINDOW: Duration = Duration::from_secs(10);
/// Events kept per window at most (memory bound; beyond it the rate saturates).
const MAX_EVENTS: usize = 10_000;
/// Headroom on the idle target: idle enough for this many create times of arrivals.
const TARGET_HEADROOM: f64 = 1.5;

/// A caller's place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Place {
    /// 1 for the head of the queue.
    pub position: usize,
    /// Expected wait until a sandbox is handed over, from the recent hand-out rate.
    pub estimate_ms: u64,
}

/// One queued caller.
pub(crate) struct Waiter {
    pub id: u64,
    /// Where its sandbox goes.
    pub tx: oneshot::Sender<Lease>,
    pub place: watch::Sender<Place>,
    pub started: Instant,
}

/// Recent arrivals, hand-outs and create times.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    arrivals: VecDeque<Instant>,
    handouts: VecDeque<Instant>,
    /// Moving average of a create's duration (create + start + supervisor ready), ms.
    create_ms: Option<f64>,
}

fn record(events: &mut VecDeque<Instant>, now: Instant) {
    events.push_back(now);
    if events.len() > MAX_EVENTS {
        events.pop_front();
    }
}

fn rate(events: &mut VecDeque<Instant>, now: Instant) -> f64 {
    while events
        .front()
        .is_some_and(|t| now.duration_since(*t) > WINDOW)
    {
        events.pop_front();
    }
    events.len() as f64 / WINDOW.as_secs_f64()
}

impl Demand {
    /// A caller asked for a sandbox.
    pub fn arrival(&mut self, now: Instant) {
        record(&mut self.arrivals, now);
    }

    /// A sandbox was handed to a caller.
    pub fn handout(&mut self, now: Instant) {
        record(&mut self.handouts, now);
    }

    /// A create took `took`.
    pub fn created(&mut self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        self.create_ms = Some(match self.create_ms {
            Some(avg) => avg * 0.8 + ms * 0.2,
            None => ms,
        });
    }

    /// Arrivals per second over the window.
    pub fn arrival_rate(&mut self, now: Instant) -> f64 {
        rate(&mut self.arrivals, now)
    }

    /// Idle sandboxes to keep: enough for the arrivals expected while one create runs (with
    /// headroom), never below `min_idle` nor above `cap`.
    pub fn idle_target(&mut self, now: Instant, min_idle: usize, cap: usize) -> usize {
        let create_secs = self.create_ms.unwrap_or(1000.0) / 1000.0;
        let wanted = (self.arrival_rate(now) * create_secs * TARGET_HEADROOM).ceil() as usize;
        wanted.max(min_idle).min(cap.max(min_idle))
    }

    /// Expected wait of the caller at `position`: one recent hand-out interval per place, or
    /// one create time per place when nothing was handed out lately.
    pub fn estimate_ms(&mut self, now: Instant, position: usize) -> u64 {
        let per_place_ms = match rate(&mut self.handouts, now) {
            r if r > 0.0 => 1000.0 / r,
            _ => self.create_ms.unwrap_or(1000.0),
        };
        (per_place_ms * position as f64).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_target_follows_arrivals_within_its_bounds() {
        let mut d = Demand::default();
        let now = Instant::now();
        assert_eq!(d.idle_target(now, 2, 10), 2, "no demand: the floor");
        d.created(Duration::from_millis(500));
        for _ in 0..200 {
            d.arrival(now);
        }
        // 20/s × 0.5 s × 1.5 = 15, capped at 10.
        assert_eq!(d.idle_target(now, 2, 10), 10);
        assert_eq!(d.idle_target(now, 2, 40), 15);
        // Old arrivals fall out of the window.
        let later = now + WINDOW + Duration::from_secs(1);
        assert_eq!(d.idle_target(later, 2, 40), 2);
    }

    #[test]
    fn estimates_grow_with_the_position() {
        let mut d = Demand::default();
        let now = Instant::now();
        d.created(Duration::from_millis(300));
        assert_eq!(
            d.estimate_ms(now, 2),
            600,
            "no hand-out yet: create time per place"
        );
        for _ in 0..50 {
            d.handout(now);
        }
        // 5 hand-outs per second: 200 ms per place.
        assert_eq!(d.estimate_ms(now, 3), 600);
    }
}
