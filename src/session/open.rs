//! Opening a session (a sandbox from the pool, a record in the store, a subject's slot when
//! the token has a subject) and resuming one (here, or moved from another replica).
//! Cancel-safe: guards give back whatever an open dropped half-way held.

use std::sync::Arc;

use super::handover::Asked;
use super::manager::{Local, Moves, Opened, SessionManager};
use super::model::{
    Session, SessionState, new_resume_token, new_workspace_token, now_ms, token_matches,
};
use super::store::SessionStore;
use super::{EndReason, SessionError};
use crate::pool::{ContainerPool, LeaseRef, Place, epoch_of};

/// A subject's slot is reserved for the acquire timeout plus this (a create, the record's
/// write), after which an opener that crashed no longer holds it.
const RESERVATION_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// A subject's slot held for a session being opened: freed when dropped unless kept (the
/// session was recorded; deleting it frees the slot then).
struct SubjectSlot {
    store: Arc<dyn SessionStore>,
    subject: String,
    session_id: Option<String>,
}

impl SubjectSlot {
    fn keep(mut self) {
        self.session_id = None;
    }
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        if let Some(id) = self.session_id.take() {
            let (store, subject) = (self.store.clone(), std::mem::take(&mut self.subject));
            // Not awaited here (a drop); if this fails, the reservation expires by itself.
            tokio::spawn(async move {
                if let Err(error) = store.unreserve_subject(&subject, &id).await {
                    tracing::debug!(%error, "freeing a subject's slot failed; it expires");
                }
            });
        }
    }
}

/// A sandbox acquired for a session that is not recorded yet: released when dropped unless
/// the session took it. When the record may have been written (the write was under way), it
/// is deleted first, so that no record ever points at a sandbox another session holds.
struct HeldLease {
    pool: ContainerPool,
    store: Arc<dyn SessionStore>,
    lease: Option<LeaseRef>,
    session_id: Option<String>,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        match self.session_id.take() {
            None => {
                let _ = self.pool.release(&lease);
            }
            Some(session_id) => {
                let (pool, store) = (self.pool.clone(), self.store.clone());
                tokio::spawn(async move {
                    match store.delete(&session_id).await {
                        Ok(_) => {
                            let _ = pool.release(&lease);
                        }
                        // The record stays and keeps the sandbox: the janitor ends it (and
                        // releases the sandbox) once it expires.
                        Err(error) => {
                            tracing::warn!(%session_id, %error, "deleting an abandoned session record failed")
                        }
                    }
                });
            }
        }
    }
}

impl SessionManager {
    /// Opens a new session with a sandbox from the pool.
    pub async fn open(&self) -> Result<Opened, SessionError> {
        self.open_queued(&mut |_| {}).await
    }

    /// `open_queued` for a token `subject` (`None`: anonymous): refused with
    /// `TooManySessions`, before any sandbox is taken, when the subject holds its maximum of
    /// live sessions over every replica. The subject is written with the record.
    pub async fn open_as(
        &self,
        on_place: &mut (dyn FnMut(Place) + Send),
        subject: Option<&str>,
    ) -> Result<Opened, SessionError> {
        let Some(subject) = subject else {
            return self.open_inner(on_place, None).await;
        };
        let id = uuid::Uuid::new_v4().to_string();
        let limit = self.inner.settings.max_sessions_per_subject;
        let slot = if limit > 0 {
            // Held for the longest an open can take: the pool's queue, then a create.
            let ttl = self.acquire_timeout() + RESERVATION_MARGIN;
            if !self
                .inner
                .store
                .reserve_subject(subject, &id, limit, ttl)
                .await?
            {
                return Err(SessionError::TooManySessions {
                    subject: subject.to_string(),
                    limit,
                });
            }
            Some(SubjectSlot {
                store: self.inner.store.clone(),
                subject: subject.to_string(),
                session_id: Some(id.clone()),
            })
        } else {
            None
        };
        let opened = self.open_inner(on_place, Some((id, subject))).await;
        if let (Ok(_), Some(slot)) = (&opened, slot) {
            slot.keep();
        }
        opened
    }

    /// `open`, telling `on_place` the caller's place whenever it changes while it waits in
    /// the pool's queue. Cancel-safe: dropped at any point, it leaks neither the sandbox nor
    /// a session record.
    pub async fn open_queued(
        &self,
        on_place: &mut (dyn FnMut(Place) + Send),
    ) -> Result<Opened, SessionError> {
        self.open_inner(on_place, None).await
    }

    /// The open itself; `named` gives the session's id and subject (already reserved).
    async fn open_inner(
        &self,
        on_place: &mut (dyn FnMut(Place) + Send),
        named: Option<(String, &str)>,
    ) -> Result<Opened, SessionError> {
        // Queued (every sandbox taken): a dropped connection's sandbox goes to this live one.
        let mut queued = false;
        let mut on_place = |place: Place| {
            if !std::mem::replace(&mut queued, true) {
                self.yield_a_detached_sandbox();
            }
            on_place(place);
        };
        let lease = self.inner.pool.acquire_queued(&mut on_place).await?;
        // Until the session is recorded, the sandbox goes back if this future is dropped or
        // fails.
        let mut held = HeldLease {
            pool: self.inner.pool.clone(),
            store: self.inner.store.clone(),
            lease: Some(lease.lease_ref()),
            session_id: None,
        };
        let (token, hash) = new_resume_token().map_err(|e| SessionError::Random(e.to_string()))?;
        let mut session = Session::new(&self.inner.instance, &lease.lease_ref(), hash, now_ms());
        if let Some((id, subject)) = named {
            session.id = id;
            session.subject = subject.to_string();
        }
        let (workspace_token, mcp_hash) =
            new_workspace_token(&session.id).map_err(|e| SessionError::Random(e.to_string()))?;
        session.mcp_hash = mcp_hash;
        // From here a record may exist: it goes before the sandbox does.
        held.session_id = Some(session.id.clone());
        if let Err(e) = self.inner.store.put(&session).await {
            // The store refused the record: no session, and the sandbox goes back at once
            // (a put that might have landed is only the cancelled case above).
            held.session_id = None;
            return Err(e.into());
        }
        let local = Local::new(
            session.clone(),
            session.last_active_ms,
            &self.inner.settings,
        );
        self.local().insert(session.id.clone(), local);
        held.lease = None;
        Ok(Opened {
            session,
            resume_token: token,
            workspace_token,
            lease,
        })
    }

    /// Resumes a session with its token: same sandbox. A session held by an instance that
    /// stopped heartbeating is taken over (its container adopted, not recreated).
    pub async fn resume(&self, id: &str, token: &str) -> Result<Session, SessionError> {
        self.resume_as(id, token, None).await
    }

    /// `resume` for a token `subject`: a session opened with a subject resumes only with
    /// that subject.
    pub async fn resume_as(
        &self,
        id: &str,
        token: &str,
        subject: Option<&str>,
    ) -> Result<Session, SessionError> {
        let store = &self.inner.store;
        let mut s = store
            .get(id)
            .await?
            .ok_or_else(|| SessionError::Expired(id.to_string()))?;
        if !token_matches(token, &s.token_hash) {
            return Err(SessionError::BadToken(id.to_string()));
        }
        if !s.subject.is_empty() && subject != Some(s.subject.as_str()) {
            return Err(SessionError::Unauthorized(id.to_string()));
        }
        if s.state == SessionState::Ending {
            return Err(SessionError::Expired(id.to_string()));
        }
        self.check_serving()?;
        let me = &self.inner.instance;
        if &s.owner != me {
            // Before anything moves, this instance must have room for the sandbox.
            let status = self.inner.pool.status();
            if status.total >= status.max && !self.inner.pool.is_leased(&s.container_id) {
                return Err(SessionError::Elsewhere {
                    id: id.to_string(),
                    owner: s.owner.clone(),
                });
            }
            // The new lease: from a new epoch of the store, above the epoch of the record's
            // lease, so that its token is larger than any the previous holder was given (the
            // store's counter alone may be behind it: see `next_epoch`), and written with the
            // move.
            self.inner
                .pool
                .advance_epoch(store.next_epoch(epoch_of(s.fence)).await?);
            let fence = self.inner.pool.mint_fence();
            // Live owner: an orderly hand-over; dead owner (heartbeat lapsed, or Docker says
            // its container is down): a takeover (handover.rs).
            let released = if store.is_alive(&s.owner).await? {
                match self.ask_release(&s, fence).await? {
                    Asked::Released => true,
                    Asked::Refused => return Err(SessionError::Expired(id.to_string())),
                    Asked::Silent
                        if self.inner.pool.instance_down(&s.owner).await == Some(true) =>
                    {
                        false
                    }
                    Asked::Silent => {
                        return Err(SessionError::Elsewhere {
                            id: id.to_string(),
                            owner: s.owner.clone(),
                        });
                    }
                }
            } else {
                false
            };
            if !released && !store.transfer(id, &s.owner, me, fence).await? {
                return Err(SessionError::Expired(id.to_string()));
            }
            // The store names this instance under `fence` now: the claim fences the previous
            // holder out of the sandbox's supervisor before this one's first command.
            if let Err(e) = self.inner.pool.take_over(&s.container_id, fence).await {
                tracing::warn!(session_id = %id, error = %e, "taking over a session whose sandbox is gone");
                if let Ok(Some(claimed)) = store.claim(id, me, now_ms()).await {
                    self.finish_claimed(claimed, EndReason::SandboxLost).await;
                }
                return Err(SessionError::Expired(id.to_string()));
            }
            if released {
                Moves::count(&self.inner.moves.handed_in);
                tracing::info!(session_id = %id, from = %s.owner, "a live replica handed its session over");
            } else {
                Moves::count(&self.inner.moves.taken_over);
                tracing::info!(session_id = %id, from = %s.owner, "took over a session from a stopped instance");
            }
            s.owner = me.clone();
            s.fence = fence;
        } else if self.inner.pool.lease_of(&s.container_id) != Some(s.lease()) {
            // The record names this instance, but the pool does not hold the sandbox under its
            // lease: a hand-over whose answer came after the ask gave up. Adopt it now.
            if let Err(e) = self.inner.pool.take_over(&s.container_id, s.fence).await {
                tracing::warn!(session_id = %id, error = %e, "a session recorded here has no sandbox");
                if let Ok(Some(claimed)) = store.claim(id, me, now_ms()).await {
                    self.finish_claimed(claimed, EndReason::SandboxLost).await;
                }
                return Err(SessionError::Expired(id.to_string()));
            }
        }
        let now = now_ms();
        if !store.reattach(id, now).await? {
            return Err(SessionError::Expired(id.to_string()));
        }
        s.state = SessionState::Active;
        s.detached_at_ms = 0;
        s.last_active_ms = s.last_active_ms.max(now);
        // A resume on the same instance keeps the session's command bound (and its commands).
        let settings = &self.inner.settings;
        self.local()
            .entry(id.to_string())
            .and_modify(|l| {
                l.session = s.clone();
                l.last_touch_ms = now;
            })
            .or_insert_with(|| Local::new(s.clone(), now, settings));
        Ok(s)
    }
}
