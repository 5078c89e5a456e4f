//! The Socket.IO session API (namespace `/`): one session and one sandbox per connection.
//! The contract is `docs/API.md`; this file implements it. One function per event; each
//! validates its payload into a typed request, and every refusal is a typed error (in the ack
//! when the client asked for one, else an `error` event). A bad request never closes the
//! socket and never holds up the session's other requests (each event runs in its own task).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::auth::Authenticator;
use super::error::{ApiError, ErrorCode};
use crate::agent::{Agent, ToolProposal};
use crate::config::ApiConfig;
use crate::metrics::Metrics;
use crate::session::{
    EndReason, OutputChunk, OutputStream, Place, Session, SessionError, SessionHooks,
    SessionManager,
};

/// The event that carries an error to a client that gave no ack. Not `error`: load tools
/// (artillery's socketio engine) treat a server event named `error` as a failure of their own
/// connection and crash on it (docs/API.md).
pub const ERROR_EVENT: &str = "sandpool:error";
/// Proposed tool calls a session may have waiting for approval at once.
const MAX_PENDING_PER_SESSION: usize = 100;
/// What the socket layer shares.
pub struct SocketApi {
    sessions: SessionManager,
    /// Verifies the handshake's token (a no-op when authentication is off).
    auth: Authenticator,
    agent: Arc<dyn Agent>,
    limits: ApiConfig,
    metrics: Arc<Metrics>,
    /// Session id → the socket bound to it on this instance.
    bound: Mutex<HashMap<String, SocketRef>>,
    /// How long an event waits for its connection's session to be set up.
    setup_wait: Duration,
}

/// One connection's session.
struct Conn {
    session_id: String,
    container_id: String,
    /// Commands running now (`max_inflight_per_session` permits).
    inflight: Arc<Semaphore>,
    /// Proposed tool calls waiting for approval: call id → command.
    pending: Mutex<HashMap<String, String>>,
}

#[derive(Clone)]
enum Slot {
    Pending,
    Ready(Arc<Conn>),
    Failed,
}

/// The connection's session as it is being set up; events wait on it.
#[derive(Clone)]
struct ConnSlot(watch::Receiver<Slot>);

/// The setting side of [`ConnSlot`], kept by the connect handler.
#[derive(Clone)]
struct SlotSender(Arc<watch::Sender<Slot>>);

/// The ack of an event, and whether the client asked for one.
pub struct Reply {
    ack: AckSender,
    wanted: bool,
}

impl FromMessageParts<socketioxide::adapter::LocalAdapter> for Reply {
    type Error = Infallible;
    fn from_message_parts(
        s: &Arc<Socket<socketioxide::adapter::LocalAdapter>>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Reply {
            ack: AckSender::from_message_parts(s, v, ack_id)?,
            wanted: ack_id.is_some(),
        })
    }
}

impl Reply {
    fn send(self, body: &Value) {
        if let Err(error) = self.ack.send(body) {
            tracing::debug!(%error, "sending an ack failed");
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionPayload<'a> {
    session_id: &'a str,
    resume_token: &'a str,
    workspace_id: &'a str,
    acquire_ms: u64,
    resumed: bool,
    /// The replica serving the session (its instance id).
    instance: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueuePayload {
    position: usize,
    estimate_ms: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputPayload<'a> {
    call_id: &'a str,
    stream: &'static str,
    data: String,
}

/// What a finished command reports.
struct RunOutcome {
    status: &'static str,
    exit_code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
    duration_ms: u64,
}

/// A validated `exec` request.
struct ExecRequest {
    command: String,
    timeout: Duration,
}

impl SocketApi {
    pub fn new(
        sessions: SessionManager,
        auth: Authenticator,
        agent: Arc<dyn Agent>,
        limits: ApiConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let setup_wait = sessions.acquire_timeout() + Duration::from_secs(10);
        let api = Arc::new(Self {
            sessions,
            auth,
            agent,
            limits,
            metrics,
            bound: Mutex::new(HashMap::new()),
            setup_wait,
        });
        let hooks: std::sync::Weak<SocketApi> = Arc::downgrade(&api);
        api.sessions.set_hooks(hooks);
        api
    }

    /// The Socket.IO layer to put on the axum router, and the handle to close it.
    pub fn layer(self: &Arc<Self>) -> (SocketIoLayer, SocketIo) {
        let (layer, io) = SocketIo::builder()
            .with_state(self.clone())
            // Commands are at most 16 KiB by default; an oversized message still reaches the
            // handler (and gets `bad_request`) up to this bound.
            .max_payload(1 << 20)
            .build_layer();
        io.ns("/", on_connect.with(prepare));
        (layer, io)
    }

    fn bound(&self) -> std::sync::MutexGuard<'_, HashMap<String, SocketRef>> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends an error: in the ack when the client asked for one, else as an `error` event.
    fn fail(
        &self,
        socket: &SocketRef,
        reply: Option<Reply>,
        error: ApiError,
        call_id: Option<&str>,
    ) {
        self.metrics.api_error(error.code.as_str());
        let mut body = json!({"code": error.code.as_str(), "message": error.message});
        if let Some(id) = call_id {
            body["callId"] = json!(id);
        }
        match reply {
            Some(reply) if reply.wanted => reply.send(&json!({"ok": false, "error": body})),
            _ => {
                if let Err(e) = socket.emit(ERROR_EVENT, &body) {
                    tracing::debug!(error = %e, "emitting an error failed");
                }
            }
        }
    }

    /// Waits for the connection's session to be set up.
    async fn conn(&self, socket: &SocketRef) -> Result<Arc<Conn>, ApiError> {
        let Some(ConnSlot(mut rx)) = socket.extensions.get::<ConnSlot>() else {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "connection has no session slot",
            ));
        };
        let waited = tokio::time::timeout(
            self.setup_wait,
            rx.wait_for(|s| !matches!(s, Slot::Pending)),
        )
        .await;
        match waited {
            Ok(Ok(slot)) => match &*slot {
                Slot::Ready(conn) => Ok(conn.clone()),
                _ => Err(ApiError::new(
                    ErrorCode::SessionExpired,
                    "this connection has no session",
                )),
            },
            _ => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the session is not ready",
            )),
        }
    }

    /// The connection's session, with its activity recorded: every event a client sends goes
    /// through this.
    async fn active_conn(&self, socket: &SocketRef) -> Result<Arc<Conn>, ApiError> {
        let conn = self.conn(socket).await?;
        self.sessions.touch(&conn.session_id).await;
        Ok(conn)
    }

    /// Resumes the session named in `auth`, or opens a new one.
    async fn establish(
        &self,
        socket: &SocketRef,
        auth: Option<Value>,
    ) -> Result<(Session, Option<String>, u64, bool), ApiError> {
        let started = Instant::now();
        let auth = auth.filter(|a| !a.is_null());
        // Who this is, before anything is taken: refused here, the client holds nothing.
        let token = auth
            .as_ref()
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str);
        let identity = self.auth.verify(token)?;
        let subject = identity.subject.as_deref();
        if let Some(auth) = auth {
            match parse_resume(&auth) {
                Ok(Some((id, token))) => {
                    match self.sessions.resume_as(&id, &token, subject).await {
                        Ok(session) => {
                            return Ok((session, None, started.elapsed().as_millis() as u64, true));
                        }
                        Err(e @ (SessionError::Expired(_) | SessionError::BadToken(_))) => {
                            // Never the old session: say so, then open a new one.
                            self.fail(socket, None, (&e).into(), None);
                        }
                        Err(e) => return Err((&e).into()),
                    }
                }
                Ok(None) => {}
                Err(e) => self.fail(socket, None, e, None),
            }
        }
        // While the pool's queue holds this client, it hears its place as it moves.
        let queued = socket.clone();
        let mut on_place = move |place: Place| {
            let payload = QueuePayload {
                position: place.position,
                estimate_ms: place.estimate_ms,
            };
            let _ = queued.emit("queue", &payload);
        };
        let opened = self
            .sessions
            .open_as(&mut on_place, subject)
            .await
            .map_err(|e| ApiError::from(&e))?;
        Ok((
            opened.session,
            Some(opened.resume_token),
            opened.lease.waited.as_millis() as u64,
            false,
        ))
    }

    /// Binds a session to this socket; a socket bound to it before is told and closed.
    fn bind(&self, session_id: &str, socket: &SocketRef) {
        let previous = self.bound().insert(session_id.to_string(), socket.clone());
        if let Some(old) = previous.filter(|old| old.id != socket.id) {
            let _ = old.emit(
                "session:expired",
                &json!({"sessionId": session_id, "reason": "resumed_elsewhere"}),
            );
            let _ = old.disconnect();
        }
    }

    /// Unbinds the session if `socket` is the one bound to it; `true` when it was.
    fn unbind_if_current(&self, session_id: &str, socket: &SocketRef) -> bool {
        let mut bound = self.bound();
        match bound.get(session_id) {
            Some(s) if s.id == socket.id => bound.remove(session_id).is_some(),
            _ => false,
        }
    }

    /// Runs `command` in the session's sandbox, streaming `tool:output`. A client that stops
    /// reading slows the command down until its timeout, then stops being fed; it never pins
    /// this handler past the command's deadline.
    async fn run(
        &self,
        socket: &SocketRef,
        conn: &Conn,
        call_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<RunOutcome, ApiError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let forward = {
            let (socket, call_id) = (socket.clone(), call_id.to_string());
            tokio::spawn(async move {
                let mut open = true;
                while let Some(chunk) = rx.recv().await {
                    if !open {
                        continue;
                    }
                    let payload = OutputPayload {
                        call_id: &call_id,
                        stream: match chunk.stream {
                            OutputStream::Stdout => "stdout",
                            OutputStream::Stderr => "stderr",
                        },
                        data: String::from_utf8_lossy(&chunk.data).into_owned(),
                    };
                    // The client is gone or stuck: keep draining so the command is not blocked.
                    open = emit_with_backpressure(&socket, "tool:output", &payload, deadline).await;
                }
            })
        };
        let result = self
            .sessions
            .run_command(
                &conn.container_id,
                command,
                timeout,
                self.limits.exec_output_limit_bytes,
                Some(&tx),
            )
            .await;
        drop(tx);
        let _ = forward.await;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                self.metrics.exec_done("error", started.elapsed());
                return Err((&e).into());
            }
        };
        let status = if out.timed_out { "timeout" } else { "ok" };
        self.metrics.exec_done(status, started.elapsed());
        Ok(RunOutcome {
            status,
            // Killed by a signal (the OOM killer, say): 128 + the signal, as a shell reports it.
            exit_code: if out.timed_out {
                None
            } else {
                out.exit_code.or(out.signal.map(|sig| 128 + sig))
            },
            stdout: out.stdout,
            stderr: out.stderr,
            truncated: out.truncated,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    fn permit(&self, conn: &Conn) -> Result<OwnedSemaphorePermit, ApiError> {
        conn.inflight.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "at most {} commands may run at once in a session",
                    self.limits.max_inflight_per_session
                ),
            )
        })
    }
}

impl SessionHooks for SocketApi {
    fn ended(&self, session: &Session, reason: EndReason) {
        let socket = self.bound().remove(&session.id);
        if let Some(socket) = socket
            && reason != EndReason::Ended
        {
            let _ = socket.emit(
                "session:expired",
                &json!({"sessionId": session.id, "reason": reason.as_str()}),
            );
            let _ = socket.disconnect();
        }
    }
}

/// Emits, waiting while the socket's send buffer is full (a slow client slows the command
/// down instead of growing memory). `false` when the socket is closed or still full at
/// `deadline`. socketioxide offers no signal for "the buffer has room", so this retries on a
/// short timer.
async fn emit_with_backpressure<T: Serialize + ?Sized>(
    socket: &SocketRef,
    event: &str,
    data: &T,
    deadline: tokio::time::Instant,
) -> bool {
    loop {
        match socket.emit(event, data) {
            Ok(()) => return true,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => return false,
        }
    }
}

fn new_call_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The handshake's `auth`: empty, or a resume.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthPayload {
    session_id: Option<String>,
    resume_token: Option<String>,
    /// The JWT (see `auth.rs`); read before the rest.
    #[allow(dead_code)]
    token: Option<String>,
}

/// `exec`'s payload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecPayload {
    command: String,
    timeout_ms: Option<u64>,
}

/// `message`'s payload: a string, or `{text}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum MessagePayload {
    Text(String),
    Object { text: String },
}

/// `tool:approval`'s payload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalPayload {
    call_id: String,
    approved: bool,
}

/// Parses an event's payload into its type, or a `bad_request` naming what was expected.
fn payload<T: serde::de::DeserializeOwned>(
    data: Result<Value, impl std::fmt::Display>,
    event: &str,
    shape: &str,
) -> Result<T, ApiError> {
    let data =
        data.map_err(|e| ApiError::bad_request(format!("{event} payload is not JSON: {e}")))?;
    serde_json::from_value(data)
        .map_err(|e| ApiError::bad_request(format!("{event} takes {shape}: {e}")))
}

fn parse_resume(auth: &Value) -> Result<Option<(String, String)>, ApiError> {
    let shape = "auth.sessionId and auth.resumeToken must both be non-empty strings";
    let auth: AuthPayload = payload(
        Ok::<_, String>(auth.clone()),
        "auth",
        "{sessionId, resumeToken}",
    )?;
    match (auth.session_id, auth.resume_token) {
        (None, None) => Ok(None),
        (Some(id), Some(token)) if !id.is_empty() && !token.is_empty() => Ok(Some((id, token))),
        _ => Err(ApiError::bad_request(shape)),
    }
}

fn parse_exec(
    data: Result<Value, impl std::fmt::Display>,
    limits: &ApiConfig,
) -> Result<ExecRequest, ApiError> {
    let exec: ExecPayload = payload(
        data,
        "exec",
        "an object {command: string, timeoutMs?: integer}",
    )?;
    let command = check_command(&exec.command, limits)?;
    let timeout_ms = match exec.timeout_ms {
        None => limits.exec_default_timeout.as_millis() as u64,
        Some(ms) if ms > 0 && ms <= limits.exec_max_timeout.as_millis() as u64 => ms,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "timeoutMs must be a whole number from 1 to {}",
                limits.exec_max_timeout.as_millis()
            )));
        }
    };
    Ok(ExecRequest {
        command,
        timeout: Duration::from_millis(timeout_ms),
    })
}

fn check_command(command: &str, limits: &ApiConfig) -> Result<String, ApiError> {
    if command.trim().is_empty() {
        return Err(ApiError::bad_request("command is empty"));
    }
    if command.len() > limits.max_command_bytes {
        return Err(ApiError::bad_request(format!(
            "command is {} bytes; the limit is {}",
            command.len(),
            limits.max_command_bytes
        )));
    }
    Ok(command.to_string())
}

fn parse_message(
    data: Result<Value, impl std::fmt::Display>,
    limits: &ApiConfig,
) -> Result<String, ApiError> {
    let message: MessagePayload = payload(data, "message", "a string or {text: string}")?;
    let (MessagePayload::Text(text) | MessagePayload::Object { text }) = message;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("message is empty"));
    }
    check_command(&text, limits)
}

fn parse_approval(data: Result<Value, impl std::fmt::Display>) -> Result<(String, bool), ApiError> {
    let approval: ApprovalPayload = payload(
        data,
        "tool:approval",
        "an object {callId: string, approved: boolean}",
    )?;
    if approval.call_id.is_empty() {
        return Err(ApiError::bad_request("callId must be a non-empty string"));
    }
    Ok((approval.call_id, approval.approved))
}

// -------------------------------------------------------------------------------------------
// Handlers, one per event.

/// Connect middleware: runs before the client is told it is connected, so the handlers are in
/// place before its first event can arrive (the connect handler itself runs after the CONNECT
/// packet is sent, and an event that found no handler would be lost).
async fn prepare(socket: SocketRef) -> Result<(), Infallible> {
    let (tx, rx) = watch::channel(Slot::Pending);
    socket.extensions.insert(ConnSlot(rx));
    socket.extensions.insert(SlotSender(Arc::new(tx)));
    socket.on("exec", on_exec);
    socket.on("message", on_message);
    socket.on("tool:approval", on_approval);
    socket.on("session:end", on_end);
    socket.on_fallback(on_unknown);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

async fn on_connect(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(api): State<Arc<SocketApi>>,
) {
    let started = Instant::now();
    let Some(SlotSender(tx)) = socket.extensions.get::<SlotSender>() else {
        tracing::warn!("connection without a session slot");
        let _ = socket.disconnect();
        return;
    };
    match api.establish(&socket, auth.ok()).await {
        Ok((session, token, acquire_ms, resumed)) => {
            let conn = Arc::new(Conn {
                session_id: session.id.clone(),
                container_id: session.container_id.clone(),
                inflight: Arc::new(Semaphore::new(api.limits.max_inflight_per_session)),
                pending: Mutex::new(HashMap::new()),
            });
            api.bind(&session.id, &socket);
            let _ = tx.send(Slot::Ready(conn));
            if !socket.connected() {
                // The client left while its session was being set up, before the disconnect
                // handler could see the session: detach it here so that the grace applies.
                if api.unbind_if_current(&session.id, &socket) {
                    api.sessions.detach(&session.id).await;
                }
                return;
            }
            let workspace: String = session.container_id.chars().take(12).collect();
            // A resumed session's token is the one the client already has; it is not sent again.
            let payload = SessionPayload {
                session_id: &session.id,
                resume_token: token.as_deref().unwrap_or(""),
                workspace_id: &workspace,
                acquire_ms,
                resumed,
                instance: api.sessions.instance(),
            };
            let _ = socket.emit("session", &payload);
            api.metrics.handout(started.elapsed());
            if started.elapsed() > Duration::from_secs(1) {
                tracing::warn!(session_id = %session.id, elapsed_ms = started.elapsed().as_millis() as u64, "slow session handout");
            }
            tracing::info!(session_id = %session.id, container_id = %session.container_id, acquire_ms, resumed, "session ready");
        }
        Err(error) => {
            let _ = tx.send(Slot::Failed);
            api.fail(&socket, None, error, None);
            let _ = socket.disconnect();
        }
    }
}

/// A refused request: the error, and the call it concerns if one was named or made.
struct Refusal {
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
    fn for_call(error: ApiError, call_id: &str) -> Self {
        Self {
            error,
            call_id: Some(call_id.to_string()),
        }
    }
}

impl SocketApi {
    /// Answers a request: its ack body, or its refusal (see [`SocketApi::fail`]).
    fn answer(&self, socket: &SocketRef, reply: Reply, result: Result<Value, Refusal>) {
        match result {
            Ok(body) => reply.send(&body),
            Err(r) => self.fail(socket, Some(reply), r.error, r.call_id.as_deref()),
        }
    }
}

async fn on_exec(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result = exec_request(&api, &socket, data).await;
    api.answer(&socket, reply, result);
}

async fn exec_request(
    api: &SocketApi,
    socket: &SocketRef,
    data: Result<Value, impl std::fmt::Display>,
) -> Result<Value, Refusal> {
    let conn = api.active_conn(socket).await?;
    let req = parse_exec(data, &api.limits)?;
    let permit = api.permit(&conn)?;
    let call_id = new_call_id();
    let result = api
        .run(socket, &conn, &call_id, &req.command, req.timeout)
        .await;
    drop(permit);
    let out = result.map_err(|e| Refusal::for_call(e, &call_id))?;
    Ok(json!({
        "ok": true,
        "callId": call_id,
        "status": out.status,
        "exitCode": out.exit_code,
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
        "truncated": out.truncated,
        "durationMs": out.duration_ms,
    }))
}

async fn on_message(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result = message_request(&api, &socket, data).await;
    api.answer(&socket, reply, result);
}

async fn message_request(
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
        {
            let mut pending = conn.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_PENDING_PER_SESSION {
                return Err(ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!("at most {MAX_PENDING_PER_SESSION} tool calls may wait for approval"),
                )
                .into());
            }
            pending.insert(call_id.clone(), command.clone());
        }
        let _ = socket.emit(
            "tool:request",
            &json!({"callId": call_id, "tool": proposal.tool(), "args": {"command": command}}),
        );
        call_ids.push(call_id);
    }
    Ok(json!({"ok": true, "callIds": call_ids}))
}

/// An accepted approval: the call is rejected, or it runs under `permit`.
enum Approval {
    Rejected(String),
    Run {
        conn: Arc<Conn>,
        call_id: String,
        command: String,
        permit: OwnedSemaphorePermit,
    },
}

async fn on_approval(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    match approval_request(&api, &socket, data).await {
        Err(r) => api.fail(&socket, Some(reply), r.error, r.call_id.as_deref()),
        Ok(Approval::Rejected(call_id)) => {
            api.metrics.exec_done("rejected", Duration::ZERO);
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
            let result = api.run(&socket, &conn, &call_id, &command, timeout).await;
            drop(permit);
            let body = match result {
                Ok(out) => {
                    json!({"callId": call_id, "status": out.status, "exitCode": out.exit_code, "durationMs": out.duration_ms})
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

async fn approval_request(
    api: &SocketApi,
    socket: &SocketRef,
    data: Result<Value, impl std::fmt::Display>,
) -> Result<Approval, Refusal> {
    let conn = api.active_conn(socket).await?;
    let (call_id, approved) = parse_approval(data)?;
    // Only this session's own proposals are here, and each is taken once.
    let command = conn
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&call_id);
    let Some(command) = command else {
        let e = ApiError::new(
            ErrorCode::NotFound,
            "no tool call with that callId is waiting for approval",
        );
        return Err(Refusal::for_call(e, &call_id));
    };
    if !approved {
        return Ok(Approval::Rejected(call_id));
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
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(call_id.clone(), command);
            Err(Refusal::for_call(e, &call_id))
        }
    }
}

async fn on_end(socket: SocketRef, reply: Reply, State(api): State<Arc<SocketApi>>) {
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
async fn on_unknown(
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

async fn on_disconnect(socket: SocketRef, State(api): State<Arc<SocketApi>>) {
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
