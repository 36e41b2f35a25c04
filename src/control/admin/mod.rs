//! The admin HTTP endpoint (`--admin ADDR`; README "Admin API"), served by axum on the
//! control thread's runtime. Handlers hold no state of their own: every request becomes a
//! [`Command`] to the control loop, which owns the backend table, so the API and the
//! health checks never race, and a change is published to the workers before the API
//! answers.
//!
//! - [`api`]: the routes and their JSON;
//! - [`status`]: the status page (`GET /`) and its data (`GET /status`);
//! - [`serve`]: the connections: request heads within 5 s, at most 32 connections, the
//!   oldest idle or slow one giving way to a new one ([`conns`]), each closed after 10 s
//!   without progress ([`guard`]);
//! - here: binding, the bearer-token check, errors as `{"error": "..."}`.
//!
//! Off by default. Any address is allowed (the flag is the operator's explicit choice),
//! with a warning when it is not loopback.

mod api;
mod conns;
mod guard;
mod serve;
pub mod status;

pub use api::{parse_add_backend, parse_patch};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::config::AdminToken;

use super::event_loop::Command;

/// Largest request body accepted (JSON bodies are a few dozen bytes).
pub const BODY_LIMIT: usize = 64 * 1024;
/// The most a client may take to send a request's body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The bound admin socket, not yet served.
pub struct Listener {
    inner: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// The bound address (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds the admin listener (inside the runtime). Done before the workers start, so a
/// bad or busy address fails start-up with nothing running.
pub fn bind(addr: SocketAddr) -> std::io::Result<Listener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    Ok(Listener {
        inner: tokio::net::TcpListener::from_std(l)?,
        addr,
    })
}

/// Serves on a listening socket taken from another process (an upgrade).
pub fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<Listener> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    Ok(Listener {
        inner: tokio::net::TcpListener::from_std(l)?,
        addr,
    })
}

impl Listener {
    /// A copy of the socket (for an upgrade's hand-over).
    pub fn try_clone_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        std::os::fd::AsFd::as_fd(&self.inner).try_clone_to_owned()
    }
}

/// Serves the API on `listener` from a task on the current runtime. The task ends with
/// the runtime, or when aborted by the returned handle (the listener then closes).
pub fn spawn(
    listener: Listener,
    token: Option<AdminToken>,
    commands: UnboundedSender<Command>,
) -> tokio::task::AbortHandle {
    let Listener {
        inner: listener,
        addr,
    } = listener;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "the admin endpoint listens on {addr}, which is not a loopback address: anyone who can reach it {}",
            if token.is_some() {
                "and has the token can change backends and read metrics"
            } else {
                "can change backends and read metrics (consider --admin-token)"
            }
        );
    }
    let ctx = Ctx {
        commands,
        token: token.map(Arc::new),
    };
    let task = tokio::spawn(serve::run(listener, api::router(ctx)));
    tracing::info!("admin endpoint on http://{addr}");
    task.abort_handle()
}

/// What every handler gets.
#[derive(Clone)]
struct Ctx {
    commands: UnboundedSender<Command>,
    token: Option<Arc<AdminToken>>,
}

impl Ctx {
    /// Sends a command built around a reply channel and waits for the answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| ApiError::stopped())?;
        rx.await.map_err(|_| ApiError::stopped())
    }
}

/// An error answer: the status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn stopped() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the balancer is shutting down",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// Middleware: with a token configured, every request but `GET /health` (load balancers
/// and orchestrators probe it without credentials) and `GET /` (the status page's static
/// text, which asks for the token itself; see [`status`]) needs
/// `Authorization: Bearer TOKEN`.
/// Unknown paths are refused the same way, so the API's shape is not revealed.
async fn require_token(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if let Some(token) = &ctx.token {
        let open = matches!(*req.method(), Method::GET | Method::HEAD)
            && matches!(req.uri().path(), "/health" | "/");
        if !open && !authorized(req.headers(), token) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer TOKEN)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Compares in constant time, so response timing does not reveal how much of a guessed
/// token was right. (Only the length can leak, which is not the secret part.)
fn authorized(headers: &HeaderMap, token: &AdminToken) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let v = value.as_bytes();
    const SCHEME: &[u8] = b"bearer ";
    if v.len() < SCHEME.len() || !v[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    let given = v[SCHEME.len()..].trim_ascii();
    given.ct_eq(token.expose().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_admin_token;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(auth).expect("header"),
        );
        h
    }

    #[test]
    fn bearer_tokens() {
        let t = parse_admin_token("s3cret").expect("token");
        assert!(authorized(&headers("Bearer s3cret"), &t));
        assert!(authorized(&headers("bearer  s3cret "), &t));
        assert!(!authorized(&headers("Bearer s3cre"), &t));
        assert!(!authorized(&headers("Bearer s3cret2"), &t));
        assert!(!authorized(&headers("Basic s3cret"), &t));
        assert!(!authorized(&headers("s3cret"), &t));
        assert!(!authorized(&headers("Bearer"), &t));
        assert!(!authorized(&HeaderMap::new(), &t));
    }
}
