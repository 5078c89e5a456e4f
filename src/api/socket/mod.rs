//! The Socket.IO session API (namespace `/`): one session and one sandbox per connection.
//! The contract is `docs/API.md`; this file implements it. One function per event; each
//! validates its payload into a typed request, and every refusal is a typed error (in the ack
//! when the client asked for one, else an `error` event). A bad request never closes the
//! socket and never holds up the session's other requests (each event runs in its own task).
//!
//! Rooms: this file (the shared state, session set-up, running a command with its output
//! streamed), `payload.rs` (the wire types and request parsing), `handlers.rs` (one function
//! per event).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;

mod files;
mod handlers;
pub(crate) mod payload;
mod transfer;
pub(crate) mod workspace;

use handlers::{on_connect, prepare};
use payload::*;

use super::audit::{AuditTrail, CallRecord};
use super::auth::Authenticator;
use super::error::{ApiError, ErrorCode};
use crate::agent::{Agent, ToolProposal};
use crate::config::{ApiConfig, McpConfig};
use crate::metrics::Metrics;
use crate::session::{
    ApprovalPolicy, CommandSpec, EndReason, OutputChunk, OutputStream, PendingCall, PendingView,
    Place, Session, SessionError, SessionHooks, SessionManager,
};

/// The event that carries an error to a client that gave no ack. Not `error`: load tools
/// (artillery's socketio engine) treat a server event named `error` as a failure of their own
/// connection and crash on it (docs/API.md).
pub const ERROR_EVENT: &str = "sandpool:error";
/// Proposed tool calls a session may have waiting for approval at once.
pub(crate) const MAX_PENDING_PER_SESSION: usize = 100;
/// What the socket layer shares.
pub struct SocketApi {
    sessions: SessionManager,
    /// Verifies the handshake's token (a no-op when authentication is off).
    auth: Authenticator,
    agent: Arc<dyn Agent>,
    limits: ApiConfig,
    /// The approval policies allowed, their timeout, and the endpoint agents are told of.
    mcp: McpConfig,
    /// One entry per tool call, from any origin.
    audit: AuditTrail,
    metrics: Arc<Metrics>,
    /// Session id → the socket bound to it on this instance.
    bound: Mutex<HashMap<String, SocketRef>>,
    /// How long an event waits for its connection's session to be set up.
    setup_wait: Duration,
}

/// One connection's session.
struct Conn {
    session_id: String,
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

/// Cancelled when the connection closes: a session being opened for it is dropped at once
/// (it leaves the pool's line, or gives back the sandbox it had), so a client that left takes
/// no place in the line and no sandbox. Made by the connect middleware, fired by the
/// disconnect handler.
#[derive(Clone)]
struct Departure(CancellationToken);

/// Why a connection got no session.
enum NoSession {
    /// Refused: the client is told why, then disconnected.
    Refused(ApiError),
    /// The client left while its session was being opened; nothing was kept for it.
    Left,
}

impl From<ApiError> for NoSession {
    fn from(error: ApiError) -> Self {
        Self::Refused(error)
    }
}

/// A connection's session, as set up by [`SocketApi::establish`].
struct Established {
    session: Session,
    /// The new session's resume token (`None` for a resumed session: the client has it).
    resume_token: Option<String>,
    /// The new session's workspace token (`None` for a resumed session).
    workspace_token: Option<String>,
    acquire_ms: u64,
}

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
    fn send<T: Serialize + ?Sized>(self, body: &T) {
        if let Err(error) = self.ack.send(body) {
            tracing::debug!(%error, "sending an ack failed");
        }
    }
}

impl SocketApi {
    pub fn new(
        sessions: SessionManager,
        auth: Authenticator,
        agent: Arc<dyn Agent>,
        limits: ApiConfig,
        mcp: McpConfig,
        audit: AuditTrail,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let setup_wait = sessions.acquire_timeout() + Duration::from_secs(10);
        let api = Arc::new(Self {
            sessions,
            auth,
            agent,
            limits,
            mcp,
            audit,
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
            // An `fs:write` carries up to 4 MiB of content; an oversized message still reaches
            // the handler (and gets a typed error) up to this bound.
            .max_payload((workspace::SOCKET_CHUNK_BYTES + (64 << 10)) as u64)
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

    /// Resumes the session named in `auth`, or opens a new one. An open (queued for a
    /// sandbox, or making one) is dropped the moment `departure` fires: dropping it leaves
    /// the pool's line and gives back a sandbox already taken (`SessionManager::open_as` is
    /// cancel-safe). A resume is not raced: it is short and not cancel-safe half-way; a
    /// client that left during one gets the grace as after any drop.
    async fn establish(
        &self,
        socket: &SocketRef,
        auth: Option<Value>,
        departure: &CancellationToken,
    ) -> Result<Established, NoSession> {
        if departure.is_cancelled() {
            return Err(NoSession::Left);
        }
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
                            return Ok(Established {
                                session,
                                resume_token: None,
                                workspace_token: None,
                                acquire_ms: started.elapsed().as_millis() as u64,
                            });
                        }
                        Err(e @ (SessionError::Expired(_) | SessionError::BadToken(_))) => {
                            // Never the old session: say so, then open a new one.
                            self.fail(socket, None, (&e).into(), None);
                        }
                        Err(e) => return Err(ApiError::from(&e).into()),
                    }
                }
                Ok(None) => {}
                Err(e) => self.fail(socket, None, e, None),
            }
        }
        // While the pool's queue holds this client, it hears its place as it moves. A place
        // that cannot be sent because the connection is closed means the client left, even
        // if the disconnect handler has not said so (yet).
        let (queued, gone) = (socket.clone(), departure.clone());
        let mut on_place = move |place: Place| {
            let payload = QueuePayload {
                position: place.position,
                estimate_ms: place.estimate_ms,
            };
            if let Err(SendError::Socket(SocketError::Closed)) = queued.emit("queue", &payload) {
                gone.cancel();
            }
        };
        let opened = tokio::select! {
            // A client that left and a sandbox handed over at the same moment: the client
            // wins, and the dropped open passes the sandbox on.
            biased;
            () = departure.cancelled() => return Err(NoSession::Left),
            opened = self.sessions.open_as(&mut on_place, subject) => {
                opened.map_err(|e| ApiError::from(&e))?
            }
        };
        Ok(Established {
            session: opened.session,
            resume_token: Some(opened.resume_token),
            workspace_token: Some(opened.workspace_token),
            acquire_ms: opened.lease.waited.as_millis() as u64,
        })
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

    /// Runs `command` in the session's sandbox, streaming `tool:output` to `socket`.
    async fn run(
        &self,
        socket: &SocketRef,
        conn: &Conn,
        call_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<RunOutcome, ApiError> {
        let spec = CommandSpec::shell(command, timeout, self.limits.exec_output_limit_bytes);
        self.run_spec(Some(socket.clone()), &conn.session_id, call_id, &spec, None)
            .await
    }

    /// Runs `spec` in the sandbox of local session `session_id`, streaming its output as
    /// `tool:output` to `socket` and as chunks to `also` (an agent's progress). A client that
    /// stops reading slows the command down until its timeout, then stops being fed; it never
    /// pins the caller past the command's deadline.
    pub(crate) async fn run_spec(
        &self,
        socket: Option<SocketRef>,
        session_id: &str,
        call_id: &str,
        spec: &CommandSpec,
        also: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<RunOutcome, ApiError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + spec.timeout;
        // Every command run here is a tool call: the supervisor checkpoints the workspace
        // right before it, and reports what it changed with its exit.
        let mut spec = spec.clone();
        if self.limits.checkpoint_bytes > 0 {
            spec.checkpoint = Some(sandpool_supervisor::proto::ExecCheckpoint {
                label: call_id.to_string(),
                max_bytes: self.limits.checkpoint_bytes,
            });
        }
        let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
        let forward = {
            let call_id = call_id.to_string();
            tokio::spawn(async move {
                let (mut socket, mut also) = (socket, also);
                while let Some(chunk) = rx.recv().await {
                    if let Some(s) = &socket {
                        let payload = OutputPayload {
                            call_id: &call_id,
                            stream: match chunk.stream {
                                OutputStream::Stdout => "stdout",
                                OutputStream::Stderr => "stderr",
                            },
                            data: String::from_utf8_lossy(&chunk.data).into_owned(),
                        };
                        // The client is gone or stuck: keep draining so the command is not
                        // blocked.
                        if !emit_with_backpressure(s, "tool:output", &payload, deadline).await {
                            socket = None;
                        }
                    }
                    // An agent that stops reading its progress stops being fed, at the latest
                    // at the command's deadline.
                    if let Some(a) = &also
                        && !matches!(
                            tokio::time::timeout_at(deadline, a.send(chunk)).await,
                            Ok(Ok(()))
                        )
                    {
                        also = None;
                    }
                }
            })
        };
        let result = self.sessions.run_spec(session_id, &spec, Some(&tx)).await;
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
            checkpoint: self.checkpoint_fields(call_id, out.checkpoint.as_ref()),
        })
    }

    /// Emits `event` to the socket bound to session `session_id` on this instance; `false`
    /// when none is (the browser is away) or it could not take it.
    pub(crate) fn emit_to_session<T: Serialize + ?Sized>(
        &self,
        session_id: &str,
        event: &str,
        data: &T,
    ) -> bool {
        let socket = self.bound().get(session_id).cloned();
        socket.is_some_and(|s| s.emit(event, data).is_ok())
    }

    /// The socket bound to session `session_id` on this instance.
    pub(crate) fn socket_of(&self, session_id: &str) -> Option<SocketRef> {
        self.bound().get(session_id).cloned()
    }

    /// Tells the session's browser that a tool call waits for its approval.
    pub(crate) fn request_approval(&self, session_id: &str, call: &PendingView) -> bool {
        self.emit_to_session(session_id, "tool:request", &tool_request_payload(call))
    }

    /// The policy named `name`, if it is one and the operator allows it.
    fn allowed_policy(&self, name: &str) -> Result<ApprovalPolicy, ApiError> {
        let policy = ApprovalPolicy::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "approval must be \"all\", \"writes\" or \"none\", not {name:?}"
            ))
        })?;
        if !self.mcp.approval_policies.contains(policy.as_str()) {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!(
                    "approval policy {name:?} is not allowed here (allowed: {})",
                    self.mcp.approval_policies.0.join(", ")
                ),
            ));
        }
        Ok(policy)
    }

    /// The policy of a new session: `writes` when allowed, else the strictest allowed.
    fn default_policy(&self) -> ApprovalPolicy {
        ApprovalPolicy::ALL
            .into_iter()
            .filter(|p| self.mcp.approval_policies.contains(p.as_str()))
            .min_by_key(|p| match p {
                ApprovalPolicy::Writes => 0,
                ApprovalPolicy::All => 1,
                ApprovalPolicy::None => 2,
            })
            .unwrap_or_default()
    }

    /// The MCP endpoint's address as this socket's client reaches it: `SANDPOOL_PUBLIC_URL`,
    /// else the handshake's `Host` (and `X-Forwarded-Proto`) headers.
    fn mcp_url(&self, socket: &SocketRef) -> String {
        if let Some(base) = &self.mcp.public_url {
            return format!("{}/mcp", base.trim_end_matches('/'));
        }
        let parts = socket.req_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let host = header("x-forwarded-host")
            .or_else(|| header("host"))
            .unwrap_or_else(|| "localhost".into());
        let scheme = header("x-forwarded-proto").unwrap_or_else(|| "http".into());
        format!("{scheme}://{host}/mcp")
    }

    /// How long an agent's call waits for the user's decision.
    pub(crate) fn approval_timeout(&self) -> Duration {
        self.mcp.approval_timeout
    }

    /// Appends one tool call to the session's audit trail (in the background).
    pub(crate) fn audit(&self, call: CallRecord<'_>) {
        self.audit.record(&self.sessions, call);
    }

    pub(crate) fn sessions(&self) -> &SessionManager {
        &self.sessions
    }

    pub(crate) fn limits(&self) -> &ApiConfig {
        &self.limits
    }

    /// A place among the session's running commands: the bound is the session's, over all
    /// its connections and resumes on this replica.
    fn permit(&self, conn: &Conn) -> Result<OwnedSemaphorePermit, ApiError> {
        self.sessions
            .command_permit(&conn.session_id)
            .map_err(|e| (&e).into())
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

/// `tool:request`: a tool call waiting for the user's approval.
fn tool_request_payload(call: &PendingView) -> Value {
    json!({
        "callId": call.call_id,
        "tool": call.tool,
        "args": call.args,
        "origin": call.origin.as_str(),
        "client": call.client,
    })
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
