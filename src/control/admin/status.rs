//! The status page: `GET /` serves one self-contained HTML page (script and styles inline,
//! no external asset, so it works offline and behind any firewall), and `GET /status` the
//! JSON it refreshes itself from: every service with its backends and counters, and the
//! process's totals. The page computes rates itself from the counters of two refreshes.
//!
//! With `--admin-token`, `GET /` is served without it (a browser cannot attach a bearer
//! header to a navigation, and the page is the same static text for every install, holding
//! no data) while `GET /status` needs it like every other route. The page takes the token
//! from the address's fragment (`/#token=...`: a fragment is never sent to a server, so it
//! stays out of access logs, proxies and `Referer`) or asks for it when `/status` answers
//! 401, and sends it as `Authorization: Bearer`. It keeps it in the tab's
//! `sessionStorage` and removes it from the address bar.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::control::event_loop::{Command, ServiceSample};
use crate::control::metrics::BackendSample;
use crate::direction::Dir;
use crate::worker::Shared;

use super::api::BackendJson;
use super::{ApiError, Ctx};

/// The page, compiled in.
const PAGE: &str = include_str!("status.html");

/// Only the page's own inline script and style run, it talks to this origin only, and
/// no other site may frame it.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// What `GET /status` answers, gathered by the control loop in one event so services and
/// backends agree.
#[derive(Debug, Clone)]
pub struct StatusSample {
    pub services: Vec<(ServiceSample, Vec<BackendSample>)>,
    pub totals: Totals,
}

/// Process-wide counters and gauges (the same sources as `/metrics`).
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub client_connections: u64,
    pub client_connections_limit: u64,
    pub accepted_total: u64,
    pub bytes_client_to_backend: u64,
    pub bytes_backend_to_client: u64,
    pub workers: u64,
    pub workers_alive: u64,
    pub worker_restarts_total: u64,
}

impl Totals {
    pub fn read(shared: &Shared) -> Totals {
        Totals {
            client_connections: shared.open_clients.load(Ordering::Relaxed) as u64,
            client_connections_limit: shared.max_conns as u64,
            accepted_total: shared
                .stats
                .iter()
                .map(|s| s.accepted.load(Ordering::Relaxed))
                .sum(),
            bytes_client_to_backend: shared.bytes_forwarded(Dir::Up),
            bytes_backend_to_client: shared.bytes_forwarded(Dir::Down),
            workers: shared.stats.len() as u64,
            workers_alive: shared.workers_alive() as u64,
            worker_restarts_total: shared.worker_restarts.load(Ordering::Relaxed),
        }
    }
}

#[derive(Serialize)]
struct StatusJson {
    version: &'static str,
    totals: Totals,
    services: Vec<ServiceJson>,
}

/// A service as `GET /services` shows it, but `backends` lists them as
/// `GET /services/{svc}/backends` does (rather than counting them).
#[derive(Serialize)]
struct ServiceJson {
    name: String,
    protocol: &'static str,
    listen: Vec<String>,
    algorithm: &'static str,
    backends_up: usize,
    active_conns: u64,
    backends: Vec<BackendJson>,
}

impl From<StatusSample> for StatusJson {
    fn from(s: StatusSample) -> Self {
        StatusJson {
            version: env!("CARGO_PKG_VERSION"),
            totals: s.totals,
            services: s
                .services
                .into_iter()
                .map(|(s, backends)| ServiceJson {
                    name: s.name,
                    protocol: s.protocol,
                    listen: s.listen,
                    algorithm: s.algorithm,
                    backends_up: s.backends_up,
                    active_conns: s.active_conns,
                    backends: backends.iter().map(BackendJson::from).collect(),
                })
                .collect(),
        }
    }
}

/// `GET /`.
pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /status`.
pub(super) async fn status(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let sample = ctx.ask(|reply| Command::StatusPage { reply }).await?;
    let mut r = Json(StatusJson::from(sample)).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}
