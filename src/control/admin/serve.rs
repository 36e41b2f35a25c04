//! Serving the admin router on its listener: hyper's HTTP/1.1 server on each connection
//! (as `axum::serve` does), plus the bounds a small endpoint next to a busy data path
//! needs against slow or idle clients:
//!
//! - a request head must arrive within [`HEADER_TIMEOUT`] of the server starting to wait
//!   for it (HAProxy's `timeout http-request`; it also ends idle keep-alive connections);
//! - at most [`MAX_CONNS`](super::conns::MAX_CONNS) connections, a new one replacing the
//!   oldest without a request in progress ([`super::conns`]);
//! - a connection stalled for [`IDLE`](super::guard::IDLE) in either direction is closed
//!   ([`super::guard`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::conns::{Conn, Conns};
use super::guard::Guarded;

/// The most a client may take to send a request's head (line and headers).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts and serves connections until the runtime ends.
pub async fn run(listener: TcpListener, router: Router) {
    let open = Conns::default();
    loop {
        open.room().await;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::debug!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = open.admit();
        tokio::spawn(serve_connection(Guarded::new(stream), conn, router.clone()));
    }
}

async fn serve_connection(io: Guarded, conn: Conn, router: Router) {
    let service = Tracked {
        inner: TowerToHyperService::new(router),
        conn: &conn,
    };
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        r = serving => {
            if let Err(e) = r {
                tracing::debug!("admin connection: {e}");
            }
        }
        _ = conn.evicted() => {
            tracing::debug!("admin connection closed to make room for a new one");
        }
    }
}

/// The router, marking its connection busy while a request is handled.
struct Tracked<'a> {
    inner: TowerToHyperService<Router>,
    conn: &'a Conn,
}

impl Service<hyper::Request<Incoming>> for Tracked<'_> {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let busy = self.conn.request();
        let answer = self.inner.call(req.map(Body::new));
        Box::pin(async move {
            let r = answer.await;
            drop(busy);
            r
        })
    }
}
