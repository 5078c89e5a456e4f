//! The manager's background work: the expiry janitor, the heartbeat, the catch-up after
//! store data loss, and ending sessions whose sandbox died.

use futures_util::future::join_all;

use super::EndReason;
use super::manager::{JanitorReport, SessionManager, SessionSettings};
use super::model::{Session, SessionState, now_ms};
use super::store::{Cutoffs, StoreError, Sweep};
use crate::pool::LeaseRef;

impl SessionManager {
    /// One janitor pass: ends every session past its idle TTL or its reconnect grace, and
    /// finishes ends that a dead claimer left half-done. Bounded batches; each session is
    /// claimed atomically, so two janitors never end the same one.
    pub async fn janitor_pass(&self) -> Result<JanitorReport, StoreError> {
        let now = now_ms();
        let st = &self.inner.settings;
        let cutoffs = Cutoffs {
            idle_before_ms: now - st.idle_ttl.as_millis() as i64,
            detached_before_ms: now - st.reconnect_grace.as_millis() as i64,
            claimed_before_ms: now - super::STALE_CLAIM_MS,
        };
        let mut report = JanitorReport::default();
        for sweep in [Sweep::Idle, Sweep::Detached, Sweep::StaleClaim] {
            let mut offset = 0;
            loop {
                let ids = self
                    .inner
                    .store
                    .candidates(sweep, &cutoffs, offset, st.janitor_batch)
                    .await?;
                if ids.is_empty() {
                    break;
                }
                report.examined += ids.len();
                let claimed = self
                    .inner
                    .store
                    .claim_expired(&ids, &cutoffs, &self.inner.instance, now)
                    .await?;
                offset += ids.len() - claimed.len();
                report.ended += claimed.len();
                join_all(claimed.into_iter().map(|s| {
                    let reason = match sweep {
                        Sweep::StaleClaim => EndReason::Abandoned,
                        _ if s.detached_at_ms > 0
                            && s.detached_at_ms <= cutoffs.detached_before_ms =>
                        {
                            EndReason::Disconnected
                        }
                        _ => EndReason::Idle,
                    };
                    self.finish_claimed(s, reason)
                }))
                .await;
                if ids.len() < st.janitor_batch {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(report)
    }

    pub(super) async fn janitor_loop(&self) {
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(self.inner.settings.janitor_interval) => {}
            }
            match self.janitor_pass().await {
                Ok(report) if report.ended > 0 => {
                    tracing::info!(
                        ended = report.ended,
                        examined = report.examined,
                        "janitor pass"
                    )
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "janitor pass failed; next pass retries"),
            }
            self.catch_up().await;
            self.sweep_dead_instances().await;
        }
    }

    pub(super) fn settings(&self) -> &SessionSettings {
        &self.inner.settings
    }

    /// Writes again any session of this instance that the store lost (a Redis restart
    /// without persistence), and forgets sessions another instance took over.
    pub async fn catch_up(&self) {
        let mine: Vec<Session> = self.local().values().map(|l| l.session.clone()).collect();
        for s in mine {
            match self.inner.store.get(&s.id).await {
                Ok(None) => {
                    // Only while it is still served here under the same lease (an end may have
                    // deleted it since the list was taken), and only if the store does not
                    // name another holder for the sandbox.
                    let current = self.local().get(&s.id).is_some_and(|l| {
                        l.session.fence == s.fence && l.session.state != SessionState::Ending
                    });
                    if !current {
                        continue;
                    }
                    match self.inner.store.restore(&s).await {
                        Ok(true) => {
                            tracing::info!(session_id = %s.id, "session written again after the store lost it")
                        }
                        Ok(false) => {
                            tracing::info!(session_id = %s.id, "not writing a session again: the store has it, or its sandbox has another holder")
                        }
                        Err(error) => {
                            tracing::debug!(session_id = %s.id, %error, "catch-up write failed")
                        }
                    }
                }
                Ok(Some(stored))
                    if stored.owner != self.inner.instance || stored.fence != s.fence =>
                {
                    // Taken over while this instance's heartbeat lapsed: the sandbox is the
                    // new owner's now. Give up the lease (no scrub, no removal), or its place
                    // in the pool would stay taken for good.
                    let removed = self.local().remove(&s.id);
                    if removed.is_some() {
                        self.tell_ended(&s, EndReason::Moved);
                    }
                    self.inner.pool.hand_over(&s.lease());
                }
                Ok(Some(stored))
                    if stored.state == SessionState::Active
                        && s.state == SessionState::Detached =>
                {
                    let _ = self
                        .inner
                        .store
                        .detach(&s.id, &self.inner.instance, s.detached_at_ms)
                        .await;
                }
                Ok(Some(_)) => {}
                Err(_) => return, // the store is down; try next time
            }
        }
    }

    /// Renews the heartbeat; while it is renewed, this instance may serve its sessions for
    /// `self_fence_after` more. Another incarnation holding the instance id fences this one
    /// for good.
    pub(super) async fn beat(&self) -> Result<(), StoreError> {
        let started = tokio::time::Instant::now();
        let renewed = self
            .inner
            .store
            .heartbeat(
                &self.inner.instance,
                &self.inner.incarnation,
                self.inner.settings.heartbeat_ttl,
            )
            .await?;
        {
            let mut serving = self
                .inner
                .serving_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !renewed {
                if serving.is_some() {
                    tracing::error!(
                        instance = %self.inner.instance,
                        "another process holds this instance id's heartbeat: this one stops serving its sessions"
                    );
                }
                *serving = None;
            } else if let Some(until) = serving.as_mut() {
                // From when the renewal was sent: the TTL ran from no earlier than that.
                *until = (*until).max(started + self.inner.settings.self_fence_after());
            }
        }
        if renewed && let Some(url) = &self.inner.settings.advertise {
            self.inner
                .store
                .set_address(&self.inner.instance, url, self.inner.settings.heartbeat_ttl)
                .await?;
        }
        if renewed && let Ok(status) = serde_json::to_string(&self.replica_status()) {
            self.inner
                .store
                .set_status(
                    &self.inner.instance,
                    &status,
                    self.inner.settings.heartbeat_ttl,
                )
                .await?;
        }
        Ok(())
    }

    pub(super) async fn heartbeat_loop(&self) {
        let every = self.inner.settings.heartbeat_ttl / 3;
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.beat().await {
                tracing::warn!(%error, "heartbeat failed");
            }
            // A new epoch long before this one's 2^32 tokens run out.
            if self.inner.pool.fences_minted() > 1 << 31 {
                match self.inner.store.next_epoch(0).await {
                    Ok(epoch) => self.inner.pool.advance_epoch(epoch),
                    Err(error) => tracing::warn!(%error, "taking a new fencing epoch failed"),
                }
            }
        }
    }

    /// Ends sessions whose sandbox died. A receiver that lagged behind has missed events, so
    /// it asks the pool about every local session's sandbox instead of skipping them.
    pub(super) async fn watch_pool(&self) {
        // The pool publishes which leases are lost as a state that changes, not as events:
        // however long this loop is busy ending sessions, it cannot miss a death.
        let mut lost = self.inner.pool.watch_lost();
        loop {
            // Deaths recorded before this loop subscribed (a kept sandbox whose supervisor did
            // not answer at start) are read first.
            for lease in self.inner.pool.lost_leases() {
                self.end_sandbox_lost(&lease).await;
            }
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                changed = lost.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Ends the local session holding `lease`, whose sandbox died.
    pub(super) async fn end_sandbox_lost(&self, lease: &LeaseRef) {
        let id = self
            .local()
            .iter()
            .find(|(_, l)| l.session.lease() == *lease)
            .map(|(id, _)| id.clone());
        if let Some(id) = id
            && let Err(error) = self.end(&id, EndReason::SandboxLost).await
        {
            tracing::warn!(session_id = %id, %error, "ending a session whose sandbox died failed");
        }
    }
}
