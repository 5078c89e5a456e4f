//! The workspace-token door in front of `/mcp` and the file routes: a request names its
//! session by the session's workspace token (`Authorization: Bearer <token>`, handed to the
//! browser in the `session` event as `mcp.token`). A missing, forged or ended token gets 401
//! before any handler runs; a request for a session another replica serves is forwarded to
//! it, streaming both ways. No token is logged.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::socket::SocketApi;
use crate::session::SessionError;

/// The session an authorized request acts on (put in the request's extensions by the token
/// check, read by the handlers).
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    pub(crate) session_id: String,
}

/// `router` behind the token check.
pub(crate) fn guard(router: axum::Router, api: Arc<SocketApi>) -> axum::Router {
    let door = Arc::new(Door {
        api,
        // Straight to the peer: never through a proxy from the environment (the call
        // carries its token).
        peers: reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default(),
    });
    router.layer(middleware::from_fn_with_state(door, authorize))
}

/// What the token check needs: the sessions, and a client to forward a call to the replica
/// that serves its session.
pub(crate) struct Door {
    api: Arc<SocketApi>,
    peers: reqwest::Client,
}

/// Marks a request forwarded by a replica (its instance id): it is not forwarded again.
const FORWARDED: &str = "x-sandpool-forwarded-by";

/// The token check: the bearer token must open a live session. This replica serves it, or
/// the request is forwarded to the replica that does (the user's socket stays where it is).
async fn authorize(State(door): State<Arc<Door>>, mut req: Request, next: Next) -> Response {
    let api = &door.api;
    let Some(token) = bearer(req.headers()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the session's workspace token as Authorization: Bearer <token>",
        );
    };
    let sessions = api.sessions();
    let session = match sessions.workspace(&token).await {
        Ok(session) => session,
        Err(SessionError::BadToken(_) | SessionError::Expired(_)) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the workspace token is not valid, or its session has ended",
            );
        }
        Err(error) => {
            tracing::warn!(%error, "checking a workspace token failed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the session store cannot be reached; try again",
            );
        }
    };
    if sessions.local_session(&session.id).is_none() {
        if session.owner != sessions.instance() && !req.headers().contains_key(FORWARDED) {
            return forward(&door, &session.owner, req).await;
        }
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the session is not served by this replica right now; try again",
        );
    }
    req.extensions_mut().insert(Workspace {
        session_id: session.id,
    });
    next.run(req).await
}

/// Passes the request on to `owner` (its address from the store), and its answer back as it
/// streams. The owner checks the token again; the original `Host` goes along for its host
/// check.
async fn forward(door: &Door, owner: &str, req: Request) -> Response {
    let sessions = door.api.sessions();
    let base = match sessions.store().address(owner).await {
        Ok(Some(base)) => base,
        Ok(None) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the replica that serves the session cannot be reached; try again",
            );
        }
        Err(error) => {
            tracing::warn!(%error, "looking up a replica's address failed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the session store cannot be reached; try again",
            );
        }
    };
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/mcp");
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = header::HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    if let Ok(me) = header::HeaderValue::from_str(sessions.instance()) {
        headers.insert(FORWARDED, me);
    }
    let sent = door
        .peers
        .request(parts.method.clone(), format!("{base}{path}"))
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(%owner, %error, "forwarding an MCP call to its session's replica failed");
            return refuse(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                "the replica that serves the session did not answer; try again",
            );
        }
    };
    let mut returned = answer.headers().clone();
    strip_hop_by_hop(&mut returned);
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in &returned {
        response = response.header(name, value);
    }
    response
        .body(axum::body::Body::from_stream(answer.bytes_stream()))
        .unwrap_or_else(|_| {
            refuse(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                "the replica's answer could not be passed on",
            )
        })
}

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1): those named in
/// `Connection`, and the standard ones.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .filter(|n| !n.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
