//! The event handlers, one per event, each validating its payload and answering with a
//! result or a typed error.

use super::*;
use crate::audit::{Decision, Origin};
use crate::session::now_ms;

// -------------------------------------------------------------------------------------------
// Handlers, one per event.

/// Connect middleware: runs before the client is told it is connected, so the handlers are in
/// place before its first event can arrive (the connect handler itself runs after the CONNECT
/// packet is sent, and an event that found no handler would be lost).
pub(super) async fn prepare(socket: SocketRef) -> Result<(), Infallible> {
    let (tx, rx) = watch::channel(Slot::Pending);
    socket.extensions.insert(ConnSlot(rx));
    socket.extensions.insert(SlotSender(Arc::new(tx)));
    socket
        .extensions
        .insert(Departure(CancellationToken::new()));
    socket.on("exec", on_exec);
    socket.on("message", on_message);
    socket.on("tool:approval", on_approval);
    socket.on("session:end", on_end);
    socket.on("session:policy", on_policy);
    socket.on("fs:list", super::files::on_fs_list);
    socket.on("fs:read", super::files::on_fs_read);
    socket.on("fs:write", super::files::on_fs_write);
    socket.on("fs:delete", super::files::on_fs_delete);
    socket.on("tool:undo", super::files::on_undo);
    socket.on_fallback(on_unknown);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

pub(super) async fn on_connect(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(api): State<Arc<SocketApi>>,
) {
    let started = Instant::now();
    let (Some(SlotSender(tx)), Some(Departure(departure))) = (
        socket.extensions.get::<SlotSender>(),
        socket.extensions.get::<Departure>(),
    ) else {
        tracing::warn!("connection without a session slot");
        let _ = socket.disconnect();
        return;
    };
    let auth = auth.ok();
    let approval = auth.as_ref().and_then(|a| a.get("approval")).map(|a| {
        a.as_str()
            .map(String::from)
            .unwrap_or_else(|| a.to_string())
    });
    let Established {
        mut session,
        resume_token,
        workspace_token,
        acquire_ms,
    } = match api.establish(&socket, auth, &departure).await {
        Ok(established) => established,
        Err(NoSession::Left) => {
            tracing::debug!("the client left before it had its session");
            let _ = tx.send(Slot::Failed);
            return;
        }
        Err(NoSession::Refused(error)) => {
            let _ = tx.send(Slot::Failed);
            api.fail(&socket, None, error, None);
            let _ = socket.disconnect();
            return;
        }
    };
    let resumed = resume_token.is_none();
    // Opened, but the client is gone: it never heard its resume token, so nobody can come
    // back for this session. It ends now and its sandbox goes to the next caller, instead of
    // being held for the reconnect grace.
    if !resumed && (departure.is_cancelled() || !socket.connected()) {
        let _ = tx.send(Slot::Failed);
        end_unheard(&api, &session.id).await;
        return;
    }
    // The approval policy the handshake asked for (else a new session's default); one that
    // is not allowed is refused with an error event, and the session keeps its policy.
    let wanted = match approval.as_deref().map(|name| api.allowed_policy(name)) {
        Some(Ok(policy)) => Some(policy),
        Some(Err(error)) => {
            api.fail(&socket, None, error, None);
            (!resumed).then(|| api.default_policy())
        }
        None if !resumed => Some(api.default_policy()),
        None => None,
    };
    if let Some(policy) = wanted.filter(|p| *p != session.approval) {
        match api.sessions.set_approval(&session.id, policy).await {
            Ok(()) => session.approval = policy,
            Err(e) => api.fail(&socket, None, (&e).into(), None),
        }
    }
    let conn = Arc::new(Conn {
        session_id: session.id.clone(),
    });
    api.bind(&session.id, &socket);
    let workspace: String = session.container_id.chars().take(12).collect();
    let mcp_url = api.mcp_url(&socket);
    // A resumed session's tokens are the ones the client already has; they are not sent
    // again.
    let payload = SessionPayload {
        session_id: &session.id,
        resume_token: resume_token.as_deref().unwrap_or(""),
        workspace_id: &workspace,
        acquire_ms,
        resumed,
        instance: api.sessions.instance(),
        mcp: McpPayload {
            url: &mcp_url,
            token: workspace_token.as_deref(),
        },
        approval: session.approval.as_str(),
    };
    let heard = socket.emit("session", &payload).is_ok();
    if !heard && !resumed && !socket.connected() {
        // Gone just now: as above (the slot never says ready, so the disconnect handler
        // leaves the session to this one).
        api.unbind_if_current(&session.id, &socket);
        let _ = tx.send(Slot::Failed);
        end_unheard(&api, &session.id).await;
        return;
    }
    // Calls that wait for approval (made while the browser was away, or on the connection
    // it had before) are asked again. They are read before the slot says ready: a `message`
    // that waited for the session proposes only after that, and emits its own `tool:request`,
    // which a read after it would send a second time.
    let waiting = api.sessions.pending_calls(&session.id);
    let _ = tx.send(Slot::Ready(conn));
    for call in waiting {
        api.request_approval(&session.id, &call);
    }
    if !socket.connected() {
        // The client left while its session was being set up, before the disconnect handler
        // could see the session: it may have its token, so the grace applies.
        if api.unbind_if_current(&session.id, &socket) {
            api.sessions.detach(&session.id).await;
        }
        return;
    }
    api.metrics.handout(started.elapsed());
    if started.elapsed() > Duration::from_secs(1) {
        tracing::warn!(session_id = %session.id, elapsed_ms = started.elapsed().as_millis() as u64, "slow session handout");
    }
    tracing::info!(session_id = %session.id, container_id = %session.container_id, acquire_ms, resumed, "session ready");
}

impl SocketApi {
    /// The audit entry of a command the user ran or approved in the browser.
    fn audit_run(
        &self,
        session_id: &str,
        origin: Origin,
        command: &str,
        started_ms: i64,
        result: &Result<RunOutcome, ApiError>,
    ) {
        let (status, exit_code, stdout, stderr) = match result {
            Ok(out) => (out.status, out.exit_code, &out.stdout[..], &out.stderr[..]),
            Err(_) => ("error", None, &[][..], &[][..]),
        };
        self.audit(CallRecord {
            session_id,
            origin,
            client: None,
            tool: "exec",
            args: json!({"command": command}),
            decision: Decision::Approved,
            decided_by: "user",
            started_ms,
            status,
            exit_code,
            stdout,
            stderr,
        });
    }
}

/// Ends a new session whose client left before it could hear of it.
async fn end_unheard(api: &SocketApi, session_id: &str) {
    tracing::info!(%session_id, "the client left before it heard of its session: ending it");
    if let Err(error) = api.sessions.end(session_id, EndReason::Disconnected).await {
        tracing::warn!(%session_id, %error, "ending a session nobody heard of failed; it expires after the grace");
    }
}

/// A refused request: the error, and the call it concerns if one was named or made.
pub(super) struct Refusal {
    error: ApiError,
    call_id: Option<String>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            call_id: None,
        }
    }
}

impl Refusal {
    pub(super) fn for_call(error: ApiError, call_id: &str) -> Self {
        Self {
            error,
            call_id: Some(call_id.to_string()),
        }
    }
}

impl SocketApi {
    /// Answers a request: its ack body, or its refusal (see [`SocketApi::fail`]).
    pub(super) fn answer(&self, socket: &SocketRef, reply: Reply, result: Result<Value, Refusal>) {
        match result {
            Ok(body) => reply.send(&body),
            Err(r) => self.fail(socket, Some(reply), r.error, r.call_id.as_deref()),
        }
    }
}

pub(super) async fn on_exec(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result = exec_request(&api, &socket, data).await;
    api.answer(&socket, reply, result);
}

pub(super) async fn exec_request(
    api: &SocketApi,
    socket: &SocketRef,
    data: Result<Value, impl std::fmt::Display>,
) -> Result<Value, Refusal> {
    let conn = api.active_conn(socket).await?;
    let req = parse_exec(data, &api.limits)?;
    let permit = api.permit(&conn)?;
    let call_id = new_call_id();
    let started_ms = now_ms();
    let result = api
        .run(socket, &conn, &call_id, &req.command, req.timeout)
        .await;
    drop(permit);
    api.audit_run(
        &conn.session_id,
        Origin::Socket,
        &req.command,
        started_ms,
        &result,
    );
    let out = result.map_err(|e| Refusal::for_call(e, &call_id))?;
    let mut body = out.to_json();
    body["ok"] = json!(true);
    body["callId"] = json!(call_id);
    Ok(body)
}

pub(super) async fn on_message(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result = message_request(&api, &socket, data).await;
    api.answer(&socket, reply, result);
}

pub(super) async fn message_request(
    api: &SocketApi,
    socket: &SocketRef,
    data: Result<Value, impl std::fmt::Display>,
) -> Result<Value, Refusal> {
    let conn = api.active_conn(socket).await?;
    let text = parse_message(data, &api.limits)?;
    let proposals = api
        .agent
        .propose(&text)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let mut call_ids = Vec::new();
    for proposal in proposals {
        let ToolProposal::Exec { command } = &proposal;
        let call_id = new_call_id();
        let call = PendingCall::proposal(proposal.tool(), json!({"command": command}));
        let view = call.view(&call_id);
        if !api
            .sessions
            .propose(&conn.session_id, &call_id, call, MAX_PENDING_PER_SESSION)
        {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!("at most {MAX_PENDING_PER_SESSION} tool calls may wait for approval"),
            )
            .into());
        }
        let _ = socket.emit("tool:request", &tool_request_payload(&view));
        call_ids.push(call_id);
    }
    Ok(json!({"ok": true, "callIds": call_ids}))
}

/// An accepted approval: the call is rejected, handed to the agent waiting for it, or it
/// runs here under `permit`.
pub(super) enum Approval {
    Rejected {
        session_id: String,
        call_id: String,
        command: String,
    },
    Answered(String),
    Run {
        conn: Arc<Conn>,
        call_id: String,
        command: String,
        permit: OwnedSemaphorePermit,
    },
}

pub(super) async fn on_approval(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    match approval_request(&api, &socket, data).await {
        Err(r) => api.fail(&socket, Some(reply), r.error, r.call_id.as_deref()),
        Ok(Approval::Answered(call_id)) => {
            // The agent's call runs (or not) where it waits; its output and result reach this
            // socket from there.
            reply.send(&json!({"ok": true, "callId": call_id}));
        }
        Ok(Approval::Rejected {
            session_id,
            call_id,
            command,
        }) => {
            api.metrics.exec_done("rejected", Duration::ZERO);
            api.audit(CallRecord {
                session_id: &session_id,
                origin: Origin::Chat,
                client: None,
                tool: "exec",
                args: json!({"command": command}),
                decision: Decision::Rejected,
                decided_by: "user",
                started_ms: now_ms(),
                status: "rejected",
                exit_code: None,
                stdout: &[],
                stderr: &[],
            });
            reply.send(&json!({"ok": true, "callId": call_id}));
            let _ = socket.emit(
                "tool:result",
                &json!({"callId": call_id, "status": "rejected"}),
            );
        }
        Ok(Approval::Run {
            conn,
            call_id,
            command,
            permit,
        }) => {
            // Accepted: the ack now, the result as `tool:result` when the command ends.
            reply.send(&json!({"ok": true, "callId": call_id}));
            let timeout = api.limits.exec_default_timeout;
            let started_ms = now_ms();
            let result = api.run(&socket, &conn, &call_id, &command, timeout).await;
            drop(permit);
            api.audit_run(
                &conn.session_id,
                Origin::Chat,
                &command,
                started_ms,
                &result,
            );
            let body = match result {
                Ok(out) => {
                    let mut body = json!({"callId": call_id, "status": out.status, "exitCode": out.exit_code, "durationMs": out.duration_ms});
                    out.add_checkpoint(&mut body);
                    body
                }
                Err(e) => {
                    api.metrics.api_error(e.code.as_str());
                    json!({"callId": call_id, "status": "error", "exitCode": null, "error": {"code": e.code.as_str(), "message": e.message}})
                }
            };
            let _ = socket.emit("tool:result", &body);
        }
    }
}

pub(super) async fn approval_request(
    api: &SocketApi,
    socket: &SocketRef,
    data: Result<Value, impl std::fmt::Display>,
) -> Result<Approval, Refusal> {
    let conn = api.active_conn(socket).await?;
    let (call_id, approved) = parse_approval(data)?;
    // Only this session's own proposals are here, and each is taken once.
    let call = api.sessions.take_proposal(&conn.session_id, &call_id);
    let Some(call) = call else {
        let e = ApiError::new(
            ErrorCode::NotFound,
            "no tool call with that callId is waiting for approval",
        );
        return Err(Refusal::for_call(e, &call_id));
    };
    // An agent's call: its caller runs it.
    let Err(call) = call.decide(approved) else {
        return Ok(Approval::Answered(call_id));
    };
    let Some(command) = call.command().map(String::from) else {
        let e = ApiError::new(ErrorCode::Internal, "the proposed call has no command");
        return Err(Refusal::for_call(e, &call_id));
    };
    if !approved {
        return Ok(Approval::Rejected {
            session_id: conn.session_id.clone(),
            call_id,
            command,
        });
    }
    match api.permit(&conn) {
        Ok(permit) => Ok(Approval::Run {
            conn,
            call_id,
            command,
            permit,
        }),
        Err(e) => {
            // Not run: it stays waiting, so the client can approve it again later.
            api.sessions
                .return_proposal(&conn.session_id, &call_id, call);
            Err(Refusal::for_call(e, &call_id))
        }
    }
}

pub(super) async fn on_policy(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result = policy_request(&api, &socket, data).await;
    api.answer(&socket, reply, result.map_err(Refusal::from));
}

async fn policy_request(
    api: &SocketApi,
    socket: &SocketRef,
    data: Result<Value, impl std::fmt::Display>,
) -> Result<Value, ApiError> {
    let conn = api.active_conn(socket).await?;
    let policy = api.allowed_policy(&parse_policy(data)?)?;
    api.sessions
        .set_approval(&conn.session_id, policy)
        .await
        .map_err(|e| ApiError::from(&e))?;
    Ok(json!({"ok": true, "approval": policy.as_str()}))
}

pub(super) async fn on_end(socket: SocketRef, reply: Reply, State(api): State<Arc<SocketApi>>) {
    let conn = match api.conn(&socket).await {
        Ok(c) => c,
        Err(e) => return api.fail(&socket, Some(reply), e, None),
    };
    match api.sessions.end(&conn.session_id, EndReason::Ended).await {
        Ok(_) => {
            reply.send(&json!({"ok": true, "sessionId": conn.session_id}));
            let _ = socket.disconnect();
        }
        Err(e) => api.fail(&socket, Some(reply), (&e).into(), None),
    }
}

/// Any other event: a typed `bad_request` naming it (in its ack when it asked for one); the
/// socket stays. An event name the client sent with a lone UTF-16 surrogate arrives here
/// with U+FFFD in its place (the patched parser, docs/API.md).
pub(super) async fn on_unknown(
    socket: SocketRef,
    Event(event): Event,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    tracing::debug!(event, "unknown socket event");
    let shown: String = event.chars().take(64).collect();
    api.fail(
        &socket,
        Some(reply),
        ApiError::bad_request(format!("unknown event {shown:?}")),
        None,
    );
}

pub(super) async fn on_disconnect(socket: SocketRef, State(api): State<Arc<SocketApi>>) {
    // First: a session still being opened for this socket is dropped (`on_connect`).
    if let Some(Departure(departure)) = socket.extensions.get::<Departure>() {
        departure.cancel();
    }
    let Some(ConnSlot(rx)) = socket.extensions.get::<ConnSlot>() else {
        return;
    };
    let Slot::Ready(conn) = rx.borrow().clone() else {
        return;
    };
    // Detach only if this socket is still the session's (not replaced by a resume, not ended).
    if api.unbind_if_current(&conn.session_id, &socket) {
        api.sessions.detach(&conn.session_id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ApiConfig {
        ApiConfig::default()
    }

    #[test]
    fn exec_payloads_are_validated() {
        let ok = parse_exec(
            Ok::<_, String>(json!({"command": "ls", "timeoutMs": 5000})),
            &limits(),
        )
        .unwrap();
        assert_eq!(
            (ok.command.as_str(), ok.timeout),
            ("ls", Duration::from_secs(5))
        );
        for bad in [
            json!("ls"),
            json!({}),
            json!({"command": 5}),
            json!({"command": "  "}),
            json!({"command": "ls", "timeoutMs": 0}),
            json!({"command": "ls", "timeoutMs": -1}),
            json!({"command": "ls", "timeoutMs": 1.5}),
            json!({"command": "ls", "timeoutMs": "5"}),
            json!({"command": "ls", "timeoutMs": 300_001}),
            json!({"command": "x".repeat(16 * 1024 + 1)}),
        ] {
            let e = parse_exec(Ok::<_, String>(bad.clone()), &limits())
                .err()
                .unwrap_or_else(|| panic!("accepted {bad}"));
            assert_eq!(e.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn messages_and_approvals_are_validated() {
        assert_eq!(
            parse_message(Ok::<_, String>(json!("ls")), &limits()).unwrap(),
            "ls"
        );
        assert_eq!(
            parse_message(Ok::<_, String>(json!({"text": "pwd"})), &limits()).unwrap(),
            "pwd"
        );
        for bad in [
            json!(""),
            json!(" "),
            json!(3),
            json!({"text": 3}),
            json!(null),
        ] {
            assert!(parse_message(Ok::<_, String>(bad), &limits()).is_err());
        }
        assert_eq!(
            parse_approval(Ok::<_, String>(json!({"callId": "a", "approved": true}))).unwrap(),
            ("a".into(), true)
        );
        for bad in [
            json!({"callId": "a"}),
            json!({"callId": "", "approved": true}),
            json!({"approved": "yes", "callId": "a"}),
            json!([]),
        ] {
            assert!(parse_approval(Ok::<_, String>(bad)).is_err());
        }
        assert!(
            parse_resume(&json!({"sessionId": "a", "resumeToken": "b"}))
                .unwrap()
                .is_some()
        );
        assert!(parse_resume(&json!({})).unwrap().is_none());
        assert!(parse_resume(&json!({"sessionId": 1, "resumeToken": "b"})).is_err());
        assert!(parse_resume(&json!("x")).is_err());
    }
}
